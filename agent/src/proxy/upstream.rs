//! The hop from the verifier to the application, inside the workload's
//! network namespace, from source 127.0.0.6 (IPv4) or ::6 (IPv6, put on the
//! pod's loopback at enrolment): the `steer` program passes those sources,
//! over loopback only, to the application's own listener instead of steering
//! them back to us (Istio's inbound passthrough addresses).

use std::net::SocketAddr;

use anyhow::Context;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpSocket, TcpStream};
use tracing::debug;

use super::request::ConnContext;
use crate::netns::{PASSTHROUGH_V4, PASSTHROUGH_V6};

/// An open connection to the application, in the protocol the client
/// speaks (Istio's inbound "use the downstream protocol" for sniffed ports):
/// HTTP/1.1, or HTTP/2 with prior knowledge (h2c, gRPC).
pub enum Upstream {
    H1(http1::SendRequest<Incoming>),
    H2(http2::SendRequest<Incoming>),
}

/// Send one request upstream, reusing the connection's upstream while it is
/// open. A reused connection that turns out closed is replaced once.
pub async fn send(ctx: &ConnContext, req: Request<Incoming>) -> anyhow::Result<Response<Incoming>> {
    let h2 = req.version() == Version::HTTP_2;
    let mut slot = ctx.upstream.lock().await;
    let reusable = match slot.as_mut() {
        Some(Upstream::H1(sender)) if !h2 => sender.ready().await.is_ok(),
        Some(Upstream::H2(sender)) if h2 => sender.ready().await.is_ok(),
        _ => false,
    };
    if !reusable {
        // Boxed: connecting happens once per connection, and its future (a
        // socket connect and a handshake) would otherwise be carried, and
        // copied, inside every request's future (docs/performance.md).
        *slot = Some(Box::pin(connect_http(ctx, h2)).await?);
    }
    match slot.as_mut().expect("connected above") {
        // HTTP/1: one request at a time on the connection anyway.
        Upstream::H1(sender) => {
            let resp = sender
                .send_request(req)
                .await
                .context("the application closed the connection")?;
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                // The upstream connection becomes a pipe (`request::relay`):
                // nothing else may be sent on it.
                slot.take();
            }
            Ok(resp)
        }
        // HTTP/2: streams run side by side; the lock only guards the slot.
        Upstream::H2(sender) => {
            let mut sender = sender.clone();
            drop(slot);
            sender
                .send_request(req)
                .await
                .context("the application reset the stream")
        }
    }
}

async fn connect_http(ctx: &ConnContext, h2: bool) -> anyhow::Result<Upstream> {
    let stream = TokioIo::new(connect(ctx).await?);
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), stream).await?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                debug!(%err, "upstream h2 connection ended");
            }
        });
        return Ok(Upstream::H2(sender));
    }
    // Upgrades (WebSocket): after a 101 the connection is handed back to
    // the proxy as a byte pipe.
    let (sender, conn) = http1::handshake(stream).await?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            debug!(%err, "upstream connection ended");
        }
    });
    Ok(Upstream::H1(sender))
}

/// A TCP connection to the original destination, from the passthrough
/// source of its family, made inside the workload's namespace.
pub async fn connect(ctx: &ConnContext) -> anyhow::Result<TcpStream> {
    let dst = ctx.original_dst;
    // Only socket() must run inside the namespace; bind and connect follow
    // the socket wherever they are called.
    let socket = ctx
        .workload
        .netns
        .run(|| match dst {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        })
        .context("cannot enter the workload's network namespace")??;
    let source = match dst {
        SocketAddr::V4(_) => SocketAddr::from((PASSTHROUGH_V4, 0)),
        SocketAddr::V6(_) => SocketAddr::from((PASSTHROUGH_V6, 0)),
    };
    socket
        .bind(source)
        .with_context(|| format!("cannot bind the passthrough source {}", source.ip()))?;
    socket.set_nodelay(true)?;
    socket
        .connect(dst)
        .await
        .with_context(|| format!("cannot connect to the application at {dst}"))
}
