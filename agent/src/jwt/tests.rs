//! Verification tests across all 13 algorithms with keys generated here (or
//! the Istio sample RSA key), strict key selection, and §2.4 ordering.

use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use super::*;
use crate::policy::{JwksSource, JwtRule};

pub(super) const NOW: u64 = 1_700_000_000;

pub(super) use super::signers::{testdata, Signers};

pub(super) fn rule(issuer: &str) -> JwtRule {
    JwtRule {
        origin: "foo/ra".into(),
        issuer: issuer.into(),
        audiences: vec![],
        jwks: JwksSource::Unset,
        locations: TokenLocation::defaults(),
        output_payload_to_header: None,
        forward_original_token: false,
        output_claim_to_headers: vec![],
        timeout: std::time::Duration::from_secs(5),
        space_delimited_claims: vec!["scope".into(), "permission".into()],
    }
}

impl Signers {
    /// The JWKS of every signer, parsed; all six keys must be usable.
    pub(super) fn jwks(&self) -> JwkSet {
        let set = JwkSet::parse(&self.jwks_json()).unwrap();
        assert_eq!(set.len(), 6);
        set
    }
}

/// A request without header lines (only a query parameter carries the token).
const NO_HEADERS: &[(&str, &str)] = &[];

const P: &str = r#"{"iss":"me","sub":"you","exp":1700000100}"#;

fn check(token: &str, keys: &JwkSet, r: &JwtRule) -> Result<(), JwtError> {
    verify_token(r, token, &Keys::Set(Arc::new(keys.clone())), NOW).map(|_| ())
}

#[test]
fn all_algorithms_verify_with_their_own_key_family() {
    // DESIGN.md "JWT verification": 13 algorithms; §2.4 step 6.
    let s = Signers::new();
    let keys = s.jwks();
    let r = rule("me");
    let family = [
        ("RS256", "rsa"),
        ("RS384", "rsa"),
        ("RS512", "rsa"),
        ("PS256", "rsa"),
        ("PS384", "rsa"),
        ("PS512", "rsa"),
        ("ES256", "p256"),
        ("ES384", "p384"),
        ("ES512", "p521"),
        ("EdDSA", "ed"),
        ("HS256", "hmac"),
        ("HS384", "hmac"),
        ("HS512", "hmac"),
    ];
    for (alg, kid) in family {
        // With the right kid, and without kid (every key is tried).
        assert_eq!(
            check(&s.token(alg, Some(kid), P), &keys, &r),
            Ok(()),
            "{alg} kid"
        );
        assert_eq!(
            check(&s.token(alg, None, P), &keys, &r),
            Ok(()),
            "{alg} no kid"
        );
        // A kid naming another family's key: that key never verifies it.
        let other = if kid == "rsa" { "p256" } else { "rsa" };
        assert_eq!(
            check(&s.token(alg, Some(other), P), &keys, &r),
            Err(JwtError::VerificationFail),
            "{alg} with {other}"
        );
        // Unknown kid ⇒ no key survives the filter.
        assert_eq!(
            check(&s.token(alg, Some("nope"), P), &keys, &r),
            Err(JwtError::KidAlgMismatch)
        );
    }
}

#[test]
fn algorithm_confusion_is_impossible() {
    let s = Signers::new();
    let keys = s.jwks();
    let r = rule("me");
    // HS256 "signed" with the RSA public key bytes as secret: the RSA key is
    // never used for HMAC (DESIGN.md strict key selection).
    let rsa_json: serde_json::Value = serde_json::from_str(&testdata("jwks.json")).unwrap();
    let n = rsa_json["keys"][0]["n"].as_str().unwrap();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"rsa"}"#);
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(P));
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, n.as_bytes()),
        signed.as_bytes(),
    );
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac));
    assert_eq!(check(&forged, &keys, &r), Err(JwtError::VerificationFail));
    // alg none is refused at parsing.
    let none = format!(
        "{}.{}.x",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(P)
    );
    assert_eq!(
        check(&none, &keys, &r),
        Err(JwtError::HeaderNotImplementedAlg)
    );
    // A key whose own alg differs from the token alg is skipped (§2.4 step 6).
    let es = JwkSet::parse(&format!(
        r#"{{"keys":[{}]}}"#,
        Signers::ec_jwk(&s.p256, "P-256", "p256").replace(r#""kty""#, r#""alg":"ES384","kty""#)
    ))
    .unwrap();
    assert_eq!(
        check(&s.token("ES256", None, P), &es, &r),
        Err(JwtError::KidAlgMismatch)
    );
    // Ed25519 signature of the wrong length.
    let t = s.token("EdDSA", Some("ed"), P);
    let short = format!("{}.AAAA", &t[..t.rfind('.').unwrap()]);
    assert_eq!(
        check(&short, &keys, &r),
        Err(JwtError::Ed25519SignatureWrongLength)
    );
    // Empty key set.
    assert_eq!(
        check(&t, &JwkSet::default(), &r),
        Err(JwtError::NoValidKeys)
    );
}

#[test]
fn verification_order_and_time() {
    // §2.4 steps 2–4: issuer, nbf/exp with 60 s inclusive skew, audience
    // (403) before signature.
    let s = Signers::new();
    let keys = s.jwks();
    let plain = rule("me");
    let mut aud_rule = rule("me");
    aud_rule.audiences = vec!["https://foo.com/".into(), "bar".into()];
    let tok = |p: &str| s.token("ES256", None, p);
    let bad_sig = |p: &str| {
        let t = tok(p);
        format!(
            "{}.{}",
            &t[..t.rfind('.').unwrap()],
            URL_SAFE_NO_PAD.encode([0u8; 64])
        )
    };
    let cases: Vec<(String, &JwtRule, Result<(), JwtError>)> = vec![
        (
            tok(r#"{"iss":"other"}"#),
            &plain,
            Err(JwtError::UnknownIssuer),
        ),
        (tok(r#"{"sub":"x"}"#), &plain, Err(JwtError::UnknownIssuer)),
        (
            tok(&format!(r#"{{"iss":"me","exp":{}}}"#, NOW - 60)),
            &plain,
            Ok(()),
        ),
        (
            tok(&format!(r#"{{"iss":"me","exp":{}}}"#, NOW - 61)),
            &plain,
            Err(JwtError::Expired),
        ),
        (tok(r#"{"iss":"me","exp":0}"#), &plain, Ok(())),
        (
            tok(&format!(r#"{{"iss":"me","nbf":{}}}"#, NOW + 60)),
            &plain,
            Ok(()),
        ),
        (
            tok(&format!(r#"{{"iss":"me","nbf":{}}}"#, NOW + 61)),
            &plain,
            Err(JwtError::NotYetValid),
        ),
        (
            bad_sig(&format!(r#"{{"iss":"me","exp":{}}}"#, NOW - 100)),
            &plain,
            Err(JwtError::Expired),
        ),
        (
            bad_sig(r#"{"iss":"me","aud":"x"}"#),
            &aud_rule,
            Err(JwtError::AudienceNotAllowed),
        ),
        (
            tok(r#"{"iss":"me"}"#),
            &aud_rule,
            Err(JwtError::AudienceNotAllowed),
        ),
        (
            tok(r#"{"iss":"me","aud":["x","http://foo.com"]}"#),
            &aud_rule,
            Ok(()),
        ),
        (
            tok(r#"{"iss":"me","aud":"https://bar/"}"#),
            &aud_rule,
            Ok(()),
        ),
        (
            bad_sig(r#"{"iss":"me"}"#),
            &plain,
            Err(JwtError::VerificationFail),
        ),
    ];
    for (t, r, want) in cases {
        assert_eq!(check(&t, &keys, r), want, "{t}");
    }
    // Empty issuer accepts any `iss` (Istio ≥ 1.27).
    assert_eq!(check(&tok(r#"{"iss":"anyone"}"#), &keys, &rule("")), Ok(()));
    // jwksUri never fetched ⇒ verification fails after the other checks (§2.7).
    let r = rule("me");
    assert_eq!(
        verify_token(&r, &tok(P), &Keys::Unavailable, NOW).map(|_| ()),
        Err(JwtError::VerificationFail)
    );
    assert_eq!(
        verify_token(&r, &tok(r#"{"iss":"x"}"#), &Keys::Unavailable, NOW).map(|_| ()),
        Err(JwtError::UnknownIssuer)
    );
}

#[test]
fn istio_sample_tokens() {
    // shared/testdata/istio-samples: demo.jwt and groups-scope.jwt verify
    // against jwks.json; changing one signature character breaks it.
    let keys = JwkSet::parse(&testdata("jwks.json")).unwrap();
    let r = rule("testing@secure.istio.io");
    for name in ["demo.jwt", "groups-scope.jwt"] {
        let t = testdata(name);
        assert_eq!(check(t.trim(), &keys, &r), Ok(()), "{name}");
    }
    let demo = testdata("demo.jwt").trim().to_owned();
    let mut b = demo.into_bytes();
    let i = b.len() - 5;
    b[i] = if b[i] == b'a' { b'b' } else { b'a' };
    assert_eq!(
        check(std::str::from_utf8(&b).unwrap(), &keys, &r),
        Err(JwtError::VerificationFail)
    );
    // demo.jwt expires at 4685989700: expired one minute + 1 s later.
    let t = testdata("demo.jwt");
    let ks = Keys::Set(Arc::new(keys));
    assert!(verify_token(&r, t.trim(), &ks, 4_685_989_760).is_ok());
    assert_eq!(
        verify_token(&r, t.trim(), &ks, 4_685_989_761).map(|_| ()),
        Err(JwtError::Expired)
    );
}

pub(super) fn arc(r: JwtRule) -> Arc<JwtRule> {
    Arc::new(r)
}

#[test]
fn requirement_combination() {
    // §2.2 table: one rule vs rules A and B with the same default location.
    let s = Signers::new();
    let keys = Arc::new(s.jwks());
    let lookup = |r: &JwtRule| match &r.jwks {
        JwksSource::Inline(set) => Keys::Set(set.clone()),
        _ => Keys::Set(keys.clone()),
    };
    let a = arc(rule("A"));
    let b = arc(rule("B"));
    let tok = |iss: &str, exp: u64| {
        s.token(
            "ES256",
            None,
            &format!(r#"{{"iss":"{iss}","sub":"s","exp":{exp}}}"#),
        )
    };
    let h = |t: &str| vec![("authorization".to_string(), format!("Bearer {t}"))];
    let run = |rules: &[Arc<JwtRule>], headers: Vec<(String, String)>| {
        authenticate(rules, &headers, None, &lookup, NOW, None)
            .result
            .map(|id| id.map(|i| i.principal()))
    };
    let one = [a.clone()];
    let two = [a.clone(), b.clone()];
    let mut b_other_keys = rule("B");
    b_other_keys.jwks = JwksSource::Inline(Arc::new(Signers::new().jwks()));
    let mut b_audience = rule("B");
    b_audience.audiences = vec!["elsewhere".into()];
    let three = [a.clone(), arc(b_other_keys), arc(b_audience)];
    type Case<'a> = (
        &'a [Arc<JwtRule>],
        Vec<(String, String)>,
        Result<Option<String>, JwtError>,
    );
    let cases: Vec<Case> = vec![
        (&one, vec![], Ok(None)),
        (&one, h(&tok("A", NOW)), Ok(Some("A/s".into()))),
        (&one, h(&tok("B", NOW)), Err(JwtError::UnknownIssuer)),
        (&two, vec![], Ok(None)),
        (&two, h(&tok("B", NOW)), Ok(Some("B/s".into()))),
        (&two, h(&tok("C", NOW)), Err(JwtError::UnknownIssuer)),
        (&two, h(&tok("B", 1)), Err(JwtError::Expired)),
        (&two, h("garbage"), Err(JwtError::BadFormat)),
        // Three rules, one token of issuer B: A says unknown issuer, B1
        // signature failure (other keys), B2 audience. requires_any keeps
        // the last real error when the first failure is an unknown issuer.
        (&three, h(&tok("B", NOW)), Err(JwtError::AudienceNotAllowed)),
        // Two tokens: both must verify (§2.3 "all of them must be valid").
        (
            &one,
            vec![
                ("authorization".into(), format!("Bearer {}", tok("A", NOW))),
                ("authorization".into(), format!("Bearer {}", tok("A", 1))),
            ],
            Err(JwtError::Expired),
        ),
    ];
    for (rules, headers, want) in cases {
        assert_eq!(run(rules, headers.clone()), want, "{headers:?}");
    }
}

#[test]
fn success_side_effects() {
    // §2.6: space-delimited claims, param removal, forwardOriginalToken.
    let s = Signers::new();
    let keys = Arc::new(s.jwks());
    let lookup = |_: &JwtRule| Keys::Set(keys.clone());
    let mut r = rule("me");
    r.space_delimited_claims.push("roles".into());
    r.forward_original_token = true;
    r.output_claim_to_headers = vec![
        ("x-n".into(), "n.k".into()),
        ("x-f".into(), "f".into()),
        ("x-b".into(), "b".into()),
        ("x-o".into(), "o".into()),
    ];
    let t = s.token(
        "ES256",
        None,
        r#"{"iss":"me","scope":"a  b","roles":"x y","permission":["p q"],"n":{"k":"v"},"f":1.5,"b":true,"o":[1]}"#,
    );
    let q = format!("x=1&access_token={t}");
    let out = authenticate(&[arc(r)], NO_HEADERS, Some(&q), &lookup, NOW, None);
    let id = out.result.unwrap().unwrap();
    assert_eq!(id.claims["scope"], serde_json::json!(["a", "b"]));
    assert_eq!(id.claims["roles"], serde_json::json!(["x", "y"]));
    assert_eq!(id.claims["permission"], serde_json::json!(["p q"]));
    assert!(out.edits.remove_params.is_empty());
    assert_eq!(
        out.edits.add_headers,
        vec![
            ("x-n".to_string(), "v".to_string()),
            ("x-f".into(), "1.500000".into()),
            ("x-b".into(), "true".into()),
            ("x-o".into(), STANDARD.encode("[1]")),
        ]
    );
    let out = authenticate(&[arc(rule("me"))], NO_HEADERS, Some(&q), &lookup, NOW, None);
    assert_eq!(out.edits.remove_params, vec!["access_token".to_string()]);
}
