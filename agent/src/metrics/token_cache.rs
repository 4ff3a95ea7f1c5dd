//! The verified-token cache's counters (`jwt::TokenCache`).
//!
//! Process-wide like the JWKS fetch counters: the node has one cache, set
//! once by `app.rs`, and `Registry::render` reads it here.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::jwt::TokenCache;

static CACHE: OnceLock<Arc<TokenCache>> = OnceLock::new();

/// Report this cache on `/metrics` (the first call wins).
pub fn set_token_cache(cache: Arc<TokenCache>) {
    let _ = CACHE.set(cache);
}

pub(super) fn render(out: &mut String) {
    let Some(cache) = CACHE.get() else {
        return;
    };
    let s = cache.stats();
    let counters = [
        (
            "hits",
            "Requests whose token signature came from the cache.",
            &s.hits,
        ),
        (
            "misses",
            "Token lookups that found nothing usable.",
            &s.misses,
        ),
        (
            "negative_hits",
            "Tokens answered from the failed-signature cache.",
            &s.negative_hits,
        ),
        (
            "evictions",
            "Entries pushed out by the entry or byte bound.",
            &s.evictions,
        ),
        (
            "invalidations",
            "Entries dropped: expired, or their key left its JWKS.",
            &s.invalidations,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP jwtgate_token_cache_{name}_total {help}");
        let _ = writeln!(out, "# TYPE jwtgate_token_cache_{name}_total counter");
        let _ = writeln!(
            out,
            "jwtgate_token_cache_{name}_total {}",
            value.load(Ordering::Relaxed)
        );
    }
    let c = cache.config();
    super::gauges(
        out,
        &[
            (
                "token_cache_entries",
                "Verified tokens held.",
                cache.len() as u64,
            ),
            (
                "token_cache_max_entries",
                "Bound on jwtgate_token_cache_entries.",
                c.max_entries as u64,
            ),
            (
                "token_cache_bytes",
                "Bytes held by verified tokens (heap estimate).",
                cache.bytes(),
            ),
            (
                "token_cache_max_bytes",
                "Bound on jwtgate_token_cache_bytes.",
                c.max_bytes,
            ),
            (
                "token_cache_negative_entries",
                "Failed tokens held.",
                cache.negative_len() as u64,
            ),
            (
                "token_cache_negative_max_entries",
                "Bound on jwtgate_token_cache_negative_entries.",
                c.negative_max_entries as u64,
            ),
            (
                "token_cache_negative_bytes",
                "Bytes held by failed tokens (heap estimate).",
                cache.negative_bytes(),
            ),
            (
                "token_cache_negative_max_bytes",
                "Bound on jwtgate_token_cache_negative_bytes.",
                c.negative_max_bytes,
            ),
        ],
    );
    out.push_str("# HELP jwtgate_jwt_verifications_total Signature verifications run, by algorithm and result.\n");
    out.push_str("# TYPE jwtgate_jwt_verifications_total counter\n");
    for (alg, ok, failed) in s.verifications_by_alg() {
        for (result, n) in [("success", ok), ("failure", failed)] {
            if n > 0 {
                let _ = writeln!(
                    out,
                    "jwtgate_jwt_verifications_total{{alg=\"{alg}\",result=\"{result}\"}} {n}"
                );
            }
        }
    }
}
