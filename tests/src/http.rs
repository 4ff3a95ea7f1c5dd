//! A small blocking HTTP/1.1 client (and the message parsing the echo app shares).
//!
//! Hand-written on purpose: the tests must control exactly which requests go on
//! which connection (keep-alive), see raw connect outcomes (RST vs. silence), and
//! bound every step with a timeout, which general-purpose clients hide.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Connect timeout: long enough for a veth round trip, short enough that a dropped
/// SYN (XDP deny) is reported quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Read/write timeout of every request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 64 * 1024;

/// What a TCP connect ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Connected,
    /// RST to the SYN (ECONNREFUSED).
    Refused,
    /// No answer at all within the timeout (SYN dropped).
    TimedOut,
    Other(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Connected => f.write_str("connected"),
            Outcome::Refused => f.write_str("connection refused"),
            Outcome::TimedOut => f.write_str("connect timed out"),
            Outcome::Other(e) => write!(f, "connect failed: {e}"),
        }
    }
}

impl Outcome {
    fn of(err: &io::Error) -> Outcome {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Outcome::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::TimedOut,
            _ => Outcome::Other(err.to_string()),
        }
    }
}

/// Connects from inside the network namespace at `netns` (None: the caller's own).
/// The socket is created on a thread in that namespace and stays in it.
pub fn connect(netns: Option<&Path>, addr: SocketAddr, timeout: Duration) -> Result<Conn, Outcome> {
    let attempt = move || TcpStream::connect_timeout(&addr, timeout);
    let res = match netns {
        Some(path) => {
            crate::netns::run_in(path, attempt).map_err(|e| Outcome::Other(format!("{e:#}")))?
        }
        None => attempt(),
    };
    match res {
        Ok(stream) => Conn::new(stream, addr).map_err(|e| Outcome::Other(e.to_string())),
        Err(e) => Err(Outcome::of(&e)),
    }
}

/// Only the outcome of a connect (the connection, if any, is closed at once).
pub fn probe(netns: Option<&Path>, addr: SocketAddr, timeout: Duration) -> Outcome {
    match connect(netns, addr, timeout) {
        Ok(_) => Outcome::Connected,
        Err(o) => o,
    }
}

/// An HTTP request; `Host` and `Content-Length` are added when sent.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn get(path: &str) -> Self {
        Request {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }

    /// `Authorization: Bearer <token>` when a token is given.
    pub fn bearer(self, token: Option<&str>) -> Self {
        match token {
            Some(t) => self.header("Authorization", &format!("Bearer {t}")),
            None => self,
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.text()))
    }

    /// True when the server announced it will close the connection.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One client connection; several requests may be sent on it in turn.
pub struct Conn {
    reader: BufReader<TcpStream>,
    peer: SocketAddr,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr) -> io::Result<Self> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream),
            peer,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.reader.get_ref().local_addr()
    }

    /// Sends `req` and reads its response.
    pub fn send(&mut self, req: &Request) -> Result<Response> {
        let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
        if find_header(&req.headers, "host").is_none() {
            head.push_str(&format!("Host: {}\r\n", self.peer));
        }
        for (k, v) in &req.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !req.body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream
            .write_all(head.as_bytes())
            .and_then(|_| stream.write_all(&req.body))
            .with_context(|| format!("sending {} {} to {}", req.method, req.path, self.peer))?;
        let (status_line, headers) = read_head(&mut self.reader).with_context(|| {
            format!(
                "reading the response to {} {} from {}",
                req.method, req.path, self.peer
            )
        })?;
        let status = parse_status(&status_line)?;
        let no_body = req.method == "HEAD" || status == 204 || status == 304 || status < 200;
        let body = if no_body {
            Vec::new()
        } else {
            read_body(&mut self.reader, &headers, true)?
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    pub fn get(&mut self, path: &str, token: Option<&str>) -> Result<Response> {
        self.send(&Request::get(path).bearer(token))
    }
}

/// One request on a fresh connection from `netns`.
pub fn get_in(
    netns: Option<&Path>,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<Response> {
    let mut conn = connect(netns, addr, CONNECT_TIMEOUT)
        .map_err(|o| anyhow::anyhow!("connecting to {addr}: {o}"))?;
    conn.get(path, token)
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads a start line and header fields. `Ok(None)`-like EOF before any byte is
/// reported as `UnexpectedEof` so servers can tell an idle close from garbage.
pub(crate) fn read_head(r: &mut impl BufRead) -> io::Result<(String, Vec<(String, String)>)> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut total = start.len();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        total += n;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF inside the header",
            ));
        }
        if total > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "header too large",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((start.trim_end().to_string(), headers))
}

/// Reads a message body framed by Content-Length or chunked encoding; a response
/// with neither runs to EOF (`until_eof`), a request has none.
pub(crate) fn read_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
    until_eof: bool,
) -> io::Result<Vec<u8>> {
    let chunked = find_header(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return read_chunked(r);
    }
    let mut body = Vec::new();
    if let Some(len) = find_header(headers, "content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if until_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailer fields, up to the empty line.
            loop {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

fn parse_status(line: &str) -> Result<u16> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/1.") => Ok(code),
        _ => bail!("not an HTTP/1.x status line: {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_length_bodies() {
        let mut r = BufReader::new(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"[..]);
        let (start, headers) = read_head(&mut r).unwrap();
        assert_eq!(parse_status(&start).unwrap(), 200);
        assert_eq!(read_body(&mut r, &headers, true).unwrap(), b"abcde");

        let mut r = BufReader::new(
            &b"HTTP/1.1 403 Forbidden\r\ncontent-length: 19\r\n\r\nRBAC: access deniedNEXT"[..],
        );
        let (start, headers) = read_head(&mut r).unwrap();
        assert_eq!(parse_status(&start).unwrap(), 403);
        assert_eq!(
            read_body(&mut r, &headers, true).unwrap(),
            b"RBAC: access denied"
        );
    }

    #[test]
    fn rejects_non_http() {
        assert!(parse_status("SSH-2.0-OpenSSH").is_err());
    }
}
