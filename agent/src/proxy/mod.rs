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
mod workers;

pub use bans::{BanConfig, BanRequest, BanScope, BanStats, BanTracker, BAN_QUEUE};
pub use http::Timeouts;
pub use limits::ConnectionLimits;
pub use probe_sources::ProbeSources;
pub use workers::Workers;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use crate::access_log::AccessLog;
use crate::authz::PathNormalization;
use crate::inbound::{Declared, Probe};
use crate::jwt::TokenCache;
use crate::metrics::{InboundEvent, WorkloadMetrics};
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
    /// One line per decision (`access_log/`).
    pub access_log: Arc<AccessLog>,
    /// The threads connections are served on (`workers`).
    pub workers: Arc<Workers>,
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
    /// Its counters (`metrics::WorkloadMetrics`), in the exposition while
    /// it is enrolled.
    pub stats: Arc<WorkloadMetrics>,
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
            let open = workload.stats.connection();
            let (workload, shared) = (workload.clone(), shared.clone());
            let shutdown = shutdown.clone();
            let guard = drain.clone();
            // Classified, and an HTTP/1 connection's first request head
            // read, here on the accepting runtime; only then does the
            // connection move to a proxy worker (`sniff::first_head` says
            // why).
            tokio::spawn(async move {
                let source_requests = admitted.requests.clone();
                let opened = open_connection(
                    stream,
                    peer,
                    workload,
                    shared.clone(),
                    source_requests,
                    shutdown.clone(),
                );
                let Some((ctx, stream, classified)) = opened.await else {
                    return;
                };
                shared
                    .workers
                    .clone()
                    .spawn(stream, move |stream| async move {
                        serve_connection(stream, classified, ctx, shutdown).await;
                        drop(open);
                        drop(admitted);
                        drop(guard);
                    });
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

/// A downstream connection up to its protocol (and, for HTTP/1, its first
/// request head): `None` when it ends here (refused, closed, timed out).
async fn open_connection(
    stream: TcpStream,
    peer: SocketAddr,
    workload: Arc<Workload>,
    shared: Arc<Shared>,
    source_requests: Arc<std::sync::atomic::AtomicUsize>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<(Arc<request::ConnContext>, TcpStream, sniff::Classified)> {
    let local = stream.local_addr().ok()?;
    // sk_lookup keeps the original destination as the local address.
    let original_dst = SocketAddr::new(local.ip().to_canonical(), local.port());
    let inbound = workload.inbound.borrow().clone();
    if !inbound.ips.contains(&original_dst.ip()) {
        // Not steered: a process in the pod connected to the listener's own
        // loopback address. Forwarding would send the request to ourselves.
        workload.stats.event(InboundEvent::RefusedDirect);
        debug!(%peer, dst = %original_dst, "connection to the verifier listener itself refused");
        reset(stream);
        return None;
    }
    let _ = stream.set_nodelay(true);
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let ctx = Arc::new(request::ConnContext {
        peer,
        // Formatted once per connection rather than once per request.
        forwarded_for: ::http::HeaderValue::from_str(&peer.ip().to_string())
            .expect("an IP address is a valid header value"),
        original_dst,
        workload,
        shared,
        inbound,
        upstream: tokio::sync::Mutex::new(None),
        activity: conn_io::Activity::new(),
        closing: std::sync::atomic::AtomicBool::new(false),
        source_requests,
    });
    match sniff::classify(stream, &ctx).await {
        Ok((mut stream, sniff::Classified::Http1 { mut first })) => {
            match sniff::first_head(&mut stream, &mut first, &ctx, &mut shutdown).await {
                sniff::FirstHead::HandOver => {
                    Some((ctx, stream, sniff::Classified::Http1 { first }))
                }
                sniff::FirstHead::TimedOut => {
                    http::head_timed_out(&stream, &ctx);
                    None
                }
            }
        }
        Ok((stream, classified)) => Some((ctx, stream, classified)),
        Err(err) => {
            debug!(peer = %ctx.peer, %err, "connection ended before its protocol was known");
            None
        }
    }
}

/// A classified connection, on its proxy worker, until it closes.
async fn serve_connection(
    stream: TcpStream,
    classified: sniff::Classified,
    ctx: Arc<request::ConnContext>,
    shutdown: watch::Receiver<bool>,
) {
    match classified {
        sniff::Classified::Http1 { first } => {
            http::serve_http1(Arc::new(stream), first, ctx, shutdown).await
        }
        sniff::Classified::Http2 { first } => {
            http::serve_http2(Arc::new(stream), first, ctx, shutdown).await
        }
        sniff::Classified::Tcp { first, late } => tcp::serve(stream, first, late, &ctx).await,
    }
}

/// Close with a RST rather than a FIN: the client learns at once that
/// nothing will be served, as with a refused connection.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
