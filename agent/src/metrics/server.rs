//! The admin endpoint: `/healthz`, `/readyz`, `/metrics` and `/debug/…` on
//! `--metrics-addr` and on the `--health-socket`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Metrics;

/// Answers `/debug/…`: given the path and the query, `Some((status, JSON
/// body))`, or `None` for a path it does not know.
pub type DebugHandler = Arc<dyn Fn(&str, &str) -> Option<(u16, String)> + Send + Sync>;

/// What an OpenMetrics scrape gets as `Content-Type`.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bind the endpoint now (so a bad address fails start-up) and serve it
/// until `shutdown` turns true.
/// The metrics listener, with SO_REUSEPORT: during a surge upgrade the new
/// agent (hostNetwork, same port) serves next to the old one. Kubelet probes
/// must not be answered by the other agent, so they use the per-pod
/// `--health-socket` (`serve_unix`) instead.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        TcpListener::from_std(socket.into())
    };
    bind().map_err(|err| anyhow::anyhow!("cannot listen on --metrics-addr {addr}: {err}"))
}

/// `/healthz`, `/readyz` and `/metrics` on a unix socket that only this
/// agent's pod sees (an emptyDir): what the DaemonSet's exec probes ask
/// (`jwtgate probe`), never another agent on the node.
pub async fn serve_unix(
    path: std::path::PathBuf,
    registry: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(err) => {
            warn!(path = %path.display(), %err, "cannot serve the health socket");
            return;
        }
    };
    info!(path = %path.display(), "serving /healthz, /readyz, /metrics on the health socket");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(%err, "health socket accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        spawn_connection(stream, registry.clone());
    }
    let _ = std::fs::remove_file(&path);
}

/// `jwtgate probe`: GET `path` on the health socket; true on 200.
pub fn probe_unix(socket: &std::path::Path, path: &str) -> anyhow::Result<bool> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.starts_with("HTTP/1.1 200"))
}

pub async fn serve(
    listener: TcpListener,
    registry: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /healthz, /readyz, /metrics");
    }
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    warn!(%err, "metrics accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        spawn_connection(stream, registry.clone());
    }
}

/// Serve one connection (TCP or the health socket) with `answer`.
fn spawn_connection<S>(stream: S, registry: Arc<Metrics>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let registry = registry.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(&req, &registry)) }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

fn answer(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" | "/livez" => (StatusCode::OK, text, "ok\n".to_string()),
        "/readyz" if metrics.is_ready() => (StatusCode::OK, text, "ready\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "not ready\n".to_string(),
        ),
        "/metrics" if wants_openmetrics(req) => {
            (StatusCode::OK, OPENMETRICS, metrics.openmetrics())
        }
        "/metrics" => (
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            metrics.prometheus_text(),
        ),
        path if path.starts_with("/debug/") => {
            match metrics
                .debug_handler()
                .and_then(|h| h(path, req.uri().query().unwrap_or("")))
            {
                Some((status, body)) => (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    "application/json",
                    body,
                ),
                None => (StatusCode::NOT_FOUND, text, "not found\n".to_string()),
            }
        }
        _ => (StatusCode::NOT_FOUND, text, "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// Whether the scraper accepts OpenMetrics (Prometheus lists it first in
/// its `Accept`); everyone else gets the classic text format.
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}
