//! `/healthz`, `/readyz` and `/metrics` (Prometheus text format) on
//! `--metrics-addr`. It reports and never decides.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::proxy::WorkloadStats;

mod bans;
mod connections;
mod jwks;
mod token_cache;
pub use bans::set_ban_tracker;
pub use connections::set_connection_limits;
pub use jwks::{record_jwks_fetch, retain_jwks_uris, set_jwks_store};
pub use token_cache::set_token_cache;

/// Kernel counters, summed over CPUs: `(name, value)`.
pub type CounterSource = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// What the endpoint reports.
pub struct Registry {
    ready: AtomicBool,
    workloads: Mutex<Vec<(String, Arc<WorkloadStats>)>>,
    kernel: Mutex<Option<CounterSource>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            ready: AtomicBool::new(false),
            workloads: Mutex::new(Vec::new()),
            kernel: Mutex::new(None),
        }
    }
}

impl Registry {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn add_workload(&self, key: &str, stats: Arc<WorkloadStats>) {
        if let Ok(mut wls) = self.workloads.lock() {
            wls.push((key.to_string(), stats));
        }
    }

    /// Forget an unenrolled workload (its counters stop being reported).
    pub fn remove_workload(&self, key: &str) {
        if let Ok(mut wls) = self.workloads.lock() {
            wls.retain(|(k, _)| k != key);
        }
    }

    pub fn set_kernel_counters(&self, source: CounterSource) {
        if let Ok(mut kernel) = self.kernel.lock() {
            *kernel = Some(source);
        }
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP jwtgate_requests_total Requests decided by the verifier.\n");
        out.push_str("# TYPE jwtgate_requests_total counter\n");
        let wls = self.workloads.lock().map(|w| w.clone()).unwrap_or_default();
        for (key, stats) in &wls {
            for (decision, value) in [
                ("allowed", &stats.allowed),
                ("denied_authn", &stats.denied_authn),
                ("denied_authz", &stats.denied_authz),
                ("upstream_error", &stats.upstream_errors),
            ] {
                let _ = writeln!(
                    out,
                    "jwtgate_requests_total{{workload=\"{key}\",decision=\"{decision}\"}} {}",
                    value.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP jwtgate_inbound_events_total What happened to connections before or instead of an HTTP decision.\n");
        out.push_str("# TYPE jwtgate_inbound_events_total counter\n");
        for (key, stats) in &wls {
            for (event, value) in [
                ("probe_passed", &stats.probes_passed),
                ("refused_direct", &stats.refused_direct),
                ("tcp_allowed", &stats.tcp_allowed),
                ("tcp_denied", &stats.tcp_denied),
                ("late_http_closed", &stats.late_http_closed),
                ("refused_shape", &stats.refused_shape),
                ("header_timeout", &stats.header_timeouts),
                ("idle_timeout", &stats.idle_timeouts),
            ] {
                let _ = writeln!(
                    out,
                    "jwtgate_inbound_events_total{{workload=\"{key}\",event=\"{event}\"}} {}",
                    value.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP jwtgate_connections_total Connections accepted by the verifier.\n");
        out.push_str("# TYPE jwtgate_connections_total counter\n");
        for (key, stats) in &wls {
            let _ = writeln!(
                out,
                "jwtgate_connections_total{{workload=\"{key}\"}} {}",
                stats.connections.load(Ordering::Relaxed)
            );
        }
        if let Ok(kernel) = self.kernel.lock() {
            if let Some(source) = kernel.as_ref() {
                out.push_str(
                    "# HELP jwtgate_ebpf_events_total Events counted by the eBPF programs.\n",
                );
                out.push_str("# TYPE jwtgate_ebpf_events_total counter\n");
                for (name, value) in source() {
                    let _ = writeln!(out, "jwtgate_ebpf_events_total{{event=\"{name}\"}} {value}");
                }
            }
        }
        connections::render(&mut out);
        jwks::render(&mut out);
        token_cache::render(&mut out);
        bans::render(&mut out);
        gauges(
            &mut out,
            &[(
                "open_files_limit",
                "The process's RLIMIT_NOFILE soft limit (raised to the hard limit at start).",
                open_files_limit(),
            )],
        );
        let _ = writeln!(out, "jwtgate_ready {}", u8::from(self.is_ready()));
        out
    }
}

/// `# HELP`, `# TYPE gauge` and the value of each `(name, help, value)`,
/// names prefixed with `jwtgate_`.
pub(crate) fn gauges(out: &mut String, gauges: &[(&str, &str, u64)]) {
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP jwtgate_{name} {help}");
        let _ = writeln!(out, "# TYPE jwtgate_{name} gauge");
        let _ = writeln!(out, "jwtgate_{name} {value}");
    }
}

fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(0)
}

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
    registry: Arc<Registry>,
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
        tokio::spawn(serve_connection(stream, registry.clone()));
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
    registry: Arc<Registry>,
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
        tokio::spawn(serve_connection(stream, registry.clone()));
    }
}

/// One connection to the endpoint, TCP or unix.
async fn serve_connection<S>(stream: S, registry: Arc<Registry>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let registry = registry.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(&req, &registry)) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/healthz" | "/livez" => (StatusCode::OK, "ok\n".to_string()),
        "/readyz" if registry.is_ready() => (StatusCode::OK, "ready\n".to_string()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string()),
        "/metrics" => (StatusCode::OK, registry.render()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_workload_and_kernel_counters() {
        let registry = Registry::default();
        let stats = Arc::new(WorkloadStats::default());
        stats.denied_authz.fetch_add(3, Ordering::Relaxed);
        registry.add_workload("foo/app", stats);
        registry.set_kernel_counters(Box::new(|| vec![("steered", 7)]));
        registry.set_ready(true);
        record_jwks_fetch("http://jwks/a", true);
        record_jwks_fetch("http://jwks/a", false);
        let text = registry.render();
        assert!(
            text.contains("jwtgate_jwks_fetches_total{uri=\"http://jwks/a\",result=\"failure\"} 1")
        );
        assert!(text
            .contains("jwtgate_requests_total{workload=\"foo/app\",decision=\"denied_authz\"} 3"));
        assert!(text.contains("jwtgate_ebpf_events_total{event=\"steered\"} 7"));
        assert!(text.contains("jwtgate_ready 1"));
        registry.remove_workload("foo/app");
        assert!(!registry.render().contains("foo/app"));
    }
}
