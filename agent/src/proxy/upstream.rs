//! The hop from the verifier to the application, inside the workload's
//! network namespace, from source 127.0.0.6 (IPv4) or ::6 (IPv6, put on the
//! pod's loopback at enrolment): the `steer` program passes those sources,
//! over loopback only, to the application's own listener instead of steering
//! them back to us (Istio's inbound passthrough addresses).

use std::net::SocketAddr;

use anyhow::Context;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tracing::debug;

use super::request::ConnContext;
use crate::netns::{PASSTHROUGH_V4, PASSTHROUGH_V6};

/// An open HTTP/1.1 connection to the application.
pub struct Upstream {
    sender: SendRequest<Incoming>,
}

/// Send one request upstream, reusing the connection's upstream while it is
/// open. A reused connection that turns out closed is replaced once.
pub async fn send(ctx: &ConnContext, req: Request<Incoming>) -> anyhow::Result<Response<Incoming>> {
    let mut slot = ctx.upstream.lock().await;
    let reusable = match slot.as_mut() {
        Some(up) => up.sender.ready().await.is_ok(),
        None => false,
    };
    if !reusable {
        *slot = Some(connect_http(ctx).await?);
    }
    let up = slot.as_mut().expect("connected above");
    up.sender
        .send_request(req)
        .await
        .context("the application closed the connection")
}

async fn connect_http(ctx: &ConnContext) -> anyhow::Result<Upstream> {
    let stream = connect(ctx).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            debug!(%err, "upstream connection ended");
        }
    });
    Ok(Upstream { sender })
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
