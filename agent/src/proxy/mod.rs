//! The verifier proxy in front of each enrolled workload.
//!
//! Connections arrive on the workload's listener (created inside its network
//! namespace and handed connections by the `steer` sk_lookup program), so the
//! accepted socket's local address is the original destination. Every HTTP/1.1
//! request on a connection, not only the first, goes through `authz::evaluate`;
//! a denial is answered locally, an allowed request is forwarded to the
//! original destination from 127.0.0.6 (which `steer` lets through) and the
//! response streamed back. The proxy parses no token or policy itself.

mod bans;
mod request;
mod upstream;

pub use bans::{BanConfig, BanRequest, BanScope, BanStats, BanTracker, BAN_QUEUE};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use crate::authz::PathNormalization;
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
}

/// Per-workload request counters, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct WorkloadStats {
    pub allowed: AtomicU64,
    pub denied_authn: AtomicU64,
    pub denied_authz: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub connections: AtomicU64,
}

/// One enrolled workload as the proxy sees it.
pub struct Workload {
    /// `namespace/name`.
    pub key: String,
    pub netns: Arc<Netns>,
    /// The policies that currently apply; replaced when policies change, and
    /// read on every request so changes apply to open connections too.
    pub policy: watch::Receiver<Arc<WorkloadPolicy>>,
    pub stats: Arc<WorkloadStats>,
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
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        workload.stats.connections.fetch_add(1, Ordering::Relaxed);
                        let conn = Connection::new(stream, peer, &workload, &shared);
                        let shutdown = shutdown.clone();
                        let guard = drain.clone();
                        tokio::spawn(async move {
                            conn.run(shutdown).await;
                            drop(guard);
                        });
                    }
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
        info!("listener closed");
    }
    .instrument(span)
    .await
}

/// One downstream connection.
struct Connection {
    stream: TcpStream,
    ctx: Arc<request::ConnContext>,
}

impl Connection {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        workload: &Arc<Workload>,
        shared: &Arc<Shared>,
    ) -> Connection {
        // sk_lookup keeps the original destination as the local address.
        let original_dst = stream.local_addr().unwrap_or(peer);
        let _ = stream.set_nodelay(true);
        Connection {
            stream,
            ctx: Arc::new(request::ConnContext {
                peer,
                original_dst,
                workload: workload.clone(),
                shared: shared.clone(),
                upstream: tokio::sync::Mutex::new(None),
            }),
        }
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let ctx = self.ctx.clone();
        let service = hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, std::convert::Infallible>(request::handle(req, &ctx).await) }
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(self.stream), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = shutdown.changed() => {
                // Finish the request in progress, then close.
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        };
        if let Err(err) = result {
            debug!(peer = %self.ctx.peer, %err, "connection ended with an error");
        }
    }
}
