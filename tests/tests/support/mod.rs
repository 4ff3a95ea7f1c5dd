//! Helpers the protocol and slow-client tests share: async clients and
//! servers placed in the test bed's namespaces. They live here rather than
//! in the `jwtgate_e2e` library because their crates (tonic,
//! tokio-tungstenite) are dev-dependencies: xtask builds the library too and
//! need not compile a gRPC stack.

#![allow(dead_code)] // each test binary uses a different part

pub mod grpc;
pub mod h2_app;
pub mod ws;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// Every async step of a test is bounded by this, so a hang fails the test
/// instead of stalling the run.
pub const STEP: Duration = Duration::from_secs(10);

/// A multi-threaded runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A tokio listener on `[::]:port` created inside the namespace at `netns`
/// (a socket keeps its namespace wherever it is used). Call inside the
/// runtime.
pub fn listen_in(netns: &Path, port: u16) -> Result<tokio::net::TcpListener> {
    let std = jwtgate_e2e::netns::run_in(netns, move || std::net::TcpListener::bind(("::", port)))?
        .with_context(|| format!("binding port {port} in {}", netns.display()))?;
    std.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(std)?)
}

/// A tokio connection to `addr` made from inside the namespace at `netns`.
pub async fn connect_in(netns: &Path, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let netns = netns.to_path_buf();
    let std = tokio::task::spawn_blocking(move || {
        jwtgate_e2e::netns::run_in(&netns, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })
        .map_err(std::io::Error::other)?
    })
    .await
    .map_err(std::io::Error::other)??;
    std.set_nonblocking(true)?;
    std.set_nodelay(true)?;
    tokio::net::TcpStream::from_std(std)
}

/// Bound a future by [`STEP`].
pub async fn step<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .with_context(|| format!("{what}: no answer within {STEP:?}"))
}

/// The value of one sample of a Prometheus metric (its line without the
/// value must contain every part of `name_and_labels`).
pub fn metric(metrics: &str, name_and_labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            name_and_labels.iter().all(|p| series.contains(p))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
