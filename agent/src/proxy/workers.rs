//! The threads that serve proxied connections: one single-threaded tokio
//! runtime per thread, each connection pinned to one of them for its life
//! (Envoy's worker model).
//!
//! Why not the agent's multi-thread runtime: one proxied request wakes
//! several tasks in turn (hyper's server connection, the upstream
//! connection's task, the response body's channel). On a work-stealing
//! runtime every such wake-up may also unpark an idle worker to steal it,
//! which costs futex calls and context switches per request, and a request
//! whose tasks run on two threads pays cache misses besides. `perf` on the
//! agent under `cargo xtask loadtest` showed that plumbing, not the JWT
//! work, made up most of the gap to the bare hop (docs/performance.md).
//! Here every task a connection spawns (hyper's HTTP/2 streams, the
//! upstream connection, an upgraded pipe) lands on its connection's thread:
//! no wake-up crosses threads.
//!
//! The listeners stay on the agent's runtime; an accepted connection moves
//! to the next worker in turn (two `epoll_ctl` per connection, not per
//! request). Connections are long-lived (keep-alive) and each is cheap
//! next to a request, so round-robin spreads the load well enough.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tracing::debug;

/// The proxy's worker threads.
#[derive(Debug)]
pub struct Workers {
    /// Empty: connections run on the caller's runtime (`--proxy-threads 0`).
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// Start `threads` worker threads, each driving its own current-thread
    /// runtime for the life of the process.
    pub fn start(threads: usize) -> anyhow::Result<Arc<Workers>> {
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            // The runtime is built on its own thread and never leaves it: a
            // runtime dropped inside the agent's async context would panic.
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("jwtgate-proxy-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = tx.send(Ok(runtime.handle().clone()));
                            // Runs the tasks spawned through its handle
                            // until the process exits.
                            runtime.block_on(std::future::pending::<()>())
                        }
                        Err(err) => {
                            let _ = tx.send(Err(err));
                        }
                    }
                })
                .context("cannot start a proxy worker thread")?;
            let handle = rx
                .recv()
                .context("a proxy worker thread ended at once")?
                .context("cannot start a proxy worker runtime")?;
            handles.push(handle);
        }
        Ok(Arc::new(Workers {
            handles,
            next: AtomicUsize::new(0),
        }))
    }

    /// The default thread count: half the CPUs this process may use (its
    /// cgroup quota and affinity included), at least one. The agent shares
    /// the node with the pods it protects, and a busier thread is a cheaper
    /// one: each thread that runs out of work sleeps in `epoll_wait` and is
    /// woken again per request. Measured with `cargo xtask loadtest` on a
    /// 2-CPU node running the client and the app too: one thread cost 1.12×
    /// the bare hop's CPU per request at 8 connections, two threads 1.33×,
    /// with 3-4× the context switches (docs/performance.md).
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }

    pub fn threads(&self) -> usize {
        self.handles.len()
    }

    /// Serve `stream` with `serve` on the next worker (or here when there
    /// are none).
    pub fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            tokio::spawn(serve(stream));
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        // A tokio socket belongs to the reactor it was registered with:
        // leave this one, join the worker's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                debug!(%err, "cannot move an accepted connection to a worker");
                return;
            }
        };
        self.handles[i].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(err) => debug!(%err, "a worker cannot register a connection"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_served_on_the_workers_in_turn() {
        let workers = Workers::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let _client = std::net::TcpStream::connect(addr).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            workers.spawn(stream, move |stream| async move {
                // The socket works on the worker's reactor.
                stream.writable().await.unwrap();
                let name = std::thread::current().name().map(str::to_string);
                tx.send(name).unwrap();
            });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(rx.recv().await.unwrap().unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "jwtgate-proxy-0",
                "jwtgate-proxy-0",
                "jwtgate-proxy-1",
                "jwtgate-proxy-1"
            ]
        );
    }
}
