//! Fixed inputs shared by the targets: the Istio sample key sets and tokens
//! (agent/testdata/istio-samples, verified by the unit tests too), HMAC keys
//! for tokens whose claims the fuzzer chooses, and a signer for them.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The clock of every target (UNIX seconds); the sample tokens are valid
/// then, `TokenExpired` is not.
pub const NOW: u64 = 1_700_000_000;

pub const ISTIO_ISSUER: &str = "testing@secure.istio.io";
pub const ISTIO_JWKS: &str = include_str!("../../testdata/istio-samples/jwks.json");
pub const COMMON_JWKS: &str =
    include_str!("../../testdata/istio-samples/tests-common-jwt/jwks.json");

macro_rules! common {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!(
                "../../testdata/istio-samples/tests-common-jwt/",
                $name,
                ".jwt"
            )),
        )
    };
}

/// `(name, token)` for every Istio sample token (files may end in a newline).
const SAMPLES: [(&str, &str); 16] = [
    (
        "demo",
        include_str!("../../testdata/istio-samples/demo.jwt"),
    ),
    (
        "groups-scope",
        include_str!("../../testdata/istio-samples/groups-scope.jwt"),
    ),
    common!("TokenIssuer1"),
    common!("TokenIssuer1WithAud"),
    common!("TokenIssuer1WithAudList"),
    common!("TokenIssuer1WithAzp"),
    common!("TokenIssuer1WithNestedClaims1"),
    common!("TokenIssuer1WithNestedClaims2"),
    common!("TokenIssuer1WithCollisionResistantName"),
    common!("TokenIssuer2"),
    common!("TokenIssuer2WithSpaceDelimitedPermission"),
    common!("TokenIssuer2WithSpaceDelimitedScope"),
    common!("TokenIssuer2WithCustomScopeSpaceDelimitedScope"),
    common!("TokenIssuer3"),
    common!("TokenExpired"),
    common!("TokenInvalid"),
];

/// Every Istio sample token, trimmed.
pub fn sample_tokens() -> Vec<&'static str> {
    SAMPLES.iter().map(|(_, t)| t.trim()).collect()
}

/// `(name, token)` of the samples, for seeding corpora.
pub fn named_sample_tokens() -> Vec<(&'static str, &'static str)> {
    SAMPLES.iter().map(|(n, t)| (*n, t.trim())).collect()
}

pub const SECRET_A: &[u8] = b"jwtgate-fuzz-secret-a-0123456789";
pub const SECRET_B: &[u8] = b"jwtgate-fuzz-secret-b-9876543210";

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One `kty: oct` JWK.
pub fn oct_jwk(kid: Option<&str>, alg: Option<&str>, secret: &[u8]) -> String {
    let mut fields = vec![
        r#""kty":"oct""#.to_owned(),
        format!(r#""k":"{}""#, b64(secret)),
    ];
    if let Some(k) = kid {
        fields.push(format!(r#""kid":{}"#, serde_json::Value::from(k)));
    }
    if let Some(a) = alg {
        fields.push(format!(r#""alg":"{a}""#));
    }
    format!("{{{}}}", fields.join(","))
}

/// A JWKS document of these JWK objects.
pub fn jwks(keys: &[String]) -> String {
    format!(r#"{{"keys":[{}]}}"#, keys.join(","))
}

/// The `keys` array of a JWKS document, as JWK texts.
pub fn keys_of(jwks: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(jwks).expect("fixture JWKS");
    v["keys"]
        .as_array()
        .expect("fixture JWKS keys")
        .iter()
        .map(|k| k.to_string())
        .collect()
}

/// `header.payload.signature` with HS256/384/512 (any other `alg` name signs
/// with HS256, giving a token whose header and signature disagree).
pub fn hs_token(alg: &str, header: &[u8], payload: &[u8], secret: &[u8]) -> String {
    let signed = format!("{}.{}", b64(header), b64(payload));
    let algorithm = match alg {
        "HS384" => hmac::HMAC_SHA384,
        "HS512" => hmac::HMAC_SHA512,
        _ => hmac::HMAC_SHA256,
    };
    let tag = hmac::sign(&hmac::Key::new(algorithm, secret), signed.as_bytes());
    format!("{signed}.{}", b64(tag.as_ref()))
}

/// An HS256 token with this kid and these claims (JSON object text).
pub fn hs256(kid: &str, claims: &str, secret: &[u8]) -> String {
    let header = format!(r#"{{"alg":"HS256","kid":"{kid}","typ":"JWT"}}"#);
    hs_token("HS256", header.as_bytes(), claims.as_bytes(), secret)
}

/// The HMAC issuer of the fixed policy set; its inline JWKS holds
/// `SECRET_A` under kid `h1`.
pub const HMAC_ISSUER: &str = "https://hmac.example";
/// Verified through `authz::JwksLookup` (`SECRET_B`, kid `u1`).
pub const URI_ISSUER: &str = "https://uri.example";
pub const URI_JWKS: &str = "https://uri.example/jwks";
/// A `jwksUri` that was never fetched: tokens get 401.
pub const UNFETCHED_ISSUER: &str = "https://unfetched.example";
pub const UNFETCHED_JWKS: &str = "https://unfetched.example/jwks";

/// The fixed policy set of `authz_evaluate` (workload `foo`, `app:
/// httpbin`; root namespace `istio-system`): every kind of token location
/// and side effect, and every action and match attribute, so that random
/// requests reach every branch of `authz::evaluate`. Header names the
/// policies look at are listed in [`MENTIONED_HEADERS`].
pub fn policy_yaml() -> String {
    let istio = ISTIO_JWKS.replace('\n', "");
    let common = COMMON_JWKS.replace('\n', "");
    let hmac = jwks(&[oct_jwk(Some("h1"), None, SECRET_A)]);
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ra, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules:
  - issuer: {ISTIO_ISSUER}
    jwks: '{istio}'
    outputPayloadToHeader: x-jwt-payload
  - issuer: test-issuer-1@istio.io
    jwks: '{common}'
  - issuer: test-issuer-2@istio.io
    jwks: '{common}'
    fromHeaders: [{{name: x-jwt}}, {{name: authorization, prefix: "Bearer "}}]
    fromParams: [token]
    fromCookies: [session]
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}, {{header: x-nested, claim: nested.key2}}]
    spaceDelimitedClaims: [custom_scope]
  - issuer: {HMAC_ISSUER}
    jwks: '{hmac}'
    audiences: [api.example, "https://web.example/"]
    forwardOriginalToken: true
    spaceDelimitedClaims: [roles]
    fromHeaders: [{{name: authorization, prefix: "Bearer "}}, {{name: x-hmac-token}}]
  - issuer: {URI_ISSUER}
    jwksUri: {URI_JWKS}
  - issuer: {UNFETCHED_ISSUER}
    jwksUri: {UNFETCHED_JWKS}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: custom-ext, namespace: foo}}
spec:
  action: CUSTOM
  provider: {{name: ext-authz}}
  rules:
  - to: [{{operation: {{paths: ["/custom/*"]}}}}]
    when: [{{key: "request.headers[x-ext]", values: ["*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: audit-all, namespace: foo}}
spec:
  action: AUDIT
  rules:
  - to: [{{operation: {{paths: ["/audit*"], notMethods: [OPTIONS]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*", "*/private"], hosts: ["*.internal"]}}}}]
  - from: [{{source: {{ipBlocks: ["192.0.2.0/24", "2001:db8::/32"]}}}}, {{source: {{remoteIpBlocks: ["198.51.100.7"]}}}}]
  - from: [{{source: {{notRequestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: ["/secure/{{**}}"]}}}}]
  - when: [{{key: "request.headers[x-block]", values: ["1", "yes*"]}}, {{key: "request.headers[user-agent]", notValues: ["curl/*"]}}]
  - when: [{{key: "request.auth.claims[groups]", values: ["banned"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-port, namespace: istio-system}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{ports: ["9999"]}}}}]
  - when: [{{key: destination.port, values: ["7777"]}}, {{key: connection.sni, notValues: ["x"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-public, namespace: foo}}
spec:
  action: ALLOW
  rules:
  - to: [{{operation: {{methods: [GET, HEAD], paths: ["/public/*", "/health", "/api/{{*}}/items/{{**}}"]}}}}]
  - to: [{{operation: {{notPaths: ["/public/*", "/admin*", "/secure/*", "/api/*", "/audit*", "/custom/*"], methods: [OPTIONS]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-jwt, namespace: foo}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISTIO_ISSUER}/*", "{HMAC_ISSUER}/*", "*/sub-1"]}}}}]
    to: [{{operation: {{hosts: ["*.example.com", "httpbin.foo*"], ports: ["8000", "80"]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: ["group1", "group-1", "admin"]}}]
  - from: [{{source: {{requestPrincipals: ["{URI_ISSUER}/*"]}}}}]
    to: [{{operation: {{methods: [POST, PUT], paths: ["*.json", "/api/*"]}}}}]
    when: [{{key: "request.auth.claims[roles]", values: ["writer"]}}, {{key: request.auth.audiences, values: ["api.example"]}}]
  - when: [{{key: request.auth.presenter, values: ["bar"]}}, {{key: "request.auth.claims[nested][key2]", values: ["valueC"]}}]
  - from: [{{source: {{principals: ["cluster.local/ns/foo/sa/x"]}}}}, {{source: {{notNamespaces: ["bar"], notIpBlocks: ["10.9.0.0/16"]}}}}]
    to: [{{operation: {{paths: ["/mtls/*"]}}}}]
  - when: [{{key: source.ip, values: ["10.1.0.0/16"]}}, {{key: remote.ip, values: ["203.0.113.0/24"]}}, {{key: destination.ip, notValues: ["10.0.0.3"]}}]
    to: [{{operation: {{paths: ["/net/*"]}}}}]
  - when: [{{key: "request.headers[:path]", values: ["/q?*"]}}, {{key: "request.headers[x-role]", values: ["admin", "*-ops"]}}]
  - when: [{{key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: ["[update]"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: dry-run, namespace: foo, annotations: {{istio.io/dry-run: "true"}}}}
spec:
  action: DENY
  rules: [{{}}]
"#
    )
}

/// Header names the fixed policy set reads (matching, token locations,
/// `X-Forwarded-For`, CORS preflight). A header outside this list must not
/// change any decision.
pub const MENTIONED_HEADERS: &[&str] = &[
    "authorization",
    "x-jwt",
    "x-hmac-token",
    "cookie",
    "x-ext",
    "x-block",
    "user-agent",
    "x-role",
    "x-forwarded-for",
    "origin",
    "access-control-request-method",
    "host",
    ":authority",
    ":path",
    ":method",
];

/// Key sets of the `jwksUri` rules, as the fetcher would hand them in.
pub struct Lookup(pub std::collections::HashMap<String, std::sync::Arc<jwtgate::jwt::JwkSet>>);

impl jwtgate::authz::JwksLookup for Lookup {
    fn jwks(&self, uri: &str) -> Option<std::sync::Arc<jwtgate::jwt::JwkSet>> {
        self.0.get(uri).cloned()
    }
}

/// `URI_JWKS` → `SECRET_B` under kid `u1`; `UNFETCHED_JWKS` absent.
pub fn lookup() -> Lookup {
    let set = jwtgate::jwt::JwkSet::parse(&jwks(&[oct_jwk(Some("u1"), Some("HS256"), SECRET_B)]))
        .expect("fixture JWKS");
    Lookup([(URI_JWKS.to_owned(), std::sync::Arc::new(set))].into())
}

/// Tokens the fixed policy set knows about: every Istio sample, HMAC tokens
/// of each issuer with claims the ALLOW and DENY rules look at (valid,
/// expired, not yet valid, wrong audience, wrong key), and broken ones.
pub fn policy_tokens() -> Vec<String> {
    let exp = NOW + 3600;
    let hmac = |claims: &str| hs256("h1", claims, SECRET_A);
    let mut t: Vec<String> = sample_tokens().into_iter().map(str::to_owned).collect();
    t.extend([
        hmac(&format!(
            r#"{{"iss":"{HMAC_ISSUER}","sub":"alice","aud":"api.example","exp":{exp},"groups":["admin"],"roles":"reader writer"}}"#
        )),
        hmac(&format!(
            r#"{{"iss":"{HMAC_ISSUER}","sub":"bob","aud":["web.example"],"exp":{exp},"groups":["banned"]}}"#
        )),
        hmac(&format!(
            r#"{{"iss":"{HMAC_ISSUER}","sub":"carol","aud":"other","exp":{exp}}}"#
        )),
        hmac(&format!(
            r#"{{"iss":"{HMAC_ISSUER}","sub":"dave","aud":"api.example","exp":{}}}"#,
            NOW - 3600
        )),
        hmac(&format!(
            r#"{{"iss":"{HMAC_ISSUER}","sub":"erin","aud":"api.example","nbf":{}}}"#,
            NOW + 3600
        )),
        hs256("h1", &format!(r#"{{"iss":"{HMAC_ISSUER}","sub":"mallory","aud":"api.example"}}"#), SECRET_B),
        hs256(
            "u1",
            &format!(r#"{{"iss":"{URI_ISSUER}","sub":"svc","aud":"api.example","roles":"writer","azp":"bar","nested":{{"key2":"valueC"}}}}"#),
            SECRET_B,
        ),
        hs256("x", &format!(r#"{{"iss":"{UNFETCHED_ISSUER}","sub":"u"}}"#), SECRET_A),
        hs256("h1", r#"{"iss":"https://nobody.example","sub":"n"}"#, SECRET_A),
        "a.b.c".into(),
        "e30.e30.e30".into(),
        String::new(),
    ]);
    t
}
