//! The I/O under an HTTP connection: the bytes sniffing already read, then
//! the socket, with every read and write stamped so the connection's
//! watchdog (`http::watchdog`) can apply its timeouts. The socket is shared
//! (`Arc`) so the watchdog can still write a 408 to it while hyper waits for
//! a request head.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Where the connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Between requests: the next head may start at any time.
    AwaitingHead = 0,
    /// A request was handed to the service and its response is not done.
    InRequest = 1,
    /// Upgraded (WebSocket and the like): opaque bytes both ways.
    Upgraded = 2,
}

/// What the watchdog reads. Times are milliseconds since `epoch`.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_io: AtomicU64,
    /// When the first byte of the current request head arrived (0: none).
    head_started: AtomicU64,
    phase: AtomicU8,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_io: AtomicU64::new(1),
            head_started: AtomicU64::new(0),
            phase: AtomicU8::new(Phase::AwaitingHead as u8),
        })
    }

    fn now(&self) -> u64 {
        // +1 so that 0 can mean "not set".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn touch(&self, read: bool) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if read && self.phase() == Phase::AwaitingHead {
            let _ =
                self.head_started
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::AwaitingHead,
            1 => Phase::InRequest,
            _ => Phase::Upgraded,
        }
    }

    /// The instant of the last byte in either direction.
    pub fn last_io(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_io.load(Ordering::Relaxed) - 1)
    }

    /// When the head being read started, if one is.
    pub fn head_started(&self) -> Option<Instant> {
        match self.head_started.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch + std::time::Duration::from_millis(ms - 1)),
        }
    }
}

/// Replays `prefix`, then reads and writes the shared socket.
pub struct ConnIo {
    prefix: Vec<u8>,
    pos: usize,
    stream: Arc<TcpStream>,
    activity: Arc<Activity>,
}

impl ConnIo {
    pub fn new(prefix: Vec<u8>, stream: Arc<TcpStream>, activity: Arc<Activity>) -> ConnIo {
        ConnIo {
            prefix,
            pos: 0,
            stream,
            activity,
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            this.activity.touch(true);
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            match this.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if n > 0 {
                        this.activity.touch(true);
                    }
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: try_read cleared it, poll again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            ready!(this.stream.poll_write_ready(cx))?;
            match this.stream.try_write(buf) {
                Ok(n) => {
                    this.activity.touch(false);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            ready!(this.stream.poll_write_ready(cx))?;
            match this.stream.try_write_vectored(bufs) {
                Ok(n) => {
                    this.activity.touch(false);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Half-close the write side; the socket itself closes when the last
        // `Arc` goes.
        let this = self.get_mut();
        let _ = socket2::SockRef::from(&*this.stream).shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}
