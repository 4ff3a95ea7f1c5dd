//! The resolved form of Istio policies that the engines consume: validated,
//! defaults filled in, patterns pre-parsed. The YAML shape lives in `raw.rs`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::jwt::{JwkSet, TokenLocation};

/// Envoy's fixed `scope`/`permission` split (§2.2 `spaceDelimitedClaims`).
pub const ALWAYS_SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// Where a rule's verification keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    Inline(Arc<JwkSet>),
    /// Fetched elsewhere and handed in through `authz::JwksLookup`.
    Uri(String),
    /// Neither `jwks` nor `jwksUri`: Istio would discover the URI through
    /// OpenID discovery, which jwtgate does not do; tokens are rejected.
    Unset,
}

/// One `jwtRules` entry of a RequestAuthentication = one Envoy provider.
#[derive(Debug, Clone)]
pub struct JwtRule {
    /// `ns/name` of the RequestAuthentication it came from.
    pub origin: String,
    /// Empty = any `iss` accepted (Istio ≥ 1.27).
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Explicit locations, or Envoy's defaults when the rule named none.
    pub locations: Vec<TokenLocation>,
    pub output_payload_to_header: Option<String>,
    pub forward_original_token: bool,
    /// `(header lower case, claim path)`.
    pub output_claim_to_headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// `scope`, `permission` plus the rule's own `spaceDelimitedClaims`.
    pub space_delimited_claims: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

/// One AuthorizationPolicy.
#[derive(Debug, Clone)]
pub struct AuthzPolicy {
    pub namespace: String,
    pub name: String,
    pub action: Action,
    /// `rules` absent: the policy never matches (§3.2).
    pub rules: Vec<Rule>,
}

impl AuthzPolicy {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// §3.3: any `from` AND any `to` AND all `when`. `None` = field absent.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub from: Option<Vec<Vec<FieldMatch>>>,
    pub to: Option<Vec<Vec<FieldMatch>>>,
    pub when: Vec<FieldMatch>,
}

/// One field (`paths`, `notPaths`, a `when` condition's `values` …): true iff
/// the attribute matches any value, inverted when `negated`.
#[derive(Debug, Clone)]
pub struct FieldMatch {
    pub attr: Attribute,
    pub negated: bool,
    pub values: Vec<ValueMatch>,
}

/// Request attributes a field can look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    RequestPrincipal,
    Path,
    Method,
    Host,
    Port,
    SourceIp,
    RemoteIp,
    DestinationIp,
    /// Header name, lower case.
    Header(String),
    /// Path into the JWT payload.
    Claim(Vec<String>),
    /// An attribute that never has a value on jwtgate's path: the peer's mTLS
    /// identity (`principals`, `namespaces`, `serviceAccounts`,
    /// `trustDomains`, `source.*` identity keys) and `connection.sni`. jwtgate
    /// serves plaintext HTTP only, and Envoy's matchers on a plaintext
    /// connection never match, so the positive form is false and the `not`
    /// form true (§3.5, TestAuthz_DenyPlaintext).
    Absent(String),
    /// A field jwtgate cannot evaluate (`experimental.envoy.filters.*`
    /// metadata of filters it does not run). It fails safe: an ALLOW rule
    /// using it never matches; in DENY/AUDIT/CUSTOM the field is dropped, so
    /// the rule matches more (§3.14, as istiod does for values it cannot
    /// convert).
    Unsupported(String),
}

/// Istio value syntax (§3.4): exact, `prefix*`, `*suffix`, `*` = present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any non-empty value (headers: any value, even empty).
    Present,
}

impl StringPattern {
    pub fn parse(v: &str) -> StringPattern {
        if v == "*" {
            StringPattern::Present
        } else if let Some(p) = v.strip_suffix('*') {
            StringPattern::Prefix(p.to_owned())
        } else if let Some(s) = v.strip_prefix('*') {
            StringPattern::Suffix(s.to_owned())
        } else {
            StringPattern::Exact(v.to_owned())
        }
    }
}

/// One segment-level token of a path template (`{*}`, `{**}`, §3.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    OneSegment,
    /// `{**}`: any characters, across segments.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    Str(StringPattern),
    /// requestPrincipals split into `iss` and `sub` matchers (§3.7).
    Principal {
        iss: StringPattern,
        sub: StringPattern,
    },
    Port(u16),
    Cidr(IpAddr, u8),
    PathTemplate(Vec<TemplatePart>),
}
