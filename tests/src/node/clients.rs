//! The two long-running clients the real-node test runs inside a client pod
//! (`jwtgate-testpod load` and `jwtgate-testpod first`), and the reports they
//! print — one JSON line each, parsed by the test with these same types.
//!
//! - [`load`]: constant load on one address (a ClusterIP) from several
//!   workers, on keep-alive connections or a new one per request, every
//!   answer checked, every failure counted with the time it happened. What
//!   a rolling update of the agent costs.
//! - [`first_answers`]: new connections, one request each, without a token,
//!   hammered at addresses a pod does not have yet (the next ones host-local
//!   will hand out), so the very first request the pod can answer is among
//!   them. What a new pod serves before it is protected.
//!
//! Both run until `stop` is set (the pod's stdin says so) or `max` passed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::http::{self, Request};

/// Connect timeout under load: a refused connect returns at once; a
/// silent one (no listener, dropped SYN) is a failure after this long.
const LOAD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed connect or request before the worker tries again,
/// so a refusing address costs a bounded number of attempts per second.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Failures kept with their details (all are counted).
const SAMPLES: usize = 40;

/// What `jwtgate-testpod load` prints when it stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub workers: u32,
    pub seconds: f64,
    /// Requests answered as expected.
    pub ok: u64,
    /// Requests that failed: no connection, a broken one, a wrong status.
    pub failed: u64,
    /// New connections made after the first one of each worker (a
    /// `Connection: close` or a failure is followed by one).
    pub reconnects: u64,
    /// The slowest right answer (a stall while agents hand over).
    pub max_latency_ms: u64,
    /// First and last failure, milliseconds after the start.
    pub first_failure_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
    /// Failures by kind (`connect: connection refused`, `status 503`, ...).
    pub kinds: BTreeMap<String, u64>,
    /// Failures per second of the run (second → count).
    pub per_second: BTreeMap<u64, u64>,
    /// The first failures: (ms after start, worker, what).
    pub samples: Vec<(u64, u32, String)>,
}

impl LoadReport {
    /// Time from the first to the last failure.
    pub fn outage(&self) -> Duration {
        match (self.first_failure_ms, self.last_failure_ms) {
            (Some(a), Some(b)) => Duration::from_millis(b - a),
            _ => Duration::ZERO,
        }
    }

    /// One line for the test's report.
    pub fn summary(&self) -> String {
        format!(
            "{} ok, {} failed ({:.2}%) in {:.1} s from {} workers; failures over {:.1?}: {:?}; {} reconnects; slowest right answer {} ms",
            self.ok,
            self.failed,
            100.0 * self.failed as f64 / (self.ok + self.failed).max(1) as f64,
            self.seconds,
            self.workers,
            self.outage(),
            self.kinds,
            self.reconnects,
            self.max_latency_ms,
        )
    }
}

/// The request mix of the load, as in `tests/tests/handover.rs`: the FAQ's
/// three answers (a public path, a protected one with the token, a protected
/// one without), so a wrong decision counts as a failure too.
fn mix(i: u64, token: &str) -> (&'static str, Option<&str>, u16) {
    match i % 3 {
        0 => ("/productpage", None, 200),
        1 => ("/api/v1/products/0", Some(token), 200),
        _ => ("/api/v1/products/1", None, 403),
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    reconnects: AtomicU64,
    max_latency_ms: AtomicU64,
    failures: Mutex<LoadReport>,
    /// Workers that have had a right answer (for `on_running`).
    running: AtomicU64,
}

impl Tally {
    fn fail(&self, start: Instant, worker: u32, what: String) {
        let t = start.elapsed().as_millis() as u64;
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.failed += 1;
        f.first_failure_ms.get_or_insert(t);
        f.last_failure_ms = Some(t);
        *f.per_second.entry(t / 1000).or_default() += 1;
        if f.samples.len() < SAMPLES {
            f.samples.push((t, worker, what.clone()));
        }
        *f.kinds.entry(what).or_default() += 1;
    }
}

/// How the load's workers use their connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// One connection per worker, kept until the server closes it.
    KeepAlive,
    /// A new connection for every request: what a client that does not
    /// pool connections sends, and the only kind that reaches a new agent
    /// while the old one still holds the keep-alive connections.
    New,
}

/// Constant load on `addr` from `workers` threads until `stop` or `max`.
/// `on_running` is called once every worker has had a right answer (the
/// load is on).
pub fn load(
    addr: SocketAddr,
    workers: u32,
    connections: Connections,
    token: &str,
    max: Duration,
    stop: &AtomicBool,
    on_running: impl FnOnce() + Send,
) -> LoadReport {
    let start = Instant::now();
    let tally = Tally::default();
    let on_running = Mutex::new(Some(on_running));
    std::thread::scope(|s| {
        for worker in 0..workers {
            let (tally, on_running) = (&tally, &on_running);
            s.spawn(move || {
                let mut conn: Option<http::Conn> = None;
                let mut first = true;
                let mut running = false;
                let mut i = u64::from(worker);
                while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match http::connect(None, addr, LOAD_CONNECT_TIMEOUT) {
                            Ok(c) => {
                                if !std::mem::take(&mut first) {
                                    tally.reconnects.fetch_add(1, Ordering::Relaxed);
                                }
                                conn.insert(c)
                            }
                            Err(o) => {
                                tally.fail(start, worker, format!("connect: {o}"));
                                std::thread::sleep(RETRY_PAUSE);
                                continue;
                            }
                        },
                    };
                    let (path, tok, want) = mix(i, token);
                    i += 1;
                    let sent = Instant::now();
                    match c.send(&Request::get(path).bearer(tok)) {
                        Ok(r) => {
                            if r.status == want {
                                let ms = sent.elapsed().as_millis() as u64;
                                tally.max_latency_ms.fetch_max(ms, Ordering::Relaxed);
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                                if !std::mem::replace(&mut running, true)
                                    && tally.running.fetch_add(1, Ordering::SeqCst) + 1
                                        == u64::from(workers)
                                {
                                    if let Some(f) =
                                        on_running.lock().unwrap_or_else(|e| e.into_inner()).take()
                                    {
                                        f();
                                    }
                                }
                            } else {
                                let body: String = r.text().chars().take(60).collect();
                                tally.fail(
                                    start,
                                    worker,
                                    format!("{path}: status {} {body}", r.status),
                                );
                            }
                            if r.closes() || connections == Connections::New {
                                conn = None;
                            }
                        }
                        Err(e) => {
                            tally.fail(start, worker, format!("request: {}", e.root_cause()));
                            conn = None;
                            std::thread::sleep(RETRY_PAUSE);
                        }
                    }
                }
            });
        }
    });
    let mut report = tally
        .failures
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    report.workers = workers;
    report.seconds = start.elapsed().as_secs_f64();
    report.ok = tally.ok.into_inner();
    report.reconnects = tally.reconnects.into_inner();
    report.max_latency_ms = tally.max_latency_ms.into_inner();
    report
}

/// What one address answered to `first_answers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AddrProbe {
    pub attempts: u64,
    /// Outcome → count (`connect: connect timed out`, `HTTP 403`, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// Every change of outcome: (ms after start, new outcome).
    pub timeline: Vec<(u64, String)>,
    /// HTTP answers, in order: how many.
    pub answers: u64,
    /// The first HTTP answer.
    pub first: Option<Answer>,
    /// Every HTTP answer whose status was not the first one's (capped).
    pub other_answers: Vec<Answer>,
}

/// One HTTP answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answer {
    pub ms: u64,
    pub status: u16,
    pub body: String,
    /// `x-echo-peer`: set when the app itself answered.
    pub app_saw_peer: Option<String>,
}

/// What `jwtgate-testpod first` prints when it stops: address → answers.
pub type FirstReport = BTreeMap<SocketAddr, AddrProbe>;

/// How long a connect to a candidate may take: an address nobody has yet
/// does not answer at all.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
const TIMELINE_MAX: usize = 200;

/// One thread per address: new connection, `GET path` without a token,
/// again, until `stop` or `max`.
pub fn first_answers(
    addrs: &[SocketAddr],
    path: &str,
    max: Duration,
    stop: &AtomicBool,
) -> FirstReport {
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = addrs
            .iter()
            .map(|&addr| {
                s.spawn(move || {
                    let mut p = AddrProbe::default();
                    while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
                        let (outcome, answer) =
                            match http::connect(None, addr, FIRST_CONNECT_TIMEOUT) {
                                Err(o) => (format!("connect: {o}"), None),
                                Ok(mut c) => match c.get(path, None) {
                                    Ok(r) => (
                                        format!("HTTP {}", r.status),
                                        Some(Answer {
                                            ms: start.elapsed().as_millis() as u64,
                                            status: r.status,
                                            body: r.text().chars().take(120).collect(),
                                            app_saw_peer: r.header("x-echo-peer").map(String::from),
                                        }),
                                    ),
                                    Err(e) => (format!("request: {}", e.root_cause()), None),
                                },
                            };
                        p.attempts += 1;
                        *p.outcomes.entry(outcome.clone()).or_default() += 1;
                        if p.timeline.last().map(|(_, o)| o) != Some(&outcome)
                            && p.timeline.len() < TIMELINE_MAX
                        {
                            p.timeline
                                .push((start.elapsed().as_millis() as u64, outcome.clone()));
                        }
                        let answered = answer.is_some();
                        if let Some(a) = answer {
                            p.answers += 1;
                            match &p.first {
                                None => p.first = Some(a),
                                Some(f) if f.status != a.status && p.other_answers.len() < 20 => {
                                    p.other_answers.push(a)
                                }
                                Some(_) => {}
                            }
                        }
                        // An address that answers is asked again at once; a
                        // silent or unreachable one a little later.
                        let pause = if answered || outcome.ends_with("refused") {
                            2
                        } else {
                            20
                        };
                        std::thread::sleep(Duration::from_millis(pause));
                    }
                    (addr, p)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}
