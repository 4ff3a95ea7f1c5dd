//! One test per `JWTRule` field (`reference/istio-semantics.md` §2.2 table),
//! named `jwt_rule_<field>`, through `authenticate` as the engine calls it;
//! plus malformed tokens, which must each give a clear 401 and never panic.
//! `timeout` and `jwksUri` fetching are exercised against real servers in
//! `agent/tests/jwks.rs`.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::tests::{arc, rule, Signers, NOW};
use super::*;
use crate::policy::{JwksSource, JwtRule};

type Headers = Vec<(String, String)>;

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Bed {
    s: Signers,
    keys: Arc<JwkSet>,
}

impl Bed {
    fn new() -> Bed {
        let s = Signers::new();
        let keys = Arc::new(s.jwks());
        Bed { s, keys }
    }

    fn token(&self, payload: &str) -> String {
        self.s.token("RS256", Some("rsa"), payload)
    }

    fn run(&self, r: JwtRule, headers: &[(String, String)], query: Option<&str>) -> AuthnOutcome {
        let keys = self.keys.clone();
        // `rule()` leaves jwks Unset: those rules use the bed's keys too.
        let lookup = move |rule: &JwtRule| match &rule.jwks {
            JwksSource::Inline(set) => Keys::Set(set.clone()),
            JwksSource::Uri(uri) if uri.contains("never-fetched") => Keys::Unavailable,
            JwksSource::Uri(_) | JwksSource::Unset => Keys::Set(keys.clone()),
        };
        authenticate(&[arc(r)], headers, query, &lookup, NOW, None)
    }
}

fn principal(o: &AuthnOutcome) -> Result<Option<String>, JwtError> {
    o.result.clone().map(|id| id.map(|i| i.principal()))
}

const ME: &str = r#"{"iss":"me","sub":"you","aud":["a.example","b"]}"#;

#[test]
fn jwt_rule_issuer() {
    let b = Bed::new();
    let t = format!("Bearer {}", b.token(ME));
    let ok = b.run(rule("me"), &h(&[("authorization", &t)]), None);
    assert_eq!(principal(&ok), Ok(Some("me/you".into())));
    let other = b.run(rule("someone-else"), &h(&[("authorization", &t)]), None);
    assert_eq!(principal(&other), Err(JwtError::UnknownIssuer));
    // Empty issuer: any `iss`.
    let any = b.run(rule(""), &h(&[("authorization", &t)]), None);
    assert_eq!(principal(&any), Ok(Some("me/you".into())));
}

#[test]
fn jwt_rule_audiences() {
    let b = Bed::new();
    let t = format!("Bearer {}", b.token(ME));
    let mut r = rule("me");
    r.audiences = vec!["https://a.example/".into()];
    assert!(b
        .run(r.clone(), &h(&[("authorization", &t)]), None)
        .result
        .is_ok());
    r.audiences = vec!["c".into()];
    let denied = b.run(r, &h(&[("authorization", &t)]), None);
    assert_eq!(principal(&denied), Err(JwtError::AudienceNotAllowed));
    assert_eq!(JwtError::AudienceNotAllowed.http_status(), 403);
}

#[test]
fn jwt_rule_jwks() {
    // Inline keys; a set without the token's key ⇒ kid mismatch.
    let b = Bed::new();
    let t = format!("Bearer {}", b.token(ME));
    let mut r = rule("me");
    r.jwks = JwksSource::Inline(b.keys.clone());
    assert!(b
        .run(r.clone(), &h(&[("authorization", &t)]), None)
        .result
        .is_ok());
    r.jwks = JwksSource::Inline(Arc::new(
        JwkSet::parse(r#"{"keys":[{"kty":"oct","kid":"x","k":"c2VjcmV0"}]}"#).unwrap(),
    ));
    let out = b.run(r, &h(&[("authorization", &t)]), None);
    assert_eq!(principal(&out), Err(JwtError::KidAlgMismatch));
}

#[test]
fn jwt_rule_jwks_uri() {
    // Keys come from the store (`JwksLookup`); never fetched ⇒ 401.
    let b = Bed::new();
    let t = format!("Bearer {}", b.token(ME));
    let mut r = rule("me");
    r.jwks = JwksSource::Uri("http://idp/jwks".into());
    assert!(b
        .run(r.clone(), &h(&[("authorization", &t)]), None)
        .result
        .is_ok());
    r.jwks = JwksSource::Uri("http://never-fetched/jwks".into());
    let unfetched = b.run(r.clone(), &h(&[("authorization", &t)]), None);
    assert_eq!(principal(&unfetched), Err(JwtError::VerificationFail));
    assert_eq!(principal(&b.run(r, &[], None)), Ok(None));
}

#[test]
fn jwt_rule_from_headers() {
    let b = Bed::new();
    let t = b.token(ME);
    let mut r = rule("me");
    r.locations = vec![TokenLocation::Header {
        name: "x-jwt".into(),
        prefix: "Token ".into(),
    }];
    let out = b.run(r.clone(), &h(&[("X-JWT", &format!("Token {t}"))]), None);
    assert_eq!(principal(&out), Ok(Some("me/you".into())));
    assert_eq!(out.edits.remove_headers, vec!["x-jwt".to_string()]);
    // The default Authorization header is no longer a location.
    let ignored = b.run(r, &h(&[("authorization", &format!("Bearer {t}"))]), None);
    assert_eq!(principal(&ignored), Ok(None));
}

#[test]
fn jwt_rule_from_params() {
    let b = Bed::new();
    let t = b.token(ME);
    let mut r = rule("me");
    r.locations = vec![TokenLocation::Param("token".into())];
    let out = b.run(r.clone(), &[], Some(&format!("a=1&token={t}")));
    assert_eq!(principal(&out), Ok(Some("me/you".into())));
    assert_eq!(out.edits.remove_params, vec!["token".to_string()]);
    let default_param = b.run(r, &[], Some(&format!("access_token={t}")));
    assert_eq!(principal(&default_param), Ok(None));
}

#[test]
fn jwt_rule_from_cookies() {
    let b = Bed::new();
    let t = b.token(ME);
    let mut r = rule("me");
    r.locations = vec![TokenLocation::Cookie("session".into())];
    let cookie = format!("a=b; session=\"{t}\"");
    let out = b.run(r, &h(&[("cookie", &cookie)]), None);
    assert_eq!(principal(&out), Ok(Some("me/you".into())));
    // Envoy never rewrites cookies.
    assert!(out.edits.remove_headers.is_empty());
}

#[test]
fn jwt_rule_default_locations() {
    let b = Bed::new();
    let t = b.token(ME);
    let header = b.run(
        rule("me"),
        &h(&[("authorization", &format!("Bearer {t}"))]),
        None,
    );
    assert_eq!(principal(&header), Ok(Some("me/you".into())));
    let param = b.run(rule("me"), &[], Some(&format!("access_token={t}")));
    assert_eq!(principal(&param), Ok(Some("me/you".into())));
    // Wrong scheme case or no scheme: the token is missing, not invalid (§2.3).
    for v in [format!("bearer {t}"), t.clone()] {
        let out = b.run(rule("me"), &h(&[("authorization", &v)]), None);
        assert_eq!(principal(&out), Ok(None), "{v}");
    }
}

#[test]
fn jwt_rule_output_payload_to_header() {
    let b = Bed::new();
    let t = b.token(ME);
    let mut r = rule("me");
    r.output_payload_to_header = Some("X-Payload".into());
    let out = b.run(
        r,
        &h(&[
            ("authorization", &format!("Bearer {t}")),
            ("x-payload", "forged"),
        ]),
        None,
    );
    let payload = t.split('.').nth(1).unwrap().to_string();
    assert_eq!(
        out.edits.add_headers,
        vec![("x-payload".to_string(), payload)]
    );
    assert!(out.edits.remove_headers.contains(&"x-payload".to_string()));
}

#[test]
fn jwt_rule_forward_original_token() {
    let b = Bed::new();
    let auth = format!("Bearer {}", b.token(ME));
    let removed = b.run(rule("me"), &h(&[("authorization", &auth)]), None);
    assert_eq!(
        removed.edits.remove_headers,
        vec!["authorization".to_string()]
    );
    let mut r = rule("me");
    r.forward_original_token = true;
    let kept = b.run(r, &h(&[("authorization", &auth)]), None);
    assert!(kept.edits.remove_headers.is_empty());
}

#[test]
fn jwt_rule_output_claim_to_headers() {
    let b = Bed::new();
    let t = b.token(r#"{"iss":"me","sub":"you","n":{"k":7},"ok":true}"#);
    let mut r = rule("me");
    r.output_claim_to_headers = vec![
        ("x-sub".into(), "sub".into()),
        ("x-k".into(), "n.k".into()),
        ("x-ok".into(), "ok".into()),
        ("x-none".into(), "missing".into()),
    ];
    let out = b.run(
        r,
        &h(&[
            ("authorization", &format!("Bearer {t}")),
            ("x-none", "spoof"),
        ]),
        None,
    );
    assert_eq!(
        out.edits.add_headers,
        vec![
            ("x-sub".to_string(), "you".to_string()),
            ("x-k".into(), "7".into()),
            ("x-ok".into(), "true".into()),
        ]
    );
    // Spoofed output headers are removed even when the claim is missing.
    assert!(out.edits.remove_headers.contains(&"x-none".to_string()));
}

#[test]
fn jwt_rule_space_delimited_claims() {
    let b = Bed::new();
    let t = b.token(r#"{"iss":"me","scope":"a b","roles":"r1 r2","other":"x y"}"#);
    let mut r = rule("me");
    r.space_delimited_claims.push("roles".into());
    let out = b.run(r, &h(&[("authorization", &format!("Bearer {t}"))]), None);
    let claims = out.result.unwrap().unwrap().claims;
    assert_eq!(claims["scope"], serde_json::json!(["a", "b"]));
    assert_eq!(claims["roles"], serde_json::json!(["r1", "r2"]));
    assert_eq!(claims["other"], serde_json::json!("x y"));
}

#[test]
fn malformed_tokens_get_a_clear_401() {
    let b = Bed::new();
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let good = b.token(ME);
    let sig = good.rsplit('.').next().unwrap();
    let with = |header: &str, payload: &str| format!("{}.{}.{sig}", b64(header), b64(payload));
    let hdr = r#"{"alg":"RS256","kid":"rsa"}"#;
    let deep = format!(
        "{{\"iss\":\"me\",\"a\":{}1{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let huge_claim = format!(r#"{{"iss":"me","pad":"{}"}}"#, "x".repeat(64 * 1024));
    let cases: Vec<(&str, String, JwtError)> = vec![
        (
            "truncated",
            good[..good.find('.').unwrap() + 5].to_string(),
            JwtError::BadFormat,
        ),
        (
            "truncated signature",
            good[..good.len() - 10].to_string(),
            JwtError::VerificationFail,
        ),
        (
            "bad base64 header",
            format!("ab$d.{}", &good[good.find('.').unwrap() + 1..]),
            JwtError::HeaderBadBase64,
        ),
        (
            "bad base64 payload",
            format!("{}.%%%.{sig}", b64(hdr)),
            JwtError::PayloadBadBase64,
        ),
        (
            "non-JSON header",
            with("not json", ME),
            JwtError::HeaderBadJson,
        ),
        (
            "non-JSON payload",
            with(hdr, "[1,2"),
            JwtError::PayloadBadJson,
        ),
        (
            "duplicate header key",
            with(r#"{"alg":"RS256","alg":"none"}"#, ME),
            JwtError::HeaderBadJson,
        ),
        (
            "duplicate claim",
            with(hdr, r#"{"iss":"me","iss":"evil"}"#),
            JwtError::PayloadBadJson,
        ),
        (
            "deeply nested claims",
            with(hdr, &deep),
            JwtError::PayloadBadJson,
        ),
        (
            "64 KiB token",
            with(hdr, &huge_claim),
            JwtError::VerificationFail,
        ),
        ("64 KiB of junk", "a".repeat(64 * 1024), JwtError::BadFormat),
        (
            "alg none",
            with(r#"{"alg":"none"}"#, ME),
            JwtError::HeaderNotImplementedAlg,
        ),
    ];
    let cache = TokenCache::new(CacheConfig::default());
    for (name, token, want) in cases {
        let headers = h(&[("authorization", &format!("Bearer {token}"))]);
        let lookup = |_: &JwtRule| Keys::Set(b.keys.clone());
        for c in [None, Some(&cache), Some(&cache)] {
            let out = authenticate(&[arc(rule("me"))], &headers, None, &lookup, NOW, c);
            assert_eq!(principal(&out), Err(want), "{name}");
            assert_eq!(want.http_status(), 401, "{name}");
            assert!(!want.to_string().is_empty());
        }
    }
}
