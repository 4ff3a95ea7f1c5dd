//! The verifier proxy in front of each enrolled workload.
//!
//! Connections arrive on the workload's listeners (created inside its network
//! namespace and handed connections by the `steer` sk_lookup program), so an
//! accepted socket's local address is the original destination. A connection
//! whose local address is not one of the workload's steered addresses did not
//! come through steering — someone inside the pod dialled the listener itself
//! — and is refused at once. The others are classified (`sniff`): the port's
//! declared protocol, else the client's first bytes. HTTP/1 goes to hyper and
//! every request on the connection, not only the first, through
//! `authz::evaluate` (`http`, `request`); other bytes are TCP, authorized once
//! with Istio's network RBAC and spliced to the app (`tcp`). Forwarded traffic
//! leaves from 127.0.0.6 / ::6 over the pod's loopback, which `steer` lets
//! through (`upstream`). The proxy parses no token or policy itself.

mod bans;
mod conn_io;
mod http;
mod limits;
mod probe_sources;
mod request;
mod sniff;
mod tcp;
mod upgrade;
mod upstream;

pub use bans::{BanConfig, BanRequest, BanScope, BanStats, BanTracker, BAN_QUEUE};
pub use http::Timeouts;
pub use limits::ConnectionLimits;
pub use probe_sources::ProbeSources;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use crate::authz::PathNormalization;
use crate::inbound::{Declared, Probe};
use crate::jwt::TokenCache;
use crate::netns::Netns;
use crate::policy::WorkloadPolicy;
use crate::sources::jwks::JwksStore;

/// What every workload proxy shares.
pub struct Shared {
    pub jwks: Arc<JwksStore>,
    /// The node's verified-token cache, one for every workload.
    pub token_cache: Arc<TokenCache>,
    pub normalization: PathNormalization,
    /// Counts 401s per source and workload; hands bans to the task that
    /// writes the kernel maps.
    pub bans: BanTracker,
    /// How long to wait for a client's first bytes on a port without a
    /// declared protocol before taking the connection for a server-first
    /// TCP protocol; `None` waits for ever (Istio's default).
    pub sniff_timeout: Option<Duration>,
    /// The node's addresses, where kubelet probes come from.
    pub probe_sources: ProbeSources,
    pub timeouts: Timeouts,
    /// Serve HTTP/1.0 instead of answering 426 (Istio's `PILOT_HTTP10`).
    pub accept_http_10: bool,
    /// Open downstream connections, capped node-wide and per source.
    pub limits: Arc<ConnectionLimits>,
}

/// Per-workload request counters, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct WorkloadStats {
    pub allowed: AtomicU64,
    pub denied_authn: AtomicU64,
    pub denied_authz: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub connections: AtomicU64,
    /// Declared kubelet probes let through from a probe source.
    pub probes_passed: AtomicU64,
    /// Connections that did not come through steering (the listener
    /// dialled directly from inside the pod): refused.
    pub refused_direct: AtomicU64,
    /// TCP (non-HTTP) connections allowed and denied by network RBAC.
    pub tcp_allowed: AtomicU64,
    pub tcp_denied: AtomicU64,
    /// TCP connections closed because their first bytes, sent after the
    /// protocol detection gave up waiting, were an HTTP request.
    pub late_http_closed: AtomicU64,
    /// Requests Envoy's codec or connection manager would refuse (400, 404,
    /// 426, 431), answered before any policy.
    pub refused_shape: AtomicU64,
    /// Request heads not complete within the header-read timeout (408).
    pub header_timeouts: AtomicU64,
    /// Connections closed for idleness (keep-alive or stream).
    pub idle_timeouts: AtomicU64,
}

/// One enrolled workload as the proxy sees it.
pub struct Workload {
    /// `namespace/name`.
    pub key: String,
    pub netns: Arc<Netns>,
    /// The policies that currently apply; replaced when policies change, and
    /// read on every request so changes apply to open connections too.
    pub policy: watch::Receiver<Arc<WorkloadPolicy>>,
    /// Addresses, declared protocols and probes; replaced in place when the
    /// workload changes.
    pub inbound: watch::Receiver<Arc<Inbound>>,
    pub stats: Arc<WorkloadStats>,
}

/// What the proxy needs to know of a workload besides its policy.
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    /// The steered addresses: the only local addresses a steered connection
    /// can have.
    pub ips: Vec<IpAddr>,
    /// Ports with a declared protocol; the others are sniffed.
    pub protocols: BTreeMap<u16, Declared>,
    /// Kubelet probes that pass from a probe source.
    pub probes: Vec<Probe>,
}

/// Accept and serve connections until `shutdown` turns true, then let open
/// connections finish their current request and close.
pub async fn serve(
    listener: TcpListener,
    workload: Arc<Workload>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    drain: Arc<()>,
) {
    let span = tracing::info_span!("proxy", wl = %workload.key);
    async move {
        let accept = |stream: TcpStream, peer: SocketAddr, shutdown: &watch::Receiver<bool>| {
            // The caps come before any other work: over them a connection
            // costs one RST.
            let Some(admitted) = shared.limits.admit(peer.ip().to_canonical()) else {
                reset(stream);
                return;
            };
            workload.stats.connections.fetch_add(1, Ordering::Relaxed);
            let (workload, shared) = (workload.clone(), shared.clone());
            let shutdown = shutdown.clone();
            let guard = drain.clone();
            tokio::spawn(async move {
                handle(stream, peer, workload, shared, shutdown).await;
                drop(admitted);
                drop(guard);
            });
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => accept(stream, peer, &shutdown),
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
        // Connections the kernel already queued on this listener (in a
        // hand-over, those that arrived before the newer agent's listener
        // replaced ours) are served, not reset by closing it.
        while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
            accept(stream, peer, &shutdown);
        }
        info!("listener closed");
    }
    .instrument(span)
    .await
}

/// One downstream connection, from accept to close.
async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    workload: Arc<Workload>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    // sk_lookup keeps the original destination as the local address.
    let original_dst = SocketAddr::new(local.ip().to_canonical(), local.port());
    let inbound = workload.inbound.borrow().clone();
    if !inbound.ips.contains(&original_dst.ip()) {
        // Not steered: a process in the pod connected to the listener's own
        // loopback address. Forwarding would send the request to ourselves.
        workload
            .stats
            .refused_direct
            .fetch_add(1, Ordering::Relaxed);
        debug!(%peer, dst = %original_dst, "connection to the verifier listener itself refused");
        reset(stream);
        return;
    }
    let _ = stream.set_nodelay(true);
    let ctx = Arc::new(request::ConnContext {
        peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
        original_dst,
        workload,
        shared,
        inbound,
        upstream: tokio::sync::Mutex::new(None),
        activity: conn_io::Activity::new(),
        closing: std::sync::atomic::AtomicBool::new(false),
    });
    match sniff::classify(stream, &ctx).await {
        Ok(sniff::Classified::Http1 { stream, first }) => {
            http::serve_http1(Arc::new(stream), first, ctx, shutdown).await
        }
        Ok(sniff::Classified::Http2 { stream, first }) => {
            http::serve_http2(Arc::new(stream), first, ctx, shutdown).await
        }
        Ok(sniff::Classified::Tcp {
            stream,
            first,
            late,
        }) => tcp::serve(stream, first, late, &ctx).await,
        Err(err) => {
            debug!(peer = %ctx.peer, %err, "connection ended before its protocol was known")
        }
    }
}

/// Close with a RST rather than a FIN: the client learns at once that
/// nothing will be served, as with a refused connection.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
