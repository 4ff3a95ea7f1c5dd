//! RBAC decides on the request jwt_authn left (§1 filter order, §2.6):
//! output headers cleared even without a token and written from the
//! verified one, the consumed token header and query parameter gone. Each
//! case would decide differently if RBAC looked at the client's request.

use super::tests::{req, run, sample, workload};

/// Two providers: Istio's tests/common/jwt issuer 1 (claim `sub` →
/// `x-sub`, payload → `x-payload`) and the istio.io sample issuer (claim
/// `foo` → `x-foo`), plus an AuthorizationPolicy under test.
fn policy(ap_spec: &str) -> String {
    let common = sample("tests-common-jwt/jwks.json").replace('\n', "");
    let samples = sample("jwks.json").replace('\n', "");
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ra, namespace: foo}}
spec:
  jwtRules:
  - issuer: test-issuer-1@istio.io
    jwks: '{common}'
    outputPayloadToHeader: x-payload
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
  - issuer: testing@secure.istio.io
    jwks: '{samples}'
    outputClaimToHeaders: [{{header: x-foo, claim: foo}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: foo}}
spec:
{ap_spec}
"
    )
}

fn bearer(token: &str) -> String {
    let file = match token {
        "demo" => "demo.jwt".to_owned(),
        other => format!("tests-common-jwt/{other}.jwt"),
    };
    format!("Bearer {}", sample(&file))
}

const ALLOW_SUB_1: &str = "  rules: [{when: [{key: 'request.headers[x-sub]', values: ['sub-1']}]}]";
const DENY_WITH_AUTHORIZATION: &str =
    "  action: DENY\n  rules: [{when: [{key: 'request.headers[authorization]', values: ['*']}]}]";
const DENY_TOKEN_IN_PATH: &str =
    "  action: DENY\n  rules: [{when: [{key: 'request.headers[:path]', values: ['/x?access_token*']}]}]";

#[test]
fn rbac_sees_the_request_after_jwt_authn() {
    let issuer1 = bearer("TokenIssuer1");
    let demo = bearer("demo");
    let q1 = format!(
        "/x?access_token={}",
        sample("tests-common-jwt/TokenIssuer1.jwt")
    );
    // (why, policy, method, target, headers, status)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            "spoofed claim header without a token is cleared",
            ALLOW_SUB_1,
            "GET",
            "/",
            vec![("X-Sub", "sub-1")],
            403,
        ),
        (
            "claim header written from the verified token",
            ALLOW_SUB_1,
            "GET",
            "/",
            vec![("authorization", &issuer1)],
            200,
        ),
        (
            "forged value replaced by the token's claim",
            ALLOW_SUB_1,
            "GET",
            "/",
            vec![("authorization", &issuer1), ("x-sub", "admin")],
            200,
        ),
        // jwtgate clears every rule's output headers, also when another
        // provider verified (Envoy would skip this one: see spoofable_headers).
        (
            "spoofed header of another rule is cleared",
            ALLOW_SUB_1,
            "GET",
            "/",
            vec![("authorization", &demo), ("x-sub", "sub-1")],
            403,
        ),
        // jwtgate clears output headers on CORS preflights too.
        (
            "spoofed header on a CORS preflight is cleared",
            ALLOW_SUB_1,
            "OPTIONS",
            "/",
            vec![
                ("origin", "http://a"),
                ("access-control-request-method", "GET"),
                ("x-sub", "sub-1"),
            ],
            403,
        ),
        (
            "the consumed token header is gone",
            DENY_WITH_AUTHORIZATION,
            "GET",
            "/",
            vec![("authorization", &issuer1)],
            200,
        ),
        (
            "an unverified Authorization stays",
            DENY_WITH_AUTHORIZATION,
            "GET",
            "/",
            vec![("authorization", "Basic dTpw")],
            403,
        ),
        (
            "the consumed token parameter is gone from :path",
            DENY_TOKEN_IN_PATH,
            "GET",
            &q1,
            vec![],
            200,
        ),
        (
            "an empty token parameter is not consumed",
            DENY_TOKEN_IN_PATH,
            "GET",
            "/x?access_token=",
            vec![],
            403,
        ),
    ];
    for (why, spec, method, target, headers, want) in &cases {
        let p = workload(&policy(spec));
        let d = run(&p, &req(method, target, headers));
        assert_eq!(d.status, *want, "{why}: {}", d.reason);
    }
}

#[test]
fn forward_original_token_keeps_it_for_rbac() {
    let common = sample("tests-common-jwt/jwks.json").replace('\n', "");
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ra, namespace: foo}}
spec:
  jwtRules:
  - issuer: test-issuer-1@istio.io
    jwks: '{common}'
    forwardOriginalToken: true
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: foo}}
spec:
{DENY_WITH_AUTHORIZATION}
"
    );
    let d = run(
        &workload(&yaml),
        &req("GET", "/", &[("authorization", &bearer("TokenIssuer1"))]),
    );
    assert_eq!(d.status, 403, "{}", d.reason);
}

#[test]
fn only_the_first_provider_that_verifies_writes_headers() {
    // Two rules accept the same token (same issuer): Envoy's requires_any
    // stops at the first provider that verified, so only its headers are
    // written; the other's are still cleared.
    let common = sample("tests-common-jwt/jwks.json").replace('\n', "");
    let yaml = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ra, namespace: foo}}
spec:
  jwtRules:
  - issuer: test-issuer-1@istio.io
    jwks: '{common}'
    outputClaimToHeaders: [{{header: x-a, claim: sub}}]
  - issuer: test-issuer-1@istio.io
    jwks: '{common}'
    outputClaimToHeaders: [{{header: x-b, claim: sub}}]
"
    );
    let d = run(
        &workload(&yaml),
        &req(
            "GET",
            "/?y=1",
            &[
                ("authorization", &bearer("TokenIssuer1")),
                ("x-b", "forged"),
            ],
        ),
    );
    assert!(d.allowed, "{}", d.reason);
    assert_eq!(
        d.headers.add,
        vec![("x-a".to_string(), "sub-1".to_string())]
    );
    assert_eq!(
        d.headers.remove,
        vec![
            "x-a".to_string(),
            "x-b".to_string(),
            "authorization".to_string()
        ]
    );
    assert_eq!(d.forward_path, "/?y=1");
}

#[test]
fn consumed_query_token_leaves_the_forwarded_path() {
    let p = workload(&policy("  rules: [{}]"));
    let token = sample("tests-common-jwt/TokenIssuer1.jwt");
    let d = run(
        &p,
        &req("GET", &format!("/a?x=1&access_token={token}&y=%2F"), &[]),
    );
    assert!(d.allowed, "{}", d.reason);
    assert_eq!(d.forward_path, "/a?x=1&y=%2F");
    assert_eq!(d.principal.as_deref(), Some("test-issuer-1@istio.io/sub-1"));
}
