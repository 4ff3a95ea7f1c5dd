//! The real install path on a real node (`jwtgate_e2e::node::Node`: kubelet,
//! containerd, kube-proxy, controllers): the agent image imported, `kubectl
//! apply -k deploy/istio-crds` and `-k deploy/`, the DaemonSet controller
//! creates the agent pod, the kubelet runs it with the manifest's
//! securityContext and it becomes Ready through its own probes. Then the FAQ
//! table from a client pod against real pods, over pod IPs and a ClusterIP
//! Service, and the DaemonSet deleted: the fail-closed pod refuses, the
//! fail-open one serves unverified.
//!
//! One test, in stages, because the node's bring-up (~30 s) is the expensive
//! part. Needs root and what `cargo xtask test` builds (binaries, images).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use jwtgate_e2e::faq::{self, RowResult};
use jwtgate_e2e::node::{self, runc_caps, Node};
use jwtgate_e2e::privileged;
use serde_json::Value;

const APPS_NS: &str = "foo";
const APP: &str = "httpbin";
/// The Service and the JWKS server's ClusterIPs, fixed in apps.yaml.
const HTTPBIN_SERVICE: &str = "10.96.0.80:8000";
const JWKS_URI: &str = "http://10.96.0.81/get_jwks";
const APP_PORT: u16 = 8080;
const AGENT_NS: &str = "jwtgate-system";
const AGENT_DS: &str = "jwtgate";
/// The verifier forwards allowed requests from here (Istio's passthrough source).
const VERIFIER_SOURCE: &str = "127.0.0.6";
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);

/// Progress, timings and the FAQ tables go straight to stderr: libtest
/// captures `println!` of passing tests, and these are the test's findings.
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[test]
fn daemonset_on_a_real_node_enforces_the_faq() -> Result<()> {
    privileged!();
    let Some(inputs) =
        node::require_test_inputs(Path::new(env!("CARGO_BIN_EXE_jwtgate-node-runc")))
    else {
        return Ok(());
    };
    let t = Instant::now();
    let mut n = Node::start(inputs.setup.clone())?;
    let b = n.bring_up.clone();
    report!(
        "node {} Ready in {:.1?} (API server {:.1?}, containerd {:.1?})",
        n.name(),
        b.node_ready,
        b.api_ready,
        b.runtime_ready
    );
    let result = stages(&mut n, &inputs);
    if result.is_err() {
        report!("{}", diagnostics(&n));
    }
    n.teardown()?;
    report!("real node test: {:.1?} in all", t.elapsed());
    result
}

fn stages(n: &mut Node, inputs: &node::TestInputs) -> Result<()> {
    let step = Instant::now();
    n.import_image(&inputs.agent_archive)?;
    n.import_image(&inputs.testpod_archive)?;
    report!("images imported in {:.1?}", step.elapsed());

    // The install path of the README, with kubectl 1.20: --validate=false
    // because its schema predates fields of the manifest (appArmorProfile,
    // DaemonSet maxSurge), which this API server then drops.
    let step = Instant::now();
    let crds = repo("deploy/istio-crds");
    n.kubectl(&["apply", "--validate=false", "-k", path_str(&crds)?])?;
    n.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/requestauthentications.security.istio.io",
        "crd/authorizationpolicies.security.istio.io",
    ])?;
    // Kubernetes 1.20 has no DaemonSet surge (1.22+): it drops `maxSurge`
    // and then refuses `maxUnavailable: 0`. This node alone gets the old
    // one-at-a-time strategy; the surge hand-over itself is tested in
    // tests/tests/handover.rs.
    let rendered = n.kubectl(&["kustomize", path_str(&repo("deploy"))?])?;
    ensure!(
        rendered.contains("maxUnavailable: 0"),
        "deploy/ no longer surges: adjust this test"
    );
    let for_1_20 = rendered.replace("maxUnavailable: 0", "maxUnavailable: 1");
    // The node shares the host's /opt/cni/bin and /etc/cni/net.d: the agent
    // must not install its CNI plugin into the real host's configuration.
    // Until the node has private CNI directories, it runs without it.
    let for_1_20 = without_cni_install(&for_1_20);
    // And the hostPath volumes (DirectoryOrCreate) must not create those
    // directories on the real host either.
    let private = n.dir().join("agent-cni");
    let for_1_20 = for_1_20
        .replace(
            "path: /opt/cni/bin",
            &format!("path: {}/bin", private.display()),
        )
        .replace(
            "path: /etc/cni/net.d",
            &format!("path: {}/net.d", private.display()),
        );
    n.kubectl_with_input(&["apply", "--validate=false", "-f", "-"], Some(&for_1_20))?;
    n.kubectl(&[
        "-n",
        AGENT_NS,
        "rollout",
        "status",
        &format!("daemonset/{AGENT_DS}"),
        &format!("--timeout={}s", ROLLOUT_TIMEOUT.as_secs()),
    ])?;
    report!("DaemonSet rolled out in {:.1?}", step.elapsed());
    let agent = agent_pod(n)?;
    check_ready_through_probes(&agent)?;
    check_security_context(n, &agent)?;

    let step = Instant::now();
    let apps = std::fs::read_to_string(jwtgate_e2e::testdata("real-node/apps.yaml"))?;
    ensure!(
        apps.contains(node::TESTPOD_IMAGE),
        "apps.yaml must run {}",
        node::TESTPOD_IMAGE
    );
    n.kubectl_with_input(&["apply", "-f", "-"], Some(&apps))?;
    for d in ["httpbin", "httpbin-open", "sleep", "jwks-server"] {
        n.kubectl(&[
            "-n",
            APPS_NS,
            "rollout",
            "status",
            &format!("deployment/{d}"),
            &format!("--timeout={}s", ROLLOUT_TIMEOUT.as_secs()),
        ])?;
    }
    let policies = format!(
        "{}---\n{}",
        faq::request_authentication(APPS_NS, APP, JWKS_URI),
        faq::authorization_policy(APPS_NS, APP)
    );
    n.kubectl_with_input(&["apply", "-f", "-"], Some(&policies))?;
    let closed = pod_addr(n, "app=httpbin,variant=fail-closed")?;
    let open = pod_addr(n, "app=httpbin,variant=fail-open")?;
    let client = pod_name(n, "app=sleep")?;
    // Enforced once a request that the DENY policy covers is answered 403,
    // and the JWKS fetched once the sample token passes.
    let valid = faq::demo_jwt();
    for addr in [closed, open] {
        n.wait_for(&format!("{addr} enforced"), ROLLOUT_TIMEOUT, |n| {
            match client_get(n, &client, addr, "/api/v1/products/0", None)? {
                Ok((403, _)) => {}
                other => bail!("without a token: {other:?}"),
            }
            match client_get(n, &client, addr, "/api/v1/products/0", Some(&valid))? {
                Ok((200, _)) => Ok(()),
                other => bail!("with the sample token: {other:?}"),
            }
        })?;
    }
    report!(
        "apps and policies applied, both pods enforced in {:.1?}",
        step.elapsed()
    );

    let service: SocketAddr = HTTPBIN_SERVICE.parse()?;
    for (what, addr) in [
        ("httpbin pod IP", closed),
        ("Service httpbin (ClusterIP)", service),
        ("httpbin-open pod IP", open),
    ] {
        let results = faq_rows(n, &client, addr)?;
        let table = faq::format_table(&results);
        report!("FAQ table from pod {client} to {what} {addr}:\n{table}");
        ensure!(
            results.iter().all(RowResult::ok),
            "FAQ table differs for {what}:\n{table}"
        );
    }
    // Allowed requests reach the app through the verifier, not around it.
    let seen = app_seen_peer(n, &client, closed, "/productpage")?;
    ensure!(
        seen.starts_with(VERIFIER_SOURCE),
        "the app must see the verifier's {VERIFIER_SOURCE} as peer, saw {seen}"
    );

    // Later (issue 13, item 2): a rolling update of the DaemonSet under
    // constant client load, counting failed requests, goes here.

    let step = Instant::now();
    n.kubectl(&[
        "-n",
        AGENT_NS,
        "delete",
        "daemonset",
        AGENT_DS,
        "--wait=true",
        "--timeout=120s",
    ])?;
    n.wait_for("the agent pod gone", ROLLOUT_TIMEOUT, |n| {
        let pods = n.kubectl(&["-n", AGENT_NS, "get", "pods", "-o", "name"])?;
        if pods.trim().is_empty() {
            Ok(())
        } else {
            bail!("still there: {pods}")
        }
    })?;
    report!("DaemonSet deleted in {:.1?}", step.elapsed());
    // failOpen unset: the steering stays pinned, the port refuses at once.
    for addr in [closed, service] {
        let got = client_get(n, &client, addr, "/productpage", None)?;
        ensure!(
            got == Err("refused".to_string()),
            "without an agent the fail-closed pod must refuse ({addr}), got {got:?}"
        );
    }
    // jwtgate.io/fail-open: the app answers directly, nothing is verified.
    let got = client_get(n, &client, open, "/api/v1/products/0", None)?;
    ensure!(
        matches!(got, Ok((200, _))),
        "without an agent the fail-open pod must serve unverified, got {got:?}"
    );
    let seen = app_seen_peer(n, &client, open, "/api/v1/products/0")?;
    ensure!(
        !seen.starts_with(VERIFIER_SOURCE),
        "the fail-open pod must be reached directly, the app saw {seen}"
    );
    report!("without the agent: fail-closed pod refuses, fail-open pod serves (peer {seen})");
    Ok(())
}

/// The agent pod as the API server has it.
fn agent_pod(n: &Node) -> Result<Value> {
    let list = n.kubectl_json(&["-n", AGENT_NS, "get", "pods"])?;
    let pods = list["items"].as_array().context("no items")?;
    ensure!(
        pods.len() == 1,
        "one agent pod on one node, got {}",
        pods.len()
    );
    Ok(pods[0].clone())
}

/// Ready is set by the kubelet only after the readiness probe of the
/// manifest passed; the probes must be the manifest's.
fn check_ready_through_probes(pod: &Value) -> Result<()> {
    let c = &pod["spec"]["containers"][0];
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        ensure!(c[probe].is_object(), "the agent container has no {probe}");
    }
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let status = &pod["status"]["containerStatuses"][0];
    ensure!(
        ready && status["ready"] == true && status["started"] == true,
        "the agent pod is not Ready: {}",
        pod["status"]
    );
    report!(
        "agent pod {} Ready (readiness {}), restarts {}",
        pod["metadata"]["name"].as_str().unwrap_or("?"),
        c["readinessProbe"]["httpGet"]["path"],
        status["restartCount"]
    );
    Ok(())
}

/// The agent process as the kubelet started it: capabilities exactly the
/// manifest's `add` list (less what this host's bounding set lacks), root,
/// read-only root filesystem, RuntimeDefault seccomp, privilege escalation
/// allowed, the host's PID namespace and the node's network namespace.
fn check_security_context(n: &Node, pod: &Value) -> Result<()> {
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|s| s.strip_prefix("containerd://"))
        .context("no containerd container id")?;
    let pid = n
        .ctr(&["tasks", "ls"])?
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next().map(String::from))?
        })
        .context("the agent's task is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let sc = &pod["spec"]["containers"][0]["securityContext"];
    let added: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .context("no capabilities.add")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        sc["capabilities"]["drop"] == serde_json::json!(["ALL"]),
        "the manifest drops ALL first"
    );
    let mut want = 0u64;
    for c in &added {
        want |= 1 << runc_caps::cap_number(c).with_context(|| format!("unknown capability {c}"))?;
    }
    let host = runc_caps::bounding_set()?;
    let eff = u64::from_str_radix(&field("CapEff:")?, 16)?;
    ensure!(
        eff == want & host,
        "the agent runs with capabilities {eff:#x}; the manifest adds {want:#x} ({}), this host has {host:#x}",
        added.join(", ")
    );
    ensure!(
        field("Uid:")?.split_whitespace().next() == Some("0"),
        "runAsUser: 0"
    );
    ensure!(
        field("Seccomp:")? == "2",
        "seccompProfile RuntimeDefault: a filter"
    );
    ensure!(
        field("NoNewPrivs:")? == "0",
        "allowPrivilegeEscalation: true leaves no_new_privs unset"
    );
    let root_ro = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .is_some_and(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|o| o.split(',').any(|o| o == "ro"))
        });
    ensure!(root_ro, "readOnlyRootFilesystem: / is mounted ro");
    let ns = |p: &str| std::fs::read_link(p).map(|l| l.to_string_lossy().into_owned());
    ensure!(
        ns(&format!("/proc/{pid}/ns/pid"))? == ns("/proc/self/ns/pid")?,
        "hostPID"
    );
    let node_net = std::fs::metadata(n.netns_path())?;
    let agent_net = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
    use std::os::unix::fs::MetadataExt as _;
    ensure!(
        node_net.ino() == agent_net.ino(),
        "hostNetwork: the agent is in the node's network namespace"
    );
    let lacking: Vec<&&str> = added
        .iter()
        .filter(|c| runc_caps::cap_number(c).is_some_and(|b| host & (1 << b) == 0))
        .collect();
    report!(
        "agent (pid {pid}) runs as the manifest says: uid 0, capabilities {} (host lacks {lacking:?}), seccomp filter, read-only /, hostPID, hostNetwork",
        added.join(",")
    );
    Ok(())
}

fn pod_name(n: &Node, selector: &str) -> Result<String> {
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

fn pod_addr(n: &Node, selector: &str) -> Result<SocketAddr> {
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

/// One GET from inside the client pod (`kubectl exec`, as the FAQ's curl):
/// `Ok((status, body))`, or `Err(outcome)` when the connection failed.
fn client_get(
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

fn client_get_json(
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
fn app_seen_peer(n: &Node, client: &str, addr: SocketAddr, path: &str) -> Result<String> {
    let v = client_get_json(n, client, addr, path, None)?;
    let body: Value = serde_json::from_str(v["body"].as_str().context("no body")?)?;
    Ok(body["peer"].as_str().context("no peer")?.to_string())
}

/// Every FAQ row on its own connection from the client pod.
fn faq_rows(n: &Node, client: &str, addr: SocketAddr) -> Result<Vec<RowResult>> {
    faq::ROWS
        .iter()
        .map(|row| {
            let token = row.token.value();
            Ok(RowResult {
                row: *row,
                got: client_get(n, client, addr, row.path, token.as_deref())?,
            })
        })
        .collect()
}

/// What to look at when a stage failed.
fn diagnostics(n: &Node) -> String {
    let mut out = String::from("---- diagnostics\n");
    for args in [
        &["get", "pods", "-A", "-o", "wide"][..],
        &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
        &[
            "-n",
            AGENT_NS,
            "logs",
            "--tail=60",
            "-l",
            "app.kubernetes.io/name=jwtgate",
        ][..],
    ] {
        out += &format!("$ kubectl {}\n", args.join(" "));
        out += &n.kubectl(args).unwrap_or_else(|e| format!("{e:#}\n"));
    }
    for d in ["kubelet", "containerd"] {
        out += &format!("---- {d} (last lines)\n{}", n.log(d, 25));
    }
    out
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("path is not UTF-8")
}

/// The rendered manifests without the agent's CNI install flags (each flag
/// and its value are separate list items in deploy/daemonset.yaml).
fn without_cni_install(rendered: &str) -> String {
    let mut out = Vec::new();
    let mut lines = rendered.lines().peekable();
    while let Some(line) = lines.next() {
        let flag = line.trim_start().trim_start_matches("- ");
        if ["--cni-bin-dir", "--cni-conf-dir", "--cni-uninstall-with"].contains(&flag) {
            lines.next(); // its value
            continue;
        }
        out.push(line);
    }
    out.join("\n") + "\n"
}
