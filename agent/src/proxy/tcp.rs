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
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::request::ConnContext;
use super::{reset, upstream};
use crate::authz::{evaluate_connection, Connection};
use crate::inbound::probes::is_probe_connection;
use crate::inbound::protocol::{sniff, Sniffed, SNIFF_MAX};

pub async fn serve(client: TcpStream, first: Vec<u8>, late: bool, ctx: &ConnContext) {
    let stats = &ctx.workload.stats;
    let port = ctx.original_dst.port();
    if ctx.shared.probe_sources.contains(ctx.peer.ip())
        && is_probe_connection(&ctx.inbound.probes, port)
    {
        stats.probes_passed.fetch_add(1, Ordering::Relaxed);
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
            stats.tcp_denied.fetch_add(1, Ordering::Relaxed);
            reset(client);
            return;
        }
    }
    stats.tcp_allowed.fetch_add(1, Ordering::Relaxed);
    let app = match upstream::connect(ctx).await {
        Ok(app) => app,
        Err(err) => {
            stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
            debug!(dst = %ctx.original_dst, err = %format!("{err:#}"), "upstream failed");
            reset(client);
            return;
        }
    };
    match splice(client, app, first, late).await {
        Err(err) if err.kind() == io::ErrorKind::InvalidData => {
            stats.late_http_closed.fetch_add(1, Ordering::Relaxed);
            debug!(peer = %ctx.peer, "HTTP sent after protocol detection gave up: closed");
        }
        Err(err) => debug!(peer = %ctx.peer, %err, "tcp connection ended with an error"),
        Ok(()) => {}
    }
}

/// Copy both ways until both sides are done; a side that finishes sending
/// half-closes the other (as a TCP proxy must, for protocols that signal the
/// end of a request with a FIN).
async fn splice(client: TcpStream, app: TcpStream, first: Vec<u8>, late: bool) -> io::Result<()> {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut app_rx, mut app_tx) = app.into_split();
    let to_app = async {
        app_tx.write_all(&first).await?;
        if late {
            // The server may greet first; meanwhile the other direction
            // runs, so this only holds up what the client sends.
            forward_unless_http(first, &mut client_rx, &mut app_tx).await?;
        }
        tokio::io::copy(&mut client_rx, &mut app_tx).await?;
        app_tx.shutdown().await
    };
    let to_client = async {
        tokio::io::copy(&mut app_rx, &mut client_tx).await?;
        client_tx.shutdown().await
    };
    // The first error ends both directions (the halves drop and close).
    tokio::try_join!(to_app, to_client).map(|_| ())
}

/// Forward the client's bytes chunk by chunk while `seen` plus them could
/// still become an HTTP request line; stop watching once they cannot (or
/// the client half-closes). A chunk that makes them HTTP is not forwarded:
/// `InvalidData`.
async fn forward_unless_http(
    mut seen: Vec<u8>,
    rx: &mut tokio::net::tcp::OwnedReadHalf,
    tx: &mut tokio::net::tcp::OwnedWriteHalf,
) -> io::Result<()> {
    let mut chunk = vec![0u8; 4096];
    while sniff(&seen) == Sniffed::NeedMore {
        // Never more than SNIFF_MAX in total: at that size a plausible
        // request line counts as HTTP.
        let room = (SNIFF_MAX - seen.len()).min(chunk.len());
        let n = rx.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(());
        }
        seen.extend_from_slice(&chunk[..n]);
        if matches!(sniff(&seen), Sniffed::Http1 | Sniffed::Http2) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an HTTP request on a connection taken for TCP",
            ));
        }
        tx.write_all(&chunk[..n]).await?;
    }
    Ok(())
}
