//! State other parts of the agent keep (the token cache, the ban tracker,
//! the JWKS store, the connection caps, the eBPF per-CPU counters), read
//! when `/metrics` is scraped. Each part is described here by a plain
//! report struct; `app.rs` hands over a closure that fills one from the
//! part it owns, so this module imports nothing of theirs. Every bounded
//! table is reported with its bound (docs/memory.md).

use std::fmt::Debug;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// A report that can write itself as metric families.
pub trait Report: Send + 'static {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result;
}

/// A collector calling `read` at each scrape; `None` reports nothing.
pub(crate) struct Reader<T>(pub Box<dyn Fn() -> Option<T> + Send + Sync>);

impl<T> Debug for Reader<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

impl<T: Report> Collector for Reader<T> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        match (self.0)() {
            Some(report) => report.encode(&mut encoder),
            None => Ok(()),
        }
    }
}

pub(crate) fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

pub(crate) fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// The verified-token cache (`jwt::TokenCache`).
#[derive(Debug, Clone, Default)]
pub struct TokenCacheReport {
    pub hits: u64,
    pub misses: u64,
    pub negative_hits: u64,
    pub evictions: u64,
    pub invalidations: u64,
    pub entries: u64,
    pub max_entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub negative_entries: u64,
    pub negative_max_entries: u64,
    pub negative_bytes: u64,
    pub negative_max_bytes: u64,
    /// `(alg, succeeded, failed)` signature verifications actually run.
    pub verifications: Vec<(&'static str, u64, u64)>,
}

impl Report for TokenCacheReport {
    fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        for (name, help, value) in [
            (
                "token_cache_hits",
                "Requests whose token signature came from the cache.",
                self.hits,
            ),
            (
                "token_cache_misses",
                "Token lookups that found nothing usable.",
                self.misses,
            ),
            (
                "token_cache_negative_hits",
                "Tokens answered from the failed-signature cache.",
                self.negative_hits,
            ),
            (
                "token_cache_evictions",
                "Entries pushed out by the entry or byte bound.",
                self.evictions,
            ),
            (
                "token_cache_invalidations",
                "Entries dropped: expired, or their key left its JWKS.",
                self.invalidations,
            ),
        ] {
            counter(enc, name, help, value)?;
        }
        for (name, help, value) in [
            ("token_cache_entries", "Verified tokens held.", self.entries),
            (
                "token_cache_max_entries",
                "Bound on jwtgate_token_cache_entries.",
                self.max_entries,
            ),
            (
                "token_cache_bytes",
                "Bytes held by verified tokens (heap estimate).",
                self.bytes,
            ),
            (
                "token_cache_max_bytes",
                "Bound on jwtgate_token_cache_bytes.",
                self.max_bytes,
            ),
            (
                "token_cache_negative_entries",
                "Failed tokens held.",
                self.negative_entries,
            ),
            (
                "token_cache_negative_max_entries",
                "Bound on jwtgate_token_cache_negative_entries.",
                self.negative_max_entries,
            ),
            (
                "token_cache_negative_bytes",
                "Bytes held by failed tokens (heap estimate).",
                self.negative_bytes,
            ),
            (
                "token_cache_negative_max_bytes",
                "Bound on jwtgate_token_cache_negative_bytes.",
                self.negative_max_bytes,
            ),
        ] {
            gauge(enc, name, help, value)?;
        }
        let mut family = enc.encode_descriptor(
            "jwt_verifications",
            "Signature verifications run (cache misses), by algorithm and result.",
            None,
            MetricType::Counter,
        )?;
        for (alg, ok, failed) in &self.verifications {
            for (result, n) in [("success", *ok), ("failure", *failed)] {
                if n > 0 {
                    let labels = [("alg", *alg), ("result", result)];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The automatic ban policy (`proxy::BanTracker`).
#[derive(Debug, Clone, Default)]
pub struct BanReport {
    pub workload_bans: u64,
    pub source_bans: u64,
    pub exempt_failures: u64,
    pub untracked_failures: u64,
    pub dropped_bans: u64,
    pub entries: u64,
    pub max_entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

impl Report for BanReport {
    fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = enc.encode_descriptor(
            "bans",
            "Automatic bans asked for, by scope.",
            None,
            MetricType::Counter,
        )?;
        for (scope, n) in [
            ("workload", self.workload_bans),
            ("source", self.source_bans),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("scope", scope)])?)?;
        }
        for (name, help, value) in [
            (
                "ban_exempt_failures",
                "Token failures from the node's own or --ban-exempt addresses (never banned).",
                self.exempt_failures,
            ),
            (
                "ban_untracked_failures",
                "Token failures not counted because the ban tracker was full.",
                self.untracked_failures,
            ),
            (
                "ban_dropped",
                "Bans dropped because the kernel-map writer's queue was full.",
                self.dropped_bans,
            ),
        ] {
            counter(enc, name, help, value)?;
        }
        for (name, help, value) in [
            (
                "ban_tracker_entries",
                "Failure counters and banned sources held.",
                self.entries,
            ),
            (
                "ban_tracker_max_entries",
                "Bound on jwtgate_ban_tracker_entries.",
                self.max_entries,
            ),
            (
                "ban_tracker_bytes",
                "Bytes held by the ban tracker's tables.",
                self.bytes,
            ),
            (
                "ban_tracker_max_bytes",
                "Bound on jwtgate_ban_tracker_bytes.",
                self.max_bytes,
            ),
        ] {
            gauge(enc, name, help, value)?;
        }
        Ok(())
    }
}

/// The store of JWK sets (`sources::jwks::JwksStore`).
#[derive(Debug, Clone, Default)]
pub struct JwksStoreReport {
    pub documents: u64,
    pub keys: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub document_max_bytes: u64,
    pub document_max_keys: u64,
    pub timeout_max_seconds: u64,
}

impl Report for JwksStoreReport {
    fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        for (name, help, value) in [
            (
                "jwks_documents",
                "Key sets held (one per jwksUri).",
                self.documents,
            ),
            ("jwks_keys", "Keys held in all key sets.", self.keys),
            (
                "jwks_bytes",
                "Estimated bytes held by all key sets.",
                self.bytes,
            ),
            (
                "jwks_max_bytes",
                "Bound on jwtgate_jwks_bytes.",
                self.max_bytes,
            ),
            (
                "jwks_document_max_bytes",
                "Largest JWKS document accepted.",
                self.document_max_bytes,
            ),
            (
                "jwks_document_max_keys",
                "Most keys accepted in one document.",
                self.document_max_keys,
            ),
            (
                "jwks_timeout_max_seconds",
                "Cap on a rule's JWKS fetch timeout.",
                self.timeout_max_seconds,
            ),
        ] {
            gauge(enc, name, help, value)?;
        }
        Ok(())
    }
}

/// The node-wide caps (`proxy::ConnectionLimits`): open downstream
/// connections (node and per source) and requests in progress.
#[derive(Debug, Clone, Default)]
pub struct ConnectionReport {
    pub open: u64,
    pub max: u64,
    pub sources: u64,
    pub per_source_max: u64,
    pub refused_node: u64,
    pub refused_source: u64,
    /// HTTP/1 requests and HTTP/2 streams in progress, node-wide.
    pub requests_in_progress: u64,
    pub requests_max: u64,
    pub requests_per_source_max: u64,
    /// Requests answered 503 because `requests_max` were in progress.
    pub requests_overloaded: u64,
    /// Requests answered 503 because their source had
    /// `requests_per_source_max` in progress.
    pub requests_overloaded_source: u64,
}

impl Report for ConnectionReport {
    fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        for (name, help, value) in [
            (
                "connections_open",
                "Downstream connections open now (HTTP, TCP and upgraded), every workload together.",
                self.open,
            ),
            (
                "connection_sources",
                "Source addresses holding at least one open connection.",
                self.sources,
            ),
        ] {
            gauge(enc, name, help, value)?;
        }
        // One family for both caps, so a panel can set each against what
        // it bounds with one query.
        let mut family = enc.encode_descriptor(
            "connection_limit",
            "The caps on open connections: node-wide (--max-connections) and per source (--max-connections-per-source).",
            None,
            MetricType::Gauge,
        )?;
        for (cap, n) in [("node", self.max), ("source", self.per_source_max)] {
            ConstGauge::new(n).encode(family.encode_family(&[("cap", cap)])?)?;
        }
        let mut family = enc.encode_descriptor(
            "connections_refused",
            "Connections reset at accept because a cap was reached, by cap.",
            None,
            MetricType::Counter,
        )?;
        for (cap, n) in [("node", self.refused_node), ("source", self.refused_source)] {
            ConstCounter::new(n).encode(family.encode_family(&[("cap", cap)])?)?;
        }
        gauge(
            enc,
            "requests_in_progress",
            "HTTP/1 requests and HTTP/2 streams in progress, node-wide.",
            self.requests_in_progress,
        )?;
        let mut family = enc.encode_descriptor(
            "requests_limit",
            "The caps on requests in progress: node-wide (--max-requests) and per source (--max-requests-per-source).",
            None,
            MetricType::Gauge,
        )?;
        for (cap, n) in [
            ("node", self.requests_max),
            ("source", self.requests_per_source_max),
        ] {
            ConstGauge::new(n).encode(family.encode_family(&[("cap", cap)])?)?;
        }
        let mut family = enc.encode_descriptor(
            "requests_overloaded",
            "Requests answered 503 (envoy overloaded) because a cap on requests in progress was reached, by cap.",
            None,
            MetricType::Counter,
        )?;
        for (cap, n) in [
            ("node", self.requests_overloaded),
            ("source", self.requests_overloaded_source),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("cap", cap)])?)?;
        }
        Ok(())
    }
}

/// The eBPF programs' per-CPU counters, summed: `(program, event, value)`.
#[derive(Debug, Clone, Default)]
pub struct KernelReport(pub Vec<(&'static str, &'static str, u64)>);

impl Report for KernelReport {
    fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut family = enc.encode_descriptor(
            "ebpf_events",
            "Events counted by the eBPF programs: steer (sk_lookup: steered, bypassed, refused…) and guard (XDP: passed, dropped by reason).",
            None,
            MetricType::Counter,
        )?;
        for (program, event, value) in &self.0 {
            let labels = [("program", *program), ("event", *event)];
            ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
