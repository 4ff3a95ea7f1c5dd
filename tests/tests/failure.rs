//! The agent is down: enrolled mesh ports refuse at once (fail-closed), unless the
//! workload is fail-open, in which case traffic goes straight to the app.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use jwtgate_e2e::faq::{FaqBed, MESH_PORT, NAMESPACE, PLAIN_PORT};
use jwtgate_e2e::{privileged, Outcome, PodSpec};

#[test]
fn stopped_agent_refuses_fail_closed_and_passes_fail_open() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("fail")?;
    let open = bed.node.add_pod(
        PodSpec::new("reviews")
            .namespace(NAMESPACE)
            .labels(&[("app", "reviews")])
            .port(MESH_PORT)
            .fail_open(true),
    )?;
    bed.start_agent()?;

    // While the agent runs both pods are proxied.
    let r = bed.client.get(open.mesh_addr(), "/", None)?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()?["peer"]
            .as_str()
            .map(|p| p.starts_with("127.0.0.6:")),
        Some(true)
    );

    let status = bed.node.stop_agent()?;
    assert!(
        status.success(),
        "SIGTERM must drain and exit 0, got {status}\n{}",
        bed.node.agent_log()
    );

    // Fail-closed: the pinned sk_lookup program still runs and, with no verifier
    // socket, drops the lookup, which the kernel answers with a RST.
    let t = Instant::now();
    let outcome = bed.client.probe(bed.pod.mesh_addr());
    let took = t.elapsed();
    assert_eq!(
        outcome,
        Outcome::Refused,
        "agent log:\n{}",
        bed.node.agent_log()
    );
    assert!(
        took < Duration::from_secs(1),
        "refusal took {took:?}: a timeout, not a RST"
    );

    // The untouched port still works.
    assert_eq!(
        bed.client
            .get(bed.pod.addr(PLAIN_PORT), "/productpage", None)?
            .status,
        200
    );

    // Fail-open: straight to the app, which sees the client itself.
    let r = bed
        .client
        .get(open.mesh_addr(), "/api/v1/products/0", None)?;
    assert_eq!(r.status, 200);
    let peer: std::net::SocketAddr = r.header("x-echo-peer").unwrap_or_default().parse()?;
    assert_eq!(peer.ip(), IpAddr::V4(bed.client.ip));
    Ok(())
}
