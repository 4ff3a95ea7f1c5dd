//! What the agent's parts report when `/metrics` is scraped: each function
//! reads one part (the token cache, the ban tracker, the JWKS store, the
//! connection caps) into the plain report `metrics` knows how to write.
//! Here rather than in `metrics`, which imports nothing of the agent, or
//! in the parts, which know nothing of metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::jwt::TokenCache;
use crate::metrics::{BanReport, ConnectionReport, JwksStoreReport, Metrics, TokenCacheReport};
use crate::proxy::{BanTracker, ConnectionLimits};
use crate::sources::jwks::{JwksStore, MAX_JWKS_BYTES, MAX_JWKS_KEYS, MAX_JWKS_TOTAL_BYTES};

/// Report every node-wide part on `metrics`.
pub fn register(
    metrics: &Metrics,
    cache: Arc<TokenCache>,
    bans: BanTracker,
    jwks: Arc<JwksStore>,
    limits: Arc<ConnectionLimits>,
) {
    metrics.report(move || Some(token_cache(&cache)));
    metrics.report(move || Some(ban_tracker(&bans)));
    metrics.report(move || Some(jwks_store(&jwks)));
    metrics.report(move || Some(connections(&limits)));
}

pub fn token_cache(cache: &TokenCache) -> TokenCacheReport {
    let s = cache.stats();
    let c = cache.config();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    TokenCacheReport {
        hits: n(&s.hits),
        misses: n(&s.misses),
        negative_hits: n(&s.negative_hits),
        evictions: n(&s.evictions),
        invalidations: n(&s.invalidations),
        entries: cache.len() as u64,
        max_entries: c.max_entries as u64,
        bytes: cache.bytes(),
        max_bytes: c.max_bytes,
        negative_entries: cache.negative_len() as u64,
        negative_max_entries: c.negative_max_entries as u64,
        negative_bytes: cache.negative_bytes(),
        negative_max_bytes: c.negative_max_bytes,
        verifications: s.verifications_by_alg(),
    }
}

pub fn ban_tracker(t: &BanTracker) -> BanReport {
    let s = t.stats();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    BanReport {
        workload_bans: n(&s.workload_bans),
        source_bans: n(&s.source_bans),
        exempt_failures: n(&s.exempt_failures),
        untracked_failures: n(&s.untracked_failures),
        dropped_bans: n(&s.dropped_bans),
        entries: t.entries() as u64,
        // A failure counter and a ban list per source, each table bounded.
        max_entries: 2 * t.config().max_tracked as u64,
        bytes: t.bytes(),
        max_bytes: t.max_bytes(),
    }
}

pub fn jwks_store(store: &JwksStore) -> JwksStoreReport {
    let size = store.size();
    JwksStoreReport {
        documents: size.documents as u64,
        keys: size.keys as u64,
        bytes: size.bytes,
        max_bytes: MAX_JWKS_TOTAL_BYTES,
        document_max_bytes: MAX_JWKS_BYTES as u64,
        document_max_keys: MAX_JWKS_KEYS as u64,
        timeout_max_seconds: store.options().max_timeout.as_secs(),
    }
}

pub fn connections(limits: &ConnectionLimits) -> ConnectionReport {
    ConnectionReport {
        open: limits.open() as u64,
        max: limits.node_max() as u64,
        sources: limits.sources() as u64,
        per_source_max: limits.per_source_max() as u64,
        refused_node: limits.refused_node.load(Ordering::Relaxed),
        refused_source: limits.refused_source.load(Ordering::Relaxed),
        requests_in_progress: limits.requests_in_progress() as u64,
        requests_max: limits.requests_max() as u64,
        requests_per_source_max: limits.requests_per_source_max() as u64,
        requests_overloaded: limits.refused_requests.load(Ordering::Relaxed),
        requests_overloaded_source: limits.refused_requests_source.load(Ordering::Relaxed),
    }
}
