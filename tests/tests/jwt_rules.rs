//! JWTRule fields through the real agent in network namespaces: fromHeaders,
//! fromParams, forwardOriginalToken, outputPayloadToHeader, as the echo
//! app's `/headers` (and the path it saw) shows them; and the node's token
//! cache answering the repeat of a token.

use std::net::SocketAddr;

use anyhow::{anyhow, Result};
use jwtgate_e2e::faq::{demo_jwt, tampered_jwt, ISSUER};
use jwtgate_e2e::{privileged, AgentOptions, Client, PodSpec, Request, Response, TestNode};

const PORT: u16 = 8000;

/// Pod `strip`: token in `x-jwt-assertion: Bearer …` or `?token=`, payload
/// copied to `x-jwt-payload`, token removed. Pod `keep`: default locations,
/// `forwardOriginalToken: true`.
fn policies(jwks_uri: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: strip
  namespace: foo
spec:
  selector:
    matchLabels:
      app: strip
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: '{jwks_uri}'
    fromHeaders:
    - name: x-jwt-assertion
      prefix: 'Bearer '
    fromParams:
    - token
    outputPayloadToHeader: x-jwt-payload
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: keep
  namespace: foo
spec:
  selector:
    matchLabels:
      app: keep
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: '{jwks_uri}'
    forwardOriginalToken: true
"#
    )
}

fn send(client: &Client, addr: SocketAddr, req: &Request) -> Result<Response> {
    client
        .connect(addr)
        .map_err(|o| anyhow!("connecting to {addr}: {o}"))?
        .send(req)
}

/// The request headers the app reported on `/headers`.
fn seen_headers(r: &Response) -> Result<serde_json::Value> {
    Ok(r.json()?["headers"].clone())
}

#[test]
fn jwt_rule_locations_forwarding_and_payload_header() -> Result<()> {
    privileged!();
    let mut node = TestNode::new("jwt-rules")?;
    let jwks_uri = node.start_jwks_server()?;
    let strip = node.add_pod(
        PodSpec::new("strip")
            .namespace("foo")
            .labels(&[("app", "strip")])
            .port(PORT),
    )?;
    let keep = node.add_pod(
        PodSpec::new("keep")
            .namespace("foo")
            .labels(&[("app", "keep")])
            .port(PORT),
    )?;
    let client = node.add_client("client")?;
    node.write_policy("ra.yaml", &policies(&jwks_uri))?;
    node.start_agent(&AgentOptions::default())?;
    let log = |node: &TestNode| node.agent_log();

    let token = demo_jwt();
    let payload = token.split('.').nth(1).unwrap().to_string();

    // fromHeaders + outputPayloadToHeader; the token header is removed, a
    // spoofed payload header is replaced.
    let r = send(
        &client,
        strip.mesh_addr(),
        &Request::get("/headers")
            .header("X-Jwt-Assertion", &format!("Bearer {token}"))
            .header("X-Jwt-Payload", "forged"),
    )?;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), log(&node));
    let h = seen_headers(&r)?;
    assert_eq!(h["X-Jwt-Payload"], payload.as_str(), "{h}");
    assert!(h.get("X-Jwt-Assertion").is_none(), "token forwarded: {h}");

    // fromParams: the parameter is taken out of the forwarded path.
    let r = send(
        &client,
        strip.mesh_addr(),
        &Request::get(&format!("/headers?a=1&token={token}")),
    )?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen_headers(&r)?["X-Jwt-Payload"], payload.as_str());
    let last = node
        .app_seen(&strip)
        .pop()
        .expect("the app saw the request");
    assert_eq!(last.path, "/headers?a=1");

    // Explicit locations replace the defaults: a Bearer Authorization header
    // is no token for this rule, so it is neither checked nor removed.
    let r = send(
        &client,
        strip.mesh_addr(),
        &Request::get("/headers").bearer(Some(&tampered_jwt())),
    )?;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = seen_headers(&r)?;
    assert!(h.get("X-Jwt-Payload").is_none(), "{h}");
    assert!(h.get("Authorization").is_some(), "{h}");

    // A bad token at a configured location: Envoy's 401.
    let r = send(
        &client,
        strip.mesh_addr(),
        &Request::get("/headers").header("X-Jwt-Assertion", &format!("Bearer {}", tampered_jwt())),
    )?;
    assert_eq!((r.status, r.text().trim()), (401, "Jwt verification fails"));
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.contains("invalid_token")));

    // forwardOriginalToken: the Authorization header reaches the app as sent.
    let r = send(
        &client,
        keep.mesh_addr(),
        &Request::get("/headers").bearer(Some(&token)),
    )?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        seen_headers(&r)?["Authorization"],
        format!("Bearer {token}").as_str()
    );

    // The same token on another pod was answered from the node's cache.
    let metrics = node.agent().expect("agent running").metrics()?;
    let hits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("jwtgate_token_cache_hits_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no cache counter in /metrics:\n{metrics}"))?;
    assert!(hits >= 1, "{metrics}");
    Ok(())
}
