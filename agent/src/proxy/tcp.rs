//! Connections that are not HTTP: authorized once, at their start, with
//! Istio's network RBAC semantics (`authz::evaluate_connection`), then
//! spliced to the application byte for byte. A denied connection is reset.
//! A declared TCP probe from a probe source passes without policy.
//!
//! A connection classified as TCP only because the detection timed out
//! (`late`) is watched as its first bytes pass: each chunk is forwarded only
//! while the bytes so far are not yet an HTTP request line (or the HTTP/2
//! preface); the chunk that would complete one closes the connection
//! instead, so the application never receives a whole request line. Without
//! this, a client could wait out the timeout (or send half a request line
//! before it) and then send HTTP that no HTTP policy — jwt_authn's header
//! sanitising included — ever saw.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::request::ConnContext;
use super::{reset, upstream};
use crate::access_log::{self, Entry};
use crate::authz::{evaluate_connection, Connection, Reason};
use crate::inbound::probes::is_probe_connection;
use crate::inbound::protocol::{sniff, Sniffed, SNIFF_MAX};
use crate::metrics::InboundEvent;

pub async fn serve(client: TcpStream, first: Vec<u8>, late: bool, ctx: &ConnContext) {
    let started = (SystemTime::now(), Instant::now());
    let stats = &ctx.workload.stats;
    let port = ctx.original_dst.port();
    let decision = if ctx.shared.probe_sources.contains(ctx.peer.ip())
        && is_probe_connection(&ctx.inbound.probes, port)
    {
        stats.event(InboundEvent::ProbePassed);
        None
    } else {
        let policy = ctx.workload.policy.borrow().clone();
        let decision = evaluate_connection(
            &policy,
            &Connection {
                source_ip: ctx.peer.ip(),
                destination_ip: ctx.original_dst.ip(),
                destination_port: port,
            },
        );
        debug!(peer = %ctx.peer, port, allowed = decision.allowed, reason = %decision.reason, "tcp decision");
        if !decision.allowed {
            stats.event(InboundEvent::TcpDenied);
            ctx.shared
                .access_log
                .denied(line(ctx, &decision.reason, false, "-", started, None));
            reset(client);
            return;
        }
        Some(decision)
    };
    stats.event(InboundEvent::TcpAllowed);
    let reason = decision.map_or(Reason::DeclaredProbe, |d| d.reason);
    let logged = ctx.shared.access_log.wants_allowed();
    let app = match upstream::connect(ctx).await {
        Ok(app) => app,
        Err(err) => {
            stats.event(InboundEvent::TcpUpstreamFailed);
            debug!(dst = %ctx.original_dst, err = %format!("{err:#}"), "upstream failed");
            if logged {
                let entry = line(ctx, &reason, true, "UF", started, None);
                ctx.shared.access_log.allowed(entry);
            }
            reset(client);
            return;
        }
    };
    let bytes = Bytes::default();
    match splice(client, app, first, late, &bytes).await {
        Err(err) if err.kind() == io::ErrorKind::InvalidData => {
            stats.event(InboundEvent::LateHttpClosed);
            debug!(peer = %ctx.peer, "HTTP sent after protocol detection gave up: closed");
        }
        Err(err) => debug!(peer = %ctx.peer, %err, "tcp connection ended with an error"),
        Ok(()) => {}
    }
    let (received, sent) = bytes.get();
    stats.tcp_bytes(received, sent);
    if logged {
        let entry = line(ctx, &reason, true, "-", started, Some((received, sent)));
        ctx.shared.access_log.allowed(entry);
    }
}

/// The access-log line of one TCP connection decision.
fn line(
    ctx: &ConnContext,
    reason: &Reason,
    allowed: bool,
    flags: &'static str,
    (at, instant): (SystemTime, Instant),
    bytes: Option<(u64, u64)>,
) -> Entry {
    let rule = reason.rule();
    Entry {
        start_time: access_log::rfc3339(at),
        workload: ctx.workload.key.clone(),
        decision: if allowed { "allowed" } else { "denied" },
        protocol: "TCP",
        method: None,
        authority: None,
        path: None,
        response_code: 0,
        response_flags: flags,
        response_code_details: reason.response_code_details(),
        reason: reason.to_string(),
        policy: rule.map(|(p, _)| p.to_string()),
        rule: rule.map(|(_, r)| r),
        principal: None,
        duration_ms: instant.elapsed().as_millis() as u64,
        bytes_received: bytes.map(|(r, _)| r),
        bytes_sent: bytes.map(|(_, s)| s),
        downstream_remote_address: ctx.peer,
        downstream_local_address: ctx.original_dst,
        user_agent: None,
        x_forwarded_for: None,
    }
}

/// Bytes spliced each way, for metrics and the log.
#[derive(Default)]
struct Bytes {
    received: AtomicU64,
    sent: AtomicU64,
}

impl Bytes {
    fn get(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        )
    }
}

/// Copy both ways until both sides are done; a side that finishes sending
/// half-closes the other (as a TCP proxy must, for protocols that signal the
/// end of a request with a FIN).
async fn splice(
    client: TcpStream,
    app: TcpStream,
    first: Vec<u8>,
    late: bool,
    bytes: &Bytes,
) -> io::Result<()> {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut app_rx, mut app_tx) = app.into_split();
    let to_app = async {
        app_tx.write_all(&first).await?;
        bytes
            .received
            .fetch_add(first.len() as u64, Ordering::Relaxed);
        if late {
            // The server may greet first; meanwhile the other direction
            // runs, so this only holds up what the client sends.
            let n = forward_unless_http(first, &mut client_rx, &mut app_tx).await?;
            bytes.received.fetch_add(n, Ordering::Relaxed);
        }
        let n = tokio::io::copy(&mut client_rx, &mut app_tx).await?;
        bytes.received.fetch_add(n, Ordering::Relaxed);
        app_tx.shutdown().await
    };
    let to_client = async {
        let n = tokio::io::copy(&mut app_rx, &mut client_tx).await?;
        bytes.sent.fetch_add(n, Ordering::Relaxed);
        client_tx.shutdown().await
    };
    // The first error ends both directions (the halves drop and close).
    tokio::try_join!(to_app, to_client).map(|_| ())
}

/// Forward the client's bytes chunk by chunk while `seen` plus them could
/// still become an HTTP request line; stop watching once they cannot (or
/// the client half-closes). A chunk that makes them HTTP is not forwarded:
/// `InvalidData`. Returns the bytes forwarded.
async fn forward_unless_http(
    mut seen: Vec<u8>,
    rx: &mut tokio::net::tcp::OwnedReadHalf,
    tx: &mut tokio::net::tcp::OwnedWriteHalf,
) -> io::Result<u64> {
    let mut forwarded = 0u64;
    let mut chunk = vec![0u8; 4096];
    while sniff(&seen) == Sniffed::NeedMore {
        // Never more than SNIFF_MAX in total: at that size a plausible
        // request line counts as HTTP.
        let room = (SNIFF_MAX - seen.len()).min(chunk.len());
        let n = rx.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(forwarded);
        }
        seen.extend_from_slice(&chunk[..n]);
        if matches!(sniff(&seen), Sniffed::Http1 | Sniffed::Http2) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an HTTP request on a connection taken for TCP",
            ));
        }
        tx.write_all(&chunk[..n]).await?;
        forwarded += n as u64;
    }
    Ok(forwarded)
}
