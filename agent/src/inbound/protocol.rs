//! Which protocol a steered connection speaks, decided as Istio decides it:
//! the port's declared protocol when there is one (Istio's port naming, see
//! `declared_by_port_name`), else sniffed from the client's first bytes — an
//! HTTP/1.x request line, the HTTP/2 connection preface, or anything else,
//! which is plain TCP (Envoy's `http_inspector`).
//!
//! Classification errs towards HTTP: a connection taken for HTTP is held to
//! every HTTP policy and a non-HTTP client just gets a 400, while an HTTP
//! request taken for TCP would skip jwt_authn's header sanitising. So bytes
//! that are still a plausible request line stay "need more", and a request
//! line longer than `SNIFF_MAX` is HTTP (the HTTP server then rejects it).

/// A port's protocol as declared by its name (`http-web`, `tcp-db`, `grpc`…).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// HTTP/1.1 or HTTP/2 (`http`, `http2`, `grpc`, `grpc-web`).
    Http,
    /// Opaque bytes: TCP, and the TLS and database protocols Istio proxies
    /// as TCP on inbound (`tcp`, `tls`, `https`, `mongo`, `mysql`, `redis`).
    Tcp,
}

/// Istio's protocol selection by port name: `<protocol>[-<suffix>]`, case
/// insensitive. Unknown names are undeclared (the connection is sniffed).
pub fn declared_by_port_name(name: &str) -> Option<Declared> {
    let protocol = name.split('-').next().unwrap_or("").to_ascii_lowercase();
    match protocol.as_str() {
        "http" | "http2" | "grpc" => Some(Declared::Http),
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some(Declared::Tcp),
        _ => None,
    }
}

/// What the first client bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A complete (or overlong) HTTP/1 request line.
    Http1,
    /// The HTTP/2 connection preface (h2c with prior knowledge, gRPC).
    Http2,
    /// Bytes no HTTP client sends first.
    Tcp,
    /// Still a possible beginning of either: read more.
    NeedMore,
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes read before a still-plausible request line is taken for HTTP.
pub const SNIFF_MAX: usize = 16 * 1024;

/// Longest method token accepted as the start of a request line.
const METHOD_MAX: usize = 32;

/// Classify the bytes a client sent first.
pub fn sniff(prefix: &[u8]) -> Sniffed {
    if prefix.is_empty() {
        return Sniffed::NeedMore;
    }
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return if prefix.len() >= H2_PREFACE.len() {
            Sniffed::Http2
        } else {
            Sniffed::NeedMore
        };
    }
    // Empty lines before a request line are skipped by HTTP servers (RFC
    // 9112 §2.2; hyper, nginx and Envoy's parser all do), and lenient ones
    // ignore whitespace before it (§3): taking either for another protocol
    // would splice the request past every HTTP policy.
    let blank = prefix
        .iter()
        .take_while(|c| matches!(c, b'\r' | b'\n') || is_ws(**c))
        .count();
    if blank == prefix.len() {
        return if prefix.len() >= SNIFF_MAX {
            Sniffed::Http1
        } else {
            Sniffed::NeedMore
        };
    }
    match request_line(&prefix[blank..]) {
        Line::Complete => Sniffed::Http1,
        Line::Partial if prefix.len() >= SNIFF_MAX => Sniffed::Http1,
        Line::Partial => Sniffed::NeedMore,
        Line::Invalid => Sniffed::Tcp,
    }
}

enum Line {
    Complete,
    Partial,
    Invalid,
}

/// `method SP request-target SP HTTP-version CRLF` (RFC 9112 §3), checked as
/// far as the bytes go. Looser than a parser on purpose: any target without
/// whitespace or line breaks, any version starting `HTTP/`, and any run of
/// whitespace between the words (RFC 9112 §3 lets recipients split on SP,
/// HTAB, VT or FF, and some do: Python's http.server) count as HTTP, so a
/// malformed request reaches the HTTP server (which rejects it) instead of
/// being spliced to an application that might accept it.
fn request_line(b: &[u8]) -> Line {
    // method = token
    let method_len = b.iter().take_while(|c| is_tchar(**c)).count();
    if method_len > METHOD_MAX || method_len == 0 {
        return Line::Invalid;
    }
    let Some(&sep) = b.get(method_len) else {
        return Line::Partial;
    };
    if !is_ws(sep) {
        return Line::Invalid;
    }
    let rest = skip_ws(&b[method_len..]);
    let target_len = rest
        .iter()
        .take_while(|c| !is_ws(**c) && !matches!(**c, b'\r' | b'\n'))
        .count();
    let Some(&sep) = rest.get(target_len) else {
        return Line::Partial;
    };
    if target_len == 0 || !is_ws(sep) {
        return Line::Invalid;
    }
    let version = skip_ws(&rest[target_len..]);
    const HTTP: &[u8] = b"HTTP/";
    let n = version.len().min(HTTP.len());
    if version[..n] != HTTP[..n] {
        return Line::Invalid;
    }
    if version[n..].contains(&b'\n') {
        Line::Complete
    } else {
        Line::Partial
    }
}

/// Whitespace a lenient recipient splits a request line on (RFC 9112 §3;
/// bare CR too, but here CR only ends the line).
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | 0x0b | 0x0c)
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| is_ws(**c)).count();
    &b[n..]
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_declare_protocols_like_istio() {
        for (name, want) in [
            ("http", Some(Declared::Http)),
            ("http-web", Some(Declared::Http)),
            ("HTTP2", Some(Declared::Http)),
            ("grpc-web", Some(Declared::Http)),
            ("tcp-db", Some(Declared::Tcp)),
            ("mysql", Some(Declared::Tcp)),
            ("https", Some(Declared::Tcp)),
            ("tls-x", Some(Declared::Tcp)),
            ("web", None),
            ("", None),
            ("httpx", None),
        ] {
            assert_eq!(declared_by_port_name(name), want, "{name}");
        }
    }

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /api?x=1 HTTP/1.0\r\nHost: a\r\n",
            b"get / HTTP/1.1\n",
            b"M-SEARCH * HTTP/1.1\r\n",
            b"GET http://a/b HTTP/1.1\r\n",
            // Malformed, but HTTP: the HTTP server answers 400/505.
            b"GET / HTTP/2.0\r\n",
            b"GET /\x00 HTTP/1.1\r\n",
            b"PRI * HTTP/1.1\r\n",
        ] {
            assert_eq!(
                sniff(line),
                Sniffed::Http1,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn empty_lines_before_a_request_line_are_http() {
        for bytes in [
            &b"\r\nGET / HTTP/1.1\r\n"[..],
            b"\nGET / HTTP/1.1\r\n",
            b"\r\n\r\n\nPOST /x HTTP/1.1\r\n",
        ] {
            assert_eq!(
                sniff(bytes),
                Sniffed::Http1,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        for bytes in [&b"\r"[..], b"\r\n", b"\r\nGE", b"\n\nGET / HT"] {
            assert_eq!(
                sniff(bytes),
                Sniffed::NeedMore,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(sniff(b"\r\n\x16\x03\x01"), Sniffed::Tcp);
        // Whitespace other than one SP between the words, or before them.
        for bytes in [
            &b"GET\t/ HTTP/1.1\r\n"[..],
            b"GET  /  HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"GET /\x0bHTTP/1.1\r\n",
            b"\t\r\nGET\x0c/ HTTP/1.0\n",
        ] {
            assert_eq!(
                sniff(bytes),
                Sniffed::Http1,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        for bytes in [&b"GET\t"[..], b"GET  /x  ", b" "] {
            assert_eq!(
                sniff(bytes),
                Sniffed::NeedMore,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // The HTTP/2 preface is only ever the very first bytes.
        assert_eq!(sniff(&[b"\r\n", H2_PREFACE].concat()), Sniffed::Http1);
    }

    #[test]
    fn every_prefix_of_a_request_line_needs_more() {
        let line = b"GET /products/1?a=b HTTP/1.1\r\n";
        for n in 1..line.len() - 1 {
            assert_eq!(sniff(&line[..n]), Sniffed::NeedMore, "{n}");
        }
        let preface = H2_PREFACE;
        for n in 1..preface.len() {
            assert_eq!(sniff(&preface[..n]), Sniffed::NeedMore, "{n}");
        }
        assert_eq!(sniff(preface), Sniffed::Http2);
        assert_eq!(sniff(&[preface, b"\x00\x00"].concat()), Sniffed::Http2);
    }

    #[test]
    fn other_protocols_are_tcp() {
        for first in [
            &b"\x16\x03\x01\x02\x00"[..], // TLS ClientHello
            b"\x4a\x00\x00\x01\x85\xa6",  // MySQL handshake response
            b"EHLO mail.example\r\n",     // SMTP
            b"*1\r\n$4\r\nPING\r\n",      // Redis
            b"GET \r\n / HTTP/1.1\r\n",   // empty target
            b"GET / http/1.1\r\n",        // no HTTP-version
            b"hello world\n",
        ] {
            assert_eq!(
                sniff(first),
                Sniffed::Tcp,
                "{:?}",
                String::from_utf8_lossy(first)
            );
        }
        let long_method = [b'A'; METHOD_MAX + 1];
        assert_eq!(sniff(&long_method), Sniffed::Tcp);
    }

    #[test]
    fn an_overlong_plausible_line_is_http() {
        let mut line = b"GET /".to_vec();
        line.resize(SNIFF_MAX, b'a');
        assert_eq!(sniff(&line), Sniffed::Http1);
        assert_eq!(sniff(&line[..SNIFF_MAX - 1]), Sniffed::NeedMore);
    }
}
