//! The application inside a pod: an HTTP/1.1 keep-alive echo server.
//!
//! Every response carries `x-echo-peer` (the TCP peer it saw) so a test can tell a
//! request forwarded by the verifier (peer 127.0.0.6) from one that reached the app
//! directly (peer = client IP). `/headers` answers like httpbin: the request headers
//! as JSON, so tests can see what the verifier removed or added.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::http::{find_header, read_body, read_head, IO_TIMEOUT};

/// How often idle threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// One request as the app received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A running echo app; stopped (threads joined) on drop.
pub struct EchoApp {
    name: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoApp {
    /// Binds `[::]:<port>` (both families) for every port inside the namespace at
    /// `netns`; ready (listening) when this returns.
    pub fn start(netns: &Path, name: &str, ports: &[u16]) -> Result<Self> {
        let ports = ports.to_vec();
        // Listeners are created inside the pod netns; the accept threads can then run
        // anywhere because a socket stays in the namespace it was created in.
        let listeners = crate::netns::run_in(netns, move || bind_all(&ports))??;
        Self::serve(listeners, name)
    }

    /// Like [`EchoApp::start`], in the caller's own network namespace: the app
    /// of a real pod (`jwtgate-testpod`), which has no right to `setns`.
    pub fn start_here(name: &str, ports: &[u16]) -> Result<Self> {
        Self::serve(bind_all(ports)?, name)
    }

    fn serve(listeners: Vec<TcpListener>, name: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let threads = listeners
            .into_iter()
            .map(|l| {
                let (stop, seen, name) = (stop.clone(), seen.clone(), name.to_string());
                std::thread::Builder::new()
                    .name(format!("echo-{name}"))
                    .spawn(move || accept_loop(l, &name, &stop, &seen))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(EchoApp {
            name: name.to_string(),
            stop,
            seen,
            threads,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests received so far, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops accepting, closes every connection and joins all threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                eprintln!("jwtgate-e2e: echo app {} thread panicked", self.name);
            }
        }
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind_all(ports: &[u16]) -> Result<Vec<TcpListener>> {
    ports
        .iter()
        .map(|p| {
            // Both families where the namespace has IPv6, else IPv4 alone.
            let l = TcpListener::bind(("::", *p))
                .or_else(|_| TcpListener::bind(("0.0.0.0", *p)))
                .with_context(|| format!("binding the echo app to port {p}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect()
}

fn accept_loop(l: TcpListener, name: &str, stop: &AtomicBool, seen: &Mutex<Vec<SeenRequest>>) {
    std::thread::scope(|s| {
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((stream, peer)) => {
                    s.spawn(move || {
                        if let Err(e) = serve(stream, peer, name, stop, seen) {
                            // Resets are expected (tests close early); keep other errors visible.
                            if !matches!(
                                e.kind(),
                                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                            ) {
                                eprintln!(
                                    "jwtgate-e2e: echo app {name}: connection from {peer}: {e}"
                                );
                            }
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(e) => {
                    eprintln!("jwtgate-e2e: echo app {name}: accept: {e}");
                    std::thread::sleep(POLL);
                }
            }
        }
    });
}

fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    name: &str,
    stop: &AtomicBool,
    seen: &Mutex<Vec<SeenRequest>>,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    // IPv4 clients of the dual-stack socket, in their IPv4 spelling.
    let local = canonical_addr(stream.local_addr()?);
    let peer = canonical_addr(peer);
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        // Wait for the next request in short slices so stop() is honoured on idle
        // keep-alive connections; fill_buf consumes nothing on timeout.
        reader.get_ref().set_read_timeout(Some(POLL))?;
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            match reader.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(_) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        reader.get_ref().set_read_timeout(Some(IO_TIMEOUT))?;
        let (start, headers) = read_head(&mut reader)?;
        let mut parts = start.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("HTTP/1.0").to_string();
        let body = read_body(&mut reader, &headers, false)?;
        let close = version == "HTTP/1.0"
            || find_header(&headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let req = SeenRequest {
            local,
            peer,
            method,
            path,
            headers,
        };
        let resp_body = respond(&req, name, body.len()).to_string();
        seen.lock().unwrap_or_else(|e| e.into_inner()).push(req);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-echo-app: {name}\r\nx-echo-peer: {peer}\r\nconnection: {}\r\n\r\n",
            resp_body.len(),
            if close { "close" } else { "keep-alive" },
        );
        out.write_all(head.as_bytes())?;
        out.write_all(resp_body.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn respond(req: &SeenRequest, name: &str, body_len: usize) -> serde_json::Value {
    let path = req.path.split('?').next().unwrap_or("");
    match path {
        // httpbin's /headers: header names in canonical case, as httpbin shows them.
        "/headers" => {
            let headers: BTreeMap<String, String> = req
                .headers
                .iter()
                .map(|(k, v)| (canonical(k), v.clone()))
                .collect();
            json!({ "headers": headers })
        }
        _ => json!({
            "app": name,
            "method": req.method,
            "path": req.path,
            "peer": req.peer.to_string(),
            "local": req.local.to_string(),
            "body_len": body_len,
        }),
    }
}

/// `x-forwarded-for` → `X-Forwarded-For`.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_header_names() {
        assert_eq!(super::canonical("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(super::canonical("AUTHORIZATION"), "Authorization");
    }
}
