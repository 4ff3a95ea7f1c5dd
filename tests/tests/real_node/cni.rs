//! The chained CNI plugin as the DaemonSet installs it on a real node: in
//! the node's own `/opt/cni/bin` and `/etc/cni/net.d` (never the host's),
//! run by containerd at every pod's CNI ADD.
//!
//! "The very first request" is made meaningful by asking before the pod
//! exists: a client in the client pod opens new connections, one token-less
//! request each, to the addresses host-local will hand out next, from
//! before the pod is created until after it is Ready. The first HTTP answer
//! the pod's address ever gives, and every later one, must be the
//! verifier's 403 — and the app's own log must show that nothing but the
//! verifier ever reached it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use jwtgate_e2e::faq;
use jwtgate_e2e::node::clients::{AddrProbe, FirstReport};
use jwtgate_e2e::node::{self, Node};
use serde_json::json;

use super::support::*;

/// The path the first requests ask for: denied without a token by the FAQ's
/// policy.
const DENIED_PATH: &str = "/api/v1/products/0";
/// The client asking the candidate addresses stops by itself after this.
const FIRST_MAX_SECS: &str = "600";

/// The host's own CNI directories, to show the node never touched them.
#[derive(Debug, PartialEq, Eq)]
pub struct HostCniDirs(BTreeMap<String, Option<Vec<u8>>>);

impl HostCniDirs {
    pub fn record() -> HostCniDirs {
        let mut m = BTreeMap::new();
        for dir in ["/etc/cni/net.d", "/opt/cni", "/opt/cni/bin"] {
            // A directory: its existence; a file: its content.
            m.insert(dir.to_string(), Path::new(dir).is_dir().then(Vec::new));
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                m.insert(p.display().to_string(), std::fs::read(&p).ok());
            }
        }
        HostCniDirs(m)
    }

    pub fn check_unchanged(&self, when: &str) -> Result<()> {
        let now = HostCniDirs::record();
        ensure!(
            *self == now,
            "the host's CNI directories changed {when}: before {:?}, now {:?}",
            self.0.keys().collect::<Vec<_>>(),
            now.0.keys().collect::<Vec<_>>()
        );
        Ok(())
    }
}

/// Right after the DaemonSet rolled out: the plugin binary and its entry at
/// the end of the chain, in the node's directories; the host's untouched.
pub fn plugin_installed(n: &Node, host: &HostCniDirs) -> Result<()> {
    let chain = chained_plugins(n)?;
    ensure!(
        chain == ["bridge", PLUGIN],
        "the DaemonSet should chain {PLUGIN} after the bridge, the chain is {chain:?}"
    );
    let bin = n.cni_bin_dir().join(PLUGIN);
    let meta = std::fs::metadata(&bin).with_context(|| format!("{}", bin.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    ensure!(
        meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        "{} is not an executable file",
        bin.display()
    );
    host.check_unchanged("while the DaemonSet installed its plugin")?;
    report!(
        "CNI plugin installed by the DaemonSet into the node's {} and {} (chain {chain:?}); the host's are untouched",
        node::CNI_BIN_DIR,
        node::CNI_CONF_DIR
    );
    Ok(())
}

/// The pods created after the install went through the plugin.
pub fn apps_went_through_the_plugin(n: &Node, pods: &[String]) -> Result<()> {
    let log = agent_logs(n)?;
    for pod in pods {
        let key = format!("{APPS_NS}/{pod}");
        ensure!(
            cni_add_logged(&log, &key).is_some(),
            "no CNI ADD for {key} in the agent's log"
        );
    }
    Ok(())
}

/// A pod that the policies select, created with the agent running: the
/// first answer at its address is the verifier's 403.
pub fn first_request_is_denied(n: &mut Node, client: &str) -> Result<()> {
    let pod = "httpbin-first";
    let candidates = next_pod_ips(n, 3)?;
    let (report, ip) = watch_new_pod(n, client, pod, &candidates, |n| {
        wait_pod_ready(n, pod, ROLLOUT_TIMEOUT)
    })?;
    let probe = &report[&SocketAddr::new(ip, APP_PORT)];
    check_first_answers(pod, probe)?;
    check_only_the_verifier_reached(n, client, pod, ip)?;
    ensure!(
        cni_add_logged(&agent_logs(n)?, &format!("{APPS_NS}/{pod}")) == Some(true),
        "the agent did not log a protected CNI ADD for {pod}"
    );
    Ok(())
}

/// The agent away (its DaemonSet's pods kept off the node by a nodeSelector,
/// the plugin left installed): a selected pod created now does not start
/// — its sandbox fails and is retried — and starts protected once the
/// agent is back.
pub fn pod_waits_for_the_agent(n: &mut Node, client: &str, daemonset: &str) -> Result<()> {
    let step = Instant::now();
    let away =
        json!({"spec": {"template": {"spec": {"nodeSelector": {"jwtgate.io/e2e-away": "true"}}}}});
    n.kubectl(&[
        "-n",
        AGENT_NS,
        "patch",
        "daemonset",
        daemonset,
        "-p",
        &away.to_string(),
    ])?;
    wait_agent_pods_gone(n, &[])?;
    ensure!(
        chained_plugins(n)?.contains(&PLUGIN.to_string()),
        "the agent took its plugin out although its DaemonSet stays"
    );
    report!(
        "agent kept off the node in {:.1?}; the plugin stays in the chain",
        step.elapsed()
    );

    let pod = "httpbin-late";
    // Each failed sandbox takes an address and gives it back; the one that
    // finally starts gets a later one.
    let candidates = next_pod_ips(n, 12)?;
    let (report, ip) = watch_new_pod(n, client, pod, &candidates, |n| {
        let step = Instant::now();
        n.wait_for(&format!("{pod}'s sandbox refused"), ROLLOUT_TIMEOUT, |n| {
            let failures = pod_events(n, pod, "FailedCreatePodSandBox")?;
            if failures
                .iter()
                .any(|m| m.contains("not started unprotected"))
            {
                Ok(())
            } else {
                bail!("events so far: {failures:?}")
            }
        })?;
        // Some more retries while the agent stays away.
        std::thread::sleep(Duration::from_secs(12));
        let status = n.kubectl_json(&["-n", APPS_NS, "get", "pod", pod])?;
        let waiting = &status["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
        ensure!(
            status["status"]["phase"] == "Pending"
                && status["status"]["podIP"].is_null()
                && (waiting.is_null() || waiting == "ContainerCreating"),
            "without the agent {pod} must not run: {}",
            status["status"]
        );
        let failures = pod_events(n, pod, "FailedCreatePodSandBox")?;
        report!(
            "without the agent: {pod} Pending with no IP after {:.1?}; sandbox refused: {}",
            step.elapsed(),
            failures.first().map(String::as_str).unwrap_or("?")
        );
        let back = json!({"spec": {"template": {"spec": {"nodeSelector": {"jwtgate.io/e2e-away": null}}}}});
        n.kubectl(&[
            "-n",
            AGENT_NS,
            "patch",
            "daemonset",
            daemonset,
            "-p",
            &back.to_string(),
        ])?;
        let back_at = Instant::now();
        rollout_status(n, daemonset)?;
        let agent_ready = back_at.elapsed();
        wait_pod_ready(n, pod, ROLLOUT_TIMEOUT)?;
        report!(
            "agent back: Ready after {agent_ready:.1?}, {pod} Ready after {:.1?}",
            back_at.elapsed()
        );
        Ok(())
    })?;
    // No address that pod held for a moment answered anything but 403.
    for (addr, probe) in &report {
        if let Some(first) = &probe.first {
            ensure!(
                first.status == 403 && probe.other_answers.is_empty(),
                "{addr} answered {first:?} then {:?}",
                probe.other_answers
            );
        }
    }
    check_first_answers(pod, &report[&SocketAddr::new(ip, APP_PORT)])?;
    check_only_the_verifier_reached(n, client, pod, ip)?;
    Ok(())
}

/// The first requests of a pod created by this call: the client asks the
/// `candidates` from before the pod exists until `until` returned and a
/// second more. Returns what every candidate answered and the pod's IP.
fn watch_new_pod(
    n: &mut Node,
    client: &str,
    pod: &str,
    candidates: &[IpAddr],
    until: impl FnOnce(&mut Node) -> Result<()>,
) -> Result<(FirstReport, IpAddr)> {
    let addrs: Vec<String> = candidates
        .iter()
        .map(|ip| SocketAddr::new(*ip, APP_PORT).to_string())
        .collect();
    let mut args = vec!["first", DENIED_PATH, FIRST_MAX_SECS];
    args.extend(addrs.iter().map(String::as_str));
    let first = start_client(n, client, &args)?;
    let created = Instant::now();
    n.kubectl_with_input(&["apply", "-f", "-"], Some(&echo_pod(pod)))?;
    until(n)?;
    // A little more of the app running behind the verifier.
    std::thread::sleep(Duration::from_secs(1));
    let line = first.stop(CLIENT_STOP_TIMEOUT)?;
    let report: FirstReport =
        serde_json::from_str(&line).with_context(|| format!("first-request report {line:?}"))?;
    let ip: IpAddr = n
        .kubectl(&[
            "-n",
            APPS_NS,
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.podIP}",
        ])?
        .trim()
        .parse()
        .context("pod IP")?;
    ensure!(
        candidates.contains(&ip),
        "{pod} got {ip}, not one of the addresses asked ({candidates:?}): host-local's order is not what next_pod_ips assumes"
    );
    let probe = &report[&SocketAddr::new(ip, APP_PORT)];
    report!(
        "{pod} at {ip}, Ready {:.1?} after creation: {} requests without a token, {} answered; outcomes {:?}; timeline (ms) {:?}",
        created.elapsed(),
        probe.attempts,
        probe.answers,
        probe.outcomes,
        probe.timeline
    );
    Ok((report, ip))
}

/// Asked before it could answer; its first answer and every later one the
/// verifier's 403.
fn check_first_answers(pod: &str, probe: &AddrProbe) -> Result<()> {
    let first_outcome = probe.timeline.first().map(|(_, o)| o.as_str());
    ensure!(
        first_outcome.is_some_and(|o| !o.starts_with("HTTP")),
        "{pod}'s address answered from the first attempt on ({first_outcome:?}): the client started too late to see its first request"
    );
    let first = probe
        .first
        .as_ref()
        .with_context(|| format!("{pod} never answered the client: {probe:?}"))?;
    ensure!(
        first.status == 403 && first.body == faq::BODY_403 && first.app_saw_peer.is_none(),
        "{pod}'s very first answer without a token must be the verifier's 403, was {first:?}"
    );
    ensure!(
        probe.other_answers.is_empty(),
        "{pod} answered differently later: {:?}",
        probe.other_answers
    );
    Ok(())
}

/// Allowed requests reach the app from the verifier; the app's log says no
/// request ever came from anywhere else.
fn check_only_the_verifier_reached(n: &Node, client: &str, pod: &str, ip: IpAddr) -> Result<()> {
    let addr = SocketAddr::new(ip, APP_PORT);
    let token = faq::demo_jwt();
    let seen = app_seen_peer(n, client, addr, DENIED_PATH, Some(&token))?;
    ensure!(
        seen.starts_with(VERIFIER_SOURCE),
        "with the token {pod} answers through the verifier, the app saw {seen}"
    );
    // The app reports what it served every 200 ms.
    std::thread::sleep(Duration::from_millis(500));
    let peers = app_peers(n, pod)?;
    ensure!(
        peers.keys().all(|p| p == VERIFIER_SOURCE) && !peers.is_empty(),
        "{pod}'s app was reached by {peers:?}: only {VERIFIER_SOURCE} (the verifier) may reach it"
    );
    report!("{pod}'s app served {peers:?} (the verifier only)");
    Ok(())
}
