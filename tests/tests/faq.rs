//! The ASM/Istio FAQ "skip JWT authentication for specific paths" through the real
//! agent: every row of the table, and per-request checks on one keep-alive connection.

use anyhow::Result;
use jwtgate_e2e::faq::{self, FaqBed, BODY_403};
use jwtgate_e2e::privileged;

#[test]
fn faq_table_matches_istio() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("faq-table")?;
    bed.start_agent()?;
    let results = bed.run_rows();
    let table = faq::format_table(&results);
    println!("{table}");
    assert!(
        results.iter().all(|r| r.ok()),
        "FAQ table differs:\n{table}\nagent log:\n{}",
        bed.node.agent_log()
    );
    Ok(())
}

#[test]
fn keep_alive_checks_every_request() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("faq-keepalive")?;
    bed.start_agent()?;
    let mut conn = bed
        .client
        .connect(bed.pod.mesh_addr())
        .map_err(|o| anyhow::anyhow!("{o}"))?;
    // Allowed (excluded path) first, so a proxy that only checks the first request
    // of a connection would let the second one through.
    let first = conn.get("/productpage", None)?;
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(
        !first.closes(),
        "the allowed response must keep the connection open"
    );
    let second = conn.get("/api/v1/products/0", None)?;
    assert_eq!(second.status, 403);
    assert_eq!(second.text().trim(), BODY_403);
    let paths: Vec<String> = bed
        .node
        .app_seen(&bed.pod)
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(
        paths,
        ["/productpage"],
        "the denied request must not reach the app"
    );
    Ok(())
}
