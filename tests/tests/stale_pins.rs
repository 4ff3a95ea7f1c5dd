//! Steering pinned for workloads that went away while no agent ran (pods
//! deleted, workloads dropped from the file) is removed by the next agent
//! after its first snapshot; the workloads still wanted keep theirs.

use std::process::Command;

use anyhow::Result;
use jwtgate_e2e::agent::{agent_args, binary, workloads_yaml};
use jwtgate_e2e::kube_bed::{proxied, KubeBed};
use jwtgate_e2e::{privileged, AgentOptions, Outcome, PodSpec, TestNode, Workload};

const NS: &str = "foo";
const PORT: u16 = 9080;

fn pin_dirs(node: &TestNode) -> Result<Vec<String>> {
    let mut dirs: Vec<String> = std::fs::read_dir(node.pin_root().join("links"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    dirs.sort();
    Ok(dirs)
}

#[test]
fn local_workload_dropped_while_the_agent_was_down_is_unsteered() -> Result<()> {
    privileged!();
    let mut node = TestNode::new("stale-local")?;
    let client = node.add_client("client")?;
    let kept = node.add_pod(PodSpec::new("kept").namespace(NS).port(PORT))?;
    let gone = node.add_pod(PodSpec::new("gone").namespace(NS).port(PORT))?;
    node.start_agent(&AgentOptions::default())?;
    for pod in [&kept, &gone] {
        let r = client.get(pod.mesh_addr(), "/", None)?;
        assert!(r.status == 200 && proxied(&r), "{}", r.text());
    }
    assert_eq!(pin_dirs(&node)?, ["foo_2Fgone", "foo_2Fkept"]);

    let status = node.stop_agent()?;
    assert!(status.success(), "{status}\n{}", node.agent_log());
    // Fail-closed while no agent runs: the pinned steering has no listener.
    assert_eq!(client.probe(gone.mesh_addr()), Outcome::Refused);

    // Restarted with `gone` no longer in the workloads file.
    let keep: Vec<Workload> = node
        .workloads()
        .into_iter()
        .filter(|w| w.name == "kept")
        .collect();
    let bin = binary()?;
    node.start_agent_with(|files, metrics| {
        std::fs::write(&files.workloads, workloads_yaml(&keep))?;
        let mut cmd = Command::new(&bin);
        cmd.args(agent_args(files, metrics, &AgentOptions::default()))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        Ok(cmd)
    })?;

    // Ready means swept: gone's pins and MESH_PORTS entries are gone, so its
    // port reaches the app directly (a leftover entry would refuse it).
    assert_eq!(pin_dirs(&node)?, ["foo_2Fkept"], "{}", node.agent_log());
    let r = client.get(gone.mesh_addr(), "/", None)?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!proxied(&r), "dropped workload still steered");
    assert_eq!(
        r.header("x-echo-peer")
            .and_then(|p| p.parse::<std::net::SocketAddr>().ok())
            .map(|p| p.ip()),
        Some(client.ip.into()),
        "the app sees the client itself"
    );
    let r = client.get(kept.mesh_addr(), "/", None)?;
    assert!(
        r.status == 200 && proxied(&r),
        "kept workload not re-adopted"
    );
    assert!(
        node.agent_log()
            .contains("removed steering left by an earlier agent"),
        "{}",
        node.agent_log()
    );
    Ok(())
}

#[test]
fn kube_pod_deleted_while_the_agent_was_down_is_unsteered() -> Result<()> {
    let Some(mut bed) = KubeBed::build("kube-stale")? else {
        return Ok(());
    };
    let web = |name: &str| {
        PodSpec::new(name)
            .namespace(NS)
            .labels(&[("app", "web")])
            .port(PORT)
    };
    let kept = bed.add_pod(web("kept"))?;
    let gone = bed.add_pod(web("gone"))?;
    bed.api.apply(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  action: DENY\n  rules:\n  - to:\n    - operation: {{paths: [\"/admin\"]}}\n"
    ))?;
    bed.start_agent()?;
    for pod in [&kept, &gone] {
        assert_eq!(bed.get(pod, "/admin", None)?.status, 403);
    }
    assert_eq!(pin_dirs(&bed.node)?, ["foo_2Fgone", "foo_2Fkept"]);

    let status = bed.node.stop_agent()?;
    assert!(status.success(), "{status}\n{}", bed.node.agent_log());
    bed.delete_pod(&gone)?;
    bed.start_agent()?;

    assert_eq!(
        pin_dirs(&bed.node)?,
        ["foo_2Fkept"],
        "{}",
        bed.node.agent_log()
    );
    let r = bed.get(&gone, "/admin", None)?;
    assert!(
        r.status == 200 && !proxied(&r),
        "deleted pod still steered: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(bed.get(&kept, "/admin", None)?.status, 403);
    Ok(())
}
