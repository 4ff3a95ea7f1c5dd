//! HTTP connections: hyper parses each request (HTTP/1.1 keep-alive, or
//! HTTP/2 streams) and hands it to `request::handle`. A watchdog per
//! connection applies the timeouts hyper does not: a request head must be
//! complete within `header_read` of its first byte (else 408, as Envoy's
//! `request_headers_timeout`), a connection without a request in progress
//! closes after `idle` without traffic (Envoy's `idle_timeout`), and a
//! request in progress that moves no byte for `stream_idle` is cut (Envoy's
//! `stream_idle_timeout`). So no client can hold a connection — and the
//! descriptors and memory behind it — by trickling or by silence.
//!
//! On shutdown (SIGTERM, or a newer agent taking over) the connection keeps
//! serving for `drain_grace`, answering each request with `Connection:
//! close` so that busy clients move to the new listener between two
//! requests; idle ones are closed after that.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use super::conn_io::{Activity, ConnIo, InFlight, Phase};
use super::request::{self, ConnContext, ProxyBody};
use super::upgrade;
/// Envoy's default limit on a request head (`max_request_headers_kb: 60`).
const MAX_HEAD_BYTES: usize = 60 * 1024;

/// The proxy's HTTP timeouts (flags in `cli/agent.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub stream_idle: Duration,
    /// How long a draining connection keeps serving (with `Connection:
    /// close`) before it is closed.
    pub drain_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(3600),
            stream_idle: Duration::from_secs(300),
            drain_grace: Duration::from_secs(2),
        }
    }
}

/// Concurrent HTTP/2 streams one connection may hold: Envoy's recommended
/// edge value (its default, 2^31, lets one connection hold any number).
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// Why the watchdog ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    HeaderRead,
    Idle,
    StreamIdle,
}

/// Sleep until one of the connection's deadlines passes.
async fn watchdog(activity: &Activity, t: Timeouts) -> Expired {
    loop {
        let (deadline, why) = match (activity.phase(), activity.head_started()) {
            (Phase::AwaitingHead, Some(started)) => (started + t.header_read, Expired::HeaderRead),
            (Phase::AwaitingHead, None) => (activity.idle_since() + t.idle, Expired::Idle),
            (Phase::Upgraded, _) => (activity.last_io() + t.idle, Expired::Idle),
            (Phase::InRequest, _) => (activity.last_io() + t.stream_idle, Expired::StreamIdle),
        };
        if Instant::now() >= deadline {
            return why;
        }
        // Re-evaluated at the deadline (activity may have moved it), or
        // every second at most so a phase change is noticed.
        tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_secs(1))).await;
    }
}

/// Envoy's reply when the request head did not arrive in time.
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 15\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nrequest timeout";

/// A request head was not complete `header_read` after its first byte:
/// count it and answer 408 (best effort, the connection closes anyway).
/// The first head of a connection is timed before it reaches a worker
/// (`sniff::first_head`), later ones by the watchdog.
pub(super) fn head_timed_out(stream: &TcpStream, ctx: &ConnContext) {
    debug!(peer = %ctx.peer, "request head timed out: 408");
    ctx.workload
        .stats
        .event(crate::metrics::InboundEvent::HeaderTimeout);
    let _ = stream.try_write(REQUEST_TIMEOUT);
}

/// Serve an HTTP/1 connection until the client closes it, a timeout ends it,
/// or shutdown drains it.
pub async fn serve_http1(
    stream: Arc<TcpStream>,
    prefix: Vec<u8>,
    ctx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
) {
    let io = ConnIo::new(prefix, stream.clone(), ctx.activity.clone());
    let service = Svc(ctx.clone());
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        // The watchdog applies the header-read and idle timeouts (Envoy's
        // two). hyper's own header-read timeout (30 s when a timer is set)
        // also runs while a keep-alive connection waits for its next request,
        // so it closed connections idle for 30 s whatever --idle-timeout-secs
        // said, and it armed and dropped a timer for every request.
        .header_read_timeout(None)
        // hyper answers 431 itself past this; below it the request shape
        // decides with Envoy's exact 60 KiB. Bounds the memory a head can take.
        .max_buf_size(MAX_HEAD_BYTES + 8 * 1024)
        // Checked on the complete head too: the buffer bound alone is only
        // checked while a head is incomplete, so one read could bring in a
        // head up to twice its size.
        .max_header_size(MAX_HEAD_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    drive(conn, &stream, &ctx, shutdown).await;
}

/// Serve an HTTP/2 connection (h2c with prior knowledge): every stream is a
/// request handled like an HTTP/1 one.
pub async fn serve_http2(
    stream: Arc<TcpStream>,
    prefix: Vec<u8>,
    ctx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
) {
    ctx.activity.set_multiplexed();
    let io = ConnIo::new(prefix, stream.clone(), ctx.activity.clone());
    let service = Svc(ctx.clone());
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size((MAX_HEAD_BYTES + 8 * 1024) as u32)
        // A bound on the streams one connection can hold open at once.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    drive(conn, &stream, &ctx, shutdown).await;
}

/// The connection future against its watchdog and the shutdown switch.
async fn drive<C>(
    conn: C,
    stream: &TcpStream,
    ctx: &ConnContext,
    mut shutdown: watch::Receiver<bool>,
) where
    C: std::future::Future<Output = Result<(), hyper::Error>> + GracefulShutdown,
{
    let timeouts = ctx.shared.timeouts;
    // Boxed so it can be dropped before an upgraded pipe is waited for.
    let mut conn = Box::pin(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        why = watchdog(&ctx.activity, timeouts) => {
            if why == Expired::HeaderRead {
                // hyper is waiting for the rest of a head, so nothing else
                // writes now.
                head_timed_out(stream, ctx);
            } else {
                debug!(peer = %ctx.peer, ?why, "connection timed out");
                ctx.workload.stats.event(crate::metrics::InboundEvent::IdleTimeout);
            }
            return;
        }
        _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => {
            // Draining: requests in this window are answered with
            // `Connection: close` (HTTP/1) and the client reconnects to
            // whoever holds the steering now.
            ctx.closing.store(true, Ordering::Relaxed);
            let grace = tokio::time::sleep(timeouts.drain_grace);
            tokio::select! {
                result = conn.as_mut() => result,
                _ = grace => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            }
        }
    };
    if let Err(err) = result {
        debug!(peer = %ctx.peer, %err, "connection ended with an error");
    }
    drop(conn);
    if ctx.activity.phase() == Phase::Upgraded {
        // hyper is done, but the connection lives on as a pipe
        // (`request::pipe_upgraded`): it keeps its place under the caps and
        // its idle timeout until the pipe lets go of it.
        tokio::select! {
            _ = ctx.activity.io_gone() => {}
            _ = watchdog(&ctx.activity, timeouts) => {
                debug!(peer = %ctx.peer, "upgraded connection idle: closed");
                ctx.workload.stats.event(crate::metrics::InboundEvent::IdleTimeout);
                // Both directions end: the pipe sees EOF and errors, and
                // the client learns the connection is gone.
                let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// hyper's two connection types both shut down gracefully.
trait GracefulShutdown {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I> GracefulShutdown for http1::UpgradeableConnection<I, Svc>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I> GracefulShutdown for http2::Connection<I, Svc, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

/// The per-request service: marks the request cycle for the watchdog.
#[derive(Clone)]
pub struct Svc(Arc<ConnContext>);

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Svc {
    type Response = http::Response<PhaseBody>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let ctx = self.0.clone();
        Box::pin(async move {
            // Bounds on requests in progress, node-wide and per source
            // (each holds buffers and an upstream stream): over one,
            // Envoy's overload answer.
            let Some(permit) = ctx.shared.limits.start_request(&ctx.source_requests) else {
                return Ok(overloaded().map(|body| PhaseBody {
                    inner: body,
                    in_flight: None,
                    _permit: None,
                }));
            };
            let in_flight = ctx.activity.request_started();
            if let Some(refused) = upgrade::screen(&mut req) {
                let refused = request::refused_upgrade(&req, refused, &ctx);
                return Ok(refused.map(|body| PhaseBody {
                    inner: body,
                    in_flight: Some(in_flight),
                    _permit: Some(permit),
                }));
            }
            let http1 = req.version() < http::Version::HTTP_2;
            let resp = request::finish(request::handle(req, &ctx).await, http1, &ctx);
            let in_flight = if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                in_flight.into_upgraded();
                None
            } else {
                Some(in_flight)
            };
            Ok(resp.map(|body| PhaseBody {
                inner: body,
                in_flight,
                _permit: Some(permit),
            }))
        })
    }
}

/// A response body that tells the watchdog when the response is done (the
/// request then no longer counts as in progress).
pub struct PhaseBody {
    inner: ProxyBody,
    in_flight: Option<InFlight>,
    /// The request's place under `--max-requests`, given back with the body.
    _permit: Option<super::limits::RequestPlace>,
}

/// Envoy's overload manager reply.
fn overloaded() -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(http_body_util::Either::Left(http_body_util::Full::new(
        Bytes::from_static(b"envoy overloaded"),
    )));
    *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

impl PhaseBody {
    fn finish(&mut self) {
        self.in_flight.take();
    }
}

impl Body for PhaseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
