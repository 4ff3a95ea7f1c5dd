//! Envoy jwt_authn as Istio configures it (§2.2): one provider per rule, the
//! `requires_any`/`allow_missing` requirement, per-token verification in
//! jwt_verify_lib's order (§2.4) and the side effects of success (§2.6).

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use serde_json::{Map, Value};

use super::cache::{Lookup, TokenCache};
use super::error::JwtError;
use super::extract::{extract_borrowed, without_params, Found, HeaderLine, TokenLocation};
use super::token::{parse, Jwt};
use super::verify::verify_signature;
use super::JwkSet;
use crate::policy::JwtRule;

/// jwt_verify_lib `kClockSkewInSecond`; Istio never overrides it.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Keys available for one rule at this moment.
#[derive(Debug, Clone)]
pub enum Keys {
    Set(Arc<JwkSet>),
    /// `jwksUri` never fetched (or no source at all). Istio ≥ 1.29.1 inlines a
    /// public-only placeholder key then, so tokens fail with
    /// `Jwt verification fails` after the issuer/time/audience checks, while
    /// token-less requests go on (§2.7). We reproduce that outcome without a
    /// placeholder key: there is never a built-in key to forge against.
    Unavailable,
}

/// The identity of a request after successful verification.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub iss: Option<String>,
    pub sub: Option<String>,
    /// Payload with space-delimited claims split into lists (§2.6), as
    /// AuthorizationPolicy sees it.
    pub claims: Arc<Map<String, Value>>,
}

impl Identity {
    /// `iss/sub`, Istio's request principal.
    pub fn principal(&self) -> String {
        // Built per allowed request: one allocation of the final size
        // instead of `format!`'s growth.
        let iss = self.iss.as_deref().unwrap_or("");
        let sub = self.sub.as_deref().unwrap_or("");
        let mut p = String::with_capacity(iss.len() + 1 + sub.len());
        p.push_str(iss);
        p.push('/');
        p.push_str(sub);
        p
    }
}

/// Request changes implied by authentication. The engine evaluates RBAC on
/// the request with these edits applied, and the proxy forwards it so: the
/// application and RBAC see the same request, as behind Envoy (§1, §2.6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthnEdits {
    /// Header names (lower case) to remove: every output header of every
    /// rule (anti-spoofing), and the header each consumed token came from.
    pub remove_headers: Vec<String>,
    /// Headers to add after the removal (`outputPayloadToHeader`,
    /// `outputClaimToHeaders` of the provider that verified).
    pub add_headers: Vec<(String, String)>,
    /// Query parameters to remove from the forwarded path.
    pub remove_params: Vec<String>,
}

impl AuthnEdits {
    /// The query after the consumed token parameters are removed: what
    /// `request.headers[:path]` sees and what is forwarded. `None`: no query
    /// is left.
    pub fn query_after<'q>(&self, query: Option<&'q str>) -> Option<Cow<'q, str>> {
        without_params(query?, &self.remove_params)
    }
}

#[derive(Debug, Clone)]
pub struct AuthnOutcome {
    /// `Ok(None)`: no token anywhere (allowed through, no identity).
    pub result: Result<Option<Identity>, JwtError>,
    pub edits: AuthnEdits,
}

/// The tokens one provider verified, with where each was found.
type Verified<'a> = Vec<(Found<'a>, Arc<Jwt>)>;

/// The headers jwt_authn clears from every request before it looks for
/// tokens, whatever happens next (§2.6 anti-spoofing): every rule's
/// `outputPayloadToHeader` and `outputClaimToHeaders` header, lower case.
///
/// All rules' headers, always. Envoy clears a provider's headers only when
/// that provider's verifier runs, and `requires_any` stops at the first
/// provider that verified (`BaseGroupVerifierImpl::verify`), so behind
/// Envoy a client holding a valid token of rule A keeps a forged value in
/// rule B's output header. jwtgate does not reproduce that hole.
pub fn spoofable_headers(rules: &[Arc<JwtRule>]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for rule in rules {
        let outputs = rule
            .output_payload_to_header
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .chain(rule.output_claim_to_headers.iter().map(|(h, _)| h.clone()));
        for name in outputs {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// A request jwt_authn does not verify (Istio's `bypass_cors_preflight`,
/// §2.5): no token is looked at, no identity. Envoy skips the filter
/// entirely, clearing nothing; jwtgate still clears the output headers
/// (`spoofable_headers`), so a preflight cannot carry a forged claim header
/// to RBAC or the application either.
pub fn bypass(rules: &[Arc<JwtRule>]) -> AuthnOutcome {
    AuthnOutcome {
        result: Ok(None),
        edits: AuthnEdits {
            remove_headers: spoofable_headers(rules),
            ..AuthnEdits::default()
        },
    }
}

/// Run all `rules` (already sorted by issuer) against one request. With a
/// `cache`, signatures already verified on this node are not verified again.
///
/// Envoy's order (`verifier.cc`): the output headers are cleared first;
/// providers are tried in order and the first one whose tokens all verify
/// decides: its token headers/parameters are consumed (unless
/// `forwardOriginalToken`), its output headers written, its last token is
/// the identity. Later providers are not run at all. When none verifies,
/// the errors are aggregated (`aggregate`).
pub fn authenticate<L: HeaderLine>(
    rules: &[Arc<JwtRule>],
    headers: &[L],
    query: Option<&str>,
    keys: &dyn Fn(&JwtRule) -> Keys,
    now: u64,
    cache: Option<&TokenCache>,
) -> AuthnOutcome {
    let mut edits = AuthnEdits {
        remove_headers: spoofable_headers(rules),
        ..AuthnEdits::default()
    };
    let mut failures = Failures::default();
    for rule in rules {
        let verified = verify_provider(
            rule,
            headers,
            &edits.remove_headers,
            query,
            &keys(rule),
            now,
            cache,
        );
        match verified {
            Ok(tokens) => {
                for (found, jwt) in &tokens {
                    apply_success(rule, found, jwt, &mut edits);
                }
                // Like Envoy's metadata, the last verified token of the
                // provider defines the identity.
                let identity = tokens.last().map(|(_, jwt)| make_identity(rule, jwt));
                dedup(&mut edits.remove_headers);
                dedup(&mut edits.remove_params);
                return AuthnOutcome {
                    result: Ok(identity),
                    edits,
                };
            }
            Err(e) => failures.note(e),
        }
    }
    AuthnOutcome {
        result: failures.outcome().map(|()| None),
        edits,
    }
}

/// The provider errors of a request no provider verified, reduced as
/// Istio's requirement reduces them (§2.2): one provider =
/// `requires_any[p0, allow_missing]`; N ≥ 2 = `requires_any[p0..pN-1,
/// requires_all[requires_any[pi, allow_missing]…]]`. Envoy's `requires_any`
/// aggregation (`AnyVerifierImpl::onComplete`) walks its children in order:
/// a "real" error (neither missing nor unknown issuer) always replaces the
/// result, an unknown issuer only replaces "missing". The last child,
/// `requires_all`, fails with the first provider error that is not
/// "missing". So: when that first error is real it is the answer; otherwise
/// the last real error, else unknown issuer; all missing is success
/// (`allow_missing`). Tracked as the errors come, without a list.
#[derive(Default)]
struct Failures {
    /// The first error that is not `Missing`.
    first: Option<JwtError>,
    /// The last error that is neither `Missing` nor `UnknownIssuer`.
    last_real: Option<JwtError>,
}

impl Failures {
    fn note(&mut self, e: JwtError) {
        if e == JwtError::Missing {
            return;
        }
        self.first.get_or_insert(e);
        if e != JwtError::UnknownIssuer {
            self.last_real = Some(e);
        }
    }

    fn outcome(self) -> Result<(), JwtError> {
        match self.first {
            None => Ok(()),
            Some(JwtError::UnknownIssuer) => Err(self.last_real.unwrap_or(JwtError::UnknownIssuer)),
            Some(real) => Err(real),
        }
    }
}

/// One `provider_name` verifier: every token at the provider's locations
/// must verify ("If a request has multiple tokens, all of them must be
/// valid"); no token = `Missing`.
fn verify_provider<'a, L: HeaderLine>(
    rule: &'a JwtRule,
    headers: &'a [L],
    cleared: &[String],
    query: Option<&'a str>,
    keys: &Keys,
    now: u64,
    cache: Option<&TokenCache>,
) -> Result<Verified<'a>, JwtError> {
    let found = extract_borrowed(&rule.locations, headers, cleared, query);
    if found.is_empty() {
        return Err(JwtError::Missing);
    }
    found
        .into_iter()
        .map(|f| verify_token_cached(rule, &f.token, keys, now, cache).map(|jwt| (f, jwt)))
        .collect()
}

/// §2.4 steps 1–6 for one token; the first failure wins.
pub fn verify_token(rule: &JwtRule, token: &str, keys: &Keys, now: u64) -> Result<Jwt, JwtError> {
    let jwt = parse(token)?;
    check_claims(rule, &jwt, now)?;
    match keys {
        Keys::Unavailable => Err(JwtError::VerificationFail),
        Keys::Set(set) => verify_signature(&jwt, set).map(|_| jwt),
    }
}

/// `verify_token` with the node's cache in front of the signature check. A
/// hit (or a remembered signature failure) still goes through this rule's
/// issuer, time and audience checks, in the same order, so the answer is the
/// one `verify_token` would give.
pub fn verify_token_cached(
    rule: &JwtRule,
    token: &str,
    keys: &Keys,
    now: u64,
    cache: Option<&TokenCache>,
) -> Result<Arc<Jwt>, JwtError> {
    let (Some(cache), Keys::Set(set)) = (cache, keys) else {
        return verify_token(rule, token, keys, now).map(Arc::new);
    };
    match cache.lookup(token, set, now) {
        Lookup::Verified(jwt) => return check_claims(rule, &jwt, now).map(|()| jwt),
        Lookup::Failed(jwt, err) => return check_claims(rule, &jwt, now).and(Err(err)),
        Lookup::Miss => {}
    }
    let mut jwt = parse(token)?;
    check_claims(rule, &jwt, now)?;
    let verdict = verify_signature(&jwt, set);
    cache.record_verification(jwt.alg, verdict.is_ok());
    // The signed bytes and signature are not needed after this.
    jwt.signed = String::new();
    jwt.signature = Vec::new();
    let jwt = Arc::new(jwt);
    match verdict {
        Ok(key) => {
            cache.insert_verified(token, jwt.clone(), set, key, now);
            Ok(jwt)
        }
        Err(err) => {
            cache.insert_failed(token, jwt, set, err, now);
            Err(err)
        }
    }
}

/// §2.4 steps 2–4: issuer, time window, audience.
fn check_claims(rule: &JwtRule, jwt: &Jwt, now: u64) -> Result<(), JwtError> {
    if !rule.issuer.is_empty() && jwt.iss.as_deref() != Some(rule.issuer.as_str()) {
        return Err(JwtError::UnknownIssuer);
    }
    if let Some(nbf) = jwt.nbf {
        if now.saturating_add(CLOCK_SKEW_SECS) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(exp) = jwt.exp {
        if exp != 0 && now > exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(JwtError::Expired);
        }
    }
    if !rule.audiences.is_empty() && !audience_allowed(&rule.audiences, &jwt.aud) {
        return Err(JwtError::AudienceNotAllowed);
    }
    Ok(())
}

/// jwt_verify_lib `check_audience.cc`: compare without scheme and one
/// trailing slash.
fn audience_allowed(configured: &[String], token: &[String]) -> bool {
    fn norm(a: &str) -> &str {
        let a = a
            .strip_prefix("http://")
            .or_else(|| a.strip_prefix("https://"))
            .unwrap_or(a);
        a.strip_suffix('/').unwrap_or(a)
    }
    token
        .iter()
        .any(|t| configured.iter().any(|c| norm(c) == norm(t)))
}

fn apply_success(rule: &JwtRule, found: &Found, jwt: &Jwt, edits: &mut AuthnEdits) {
    if !rule.forward_original_token {
        match found.location {
            TokenLocation::Header { name, .. } => edits.remove_headers.push(name.clone()),
            TokenLocation::Param(p) => edits.remove_params.push(p.clone()),
            // Envoy never rewrites cookies.
            TokenLocation::Cookie(_) => {}
        }
    }
    if let Some(h) = &rule.output_payload_to_header {
        edits.add_headers.push((
            h.to_ascii_lowercase(),
            jwt.payload_b64.trim_end_matches('=').to_owned(),
        ));
    }
    for (header, claim) in &rule.output_claim_to_headers {
        if let Some(v) = claim_header_value(&jwt.payload, claim) {
            edits.add_headers.push((header.clone(), v));
        }
    }
}

/// §2.6 `outputClaimToHeaders` rendering; `.` separates nesting levels.
fn claim_header_value(payload: &Map<String, Value>, path: &str) -> Option<String> {
    let mut parts = path.split('.');
    let mut v = payload.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            (_, _, Some(f)) => format!("{f:.6}"),
            _ => return None,
        },
        Value::Null => return None,
        other => base64::engine::general_purpose::STANDARD.encode(other.to_string()),
    })
}

fn make_identity(rule: &JwtRule, jwt: &Jwt) -> Identity {
    let wanted = &rule.space_delimited_claims;
    let claims = match jwt.identity_claims.get() {
        Some((names, claims)) if names == wanted => claims.clone(),
        _ => {
            let claims = Arc::new(split_claims(&jwt.payload, wanted));
            // Rules with other spaceDelimitedClaims simply rebuild theirs.
            let _ = jwt.identity_claims.set((wanted.clone(), claims.clone()));
            claims
        }
    };
    Identity {
        iss: jwt.iss.clone(),
        sub: jwt.sub.clone(),
        claims,
    }
}

/// §2.6: each named top-level string claim becomes the list of its
/// space-separated parts.
fn split_claims(payload: &Map<String, Value>, names: &[String]) -> Map<String, Value> {
    let mut claims = payload.clone();
    for name in names {
        if let Some(Value::String(s)) = claims.get(name) {
            let parts = s
                .split(' ')
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(p.to_owned()))
                .collect();
            claims.insert(name.clone(), Value::Array(parts));
        }
    }
    claims
}

/// Keep the first of equal entries. The lists hold a handful of header
/// names, so a quadratic scan beats hashing (no allocation per request).
fn dedup(v: &mut Vec<String>) {
    let mut i = 0;
    while i < v.len() {
        if v[..i].contains(&v[i]) {
            v.remove(i);
        } else {
            i += 1;
        }
    }
}
