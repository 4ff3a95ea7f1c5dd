//! Steady legitimate traffic that counts every failed request: `conns`
//! threads, each with a keep-alive connection, send the same request in a
//! loop. Any request that does not get a 2xx — the connection refused, reset
//! or closed under it, a timeout, an error status — counts as failed, then
//! the thread waits a little (as a client with retries would) and goes on.
//!
//! wrk is the better load generator, but not for this: it counts a refused
//! connect as a write error and retries at once, so an outage shows up as
//! thousands of "errors" that say nothing about requests. Here one failed
//! attempt is one failed request, and the outage has a start and an end.

use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::http::exchange_raw;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed request before the next attempt.
const RETRY_AFTER: Duration = Duration::from_millis(10);

/// What happened to the requests, over every thread.
#[derive(Debug, Clone, Default)]
pub struct SteadyReport {
    pub ok: u64,
    /// Connects refused or timed out (each one a request that could not be sent).
    pub refused: u64,
    /// Requests sent whose connection broke before the answer.
    pub broken: u64,
    /// Requests answered with a status other than 2xx.
    pub bad_status: u64,
    /// First and last failure, from the start.
    pub failures_between: Option<(Duration, Duration)>,
    /// Latency of each good request, µs.
    pub latencies_us: Vec<u32>,
    pub elapsed: Duration,
}

impl SteadyReport {
    pub fn failed(&self) -> u64 {
        self.refused + self.broken + self.bad_status
    }

    /// The `p`-th percentile of the good requests' latency, µs.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)] as f64
    }
}

/// The running load; [`SteadyLoad::stop`] ends it and reports.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    started: Instant,
    threads: Vec<JoinHandle<Result<SteadyReport>>>,
}

impl SteadyLoad {
    /// `conns` threads inside the network namespace at `netns`, each sending
    /// `GET path` with `token` to `target` until stopped.
    pub fn start(
        netns: &Path,
        target: SocketAddr,
        path: &str,
        token: &str,
        conns: usize,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let request = Arc::new(format!(
            "GET {path} HTTP/1.1\r\nHost: {target}\r\nAuthorization: Bearer {token}\r\n\r\n"
        ));
        let threads = (0..conns)
            .map(|i| {
                let file = std::fs::File::open(netns)
                    .with_context(|| format!("opening netns {}", netns.display()))?;
                let (stop, request) = (stop.clone(), request.clone());
                std::thread::Builder::new()
                    .name(format!("steady-{i}"))
                    .spawn(move || {
                        crate::netns::enter(&file)?;
                        Ok(run(&stop, started, target, &request))
                    })
                    .context("starting a client thread")
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SteadyLoad {
            stop,
            started,
            threads,
        })
    }

    /// Stops every thread and adds their counts up.
    pub fn stop(self) -> Result<SteadyReport> {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = SteadyReport {
            elapsed: self.started.elapsed(),
            ..SteadyReport::default()
        };
        for t in self.threads {
            let r = t
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            total.ok += r.ok;
            total.refused += r.refused;
            total.broken += r.broken;
            total.bad_status += r.bad_status;
            total.latencies_us.extend(r.latencies_us);
            total.failures_between = match (total.failures_between, r.failures_between) {
                (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
                (x, y) => x.or(y),
            };
        }
        Ok(total)
    }
}

fn run(stop: &AtomicBool, started: Instant, target: SocketAddr, request: &str) -> SteadyReport {
    let mut r = SteadyReport::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let failed = |r: &mut SteadyReport| {
        let at = started.elapsed();
        r.failures_between = Some(
            r.failures_between
                .map_or((at, at), |(first, _)| (first, at)),
        );
        std::thread::sleep(RETRY_AFTER);
    };
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).and_then(|s| {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(s)
            }) {
                Ok(s) => conn = Some(BufReader::new(s)),
                Err(_) => {
                    r.refused += 1;
                    failed(&mut r);
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let sent = Instant::now();
        match exchange_raw(c, request.as_bytes()) {
            Ok((status, keep)) => {
                if (200..300).contains(&status) {
                    r.ok += 1;
                    r.latencies_us
                        .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    r.bad_status += 1;
                    failed(&mut r);
                }
                if !keep {
                    conn = None;
                }
            }
            Err(_) => {
                r.broken += 1;
                conn = None;
                failed(&mut r);
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_good_requests() {
        let r = SteadyReport {
            latencies_us: (1..=100).collect(),
            ..SteadyReport::default()
        };
        assert_eq!(r.percentile(50.0), 51.0);
        assert_eq!(r.percentile(99.0), 99.0);
        assert!(SteadyReport::default().percentile(99.0).is_nan());
    }
}
