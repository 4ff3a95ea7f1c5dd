//! JWKS documents (`JwkSet::parse`, agent/src/jwt/jwks.rs), as an identity
//! provider or a tenant's inline `jwks` can write them.
//!
//! Properties:
//! - document-level errors are exactly Envoy's three cases (invalid JSON /
//!   no `keys` / `keys` not an array), as serde_json sees the document;
//! - a set never has more keys than the `keys` array has entries;
//! - parsing twice gives the same keys (thumbprints), in a new generation;
//! - verifying fixed tokens (RSA, HMAC, with and without kid) against the
//!   set never panics and fails with a key error unless a key verified it;
//!   one that verifies is one the set holds the signer's key for: the Istio
//!   sample RSA modulus for the RSA tokens, the HMAC secret for the others
//!   (no algorithm or key-type confusion);
//! - heap held ≤ 64 × input + 64 KiB (docs/fuzzing.md).
#![no_main]

use std::sync::{Arc, OnceLock};

use jwtgate::jwt::{verify_token, JwkSet, JwksError, JwtError, KeyMaterial, Keys, TokenLocation};
use jwtgate::policy::{JwksSource, JwtRule, ALWAYS_SPACE_DELIMITED};
use jwtgate_fuzz::alloc::{measure, Bound};
use jwtgate_fuzz::fixtures::{
    hs256, hs_token, sample_tokens, COMMON_JWKS, ISTIO_JWKS, NOW, SECRET_A,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const BOUND: Bound = Bound {
    per_byte: 64,
    fixed: 64 * 1024,
};

fn tokens() -> &'static [String] {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| {
        let mut t: Vec<String> = sample_tokens().into_iter().map(str::to_owned).collect();
        t.push(hs256("h1", r#"{"iss":"x","sub":"y"}"#, SECRET_A));
        t.push(hs_token("HS512", br#"{"alg":"HS512"}"#, b"{}", SECRET_A));
        t.push(hs_token(
            "HS256",
            br#"{"alg":"EdDSA","kid":"h1"}"#,
            b"{}",
            SECRET_A,
        ));
        t.push(hs_token("HS256", br#"{"alg":"ES256"}"#, b"{}", SECRET_A));
        t
    })
}

/// The signers' public keys: RSA moduli of the Istio samples.
fn sample_moduli() -> &'static [Vec<u8>] {
    static M: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    M.get_or_init(|| {
        [ISTIO_JWKS, COMMON_JWKS]
            .iter()
            .flat_map(|j| JwkSet::parse(j).expect("fixture").keys().to_vec())
            .filter_map(|k| match k.material {
                KeyMaterial::Rsa { n, .. } => Some(n),
                _ => None,
            })
            .collect()
    })
}

fn rule() -> &'static JwtRule {
    static R: OnceLock<JwtRule> = OnceLock::new();
    R.get_or_init(|| JwtRule {
        origin: "fuzz/jwks".into(),
        issuer: String::new(),
        audiences: Vec::new(),
        jwks: JwksSource::Unset,
        locations: TokenLocation::defaults(),
        output_payload_to_header: None,
        forward_original_token: false,
        output_claim_to_headers: Vec::new(),
        timeout: std::time::Duration::from_secs(5),
        space_delimited_claims: ALWAYS_SPACE_DELIMITED.map(String::from).to_vec(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (parsed, peak) = measure(|| JwkSet::parse(text));
    BOUND.check("JwkSet::parse", text.len(), peak);

    let doc: Option<Value> = serde_json::from_str(text).ok();
    let want = match &doc {
        Some(Value::Object(root)) => match root.get("keys") {
            None => Err(JwksError::NoKeysField),
            Some(Value::Array(keys)) => Ok(keys.len()),
            Some(_) => Err(JwksError::KeysNotArray),
        },
        _ => Err(JwksError::InvalidJson),
    };
    let set = match (parsed, want) {
        (Ok(set), Ok(entries)) => {
            assert!(set.len() <= entries, "more keys than entries");
            set
        }
        (Err(got), Err(want)) => {
            assert_eq!(got, want);
            return;
        }
        (got, want) => panic!("JwkSet::parse gave {got:?}, the document says {want:?}"),
    };

    let again = JwkSet::parse(text).expect("parsed once");
    assert!(set.same_keys(&again), "two parses, different keys");
    assert_ne!(set.generation(), again.generation(), "generation reused");
    assert!(set.removed_in(&again).is_empty());

    let holds_signer = |jwt_alg: &str| {
        set.keys().iter().any(|k| match &k.material {
            KeyMaterial::Rsa { n, .. } => jwt_alg.starts_with("RS") && sample_moduli().contains(n),
            KeyMaterial::Oct(secret) => jwt_alg.starts_with("HS") && secret == SECRET_A,
            _ => false,
        })
    };
    let keys = Keys::Set(Arc::new(set.clone()));
    for t in tokens() {
        match verify_token(rule(), t, &keys, NOW) {
            Ok(jwt) => assert!(
                holds_signer(jwt.alg.name()),
                "{} token verified without its signer's key",
                jwt.alg.name()
            ),
            Err(
                JwtError::VerificationFail
                | JwtError::KidAlgMismatch
                | JwtError::NoValidKeys
                | JwtError::Ed25519SignatureWrongLength,
            ) => {}
            // Token-level failures do not depend on the keys; only
            // `TokenInvalid` and `TokenExpired` among the fixtures have them.
            Err(JwtError::BadFormat | JwtError::Expired) => {}
            Err(e) => panic!("unexpected {e:?} for a fixture token"),
        }
    }
});
