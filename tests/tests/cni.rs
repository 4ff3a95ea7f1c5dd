//! The chained CNI plugin against the real agent and API server: the
//! plugin binary is run exactly as a container runtime runs it (the CNI
//! environment, the network configuration on stdin), for pods that exist
//! as namespaces and Pod objects but whose IP the API server does not know
//! yet — the moment of CNI ADD.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use jwtgate_e2e::kube_bed::KubeBed;
use jwtgate_e2e::topology::PodHandle;
use jwtgate_e2e::PodSpec;

const NS: &str = "foo";
const DENY_ANONYMOUS: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
    metadata: {name: require-jwt, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  \
    - from:\n    - source: {notRequestPrincipals: ['*']}\n";

/// The agent binary under the plugin's name, as the installer puts it.
fn plugin_binary(dir: &Path) -> Result<PathBuf> {
    let plugin = dir.join("jwtgate-cni");
    if !plugin.exists() {
        std::fs::copy(jwtgate_e2e::agent::binary()?, &plugin)?;
    }
    Ok(plugin)
}

/// `CNI_COMMAND=<command> jwtgate-cni < conf`: (exit ok, stdout).
fn run_plugin(
    plugin: &Path,
    command: &str,
    socket: &Path,
    pod: &PodHandle,
    uid: &str,
) -> Result<(bool, String)> {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s", "type": "jwtgate-cni",
        "socket": socket, "timeoutSecs": 25,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": format!("{}/24", pod.ip)}]}
    });
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_NETNS", &pod.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={uid}",
                pod.spec.namespace, pod.spec.name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running the plugin")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn a_new_pods_first_request_is_already_verified() -> Result<()> {
    let Some(mut bed) = KubeBed::build("cni")? else {
        return Ok(());
    };
    let socket = bed.node.dir().join("cni.sock");
    let plugin = plugin_binary(bed.node.dir())?;
    bed.api
        .apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: foo}\n")?;
    bed.api.apply(DENY_ANONYMOUS)?;
    bed.start_agent_with_args(&["--cni-socket", socket.to_str().context("path")?])?;

    // CNI ADD: the API server does not know the pod's IP, no process of the
    // pod runs; when the plugin returns, the pod is protected.
    let pod = bed.add_pod_before_cni(PodSpec::new("web").namespace(NS).port(9080))?;
    let uid = bed.api.pod_uid(NS, "web")?;
    let (ok, out) = run_plugin(&plugin, "ADD", &socket, &pod, &uid)?;
    assert!(ok, "ADD failed: {out}\n{}", bed.node.agent_log());
    assert!(
        out.contains(&pod.ip.to_string()),
        "result not passed on: {out}"
    );
    let first = bed.get(&pod, "/", None)?;
    assert_eq!(
        first.status,
        403,
        "the very first request: {}",
        first.text()
    );
    assert!(bed.node.app_seen(&pod).is_empty());

    // A pod no policy selects starts at once, unsteered.
    let free = bed.add_pod_before_cni(PodSpec::new("free").namespace("bar").port(9080))?;
    let uid = bed.api.pod_uid("bar", "free")?;
    let (ok, out) = run_plugin(&plugin, "ADD", &socket, &free, &uid)?;
    assert!(ok, "{out}");
    assert_eq!(bed.get(&free, "/", None)?.status, 200);

    // DEL, then the pod object goes: nothing left behind.
    let (ok, _) = run_plugin(&plugin, "DEL", &socket, &free, &uid)?;
    assert!(ok);

    // No agent: a selected pod does not start at all (the ADD fails and the
    // runtime retries), rather than start unprotected.
    bed.node.stop_agent()?;
    let late = bed.add_pod_before_cni(PodSpec::new("late").namespace(NS).port(9080))?;
    let uid = bed.api.pod_uid(NS, "late")?;
    let (ok, out) = run_plugin(&plugin, "ADD", &socket, &late, &uid)?;
    assert!(!ok, "ADD succeeded without an agent: {out}");
    assert!(out.contains("not started unprotected"), "{out}");
    Ok(())
}
