//! Prometheus metrics (the `prometheus-client` crate) and the endpoint that
//! serves them: `/healthz`, `/readyz`, `/metrics` and `/debug/*` on
//! `--metrics-addr` (`server.rs`). It reports and never decides.
//!
//! A leaf module: it imports nothing else of the agent. One [`Metrics`] is
//! made by `app.rs` and handed down — to each workload's proxy its
//! [`WorkloadMetrics`], to the JWKS store its [`JwksFetches`] — and the
//! parts that keep their own counters (token cache, ban tracker, JWKS
//! store, connection caps, eBPF maps) are read at scrape time through
//! closures `app.rs` registers ([`reports`]).
//!
//! `/metrics` answers in the OpenMetrics format to a scraper that asks for
//! it (Prometheus does) and in the Prometheus text format 0.0.4 otherwise
//! (curl, `promtool check metrics`, older collectors), as the Go client
//! does.

mod jwks;
pub mod reports;
mod server;
mod workload;

pub use jwks::JwksFetches;
pub use reports::{
    BanReport, ConnectionReport, JwksStoreReport, KernelReport, Report, TokenCacheReport,
};
pub use server::{bind, probe_unix, serve, serve_unix, DebugHandler};
pub use workload::{InboundEvent, OpenConnection, Protocol, RequestKey, WorkloadMetrics};

use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use workload::Workloads;

/// Every metric name starts with this.
pub const PREFIX: &str = "jwtgate";

/// The agent's metrics: the registry and what the endpoint serves.
pub struct Metrics {
    registry: Mutex<Registry>,
    workloads: Arc<Workloads>,
    jwks: JwksFetches,
    ready: Gauge,
    /// Access-log lines left out by the rate limit (`--access-log-rate`).
    pub access_log_suppressed: Counter,
    debug: OnceLock<DebugHandler>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let workloads = Arc::new(Workloads::default());
        registry.register_collector(Box::new(workloads.clone()));
        let jwks = JwksFetches::default();
        registry.register(
            "jwks_fetches",
            "JWKS fetches by jwksUri and result (refreshes and unknown-kid re-fetches).",
            jwks.family(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 once the first input snapshot is in force, the datapath is loaded, every wanted workload is enrolled and every jwksUri was tried.",
            ready.clone(),
        );
        let access_log_suppressed = Counter::default();
        registry.register(
            "access_log_suppressed",
            "Access-log lines not written because --access-log-rate was exceeded (the requests are still counted in jwtgate_requests_total).",
            access_log_suppressed.clone(),
        );
        registry.register_collector(Box::new(Process));
        Metrics {
            registry: Mutex::new(registry),
            workloads,
            jwks,
            ready,
            access_log_suppressed,
            debug: OnceLock::new(),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// The counters of a newly enrolled workload `namespace/name`.
    pub fn add_workload(&self, key: &str) -> Arc<WorkloadMetrics> {
        let (namespace, name) = key.split_once('/').unwrap_or(("", key));
        let metrics = Arc::new(WorkloadMetrics::new(namespace, name));
        self.workloads.add(key, metrics.clone());
        metrics
    }

    /// Forget an unenrolled workload (its series leave the exposition).
    pub fn remove_workload(&self, key: &str) {
        self.workloads.remove(key);
    }

    pub fn workload(&self, key: &str) -> Option<Arc<WorkloadMetrics>> {
        self.workloads.get(key)
    }

    pub fn workload_keys(&self) -> Vec<String> {
        self.workloads.keys()
    }

    /// The JWKS fetch counters, for the store that fetches.
    pub fn jwks_fetches(&self) -> JwksFetches {
        self.jwks.clone()
    }

    /// Report what `read` returns at every scrape (`reports.rs`).
    pub fn report<T: Report>(&self, read: impl Fn() -> Option<T> + Send + Sync + 'static) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register_collector(Box::new(reports::Reader(Box::new(read))));
        }
    }

    /// Serve `/debug/…` with `handler` (the first call wins).
    pub fn set_debug_handler(&self, handler: DebugHandler) {
        let _ = self.debug.set(handler);
    }

    pub(crate) fn debug_handler(&self) -> Option<&DebugHandler> {
        self.debug.get()
    }

    /// The exposition in the OpenMetrics text format.
    pub fn openmetrics(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }

    /// The exposition in the Prometheus text format 0.0.4.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        }
        out
    }
}

/// Facts about the process itself, read at each scrape.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        reports::gauge(
            &mut encoder,
            "open_files_limit",
            "The process's RLIMIT_NOFILE soft limit (raised to the hard limit at start).",
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(0),
        )?;
        let info =
            prometheus_client::metrics::info::Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        let enc = encoder.encode_descriptor(
            "build",
            "The agent's version.",
            None,
            prometheus_client::metrics::MetricType::Info,
        )?;
        prometheus_client::encoding::EncodeMetric::encode(&info, enc)
    }
}

#[cfg(test)]
mod tests;
