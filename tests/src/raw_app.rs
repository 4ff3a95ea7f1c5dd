//! A deliberately simple HTTP/1.1 application for the smuggling tests: it
//! records every request head it parses and every byte that arrives after
//! it switched protocols, so a test can tell whether anything reached the
//! application without passing the verifier.
//!
//! Like most servers (RFC 9112 §2.2) it skips empty lines before a request
//! line. Depending on its [`Switch`] it answers an upgrade request (or any
//! request) with `101 Switching Protocols` and from then on only records
//! what it receives, as an application speaking another protocol on the
//! connection would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::{find_header, read_body, read_head};

/// When the application answers 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Never,
    /// To a request with `Connection: upgrade` and an `Upgrade` header,
    /// whatever the protocol (as an app that speaks h2c, or anything else).
    OnUpgrade,
    /// To every request, asked or not (a broken or hostile application).
    Always,
}

/// A request head as the application parsed it.
#[derive(Debug, Clone)]
pub struct Head {
    pub line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

#[derive(Default)]
struct Seen {
    heads: Vec<Head>,
    after_switch: Vec<u8>,
}

/// The running application; stopped on drop.
pub struct RawApp {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl RawApp {
    /// Listens on `[::]:port` inside the namespace at `netns`.
    pub fn start(netns: &Path, port: u16, switch: Switch) -> Result<RawApp> {
        let listener = crate::netns::run_in(netns, move || TcpListener::bind(("::", port)))?
            .with_context(|| format!("binding the raw app to port {port}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, record) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let record = record.clone();
                        std::thread::spawn(move || serve(stream, switch, &record));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(RawApp {
            stop,
            seen,
            thread: Some(thread),
        })
    }

    /// Every request head parsed so far.
    pub fn heads(&self) -> Vec<Head> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .heads
            .clone()
    }

    /// Every byte received after a 101, on any connection.
    pub fn after_switch(&self) -> Vec<u8> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .after_switch
            .clone()
    }
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, switch: Switch, seen: &Mutex<Seen>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(write) = stream.try_clone() else {
        return;
    };
    let mut out = write;
    let mut reader = BufReader::new(stream);
    loop {
        // Empty lines before a request line are skipped (RFC 9112 §2.2).
        loop {
            match reader.fill_buf() {
                Ok([b'\r' | b'\n', ..]) => reader.consume(1),
                Ok([]) | Err(_) => return,
                Ok(_) => break,
            }
        }
        let Ok((line, headers)) = read_head(&mut reader) else {
            return;
        };
        let body = read_body(&mut reader, &headers, false).unwrap_or_default();
        let asks = find_header(&headers, "connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade"))
            && find_header(&headers, "upgrade").is_some();
        let upgrade = find_header(&headers, "upgrade")
            .unwrap_or("tunnel")
            .to_string();
        let switching = match switch {
            Switch::Never => false,
            Switch::OnUpgrade => asks,
            Switch::Always => true,
        };
        let head = Head {
            line,
            headers,
            body,
        };
        let reply = format!("{{\"line\":{:?}}}", head.line);
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .heads
            .push(head);
        if switching {
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {upgrade}\r\n\r\n"
            );
            if out.write_all(answer.as_bytes()).is_err() {
                return;
            }
            // From here on the connection is the other protocol's: keep
            // what arrives, answer a marker so the client can tell.
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    return;
                }
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .after_switch
                    .extend_from_slice(&buf[..n]);
                if out.write_all(b"TUNNELLED").is_err() {
                    return;
                }
            }
            return;
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-raw-app: 1\r\n\r\n{reply}",
            reply.len()
        );
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
