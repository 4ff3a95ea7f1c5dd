//! Policy documents → validated policies. Validation follows Istio admission
//! (§2.8, §3.14, and the webhook's `istio.io/dry-run` checks) so that what
//! Kubernetes would reject is reported here too and left out, while the
//! other resources still load.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::document::PolicyDocument;
use super::model::*;
use super::raw;
use super::PolicyError;
use crate::jwt::{JwkSet, TokenLocation};

/// Which workloads a resource applies to.
#[derive(Debug, Clone)]
pub enum Attachment {
    /// `selector` absent (`None`) or its `matchLabels`.
    Selector(Option<BTreeMap<String, String>>),
    /// `targetRef(s)`: gateways only, ignored for plain workloads (§2.1).
    TargetRef,
}

#[derive(Debug, Clone)]
pub struct RequestAuthn {
    /// File it came from and `Kind ns/name`: what the last-good bookkeeping of
    /// `PolicySet::keep_last_good` matches errors against.
    pub origin: String,
    pub resource: String,
    pub namespace: String,
    pub attachment: Attachment,
    pub rules: Vec<Arc<JwtRule>>,
}

#[derive(Debug, Clone)]
pub struct AuthzEntry {
    pub origin: String,
    pub resource: String,
    pub attachment: Attachment,
    pub policy: Arc<AuthzPolicy>,
    /// `istio.io/dry-run` true: Istio makes it Envoy shadow rules, counted in
    /// stats and never enforced; jwtgate leaves it out of every decision.
    pub dry_run: bool,
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub authns: Vec<RequestAuthn>,
    pub authzs: Vec<AuthzEntry>,
    /// Loaded, but with fields that fail safe (`Attribute::Unsupported`).
    pub warnings: Vec<PolicyError>,
}

pub fn parse_documents(docs: &[PolicyDocument]) -> (Parsed, Vec<PolicyError>) {
    let mut out = Parsed::default();
    let mut errors = Vec::new();
    for doc in docs {
        if let Err(message) = parse_document(doc, &mut out) {
            errors.push(err(&doc.origin, &doc.resource(), message));
        }
    }
    (out, errors)
}

fn parse_document(doc: &PolicyDocument, out: &mut Parsed) -> Result<(), String> {
    let api = doc.api_version.as_str();
    if api != "security.istio.io/v1" && api != "security.istio.io/v1beta1" {
        return Err(format!(
            "apiVersion {api} is not supported (use security.istio.io/v1 or v1beta1)"
        ));
    }
    let (origin, resource) = (doc.origin.as_str(), doc.resource());
    let (namespace, name) = (&doc.metadata.namespace, &doc.metadata.name);
    let dry_run_annotation = doc.metadata.annotations.get(DRY_RUN).map(String::as_str);
    match doc.kind.as_str() {
        "RequestAuthentication" => {
            if dry_run_annotation.is_some() {
                // Istio's validation: only AuthorizationPolicy supports it.
                return Err(format!(
                    "metadata.annotations.{DRY_RUN}: only AuthorizationPolicy supports this annotation"
                ));
            }
            let mut ra = request_authn(namespace, name, typed(doc.spec.clone())?)?;
            ra.origin = origin.to_owned();
            ra.resource = resource;
            out.authns.push(ra);
        }
        "AuthorizationPolicy" => {
            let ((policy, attachment), notes) =
                authz_policy(namespace, name, typed(doc.spec.clone())?)?;
            let dry_run = match dry_run_annotation {
                None => false,
                Some(value) => dry_run(value, policy.action)?,
            };
            for note in authz_warnings(&policy, &notes) {
                out.warnings.push(err(origin, &resource, note));
            }
            out.authzs.push(AuthzEntry {
                origin: origin.to_owned(),
                resource,
                attachment,
                policy: Arc::new(policy),
                dry_run,
            });
        }
        other => return Err(format!("kind {other} is not a policy kind")),
    }
    Ok(())
}

/// The annotation that turns an AuthorizationPolicy into shadow rules (§3.1).
pub const DRY_RUN: &str = "istio.io/dry-run";

/// `istio.io/dry-run` as istiod reads it (Go's `strconv.ParseBool`), with
/// the checks of Istio's validating webhook: the value must parse, and only
/// ALLOW and DENY policies may carry the annotation at all.
fn dry_run(value: &str, action: Action) -> Result<bool, String> {
    if !matches!(action, Action::Allow | Action::Deny) {
        return Err(format!(
            "metadata.annotations.{DRY_RUN}: only supported with action ALLOW or DENY"
        ));
    }
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "metadata.annotations.{DRY_RUN}: {value:?} is not a boolean"
        )),
    }
}

/// Load-time warnings for a policy that loaded but is evaluated in a way its
/// author may not expect on jwtgate's path.
fn authz_warnings(policy: &AuthzPolicy, notes: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if policy.action == Action::Custom {
        out.push(
            "action CUSTOM is not supported (jwtgate has no ext_authz client): requests matching \
             its rules are denied with 403, as istiod does for an unknown provider"
                .to_owned(),
        );
    }
    let (absent, failsafe): (Vec<&String>, Vec<&String>) = notes
        .iter()
        .partition(|n| !n.starts_with("when.experimental."));
    if !absent.is_empty() {
        out.push(format!(
            "{} need an mTLS peer or TLS; jwtgate sees plaintext, so (as Envoy on plaintext) \
             the positive form never matches and the not-form always does",
            join(&absent)
        ));
    }
    if !failsafe.is_empty() {
        out.push(format!(
            "{} not supported by jwtgate; the rule fails safe (ALLOW: never matches, DENY: field ignored)",
            join(&failsafe)
        ));
    }
    out
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn err(origin: &str, resource: &str, message: String) -> PolicyError {
    PolicyError {
        origin: origin.to_owned(),
        resource: resource.to_owned(),
        message,
        whole_file: false,
    }
}

/// Deserialize with the failing field's path in the message.
fn typed<T: DeserializeOwned>(spec: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        format!("spec.{}: {}", path.trim_start_matches('.'), e.into_inner())
    })
}

/// Where a policy attaches. Istio's CEL rule allows only one of `selector`,
/// `targetRef` and `targetRefs`.
fn attachment(
    selector: Option<raw::Selector>,
    target_ref: bool,
    target_refs: bool,
) -> Result<Attachment, String> {
    if target_ref && target_refs {
        return Err("spec: only one of targetRef or targetRefs may be set".into());
    }
    match (selector, target_ref || target_refs) {
        (Some(_), true) => {
            Err("spec: only one of selector, targetRef or targetRefs may be set".into())
        }
        (None, true) => Ok(Attachment::TargetRef),
        (sel, false) => Ok(Attachment::Selector(
            sel.map(|s| s.match_labels.unwrap_or_default()),
        )),
    }
}

fn request_authn(
    ns: &str,
    name: &str,
    s: raw::RequestAuthenticationSpec,
) -> Result<RequestAuthn, String> {
    let attachment = attachment(s.selector, s.target_ref.is_some(), s.target_refs.is_some())?;
    let id = format!("{ns}/{name}");
    let rules = s
        .jwt_rules
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, r)| jwt_rule(&id, r).map_err(|m| format!("spec.jwtRules[{i}].{m}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RequestAuthn {
        // Filled in by the caller, which knows the file.
        origin: String::new(),
        resource: String::new(),
        namespace: ns.to_owned(),
        attachment,
        rules: rules.into_iter().map(Arc::new).collect(),
    })
}

fn non_empty(list: &[String], field: &str) -> Result<(), String> {
    match list.iter().position(|s| s.is_empty()) {
        Some(i) => Err(format!("{field}[{i}]: must not be empty")),
        None => Ok(()),
    }
}

fn jwt_rule(origin: &str, r: raw::JwtRule) -> Result<JwtRule, String> {
    let issuer = r.issuer.unwrap_or_default();
    let jwks_uri = r.jwks_uri.filter(|u| !u.is_empty());
    if issuer.is_empty() && jwks_uri.is_none() {
        return Err("issuer: issuer or jwksUri must be set".into());
    }
    let audiences = r.audiences.unwrap_or_default();
    non_empty(&audiences, "audiences")?;
    let jwks = match (r.jwks.filter(|j| !j.is_empty()), jwks_uri) {
        (Some(_), Some(_)) => return Err("jwks: only one of jwks or jwksUri may be set".into()),
        (Some(j), None) => JwksSource::Inline(Arc::new(
            JwkSet::parse(&j).map_err(|e| format!("jwks: {e}"))?,
        )),
        (None, Some(u)) => {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 2048 {
                return Err(format!("jwksUri: {u:?} must be an http or https URL"));
            }
            JwksSource::Uri(u)
        }
        (None, None) => JwksSource::Unset,
    };
    let mut locations = Vec::new();
    for (i, h) in r.from_headers.unwrap_or_default().into_iter().enumerate() {
        if h.name.is_empty() {
            return Err(format!("fromHeaders[{i}].name: must not be empty"));
        }
        locations.push(TokenLocation::Header {
            name: h.name.to_ascii_lowercase(),
            prefix: h.prefix.unwrap_or_default(),
        });
    }
    let params = r.from_params.unwrap_or_default();
    non_empty(&params, "fromParams")?;
    locations.extend(params.into_iter().map(TokenLocation::Param));
    let cookies = r.from_cookies.unwrap_or_default();
    non_empty(&cookies, "fromCookies")?;
    locations.extend(cookies.into_iter().map(TokenLocation::Cookie));
    if locations.is_empty() {
        locations = TokenLocation::defaults();
    }
    let output_payload_to_header = r.output_payload_to_header.filter(|h| !h.is_empty());
    if let Some(h) = &output_payload_to_header {
        header_name(h).map_err(|m| format!("outputPayloadToHeader: {m}"))?;
    }
    let mut claim_headers = Vec::new();
    for (i, c) in r
        .output_claim_to_headers
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        header_name(&c.header).map_err(|m| format!("outputClaimToHeaders[{i}].header: {m}"))?;
        if c.claim.is_empty() {
            return Err(format!(
                "outputClaimToHeaders[{i}].claim: must not be empty"
            ));
        }
        claim_headers.push((c.header.to_ascii_lowercase(), c.claim));
    }
    let timeout = match r.timeout {
        None => Duration::from_secs(5),
        Some(t) => parse_duration(&t).ok_or_else(|| format!("timeout: {t:?} is not a duration"))?,
    };
    let extra = r.space_delimited_claims.unwrap_or_default();
    non_empty(&extra, "spaceDelimitedClaims")?;
    let mut space_delimited_claims: Vec<String> = ALWAYS_SPACE_DELIMITED
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in extra {
        if !space_delimited_claims.contains(&c) {
            space_delimited_claims.push(c);
        }
    }
    Ok(JwtRule {
        origin: origin.to_owned(),
        issuer,
        audiences,
        jwks,
        locations,
        output_payload_to_header,
        forward_original_token: r.forward_original_token.unwrap_or(false),
        output_claim_to_headers: claim_headers,
        timeout,
        space_delimited_claims,
    })
}

fn header_name(h: &str) -> Result<(), String> {
    if !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(format!("{h:?} is not a valid header name"))
    }
}

/// Go `time.ParseDuration` subset: `1h2m3.5s`, `500ms`, `250us`, `10ns`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

fn authz_policy(
    ns: &str,
    name: &str,
    s: raw::AuthorizationPolicySpec,
) -> Result<((AuthzPolicy, Attachment), Vec<String>), String> {
    let attachment = attachment(s.selector, s.target_ref.is_some(), s.target_refs.is_some())?;
    let action = match s.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => Action::Custom,
        other => return Err(format!("spec.action: unknown action {other:?}")),
    };
    let has_provider = s
        .provider
        .as_ref()
        .and_then(|p| p.name.as_deref())
        .is_some_and(|n| !n.is_empty());
    match action {
        Action::Custom if !has_provider => {
            return Err("spec.provider.name: required for action CUSTOM".into())
        }
        // `rules: []` is the same as no rules: proto3 cannot tell them apart.
        Action::Custom | Action::Deny if s.rules.as_ref().is_none_or(|r| r.is_empty()) => {
            return Err("spec.rules: required for action DENY and CUSTOM".into())
        }
        a if a != Action::Custom && s.provider.is_some() => {
            return Err("spec.provider: only allowed with action CUSTOM".into())
        }
        _ => {}
    }
    let mut notes = Vec::new();
    let mut rules = Vec::new();
    for (i, r) in s.rules.unwrap_or_default().into_iter().enumerate() {
        let rule = super::rules::rule(r, action, &mut notes)
            .map_err(|m| format!("spec.rules[{i}].{m}"))?;
        rules.push(rule);
    }
    notes.sort();
    notes.dedup();
    Ok((
        (
            AuthzPolicy {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                action,
                rules,
            },
            attachment,
        ),
        notes,
    ))
}

/// `1.2.3.4`, `10.0.0.0/8`, `::1`, `fd00::/8`.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        // Go's netip accepts only plain decimal lengths (no `+8`).
        Some((_, len)) if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) => {
            return None
        }
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((ip, len))
}
