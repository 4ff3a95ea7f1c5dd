//! Hostile clients for `cargo xtask loadtest` (issue 11): connections that
//! never finish their request head, and floods of forged tokens from many
//! source addresses. Each runs on its own thread inside a client network
//! namespace until dropped, and counts what happened to it, so the load test
//! can report what the agent did to the attack besides what the attack did
//! to legitimate traffic.

mod slow_headers;
mod token_flood;

pub use slow_headers::{SlowHeaders, SlowHeadersStats};
pub use token_flood::{FloodConfig, FloodStats, TokenFlood};

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::{Domain, Socket, Type};

/// A TCP connection from `source` (an address of the calling thread's
/// network namespace) to `target`.
fn connect_from(source: IpAddr, target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let domain = match target {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    let s = Socket::new(domain, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    s.connect_timeout(&target.into(), timeout)?;
    let stream: TcpStream = s.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A worker thread inside a network namespace, stopped and joined on drop.
struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    what: &'static str,
}

impl Worker {
    /// Runs `body(stop)` on a new thread that first joins the namespace at
    /// `netns`; `body` must return soon after `stop` turns true.
    fn spawn(
        what: &'static str,
        netns: &Path,
        body: impl FnOnce(&AtomicBool) -> Result<()> + Send + 'static,
    ) -> Result<Self> {
        let file = std::fs::File::open(netns)
            .with_context(|| format!("opening netns {}", netns.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(what.into())
            .spawn(move || {
                crate::netns::enter(&file)?;
                body(&flag)
            })
            .with_context(|| format!("starting the {what} thread"))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
            what,
        })
    }

    /// Stops the thread and returns how it ended.
    fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the {} thread panicked", self.what))?,
            None => Ok(()),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("jwtgate-e2e: {}: {e:#}", self.what);
        }
    }
}
