//! The ordered decision steps (§1): path normalization (HTTP connection
//! manager), CUSTOM, jwt_authn, AUDIT, DENY, ALLOW.

use crate::jwt::{authenticate, AuthnEdits, Keys, TokenCache};
use crate::policy::{Action, AuthzPolicy, JwksSource, JwtRule, WorkloadPolicy};

use super::matcher::{rule_matches, Attributes};
use super::path::normalize_borrowed;
use super::remote::{remote_ip, XFF_NUM_TRUSTED_HOPS};
use super::{Decision, HeaderEdits, JwksLookup, PathNormalization, Request};

/// Envoy's RBAC local reply (§3.13).
pub const RBAC_DENIED: &str = "RBAC: access denied";
/// `Http::Utility::buildOriginalUri` cuts the path at this length (§2.5).
const MAX_REALM_PATH: usize = 256;

pub fn evaluate(
    policy: &WorkloadPolicy,
    request: &Request,
    jwks: &dyn JwksLookup,
    now: u64,
    normalization: PathNormalization,
    cache: Option<&TokenCache>,
) -> Decision {
    // Borrowed from the request unless normalization changes the path.
    let Ok((path, query)) = normalize_borrowed(&request.path, normalization) else {
        return deny(
            400,
            "Bad Request",
            "path contains %00 (rejected like Envoy)".into(),
            None,
        );
    };
    let mut attrs = Attributes {
        method: &request.method,
        path: &path,
        query,
        host: &request.host,
        headers: &request.headers,
        port: request.destination_port,
        source_ip: request.source_ip,
        remote_ip: remote_ip(&request.headers, request.source_ip, XFF_NUM_TRUSTED_HOPS),
        destination_ip: request.destination_ip,
        identity: None,
    };

    // CUSTOM runs before authentication in Istio's chain. jwtgate has no
    // ext_authz client, so it does what istiod does for an unusable provider:
    // the CUSTOM rules become DENY rules (fail closed, §3.1). Requests the
    // rules do not match never reach ext_authz in Istio either, so they go on.
    if let Some((p, i)) = first_match(policy, Action::Custom, &attrs) {
        let mut d = deny(
            403,
            RBAC_DENIED,
            format!(
                "CUSTOM action is not supported (no ext_authz provider): policy {} rule {i} matched, denied as istiod does for an unknown provider",
                p.id()
            ),
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
    let rules = if preflight {
        &[][..]
    } else {
        &policy.jwt_rules[..]
    };
    let authn = authenticate(rules, &request.headers, query, &keys, now, cache);
    let identity = match authn.result {
        Ok(id) => id,
        Err(e) => {
            let mut realm_path = path.into_owned();
            if let Some(q) = query {
                realm_path.push('?');
                realm_path.push_str(q);
            }
            let mut d = deny(
                e.http_status(),
                &e.to_string(),
                format!("jwt_authn: {e}"),
                None,
            );
            d.www_authenticate = Some(format!(
                "Bearer realm=\"http://{}{}\", error=\"invalid_token\"",
                request.host,
                truncate(&realm_path, MAX_REALM_PATH)
            ));
            return d;
        }
    };
    attrs.identity = identity.as_ref();
    let principal = identity.as_ref().map(|id| id.principal());

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
            format!("denied by DENY policy {} rule {i}", p.id()),
            principal,
        );
        d.policy = Some(p.id());
        d.audit = audit;
        return d;
    }
    let has_allow = policy.authz.iter().any(|p| p.action == Action::Allow);
    let (reason, matched) = if !has_allow {
        ("no ALLOW policy applies".to_owned(), None)
    } else if let Some((p, i)) = first_match(policy, Action::Allow, &attrs) {
        (
            format!("allowed by ALLOW policy {} rule {i}", p.id()),
            Some(p.id()),
        )
    } else {
        let mut d = deny(
            403,
            RBAC_DENIED,
            "no ALLOW policy matched".into(),
            principal,
        );
        d.audit = audit;
        return d;
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
        forward_path: forward_path(&path, query, &authn.edits),
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
    policy
        .authz
        .iter()
        .filter(|p| p.action == action)
        .find_map(|p| {
            p.rules
                .iter()
                .position(|r| rule_matches(r, action, attrs))
                .map(|i| (&**p, i))
        })
}

fn deny(status: u16, body: &str, reason: String, principal: Option<String>) -> Decision {
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

fn non_empty_header(request: &Request, name: &str) -> bool {
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

/// Normalized path plus the query, minus token parameters that were consumed
/// (current Envoy removes them, §2.6).
fn forward_path(path: &str, query: Option<&str>, edits: &AuthnEdits) -> String {
    let Some(q) = query else {
        return path.to_owned();
    };
    if edits.remove_params.is_empty() {
        return join_query(path, q);
    }
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            !edits.remove_params.iter().any(|p| p == key)
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// `path?query` in one allocation of the right size.
fn join_query(path: &str, query: &str) -> String {
    let mut s = String::with_capacity(path.len() + 1 + query.len());
    s.push_str(path);
    s.push('?');
    s.push_str(query);
    s
}
