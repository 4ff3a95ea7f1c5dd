//! The I/O under an HTTP connection: the bytes sniffing already read, then
//! the socket, with every read and write stamped so the connection's
//! watchdog (`http::watchdog`) can apply its timeouts. The socket is shared
//! (`Arc`) so the watchdog can still write a 408 to it while hyper waits for
//! a request head.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Where the connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No request in progress: the next head may start at any time.
    AwaitingHead,
    /// At least one request was handed to the service and its response is
    /// not done (HTTP/2 runs several at once).
    InRequest,
    /// Upgraded (WebSocket and the like): opaque bytes both ways.
    Upgraded,
}

/// What the watchdog reads. Times are milliseconds since `epoch`.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_io: AtomicU64,
    /// When the connection last had no request in progress (its start, or
    /// the end of the last response): idleness is counted from here, so
    /// traffic that is no request (HTTP/2 PINGs, SETTINGS) does not keep an
    /// idle connection open, as with Envoy's idle_timeout.
    idle_since: AtomicU64,
    /// When the first byte of the current request head arrived (0: none).
    head_started: AtomicU64,
    /// Requests handed to the service whose responses are not done.
    in_flight: AtomicU32,
    upgraded: AtomicBool,
    /// HTTP/2: bytes between requests are frames of the connection, not
    /// the start of a request head, so they do not start the header-read
    /// timer (h2 bounds a header block itself).
    multiplexed: AtomicBool,
    /// The client's I/O was dropped (by hyper, or by the pipe after an
    /// upgrade): nothing reads or writes the connection any more.
    io_gone: AtomicBool,
    io_gone_notify: Notify,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_io: AtomicU64::new(1),
            idle_since: AtomicU64::new(1),
            head_started: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            upgraded: AtomicBool::new(false),
            multiplexed: AtomicBool::new(false),
            io_gone: AtomicBool::new(false),
            io_gone_notify: Notify::new(),
        })
    }

    fn now(&self) -> u64 {
        // +1 so that 0 can mean "not set".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + std::time::Duration::from_millis(ms.saturating_sub(1))
    }

    fn touch(&self, read: bool) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if read && !self.multiplexed.load(Ordering::Relaxed) && self.phase() == Phase::AwaitingHead
        {
            let _ =
                self.head_started
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Bytes of a request head arrived (before the connection was handed to
    /// the HTTP server: the header-read timer starts at the first of them).
    pub fn head_bytes_read(&self) {
        self.touch(true);
    }

    /// The connection speaks HTTP/2.
    pub fn set_multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
    }

    /// A request was handed to the service; the returned guard marks its
    /// end when dropped (response done, or the request abandoned).
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        self.last_io.store(self.now(), Ordering::Relaxed);
        InFlight(Some(self.clone()))
    }

    fn request_finished(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(now, Ordering::Relaxed);
        }
    }

    /// The connection became a pipe (after a 101).
    pub fn set_upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        if self.upgraded.load(Ordering::Relaxed) {
            Phase::Upgraded
        } else if self.in_flight.load(Ordering::Relaxed) > 0 {
            Phase::InRequest
        } else {
            Phase::AwaitingHead
        }
    }

    /// The instant of the last byte in either direction.
    pub fn last_io(&self) -> Instant {
        self.at(self.last_io.load(Ordering::Relaxed))
    }

    /// Since when no request has been in progress.
    pub fn idle_since(&self) -> Instant {
        self.at(self.idle_since.load(Ordering::Relaxed))
    }

    /// When the head being read started, if one is.
    pub fn head_started(&self) -> Option<Instant> {
        match self.head_started.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.at(ms)),
        }
    }

    /// Wait until the client's I/O has been dropped.
    pub async fn io_gone(&self) {
        while !self.io_gone.load(Ordering::Acquire) {
            // One waiter only (the connection's driver): `notify_one`
            // keeps the wake-up if it comes before this wait.
            self.io_gone_notify.notified().await;
        }
    }
}

/// One request in progress; dropping it ends it for the watchdog.
#[derive(Debug)]
pub struct InFlight(Option<Arc<Activity>>);

impl InFlight {
    /// The request upgraded the connection: it never ends as a request.
    pub fn into_upgraded(mut self) {
        if let Some(activity) = self.0.take() {
            activity.set_upgraded();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(activity) = self.0.take() {
            activity.request_finished();
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

impl Drop for ConnIo {
    fn drop(&mut self) {
        self.activity.io_gone.store(true, Ordering::Release);
        self.activity.io_gone_notify.notify_one();
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
            let wanted = buf.remaining();
            let mut got = 0;
            // A read that fills less than the buffer drained the socket:
            // report "would block" to `try_io` so it clears the readiness
            // now, as tokio's own `TcpStream` does, instead of finding out
            // with one more `recvfrom` that returns EAGAIN (1.5 calls per
            // request under load, docs/performance.md). `try_io` clears only
            // the readiness it saw before the read, so data that arrives
            // meanwhile still wakes the connection.
            let read = this.stream.try_io(Interest::READABLE, || {
                // Into the buffer's uninitialized space (tokio's `BufMut`
                // for `ReadBuf`): `try_read(buf.initialize_unfilled())`
                // zeroed hyper's whole 8 KiB+ read buffer first, 1 % of the
                // agent's CPU under load.
                got = this.stream.try_read_buf(buf)?;
                if 0 < got && got < wanted {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got == 0 => continue,
                Ok(()) | Err(_) if got > 0 => {
                    this.activity.touch(true);
                    return Poll::Ready(Ok(()));
                }
                // End of stream (nothing read, no error).
                Ok(()) => return Poll::Ready(Ok(())),
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
