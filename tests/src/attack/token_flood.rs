//! A flood of forged tokens from many source addresses: every request
//! carries a token no other request carried, well-formed and naming the
//! sample key, with a signature that key never made — so the agent's caches
//! cannot answer it and each costs an RSA verification, until the agent
//! bans the source in XDP. Each source keeps one keep-alive connection and,
//! when `per_source_rate` is set, stays under that many requests a second
//! (under the ban threshold, the attacker's best strategy against bans).

use std::io::BufReader;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{connect_from, Worker};
use crate::http::exchange_raw;

/// Short, so that sources the agent banned (their packets dropped) cost
/// the flood little time.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
const READ_TIMEOUT: Duration = Duration::from_millis(300);
/// A source whose connection failed is left alone this long.
const BACKOFF: Duration = Duration::from_secs(2);

/// What the flood sends where.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    pub sources: Vec<IpAddr>,
    pub target: SocketAddr,
    pub path: String,
    /// Requests per second per source; `None`: as fast as answers come.
    pub per_source_rate: Option<f64>,
    /// The first forged token's number; each flood should use its own range.
    pub first_token: u64,
}

/// What the flood got so far.
#[derive(Debug, Default)]
pub struct FloodStats {
    pub sent: AtomicU64,
    /// Answered 401 (the verification failed, as it must).
    pub rejected: AtomicU64,
    /// Answered with anything else (a forged token let through would show here).
    pub other_status: AtomicU64,
    /// Connects that failed or timed out (a banned source's SYNs are dropped).
    pub connect_failures: AtomicU64,
    /// Requests without an answer (reset, timeout, drop).
    pub io_errors: AtomicU64,
}

/// The running flood; stopped on drop.
pub struct TokenFlood {
    stats: Arc<FloodStats>,
    worker: Worker,
}

impl TokenFlood {
    /// Starts the flood on one thread inside the network namespace at
    /// `netns`, whose addresses `cfg.sources` are.
    pub fn start(netns: &Path, cfg: FloodConfig) -> Result<Self> {
        if cfg.sources.is_empty() {
            bail!("token flood: no source address");
        }
        let kid = crate::tokens::sample_key_id()?;
        let stats = Arc::new(FloodStats::default());
        let st = stats.clone();
        let worker = Worker::spawn("token-flood", netns, move |stop| {
            run(stop, &cfg, &kid, &st);
            Ok(())
        })?;
        Ok(TokenFlood { stats, worker })
    }

    pub fn stats(&self) -> &FloodStats {
        &self.stats
    }

    pub fn stop(mut self) -> Result<()> {
        self.worker.stop()
    }
}

struct Source {
    addr: IpAddr,
    conn: Option<BufReader<TcpStream>>,
    /// Not before this instant (rate limit or backoff).
    next: Instant,
}

fn run(stop: &AtomicBool, cfg: &FloodConfig, kid: &str, st: &FloodStats) {
    let mut sources: Vec<Source> = cfg
        .sources
        .iter()
        .map(|&addr| Source {
            addr,
            conn: None,
            next: Instant::now(),
        })
        .collect();
    let interval = cfg
        .per_source_rate
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut n = cfg.first_token;
    while !stop.load(Ordering::Relaxed) {
        let mut sent_any = false;
        for s in sources.iter_mut() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            if now < s.next {
                continue;
            }
            if s.conn.is_none() {
                match connect_from(s.addr, cfg.target, CONNECT_TIMEOUT) {
                    Ok(c) if c.set_read_timeout(Some(READ_TIMEOUT)).is_ok() => {
                        s.conn = Some(BufReader::new(c));
                    }
                    _ => {
                        st.connect_failures.fetch_add(1, Ordering::Relaxed);
                        s.next = now + BACKOFF;
                        continue;
                    }
                }
            }
            let token = crate::tokens::forged_token(kid, n);
            n += 1;
            st.sent.fetch_add(1, Ordering::Relaxed);
            sent_any = true;
            match exchange(s.conn.as_mut().expect("connected above"), cfg, &token) {
                Ok((status, keep)) => {
                    if status == 401 {
                        st.rejected.fetch_add(1, Ordering::Relaxed);
                    } else {
                        st.other_status.fetch_add(1, Ordering::Relaxed);
                    }
                    if !keep {
                        s.conn = None;
                    }
                    // Paced from the previous slot, not from now, so the rate holds
                    // on average; a lagging loop never sends a burst to catch up.
                    s.next = interval.map_or(now, |i| (s.next + i).max(now));
                }
                Err(_) => {
                    st.io_errors.fetch_add(1, Ordering::Relaxed);
                    s.conn = None;
                    s.next = now + BACKOFF;
                }
            }
        }
        if !sent_any {
            // Every source is waiting (rate limit or backoff).
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// One request; returns the status and whether the connection stays open.
fn exchange(
    conn: &mut BufReader<TcpStream>,
    cfg: &FloodConfig,
    token: &str,
) -> std::io::Result<(u16, bool)> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        cfg.path, cfg.target
    );
    exchange_raw(conn, req.as_bytes())
}
