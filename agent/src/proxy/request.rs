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
}

/// Decide and answer one request.
pub async fn handle(req: Request<Incoming>, ctx: &ConnContext) -> Response<ProxyBody> {
    let policy = ctx.workload.policy.borrow().clone();
    if let Some(decision) = declared_probe(&req, ctx, &policy) {
        ctx.workload
            .stats
            .probes_passed
            .fetch_add(1, Ordering::Relaxed);
        return forward(req, &decision, ctx).await;
    }
    let view = authz_request(&req, ctx);
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
        return local_reply(&decision, req.method() == http::Method::HEAD);
    }
    stats.allowed.fetch_add(1, Ordering::Relaxed);
    forward(req, &decision, ctx).await
}

/// A kubelet probe the pod declares, sent from a probe source: it passes
/// without a token, forwarded exactly as sent, minus the headers jwt_authn
/// would have set (nobody may smuggle a claim header along with it).
fn declared_probe(
    req: &Request<Incoming>,
    ctx: &ConnContext,
    policy: &WorkloadPolicy,
) -> Option<Decision> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
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
    ctx: &ConnContext,
) -> Response<ProxyBody> {
    let stats = &ctx.workload.stats;
    let forwarded = match prepare_forward(req, decision, ctx) {
        Ok(req) => req,
        Err(err) => {
            debug!(%err, "cannot rewrite the request");
            return text_response(StatusCode::BAD_REQUEST, "Bad Request");
        }
    };
    match upstream::send(ctx, forwarded).await {
        Ok(resp) => resp.map(Either::Right),
        Err(err) => {
            stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
            debug!(dst = %ctx.original_dst, err = %format!("{err:#}"), "upstream failed");
            text_response(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_FAILURE)
        }
    }
}

/// The request as the pure engine sees it.
fn authz_request(req: &Request<Incoming>, ctx: &ConnContext) -> authz::Request {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
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
    ctx: &ConnContext,
) -> anyhow::Result<Request<Incoming>> {
    *req.uri_mut() = decision.forward_path.parse()?;
    let headers = req.headers_mut();
    let named_in_connection: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
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
    // The application sees 127.0.0.6 as its peer; tell it who the client was.
    headers.append(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_str(&ctx.peer.ip().to_string())?,
    );
    Ok(req)
}

/// Envoy-style local reply for a denial: plain text body, `www-authenticate`
/// for authentication failures. HEAD gets the headers only.
fn local_reply(decision: &Decision, head: bool) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(decision.status).unwrap_or(StatusCode::FORBIDDEN);
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(decision.body.clone())
    };
    let mut resp = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .header(http::header::CONTENT_LENGTH, decision.body.len());
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
