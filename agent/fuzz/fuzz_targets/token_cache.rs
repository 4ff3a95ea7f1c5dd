//! The per-node verified-token cache (agent/src/jwt/cache.rs) under random
//! sequences of requests, key rotations and clock changes. Tokens are HS256/
//! 384/512 with claims the fuzzer chooses, signed with the right or a wrong
//! secret, so accepted tokens are common, not just reachable.
//!
//! Properties, after every step:
//! - a token accepted from the cache is one full verification accepts, and
//!   every answer equals full verification's (`verify_token_cached` vs
//!   `verify_token`, and `authenticate` with vs without the cache: identity
//!   and header edits), across key rotations (same kid with a new secret,
//!   same secret under a new kid, keys removed — and `forget_keys` called as
//!   the JWKS store does), other rules and a moving clock;
//! - the documented bounds hold: entries ≤ `max_entries`, weight ≤
//!   `max_bytes`, negative entries ≤ `negative_max_entries` and their bytes ≤ `negative_max_bytes`;
//! - what an inserted entry really holds on the heap is within 2× (+ 2 KiB)
//!   of the weight it is charged (docs/performance.md "Memory"), so
//!   `--token-cache-bytes` bounds real memory.
#![no_main]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use jwtgate::jwt::{
    authenticate, verify_token, verify_token_cached, CacheConfig, JwkSet, Keys, TokenCache,
    TokenLocation,
};
use jwtgate::policy::{JwksSource, JwtRule, ALWAYS_SPACE_DELIMITED};
use jwtgate_fuzz::alloc::live;
use jwtgate_fuzz::fixtures::{hs_token, jwks, oct_jwk, NOW, SECRET_A, SECRET_B};
use jwtgate_fuzz::pick::{nth, Text};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

const CONFIG: CacheConfig = CacheConfig {
    max_entries: 6,
    max_bytes: 24 * 1024,
    negative_ttl_secs: 30,
    negative_max_entries: 4,
    negative_max_bytes: 8 * 1024,
    max_ttl_secs: 600,
};

/// Key-set versions a provider's JWKS can go through.
fn key_set(version: u8) -> JwkSet {
    let a = |kid: Option<&str>, alg: Option<&str>| oct_jwk(kid, alg, SECRET_A);
    let b = |kid: Option<&str>, alg: Option<&str>| oct_jwk(kid, alg, SECRET_B);
    let keys = match version % 8 {
        0 => vec![a(Some("h1"), None)],
        1 => vec![a(Some("h1"), None), b(Some("h2"), None)],
        2 => vec![b(Some("h1"), None)],
        3 => vec![a(Some("h2"), None)],
        4 => vec![a(None, Some("HS256"))],
        5 => vec![a(Some("h1"), Some("HS384"))],
        6 => vec![],
        _ => vec![b(Some("h1"), None), a(Some("h1"), None)],
    };
    JwkSet::parse(&jwks(&keys)).expect("fixture JWKS")
}

const ISSUERS: &[&str] = &["iss-a", "iss-b", ""];
const AUDS: &[&str] = &["api", "https://api/", "web"];
const KIDS: &[&str] = &["h1", "h2", ""];
const ALGS: &[&str] = &["HS256", "HS384", "HS512"];

#[derive(Arbitrary, Debug)]
struct Claims {
    iss: Option<Text>,
    sub: Option<Text>,
    aud: Vec<Text>,
    /// Seconds from the start time.
    exp: Option<i32>,
    nbf: Option<i32>,
    scope: Option<String>,
    extra: Vec<(String, Extra)>,
}

#[derive(Arbitrary, Debug)]
enum Extra {
    Str(String),
    Num(i64),
    List(Vec<String>),
    Nested(Vec<(String, u8)>),
}

#[derive(Arbitrary, Debug)]
enum Token {
    New {
        alg: u8,
        kid: u8,
        wrong_secret: bool,
        claims: Claims,
    },
    /// One of the tokens used before.
    Again(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Verify {
        token: Token,
        rule: u8,
        provider: u8,
    },
    Tick(u16),
    Back(u16),
    /// A JWKS refresh of one provider to another version.
    Refresh {
        provider: u8,
        version: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
}

fn rule(i: u8) -> JwtRule {
    let (issuer, audiences): (&str, Vec<String>) = match i % 4 {
        0 => ("iss-a", vec![]),
        1 => ("iss-b", vec!["api".into()]),
        2 => ("", vec!["web".into(), "http://api".into()]),
        _ => ("iss-a", vec!["api".into()]),
    };
    JwtRule {
        origin: "fuzz/ra".into(),
        issuer: issuer.into(),
        audiences,
        jwks: JwksSource::Unset,
        locations: TokenLocation::defaults(),
        output_payload_to_header: None,
        forward_original_token: false,
        output_claim_to_headers: vec![("x-sub".into(), "sub".into())],
        timeout: Duration::from_secs(5),
        space_delimited_claims: ALWAYS_SPACE_DELIMITED.map(String::from).to_vec(),
    }
}

fn claims_json(c: &Claims, start: u64) -> String {
    let mut m = Map::new();
    let at = |off: i32| Value::from(start.saturating_add_signed(off as i64));
    if let Some(i) = &c.iss {
        m.insert("iss".into(), i.get(ISSUERS).into());
    }
    if let Some(s) = &c.sub {
        m.insert("sub".into(), s.get(&["alice", "bob"]).into());
    }
    match c.aud.len() {
        0 => {}
        1 => {
            m.insert("aud".into(), c.aud[0].get(AUDS).into());
        }
        _ => {
            m.insert("aud".into(), c.aud.iter().map(|a| a.get(AUDS)).collect());
        }
    }
    if let Some(e) = c.exp {
        m.insert("exp".into(), at(e));
    }
    if let Some(n) = c.nbf {
        m.insert("nbf".into(), at(n));
    }
    if let Some(s) = &c.scope {
        m.insert("scope".into(), s.as_str().into());
    }
    for (k, v) in &c.extra {
        let v = match v {
            Extra::Str(s) => json!(s),
            Extra::Num(n) => json!(n),
            Extra::List(l) => json!(l),
            Extra::Nested(kv) => {
                Value::Object(kv.iter().map(|(k, n)| (k.clone(), json!(n))).collect())
            }
        };
        m.insert(k.clone(), v);
    }
    Value::Object(m).to_string()
}

fuzz_target!(|input: Input| {
    let start = NOW;
    let mut now = start;
    let cache = TokenCache::new(CONFIG);
    let mut providers: Vec<Arc<JwkSet>> = [0, 1, 4].map(|v| Arc::new(key_set(v))).to_vec();
    let mut used: Vec<String> = Vec::new();

    for op in input.ops.iter().take(64) {
        match op {
            Op::Tick(s) => now = now.saturating_add(*s as u64),
            Op::Back(s) => now = now.saturating_sub(*s as u64),
            Op::Refresh { provider, version } => {
                let slot = *provider as usize % providers.len();
                let new = Arc::new(key_set(*version));
                // What `JwksStore` does when a refresh drops keys.
                cache.forget_keys(&providers[slot].removed_in(&new));
                providers[slot] = new;
            }
            Op::Verify {
                token,
                rule: r,
                provider,
            } => {
                let token = match token {
                    Token::Again(i) if !used.is_empty() => used[*i as usize % used.len()].clone(),
                    Token::Again(_) => continue,
                    Token::New {
                        alg,
                        kid,
                        wrong_secret,
                        claims,
                    } => {
                        let alg = nth(ALGS, *alg);
                        let kid = nth(KIDS, *kid);
                        let header = if kid.is_empty() {
                            format!(r#"{{"alg":"{alg}"}}"#)
                        } else {
                            format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#)
                        };
                        let secret = if *wrong_secret { SECRET_B } else { SECRET_A };
                        let t = hs_token(
                            alg,
                            header.as_bytes(),
                            claims_json(claims, start).as_bytes(),
                            secret,
                        );
                        used.push(t.clone());
                        t
                    }
                };
                let rule = rule(*r);
                let keys = Keys::Set(providers[*provider as usize % providers.len()].clone());
                step(&cache, &rule, &token, &keys, now);
            }
        }
        assert!(cache.len() <= CONFIG.max_entries, "{} entries", cache.len());
        assert!(cache.bytes() <= CONFIG.max_bytes, "{} bytes", cache.bytes());
        assert!(cache.negative_len() <= CONFIG.negative_max_entries);
        assert!(cache.negative_bytes() <= CONFIG.negative_max_bytes);
    }
});

fn step(cache: &TokenCache, rule: &JwtRule, token: &str, keys: &Keys, now: u64) {
    let headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
    let rules = [Arc::new(rule.clone())];
    let keys_for = |_: &JwtRule| keys.clone();
    // Without the cache, first (kept alive across the measurement below).
    let full = verify_token(rule, token, keys, now);
    let plain = authenticate(&rules, &headers, None, &keys_for, now, None);

    let (len0, weight0, live0) = (cache.len(), cache.bytes(), live());
    let evictions0 = cache.stats().evictions.load(Relaxed);

    let cached = verify_token_cached(rule, token, keys, now, Some(cache));
    match (&full, &cached) {
        (Ok(a), Ok(b)) => assert_eq!(a.payload, b.payload),
        (Err(a), Err(b)) => assert_eq!(a, b, "cache gave another error"),
        _ => panic!(
            "cache disagrees with verification: {:?} vs {:?}",
            full.as_ref().map(|_| ()),
            cached.map(|_| ())
        ),
    }
    drop(cached);

    // The request path: identity and header edits, with and without cache.
    let with_cache = authenticate(&rules, &headers, None, &keys_for, now, Some(cache));
    assert_eq!(
        plain.result, with_cache.result,
        "identity differs with the cache"
    );
    assert_eq!(
        plain.edits, with_cache.edits,
        "header edits differ with the cache"
    );
    drop(with_cache);

    // What one new entry holds (the parsed token, and the identity claims
    // the request path memoizes on it) against what it is charged.
    let held = live().saturating_sub(live0) as u64;
    let evicted = cache.stats().evictions.load(Relaxed) - evictions0;
    if cache.len() == len0 + 1 && evicted == 0 {
        let charged = cache.bytes() - weight0;
        assert!(
            held <= 2 * charged + 2048,
            "an entry charged {charged} B holds {held} B"
        );
    }
}
