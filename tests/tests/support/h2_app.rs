//! An HTTP application that speaks HTTP/1.1 and h2c (prior knowledge) on
//! one port, as a hyper or Go service does: the agent forwards h2c in h2c
//! (Istio's "use the downstream protocol"), so an h2c client needs an
//! application that speaks it. Answers every request 200 with what it saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;

use super::listen_in;

/// A request as the application received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub peer: SocketAddr,
}

pub struct H2App {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl H2App {
    /// Listens on `[::]:port` inside `netns`. Call inside a runtime.
    pub fn start(netns: &Path, port: u16) -> Result<H2App> {
        let listener = listen_in(netns, port)?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let record = record.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = Seen {
                            method: req.method().to_string(),
                            path: req.uri().path().to_string(),
                            version: req.version(),
                            headers: req.headers().clone(),
                            peer,
                        };
                        let body = format!(
                            "{{\"method\":\"{}\",\"path\":\"{}\",\"version\":\"{:?}\"}}",
                            seen.method, seen.path, seen.version
                        );
                        record.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
                        async move {
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .header("x-h2-app", "1")
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("a response"),
                            )
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Ok(H2App { seen, task })
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for H2App {
    fn drop(&mut self) {
        self.task.abort();
    }
}
