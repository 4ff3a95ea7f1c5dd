//! AuthorizationPolicy rules → `model::Rule` (§3.3–§3.9, validation §3.14).

use super::model::*;
use super::parse::parse_cidr;
use super::raw;

type Fields = Vec<FieldMatch>;
type Convert = dyn Fn(&str) -> Option<ValueMatch>;

/// `notes` collects fields that are evaluated specially on jwtgate's path
/// (absent peer identity, fail-safe metadata), for a load-time warning.
pub fn rule(r: raw::Rule, action: Action, notes: &mut Vec<String>) -> Result<Rule, String> {
    let from = match r.from {
        None => None,
        Some(v) if v.is_empty() => return Err("from: must not be empty when present".into()),
        Some(v) => Some(
            v.into_iter()
                .enumerate()
                .map(|(i, f)| {
                    let s = f.source.ok_or(format!("from[{i}].source: required"))?;
                    source(s, action, notes).map_err(|m| format!("from[{i}].source.{m}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let to = match r.to {
        None => None,
        Some(v) if v.is_empty() => return Err("to: must not be empty when present".into()),
        Some(v) => Some(
            v.into_iter()
                .enumerate()
                .map(|(i, t)| {
                    let o = t.operation.ok_or(format!("to[{i}].operation: required"))?;
                    operation(o).map_err(|m| format!("to[{i}].operation.{m}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let mut when = Vec::new();
    for (i, c) in r.when.unwrap_or_default().into_iter().enumerate() {
        condition(c, action, notes, &mut when).map_err(|m| format!("when[{i}].{m}"))?;
    }
    Ok(Rule { from, to, when })
}

/// Adds `values` (positive) and `notValues` (negated) of one field.
fn push(
    out: &mut Fields,
    name: &str,
    attr: &Attribute,
    values: Option<Vec<String>>,
    negated: bool,
    convert: &dyn Fn(&str) -> Option<ValueMatch>,
) -> Result<(), String> {
    let values = values.unwrap_or_default();
    if values.is_empty() {
        // An empty list is an unset proto field.
        return Ok(());
    }
    let mut converted = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            return Err(format!("{name}[{i}]: must not be empty"));
        }
        converted.push(convert(v).ok_or_else(|| format!("{name}[{i}]: invalid value {v:?}"))?);
    }
    out.push(FieldMatch {
        attr: attr.clone(),
        negated,
        values: converted,
    });
    Ok(())
}

fn string(v: &str) -> Option<ValueMatch> {
    Some(ValueMatch::Str(StringPattern::parse(v)))
}

fn cidr(v: &str) -> Option<ValueMatch> {
    parse_cidr(v).map(|(ip, len)| ValueMatch::Cidr(ip, len))
}

fn port(v: &str) -> Option<ValueMatch> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u16>().ok().map(ValueMatch::Port)
}

/// §3.7: the value is split at its last `/` into `iss` and `sub` matchers.
pub fn principal(v: &str) -> Option<ValueMatch> {
    use StringPattern::*;
    let present = || Present;
    let (iss, sub) = if v == "*" {
        (present(), present())
    } else if let Some(rest) = v.strip_prefix('*') {
        match v.rsplit_once('/') {
            Some((i, s)) => {
                let iss = if i == "*" {
                    present()
                } else {
                    Suffix(i[1..].to_owned())
                };
                (iss, Exact(s.to_owned()))
            }
            None => (present(), Suffix(rest.to_owned())),
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        match v.rsplit_once('/') {
            Some((i, s)) => {
                let sub = if s == "*" {
                    present()
                } else {
                    Prefix(s[..s.len() - 1].to_owned())
                };
                (Exact(i.to_owned()), sub)
            }
            None => (Prefix(rest.to_owned()), present()),
        }
    } else {
        match v.rsplit_once('/') {
            Some((i, s)) => (Exact(i.to_owned()), Exact(s.to_owned())),
            None => (Exact(v.to_owned()), Exact(String::new())),
        }
    };
    Some(ValueMatch::Principal { iss, sub })
}

/// A path value: template (`{*}`, `{**}`, §3.12) or Istio string syntax.
fn path(v: &str) -> Option<ValueMatch> {
    if !v.contains('{') && !v.contains('}') {
        return string(v);
    }
    let mut parts = Vec::new();
    let segments: Vec<&str> = v.split('/').collect();
    let mut saw_rest = false;
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            parts.push(TemplatePart::Literal("/".into()));
        }
        match *seg {
            "{*}" if !saw_rest => parts.push(TemplatePart::OneSegment),
            "{**}" if !saw_rest => {
                saw_rest = true;
                parts.push(TemplatePart::Rest);
            }
            s if s.contains(['{', '}', '*']) || !s.bytes().all(is_pchar) => return None,
            s => parts.push(TemplatePart::Literal(s.to_owned())),
        }
    }
    Some(ValueMatch::PathTemplate(parts))
}

/// RFC 3986 `pchar` (percent signs allowed for `%XX`), what Istio's
/// `CheckValidPathTemplate` requires of literal template segments.
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@".contains(&b)
}

fn source(s: raw::Source, action: Action, notes: &mut Vec<String>) -> Result<Fields, String> {
    validate_service_accounts(&s)?;
    validate_trust_domains("trustDomains", s.trust_domains.as_deref())?;
    validate_trust_domains("notTrustDomains", s.not_trust_domains.as_deref())?;
    let mut out = Vec::new();
    let rp = Attribute::RequestPrincipal;
    push(
        &mut out,
        "requestPrincipals",
        &rp,
        s.request_principals,
        false,
        &principal,
    )?;
    push(
        &mut out,
        "notRequestPrincipals",
        &rp,
        s.not_request_principals,
        true,
        &principal,
    )?;
    push(
        &mut out,
        "ipBlocks",
        &Attribute::SourceIp,
        s.ip_blocks,
        false,
        &cidr,
    )?;
    push(
        &mut out,
        "notIpBlocks",
        &Attribute::SourceIp,
        s.not_ip_blocks,
        true,
        &cidr,
    )?;
    push(
        &mut out,
        "remoteIpBlocks",
        &Attribute::RemoteIp,
        s.remote_ip_blocks,
        false,
        &cidr,
    )?;
    push(
        &mut out,
        "notRemoteIpBlocks",
        &Attribute::RemoteIp,
        s.not_remote_ip_blocks,
        true,
        &cidr,
    )?;
    // Peer identities come from the mTLS certificate; jwtgate's path is
    // plaintext, so they are absent and evaluated as Envoy does then (§3.5).
    for (name, values, negated) in [
        ("principals", s.principals, false),
        ("notPrincipals", s.not_principals, true),
        ("namespaces", s.namespaces, false),
        ("notNamespaces", s.not_namespaces, true),
        ("serviceAccounts", s.service_accounts, false),
        ("notServiceAccounts", s.not_service_accounts, true),
        ("trustDomains", s.trust_domains, false),
        ("notTrustDomains", s.not_trust_domains, true),
    ] {
        if values.as_ref().is_some_and(|v| !v.is_empty()) {
            if action == Action::Custom {
                // §3.14: CUSTOM runs before authentication and may not use
                // identities.
                return Err(format!("{name}: not allowed with action CUSTOM"));
            }
            notes.push(format!("source.{name}"));
            push(
                &mut out,
                name,
                &Attribute::Absent(name.into()),
                values,
                negated,
                &string,
            )?;
        }
    }
    if action == Action::Custom && out.iter().any(|f| f.attr == rp) {
        return Err("requestPrincipals: not allowed with action CUSTOM".into());
    }
    if out.is_empty() {
        return Err("source: at least one field must be set".into());
    }
    Ok(out)
}

/// §3.14: at most 16, `sa` or `ns/sa`, no wildcard, not together with
/// principals or namespaces.
fn validate_service_accounts(s: &raw::Source) -> Result<(), String> {
    let set = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
    for (name, values) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        let Some(values) = values.as_ref().filter(|v| !v.is_empty()) else {
            continue;
        };
        if values.len() > 16 {
            return Err(format!("{name}: at most 16 values"));
        }
        if set(&s.principals)
            || set(&s.not_principals)
            || set(&s.namespaces)
            || set(&s.not_namespaces)
        {
            return Err(format!(
                "{name}: cannot be combined with principals or namespaces"
            ));
        }
        for (i, v) in values.iter().enumerate() {
            if v.contains('*') || v.split('/').count() > 2 || v.split('/').any(str::is_empty) {
                return Err(format!(
                    "{name}[{i}]: {v:?} must be `name` or `namespace/name`, without wildcards"
                ));
            }
        }
    }
    Ok(())
}

/// §3.14: one `*` at the start or the end at most, no `/`.
fn validate_trust_domains(name: &str, values: Option<&[String]>) -> Result<(), String> {
    for (i, v) in values.unwrap_or_default().iter().enumerate() {
        let inner = v.trim_start_matches('*').trim_end_matches('*');
        let stars = v.matches('*').count();
        if v.contains('/') || inner.contains('*') || stars > 1 {
            return Err(format!(
                "{name}[{i}]: {v:?} may only have one `*` at its start or end and no `/`"
            ));
        }
    }
    Ok(())
}

fn operation(o: raw::Operation) -> Result<Fields, String> {
    let mut out = Vec::new();
    push(&mut out, "hosts", &Attribute::Host, o.hosts, false, &string)?;
    push(
        &mut out,
        "notHosts",
        &Attribute::Host,
        o.not_hosts,
        true,
        &string,
    )?;
    push(&mut out, "ports", &Attribute::Port, o.ports, false, &port)?;
    push(
        &mut out,
        "notPorts",
        &Attribute::Port,
        o.not_ports,
        true,
        &port,
    )?;
    push(
        &mut out,
        "methods",
        &Attribute::Method,
        o.methods,
        false,
        &string,
    )?;
    push(
        &mut out,
        "notMethods",
        &Attribute::Method,
        o.not_methods,
        true,
        &string,
    )?;
    push(&mut out, "paths", &Attribute::Path, o.paths, false, &path)?;
    push(
        &mut out,
        "notPaths",
        &Attribute::Path,
        o.not_paths,
        true,
        &path,
    )?;
    if out.is_empty() {
        return Err("operation: at least one field must be set".into());
    }
    Ok(out)
}

/// Condition keys (§3.9) → attribute and value converter.
fn condition(
    c: raw::Condition,
    action: Action,
    notes: &mut Vec<String>,
    out: &mut Fields,
) -> Result<(), String> {
    let key = c.key.as_str();
    let (attr, convert): (Attribute, &Convert) = match key {
        "source.ip" => (Attribute::SourceIp, &cidr),
        "remote.ip" => (Attribute::RemoteIp, &cidr),
        "destination.ip" => (Attribute::DestinationIp, &cidr),
        "destination.port" => (Attribute::Port, &port),
        "request.auth.principal" => (Attribute::RequestPrincipal, &principal),
        "request.auth.audiences" => (Attribute::Claim(vec!["aud".into()]), &string),
        "request.auth.presenter" => (Attribute::Claim(vec!["azp".into()]), &string),
        "source.namespace"
        | "source.principal"
        | "source.serviceAccount"
        | "source.trustDomain"
        | "connection.sni" => (Attribute::Absent(key.into()), &string),
        k if k.starts_with("experimental.envoy.filters.") => {
            // Istio splits `experimental.envoy.filters.a.b[c]` into filter
            // and key; anything else is invalid.
            let ok = k.ends_with(']')
                && k.split_once('[').is_some_and(|(f, c)| {
                    f.len() > "experimental.envoy.filters.".len() && c.len() > 1
                });
            if !ok {
                return Err(format!(
                    "key: {k:?} must be experimental.envoy.filters.<filter>[<key>]"
                ));
            }
            (Attribute::Unsupported(key.into()), &string)
        }
        k => {
            if let Some(name) = bracketed(k, "request.headers") {
                match name.as_slice() {
                    [n] => (Attribute::Header(n.to_ascii_lowercase()), &string),
                    _ => return Err(format!("key: {k:?} must be request.headers[name]")),
                }
            } else if let Some(path) = bracketed(k, "request.auth.claims") {
                (Attribute::Claim(path), &string)
            } else {
                return Err(format!("key: unknown condition key {k:?}"));
            }
        }
    };
    if action == Action::Custom
        && (key.starts_with("request.auth.")
            || matches!(
                key,
                "source.namespace"
                    | "source.principal"
                    | "source.serviceAccount"
                    | "source.trustDomain"
            ))
    {
        return Err(format!("key: {key:?} not allowed with action CUSTOM"));
    }
    let values_empty = c.values.as_ref().is_none_or(|v| v.is_empty());
    let not_empty = c.not_values.as_ref().is_none_or(|v| v.is_empty());
    if values_empty && not_empty {
        return Err("values: values or notValues must be set".into());
    }
    if matches!(attr, Attribute::Unsupported(_) | Attribute::Absent(_)) {
        notes.push(format!("when.{key}"));
    }
    push(out, "values", &attr, c.values, false, convert)?;
    push(out, "notValues", &attr, c.not_values, true, convert)?;
    Ok(())
}

/// `prefix[a][b]` → `["a", "b"]`; `None` unless well formed and non-empty.
fn bracketed(key: &str, prefix: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix(prefix)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        if end == 0 {
            return None;
        }
        out.push(inner[..end].to_owned());
        rest = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}
