//! What each enrolled workload's proxy counts, named and labelled after
//! Istio's standard metrics where Istio has one (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_tcp_*_bytes_total`): the
//! `destination_workload` / `destination_workload_namespace`,
//! `request_protocol`, `response_code` and `response_flags` labels and
//! `reporter="destination"`, so Istio dashboards and queries carry over with
//! the `jwtgate_` prefix. Durations are in seconds, not Istio's
//! milliseconds: Prometheus' base unit, which `promtool check metrics`
//! insists on.
//!
//! One [`WorkloadMetrics`] per enrolled workload, dropped from the
//! exposition when the workload is unenrolled ([`Workloads`]), so pods that
//! come and go leave no series behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Request latency buckets, seconds: what the client waited for the
/// response head (local replies and forwards alike).
const REQUEST_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Decision latency buckets, seconds: a cache hit takes microseconds, an
/// RSA verification tens of them, a JWKS re-fetch on an unknown kid up to
/// the fetch timeout.
const DECISION_BUCKETS: [f64; 14] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.1, 1.0, 10.0,
];

/// `request_protocol`, as Istio spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// A workload's series by their labels. foldhash rather than std's SipHash:
/// two lookups per request, keyed by a few small labels from fixed sets
/// (nothing a client can steer into collisions), and SipHash showed in the
/// profile.
type SeriesMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The labels of one `jwtgate_requests_total` series besides the workload's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    pub protocol: Protocol,
    /// The status the client got: a local reply's, or the application's.
    pub code: u16,
    /// Envoy's response flags (`-`, `UF`, `DPE`, …).
    pub flags: &'static str,
    /// jwtgate's reason for the decision (`authz::Reason::metric_label`).
    pub reason: &'static str,
}

/// What happened to a connection before or instead of an HTTP decision
/// (`jwtgate_inbound_events_total{event=…}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundEvent {
    /// A declared kubelet probe let through from a probe source.
    ProbePassed,
    /// A connection that did not come through steering (the listener
    /// dialled from inside the pod): refused.
    RefusedDirect,
    /// TCP (non-HTTP) connections allowed and denied by network RBAC.
    TcpAllowed,
    TcpDenied,
    /// A connection taken for TCP after the detection timeout whose bytes
    /// turned out to be HTTP: closed.
    LateHttpClosed,
    /// A request Envoy's codec or connection manager would refuse (400,
    /// 404, 426, 431), answered before any policy.
    RefusedShape,
    /// A request head not complete within the header-read timeout (408).
    HeaderTimeout,
    /// A connection closed for idleness (keep-alive or stream).
    IdleTimeout,
    /// An allowed TCP connection whose application could not be reached.
    TcpUpstreamFailed,
}

impl InboundEvent {
    pub const ALL: [InboundEvent; 9] = [
        InboundEvent::ProbePassed,
        InboundEvent::RefusedDirect,
        InboundEvent::TcpAllowed,
        InboundEvent::TcpDenied,
        InboundEvent::LateHttpClosed,
        InboundEvent::RefusedShape,
        InboundEvent::HeaderTimeout,
        InboundEvent::IdleTimeout,
        InboundEvent::TcpUpstreamFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            InboundEvent::ProbePassed => "probe_passed",
            InboundEvent::RefusedDirect => "refused_direct",
            InboundEvent::TcpAllowed => "tcp_allowed",
            InboundEvent::TcpDenied => "tcp_denied",
            InboundEvent::LateHttpClosed => "late_http_closed",
            InboundEvent::RefusedShape => "refused_shape",
            InboundEvent::HeaderTimeout => "header_timeout",
            InboundEvent::IdleTimeout => "idle_timeout",
            InboundEvent::TcpUpstreamFailed => "tcp_upstream_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One workload's counters. Cheap to update from many connections at
/// once: request series are looked up under a read lock and created once.
#[derive(Debug)]
pub struct WorkloadMetrics {
    namespace: String,
    name: String,
    requests: RwLock<SeriesMap<RequestKey, Counter>>,
    durations: RwLock<SeriesMap<(Protocol, u16), Histogram>>,
    decisions: Histogram,
    events: [Counter; InboundEvent::ALL.len()],
    connections: Counter,
    active: Gauge,
    tcp_received: Counter,
    tcp_sent: Counter,
}

/// Held while a connection is open: `jwtgate_connections_active`.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl WorkloadMetrics {
    /// A workload's counters, outside any exposition (tests, `check`).
    pub fn new(namespace: &str, name: &str) -> WorkloadMetrics {
        WorkloadMetrics {
            namespace: namespace.to_string(),
            name: name.to_string(),
            requests: RwLock::default(),
            durations: RwLock::default(),
            decisions: Histogram::new(DECISION_BUCKETS),
            events: Default::default(),
            connections: Counter::default(),
            active: Gauge::default(),
            tcp_received: Counter::default(),
            tcp_sent: Counter::default(),
        }
    }

    /// One request answered: its series and its latency.
    pub fn request(&self, key: RequestKey, elapsed: Duration) {
        increment(&self.requests, key);
        let series = (key.protocol, key.code);
        if let Some(h) = self
            .durations
            .read()
            .ok()
            .as_ref()
            .and_then(|d| d.get(&series))
        {
            h.observe(elapsed.as_secs_f64());
            return;
        }
        let mut d = self.durations.write().unwrap_or_else(|e| e.into_inner());
        d.entry(series)
            .or_insert_with(|| Histogram::new(REQUEST_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    /// How long one decision took (authentication and authorization,
    /// re-fetches included).
    pub fn decision(&self, elapsed: Duration) {
        self.decisions.observe(elapsed.as_secs_f64());
    }

    pub fn event(&self, event: InboundEvent) {
        self.events[event.index()].inc();
    }

    /// A connection accepted; it counts as active until the guard drops.
    pub fn connection(&self) -> OpenConnection {
        self.connections.inc();
        self.active.inc();
        OpenConnection(self.active.clone())
    }

    /// Bytes of one finished TCP connection, as seen from the workload:
    /// received from the client, sent back to it.
    pub fn tcp_bytes(&self, received: u64, sent: u64) {
        self.tcp_received.inc_by(received);
        self.tcp_sent.inc_by(sent);
    }

    /// The current value of one request series (tests, debug output).
    pub fn requests(&self, key: &RequestKey) -> u64 {
        self.requests
            .read()
            .ok()
            .and_then(|r| r.get(key).map(Counter::get))
            .unwrap_or(0)
    }

    /// Requests so far by reason label.
    pub fn requests_by_reason(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        if let Ok(r) = self.requests.read() {
            for (key, counter) in r.iter() {
                *out.entry(key.reason).or_default() += counter.get();
            }
        }
        out
    }

    pub fn event_count(&self, event: InboundEvent) -> u64 {
        self.events[event.index()].get()
    }

    fn labels(&self) -> [(&'static str, &str); 2] {
        [
            ("destination_workload", self.name.as_str()),
            ("destination_workload_namespace", self.namespace.as_str()),
        ]
    }
}

fn increment<K: std::hash::Hash + Eq + Copy>(map: &RwLock<SeriesMap<K, Counter>>, key: K) {
    // Counted under the read lock: no clone of the series' `Arc` per request.
    if let Some(c) = map.read().ok().as_ref().and_then(|m| m.get(&key)) {
        c.inc();
        return;
    }
    let mut m = map.write().unwrap_or_else(|e| e.into_inner());
    m.entry(key).or_default().inc();
}

/// The enrolled workloads' metrics, as one collector: each metric family
/// is written once, with every workload's series under it.
#[derive(Debug, Default)]
pub struct Workloads {
    by_key: RwLock<BTreeMap<String, Arc<WorkloadMetrics>>>,
}

impl Workloads {
    pub fn add(&self, key: &str, metrics: Arc<WorkloadMetrics>) {
        if let Ok(mut m) = self.by_key.write() {
            m.insert(key.to_string(), metrics);
        }
    }

    pub fn remove(&self, key: &str) {
        if let Ok(mut m) = self.by_key.write() {
            m.remove(key);
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<WorkloadMetrics>> {
        self.by_key.read().ok()?.get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        self.by_key
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<Arc<WorkloadMetrics>> {
        self.by_key
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

const REPORTER: (&str, &str) = ("reporter", "destination");

impl Collector for Workloads {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let workloads = self.snapshot();

        let mut family = encoder.encode_descriptor(
            "requests",
            "Requests answered by the verifier (Istio's istio_requests_total): by workload, protocol, response code, Envoy response flags and jwtgate's reason.",
            None,
            MetricType::Counter,
        )?;
        for wl in &workloads {
            let [workload, namespace] = wl.labels();
            let mut series: Vec<(RequestKey, Counter)> = wl
                .requests
                .read()
                .map(|r| r.iter().map(|(k, c)| (*k, c.clone())).collect())
                .unwrap_or_default();
            series.sort_by_key(|(k, _)| *k);
            for (key, counter) in series {
                let code = key.code.to_string();
                let labels = [
                    REPORTER,
                    workload,
                    namespace,
                    ("request_protocol", key.protocol.label()),
                    ("response_code", code.as_str()),
                    ("response_flags", key.flags),
                    ("reason", key.reason),
                ];
                counter.encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "request_duration",
            "Time from the request head to the response head (Istio's istio_request_duration_milliseconds, in seconds).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for wl in &workloads {
            let [workload, namespace] = wl.labels();
            let mut series: Vec<((Protocol, u16), Histogram)> = wl
                .durations
                .read()
                .map(|d| d.iter().map(|(k, h)| (*k, h.clone())).collect())
                .unwrap_or_default();
            series.sort_by_key(|(k, _)| *k);
            for ((protocol, code), histogram) in series {
                let code = code.to_string();
                let labels = [
                    REPORTER,
                    workload,
                    namespace,
                    ("request_protocol", protocol.label()),
                    ("response_code", code.as_str()),
                ];
                histogram.encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "decision_duration",
            "Time the verifier took to decide one request: token extraction, signature (or cache), claims, AuthorizationPolicy.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for wl in &workloads {
            wl.decisions.encode(family.encode_family(&wl.labels())?)?;
        }

        let mut family = encoder.encode_descriptor(
            "inbound_events",
            "What happened to connections or requests before or instead of an HTTP decision.",
            None,
            MetricType::Counter,
        )?;
        for wl in &workloads {
            let [workload, namespace] = wl.labels();
            for event in InboundEvent::ALL {
                let labels = [workload, namespace, ("event", event.label())];
                wl.events[event.index()].encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "connections",
            "Downstream connections accepted by the verifier.",
            None,
            MetricType::Counter,
        )?;
        for wl in &workloads {
            wl.connections.encode(family.encode_family(&wl.labels())?)?;
        }
        let mut family = encoder.encode_descriptor(
            "connections_active",
            "Downstream connections open now.",
            None,
            MetricType::Gauge,
        )?;
        for wl in &workloads {
            wl.active.encode(family.encode_family(&wl.labels())?)?;
        }

        for (name, help, pick) in [
            (
                "tcp_received_bytes",
                "Bytes received from clients on TCP (non-HTTP) connections (Istio's istio_tcp_received_bytes_total).",
                (|wl: &WorkloadMetrics| wl.tcp_received.clone()) as fn(&WorkloadMetrics) -> Counter,
            ),
            (
                "tcp_sent_bytes",
                "Bytes sent to clients on TCP (non-HTTP) connections (Istio's istio_tcp_sent_bytes_total).",
                |wl: &WorkloadMetrics| wl.tcp_sent.clone(),
            ),
        ] {
            let mut family =
                encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for wl in &workloads {
                let [workload, namespace] = wl.labels();
                pick(wl).encode(family.encode_family(&[REPORTER, workload, namespace])?)?;
            }
        }
        Ok(())
    }
}
