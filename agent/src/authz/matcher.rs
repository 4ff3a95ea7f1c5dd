//! Rule matching for AuthorizationPolicy (§3.3–§3.10), mirroring the Envoy
//! matchers Istio generates so absent attributes behave the same: a positive
//! field never matches a missing attribute, its `not` form always does.

use std::borrow::Cow;
use std::net::IpAddr;

use serde_json::Value;

use super::header_view::HeaderView;
use crate::jwt::Identity;
use crate::policy::{Action, Attribute, FieldMatch, Rule, StringPattern, TemplatePart, ValueMatch};

/// The request as the RBAC filters see it (after normalization and JWT).
pub struct Attributes<'a> {
    pub method: &'a str,
    /// Normalized path without query.
    pub path: &'a str,
    /// The query (without `?`) after jwt_authn removed consumed token
    /// parameters, only for `request.headers[:path]`.
    pub query: Option<&'a str>,
    pub host: &'a str,
    /// The header lines after jwt_authn's edits (`header_view`).
    pub headers: HeaderView<'a>,
    pub port: u16,
    /// The connection's peer (`ipBlocks`, `source.ip`).
    pub source_ip: IpAddr,
    /// The client after X-Forwarded-For (`remoteIpBlocks`, `remote.ip`),
    /// see `remote::remote_ip`.
    pub remote_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub identity: Option<&'a Identity>,
}

/// Does `rule` of a policy with `action` match?
pub fn rule_matches(rule: &Rule, action: Action, a: &Attributes) -> bool {
    let all = |fields: &[FieldMatch]| fields.iter().all(|f| field_matches(f, action, a));
    rule.from.as_ref().is_none_or(|s| s.iter().any(|f| all(f)))
        && rule.to.as_ref().is_none_or(|o| o.iter().any(|f| all(f)))
        && all(&rule.when)
}

/// Does `rule` match a TCP connection, as Envoy's network RBAC filter that
/// Istio generates for TCP filter chains sees it (§3.11)? HTTP-only fields
/// cannot be evaluated on a connection: an ALLOW rule using any of them is
/// dropped (it matches nothing), a DENY/AUDIT/CUSTOM rule loses just those
/// fields (so it matches more). `a` carries no HTTP attributes.
pub fn rule_matches_connection(rule: &Rule, action: Action, a: &Attributes) -> bool {
    let fields = rule
        .from
        .iter()
        .chain(rule.to.iter())
        .flatten()
        .flatten()
        .chain(&rule.when);
    if action == Action::Allow && fields.clone().any(|f| is_http_only(&f.attr)) {
        return false;
    }
    let all = |fields: &[FieldMatch]| {
        fields
            .iter()
            .filter(|f| !is_http_only(&f.attr))
            .all(|f| field_matches(f, action, a))
    };
    rule.from.as_ref().is_none_or(|s| s.iter().any(|f| all(f)))
        && rule.to.as_ref().is_none_or(|o| o.iter().any(|f| all(f)))
        && all(&rule.when)
}

/// Attributes that only exist in an HTTP request (Istio's `generator.go`
/// rejects them for TCP: hosts, methods, paths, requestPrincipals,
/// request.headers, request.auth.*).
fn is_http_only(attr: &Attribute) -> bool {
    matches!(
        attr,
        Attribute::RequestPrincipal
            | Attribute::Path
            | Attribute::Method
            | Attribute::Host
            | Attribute::Header(_)
            | Attribute::Claim(_)
    )
}

fn field_matches(f: &FieldMatch, action: Action, a: &Attributes) -> bool {
    if let Attribute::Absent(_) = f.attr {
        // No value on a plaintext connection: Envoy's positive matcher is
        // false, its negation true, whatever the action (§3.5, §3.10).
        return f.negated;
    }
    if let Attribute::Unsupported(_) = f.attr {
        // Fail safe: an ALLOW rule cannot be satisfied, a DENY rule loses
        // the constraint (so it denies more).
        return action != Action::Allow;
    }
    let any = f.values.iter().any(|v| value_matches(&f.attr, v, a));
    any != f.negated
}

fn value_matches(attr: &Attribute, v: &ValueMatch, a: &Attributes) -> bool {
    match (attr, v) {
        (Attribute::RequestPrincipal, ValueMatch::Principal { iss, sub }) => {
            a.identity.is_some_and(|id| {
                metadata_str(iss, id.iss.as_deref()) && metadata_str(sub, id.sub.as_deref())
            })
        }
        (Attribute::Path, ValueMatch::Str(p)) => str_match(p, Some(a.path), false),
        (Attribute::Path, ValueMatch::PathTemplate(t)) => template_match(t, a.path),
        (Attribute::Method, ValueMatch::Str(p)) => str_match(p, Some(a.method), false),
        (Attribute::Host, ValueMatch::Str(p)) => {
            // `:authority` matching ignores case (§3.4); `*` = present.
            matches!(p, StringPattern::Present) || str_match(p, Some(a.host), true)
        }
        (Attribute::Port, ValueMatch::Port(p)) => a.port == *p,
        (Attribute::SourceIp, ValueMatch::Cidr(net, len)) => in_cidr(a.source_ip, *net, *len),
        (Attribute::RemoteIp, ValueMatch::Cidr(net, len)) => in_cidr(a.remote_ip, *net, *len),
        (Attribute::DestinationIp, ValueMatch::Cidr(net, len)) => {
            in_cidr(a.destination_ip, *net, *len)
        }
        (Attribute::Header(name), ValueMatch::Str(p)) => {
            // `*` = present_match: true even for an empty value (§3.4).
            let matches =
                |v: &str| matches!(p, StringPattern::Present) || str_match(p, Some(v), false);
            match pseudo_header(a, name) {
                Some(v) => matches(&v),
                // Each line on its own, any line matching (Envoy's RBAC
                // header matcher since CVE-2026-26308, Istio 1.29.1): joining
                // `X-Role: user` + `X-Role: admin` into `user,admin` let that
                // request past a DENY on `admin`.
                None => a.headers.values(name).any(matches),
            }
        }
        (Attribute::Claim(path), ValueMatch::Str(p)) => a
            .identity
            .and_then(|id| {
                let mut it = path.iter();
                let mut v = id.claims.get(it.next()?)?;
                for k in it {
                    v = v.as_object()?.get(k)?;
                }
                Some(claim_match(p, v))
            })
            .unwrap_or(false),
        _ => false,
    }
}

/// The pseudo-headers HTTP/1 requests get from the request line and `Host`
/// (Envoy stores `Host` as `:authority`); `None` for ordinary headers.
fn pseudo_header<'a>(a: &Attributes<'a>, name: &str) -> Option<Cow<'a, str>> {
    Some(match name {
        ":authority" | "host" => Cow::Borrowed(a.host),
        ":method" => Cow::Borrowed(a.method),
        ":path" => match a.query {
            Some(q) => Cow::Owned(format!("{}?{q}", a.path)),
            None => Cow::Borrowed(a.path),
        },
        // jwtgate only serves plaintext HTTP.
        ":scheme" => Cow::Borrowed("http"),
        _ => return None,
    })
}

/// Envoy metadata string matcher on the JWT payload: only strings match.
fn metadata_str(p: &StringPattern, v: Option<&str>) -> bool {
    str_match(p, v, false)
}

/// §3.8: a string claim, or a list with a matching string element.
fn claim_match(p: &StringPattern, v: &Value) -> bool {
    match v {
        Value::String(s) => str_match(p, Some(s), false),
        Value::Array(items) => items
            .iter()
            .any(|i| i.as_str().is_some_and(|s| str_match(p, Some(s), false))),
        _ => false,
    }
}

/// Exact/prefix/suffix, and `*` as regex `.+` (non-empty). `ignore_case`
/// compares ASCII case-insensitively, in place: no lower-cased copies of the
/// value or the pattern per comparison.
fn str_match(p: &StringPattern, v: Option<&str>, ignore_case: bool) -> bool {
    let Some(v) = v else { return false };
    let eq = |a: &[u8], b: &[u8]| {
        if ignore_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    let v = v.as_bytes();
    match p {
        StringPattern::Exact(e) => eq(v, e.as_bytes()),
        StringPattern::Prefix(x) => v.len() >= x.len() && eq(&v[..x.len()], x.as_bytes()),
        StringPattern::Suffix(x) => v.len() >= x.len() && eq(&v[v.len() - x.len()..], x.as_bytes()),
        StringPattern::Present => !v.is_empty(),
    }
}

/// `{*}` = one non-empty segment, `{**}` = anything (§3.12).
fn template_match(parts: &[TemplatePart], path: &str) -> bool {
    match parts.split_first() {
        None => path.is_empty(),
        Some((TemplatePart::Literal(l), rest)) => path
            .strip_prefix(l.as_str())
            .is_some_and(|p| template_match(rest, p)),
        Some((TemplatePart::OneSegment, rest)) => {
            let end = path.find('/').unwrap_or(path.len());
            end > 0 && template_match(rest, &path[end..])
        }
        Some((TemplatePart::Rest, rest)) => (0..=path.len())
            .filter(|i| path.is_char_boundary(*i))
            .any(|i| template_match(rest, &path[i..])),
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    let ip = match (ip, net) {
        (IpAddr::V6(v6), IpAddr::V4(_)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        _ => ip,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}
