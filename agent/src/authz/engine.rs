//! The ordered decision steps (§1): path normalization (HTTP connection
//! manager), CUSTOM, jwt_authn, AUDIT, DENY, ALLOW. CUSTOM sees the client's
//! request; AUDIT, DENY and ALLOW see it as jwt_authn left it.

use crate::jwt::{self, Keys, TokenCache};
use crate::policy::{Action, AuthzPolicy, JwksSource, JwtRule, Rule, WorkloadPolicy};

use super::header_view::HeaderView;
use super::matcher::{rule_matches, Attributes};
use super::path::normalize_borrowed;
use super::remote::{remote_ip, XFF_NUM_TRUSTED_HOPS};
use super::{Decision, HeaderEdits, JwksLookup, PathNormalization, Reason, Request};

/// Envoy's RBAC local reply (§3.13).
pub const RBAC_DENIED: &str = "RBAC: access denied";
/// `Http::Utility::buildOriginalUri` cuts the path at this length (§2.5).
const MAX_REALM_PATH: usize = 256;

pub fn evaluate(
    policy: &WorkloadPolicy,
    request: &Request<'_>,
    jwks: &dyn JwksLookup,
    now: u64,
    normalization: PathNormalization,
    cache: Option<&TokenCache>,
) -> Decision {
    // Borrowed from the request unless normalization changes the path.
    let Ok((path, query)) = normalize_borrowed(request.path, normalization) else {
        // The connection manager's local reply when normalization fails:
        // 400 without a body (details `path_normalization_failed`).
        return deny(400, "", Reason::PathNormalizationFailed, None);
    };
    // X-Forwarded-For is read by the connection manager, before any filter.
    let remote = remote_ip(&request.headers, request.source_ip, XFF_NUM_TRUSTED_HOPS);
    let client = Attributes {
        method: request.method,
        path: &path,
        query,
        host: request.host,
        headers: HeaderView::client(&request.headers),
        port: request.destination_port,
        source_ip: request.source_ip,
        remote_ip: remote,
        destination_ip: request.destination_ip,
        identity: None,
    };

    // CUSTOM runs before authentication in Istio's chain, on the client's
    // request. jwtgate has no ext_authz client, so it does what istiod does
    // for an unusable provider: the CUSTOM rules become DENY rules (fail
    // closed, §3.1). Requests the rules do not match never reach ext_authz in
    // Istio either, so they go on.
    if let Some((p, i)) = first_match(policy, Action::Custom, &client) {
        let mut d = deny(
            403,
            RBAC_DENIED,
            Reason::Custom {
                policy: p.id(),
                rule: i,
                network: false,
            },
            None,
        );
        d.policy = Some(p.id());
        return d;
    }

    // jwt_authn, with Istio's `bypass_cors_preflight: true` (§2.5).
    let preflight = request.method == "OPTIONS"
        && non_empty_header(request, "origin")
        && non_empty_header(request, "access-control-request-method");
    let keys = |rule: &JwtRule| match &rule.jwks {
        JwksSource::Inline(set) => Keys::Set(set.clone()),
        JwksSource::Uri(uri) => jwks.jwks(uri).map_or(Keys::Unavailable, Keys::Set),
        JwksSource::Unset => Keys::Unavailable,
    };
    let authn = if preflight {
        jwt::bypass(&policy.jwt_rules)
    } else {
        jwt::authenticate(
            &policy.jwt_rules,
            &request.headers,
            query,
            &keys,
            now,
            cache,
        )
    };
    let identity = match authn.result {
        Ok(id) => id,
        Err(e) => {
            let mut realm_path = path.into_owned();
            if let Some(q) = query {
                realm_path.push('?');
                realm_path.push_str(q);
            }
            let mut d = deny(e.http_status(), &e.to_string(), Reason::Jwt(e), None);
            d.www_authenticate = Some(format!(
                "Bearer realm=\"http://{}{}\", error=\"invalid_token\"",
                request.host,
                truncate(&realm_path, MAX_REALM_PATH)
            ));
            return d;
        }
    };
    let principal = identity.as_ref().map(|id| id.principal());

    // The RBAC filters see the request jwt_authn left (§1, §2.6): output
    // headers cleared and written from the token, the consumed token header
    // and query parameter gone. The application receives the same request.
    let edits = &authn.edits;
    let query_after = edits.query_after(query);
    let attrs = Attributes {
        query: query_after.as_deref(),
        headers: HeaderView::edited(&request.headers, &edits.remove_headers, &edits.add_headers),
        identity: identity.as_ref(),
        ..client
    };

    // AUDIT only logs (§3.1: Envoy's LOG action sets `access_log_hint`);
    // DENY, then ALLOW.
    let audit = first_match(policy, Action::Audit, &attrs).map(|(p, i)| {
        tracing::info!(policy = %p.id(), rule = i, path = %path, principal = ?principal, "AUDIT policy matched");
        format!("{} rule {i}", p.id())
    });
    if let Some((p, i)) = first_match(policy, Action::Deny, &attrs) {
        let mut d = deny(
            403,
            RBAC_DENIED,
            Reason::Denied {
                policy: p.id(),
                rule: i,
                network: false,
            },
            principal,
        );
        d.policy = Some(p.id());
        d.audit = audit;
        return d;
    }
    let has_allow = policy.authz.iter().any(|p| p.action == Action::Allow);
    let (reason, matched) = if !has_allow {
        (Reason::NoAllowPolicy { network: false }, None)
    } else if let Some((p, i)) = first_match(policy, Action::Allow, &attrs) {
        (
            Reason::Allowed {
                policy: p.id(),
                rule: i,
                network: false,
            },
            Some(p.id()),
        )
    } else {
        let mut d = deny(
            403,
            RBAC_DENIED,
            Reason::NoAllowMatch { network: false },
            principal,
        );
        d.audit = audit;
        return d;
    };
    let forward_path = match query_after.as_deref() {
        Some(q) => join_query(&path, q),
        None => path.into_owned(),
    };
    Decision {
        status: 200,
        allowed: true,
        body: String::new(),
        reason,
        principal,
        policy: matched,
        audit,
        www_authenticate: None,
        forward_path,
        headers: HeaderEdits {
            remove: authn.edits.remove_headers,
            add: authn.edits.add_headers,
        },
    }
}

fn first_match<'p>(
    policy: &'p WorkloadPolicy,
    action: Action,
    attrs: &Attributes,
) -> Option<(&'p AuthzPolicy, usize)> {
    first_matching_rule(policy, action, |r| rule_matches(r, action, attrs))
}

/// The first policy with `action` and the index of its first rule that
/// `matches` (HTTP and network RBAC differ only in how a rule matches).
pub(super) fn first_matching_rule(
    policy: &WorkloadPolicy,
    action: Action,
    matches: impl Fn(&Rule) -> bool,
) -> Option<(&AuthzPolicy, usize)> {
    policy
        .authz
        .iter()
        .filter(|p| p.action == action)
        .find_map(|p| p.rules.iter().position(&matches).map(|i| (&**p, i)))
}

fn deny(status: u16, body: &str, reason: Reason, principal: Option<String>) -> Decision {
    Decision {
        status,
        allowed: false,
        body: body.to_owned(),
        reason,
        principal,
        policy: None,
        audit: None,
        www_authenticate: None,
        forward_path: String::new(),
        headers: HeaderEdits::default(),
    }
}

fn non_empty_header(request: &Request<'_>, name: &str) -> bool {
    request
        .headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case(name) && !v.trim().is_empty())
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `path?query` in one allocation of the right size.
fn join_query(path: &str, query: &str) -> String {
    let mut s = String::with_capacity(path.len() + 1 + query.len());
    s.push_str(path);
    s.push('?');
    s.push_str(query);
    s
}
