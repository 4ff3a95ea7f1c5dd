//! One request: translate it for `authz::evaluate`, then answer locally or
//! forward. The only place where a `Decision` becomes an HTTP response.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tracing::debug;

use super::{upstream, Inbound, Shared, Workload};
use crate::access_log::{self, Entry};
use crate::authz::request_shape::{self, head_size, LocalReply, RequestHead, ShapeOptions};
use crate::authz::{self, Decision, HeaderEdits, Reason};
use crate::inbound::probes::is_probe_request;
use crate::metrics::{InboundEvent, Protocol, RequestKey};
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
    /// `peer`'s address as the `x-forwarded-for` value of every request.
    pub forwarded_for: HeaderValue,
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
    /// The source's requests in progress (`limits::Admitted::requests`).
    pub source_requests: Arc<std::sync::atomic::AtomicUsize>,
}

/// Decide and answer one request.
///
/// One flat `async fn` on purpose: every nested `async fn` is a future
/// moved into its caller's state when called, so a request used to copy
/// its futures level by level (≈ 20 KB of `memcpy` per request through five
/// levels, docs/performance.md). The only awaits here are the decision (a
/// refetch of keys, rarely) and the upstream exchange; everything around
/// them is synchronous.
pub async fn handle(req: Request<Incoming>, ctx: &ConnContext) -> Response<ProxyBody> {
    let started = Started::now();
    let stats = &ctx.workload.stats;
    let log = &ctx.shared.access_log;
    let protocol = if is_grpc(&req) {
        Protocol::Grpc
    } else {
        Protocol::Http
    };
    let head = req.method() == http::Method::HEAD;
    // What Envoy's codec and connection manager refuse, before any filter;
    // and the authority and path every later step sees.
    let (authority, target) = match admit(&req, ctx.shared.accept_http_10) {
        Ok(admitted) => admitted,
        Err(reply) => {
            stats.event(InboundEvent::RefusedShape);
            debug!(peer = %ctx.peer, status = reply.status, details = reply.details, "request refused before any filter");
            let reason = Reason::Refused {
                details: reply.details,
            };
            let resp = shape_reply(&reply, head);
            let answered = Answered::local(&reason, None, "DPE", &resp);
            answered.count(ctx, &started, protocol);
            log.denied(answered.entry(ctx, &started, RequestLog::of(&req, None)));
            return resp;
        }
    };
    let policy = ctx.workload.policy.borrow().clone();
    let decision = if let Some(decision) = declared_probe(&req, &target, ctx, &policy) {
        stats.event(InboundEvent::ProbePassed);
        decision
    } else {
        let lossy = lossy_values(&req);
        let view = authz_request(&req, ctx, &authority, &target, &lossy);
        let deciding = Instant::now();
        let decision = jwks::decide(
            &ctx.shared.jwks,
            &policy,
            &view,
            unix_now(),
            ctx.shared.normalization,
            Some(&ctx.shared.token_cache),
        )
        .await;
        stats.decision(deciding.elapsed());
        debug!(
            peer = %ctx.peer,
            method = %view.method,
            path = %view.path,
            status = decision.status,
            reason = %decision.reason,
            "decision"
        );
        if !decision.allowed {
            if decision.status == 401 {
                ctx.shared
                    .bans
                    .record_failure(ctx.peer.ip(), ctx.original_dst.ip());
            }
            let resp = local_reply(&decision, head, protocol == Protocol::Grpc);
            let answered =
                Answered::local(&decision.reason, decision.principal.clone(), "-", &resp);
            answered.count(ctx, &started, protocol);
            log.denied(answered.entry(ctx, &started, RequestLog::of(&req, Some(&authority))));
            return resp;
        }
        decision
    };

    // Allowed: forward, and stream the answer back. The log line is taken
    // before forwarding consumes the request, and only when it will be
    // written: unsampled allows cost no allocation here.
    let logged = log
        .wants_allowed()
        .then(|| RequestLog::of(&req, Some(&authority)));
    let upgrade = upgrade_protocol(&req);
    let (resp, flags) = match prepare_forward(req, &decision, &authority, ctx, upgrade.as_ref()) {
        Ok(mut forwarded) => {
            // The client's side of an upgrade, available once we answer 101.
            let client_upgrade = upgrade
                .is_some()
                .then(|| hyper::upgrade::on(&mut forwarded));
            let answer = upstream::send(ctx, forwarded).await;
            relay(answer, client_upgrade, ctx)
        }
        Err(err) => {
            debug!(%err, "cannot rewrite the request");
            (text_response(StatusCode::BAD_REQUEST, "Bad Request"), "-")
        }
    };
    let answered = Answered {
        reason: &decision.reason,
        principal: decision.principal.clone(),
        flags,
        code: resp.status().as_u16(),
        bytes_sent: content_length(resp.headers()),
        allowed: true,
    };
    answered.count(ctx, &started, protocol);
    if let Some(request) = logged {
        log.allowed(answered.entry(ctx, &started, request));
    }
    resp
}

/// The last touch on every response of an HTTP/1 connection that drains:
/// `Connection: close`, so the client reconnects for its next request, to
/// whoever holds the steering now (hyper closes after this response).
pub fn finish(
    mut resp: Response<ProxyBody>,
    http1: bool,
    ctx: &ConnContext,
) -> Response<ProxyBody> {
    if http1
        && ctx.closing.load(Ordering::Relaxed)
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Count and log `resp`, the 403 `upgrade::screen` gives an upgrade the
/// proxy does not carry: a request refused before any filter, as Envoy's
/// connection manager refuses it (`upgrade_failed`).
pub fn refused_upgrade(
    req: &Request<Incoming>,
    resp: Response<ProxyBody>,
    ctx: &ConnContext,
) -> Response<ProxyBody> {
    let started = Started::now();
    ctx.workload.stats.event(InboundEvent::RefusedShape);
    let reason = Reason::Refused {
        details: "upgrade_failed",
    };
    let answered = Answered::local(&reason, None, "-", &resp);
    answered.count(ctx, &started, Protocol::Http);
    ctx.shared
        .access_log
        .denied(answered.entry(ctx, &started, RequestLog::of(req, None)));
    resp
}

/// When a request arrived: the wall clock for the log, the monotonic one
/// for durations.
struct Started {
    at: SystemTime,
    instant: Instant,
}

impl Started {
    fn now() -> Started {
        Started {
            at: SystemTime::now(),
            instant: Instant::now(),
        }
    }
}

/// The request's side of an access-log line.
struct RequestLog {
    method: String,
    path: String,
    authority: Option<String>,
    protocol: &'static str,
    user_agent: Option<String>,
    x_forwarded_for: Option<String>,
    bytes_received: Option<u64>,
}

impl RequestLog {
    /// `authority`: what the request shape settled, when it got that far.
    fn of(req: &Request<Incoming>, authority: Option<&str>) -> RequestLog {
        let header = |name: http::header::HeaderName| {
            req.headers()
                .get(name)
                .map(|v| access_log::bounded(&String::from_utf8_lossy(v.as_bytes())))
        };
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_string());
        RequestLog {
            method: access_log::bounded(req.method().as_str()),
            path: access_log::path_without_query(&target),
            authority: authority
                .map(access_log::bounded)
                .or_else(|| header(http::header::HOST)),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_09 => "HTTP/0.9",
                _ => "HTTP/1.1",
            },
            user_agent: header(http::header::USER_AGENT),
            x_forwarded_for: header(http::HeaderName::from_static("x-forwarded-for")),
            bytes_received: content_length(req.headers()),
        }
    }
}

/// The answer's side: what metrics and the access log record.
struct Answered<'a> {
    reason: &'a Reason,
    principal: Option<String>,
    /// Envoy's response flags.
    flags: &'static str,
    code: u16,
    bytes_sent: Option<u64>,
    allowed: bool,
}

impl<'a> Answered<'a> {
    fn local(
        reason: &'a Reason,
        principal: Option<String>,
        flags: &'static str,
        resp: &Response<ProxyBody>,
    ) -> Answered<'a> {
        Answered {
            reason,
            principal,
            flags,
            code: resp.status().as_u16(),
            bytes_sent: content_length(resp.headers()),
            allowed: false,
        }
    }

    fn count(&self, ctx: &ConnContext, started: &Started, protocol: Protocol) {
        ctx.workload.stats.request(
            RequestKey {
                protocol,
                code: self.code,
                flags: self.flags,
                reason: self.reason.metric_label(),
            },
            started.instant.elapsed(),
        );
    }

    fn entry(&self, ctx: &ConnContext, started: &Started, request: RequestLog) -> Entry {
        let rule = self.reason.rule();
        Entry {
            start_time: access_log::rfc3339(started.at),
            workload: ctx.workload.key.clone(),
            decision: if self.allowed { "allowed" } else { "denied" },
            protocol: request.protocol,
            method: Some(request.method),
            authority: request.authority,
            path: Some(request.path),
            response_code: self.code,
            response_flags: self.flags,
            response_code_details: self.reason.response_code_details(),
            reason: self.reason.to_string(),
            policy: rule.map(|(p, _)| p.to_string()),
            rule: rule.map(|(_, r)| r),
            principal: self.principal.clone(),
            duration_ms: started.instant.elapsed().as_millis() as u64,
            bytes_received: request.bytes_received,
            bytes_sent: self.bytes_sent,
            downstream_remote_address: ctx.peer,
            downstream_local_address: ctx.original_dst,
            user_agent: request.user_agent,
            x_forwarded_for: request.x_forwarded_for,
        }
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `authz::request_shape::admit` on a hyper request: `(authority,
/// origin-form target)`, or Envoy's local reply.
fn admit(req: &Request<Incoming>, accept_http_10: bool) -> Result<(String, String), LocalReply> {
    let h2 = req.version() == http::Version::HTTP_2;
    let uri = req.uri();
    // The Host values, on the stack in the usual case of one: a Vec only
    // when a request repeats Host.
    let one: [&[u8]; 1];
    let many: Vec<&[u8]>;
    let hosts: &[&[u8]] = match (h2.then(|| uri.authority()).flatten(), host_lines(req)) {
        // `:authority` is the host of an HTTP/2 request when it has one.
        (Some(authority), _) => {
            one = [authority.as_str().as_bytes()];
            &one
        }
        (None, HostLines::None) => &[],
        (None, HostLines::One(host)) => {
            one = [host];
            &one
        }
        (None, HostLines::Many) => {
            many = req
                .headers()
                .get_all(http::header::HOST)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect();
            &many
        }
    };
    let target: std::borrow::Cow<str> = if h2 {
        uri.path_and_query().map_or("", |p| p.as_str()).into()
    } else if let (None, None, Some(origin)) = (uri.scheme(), uri.authority(), uri.path_and_query())
    {
        // Origin-form, nearly every request: the target is its path and
        // query as sent, borrowed rather than formatted into a new string.
        origin.as_str().into()
    } else {
        // As on the request line: absolute-form or `*`.
        uri.to_string().into()
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
        hosts,
        head_bytes,
        header_count: req.headers().len(),
    };
    let admitted = request_shape::admit(&head, ShapeOptions { accept_http_10 })?;
    Ok((admitted.authority.into_owned(), admitted.target.to_string()))
}

/// How many Host lines a request has.
enum HostLines<'a> {
    None,
    One(&'a [u8]),
    Many,
}

fn host_lines<B>(req: &Request<B>) -> HostLines<'_> {
    let mut lines = req.headers().get_all(http::header::HOST).iter();
    match (lines.next(), lines.next()) {
        (None, _) => HostLines::None,
        (Some(host), None) => HostLines::One(host.as_bytes()),
        _ => HostLines::Many,
    }
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
        reason: Reason::DeclaredProbe,
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

/// The application's answer as the client's response, with Envoy's
/// response flags (`UF` when the application cannot be reached). After a
/// 101 both upgraded connections become one byte pipe.
fn relay(
    answer: anyhow::Result<Response<Incoming>>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ctx: &ConnContext,
) -> (Response<ProxyBody>, &'static str) {
    match answer {
        Ok(mut resp) => {
            if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status())
            {
                let app = hyper::upgrade::on(&mut resp);
                tokio::spawn(pipe_upgraded(client, app));
            }
            (resp.map(Either::Right), "-")
        }
        Err(err) => {
            debug!(dst = %ctx.original_dst, err = %format!("{err:#}"), "upstream failed");
            (
                text_response(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_FAILURE),
                "UF",
            )
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

/// The request as the pure engine sees it: the authority and origin-form
/// target the request shape settled, and every header line borrowed from
/// hyper's map (`lossy`: the values that are not visible ASCII, decoded).
fn authz_request<'a>(
    req: &'a Request<Incoming>,
    ctx: &ConnContext,
    host: &'a str,
    path: &'a str,
    lossy: &'a [String],
) -> authz::Request<'a> {
    let mut lossy = lossy.iter();
    let headers = req
        .headers()
        .iter()
        .map(|(name, value)| {
            // `to_str` accepts only visible ASCII, which the lossy
            // conversion would return unchanged; its check is a plain byte
            // loop, cheaper than UTF-8 decoding the 1 KB token line.
            let value = match value.to_str() {
                Ok(text) => text,
                Err(_) => lossy.next().map_or("", String::as_str),
            };
            (name.as_str(), value)
        })
        .collect();
    authz::Request {
        method: req.method().as_str(),
        path,
        host,
        headers,
        source_ip: ctx.peer.ip(),
        destination_ip: ctx.original_dst.ip(),
        destination_port: ctx.original_dst.port(),
    }
}

/// The header values, in map order, that are not visible ASCII, as lossy
/// UTF-8 (what the engine matches for them): nearly always none, and then
/// no allocation.
fn lossy_values(req: &Request<Incoming>) -> Vec<String> {
    req.headers()
        .values()
        .filter(|v| v.to_str().is_err())
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
/// As `HeaderName`s, so removing them needs no parsing of the name per
/// request.
const HOP_BY_HOP: [HeaderName; 8] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
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
        // Most requests already are exactly that (origin-form, path
        // unchanged by normalization, one Host line equal to the
        // authority): then the request keeps its own URI and Host, which
        // saves parsing the path again and copying both per request.
        let uri = req.uri();
        let same_uri = uri.scheme().is_none()
            && uri.authority().is_none()
            && uri.path_and_query().map(|p| p.as_str()) == Some(decision.forward_path.as_str());
        if !same_uri {
            *req.uri_mut() = decision.forward_path.parse()?;
        }
        let mut hosts = req.headers().get_all(http::header::HOST).iter();
        let same_host = matches!(
            (hosts.next(), hosts.next()),
            (Some(host), None) if host.as_bytes() == authority.as_bytes()
        );
        if !same_host {
            req.headers_mut()
                .insert(http::header::HOST, HeaderValue::from_str(authority)?);
        }
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
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    for name in &named_in_connection {
        headers.remove(name.as_str());
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
        ctx.forwarded_for.clone(),
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
