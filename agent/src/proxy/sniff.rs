//! Which protocol a steered connection speaks (`inbound::protocol` decides
//! from the bytes; this reads them). A port declared TCP is spliced at once;
//! a port declared HTTP is read until HTTP/1 and HTTP/2 can be told apart;
//! an undeclared port is read until the bytes say, or until the detection
//! timeout: then the connection is taken for TCP (a server-first protocol
//! such as MySQL or SMTP, or a client-first one whose first message is
//! short), and `tcp` goes on classifying its bytes as they pass, so waiting
//! out the timeout cannot smuggle an HTTP request past the HTTP policies.
//!
//! The bytes read are not lost: HTTP gets them back first (`ConnIo`), TCP
//! writes them to the application first.

use std::io;
use std::sync::atomic::Ordering;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::request::ConnContext;
use crate::inbound::protocol::{sniff, Sniffed, SNIFF_MAX};
use crate::inbound::Declared;

/// A classified connection.
pub enum Classified {
    Http1 {
        stream: TcpStream,
        first: Vec<u8>,
    },
    Http2 {
        stream: TcpStream,
        first: Vec<u8>,
    },
    /// Opaque bytes. `late`: classified because the client sent nothing
    /// before the timeout; its first bytes must still not be HTTP.
    Tcp {
        stream: TcpStream,
        first: Vec<u8>,
        late: bool,
    },
}

/// Read the client's first bytes and decide.
pub async fn classify(mut stream: TcpStream, ctx: &ConnContext) -> io::Result<Classified> {
    let declared = ctx.inbound.protocols.get(&ctx.original_dst.port()).copied();
    if declared == Some(Declared::Tcp) {
        return Ok(Classified::Tcp {
            stream,
            first: Vec::new(),
            late: false,
        });
    }
    let started = Instant::now();
    let timeouts = ctx.shared.timeouts;
    // Undeclared port with a detection timeout: TCP once it passes.
    let detect_until = match declared {
        Some(_) => None,
        None => ctx.shared.sniff_timeout.map(|t| started + t),
    };
    let mut first_byte: Option<Instant> = None;
    let mut buf = Vec::with_capacity(1024);
    loop {
        match sniff(&buf) {
            Sniffed::Http1 => return Ok(Classified::Http1 { stream, first: buf }),
            Sniffed::Http2 => return Ok(Classified::Http2 { stream, first: buf }),
            // On a port declared HTTP, the HTTP server answers what is not.
            Sniffed::Tcp if declared == Some(Declared::Http) => {
                return Ok(Classified::Http1 { stream, first: buf })
            }
            Sniffed::Tcp => {
                return Ok(Classified::Tcp {
                    stream,
                    first: buf,
                    late: false,
                })
            }
            Sniffed::NeedMore => {}
        }
        let room = SNIFF_MAX - buf.len();
        let mut chunk = vec![0u8; room.min(4096)];
        // Where no detection timeout decides, wait as an HTTP server
        // would (an HTTP client speaks first): for a first byte up to the
        // idle timeout, for the rest of a request line up to the
        // header-read timeout from its first byte. Without this a client
        // could hold the connection for ever by sending nothing, or a
        // few bytes of a request line.
        let http_until = match first_byte {
            None => started + timeouts.idle,
            Some(first) => first + timeouts.header_read,
        };
        let deadline = detect_until.map_or(http_until, |d| d.min(http_until));
        let read = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(read) => read,
            // Nothing yet (a server-first protocol), or bytes that are
            // still neither (a short client-first message): TCP, as Envoy
            // falls back on its listener-filter timeout, but watched until
            // its first bytes can be classified (`tcp`).
            Err(_) if detect_until.is_some_and(|d| d <= http_until) => {
                return Ok(Classified::Tcp {
                    stream,
                    first: buf,
                    late: true,
                })
            }
            Err(_) if buf.is_empty() => {
                ctx.workload
                    .stats
                    .idle_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes before the idle timeout",
                ));
            }
            // Part of a request line, its time up: the HTTP server's
            // watchdog answers 408 at once (the head started at
            // `first_byte`).
            Err(_) => return Ok(Classified::Http1 { stream, first: buf }),
        };
        match read? {
            0 if buf.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before sending anything",
                ))
            }
            // Half-closed in the middle of something that looked like HTTP.
            0 => return Ok(Classified::Http1 { stream, first: buf }),
            n => {
                buf.extend_from_slice(&chunk[..n]);
                if first_byte.is_none() {
                    first_byte = Some(Instant::now());
                    ctx.activity.head_bytes_read();
                }
            }
        }
    }
}
