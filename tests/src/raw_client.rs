//! A client that writes exactly the bytes a test gives it (pipelined
//! requests, malformed framing, a head sent byte by byte) and reads the
//! responses one at a time, for the smuggling and slow-client tests.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::http::{read_body, read_head, Response, CONNECT_TIMEOUT};

/// One raw connection from a client namespace.
pub struct RawConn {
    reader: BufReader<TcpStream>,
}

impl RawConn {
    pub fn connect(netns: &Path, addr: SocketAddr) -> Result<RawConn> {
        let stream = crate::netns::run_in(netns, move || {
            TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        })?
        .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(RawConn {
            reader: BufReader::new(stream),
        })
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Write `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Read one response; `head` for the answer to a HEAD request (no body).
    pub fn response(&mut self, head: bool) -> Result<Response> {
        let (line, headers) = read_head(&mut self.reader).context("reading a response head")?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not a status line: {line:?}"))?;
        let body = if head || status == 204 || status == 304 || status < 200 {
            Vec::new()
        } else {
            read_body(&mut self.reader, &headers, true).context("reading a response body")?
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Whatever arrives within `wait` (until the peer closes, or `wait`
    /// passes), and whether the connection ended (EOF or reset).
    pub fn drain(&mut self, wait: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = self
                .reader
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.reader.read(&mut buf) {
                Ok(0) => return (got, true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(_) => return (got, true),
            }
        }
        (got, false)
    }
}
