//! End-to-end decisions through `evaluate` (policy YAML → Decision).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::*;
use crate::jwt::JwkSet;
use crate::policy::{PolicySet, WorkloadRef};

pub(crate) const NOW: u64 = 1_700_000_000;
const JWKS_URI: &str =
    "https://raw.githubusercontent.com/istio/istio/release-1.28/security/tools/jwt/samples/jwks.json";

pub(crate) fn sample(name: &str) -> String {
    let p = format!(
        "{}/testdata/istio-samples/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .trim()
        .to_owned()
}

pub(crate) struct Map(pub HashMap<String, Arc<JwkSet>>);

impl JwksLookup for Map {
    fn jwks(&self, uri: &str) -> Option<Arc<JwkSet>> {
        self.0.get(uri).cloned()
    }
}

fn sample_lookup() -> Map {
    let set = Arc::new(JwkSet::parse(&sample("jwks.json")).unwrap());
    Map(HashMap::from([(JWKS_URI.to_owned(), set)]))
}

pub(super) fn workload(yaml: &str) -> WorkloadPolicy {
    let (set, errors) = PolicySet::parse(&[("test.yaml".into(), yaml.into())]);
    assert!(errors.is_empty(), "{errors:?}");
    let w = WorkloadRef {
        namespace: "foo".into(),
        labels: [("app".to_string(), "httpbin".to_string())].into(),
    };
    set.for_workload(&w, "istio-system")
}

pub(super) fn req<'a>(
    method: &'a str,
    path: &'a str,
    headers: &[(&'a str, &'a str)],
) -> Request<'a> {
    Request {
        method,
        path,
        host: "httpbin.foo:8000",
        headers: headers.to_vec(),
        source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        destination_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        destination_port: 8000,
    }
}

pub(super) fn run(policy: &WorkloadPolicy, r: &Request) -> Decision {
    evaluate(
        policy,
        r,
        &sample_lookup(),
        NOW,
        PathNormalization::default(),
        None,
    )
}

fn tampered(token: &str) -> String {
    // Change one character in the middle of the signature.
    let mut b = token.as_bytes().to_vec();
    let i = token.rfind('.').unwrap() + 10;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

const FAQ: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt-example
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.28/security/tools/jwt/samples/jwks.json"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: test-exclude
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: ["*"]
    to:
    - operation:
        notPaths: ["/productpage"]
"#;

#[test]
fn faq_exclude_path_from_jwt() {
    // istio.io FAQ "exclude a path from JWT": DENY notRequestPrincipals ['*']
    // + notPaths ['/productpage'] (§3.10 negative matches, §2.2 missing ⇒ allowed).
    let p = workload(FAQ);
    let demo = format!("Bearer {}", sample("demo.jwt"));
    let bad = format!("Bearer {}", tampered(&sample("demo.jwt")));
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        ("/productpage", None, 200, ""),
        ("/api/v1/products/0", None, 403, "RBAC: access denied"),
        ("/api/v1/products/1", None, 403, "RBAC: access denied"),
        ("/productpage", Some(&demo), 200, ""),
        ("/api/v1/products/0", Some(&demo), 200, ""),
        ("/api/v1/products/1", Some(&demo), 200, ""),
        ("/productpage", Some(&bad), 401, "Jwt verification fails"),
        (
            "/api/v1/products/0",
            Some(&bad),
            401,
            "Jwt verification fails",
        ),
        // Normalization bypass attempts (DESIGN.md) must not reach /productpage rules.
        ("//api/v1/products/0", None, 403, "RBAC: access denied"),
        (
            "/productpage/../api/v1/products/0",
            None,
            403,
            "RBAC: access denied",
        ),
        (
            "/productpage/%2e%2e/api/v1/products/0",
            None,
            403,
            "RBAC: access denied",
        ),
        (
            "/productpage%2F..%2Fapi/v1/products/0",
            None,
            403,
            "RBAC: access denied",
        ),
        ("/productpage/", None, 403, "RBAC: access denied"),
        // The query is never part of the path (§3.12).
        ("/productpage?x=/api", None, 200, ""),
        // `bearer` lower case = no token (§2.3) ⇒ RBAC decides.
        ("/productpage", Some("bearer x.y.z"), 200, ""),
    ];
    for (path, auth, status, body) in cases {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        let d = run(&p, &req("GET", path, &headers));
        assert_eq!(
            (d.status, d.body.as_str()),
            (*status, *body),
            "{path} {auth:?}: {}",
            d.reason
        );
        assert_eq!(d.allowed, *status == 200);
    }
}

#[test]
fn faq_success_details() {
    let p = workload(FAQ);
    let auth = format!("Bearer {}", sample("demo.jwt"));
    let d = run(
        &p,
        &req("GET", "/api/x/../v1?a=1", &[("Authorization", &auth)]),
    );
    assert!(d.allowed);
    assert_eq!(
        d.principal.as_deref(),
        Some("testing@secure.istio.io/testing@secure.istio.io")
    );
    assert_eq!(d.forward_path, "/api/v1?a=1");
    // §2.6: the token header is removed unless forwardOriginalToken.
    assert_eq!(d.headers.remove, vec!["authorization".to_string()]);
}

#[test]
fn www_authenticate_and_statuses() {
    // §2.5: realm = http://host + path incl. query, truncated to 256.
    let p = workload(FAQ);
    let expired = format!("Bearer {}", sample("tests-common-jwt/TokenExpired.jwt"));
    let d = run(&p, &req("GET", "/a?b=c", &[("Authorization", &expired)]));
    // TokenExpired has another issuer ⇒ issuer check first (§2.4 step 2).
    assert_eq!(
        (d.status, d.body.as_str()),
        (401, "Jwt issuer is not configured")
    );
    assert_eq!(
        d.www_authenticate.as_deref(),
        Some("Bearer realm=\"http://httpbin.foo:8000/a?b=c\", error=\"invalid_token\"")
    );
    let long = format!("/{}", "x".repeat(400));
    let d = run(&p, &req("GET", &long, &[("Authorization", "Bearer a.b")]));
    assert_eq!(
        d.body,
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );
    let realm = d.www_authenticate.unwrap();
    assert!(
        realm.contains(&format!("http://httpbin.foo:8000/{}\"", "x".repeat(255))),
        "{realm}"
    );
}

#[test]
fn jwks_never_fetched() {
    // §2.7 (≥ 1.29.1): tokens ⇒ 401 `Jwt verification fails`; no token ⇒ authz.
    let p = workload(FAQ);
    let empty = Map(HashMap::new());
    let auth = format!("Bearer {}", sample("demo.jwt"));
    let d = evaluate(
        &p,
        &req("GET", "/productpage", &[("Authorization", &auth)]),
        &empty,
        NOW,
        PathNormalization::Base,
        None,
    );
    assert_eq!((d.status, d.body.as_str()), (401, "Jwt verification fails"));
    let d = evaluate(
        &p,
        &req("GET", "/productpage", &[]),
        &empty,
        NOW,
        PathNormalization::Base,
        None,
    );
    assert_eq!(d.status, 200);
}

#[test]
fn cors_preflight_bypasses_jwt() {
    // §2.5 bypass_cors_preflight: expired token ignored with Origin + ACRM.
    let p = workload(FAQ);
    let bad = "Bearer x.y.z";
    let pre = [
        ("Authorization", bad),
        ("Origin", "http://a"),
        ("Access-Control-Request-Method", "GET"),
    ];
    assert_eq!(run(&p, &req("OPTIONS", "/productpage", &pre)).status, 200);
    assert_eq!(
        run(&p, &req("OPTIONS", "/productpage", &pre[..2])).status,
        401
    );
}

const ISSUERS: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: ra, namespace: foo}
spec:
  jwtRules:
  - issuer: test-issuer-1@istio.io
    jwks: '__JWKS__'
    outputPayloadToHeader: x-payload
    outputClaimToHeaders: [{header: x-sub, claim: sub}, {header: x-iat, claim: iat}]
  - issuer: test-issuer-2@istio.io
    jwks: '__JWKS__'
    audiences: [bar]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: foo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["test-issuer-1@istio.io/sub-1"]}}]
  - to: [{operation: {paths: ["/public/*"]}}]
  - when:
    - key: request.auth.claims[scope]
      values: ["write"]
  - when:
    - key: request.auth.claims[nested][key2]
      values: ["valueC"]
"#;

#[test]
fn multiple_issuers_and_claims() {
    // §2.2 table (rules A and B) and §3.7/§3.8 matching, with Istio's
    // tests/common/jwt tokens.
    let jwks = sample("tests-common-jwt/jwks.json").replace('\n', "");
    let p = workload(&ISSUERS.replace("__JWKS__", &jwks));
    let tok = |n: &str| format!("Bearer {}", sample(&format!("tests-common-jwt/{n}.jwt")));
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("/x", Some(tok("TokenIssuer1")), 200, ""),
        ("/public/a", None, 200, ""),
        ("/x", None, 403, "RBAC: access denied"),
        // B-token with wrong aud ⇒ 403 from authn (§2.2).
        (
            "/x",
            Some(tok("TokenIssuer2")),
            403,
            "Audiences in Jwt are not allowed",
        ),
        (
            "/x",
            Some(tok("TokenIssuer3")),
            401,
            "Jwt issuer is not configured",
        ),
        ("/x", Some(tok("TokenExpired")), 401, "Jwt is expired"),
        (
            "/x",
            Some(tok("TokenInvalid")),
            401,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        ("/x", Some(tok("TokenIssuer1WithNestedClaims2")), 200, ""),
        (
            "/public",
            Some(tok("TokenIssuer1WithNestedClaims1")),
            200,
            "",
        ),
    ];
    for (path, auth, status, body) in cases {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let d = run(&p, &req("GET", path, &headers));
        assert_eq!(
            (d.status, d.body.as_str()),
            (status, body),
            "{path} {auth:?}: {}",
            d.reason
        );
    }
    // §2.6 output headers and anti-spoofing.
    let t = sample("tests-common-jwt/TokenIssuer1.jwt");
    let auth = format!("Bearer {t}");
    let d = run(
        &p,
        &req("GET", "/x", &[("authorization", &auth), ("x-sub", "admin")]),
    );
    assert!(d.allowed, "{}", d.reason);
    for h in ["x-payload", "x-sub", "x-iat", "authorization"] {
        assert!(
            d.headers.remove.contains(&h.to_string()),
            "{h} {:?}",
            d.headers
        );
    }
    assert!(d
        .headers
        .add
        .contains(&("x-payload".into(), t.split('.').nth(1).unwrap().into())));
    assert!(d.headers.add.contains(&("x-sub".into(), "sub-1".into())));
    assert!(d
        .headers
        .add
        .contains(&("x-iat".into(), "1562182722".into())));
}

/// One AuthorizationPolicy (`action`, `rules` YAML) plus the FAQ
/// RequestAuthentication; returns the status for a request.
fn status_with(
    ap_spec: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    token: Option<&str>,
) -> (u16, String) {
    let yaml = format!(
        "{}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\nspec:\n{ap_spec}\n",
        FAQ.split("---").next().unwrap()
    );
    let p = workload(&yaml);
    let auth = token.map(|t| format!("Bearer {}", sample(t)));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let d = run(&p, &req(method, path, &headers));
    (d.status, d.reason.to_string())
}

#[test]
fn rbac_semantics_table() {
    // (section, policy spec, method, path, headers, token, expected status)
    let demo = Some("demo.jwt");
    let groups = Some("groups-scope.jwt");
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
        u16,
    );
    let cases: &[Case] = &[
        ("§3.2 allow-nothing", "  {}", "GET", "/", &[], demo, 403),
        ("§3.2 allow-all", "  rules: [{}]", "GET", "/", &[], None, 200),
        ("§3.2 deny-all", "  action: DENY\n  rules: [{}]", "GET", "/", &[], demo, 403),
        ("§3.1 audit has no effect", "  action: AUDIT\n  rules: [{}]", "GET", "/", &[], None, 200),
        ("§3.10 require JWT", "  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]", "GET", "/", &[], None, 403),
        ("§3.10 require JWT ok", "  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]", "GET", "/", &[], demo, 200),
        ("§3.7 exact", "  rules: [{from: [{source: {requestPrincipals: ['testing@secure.istio.io/testing@secure.istio.io']}}]}]", "GET", "/", &[], demo, 200),
        ("§3.7 iss prefix", "  rules: [{from: [{source: {requestPrincipals: ['testing@*']}}]}]", "GET", "/", &[], demo, 200),
        ("§3.7 sub only", "  rules: [{from: [{source: {requestPrincipals: ['*/testing@secure.istio.io']}}]}]", "GET", "/", &[], demo, 200),
        ("§3.7 no slash ⇒ empty sub", "  rules: [{from: [{source: {requestPrincipals: ['testing@secure.istio.io']}}]}]", "GET", "/", &[], demo, 403),
        ("§3.10 notRequestPrincipals anonymous", "  rules: [{from: [{source: {notRequestPrincipals: ['a/b']}}]}]", "GET", "/", &[], None, 200),
        ("§3.3 notPaths with paths", "  action: DENY\n  rules: [{to: [{operation: {paths: ['/deny*'], notPaths: ['/deny/allow']}}]}]", "GET", "/deny/allow", &[], None, 200),
        ("§3.3 paths prefix", "  action: DENY\n  rules: [{to: [{operation: {paths: ['/deny*'], notPaths: ['/deny/allow']}}]}]", "GET", "/deny?x", &[], None, 403),
        ("§3.12 exact path, query ignored", "  action: DENY\n  rules: [{to: [{operation: {paths: ['/allow/admin']}}]}]", "GET", "/allow/admin?param=value", &[], None, 403),
        ("§3.12 template {**}", "  action: DENY\n  rules: [{to: [{operation: {paths: ['/allow/admin/{**}']}}]}]", "GET", "/allow/admin/", &[], None, 403),
        ("§3.12 template {**} not parent", "  action: DENY\n  rules: [{to: [{operation: {paths: ['/allow/admin/{**}']}}]}]", "GET", "/allow/admin", &[], None, 200),
        ("§3.12 template {*}", "  action: DENY\n  rules: [{to: [{operation: {paths: ['/store/{*}/cart']}}]}]", "GET", "/store/x/cart", &[], None, 403),
        ("§3.12 template {*} one segment", "  action: DENY\n  rules: [{to: [{operation: {paths: ['/store/{*}/cart']}}]}]", "GET", "/store/x/y/cart", &[], None, 200),
        ("§3.4 methods", "  rules: [{to: [{operation: {methods: [GET, HEAD]}}]}]", "POST", "/", &[], None, 403),
        ("§3.4 notMethods", "  rules: [{to: [{operation: {notMethods: [POST]}}]}]", "GET", "/", &[], None, 200),
        ("§3.4 hosts ignore case", "  action: DENY\n  rules: [{to: [{operation: {hosts: ['HTTPBIN.foo:*']}}]}]", "GET", "/", &[], None, 403),
        ("§3.4 host with port", "  action: DENY\n  rules: [{to: [{operation: {hosts: ['httpbin.foo']}}]}]", "GET", "/", &[], None, 200),
        ("§3.6 ports", "  rules: [{to: [{operation: {ports: ['8000']}}]}]", "GET", "/", &[], None, 200),
        ("§3.6 notPorts", "  rules: [{to: [{operation: {notPorts: ['8000']}}]}]", "GET", "/", &[], None, 403),
        ("§3.5 ipBlocks", "  rules: [{from: [{source: {ipBlocks: ['10.0.0.0/24']}}]}]", "GET", "/", &[], None, 200),
        ("§3.5 notIpBlocks", "  action: DENY\n  rules: [{from: [{source: {notIpBlocks: ['10.0.0.0/24']}}]}]", "GET", "/", &[], None, 200),
        ("§3.9 header", "  rules: [{when: [{key: 'request.headers[X-Ver]', values: ['v1*']}]}]", "GET", "/", &[("x-ver", "v1.2")], None, 200),
        ("§3.9 header missing", "  rules: [{when: [{key: 'request.headers[X-Ver]', values: ['*']}]}]", "GET", "/", &[], None, 403),
        ("§3.9 header notValues missing", "  rules: [{when: [{key: 'request.headers[X-Ver]', notValues: ['v1']}]}]", "GET", "/", &[], None, 200),
        ("§3.8 claim string", "  rules: [{when: [{key: 'request.auth.claims[foo]', values: [bar]}]}]", "GET", "/", &[], demo, 200),
        ("§3.8 claim list", "  rules: [{when: [{key: 'request.auth.claims[groups]', values: [group2]}]}]", "GET", "/", &[], groups, 200),
        ("§3.8 number never matches", "  rules: [{when: [{key: 'request.auth.claims[exp]', values: ['*']}]}]", "GET", "/", &[], demo, 403),
        ("§3.8 notValues, no JWT", "  rules: [{when: [{key: 'request.auth.claims[foo]', notValues: [bar]}]}]", "GET", "/", &[], None, 200),
        ("§3.8 principal condition", "  rules: [{when: [{key: request.auth.principal, values: ['testing@secure.istio.io/*']}]}]", "GET", "/", &[], demo, 200),
        ("§3.9 destination.port", "  action: DENY\n  rules: [{when: [{key: destination.port, values: ['8000']}]}]", "GET", "/", &[], None, 403),
        // Peer identities on plaintext (§3.5): positive never, not-form always.
        ("§3.5 principals ALLOW", "  rules: [{from: [{source: {principals: ['*']}}]}]", "GET", "/", &[], demo, 403),
        ("§3.5 namespaces DENY", "  action: DENY\n  rules: [{from: [{source: {namespaces: ['x']}}]}]", "GET", "/", &[], None, 200),
        ("§3.5 notPrincipals DENY", "  action: DENY\n  rules: [{from: [{source: {notPrincipals: ['x']}}], to: [{operation: {paths: ['/admin']}}]}]", "GET", "/ok", &[], None, 200),
        // CUSTOM: matching rules deny (istiod's fallback), others pass (§3.1).
        ("§3.1 CUSTOM match", "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{to: [{operation: {paths: ['/admin*']}}]}]", "GET", "/admin/x", &[], demo, 403),
        ("§3.1 CUSTOM no match", "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{to: [{operation: {paths: ['/admin*']}}]}]", "GET", "/x", &[], None, 200),
    ];
    for (what, spec, method, path, headers, token, want) in cases {
        let (status, reason) = status_with(spec, method, path, headers, *token);
        assert_eq!(status, *want, "{what}: {reason}");
    }
}

#[test]
fn custom_reason_and_precedence() {
    // CUSTOM runs before jwt_authn (§1): a bad token on a CUSTOM path is 403.
    let spec = "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{to: [{operation: {paths: ['/admin*']}}]}]";
    let (status, reason) = status_with(
        spec,
        "GET",
        "/admin",
        &[("authorization", "Bearer x.y.z")],
        None,
    );
    assert_eq!(status, 403);
    assert!(
        reason.starts_with("CUSTOM action is not supported"),
        "{reason}"
    );
}

#[test]
fn percent_zero_is_bad_request() {
    let p = workload(FAQ);
    let d = run(&p, &req("GET", "/a%00", &[]));
    assert_eq!((d.status, d.allowed), (400, false));
}
