//! The token cache's byte accounting is a bound on real memory: tokens of
//! adversarial shapes (long strings, thousands of tiny audience strings,
//! wide objects, long arrays, space-delimited claims that get split) are
//! put in the cache through the real verification path, and the heap that
//! stays allocated — measured by a counting global allocator — must not
//! exceed what the cache says it holds (`bytes()`, `negative_bytes()`).
//!
//! One test in its own binary: the allocator counts every thread, so
//! nothing else may run meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use jwtgate::jwt::{authenticate, CacheConfig, JwkSet, Keys, TokenCache, TokenLocation};
use jwtgate::policy::{JwksSource, JwtRule};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const NOW: u64 = 1_700_000_000;
const PER_SHAPE: usize = 20;

struct Signer(EcdsaKeyPair);

impl Signer {
    fn jwks(&self) -> String {
        let p = self.0.public_key().as_ref();
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k","x":"{}","y":"{}"}}]}}"#,
            URL_SAFE_NO_PAD.encode(&p[1..33]),
            URL_SAFE_NO_PAD.encode(&p[33..])
        )
    }

    /// A token with `payload`; signed when `valid`, else a forged signature.
    fn token(&self, payload: &str, valid: bool) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = if valid {
            self.0
                .sign(&SystemRandom::new(), signed.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec()
        } else {
            vec![7u8; 64]
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// Payloads of about 40 KB (a token near the 60 KiB header limit) that
/// parse into much more memory than their text, each made unique by `i`.
fn shapes(i: usize) -> Vec<(&'static str, String)> {
    let head = format!(
        r#""iss":"idp","sub":"alice","exp":{},"jti":"{i}""#,
        NOW + 3600
    );
    let list = |item: &str, n: usize| vec![item; n].join(",");
    vec![
        ("small", format!("{{{head}}}")),
        (
            "long string",
            format!(r#"{{{head},"pad":"{}"}}"#, "x".repeat(40_000)),
        ),
        (
            "tiny audiences",
            format!(r#"{{{head},"aud":[{}]}}"#, list(r#""a""#, 9_000)),
        ),
        (
            "wide object",
            format!(
                r#"{{{head},"o":{{{}}}}}"#,
                (0..3_000)
                    .map(|k| format!(r#""k{k}":0"#))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        (
            "long array",
            format!(r#"{{{head},"n":[{}]}}"#, list("1", 18_000)),
        ),
        (
            // The token_cache fuzz target's finding (docs/fuzzing.md): each
            // small object is a whole B-tree node, some 70 times its text.
            "many small objects",
            format!(r#"{{{head},"m":[{}]}}"#, list(r#"{"a":0}"#, 4_000)),
        ),
        (
            "nested objects",
            format!(
                r#"{{{head},"n":{}0{}}}"#,
                r#"{"a":"#.repeat(100),
                "}".repeat(100)
            ),
        ),
        (
            "split scope",
            format!(r#"{{{head},"scope":"{}"}}"#, vec!["a"; 18_000].join(" ")),
        ),
    ]
}

fn rule() -> Arc<JwtRule> {
    Arc::new(JwtRule {
        origin: "ns/ra".into(),
        issuer: "idp".into(),
        audiences: vec![],
        jwks: JwksSource::Uri("http://idp/jwks".into()),
        locations: TokenLocation::defaults(),
        output_payload_to_header: None,
        forward_original_token: false,
        output_claim_to_headers: vec![],
        timeout: std::time::Duration::from_secs(5),
        space_delimited_claims: vec!["scope".into(), "permission".into()],
    })
}

#[test]
fn cache_bytes_bound_the_heap_it_really_holds() {
    let signer = Signer(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap());
    let set = Arc::new(JwkSet::parse(&signer.jwks()).unwrap());
    let rules = [rule()];
    let keys = |_: &JwtRule| Keys::Set(set.clone());
    let names: Vec<&str> = shapes(0).iter().map(|(n, _)| *n).collect();
    let mut report = Vec::new();
    for (s, name) in names.iter().enumerate() {
        for valid in [true, false] {
            let tokens: Vec<String> = (0..PER_SHAPE)
                .map(|i| signer.token(&shapes(i)[s].1, valid))
                .collect();
            // Bounds far above what these tokens weigh (the heaviest shape,
            // many small objects, is charged 7.7 MB per verified token):
            // quick_cache splits the byte bound over its shards and a shard
            // over its share evicts, so with 256 MiB "every token is cached"
            // failed now and then, depending on which shard each token's
            // (randomly seeded) hash chose. This test checks the accounting,
            // not the bound.
            let cache = TokenCache::new(CacheConfig {
                max_entries: 1_000_000,
                max_bytes: 4 << 30,
                negative_max_entries: 1_000_000,
                negative_max_bytes: 4 << 30,
                ..CacheConfig::default()
            });
            let before = LIVE.load(Ordering::SeqCst);
            for t in &tokens {
                let headers = [("authorization".to_string(), format!("Bearer {t}"))];
                // Twice: the second request is a hit and memoizes the
                // identity claims of a verified token, as real traffic does.
                for _ in 0..2 {
                    let outcome = authenticate(&rules, &headers, None, &keys, NOW, Some(&cache));
                    drop(outcome);
                }
            }
            let measured = LIVE.load(Ordering::SeqCst) - before;
            let (accounted, entries) = if valid {
                (cache.bytes(), cache.len())
            } else {
                (cache.negative_bytes(), cache.negative_len())
            };
            assert_eq!(entries, PER_SHAPE, "{name}: every token is cached");
            let token_len = tokens[0].len();
            report.push(format!(
                "{name:>14} {:>8}: token {token_len:>6} B, heap {:>9} B, accounted {accounted:>9} B",
                if valid { "verified" } else { "forged" },
                measured
            ));
            assert!(
                accounted as isize >= measured,
                "{name} ({}): the cache holds {measured} bytes but accounts {accounted}",
                if valid { "verified" } else { "forged" },
            );
            if !valid {
                // A failed token keeps only its claims: far below its size
                // (unless its claims themselves are the bulk, as a huge
                // audience list is).
                if *name != "tiny audiences" {
                    assert!(
                        (measured as usize) < PER_SHAPE * 4096,
                        "{name}: forged tokens hold {measured} bytes"
                    );
                }
            }
            drop(cache);
        }
    }
    eprintln!("{}", report.join("\n"));
}
