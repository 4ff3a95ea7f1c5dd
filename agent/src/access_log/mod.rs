//! The access log: one line per decision on stdout (agent logs go to
//! stderr), JSON with `--log-format json`, Envoy-like text otherwise
//! (`entry.rs`). Denials are logged by default, allowed requests only when
//! sampled (`--access-log-allowed-sample`). A flood must not turn into a
//! flood of log lines nor stall the proxy: lines over
//! `--access-log-max-rate` per second are counted instead of written
//! (`jwtgate_access_log_suppressed_total`), and a writer thread takes them
//! through a bounded queue, so a slow stdout never blocks a request.
//!
//! The last denials are also kept in a bounded ring whatever the rate limit
//! says, for `/debug/denials` and `jwtgate explain`.

mod entry;

pub use entry::{bounded, path_without_query, rfc3339, Entry, MAX_FIELD};

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

/// Lines waiting for the writer thread; past this they are dropped (and
/// counted as suppressed).
const QUEUE: usize = 4096;

/// What to log, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// Log denied requests and connections.
    pub denied: bool,
    /// Fraction of allowed requests and connections to log (0 = none,
    /// 1 = all), spread evenly.
    pub allowed_sample: f64,
    /// Most lines written per second (0 = no limit).
    pub max_rate: u32,
    pub json: bool,
    /// Denials kept for `/debug/denials`.
    pub recent_denials: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            denied: true,
            allowed_sample: 0.0,
            max_rate: 1000,
            json: false,
            recent_denials: 100,
        }
    }
}

/// The node's access log.
pub struct AccessLog {
    config: AccessLogConfig,
    allowed_seen: AtomicU64,
    limiter: Mutex<Bucket>,
    suppressed: Counter,
    sink: Option<SyncSender<String>>,
    recent: Mutex<VecDeque<Entry>>,
}

impl AccessLog {
    /// An access log writing to stdout from its own thread.
    pub fn stdout(config: AccessLogConfig, suppressed: Counter) -> AccessLog {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                for line in rx {
                    let mut out = stdout.lock();
                    // A closed stdout is no reason to stop serving.
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                    let _ = out.flush();
                }
            });
        AccessLog::with_sink(config, suppressed, spawned.ok().map(|_| tx))
    }

    /// An access log that only keeps the ring of recent denials (tests).
    pub fn without_output(config: AccessLogConfig) -> AccessLog {
        AccessLog::with_sink(config, Counter::default(), None)
    }

    fn with_sink(
        config: AccessLogConfig,
        suppressed: Counter,
        sink: Option<SyncSender<String>>,
    ) -> AccessLog {
        AccessLog {
            limiter: Mutex::new(Bucket::new(config.max_rate)),
            config,
            allowed_seen: AtomicU64::new(0),
            suppressed,
            sink,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether an allowed request's line would be written: checked before
    /// the entry is built, so unsampled allows cost one atomic add.
    pub fn wants_allowed(&self) -> bool {
        let rate = self.config.allowed_sample;
        if rate <= 0.0 {
            return false;
        }
        if rate >= 1.0 {
            return true;
        }
        let n = self.allowed_seen.fetch_add(1, Ordering::Relaxed) as f64;
        (n * rate).floor() != ((n + 1.0) * rate).floor()
    }

    /// Log a denial: kept in the ring, written unless turned off or over
    /// the rate.
    pub fn denied(&self, entry: Entry) {
        if self.config.recent_denials > 0 {
            if let Ok(mut recent) = self.recent.lock() {
                if recent.len() >= self.config.recent_denials {
                    recent.pop_front();
                }
                recent.push_back(entry.clone());
            }
        }
        if self.config.denied {
            self.write(&entry);
        }
    }

    /// Log an allowed request the caller sampled with [`Self::wants_allowed`].
    pub fn allowed(&self, entry: Entry) {
        self.write(&entry);
    }

    /// The last denials, oldest first, optionally of one workload only.
    pub fn recent_denials(&self, workload: Option<&str>) -> Vec<Entry> {
        self.recent
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|e| workload.is_none_or(|w| e.workload == w))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn write(&self, entry: &Entry) {
        let admitted = self
            .limiter
            .lock()
            .map(|mut b| b.take(Instant::now()))
            .unwrap_or(true);
        if !admitted {
            self.suppressed.inc();
            return;
        }
        let Some(sink) = &self.sink else {
            return;
        };
        let line = if self.config.json {
            entry.json()
        } else {
            entry.text()
        };
        if let Err(TrySendError::Full(_)) = sink.try_send(line) {
            self.suppressed.inc();
        }
    }
}

/// A token bucket: `rate` lines per second, bursts up to one second's worth.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.rate);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests;
