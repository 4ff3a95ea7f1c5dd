//! Which protocol a steered connection speaks (`inbound::protocol` decides
//! from the bytes; this reads them). A port declared TCP is spliced at once;
//! a port declared HTTP is read until HTTP/1 and HTTP/2 can be told apart;
//! an undeclared port is read until the bytes say, or until the detection
//! timeout: then the connection is taken for TCP (a server-first protocol
//! such as MySQL or SMTP, or a client-first one whose first message is
//! short), and `tcp` goes on classifying its bytes as they pass, so waiting
//! out the timeout cannot smuggle an HTTP request past the HTTP policies.
//!
//! The bytes read are not lost: HTTP gets them back through [`Prefixed`],
//! TCP writes them to the application first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::request::ConnContext;
use crate::inbound::protocol::{sniff, Sniffed, SNIFF_MAX};
use crate::inbound::Declared;

/// A classified connection.
pub enum Classified {
    Http1(Prefixed<TcpStream>),
    Http2(Prefixed<TcpStream>),
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
    // An HTTP client speaks first: on a declared HTTP port there is nothing
    // to time out for (the HTTP server's own timeouts apply).
    let deadline = match declared {
        Some(_) => None,
        None => ctx.shared.sniff_timeout.map(|t| Instant::now() + t),
    };
    let mut buf = Vec::with_capacity(1024);
    loop {
        match sniff(&buf) {
            Sniffed::Http1 => return Ok(Classified::Http1(Prefixed::new(buf, stream))),
            Sniffed::Http2 => return Ok(Classified::Http2(Prefixed::new(buf, stream))),
            // On a port declared HTTP, the HTTP server answers what is not.
            Sniffed::Tcp if declared == Some(Declared::Http) => {
                return Ok(Classified::Http1(Prefixed::new(buf, stream)))
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
        let read = match deadline {
            None => stream.read(&mut chunk).await,
            Some(deadline) => {
                match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                    Ok(read) => read,
                    // Nothing yet (a server-first protocol), or bytes that
                    // are still neither (a short client-first message):
                    // TCP, as Envoy falls back on its listener-filter
                    // timeout, but watched until its first bytes can be
                    // classified (`tcp`).
                    Err(_) => {
                        return Ok(Classified::Tcp {
                            stream,
                            first: buf,
                            late: true,
                        })
                    }
                }
            }
        };
        match read? {
            0 if buf.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before sending anything",
                ))
            }
            // Half-closed in the middle of something that looked like HTTP.
            0 => return Ok(Classified::Http1(Prefixed::new(buf, stream))),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An I/O object that first yields bytes already read from it.
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefixed_replays_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .unwrap();
        drop(a);
        let mut p = Prefixed::new(b"hello".to_vec(), b);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
