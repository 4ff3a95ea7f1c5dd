//! What Envoy's HTTP codec and connection manager refuse, through the real
//! agent, with raw requests no well-behaved client would send: the answer
//! and what the application received (nothing, for a refused request).

use std::io::Write;

use anyhow::Result;
use jwtgate_e2e::faq::FaqBed;
use jwtgate_e2e::tcp_app::{connect_raw, read_some};
use jwtgate_e2e::{privileged, AgentOptions};

/// Send `raw` on a new connection; the status code of the answer.
fn status_of(bed: &FaqBed, raw: &[u8]) -> Result<u16> {
    let mut s = connect_raw(&bed.client.netns, bed.pod.mesh_addr())?;
    s.write_all(raw)?;
    let (answer, _) = read_some(&mut s, 12);
    let line = String::from_utf8_lossy(&answer).into_owned();
    line.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {line:?}"))
}

#[test]
fn malformed_requests_get_envoys_answers_and_never_reach_the_app() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("shape")?;
    bed.start_agent()?;
    let big = format!(
        "GET /productpage HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "x".repeat(61 * 1024)
    );
    for (what, raw, want) in [
        (
            "lowercase method",
            &b"get /productpage HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            400,
        ),
        (
            "unknown method",
            b"FETCH /productpage HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
        ),
        (
            "two Host headers",
            b"GET /productpage HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
        ),
        ("no Host", b"GET /productpage HTTP/1.1\r\n\r\n", 400),
        (
            "HTTP/1.0",
            b"GET /productpage HTTP/1.0\r\nHost: a\r\n\r\n",
            426,
        ),
        ("more than 60 KiB of headers", big.as_bytes(), 431),
    ] {
        assert_eq!(
            status_of(&bed, raw)?,
            want,
            "{what}\n{}",
            bed.node.agent_log()
        );
    }
    assert!(
        bed.node.app_seen(&bed.pod).is_empty(),
        "a refused request reached the app"
    );

    // Absolute-form: the URL's authority is the host policies see and the
    // Host the application receives.
    let mut s = connect_raw(&bed.client.netns, bed.pod.mesh_addr())?;
    s.write_all(b"GET http://reviews.example/productpage HTTP/1.1\r\nHost: other\r\n\r\n")?;
    let (answer, _) = read_some(&mut s, 12);
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let seen = bed.node.app_seen(&bed.pod);
    let last = seen.last().expect("the app saw the request");
    assert_eq!(last.path, "/productpage");
    assert_eq!(last.header("host"), Some("reviews.example"));
    Ok(())
}

#[test]
fn http10_is_served_with_the_pilot_http10_switch() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("shape-http10")?;
    bed.node.start_agent(&AgentOptions {
        extra_args: vec!["--accept-http10".into()],
        ..AgentOptions::default()
    })?;
    assert_eq!(
        status_of(&bed, b"GET /productpage HTTP/1.0\r\nHost: a\r\n\r\n")?,
        200
    );
    // Still a policy decision: the FAQ's DENY without a token.
    assert_eq!(
        status_of(&bed, b"GET /api/v1/products/0 HTTP/1.0\r\nHost: a\r\n\r\n")?,
        403
    );
    Ok(())
}

/// jwt_authn's header effects come before RBAC (issue "Envoy-exact
/// requests", item 1): a claim header the client sends itself is removed
/// before an ALLOW condition on it is evaluated, and the one set from a
/// verified token is what the condition and the app see.
#[test]
fn a_spoofed_claim_header_cannot_satisfy_an_allow_condition() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("shape-claims")?;
    let jwks = std::fs::read_to_string(jwtgate_e2e::testdata("istio-samples/jwks.json"))?;
    bed.node.write_policy(
        "jwt-example.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt-example, namespace: foo}}\n\
             spec:\n  selector: {{matchLabels: {{app: productpage}}}}\n  jwtRules:\n  - issuer: testing@secure.istio.io\n    \
             jwks: '{}'\n    outputClaimToHeaders:\n    - {{header: x-sub, claim: sub}}\n",
            jwks.trim().replace('\'', "''")
        ),
    )?;
    bed.node.write_policy(
        "test-exclude.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: test-exclude, namespace: foo}\n\
         spec:\n  selector: {matchLabels: {app: productpage}}\n  action: ALLOW\n  rules:\n  \
         - when:\n    - {key: 'request.headers[x-sub]', values: [testing@secure.istio.io]}\n",
    )?;
    bed.start_agent()?;
    let spoof = jwtgate_e2e::Request::get("/headers").header("x-sub", "testing@secure.istio.io");
    let mut conn = bed
        .client
        .connect(bed.pod.mesh_addr())
        .map_err(|o| anyhow::anyhow!("{o}"))?;
    let r = conn.send(&spoof)?;
    assert_eq!(
        r.status,
        403,
        "spoofed claim header let through: {}",
        r.text()
    );
    let r = conn.send(&spoof.clone().bearer(Some(&jwtgate_e2e::faq::demo_jwt())))?;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = bed.node.app_seen(&bed.pod);
    let last = seen.last().expect("the app saw the request");
    assert_eq!(last.header("x-sub"), Some("testing@secure.istio.io"));
    assert!(last.header("authorization").is_none());
    Ok(())
}
