//! `jwtgate deny-source` with a TTL: the XDP guard drops the source (no answer at
//! all) until the entry expires; other sources are unaffected.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use jwtgate_e2e::faq::FaqBed;
use jwtgate_e2e::{privileged, Outcome};

const TTL_SECS: u64 = 3;

#[test]
fn denied_source_times_out_until_the_ttl_expires() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("deny-src")?;
    let other = bed.node.add_client("other")?;
    bed.start_agent()?;
    let addr = bed.pod.mesh_addr();
    assert_eq!(bed.client.get(addr, "/productpage", None)?.status, 200);

    let pin_root = bed.node.pin_root().to_string_lossy().into_owned();
    let source = bed.client.ip.to_string();
    let ttl = TTL_SECS.to_string();
    let denied_at = Instant::now();
    bed.node.jwtgate(&[
        "deny-source",
        "--pin-root",
        &pin_root,
        "--source",
        &source,
        "--ttl",
        &ttl,
    ])?;

    // Dropped in XDP: the SYN gets no answer, not a RST.
    assert_eq!(
        bed.client.probe(addr),
        Outcome::TimedOut,
        "agent log:\n{}",
        bed.node.agent_log()
    );
    assert_eq!(
        other.get(addr, "/productpage", None)?.status,
        200,
        "only the denied source is dropped"
    );

    // Poll (bounded) until the entry has expired.
    let deadline = denied_at + Duration::from_secs(TTL_SECS + 7);
    loop {
        match bed.client.get(addr, "/productpage", None) {
            Ok(r) if r.status == 200 => break,
            Ok(r) => bail!("unexpected {} after the ban: {}", r.status, r.text()),
            Err(e) if Instant::now() > deadline => {
                bail!(
                    "still blocked {:?} after a {TTL_SECS} s ban: {e:#}",
                    denied_at.elapsed()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    assert!(
        denied_at.elapsed() >= Duration::from_secs(TTL_SECS) - Duration::from_millis(500),
        "the ban ended after {:?}, before its TTL",
        denied_at.elapsed()
    );
    Ok(())
}
