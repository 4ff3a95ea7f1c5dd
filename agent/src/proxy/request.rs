//! One request: translate it for `authz::evaluate`, then answer locally or
//! forward. The only place where a `Decision` becomes an HTTP response.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tracing::debug;

use super::{upstream, Inbound, Shared, Workload};
use crate::authz::request_shape::{self, head_size, LocalReply, RequestHead, ShapeOptions};
use crate::authz::{self, Decision, HeaderEdits};
use crate::inbound::probes::is_probe_request;
use crate::policy::WorkloadPolicy;
use crate::sources::jwks;

/// The proxy's response body: a local reply or the application's streamed body.
pub type ProxyBody = Either<Full<Bytes>, Incoming>;

/// Envoy's local reply when the upstream cannot be reached.
const UPSTREAM_FAILURE: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";

/// State of one downstream connection.
pub struct ConnContext {
    pub peer: SocketAddr,
    pub original_dst: SocketAddr,
    pub workload: Arc<Workload>,
    pub shared: Arc<Shared>,
    /// The workload's addresses, protocols and probes when the connection
    /// started.
    pub inbound: Arc<Inbound>,
    /// The upstream connection, opened on the first allowed request and
    /// reused while the client keeps its connection alive.
    pub upstream: tokio::sync::Mutex<Option<upstream::Upstream>>,
    /// Read and write times and the request cycle, for the watchdog.
    pub activity: Arc<super::conn_io::Activity>,
    /// The connection drains: answer with `Connection: close`.
    pub closing: std::sync::atomic::AtomicBool,
}

/// Decide and answer one request.
pub async fn handle(req: Request<Incoming>, ctx: &ConnContext) -> Response<ProxyBody> {
    let http1 = req.version() < http::Version::HTTP_2;
    let mut resp = decide_and_answer(req, ctx).await;
    if http1
        && ctx.closing.load(Ordering::Relaxed)
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        // Draining: the client reconnects for its next request, to whoever
        // holds the steering now (hyper closes after this response).
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn decide_and_answer(req: Request<Incoming>, ctx: &ConnContext) -> Response<ProxyBody> {
    // What Envoy's codec and connection manager refuse, before any filter;
    // and the authority and path every later step sees.
    let (authority, target) = match admit(&req, ctx.shared.accept_http_10) {
        Ok(admitted) => admitted,
        Err(reply) => {
            ctx.workload
                .stats
                .refused_shape
                .fetch_add(1, Ordering::Relaxed);
            debug!(peer = %ctx.peer, status = reply.status, details = reply.details, "request refused before any filter");
            return shape_reply(&reply, req.method() == http::Method::HEAD);
        }
    };
    let policy = ctx.workload.policy.borrow().clone();
    if let Some(decision) = declared_probe(&req, &target, ctx, &policy) {
        ctx.workload
            .stats
            .probes_passed
            .fetch_add(1, Ordering::Relaxed);
        return forward(req, &decision, &authority, ctx).await;
    }
    let view = authz_request(&req, ctx, authority.clone(), target);
    let decide = || {
        authz::evaluate(
            &policy,
            &view,
            ctx.shared.jwks.as_ref(),
            unix_now(),
            ctx.shared.normalization,
            Some(&ctx.shared.token_cache),
        )
    };
    let mut decision = decide();
    // A kid no key matches may be a key the IdP just rotated in: re-fetch
    // (rate-limited) and decide once more before rejecting.
    if jwks::unknown_kid(&decision) && ctx.shared.jwks.refetch_for_rules(&policy.jwt_rules).await {
        decision = decide();
    }
    debug!(
        peer = %ctx.peer,
        method = %view.method,
        path = %view.path,
        status = decision.status,
        reason = %decision.reason,
        "decision"
    );
    let stats = &ctx.workload.stats;
    if !decision.allowed {
        if decision.status == 401 {
            stats.denied_authn.fetch_add(1, Ordering::Relaxed);
            ctx.shared
                .bans
                .record_failure(ctx.peer.ip(), ctx.original_dst.ip());
        } else {
            stats.denied_authz.fetch_add(1, Ordering::Relaxed);
        }
        return local_reply(&decision, req.method() == http::Method::HEAD, is_grpc(&req));
    }
    stats.allowed.fetch_add(1, Ordering::Relaxed);
    forward(req, &decision, &authority, ctx).await
}

/// `authz::request_shape::admit` on a hyper request: `(authority,
/// origin-form target)`, or Envoy's local reply.
fn admit(req: &Request<Incoming>, accept_http_10: bool) -> Result<(String, String), LocalReply> {
    let h2 = req.version() == http::Version::HTTP_2;
    let mut hosts: Vec<&[u8]> = req
        .headers()
        .get_all(http::header::HOST)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let target = if h2 {
        // `:authority` is the host of an HTTP/2 request when it has one.
        if let Some(a) = req.uri().authority() {
            hosts = vec![a.as_str().as_bytes()];
        }
        req.uri()
            .path_and_query()
            .map_or(String::new(), |p| p.as_str().to_string())
    } else {
        // As on the request line: origin-form, absolute-form or `*`.
        req.uri().to_string()
    };
    let head_bytes = head_size(
        req.method().as_str(),
        &target,
        req.headers()
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
    );
    let head = RequestHead {
        method: req.method().as_str(),
        version: req.version(),
        target: &target,
        hosts: &hosts,
        head_bytes,
        header_count: req.headers().len(),
    };
    let admitted = request_shape::admit(&head, ShapeOptions { accept_http_10 })?;
    Ok((admitted.authority.into_owned(), admitted.target.to_string()))
}

/// Envoy's reply to a request its codec or connection manager refuses: the
/// status text as a plain-text body, or no body (and no content type).
fn shape_reply(reply: &LocalReply, head: bool) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = if head { "" } else { reply.body };
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if !reply.body.is_empty() {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(reply.body.len()),
    );
    if reply.close {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A kubelet probe the pod declares, sent from a probe source: it passes
/// without a token, forwarded exactly as sent, minus the headers jwt_authn
/// would have set (nobody may smuggle a claim header along with it).
fn declared_probe(
    req: &Request<Incoming>,
    target: &str,
    ctx: &ConnContext,
    policy: &WorkloadPolicy,
) -> Option<Decision> {
    if !ctx.shared.probe_sources.contains(ctx.peer.ip())
        || !is_probe_request(
            &ctx.inbound.probes,
            ctx.original_dst.port(),
            req.method().as_str(),
            target,
        )
    {
        return None;
    }
    let remove = policy
        .jwt_rules
        .iter()
        .flat_map(|r| {
            r.output_payload_to_header
                .iter()
                .chain(r.output_claim_to_headers.iter().map(|(h, _)| h))
        })
        .map(|h| h.to_ascii_lowercase())
        .collect();
    Some(Decision {
        status: 200,
        allowed: true,
        body: String::new(),
        reason: "kubelet probe declared by the pod".into(),
        principal: None,
        policy: None,
        audit: None,
        www_authenticate: None,
        forward_path: target.to_string(),
        headers: HeaderEdits {
            remove,
            add: Vec::new(),
        },
    })
}

/// Forward an allowed request and stream the answer back.
async fn forward(
    req: Request<Incoming>,
    decision: &Decision,
    authority: &str,
    ctx: &ConnContext,
) -> Response<ProxyBody> {
    let stats = &ctx.workload.stats;
    let upgrade = upgrade_protocol(&req);
    let mut forwarded = match prepare_forward(req, decision, authority, ctx, upgrade.as_ref()) {
        Ok(req) => req,
        Err(err) => {
            debug!(%err, "cannot rewrite the request");
            return text_response(StatusCode::BAD_REQUEST, "Bad Request");
        }
    };
    // The client's side of an upgrade, available once we answer 101.
    let client_upgrade = upgrade
        .is_some()
        .then(|| hyper::upgrade::on(&mut forwarded));
    match upstream::send(ctx, forwarded).await {
        Ok(mut resp) => {
            if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status())
            {
                // The upstream connection becomes a pipe: nothing else may
                // be sent on it.
                ctx.upstream.lock().await.take();
                let app = hyper::upgrade::on(&mut resp);
                tokio::spawn(pipe_upgraded(client, app));
            }
            resp.map(Either::Right)
        }
        Err(err) => {
            stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
            debug!(dst = %ctx.original_dst, err = %format!("{err:#}"), "upstream failed");
            text_response(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_FAILURE)
        }
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` + `Upgrade: websocket`…), which the proxy carries through as
/// the Istio sidecar does.
fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(http::header::UPGRADE).cloned())
        .flatten()
}

/// After a 101: bytes both ways between the client and the application
/// until either side closes.
async fn pipe_upgraded(client: hyper::upgrade::OnUpgrade, app: hyper::upgrade::OnUpgrade) {
    let (client, app) = match tokio::try_join!(client, app) {
        Ok(both) => both,
        Err(err) => {
            debug!(%err, "upgrade did not complete");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut app = hyper_util::rt::TokioIo::new(app);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut app).await {
        debug!(%err, "upgraded connection ended");
    }
}

/// gRPC calls get Envoy's gRPC local reply instead of a plain-text one.
fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The request as the pure engine sees it.
/// The request as the pure engine sees it: the authority and origin-form
/// target the request shape settled.
fn authz_request(
    req: &Request<Incoming>,
    ctx: &ConnContext,
    host: String,
    path: String,
) -> authz::Request {
    let headers = req
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    authz::Request {
        method: req.method().as_str().to_string(),
        path,
        host,
        headers,
        source_ip: ctx.peer.ip(),
        destination_ip: ctx.original_dst.ip(),
        destination_port: ctx.original_dst.port(),
    }
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Apply the decision's path and header edits to the request to forward.
fn prepare_forward(
    mut req: Request<Incoming>,
    decision: &Decision,
    authority: &str,
    ctx: &ConnContext,
    upgrade: Option<&HeaderValue>,
) -> anyhow::Result<Request<Incoming>> {
    if req.version() == http::Version::HTTP_2 {
        // An HTTP/2 request carries scheme and authority (`:scheme`,
        // `:authority`) next to the path.
        *req.uri_mut() = format!("http://{authority}{}", decision.forward_path).parse()?;
    } else {
        // Origin-form, and the authority policies matched as Host (an
        // absolute-form target's authority replaces the Host line).
        *req.uri_mut() = decision.forward_path.parse()?;
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_str(authority)?);
    }
    let headers = req.headers_mut();
    let te_trailers = headers
        .get_all(http::header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let named_in_connection: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        // `Connection: host` (or a framing header) is no hop-by-hop header
        // a client may have removed: the app would get a request without
        // the Host the policies matched.
        .filter(|v| !matches!(v.as_str(), "host" | "content-length" | "transfer-encoding"))
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named_in_connection.iter().map(String::as_str))
    {
        headers.remove(name);
    }
    for name in &decision.headers.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &decision.headers.add {
        headers.append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    if te_trailers {
        // gRPC needs it end to end, and it is the one TE value HTTP/2 keeps.
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = upgrade {
        // Hop-by-hop, but the very request the application must see.
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        headers.insert(http::header::UPGRADE, protocol.clone());
    }
    // The application sees 127.0.0.6 as its peer; tell it who the client was.
    headers.append(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_str(&ctx.peer.ip().to_string())?,
    );
    Ok(req)
}

/// Envoy-style local reply for a denial: plain text body, `www-authenticate`
/// for authentication failures. HEAD gets the headers only. A gRPC call gets
/// Envoy's gRPC form instead: HTTP 200, trailers-only, `grpc-status` mapped
/// from the HTTP status (`Grpc::Utility::httpToGrpcStatus`) and the text as
/// `grpc-message`.
fn local_reply(decision: &Decision, head: bool, grpc: bool) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(decision.status).unwrap_or(StatusCode::FORBIDDEN);
    if grpc {
        return grpc_reply(status, &decision.body);
    }
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(decision.body.clone())
    };
    let mut resp = Response::builder()
        .status(status)
        .header(http::header::CONTENT_LENGTH, decision.body.len());
    if !decision.body.is_empty() {
        // Envoy sends no content type with an empty local reply.
        resp = resp.header(http::header::CONTENT_TYPE, "text/plain");
    }
    if let Some(value) = decision
        .www_authenticate
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        resp = resp.header(http::header::WWW_AUTHENTICATE, value);
    }
    resp.body(Either::Left(Full::new(body)))
        .unwrap_or_else(|_| text_response(status, ""))
}

fn grpc_reply(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let code = match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    };
    let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(message)) {
        headers.insert("grpc-message", v);
    }
    resp
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, every
/// other byte as `%XX`.
fn grpc_percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn text_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
