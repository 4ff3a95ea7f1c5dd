//! JWKS fetching that tenants cannot abuse, through the real agent: by
//! default a jwksUri on the node's loopback or on a link-local (cloud
//! metadata) address is refused without a request; an unreachable tenant
//! URI with an hour-long `timeout` holds readiness only up to the cap and
//! never delays another provider's keys.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jwtgate_e2e::faq::{demo_jwt, FaqBed, APP_LABEL, ISSUER, MESH_PORT, NAMESPACE};
use jwtgate_e2e::{privileged, AgentOptions, PodSpec};

const METADATA_URI: &str = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Requests nginx logged so far (its readiness probe included).
fn nginx_requests(bed: &FaqBed) -> Result<usize> {
    let log = bed.node.dir().join("nginx").join("access.log");
    Ok(std::fs::read_to_string(&log)
        .with_context(|| format!("reading {}", log.display()))?
        .lines()
        .count())
}

#[test]
fn loopback_and_metadata_jwks_uris_are_refused_by_default() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("jwks-refuse")?;
    // A second provider a tenant points at the cloud metadata service.
    bed.node.write_policy(
        "metadata.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n\
             metadata: {{name: metadata, namespace: {NAMESPACE}}}\n\
             spec:\n  selector: {{matchLabels: {{app: {APP_LABEL}}}}}\n  jwtRules:\n\
             \x20 - issuer: metadata-thief\n    jwksUri: '{METADATA_URI}'\n"
        ),
    )?;
    let nginx_before = nginx_requests(&bed)?;
    bed.node.start_agent(&AgentOptions {
        strict_jwks_addresses: true,
        ..AgentOptions::default()
    })?;
    let agent = bed.node.agent().context("agent running")?;

    // Both URIs were tried (readiness) and failed at once.
    let metrics = agent.metrics()?;
    for uri in [bed.jwks_uri.as_str(), METADATA_URI] {
        let failures = metric(
            &metrics,
            &format!("jwtgate_jwks_fetches_total{{uri=\"{uri}\",result=\"failure\"}}"),
        );
        assert!(failures.unwrap_or(0) >= 1, "{uri}: {failures:?}\n{metrics}");
    }
    let log = bed.node.agent_log();
    assert!(log.contains("a loopback address; refused"), "{log}");
    assert!(log.contains("link-local"), "{log}");
    // The refusal came before any connection: nginx saw nothing from us.
    assert_eq!(nginx_requests(&bed)?, nginx_before, "{}", log);
    // Without keys the sample token is rejected (Istio: 401).
    let r = bed
        .client
        .get(bed.pod.mesh_addr(), "/productpage", Some(&demo_jwt()))?;
    assert_eq!(r.status, 401, "{}", r.text());
    Ok(())
}

#[test]
fn an_unreachable_tenant_jwks_neither_blocks_readiness_nor_other_keys() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("jwks-slow")?;
    let tenant = bed.node.add_pod(
        PodSpec::new("tenant")
            .namespace(NAMESPACE)
            .labels(&[("app", "tenant")])
            .port(MESH_PORT),
    )?;
    // Accepts connections (the kernel's backlog) and never answers.
    let blackhole = TcpListener::bind("127.0.0.1:0")?;
    let slow_uri = format!("http://{}/jwks", blackhole.local_addr()?);
    bed.node.write_policy(
        "tenant.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n\
             metadata: {{name: tenant, namespace: {NAMESPACE}}}\n\
             spec:\n  selector: {{matchLabels: {{app: tenant}}}}\n  jwtRules:\n\
             \x20 - issuer: {ISSUER}\n    jwksUri: '{slow_uri}'\n    timeout: 3600s\n"
        ),
    )?;
    let started = Instant::now();
    // start_agent fails unless /readyz is 200 within 20 s: the rule's hour
    // is capped at 3 s.
    bed.node.start_agent(&AgentOptions {
        extra_args: vec!["--jwks-timeout-max-secs".into(), "3".into()],
        ..AgentOptions::default()
    })?;
    eprintln!("ready after {:.1?}", started.elapsed());
    let token = demo_jwt();
    let r = bed
        .client
        .get(bed.pod.mesh_addr(), "/productpage", Some(&token))?;
    assert_eq!(
        r.status,
        200,
        "the other provider's keys are there: {}",
        r.text()
    );
    let r = bed.client.get(tenant.mesh_addr(), "/", Some(&token))?;
    assert_eq!(
        r.status,
        401,
        "the tenant's provider has no keys: {}",
        r.text()
    );

    // The tenant URI keeps failing; readiness stays.
    let agent = bed.node.agent().context("agent running")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let name = format!("jwtgate_jwks_fetches_total{{uri=\"{slow_uri}\",result=\"failure\"}}");
    loop {
        let failures = metric(&agent.metrics()?, &name).unwrap_or(0);
        if failures >= 2 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{failures} failures of {slow_uri}\n{}",
                bed.node.agent_log()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let ready = jwtgate_e2e::http::get_in(None, agent.metrics_addr(), "/readyz", None)?;
    assert_eq!(ready.status, 200);
    assert!(bed.node.agent_log().contains("no answer within 3s"));
    drop(blackhole);
    Ok(())
}
