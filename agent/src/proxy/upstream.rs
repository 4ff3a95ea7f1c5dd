//! The hop from the verifier to the application, inside the workload's
//! network namespace, from source 127.0.0.6: the `steer` program passes that
//! source through to the application's own listener instead of steering it
//! back to us (Istio's inbound passthrough address).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::Context;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tracing::debug;

use super::request::ConnContext;

/// Source address of forwarded connections.
pub const PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

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
        *slot = Some(connect(ctx).await?);
    }
    let up = slot.as_mut().expect("connected above");
    up.sender
        .send_request(req)
        .await
        .context("the application closed the connection")
}

async fn connect(ctx: &ConnContext) -> anyhow::Result<Upstream> {
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
    if dst.is_ipv4() {
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(PASSTHROUGH_SOURCE, 0)))
            .context("cannot bind 127.0.0.6")?;
    }
    socket.set_nodelay(true)?;
    let stream = socket
        .connect(dst)
        .await
        .with_context(|| format!("cannot connect to the application at {dst}"))?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            debug!(%err, "upstream connection ended");
        }
    });
    Ok(Upstream { sender })
}
