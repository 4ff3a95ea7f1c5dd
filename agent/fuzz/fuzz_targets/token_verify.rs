//! Token parse + verify (`jwt::parse`, `jwt::verify_token`) on random token
//! text, against fixed key sets (the Istio samples and an HMAC key) and
//! rules with and without issuer and audiences.
//!
//! Properties:
//! - no input panics; every error maps to 401 or 403 with Envoy's text;
//! - the node cache agrees with full verification: for every rule, key set
//!   and clock, `verify_token_cached` on a fresh cache (miss) and again
//!   (hit, or remembered failure) gives what `verify_token` gives, so a
//!   token accepted from the cache is one that verification accepts;
//! - an accepted token is one the parser accepts, from a rule's issuer,
//!   within its time window;
//! - heap held ≤ 32 × input + 64 KiB (docs/fuzzing.md).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jwtgate::jwt::{
    parse, verify_token, verify_token_cached, CacheConfig, JwkSet, Jwt, JwtError, Keys, TokenCache,
    TokenLocation, CLOCK_SKEW_SECS,
};
use jwtgate::policy::{JwksSource, JwtRule, ALWAYS_SPACE_DELIMITED};
use jwtgate_fuzz::alloc::{measure, Bound};
use jwtgate_fuzz::fixtures::{jwks, keys_of, oct_jwk, COMMON_JWKS, ISTIO_JWKS, NOW, SECRET_A};
use libfuzzer_sys::fuzz_target;

const BOUND: Bound = Bound {
    per_byte: 32,
    fixed: 64 * 1024,
};

struct Fixed {
    rules: Vec<JwtRule>,
    keys: Vec<Keys>,
}

fn rule(issuer: &str, audiences: &[&str]) -> JwtRule {
    JwtRule {
        origin: "fuzz/ra".into(),
        issuer: issuer.into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        jwks: JwksSource::Unset,
        locations: TokenLocation::defaults(),
        output_payload_to_header: None,
        forward_original_token: false,
        output_claim_to_headers: Vec::new(),
        timeout: Duration::from_secs(5),
        space_delimited_claims: ALWAYS_SPACE_DELIMITED.map(String::from).to_vec(),
    }
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let mut all = keys_of(ISTIO_JWKS);
        all.extend(keys_of(COMMON_JWKS));
        all.push(oct_jwk(Some("h1"), None, SECRET_A));
        all.push(oct_jwk(None, Some("HS384"), SECRET_A));
        let set = |doc: &str| Keys::Set(Arc::new(JwkSet::parse(doc).expect("fixture JWKS")));
        Fixed {
            rules: vec![
                rule("", &[]),
                rule("testing@secure.istio.io", &[]),
                rule("test-issuer-1@istio.io", &["foo", "http://buzz/"]),
                rule("h", &["a"]),
            ],
            keys: vec![
                set(&jwks(&all)),
                set(ISTIO_JWKS),
                set(r#"{"keys":[]}"#),
                Keys::Unavailable,
            ],
        }
    })
}

const NOWS: [u64; 4] = [NOW, 0, 4_800_000_000, u64::MAX];

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixed();
    let (parsed, peak) = measure(|| parse(token));
    BOUND.check("jwt::parse", token.len(), peak);

    let cache = TokenCache::new(CacheConfig {
        max_entries: 8,
        max_bytes: 64 * 1024,
        negative_ttl_secs: 30,
        negative_max_entries: 8,
        negative_max_bytes: 64 * 1024,
        max_ttl_secs: 3600,
    });
    for rule in &f.rules {
        for keys in &f.keys {
            for now in NOWS {
                let (full, peak) = measure(|| verify_token(rule, token, keys, now));
                BOUND.check("verify_token", token.len(), peak);
                if let Err(e) = &full {
                    assert!(matches!(e.http_status(), 401 | 403));
                    assert!(!e.to_string().is_empty());
                }
                if let Ok(jwt) = &full {
                    accepted(rule, jwt, now, parsed.as_ref().ok());
                }
                for round in ["miss", "hit"] {
                    let cached = verify_token_cached(rule, token, keys, now, Some(&cache));
                    same(&full, cached.as_deref().map_err(|e| *e), round);
                }
            }
        }
    }
});

/// What verification accepted obeys the rule.
fn accepted(rule: &JwtRule, jwt: &Jwt, now: u64, parsed: Option<&Jwt>) {
    let parsed = parsed.expect("accepted a token the parser rejects");
    assert_eq!(parsed.payload, jwt.payload);
    if !rule.issuer.is_empty() {
        assert_eq!(jwt.iss.as_deref(), Some(rule.issuer.as_str()));
    }
    if let Some(exp) = jwt.exp.filter(|e| *e != 0) {
        assert!(
            now <= exp.saturating_add(CLOCK_SKEW_SECS),
            "expired token accepted"
        );
    }
    if let Some(nbf) = jwt.nbf {
        assert!(
            now.saturating_add(CLOCK_SKEW_SECS) >= nbf,
            "token accepted before nbf"
        );
    }
}

fn same(full: &Result<Jwt, JwtError>, cached: Result<&Jwt, JwtError>, round: &str) {
    match (full, cached) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                (&a.iss, &a.sub, &a.aud, a.exp, a.nbf),
                (&b.iss, &b.sub, &b.aud, b.exp, b.nbf)
            );
            assert_eq!(a.payload, b.payload, "cached payload differs ({round})");
        }
        (Err(a), Err(b)) => assert_eq!(*a, b, "cache gave another error ({round})"),
        (a, b) => panic!(
            "cache ({round}) disagrees with verification: {:?} vs {:?}",
            a.as_ref().map(|j| &j.payload),
            b.map(|j| &j.payload)
        ),
    }
}
