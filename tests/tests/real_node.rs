//! The real install path on a real node (`jwtgate_e2e::node::Node`: kubelet,
//! containerd, kube-proxy, controllers): the agent image imported, `kubectl
//! apply -k deploy/istio-crds` and `-k deploy/`, the DaemonSet controller
//! creates the agent pod, the kubelet runs it with the manifest's
//! securityContext and it becomes Ready through its own probes; its CNI
//! plugin lands in the node's (not the host's) CNI directories. Then the FAQ
//! table from a client pod against real pods, over pod IPs and a ClusterIP
//! Service; agent updates under constant load (`real_node/rollout.rs`); a
//! new pod's first request, and a pod created while the agent is away
//! (`real_node/cni.rs`); and the DaemonSet deleted: the fail-closed pod
//! refuses, the fail-open one serves unverified, the plugin is out of the
//! chain and new pods start.
//!
//! One test, in stages, because the node's bring-up (~30 s) is the expensive
//! part. Needs root and what `cargo xtask test` builds (binaries, images).

/// Progress, timings and the FAQ tables go straight to stderr: libtest
/// captures `println!` of passing tests, and these are the test's findings.
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[path = "real_node/cni.rs"]
mod cni;
#[path = "real_node/rollout.rs"]
mod rollout;
#[path = "real_node/support.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use jwtgate_e2e::faq::{self, RowResult};
use jwtgate_e2e::node::{self, runc_caps, Node};
use jwtgate_e2e::privileged;
use serde_json::Value;

use support::*;

#[test]
fn daemonset_on_a_real_node_enforces_the_faq() -> Result<()> {
    privileged!();
    let Some(inputs) =
        node::require_test_inputs(Path::new(env!("CARGO_BIN_EXE_jwtgate-node-runc")))
    else {
        return Ok(());
    };
    let host = cni::HostCniDirs::record();
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
    let result = stages(&mut n, &inputs, &host);
    if result.is_err() {
        report!("{}", diagnostics(&n));
    }
    n.teardown()?;
    report!("real node test: {:.1?} in all", t.elapsed());
    result?;
    host.check_unchanged("after the node was removed")
}

fn stages(n: &mut Node, inputs: &node::TestInputs, host: &cni::HostCniDirs) -> Result<()> {
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
    // tests/tests/handover.rs, and emulated here (real_node/rollout.rs).
    let rendered = n.kubectl(&["kustomize", path_str(&repo("deploy"))?])?;
    ensure!(
        rendered.contains("maxUnavailable: 0"),
        "deploy/ no longer surges: adjust this test"
    );
    let for_1_20 = rendered.replace("maxUnavailable: 0", "maxUnavailable: 1");
    n.kubectl_with_input(&["apply", "--validate=false", "-f", "-"], Some(&for_1_20))?;
    rollout_status(n, AGENT_DS)?;
    report!("DaemonSet rolled out in {:.1?}", step.elapsed());
    let agent = agent_pod(n)?;
    check_ready_through_probes(&agent)?;
    check_security_context(n, &agent)?;
    cni::plugin_installed(n, host)?;

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
    let app_pods = [
        pod_name(n, "app=httpbin,variant=fail-closed")?,
        pod_name(n, "app=httpbin,variant=fail-open")?,
        client.clone(),
    ];
    cni::apps_went_through_the_plugin(n, &app_pods)?;
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
    let seen = app_seen_peer(n, &client, closed, "/productpage", None)?;
    ensure!(
        seen.starts_with(VERIFIER_SOURCE),
        "the app must see the verifier's {VERIFIER_SOURCE} as peer, saw {seen}"
    );

    // Updates under load; afterwards rollout::NEXT_DS is the DaemonSet.
    rollout::updates_under_load(n, &client)?;
    let daemonset = rollout::NEXT_DS;
    cni::first_request_is_denied(n, &client)?;
    cni::pod_waits_for_the_agent(n, &client, daemonset)?;

    let step = Instant::now();
    n.kubectl(&[
        "-n",
        AGENT_NS,
        "delete",
        "daemonset",
        daemonset,
        "--wait=true",
        "--timeout=120s",
    ])?;
    wait_agent_pods_gone(n, &[])?;
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
    let seen = app_seen_peer(n, &client, open, "/api/v1/products/0", None)?;
    ensure!(
        !seen.starts_with(VERIFIER_SOURCE),
        "the fail-open pod must be reached directly, the app saw {seen}"
    );
    report!("without the agent: fail-closed pod refuses, fail-open pod serves (peer {seen})");
    // The agent exited with its DaemonSet gone: it took the plugin out, and
    // new pods start (unprotected: nothing protects them any more).
    let chain = chained_plugins(n)?;
    ensure!(
        !chain.iter().any(|p| p == PLUGIN),
        "the DaemonSet is gone but its CNI plugin is still chained: {chain:?}"
    );
    let step = Instant::now();
    let pod = "httpbin-after";
    n.kubectl_with_input(&["apply", "-f", "-"], Some(&echo_pod(pod)))?;
    wait_pod_ready(n, pod, ROLLOUT_TIMEOUT)?;
    report!(
        "DaemonSet deleted: plugin out of the chain ({chain:?}), a new pod Ready in {:.1?}",
        step.elapsed()
    );
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
