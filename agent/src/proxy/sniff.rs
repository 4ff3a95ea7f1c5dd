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

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::request::ConnContext;
use crate::inbound::protocol::{sniff, Sniffed, SNIFF_MAX};
use crate::inbound::Declared;

/// What a connection speaks, with the bytes read to find out. Kept apart
/// from the socket, which moves to a proxy worker (`Workers::spawn`
/// registers it there anew).
pub enum Classified {
    Http1 {
        first: Vec<u8>,
    },
    Http2 {
        first: Vec<u8>,
    },
    /// Opaque bytes. `late`: classified because the client sent nothing
    /// before the timeout; its first bytes must still not be HTTP.
    Tcp {
        first: Vec<u8>,
        late: bool,
    },
}

/// Read the client's first bytes and decide.
pub async fn classify(
    mut stream: TcpStream,
    ctx: &ConnContext,
) -> io::Result<(TcpStream, Classified)> {
    let declared = ctx.inbound.protocols.get(&ctx.original_dst.port()).copied();
    if declared == Some(Declared::Tcp) {
        return Ok((
            stream,
            Classified::Tcp {
                first: Vec::new(),
                late: false,
            },
        ));
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
            Sniffed::Http1 => return Ok((stream, Classified::Http1 { first: buf })),
            Sniffed::Http2 => return Ok((stream, Classified::Http2 { first: buf })),
            // On a port declared HTTP, the HTTP server answers what is not.
            Sniffed::Tcp if declared == Some(Declared::Http) => {
                return Ok((stream, Classified::Http1 { first: buf }))
            }
            Sniffed::Tcp => {
                return Ok((
                    stream,
                    Classified::Tcp {
                        first: buf,
                        late: false,
                    },
                ))
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
                return Ok((
                    stream,
                    Classified::Tcp {
                        first: buf,
                        late: true,
                    },
                ))
            }
            Err(_) if buf.is_empty() => {
                ctx.workload
                    .stats
                    .event(crate::metrics::InboundEvent::IdleTimeout);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes before the idle timeout",
                ));
            }
            // Part of a request line, its time up: the HTTP server's
            // watchdog answers 408 at once (the head started at
            // `first_byte`).
            Err(_) => return Ok((stream, Classified::Http1 { first: buf })),
        };
        match read? {
            0 if buf.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before sending anything",
                ))
            }
            // Half-closed in the middle of something that looked like HTTP.
            0 => return Ok((stream, Classified::Http1 { first: buf })),
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

/// How reading a connection's first HTTP/1 request head ended.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstHead {
    /// Complete, malformed, too large or cut by the client: the HTTP server
    /// takes it from here (it answers what is not a request).
    HandOver,
    /// Not complete `--header-read-timeout-secs` after its first byte.
    TimedOut,
}

/// Read until the first request head is complete (or can be handed over),
/// appending to `buf`, the bytes sniffing already read.
///
/// Why here, before a proxy worker: the workers serve every established
/// connection of the node, and a worker runs its connections' tasks in
/// turn. A thousand connections that trickle a head and are then cut with
/// 408 at the same moment, and reconnected at once by the attacker, queued
/// in front of the legitimate requests of that worker: with one worker
/// their p99 tripled during the wave (`cargo xtask loadtest --phases
/// attacks`, docs/performance.md). Read here, on the accepting runtime, a
/// connection that never completes a head never reaches a worker.
///
/// httparse (hyper's own parser) says whether the head is complete; it is
/// run when an empty line arrives and whenever the buffer has doubled, so
/// a head trickled byte by byte costs linear work, and a malformed one is
/// handed over (and refused by the HTTP server) no later than that.
///
/// On shutdown the head is handed over as it is: the worker's connection
/// drains it as every other (`http::drive`), within `--drain-grace-ms`.
pub async fn first_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    ctx: &ConnContext,
    shutdown: &mut watch::Receiver<bool>,
) -> FirstHead {
    let Some(started) = ctx.activity.head_started() else {
        return FirstHead::HandOver;
    };
    let deadline = started + ctx.shared.timeouts.header_read;
    let mut next_parse: usize = 0;
    let mut scanned: usize = 0;
    let mut chunk = [0u8; 4096];
    loop {
        // An empty line ends a head: "\n\n" or "\n\r\n" (httparse takes bare
        // LF line ends too).
        let fresh = &buf[scanned.saturating_sub(2)..];
        let blank =
            fresh.windows(2).any(|w| w == b"\n\n") || fresh.windows(3).any(|w| w == b"\n\r\n");
        scanned = buf.len();
        if blank || buf.len() >= next_parse {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            match httparse::Request::new(&mut headers).parse(buf) {
                Ok(httparse::Status::Partial) => next_parse = (buf.len() * 2).max(1024),
                // Complete, or malformed (too many headers included).
                _ => return FirstHead::HandOver,
            }
        }
        if buf.len() >= FIRST_HEAD_MAX {
            return FirstHead::HandOver;
        }
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)) => read,
            _ = shutdown.wait_for(|stop| *stop) => return FirstHead::HandOver,
        };
        match read {
            Err(_) => return FirstHead::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => return FirstHead::HandOver,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Past this the HTTP server answers 431 itself (its buffer bound).
const FIRST_HEAD_MAX: usize = 68 * 1024;
