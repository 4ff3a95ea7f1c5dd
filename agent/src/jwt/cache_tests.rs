//! The verified-token cache (`cache.rs`): hits skip only the signature,
//! lifetime ≤ `exp`, bounds, the negative cache, key removal, and the
//! per-rule re-checks on a hit.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::tests::{rule, Signers, NOW};
use super::*;
use crate::policy::JwtRule;

fn cache() -> TokenCache {
    TokenCache::new(CacheConfig::default())
}

fn n(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn verified(c: &TokenCache, alg: Alg) -> (u64, u64) {
    let [ok, failed] = &c.stats().verifications[alg.index()];
    (n(ok), n(failed))
}

fn tamper(t: &str) -> String {
    let sig = t.rfind('.').unwrap();
    format!("{}.{}", &t[..sig], URL_SAFE_NO_PAD.encode([7u8; 256]))
}

#[test]
fn hit_skips_the_signature_check() {
    let s = Signers::new();
    let keys = Keys::Set(Arc::new(s.jwks()));
    let c = cache();
    let r = rule("me");
    let t = s.token(
        "RS256",
        Some("rsa"),
        r#"{"iss":"me","sub":"you","exp":1700000100}"#,
    );
    let first = verify_token_cached(&r, &t, &keys, NOW, Some(&c)).unwrap();
    let second = verify_token_cached(&r, &t, &keys, NOW + 1, Some(&c)).unwrap();
    assert_eq!(first.payload, second.payload);
    assert_eq!(second.sub.as_deref(), Some("you"));
    assert_eq!(verified(&c, Alg::Rs256), (1, 0));
    let st = c.stats();
    assert_eq!((n(&st.misses), n(&st.hits)), (1, 1));
    assert_eq!(c.len(), 1);
    assert!(c.bytes() > 0);
}

#[test]
fn entry_lifetime_is_at_most_exp() {
    let s = Signers::new();
    let keys = Keys::Set(Arc::new(s.jwks()));
    let c = cache();
    let r = rule("me");
    let exp = NOW + 100;
    let t = s.token("HS256", None, &format!(r#"{{"iss":"me","exp":{exp}}}"#));
    verify_token_cached(&r, &t, &keys, NOW, Some(&c)).unwrap();
    verify_token_cached(&r, &t, &keys, exp - 1, Some(&c)).unwrap();
    assert_eq!(n(&c.stats().hits), 1);
    // At exp the entry is gone; within Envoy's 60 s skew the token is still
    // accepted, but only after a fresh verification, which is not cached.
    verify_token_cached(&r, &t, &keys, exp, Some(&c)).unwrap();
    assert_eq!(n(&c.stats().hits), 1);
    assert_eq!(verified(&c, Alg::Hs256), (2, 0));
    assert_eq!(c.len(), 0);
    assert_eq!(
        verify_token_cached(&r, &t, &keys, exp + 61, Some(&c)).map(|_| ()),
        Err(JwtError::Expired)
    );
    // Without exp: capped by max_ttl_secs.
    let forever = s.token("HS256", None, r#"{"iss":"me","sub":"x"}"#);
    verify_token_cached(&r, &forever, &keys, NOW, Some(&c)).unwrap();
    let ttl = c.config().max_ttl_secs;
    verify_token_cached(&r, &forever, &keys, NOW + ttl, Some(&c)).unwrap();
    assert_eq!(verified(&c, Alg::Hs256), (4, 0));
}

#[test]
fn bounded_by_entries_and_bytes() {
    let s = Signers::new();
    let keys = Keys::Set(Arc::new(s.jwks()));
    let r = rule("me");
    let by_entries = TokenCache::new(CacheConfig {
        max_entries: 8,
        ..CacheConfig::default()
    });
    let by_bytes = TokenCache::new(CacheConfig {
        max_bytes: 8 * 1024,
        ..CacheConfig::default()
    });
    let pad = "x".repeat(300);
    for i in 0..200 {
        let t = s.token(
            "HS256",
            None,
            &format!(r#"{{"iss":"me","jti":"{i}","pad":"{pad}"}}"#),
        );
        for c in [&by_entries, &by_bytes] {
            verify_token_cached(&r, &t, &keys, NOW, Some(c)).unwrap();
            assert!(c.len() <= 8, "{} entries", c.len());
            assert!(c.bytes() <= c.config().max_bytes);
        }
    }
    assert!(by_bytes.bytes() <= 8 * 1024 && !by_bytes.is_empty());
    assert!(n(&by_entries.stats().evictions) >= 190);
    assert!(n(&by_bytes.stats().evictions) > 0);
    // 0 entries: the cache only counts.
    let off = TokenCache::new(CacheConfig {
        max_entries: 0,
        ..CacheConfig::default()
    });
    let t = s.token("HS256", None, r#"{"iss":"me"}"#);
    for _ in 0..2 {
        verify_token_cached(&r, &t, &keys, NOW, Some(&off)).unwrap();
    }
    assert_eq!((off.len(), verified(&off, Alg::Hs256)), (0, (2, 0)));
}

#[test]
fn negative_cache_remembers_bad_signatures_briefly() {
    let s = Signers::new();
    let set = Arc::new(s.jwks());
    let keys = Keys::Set(set.clone());
    let c = cache();
    let r = rule("me");
    let bad = tamper(&s.token("RS256", Some("rsa"), r#"{"iss":"me"}"#));
    let fail = |now| verify_token_cached(&r, &bad, &keys, now, Some(&c)).map(|_| ());
    assert_eq!(fail(NOW), Err(JwtError::VerificationFail));
    assert_eq!(fail(NOW + 1), Err(JwtError::VerificationFail));
    assert_eq!(fail(NOW + 29), Err(JwtError::VerificationFail));
    assert_eq!(verified(&c, Alg::Rs256), (0, 1));
    assert_eq!(n(&c.stats().negative_hits), 2);
    // After the negative TTL the signature is checked again.
    assert_eq!(fail(NOW + 30), Err(JwtError::VerificationFail));
    assert_eq!(verified(&c, Alg::Rs256), (0, 2));
    // The rule's own checks still come first on a negative hit (§2.4 order).
    assert_eq!(
        verify_token_cached(&rule("other"), &bad, &keys, NOW + 31, Some(&c)).map(|_| ()),
        Err(JwtError::UnknownIssuer)
    );
    // A new key set (refresh) gets a fresh verdict.
    let refreshed = Keys::Set(Arc::new(s.jwks()));
    verify_token_cached(&r, &bad, &refreshed, NOW + 32, Some(&c)).unwrap_err();
    assert_eq!(verified(&c, Alg::Rs256), (0, 3));
    // Unknown kid is a signature-step failure too.
    let unknown = s.token("RS256", Some("rotated"), r#"{"iss":"me"}"#);
    for _ in 0..2 {
        assert_eq!(
            verify_token_cached(&r, &unknown, &keys, NOW, Some(&c)).map(|_| ()),
            Err(JwtError::KidAlgMismatch)
        );
    }
    // NOW+1, NOW+29, the other-issuer re-check, the second unknown kid.
    assert_eq!(n(&c.stats().negative_hits), 4);
    assert!(c.negative_len() > 0);
}

#[test]
fn failed_tokens_are_bounded_in_bytes_whatever_their_size() {
    let s = Signers::new();
    let keys = Keys::Set(Arc::new(s.jwks()));
    let r = rule("me");
    let c = TokenCache::new(CacheConfig {
        negative_max_bytes: 256 * 1024,
        ..CacheConfig::default()
    });
    // A 40 KB payload costs the negative cache only its claims.
    let pad = "x".repeat(40_000);
    for i in 0..50 {
        let t = tamper(&s.token(
            "RS256",
            Some("rsa"),
            &format!(r#"{{"iss":"me","jti":"{i}","pad":"{pad}"}}"#),
        ));
        verify_token_cached(&r, &t, &keys, NOW, Some(&c)).unwrap_err();
    }
    assert_eq!(c.negative_len(), 50);
    assert!(c.negative_bytes() < 50 * 1024, "{}", c.negative_bytes());
    // Claims that are the bulk (thousands of audiences) weigh what they
    // hold, and the byte bound evicts.
    let auds = vec![r#""a""#; 300].join(",");
    for i in 0..50 {
        let t = tamper(&s.token(
            "RS256",
            Some("rsa"),
            &format!(r#"{{"iss":"me","jti":"a{i}","aud":[{auds}]}}"#),
        ));
        verify_token_cached(&r, &t, &keys, NOW, Some(&c)).unwrap_err();
        assert!(c.negative_bytes() <= 256 * 1024);
    }
    assert!(c.negative_len() < 50);
    assert!(n(&c.stats().evictions) > 0);
}

#[test]
fn removed_key_invalidates_its_tokens() {
    let s = Signers::new();
    let all = s.jwks();
    let c = cache();
    let r = rule("me");
    let rsa_token = s.token("RS256", Some("rsa"), r#"{"iss":"me"}"#);
    let ec_token = s.token("ES256", Some("p256"), r#"{"iss":"me"}"#);
    let keys = Keys::Set(Arc::new(all.clone()));
    for t in [&rsa_token, &ec_token] {
        verify_token_cached(&r, t, &keys, NOW, Some(&c)).unwrap();
    }
    assert_eq!(c.len(), 2);
    // The same keys re-parsed: new generation, but the key is still served,
    // so the entry still hits (thumbprint).
    let same = Keys::Set(Arc::new(s.jwks()));
    verify_token_cached(&r, &rsa_token, &same, NOW, Some(&c)).unwrap();
    assert_eq!(n(&c.stats().hits), 1);
    // A refresh without the RSA key: its tokens are swept out; others stay.
    let json = format!(
        r#"{{"keys":[{}]}}"#,
        Signers::ec_jwk(&s.p256, "P-256", "p256")
    );
    let rotated = JwkSet::parse(&json).unwrap();
    c.forget_keys(&all.removed_in(&rotated));
    assert_eq!(c.len(), 1);
    assert!(n(&c.stats().invalidations) >= 1);
    let rotated = Keys::Set(Arc::new(rotated));
    assert_eq!(
        verify_token_cached(&r, &rsa_token, &rotated, NOW, Some(&c)).map(|_| ()),
        Err(JwtError::KidAlgMismatch)
    );
    verify_token_cached(&r, &ec_token, &rotated, NOW, Some(&c)).unwrap();
    assert_eq!(n(&c.stats().hits), 2);
}

#[test]
fn hit_rechecks_issuer_audience_and_time_per_rule() {
    // The cache replaces the signature check only: another workload's rule
    // (issuer, audiences) and the clock are applied on every hit.
    let s = Signers::new();
    let keys = Keys::Set(Arc::new(s.jwks()));
    let c = cache();
    let exp = NOW + 1000;
    let t = s.token(
        "ES256",
        Some("p256"),
        &format!(r#"{{"iss":"me","aud":"svc-a","exp":{exp},"nbf":{NOW}}}"#),
    );
    let mut aud_a = rule("me");
    aud_a.audiences = vec!["svc-a".into()];
    let mut aud_b = rule("me");
    aud_b.audiences = vec!["svc-b".into()];
    let run = |r: &JwtRule, now| verify_token_cached(r, &t, &keys, now, Some(&c)).map(|_| ());
    assert_eq!(run(&aud_a, NOW), Ok(()));
    let cases = [
        (&aud_a, NOW + 1, Ok(())),
        (&aud_b, NOW + 1, Err(JwtError::AudienceNotAllowed)),
        (&rule("other"), NOW + 1, Err(JwtError::UnknownIssuer)),
        (&rule(""), NOW + 1, Ok(())),
        (&aud_a, NOW - 61, Err(JwtError::NotYetValid)),
    ];
    for (r, now, want) in cases {
        assert_eq!(run(r, now), want, "{:?} at {now}", r.audiences);
    }
    assert_eq!(verified(&c, Alg::Es256), (1, 0));
    // And the answers are exactly the uncached ones.
    for (r, now) in [(&aud_b, NOW), (&rule("other"), NOW), (&aud_a, exp + 61)] {
        assert_eq!(
            run(r, now),
            verify_token(r, &t, &keys, now).map(|_| ()),
            "{now}"
        );
    }
}

#[test]
fn unavailable_keys_bypass_the_cache() {
    let s = Signers::new();
    let c = cache();
    let t = s.token("RS256", Some("rsa"), r#"{"iss":"me"}"#);
    assert_eq!(
        verify_token_cached(&rule("me"), &t, &Keys::Unavailable, NOW, Some(&c)).map(|_| ()),
        Err(JwtError::VerificationFail)
    );
    assert_eq!((c.len(), n(&c.stats().misses)), (0, 0));
}
