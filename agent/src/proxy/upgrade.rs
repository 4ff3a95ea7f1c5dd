//! Which HTTP/1.1 upgrades the proxy carries, as Istio's sidecar does:
//! Envoy's inbound listener is configured for `websocket` upgrades only.
//!
//! - `Upgrade: websocket` is authorized like any request, then piped
//!   (`request::forward`).
//! - `Upgrade: h2c` is stripped (the `Upgrade` and `HTTP2-Settings` headers
//!   and their `Connection` tokens) and the request served as a plain one,
//!   as Envoy's HTTP/1 codec does: an application that accepted it would
//!   speak HTTP/2 straight to the client, every later stream unverified.
//! - Any other upgrade is answered 403 with an empty body and the
//!   connection closed, as Envoy answers an upgrade no `upgrade_configs`
//!   entry allows (`upgrade_failed`): the tunnel it would open carries bytes
//!   no policy looks into.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};

use super::request::ProxyBody;

/// What an HTTP/1 request asks to switch to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Nothing,
    WebSocket,
    H2c,
    Other,
}

/// Envoy's `Utility::isUpgrade`: a `Connection` token `upgrade` and an
/// `Upgrade` header.
fn asked(headers: &HeaderMap, version: Version) -> Asked {
    if version >= Version::HTTP_2 {
        return Asked::Nothing;
    }
    let connection_upgrade = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    let Some(upgrade) = headers.get(UPGRADE) else {
        return Asked::Nothing;
    };
    if !connection_upgrade {
        return Asked::Nothing;
    }
    let upgrade = upgrade.as_bytes();
    if upgrade.eq_ignore_ascii_case(b"websocket") {
        Asked::WebSocket
    } else if upgrade.eq_ignore_ascii_case(b"h2c") {
        Asked::H2c
    } else {
        Asked::Other
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Strip an h2c upgrade from `req` in place, or answer an upgrade the proxy
/// does not carry. `None`: go on with the request.
pub fn screen<B>(req: &mut Request<B>) -> Option<Response<ProxyBody>> {
    match asked(req.headers(), req.version()) {
        Asked::Nothing | Asked::WebSocket => None,
        Asked::H2c => {
            strip_h2c(req.headers_mut());
            None
        }
        Asked::Other => {
            let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
            *resp.status_mut() = StatusCode::FORBIDDEN;
            let headers = resp.headers_mut();
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(0));
            // Whatever the client sends next may be upgrade payload: do
            // not read it as requests.
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
            Some(resp)
        }
    }
}

fn strip_h2c(headers: &mut HeaderMap) {
    let kept: Vec<String> = connection_tokens(headers)
        .filter(|t| !t.eq_ignore_ascii_case("upgrade") && !t.eq_ignore_ascii_case("http2-settings"))
        .map(str::to_string)
        .collect();
    headers.remove(UPGRADE);
    headers.remove("http2-settings");
    headers.remove(CONNECTION);
    if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            headers.insert(CONNECTION, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/").version(Version::HTTP_11);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn websocket_and_plain_requests_pass_untouched() {
        for headers in [
            &[][..],
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "WebSocket"),
            ],
            // Not an upgrade without both headers (the hop-by-hop headers
            // are dropped when forwarding).
            &[("upgrade", "tunnel")],
            &[("connection", "upgrade")],
        ] {
            let mut r = req(headers);
            let before = r.headers().clone();
            assert!(screen(&mut r).is_none(), "{headers:?}");
            assert_eq!(r.headers(), &before);
        }
    }

    #[test]
    fn h2c_upgrade_is_stripped_like_envoy() {
        let mut r = req(&[
            ("connection", "Upgrade, HTTP2-Settings, x-keep"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("x-keep", "1"),
        ]);
        assert!(screen(&mut r).is_none());
        assert_eq!(r.headers().get(UPGRADE), None);
        assert_eq!(r.headers().get("http2-settings"), None);
        assert_eq!(r.headers().get(CONNECTION).unwrap(), "x-keep");
        let mut r = req(&[("connection", "upgrade"), ("upgrade", "H2C")]);
        assert!(screen(&mut r).is_none());
        assert!(r.headers().is_empty(), "{:?}", r.headers());
    }

    #[test]
    fn other_upgrades_get_403_and_close() {
        for upgrade in ["tunnel", "websocket, h2c", "SPDY/3.1", "TLS/1.2"] {
            let mut r = req(&[("connection", "upgrade"), ("upgrade", upgrade)]);
            let resp = screen(&mut r).expect(upgrade);
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            assert_eq!(resp.headers().get(CONNECTION).unwrap(), "close");
        }
    }

    #[test]
    fn http2_requests_carry_no_upgrade() {
        let mut r = req(&[("connection", "upgrade"), ("upgrade", "tunnel")]);
        *r.version_mut() = Version::HTTP_2;
        assert!(screen(&mut r).is_none());
    }
}
