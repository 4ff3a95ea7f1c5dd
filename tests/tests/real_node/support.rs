//! What the stages of the real-node test share: names, kubectl helpers, the
//! client pod's one-shot GET and its long-running clients, the node's CNI
//! configuration as it stands.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use jwtgate_e2e::node::{self, KubectlStream, Node};
use serde_json::Value;

pub const APPS_NS: &str = "foo";
pub const APP: &str = "httpbin";
/// The Service and the JWKS server's ClusterIPs, fixed in apps.yaml.
pub const HTTPBIN_SERVICE: &str = "10.96.0.80:8000";
pub const JWKS_URI: &str = "http://10.96.0.81/get_jwks";
pub const APP_PORT: u16 = 8080;
pub const AGENT_NS: &str = "jwtgate-system";
/// deploy/'s DaemonSet.
pub const AGENT_DS: &str = "jwtgate";
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=jwtgate";
/// The verifier forwards allowed requests from here (Istio's passthrough source).
pub const VERIFIER_SOURCE: &str = "127.0.0.6";
/// The plugin's `type` in the network list (`jwtgate::cni::PLUGIN_NAME`).
pub const PLUGIN: &str = "jwtgate-cni";
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a client in a pod may take to report after being told to stop.
pub const CLIENT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("path is not UTF-8")
}

pub fn pod_name(n: &Node, selector: &str) -> Result<String> {
    let name = n.kubectl(&[
        "-n",
        APPS_NS,
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;
    ensure!(!name.is_empty(), "no pod {selector}");
    Ok(name)
}

pub fn pod_addr(n: &Node, selector: &str) -> Result<SocketAddr> {
    let ip = n.kubectl(&[
        "-n",
        APPS_NS,
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ])?;
    Ok(SocketAddr::new(
        ip.trim()
            .parse()
            .with_context(|| format!("pod IP {ip:?}"))?,
        APP_PORT,
    ))
}

/// The agent pods (during a surge, two).
pub fn agent_pods(n: &Node) -> Result<Vec<Value>> {
    let list = n.kubectl_json(&["-n", AGENT_NS, "get", "pods", "-l", AGENT_SELECTOR])?;
    Ok(list["items"].as_array().context("no items")?.clone())
}

pub fn rollout_status(n: &Node, daemonset: &str) -> Result<()> {
    n.kubectl(&[
        "-n",
        AGENT_NS,
        "rollout",
        "status",
        &format!("daemonset/{daemonset}"),
        &format!("--timeout={}s", ROLLOUT_TIMEOUT.as_secs()),
    ])
    .map(|_| ())
}

/// Waits until no agent pod is left but those named in `keep`.
pub fn wait_agent_pods_gone(n: &mut Node, keep: &[&str]) -> Result<()> {
    n.wait_for("the agent pod gone", ROLLOUT_TIMEOUT, |n| {
        let left: Vec<String> = agent_pods(n)?
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .filter(|p| !keep.contains(&p.as_str()))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            bail!("still there: {left:?}")
        }
    })
}

/// `kubectl wait` for a pod of the apps' namespace to be Ready.
pub fn wait_pod_ready(n: &Node, pod: &str, timeout: Duration) -> Result<()> {
    n.kubectl(&[
        "-n",
        APPS_NS,
        "wait",
        "--for=condition=Ready",
        &format!("pod/{pod}"),
        &format!("--timeout={}s", timeout.as_secs()),
    ])
    .map(|_| ())
}

/// A bare pod running the echo app, in the apps' namespace, labelled
/// `app: httpbin` (so the FAQ's policies select it) and `variant: <name>`
/// (so the Service does not).
pub fn echo_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {APPS_NS}
  labels: {{app: {APP}, variant: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpbin
    image: {image}
    imagePullPolicy: Never
    args: [serve, {name}, "{APP_PORT}"]
    ports: [{{containerPort: {APP_PORT}}}]
"#,
        image = node::TESTPOD_IMAGE
    )
}

/// One GET from inside the client pod (`kubectl exec`, as the FAQ's curl):
/// `Ok((status, body))`, or `Err(outcome)` when the connection failed.
pub fn client_get(
    n: &Node,
    client: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<Result<(u16, String), String>> {
    let v = client_get_json(n, client, addr, path, token)?;
    Ok(match v["status"].as_u64() {
        Some(s) => Ok((s as u16, v["body"].as_str().unwrap_or_default().to_string())),
        None => Err(v["outcome"].as_str().unwrap_or("?").to_string()),
    })
}

pub fn client_get_json(
    n: &Node,
    client: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<Value> {
    let addr = addr.to_string();
    let mut args = vec![
        "-n",
        APPS_NS,
        "exec",
        client,
        "--",
        "/usr/local/bin/jwtgate-testpod",
        "get",
        &addr,
        path,
    ];
    args.extend(token);
    let out = n.kubectl(&args)?;
    serde_json::from_str(out.trim()).with_context(|| format!("client output {out:?}"))
}

/// The peer the echo app saw for an allowed request (its JSON body).
pub fn app_seen_peer(
    n: &Node,
    client: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<String> {
    let v = client_get_json(n, client, addr, path, token)?;
    let body: Value = serde_json::from_str(v["body"].as_str().context("no body")?)
        .with_context(|| format!("not the app's answer: {v}"))?;
    Ok(body["peer"].as_str().context("no peer")?.to_string())
}

/// `jwtgate-testpod <args>` started in the client pod, its stdin kept to
/// stop it; returns once it says it is running.
pub fn start_client(n: &Node, client: &str, args: &[&str]) -> Result<KubectlStream> {
    let mut full = vec![
        "-n",
        APPS_NS,
        "exec",
        "-i",
        client,
        "--",
        "/usr/local/bin/jwtgate-testpod",
    ];
    full.extend(args);
    let mut s = KubectlStream::spawn(n, &full)?;
    s.wait_line(Duration::from_secs(60), |l| {
        l.contains(r#""event":"running""#)
    })?;
    Ok(s)
}

/// Every request the echo app of `pod` served, by peer address (its log).
pub fn app_peers(n: &Node, pod: &str) -> Result<std::collections::BTreeMap<String, u64>> {
    let log = n.kubectl(&["-n", APPS_NS, "logs", pod])?;
    let mut peers = std::collections::BTreeMap::new();
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line)?;
        if let (Some(peer), Some(k)) = (v["peer"].as_str(), v["seen"].as_u64()) {
            *peers.entry(peer.to_string()).or_default() += k;
        }
    }
    Ok(peers)
}

/// The plugins of the node's network list, in order (what its containerd
/// runs at every pod's CNI ADD).
pub fn chained_plugins(n: &Node) -> Result<Vec<String>> {
    let path = n.cni_conf_dir().join(node::CNI_CONFLIST);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(doc["plugins"]
        .as_array()
        .context("no plugins")?
        .iter()
        .filter_map(|p| p["type"].as_str().map(String::from))
        .collect())
}

/// The next `count` addresses host-local will hand out, in order: after the
/// last one it reserved, skipping those in use and the gateway (.1). A pod
/// created next gets one of them — the first, unless sandboxes fail and
/// give theirs back in between (each retry takes the next).
pub fn next_pod_ips(n: &Node, count: usize) -> Result<Vec<IpAddr>> {
    let dir = n.ipam_dir().join(node::CNI_NETWORK);
    let last: Option<Ipv4Addr> = std::fs::read_to_string(dir.join("last_reserved_ip.0"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let in_use: Vec<Ipv4Addr> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let base = u32::from(Ipv4Addr::new(10, 244, 0, 0));
    let mut host = last.map(|ip| u32::from(ip) - base).unwrap_or(1);
    let mut out = Vec::new();
    for _ in 0..254 {
        host = if host >= 254 { 2 } else { host + 1 };
        let ip = Ipv4Addr::from(base + host);
        if host != 1 && !in_use.contains(&ip) {
            out.push(IpAddr::V4(ip));
            if out.len() == count {
                break;
            }
        }
    }
    ensure!(out.len() == count, "the pod range is full");
    Ok(out)
}

/// Whether the agent logged a CNI ADD for `namespace/pod`, and with which
/// `protected` value.
pub fn cni_add_logged(agent_log: &str, pod: &str) -> Option<bool> {
    agent_log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "CNI ADD" && v["fields"]["pod"] == pod)
        .map(|v| v["fields"]["protected"] == true)
        .next_back()
}

/// The agent pods' logs, all of them.
pub fn agent_logs(n: &Node) -> Result<String> {
    n.kubectl(&[
        "-n",
        AGENT_NS,
        "logs",
        "-l",
        AGENT_SELECTOR,
        "--tail=-1",
        "--max-log-requests=4",
    ])
}

/// Events of a pod in the apps' namespace with this reason: their messages.
pub fn pod_events(n: &Node, pod: &str, reason: &str) -> Result<Vec<String>> {
    let v = n.kubectl_json(&[
        "-n",
        APPS_NS,
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod},reason={reason}"),
    ])?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect())
}

/// What to look at when a stage failed.
pub fn diagnostics(n: &Node) -> String {
    let mut out = String::from("---- diagnostics\n");
    for args in [
        &["get", "pods", "-A", "-o", "wide"][..],
        &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
        &["-n", AGENT_NS, "logs", "--tail=60", "-l", AGENT_SELECTOR][..],
    ] {
        out += &format!("$ kubectl {}\n", args.join(" "));
        out += &n.kubectl(args).unwrap_or_else(|e| format!("{e:#}\n"));
    }
    for d in ["kubelet", "containerd"] {
        out += &format!("---- {d} (last lines)\n{}", n.log(d, 25));
    }
    out
}
