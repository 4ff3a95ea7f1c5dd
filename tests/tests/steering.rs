//! What steering does and does not touch: forwarded requests come from 127.0.0.6
//! without the token; ports outside the workload's list reach the app directly.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use jwtgate_e2e::faq::{demo_jwt, FaqBed, PLAIN_PORT};
use jwtgate_e2e::privileged;

const INBOUND_PASSTHROUGH: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));

#[test]
fn forwarded_request_comes_from_127_0_0_6_without_the_token() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("steer-fwd")?;
    bed.start_agent()?;
    let token = demo_jwt();
    let r = bed
        .client
        .get(bed.pod.mesh_addr(), "/headers", Some(&token))?;
    assert_eq!(
        r.status,
        200,
        "{}\nagent log:\n{}",
        r.text(),
        bed.node.agent_log()
    );
    let headers = r.json()?["headers"].clone();
    // forwardOriginalToken defaults to false: Envoy strips the token it verified.
    assert!(
        headers.get("Authorization").is_none(),
        "token forwarded: {headers}"
    );

    let seen = bed.node.app_seen(&bed.pod);
    let last = seen.last().expect("the app saw the request");
    assert_eq!(last.path, "/headers");
    assert_eq!(
        last.peer.ip(),
        INBOUND_PASSTHROUGH,
        "the verifier forwards from 127.0.0.6"
    );
    assert_eq!(
        last.local,
        bed.pod.mesh_addr(),
        "the original destination is kept"
    );
    assert!(last.header("authorization").is_none());
    Ok(())
}

#[test]
fn port_outside_the_workload_list_is_untouched() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("steer-plain")?;
    bed.start_agent()?;
    // Denied without a token on the mesh port, the same request on a port the agent
    // was not given goes straight to the app.
    let denied = bed
        .client
        .get(bed.pod.mesh_addr(), "/api/v1/products/0", None)?;
    assert_eq!(denied.status, 403);
    let direct = bed
        .client
        .get(bed.pod.addr(PLAIN_PORT), "/api/v1/products/0", None)?;
    assert_eq!(direct.status, 200);
    assert_eq!(
        direct.json()?["peer"]
            .as_str()
            .and_then(|p| p.split(':').next()),
        Some(bed.client.ip.to_string().as_str())
    );
    Ok(())
}
