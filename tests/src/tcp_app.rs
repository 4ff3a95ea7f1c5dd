//! A raw TCP application for the non-HTTP tests: on every connection it
//! optionally sends a greeting first (a server-first protocol, like MySQL or
//! SMTP), then echoes what it receives until the client closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// A running TCP echo server; stopped on drop.
pub struct TcpEcho {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TcpEcho {
    /// Listens on `[::]:port` inside the namespace at `netns`.
    pub fn start(netns: &Path, port: u16, greeting: Option<&'static [u8]>) -> Result<TcpEcho> {
        let listener = crate::netns::run_in(netns, move || TcpListener::bind(("::", port)))?
            .with_context(|| format!("binding the TCP app to port {port}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        std::thread::spawn(move || echo(stream, greeting));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(TcpEcho {
            stop,
            accepted,
            thread: Some(thread),
        })
    }

    /// Connections the app accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn echo(mut stream: TcpStream, greeting: Option<&[u8]>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if let Some(g) = greeting {
        if stream.write_all(g).is_err() {
            return;
        }
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// A raw TCP client connection made from inside `netns`.
pub fn connect_raw(netns: &Path, addr: SocketAddr) -> Result<TcpStream> {
    let stream = crate::netns::run_in(netns, move || {
        TcpStream::connect_timeout(&addr, crate::http::CONNECT_TIMEOUT)
    })??;
    // Fails on a connection the peer already reset; reads then say so.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    Ok(stream)
}

/// Read until `want` bytes arrived, the peer closed, or the read timed out:
/// what was read, and whether the connection ended (EOF or reset).
pub fn read_some(stream: &mut TcpStream, want: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < want {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, false)
            }
            Err(_) => return (out, true),
        }
    }
    (out, false)
}
