//! Authorization decisions: the one pure entry point that the proxy and
//! `jwtgate check` both call. Envoy's filter order is followed exactly
//! (`reference/istio-semantics.md` §1): authentication (jwt_authn) first, then
//! the RBAC filters DENY and ALLOW.
//!
//! INTERFACE CONTRACT (used by proxy/ and cli/; keep these signatures).
//!
//! Layout: `request_shape` (what Envoy's HTTP codec and connection manager
//! refuse before any filter: method, version, Host, request-target, header
//! size), `path` (normalization), `header_view` (the headers RBAC sees after
//! jwt_authn), `matcher` (rule matching), `engine` (the ordered steps); this
//! file holds the contract types.

use std::net::IpAddr;
use std::sync::Arc;

use crate::jwt::{JwkSet, TokenCache};
use crate::policy::WorkloadPolicy;

mod engine;
mod header_view;
mod matcher;
mod network;
pub(crate) mod path;
mod reason;
mod remote;
pub mod request_shape;

#[cfg(test)]
mod post_authn_tests;
#[cfg(test)]
mod table;
#[cfg(test)]
mod tests;

pub use header_view::HeaderView;
pub use matcher::Attributes;
pub use network::{evaluate_connection, Connection};
pub use path::{normalize as normalize_path, InvalidPath};
pub use reason::Reason;
pub use remote::{remote_ip, XFF_NUM_TRUSTED_HOPS};

/// Everything about one HTTP request that a decision may look at, borrowed
/// from wherever the caller holds the request: the proxy decides on hyper's
/// own header map, without copying each header (the token's 1 KB included)
/// into new strings per request (docs/performance.md).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target in origin-form, path plus optional `?query`, as
    /// received (`request_shape::admit` reduces an absolute-form target).
    pub path: &'a str,
    /// `:authority` (may include a port): the Host header, or the authority
    /// of an absolute-form target (`request_shape::admit`).
    pub host: &'a str,
    /// Header lines in arrival order, every line of a repeated header kept
    /// (`request.headers[...]` conditions match each line on its own); names
    /// compared case-insensitively.
    pub headers: Vec<(&'a str, &'a str)>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

/// Changes to apply to the forwarded request when it is allowed: jwt_authn's
/// edits, which the RBAC decision was already made on (`header_view`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Header names (lower case) to delete from the forwarded request.
    pub remove: Vec<String>,
    /// Headers to add (after removal).
    pub add: Vec<(String, String)>,
}

/// The outcome of one request: rendered by the proxy as a local reply or a
/// forward, and by `check` as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// 200 when allowed, else 401 or 403.
    pub status: u16,
    pub allowed: bool,
    /// Response body for a denial (Envoy's exact text), empty when allowed.
    pub body: String,
    /// Why: typed for the proxy (re-fetch on an unknown kid, metrics,
    /// access log), its `Display` is the explanation `check` prints.
    pub reason: Reason,
    /// `iss/sub` of the verified token, if any.
    pub principal: Option<String>,
    /// `namespace/name` of the policy that decided, if any.
    pub policy: Option<String>,
    /// `namespace/name rule N` of the AUDIT policy that matched, if any
    /// (AUDIT never changes the outcome, §3.1).
    pub audit: Option<String>,
    /// `www-authenticate` header value for a 401/403 from authentication.
    pub www_authenticate: Option<String>,
    /// The normalized path (plus query) to forward when allowed.
    pub forward_path: String,
    pub headers: HeaderEdits,
}

/// Where verified key sets for `jwksUri` rules come from (the fetcher in
/// `sources/` fills it; tests use a map). `None`: never fetched successfully.
pub trait JwksLookup {
    fn jwks(&self, uri: &str) -> Option<Arc<JwkSet>>;
}

/// How request paths are normalized before matching and forwarding
/// (DESIGN.md, "Path normalization").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PathNormalization {
    Base,
    MergeSlashes,
    #[default]
    DecodeAndMergeSlashes,
}

/// Decide one request. `now` is UNIX seconds. `cache`: the node's
/// verified-token cache (`None` verifies every signature).
pub fn evaluate(
    policy: &WorkloadPolicy,
    request: &Request<'_>,
    jwks: &dyn JwksLookup,
    now: u64,
    normalization: PathNormalization,
    cache: Option<&TokenCache>,
) -> Decision {
    engine::evaluate(policy, request, jwks, now, normalization, cache)
}
