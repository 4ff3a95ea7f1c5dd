//! JWT verification costs (`cargo xtask bench`; numbers in docs/performance.md).
//!
//! - `decision/cache_hit_rs256`: a whole `authz::evaluate` (path, extraction,
//!   cache lookup, issuer/time re-check, identity, DENY policy) for a token
//!   the node cache already holds. Target ≤ 1 µs.
//! - `decision/token_cache_hit_only_rs256`: the cache step alone (lookup by
//!   the token, issuer/time/audience re-check), without the rest of the
//!   decision.
//! - `decision/no_cache_rs256`: the same decision verifying the signature.
//! - `decision/cache_miss_insert_rs256`: a fresh token each time, through the
//!   cache (lookup miss, verification, insert).
//! - `verify/<alg>`: `jwt::verify_token` (parse, checks, signature) for each
//!   of the 13 algorithms.
//! - `raw/rs256_aws_lc_parsed` / `raw/rs256_aws_lc_components`: aws-lc-rs
//!   alone on the same signature, the yardstick for "full RS256 within 1.3×
//!   of raw verify".
//! - `raw/sha256_token` / `raw/table_hash_token`: SHA-256 of the token (the
//!   cache key before it became the token itself) and the table's ahash of
//!   it (what a lookup hashes now).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use aws_lc_rs::signature;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};

use jwtgate::authz::{self, JwksLookup, PathNormalization, Request};
use jwtgate::jwt::{
    verify_token, verify_token_cached, CacheConfig, JwkSet, Keys, TokenCache, TokenLocation,
};
use jwtgate::policy::{JwksSource, JwtRule, PolicySet, WorkloadPolicy, WorkloadRef};

const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://idp.example.com/realms/prod";
const JWKS_URI: &str = "http://idp.example.com/jwks";

/// Kubernetes/Istio-style claims, about 1 KB as a token (performance.md §3.1).
fn claims(jti: usize) -> String {
    format!(
        r#"{{"iss":"{ISSUER}","sub":"system:serviceaccount:shop:checkout","aud":["shop.example.com","api.example.com"],"exp":{},"iat":{},"nbf":{},"jti":"{jti:08}-5b7e-4c1a-9f0e-3d2b8a6c4e1f","groups":["shop-admins","payments","readers"],"scope":"openid profile email orders:read orders:write","kubernetes.io":{{"namespace":"shop","pod":{{"name":"checkout-7d9f8b6c5-x2k4p","uid":"8a3c1e2f-4b5d-6e7f-8091-a2b3c4d5e6f7"}},"serviceaccount":{{"name":"checkout","uid":"1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718"}}}}}}"#,
        NOW + 3600,
        NOW - 10,
        NOW - 10
    )
}

/// Shared with the unit tests, so both sign tokens the same way.
#[path = "../src/jwt/signers.rs"]
mod signers;
use signers::{testdata, Signers};

/// The benchmarks' tokens carry `typ` and the kid of their family's key, as
/// real identity providers' tokens do.
fn sign(s: &Signers, alg: &str, payload: &str) -> String {
    let kid = Signers::kid_for(alg);
    let header = format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#);
    s.token_with_header(alg, &header, payload)
}

fn jwks(s: &Signers) -> JwkSet {
    JwkSet::parse(&s.jwks_json()).unwrap()
}

struct Lookup(HashMap<String, Arc<JwkSet>>);

impl JwksLookup for Lookup {
    fn jwks(&self, uri: &str) -> Option<Arc<JwkSet>> {
        self.0.get(uri).cloned()
    }
}

/// The FAQ's shape: one RequestAuthentication with a jwksUri and a DENY for
/// requests without a principal outside /productpage.
fn policy() -> WorkloadPolicy {
    let yaml = format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: checkout}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {JWKS_URI}
    audiences: [shop.example.com]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: checkout}}}}
  action: DENY
  rules:
  - from: [{{source: {{notRequestPrincipals: ['*']}}}}]
    to: [{{operation: {{notPaths: [/healthz]}}}}]
"#
    );
    let (set, errors) = PolicySet::parse(&[("bench.yaml".into(), yaml)]);
    assert!(errors.is_empty(), "{errors:?}");
    set.for_workload(
        &WorkloadRef {
            namespace: "shop".into(),
            labels: [("app".to_string(), "checkout".to_string())].into(),
        },
        "istio-system",
    )
}

/// `authorization`: the whole header value, `Bearer <token>`.
fn request(authorization: &str) -> Request<'_> {
    Request {
        method: "GET",
        path: "/api/v1/orders/42?expand=items",
        host: "checkout.shop:8080",
        headers: vec![
            ("host", "checkout.shop:8080"),
            ("user-agent", "curl/8.5.0"),
            ("accept", "*/*"),
            ("authorization", authorization),
        ],
        source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        destination_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
        destination_port: 8080,
    }
}

fn rule() -> JwtRule {
    JwtRule {
        origin: "shop/jwt".into(),
        issuer: ISSUER.into(),
        audiences: vec!["shop.example.com".into()],
        jwks: JwksSource::Unset,
        locations: TokenLocation::defaults(),
        output_payload_to_header: None,
        forward_original_token: false,
        output_claim_to_headers: vec![],
        timeout: Duration::from_secs(5),
        space_delimited_claims: vec!["scope".into(), "permission".into()],
    }
}

fn decisions(c: &mut Criterion) {
    let s = Signers::new();
    let keys = Arc::new(jwks(&s));
    let lookup = Lookup(HashMap::from([(JWKS_URI.to_string(), keys)]));
    let policy = policy();
    let token = sign(&s, "RS256", &claims(0));
    println!("RS256 token: {} bytes", token.len());
    let authorization = format!("Bearer {token}");
    let req = request(&authorization);
    let cache = TokenCache::new(CacheConfig::default());
    let decide = |r: &Request<'_>, cache: Option<&TokenCache>| {
        authz::evaluate(
            &policy,
            r,
            &lookup,
            NOW,
            PathNormalization::default(),
            cache,
        )
    };
    let d = decide(&req, Some(&cache));
    assert!(d.allowed, "{}", d.reason);

    let mut g = c.benchmark_group("decision");
    g.bench_function("cache_hit_rs256", |b| {
        b.iter(|| black_box(decide(black_box(&req), Some(&cache))))
    });
    // The cache step alone (hash and compare the token, claim re-check),
    // as verify_token_cached runs it inside the decision above.
    let jwt_rule = policy.jwt_rules[0].clone();
    let rule_keys = Keys::Set(lookup.jwks(JWKS_URI).unwrap());
    g.bench_function("token_cache_hit_only_rs256", |b| {
        b.iter(|| {
            black_box(verify_token_cached(
                &jwt_rule,
                black_box(&token),
                &rule_keys,
                NOW,
                Some(&cache),
            ))
        })
    });
    g.bench_function("no_cache_rs256", |b| {
        b.iter(|| black_box(decide(black_box(&req), None)))
    });
    // Fresh tokens: signing RS256 is slow (~1 ms), so a pool is signed once
    // and the cache is emptied (outside the timing) before it is reused.
    let authorizations: Vec<String> = (1..=512)
        .map(|i| format!("Bearer {}", sign(&s, "RS256", &claims(i))))
        .collect();
    let pool: Vec<Request> = authorizations.iter().map(|a| request(a)).collect();
    g.bench_function("cache_miss_insert_rs256", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let fresh = TokenCache::new(CacheConfig::default());
                let n = (iters - done).min(pool.len() as u64) as usize;
                let start = Instant::now();
                for r in &pool[..n] {
                    black_box(decide(r, Some(&fresh)));
                }
                total += start.elapsed();
                done += n as u64;
            }
            total
        })
    });
    g.finish();
}

fn verification(c: &mut Criterion) {
    let s = Signers::new();
    let keys = Keys::Set(Arc::new(jwks(&s)));
    let r = rule();
    let mut g = c.benchmark_group("verify");
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
        "HS256", "HS384", "HS512",
    ] {
        let token = sign(&s, alg, &claims(0));
        assert!(verify_token(&r, &token, &keys, NOW).is_ok(), "{alg}");
        g.bench_function(alg, |b| {
            b.iter(|| black_box(verify_token(&r, black_box(&token), &keys, NOW)))
        });
    }
    g.finish();

    // The same RS256 signature through aws-lc-rs alone.
    let token = sign(&s, "RS256", &claims(0));
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let jwk: serde_json::Value = serde_json::from_str(&testdata("jwks.json")).unwrap();
    let n = URL_SAFE_NO_PAD
        .decode(jwk["keys"][0]["n"].as_str().unwrap())
        .unwrap();
    let e = URL_SAFE_NO_PAD
        .decode(jwk["keys"][0]["e"].as_str().unwrap())
        .unwrap();
    let components = signature::RsaPublicKeyComponents { n: &n, e: &e };
    let parsed = components
        .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
        .unwrap();
    let mut g = c.benchmark_group("raw");
    g.bench_function("rs256_aws_lc_parsed", |b| {
        b.iter(|| black_box(parsed.verify_sig(black_box(signed.as_bytes()), &sig)))
    });
    g.bench_function("rs256_aws_lc_components", |b| {
        b.iter(|| {
            black_box(components.verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                black_box(signed.as_bytes()),
                &sig,
            ))
        })
    });
    g.bench_function("sha256_token", |b| {
        b.iter(|| black_box(digest::digest(&digest::SHA256, black_box(token.as_bytes()))))
    });
    let table_hasher = quick_cache::DefaultHashBuilder::default();
    g.bench_function("table_hash_token", |b| {
        b.iter(|| black_box(table_hasher.hash_one(black_box(token.as_str()))))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = decisions, verification
}
criterion_main!(benches);
