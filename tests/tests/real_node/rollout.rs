//! Agent upgrades under constant keep-alive load from the client pod to the
//! httpbin Service's ClusterIP (4 workers, the FAQ's three answers in turn,
//! every answer checked), every failed request counted:
//!
//! - the one-at-a-time RollingUpdate Kubernetes 1.20 has (`maxUnavailable:
//!   1`): the old agent stops before the new one starts, and the
//!   fail-closed pod refuses in between — the comparison, and the proof
//!   that the load does count failures (it must see some);
//! - the surge deploy/ asks for (`maxSurge: 1, maxUnavailable: 0`, 1.22+),
//!   done by hand the way the DaemonSet controller does it: a second
//!   DaemonSet next to the running one, Ready, then the old one deleted —
//!   which also makes the old agent exit with its own DaemonSet gone, the
//!   case where it must not take the CNI plugin out (a newer agent runs).
//!   Asserted: not one request fails.
//!
//! What the emulation differs in, and why the assertion still holds for a
//! real surge: the controller would delete the old *pod* once the new one is
//! Ready; here the old *DaemonSet* is deleted, whose pod the garbage
//! collector then deletes — the same SIGTERM to the same agent, a little
//! later. The new agent is a separate pod with its own
//! probes in both cases, and the hand-over itself (generations under the
//! pin root, `BPF_LINK_UPDATE`, listeners replaced in `VERIFIER_SOCKS`) is
//! the agent's, not the controller's.
//!
//! What 0 does not cover: the load is keep-alive, so its connections are
//! made before the update and again after the old agent's `Connection:
//! close`, when the new agent is Ready. A *new* connection made between the
//! moment the new agent enrols the pods and its first JWKS fetch (it enrols
//! before it has fetched; Ready waits for the fetch) is verified without
//! keys, and a valid token gets 401 there. The one-at-a-time update shows
//! it (its workers reconnect to the new agent right after the gap): runs
//! count none to 71 such 401s besides the refused connections. So during
//! the surge two more workers open a new connection per request; for them
//! the test asserts that nothing fails but that 401 (in the runs so far
//! none failed at all).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use jwtgate_e2e::faq;
use jwtgate_e2e::node::clients::LoadReport;
use jwtgate_e2e::node::Node;
use serde_json::{json, Value};

use super::support::*;

/// The second DaemonSet of the emulated surge.
pub const NEXT_DS: &str = "jwtgate-next";
const LOAD_WORKERS: &str = "4";
/// The load's request with the token (`clients::load`'s mix).
const WITH_TOKEN: &str = "/api/v1/products/0";
/// Workers opening a new connection per request during the surge.
const NEW_CONNECTION_WORKERS: &str = "2";
/// The load ends by itself after this long, should the test never stop it.
const LOAD_MAX_SECS: &str = "900";
/// Load before and after each update, so both edges are inside the run.
const STEADY: Duration = Duration::from_secs(2);

/// Both updates; the DaemonSet running afterwards is [`NEXT_DS`].
pub fn updates_under_load(n: &mut Node, client: &str) -> Result<()> {
    let (plain, took) = one_at_a_time(n, client)?;
    report!(
        "plain 1.20 RollingUpdate (maxUnavailable 1), update {took:.1?} inside the load: {}",
        plain.summary()
    );
    report!("  failures per second of the run: {:?}", plain.per_second);
    report!(
        "  first failures: {:?}",
        &plain.samples[..plain.samples.len().min(6)]
    );
    // Fail-closed with no agent: the load must see the gap, or it counts
    // nothing at all.
    ensure!(
        plain.failed > 0,
        "a one-at-a-time update left no gap, or the load does not count: {}",
        plain.summary()
    );

    let (surge, took) = surge(n, client)?;
    report!(
        "emulated surge (second DaemonSet Ready, then the old one deleted), update {took:.1?} inside the load: {}",
        surge.summary()
    );
    report!(
        "surge hand-over under load: {} requests sent in {:.1} s, {} failed, {took:.1?} from the second DaemonSet's creation to the old agent gone",
        surge.ok + surge.failed,
        surge.seconds,
        surge.failed
    );
    if surge.failed > 0 {
        report!("  failures per second of the run: {:?}", surge.per_second);
        report!("  failures: {:?}", surge.samples);
    }
    ensure!(
        surge.ok > 0 && surge.failed == 0,
        "the surge hand-over lost requests: {}\n{:?}",
        surge.summary(),
        surge.samples
    );
    Ok(())
}

fn start_load(n: &Node, client: &str) -> Result<jwtgate_e2e::node::KubectlStream> {
    let token = faq::demo_jwt();
    start_client(
        n,
        client,
        &["load", HTTPBIN_SERVICE, LOAD_WORKERS, LOAD_MAX_SECS, &token],
    )
}

/// Next to the keep-alive load: a new connection for every request.
fn start_new_connections(n: &Node, client: &str) -> Result<jwtgate_e2e::node::KubectlStream> {
    let token = faq::demo_jwt();
    start_client(
        n,
        client,
        &[
            "load",
            HTTPBIN_SERVICE,
            NEW_CONNECTION_WORKERS,
            LOAD_MAX_SECS,
            &token,
            "new",
        ],
    )
}

fn stop_load(load: jwtgate_e2e::node::KubectlStream) -> Result<LoadReport> {
    let line = load.stop(CLIENT_STOP_TIMEOUT)?;
    serde_json::from_str(&line).with_context(|| format!("load report {line:?}"))
}

/// deploy/'s DaemonSet with a changed pod template (an env var the agent
/// ignores): the controller deletes the old pod, then creates the new one.
fn one_at_a_time(n: &mut Node, client: &str) -> Result<(LoadReport, Duration)> {
    let load = start_load(n, client)?;
    std::thread::sleep(STEADY);
    let step = Instant::now();
    n.kubectl(&[
        "-n",
        AGENT_NS,
        "set",
        "env",
        &format!("daemonset/{AGENT_DS}"),
        "JWTGATE_E2E_ROLLOUT=one-at-a-time",
    ])?;
    rollout_status(n, AGENT_DS)?;
    let took = step.elapsed();
    std::thread::sleep(STEADY);
    let report = stop_load(load)?;
    // The old agent exited with its DaemonSet still there: plugin kept.
    ensure!(
        chained_plugins(n)?.contains(&PLUGIN.to_string()),
        "the CNI plugin left the chain in a rolling update"
    );
    Ok((report, took))
}

/// A second DaemonSet (`jwtgate-next`: its own selector label, its own
/// `--cni-uninstall-with`) next to deploy/'s, Ready, then deploy/'s deleted.
fn surge(n: &mut Node, client: &str) -> Result<(LoadReport, Duration)> {
    let old = agent_pods(n)?;
    ensure!(old.len() == 1, "one agent pod before the surge");
    let old_pod = old[0]["metadata"]["name"]
        .as_str()
        .context("name")?
        .to_string();
    let next = next_daemonset(n)?;

    let load = start_load(n, client)?;
    let fresh = start_new_connections(n, client)?;
    std::thread::sleep(STEADY);
    // The old agent's log to its end: what it decides as it exits.
    let mut old_log =
        jwtgate_e2e::node::KubectlStream::spawn(n, &["-n", AGENT_NS, "logs", "-f", &old_pod])?;
    let step = Instant::now();
    let rbac =
        std::fs::read_to_string(jwtgate_e2e::testdata("real-node/next-daemonset-rbac.yaml"))?;
    n.kubectl_with_input(&["apply", "-f", "-"], Some(&rbac))?;
    n.kubectl_with_input(&["apply", "--validate=false", "-f", "-"], Some(&next))?;
    rollout_status(n, NEXT_DS)?;
    let ready = step.elapsed();
    n.kubectl(&[
        "-n",
        AGENT_NS,
        "delete",
        "daemonset",
        AGENT_DS,
        "--wait=true",
        "--timeout=120s",
    ])?;
    let new_pods: Vec<String> = agent_pods(n)?
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .filter(|p| *p != old_pod)
        .collect();
    let keep: Vec<&str> = new_pods.iter().map(String::as_str).collect();
    wait_agent_pods_gone(n, &keep)?;
    let took = step.elapsed();
    report!("surge: {NEXT_DS} Ready after {ready:.1?}, old agent gone after {took:.1?}");
    std::thread::sleep(STEADY);
    let report = stop_load(load)?;
    let fresh = stop_load(fresh)?;
    report!(
        "surge, a new connection per request next to it: {}",
        fresh.summary()
    );
    if fresh.failed > 0 {
        report!("  failures per second of the run: {:?}", fresh.per_second);
        report!("  failures: {:?}", fresh.samples);
    }
    // New connections reach the new agent as soon as it enrolled; it
    // enrols once its signing keys are in (app.rs `HandOver`), so a valid
    // token gets 401 only if that fetch outlasts the wait's bound. Nothing
    // else may fail: no refused or reset connection while the listeners
    // are replaced, no wrong answer to the other requests.
    let window = format!("{WITH_TOKEN}: status 401");
    ensure!(
        fresh.ok > 0 && fresh.kinds.keys().all(|k| k.starts_with(&window)),
        "new connections failed otherwise than by the JWKS window's 401: {}\n{:?}",
        fresh.summary(),
        fresh.samples
    );

    let lines = old_log.finish(Duration::from_secs(30))?.to_vec();
    let said = |what: &str| lines.iter().any(|l| l.contains(what));
    report!(
        "old agent's last words: {:?}",
        lines
            .iter()
            .rev()
            .take(4)
            .rev()
            .map(|l| message(l))
            .collect::<Vec<_>>()
    );
    ensure!(
        said("a newer agent holds the steering"),
        "the old agent did not see it was superseded:\n{}",
        lines.join("\n")
    );
    ensure!(
        !said("CNI plugin taken out"),
        "the old agent took the CNI plugin out while {NEXT_DS} runs:\n{}",
        lines.join("\n")
    );
    ensure!(
        chained_plugins(n)?.contains(&PLUGIN.to_string()),
        "the CNI plugin is out of the chain after the surge"
    );
    Ok((report, took))
}

/// The `message` of a JSON log line, or the line.
fn message(line: &str) -> String {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v["fields"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| line.to_string())
}

/// deploy/'s DaemonSet as it runs now (1.20 strategy included), renamed to
/// [`NEXT_DS`] with a selector of its own (two DaemonSets must not select
/// each other's pods) and `--cni-uninstall-with` naming itself.
fn next_daemonset(n: &Node) -> Result<String> {
    let mut ds = n.kubectl_json(&["-n", AGENT_NS, "get", "daemonset", AGENT_DS])?;
    let label = ("jwtgate.io/e2e-generation", json!("next"));
    ds["metadata"] =
        json!({"name": NEXT_DS, "namespace": AGENT_NS, "labels": ds["metadata"]["labels"]});
    ds["spec"]["selector"]["matchLabels"][label.0] = label.1.clone();
    ds["spec"]["template"]["metadata"]["labels"][label.0] = label.1;
    if let Some(o) = ds.as_object_mut() {
        o.remove("status");
    }
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array_mut()
        .context("no args")?;
    let at = args
        .iter()
        .position(|a| a == "--cni-uninstall-with")
        .context("the DaemonSet no longer passes --cni-uninstall-with")?;
    args[at + 1] = json!(format!("{AGENT_NS}/{NEXT_DS}"));
    Ok(serde_json::to_string(&ds)?)
}
