//! What Envoy answers before any filter runs: its HTTP/1 codec and HTTP
//! connection manager refuse requests whose method, request-target, Host,
//! version or header size they do not accept, and decide which authority
//! and path the filters (and the application) see. A request refused here
//! never reaches jwt_authn or RBAC, so a lowercase `get` cannot slip past a
//! `methods: ["GET"]` rule and an absolute-form target cannot show policies
//! one host while the application serves another.
//!
//! Sources, Envoy under Istio's defaults: `balsa_parser.cc` (method list,
//! request-target characters), `http1/codec_impl.cc` (`handlePath`:
//! absolute-form replaces Host; header size and count limits → 431;
//! protocol errors answered with the status text as body and the connection
//! closed), `conn_manager_impl.cc` (HTTP/1.0 → 426 unless `accept_http_10`,
//! which Istio sets with `PILOT_HTTP10`; no Host → 400; a path that does not
//! start with `/` → 404; both with an empty body). Pure: no I/O.

use std::borrow::Cow;

use http::Version;

/// Envoy's default `max_request_headers_kb` (60), in bytes.
pub const MAX_HEAD_BYTES: usize = 60 * 1024;
/// Envoy's default `max_request_headers_count`.
pub const MAX_HEADER_COUNT: usize = 100;

/// The methods Envoy's default HTTP/1 parser (Balsa, `allow_custom_methods`
/// off as in Istio) accepts, compared case-sensitively. Sorted. Note
/// `MSEARCH` without the dash: that is Balsa's list (the older http-parser
/// spelled it `M-SEARCH`).
const ENVOY_METHODS: [&str; 34] = [
    "ACL",
    "BIND",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "MSEARCH",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// The head of one request as received.
#[derive(Debug, Clone)]
pub struct RequestHead<'a> {
    /// The method exactly as sent (`:method` for HTTP/2).
    pub method: &'a str,
    pub version: Version,
    /// The request-target exactly as on the request line (HTTP/2: `:path`,
    /// empty when absent): origin-form `/p?q`, absolute-form
    /// `http://host:port/p?q`, authority-form `host:port` (CONNECT) or `*`.
    pub target: &'a str,
    /// The value of every `Host` line, in arrival order. HTTP/2: the
    /// `:authority` alone (or the `Host` lines when there is none).
    pub hosts: &'a [&'a [u8]],
    /// Size of the request head as Envoy's parser counts it (`head_size`).
    pub head_bytes: usize,
    /// Number of header lines.
    pub header_count: usize,
}

/// Switches that change Envoy's answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShapeOptions {
    /// Serve HTTP/1.0 instead of answering 426: Envoy's `accept_http_10`,
    /// which Istio sets on sidecars when istiod runs with `PILOT_HTTP10=1`.
    pub accept_http_10: bool,
}

/// A request Envoy lets through to the filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted<'a> {
    /// `:authority`: what `hosts` and `request.headers[:authority]` match
    /// (`authz::Request::host`) and the `Host` the application receives.
    pub authority: Cow<'a, str>,
    /// The origin-form target (path plus query) to evaluate
    /// (`authz::Request::path`) and forward.
    pub target: &'a str,
}

/// Envoy's local reply for a request it refuses before any filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    /// The body: the status text for codec errors (`text/plain`), empty for
    /// the connection manager's refusals (then no `content-type`, and
    /// `content-length: 0`). HEAD gets no body either way.
    pub body: &'static str,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%`), for logs.
    pub details: &'static str,
    /// Envoy closes the connection after this reply (`connection: close`).
    pub close: bool,
}

impl LocalReply {
    fn codec(status: u16, details: &'static str) -> LocalReply {
        let body = match status {
            400 => "Bad Request",
            431 => "Request Header Fields Too Large",
            _ => "",
        };
        LocalReply {
            status,
            body,
            details,
            close: true,
        }
    }

    fn manager(status: u16, details: &'static str, close: bool) -> LocalReply {
        LocalReply {
            status,
            body: "",
            details,
            close,
        }
    }
}

/// Envoy's answer to a request head: `Ok` with the authority and
/// origin-form target the filters see, or the local reply to send instead.
///
/// How the proxy calls it: once per request, before `authz::evaluate`, with
/// the method, version and target as received, every `Host` value
/// (`headers.get_all(HOST)`) and `head_size(..)` of the request. On `Err`,
/// answer with the reply (omit the body for HEAD, keep `content-length`),
/// close the connection when `close` says so, and do not evaluate or
/// forward. On `Ok`, build `authz::Request` with `host = authority` and
/// `path = target`, and forward with `Host: authority` and the decision's
/// `forward_path` in origin-form. The hyper server must not refuse heads
/// below `MAX_HEAD_BYTES` itself (hyper's `max_buf_size` default is larger).
pub fn admit<'a>(
    head: &RequestHead<'a>,
    options: ShapeOptions,
) -> Result<Admitted<'a>, LocalReply> {
    // The request line, as the parser reads it.
    if !ENVOY_METHODS.contains(&head.method) {
        return Err(LocalReply::codec(400, "http1.codec_error"));
    }
    let connect = head.method == "CONNECT";
    let form = classify(head.target, connect).ok_or(LocalReply::codec(400, "http1.codec_error"))?;
    // The header block, as it arrives.
    if head.head_bytes > MAX_HEAD_BYTES {
        return Err(LocalReply::codec(431, "http1.headers_too_large"));
    }
    if head.header_count > MAX_HEADER_COUNT {
        return Err(LocalReply::codec(431, "http1.too_many_headers"));
    }
    // Headers complete: the codec settles `:authority` and `:path`. RFC 9112
    // §3.2 requires 400 for several Host lines; Envoy would join them into
    // one `:authority` (`a,b`) that no host rule expects, so jwtgate refuses
    // them whatever the form.
    if head.hosts.len() > 1 {
        return Err(LocalReply::codec(400, "jwtgate.multiple_host_headers"));
    }
    if matches!(form, Form::Asterisk) && head.method != "OPTIONS" {
        // Only `OPTIONS *` keeps `*` as its path; elsewhere the codec reads
        // `*` as a broken absolute URL.
        return Err(LocalReply::codec(400, "http1.invalid_url"));
    }
    let (authority, target) = match form {
        Form::Absolute { authority, target } => (Some(Cow::Borrowed(authority)), target),
        Form::Authority(authority) => (Some(Cow::Borrowed(authority)), ""),
        Form::Origin | Form::Asterisk => match head.hosts.first() {
            Some(host) if !valid_authority(host) => {
                return Err(LocalReply::codec(400, "http.invalid_authority"));
            }
            // Checked: visible ASCII only.
            Some(host) => (Some(String::from_utf8_lossy(host)), head.target),
            None => (None, head.target),
        },
    };
    // The connection manager.
    let http10 = head.version == Version::HTTP_10 || head.version == Version::HTTP_09;
    if http10 && !options.accept_http_10 {
        return Err(LocalReply::manager(426, "low_version", true));
    }
    // Istio sets no `default_host_for_http_10`: a request without Host is
    // refused whatever its version.
    let Some(authority) = authority else {
        return Err(LocalReply::manager(400, "missing_host_header", false));
    };
    if connect {
        // No `:path`: Istio's inbound route (`prefix: /`) never matches a
        // CONNECT, so Envoy answers "no route". Never forwarded.
        return Err(LocalReply::manager(404, "route_not_found", false));
    }
    if !target.starts_with('/') {
        // `OPTIONS *`, or an absolute URL whose path starts with `?`:
        // "only relative paths at the application layer".
        return Err(LocalReply::manager(404, "absolute_path", false));
    }
    Ok(Admitted { authority, target })
}

/// The size of a request head as Envoy's HTTP/1 parser counts it against
/// `max_request_headers_kb`: every byte of the request line and the header
/// lines with their line ends, up to and including the empty line. Computed
/// from the parsed head with one space after each colon, so it can differ
/// from the bytes on the wire by the client's optional whitespace.
pub fn head_size<'h>(
    method: &str,
    target: &str,
    headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
) -> usize {
    const VERSION_AND_CRLF: usize = " HTTP/1.1\r\n".len();
    let line = method.len() + 1 + target.len() + VERSION_AND_CRLF;
    let fields: usize = headers
        .into_iter()
        .map(|(name, value)| name.len() + 2 + value.len() + 2)
        .sum();
    line + fields + 2
}

/// The four request-target forms of RFC 9112 §3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form<'a> {
    Origin,
    Asterisk,
    /// `http://authority` plus the target that follows it (`/p?q`, `?q` or
    /// `/` when nothing follows).
    Absolute {
        authority: &'a str,
        target: &'a str,
    },
    /// `host:port`, CONNECT only.
    Authority(&'a str),
}

/// Balsa's `isUrlValid` plus the codec's absolute-URL parse; `None` when
/// Envoy answers 400.
fn classify(target: &str, connect: bool) -> Option<Form<'_>> {
    let b = target.as_bytes();
    match b.first()? {
        b'/' if !connect => return b[1..].iter().all(|&c| path_char(c)).then_some(Form::Origin),
        b'*' if !connect => {
            return (b.len() == 1 || b[1..].iter().all(|&c| path_char(c))).then_some(Form::Asterisk)
        }
        _ => {}
    }
    if connect {
        // host:port, nothing else (an absolute URL in a CONNECT is refused).
        let valid = b.iter().all(|&c| host_char(c)) && target.contains(':');
        return valid.then_some(Form::Authority(target));
    }
    let (scheme, rest) = target.split_once("://")?;
    let scheme_ok = scheme.as_bytes().first()?.is_ascii_alphabetic()
        && scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    // jwtgate serves plaintext only: `https://` is refused as Envoy refuses
    // an https URL on a plaintext connection, any other scheme as invalid.
    if !scheme_ok || !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    // A userinfo part (`user@host`) is refused: RFC 9110 §4.2.4 forbids it
    // in http URIs, and it would make the host policies see ambiguous.
    if authority.is_empty()
        || authority.contains('@')
        || !authority.bytes().all(host_char)
        || !after.bytes().all(path_char)
    {
        return None;
    }
    let target = if after.is_empty() { "/" } else { after };
    Some(Form::Absolute { authority, target })
}

/// Path and query bytes Balsa accepts: visible ASCII, tab and form feed.
fn path_char(c: u8) -> bool {
    c == b'\t' || c == 0x0c || (b'!'..=b'~').contains(&c)
}

/// Host bytes Balsa accepts in an absolute URL or CONNECT target.
fn host_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=@[]_~".contains(&c)
}

/// A Host value Envoy accepts (`nghttp2_check_authority`): unreserved,
/// percent, sub-delims, `:`, `@`, `[`, `]`. Empty is allowed.
fn valid_authority(host: &[u8]) -> bool {
    host.iter().all(|&c| host_char(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        why: &'static str,
        method: &'static str,
        version: Version,
        target: &'static str,
        hosts: &'static [&'static str],
        head_bytes: usize,
        header_count: usize,
        accept_http_10: bool,
        /// `Ok((authority, target))` or `Err((status, body))`.
        want: Result<(&'static str, &'static str), (u16, &'static str)>,
    }

    fn get(target: &'static str) -> Case {
        Case {
            why: "",
            method: "GET",
            version: Version::HTTP_11,
            target,
            hosts: &["httpbin.foo:8000"],
            head_bytes: 100,
            header_count: 3,
            accept_http_10: false,
            want: Ok(("httpbin.foo:8000", target)),
        }
    }

    impl Case {
        fn why(mut self, why: &'static str) -> Case {
            self.why = why;
            self
        }
        fn method(mut self, m: &'static str) -> Case {
            self.method = m;
            self
        }
        fn version(mut self, v: Version) -> Case {
            self.version = v;
            self
        }
        fn hosts(mut self, h: &'static [&'static str]) -> Case {
            self.hosts = h;
            self
        }
        fn size(mut self, bytes: usize, count: usize) -> Case {
            self.head_bytes = bytes;
            self.header_count = count;
            self
        }
        fn http10_on(mut self) -> Case {
            self.accept_http_10 = true;
            self
        }
        fn ok(mut self, authority: &'static str, target: &'static str) -> Case {
            self.want = Ok((authority, target));
            self
        }
        fn err(mut self, status: u16, body: &'static str) -> Case {
            self.want = Err((status, body));
            self
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            get("/productpage?x=1").why("plain origin-form"),
            // Methods: Balsa's list, case-sensitive.
            get("/").method("POST").why("known method"),
            get("/")
                .method("MKCALENDAR")
                .why("WebDAV method in Balsa's list"),
            get("/")
                .method("get")
                .err(400, "Bad Request")
                .why("lowercase method"),
            get("/")
                .method("Get")
                .err(400, "Bad Request")
                .why("mixed-case method"),
            get("/")
                .method("FOO")
                .err(400, "Bad Request")
                .why("unknown method"),
            get("/")
                .method("M-SEARCH")
                .err(400, "Bad Request")
                .why("http-parser spelling, not Balsa's"),
            get("/").method("MSEARCH").why("Balsa spelling"),
            get("/")
                .method("")
                .err(400, "Bad Request")
                .why("empty method"),
            // Request-target characters.
            get("/a b")
                .err(400, "Bad Request")
                .why("space in the target"),
            get("/é")
                .err(400, "Bad Request")
                .why("non-ASCII byte in the target"),
            get("/a\tb").why("tab is tolerated like http-parser"),
            get("").err(400, "Bad Request").why("empty target"),
            get("admin")
                .err(400, "Bad Request")
                .why("relative target without scheme"),
            // Absolute-form: the URL's authority replaces Host (RFC 9112 §3.2.2).
            get("http://admin.example.com/secret?q=1")
                .ok("admin.example.com", "/secret?q=1")
                .why("absolute-form authority wins over Host"),
            get("HTTP://a.example:8080")
                .ok("a.example:8080", "/")
                .why("scheme case-insensitive, empty path is /"),
            get("http://a.example/x")
                .hosts(&[])
                .ok("a.example", "/x")
                .why("absolute-form needs no Host"),
            get("https://a.example/x")
                .err(400, "Bad Request")
                .why("https URL on a plaintext connection"),
            get("ftp://a.example/x")
                .err(400, "Bad Request")
                .why("scheme other than http"),
            get("http:///x")
                .err(400, "Bad Request")
                .why("absolute URL without host"),
            get("http://user@a.example/x")
                .err(400, "Bad Request")
                .why("userinfo"),
            get("http://a.example?x=1")
                .err(404, "")
                .why("absolute URL whose path starts with ?"),
            get("http://a b/")
                .err(400, "Bad Request")
                .why("space in the authority"),
            // Host (RFC 9112 §3.2).
            get("/").hosts(&[]).err(400, "").why("no Host"),
            get("/")
                .hosts(&["a.example", "b.example"])
                .err(400, "Bad Request")
                .why("two Host lines"),
            get("http://a.example/")
                .hosts(&["x", "y"])
                .err(400, "Bad Request")
                .why("two Host lines, absolute-form"),
            get("/")
                .hosts(&["a b"])
                .err(400, "Bad Request")
                .why("invalid Host value"),
            get("/")
                .hosts(&["bad\"host"])
                .err(400, "Bad Request")
                .why("quote in Host"),
            get("/")
                .hosts(&[""])
                .ok("", "/")
                .why("empty Host is a Host"),
            get("/")
                .hosts(&["[::1]:8080"])
                .ok("[::1]:8080", "/")
                .why("IPv6 literal"),
            get("/")
                .hosts(&["HTTPBIN.foo"])
                .ok("HTTPBIN.foo", "/")
                .why("case kept: host rules ignore case"),
            // Version: 426 unless PILOT_HTTP10's switch.
            get("/")
                .version(Version::HTTP_10)
                .err(426, "")
                .why("HTTP/1.0 by default"),
            get("/")
                .version(Version::HTTP_09)
                .err(426, "")
                .why("HTTP/0.9 is treated as 1.0"),
            get("/")
                .version(Version::HTTP_10)
                .http10_on()
                .why("accept_http_10"),
            get("/")
                .version(Version::HTTP_10)
                .http10_on()
                .hosts(&[])
                .err(400, "")
                .why("HTTP/1.0 without Host still needs one"),
            get("/")
                .version(Version::HTTP_10)
                .hosts(&[])
                .err(426, "")
                .why("426 comes before the Host check"),
            get("/").version(Version::HTTP_2).why("HTTP/2"),
            get("/")
                .version(Version::HTTP_2)
                .method("get")
                .err(400, "Bad Request")
                .why("HTTP/2 lowercase method (jwtgate refuses it too)"),
            // Header size: 60 KiB and 100 lines.
            get("/")
                .size(MAX_HEAD_BYTES, 100)
                .why("exactly at the limits"),
            get("/")
                .size(MAX_HEAD_BYTES + 1, 3)
                .err(431, "Request Header Fields Too Large")
                .why("one byte over 60 KiB"),
            get("/")
                .size(200, 101)
                .err(431, "Request Header Fields Too Large")
                .why("101 header lines"),
            get("/")
                .method("get")
                .size(MAX_HEAD_BYTES + 1, 3)
                .err(400, "Bad Request")
                .why("the request line is refused first"),
            get("/")
                .hosts(&[])
                .size(MAX_HEAD_BYTES + 1, 3)
                .err(431, "Request Header Fields Too Large")
                .why("size before Host"),
            // Other forms.
            get("*")
                .method("OPTIONS")
                .err(404, "")
                .why("OPTIONS *: not a relative path"),
            get("*")
                .err(400, "Bad Request")
                .why("* with another method"),
            get("example.com:443")
                .method("CONNECT")
                .hosts(&[])
                .err(404, "")
                .why("CONNECT: no route"),
            get("/x")
                .method("CONNECT")
                .err(400, "Bad Request")
                .why("CONNECT needs host:port"),
            get("example.com")
                .method("CONNECT")
                .err(400, "Bad Request")
                .why("CONNECT without port"),
        ]
    }

    #[test]
    fn envoy_answers_per_rule() {
        let mut failures = Vec::new();
        for case in cases() {
            let hosts: Vec<&[u8]> = case.hosts.iter().map(|h| h.as_bytes()).collect();
            let head = RequestHead {
                method: case.method,
                version: case.version,
                target: case.target,
                hosts: &hosts,
                head_bytes: case.head_bytes,
                header_count: case.header_count,
            };
            let options = ShapeOptions {
                accept_http_10: case.accept_http_10,
            };
            let got = admit(&head, options)
                .map(|a| (a.authority.into_owned(), a.target.to_owned()))
                .map_err(|r| (r.status, r.body));
            let want = case.want.map(|(a, t)| (a.to_owned(), t.to_owned()));
            if got != want {
                failures.push(format!("{}: want {want:?}, got {got:?}", case.why));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn replies_say_how_envoy_sends_them() {
        let host: &[u8] = b"h";
        let one = [host];
        let reply = |method, version, hosts: &[&[u8]]| {
            let head = RequestHead {
                method,
                version,
                target: "/",
                hosts,
                head_bytes: 10,
                header_count: 1,
            };
            admit(&head, ShapeOptions::default()).unwrap_err()
        };
        // Codec errors: status text as body, connection closed.
        let bad = reply("get", Version::HTTP_11, &one);
        assert_eq!(
            (bad.body, bad.close, bad.details),
            ("Bad Request", true, "http1.codec_error")
        );
        // Connection manager refusals: empty body; HTTP/1.0 closes anyway.
        let old = reply("GET", Version::HTTP_10, &one);
        assert_eq!(
            (old.status, old.body, old.close, old.details),
            (426, "", true, "low_version")
        );
        let no_host = reply("GET", Version::HTTP_11, &[]);
        assert_eq!(
            (no_host.body, no_host.close, no_host.details),
            ("", false, "missing_host_header")
        );
    }

    #[test]
    fn head_size_counts_the_serialized_head() {
        // "GET / HTTP/1.1\r\n" (16) + "host: h\r\n" (9) + "\r\n" (2)
        let headers: [(&[u8], &[u8]); 1] = [(b"host", b"h")];
        assert_eq!(head_size("GET", "/", headers), 27);
        // 60 KiB of one header value crosses the limit with its name.
        let big = vec![b'a'; MAX_HEAD_BYTES];
        let headers: [(&[u8], &[u8]); 1] = [(b"x-big", &big)];
        assert!(head_size("GET", "/", headers) > MAX_HEAD_BYTES);
    }
}
