//! HTTP/1.1 connections: hyper parses each request of a keep-alive
//! connection and hands it to `request::handle`.

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use super::request::{self, ConnContext};
use super::sniff::Prefixed;

/// Serve the connection until the client closes it, or until `shutdown`
/// turns true: then the request in progress finishes and the connection
/// closes.
pub async fn serve(
    io: Prefixed<TcpStream>,
    ctx: Arc<ConnContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let ctx = service_ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(request::handle(req, &ctx).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(err) = result {
        debug!(peer = %ctx.peer, %err, "connection ended with an error");
    }
}
