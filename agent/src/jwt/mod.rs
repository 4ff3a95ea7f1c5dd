//! JWT verification as Envoy's jwt_authn does it. Pure: no HTTP, no timers.
//!
//! INTERFACE CONTRACT (used by sources/ and authz/; keep these signatures).
//!
//! Layout: `token` (JOSE parsing), `json` (strict JSON), `jwks` (key sets),
//! `verify` (signatures, strict key selection), `extract` (token locations),
//! `authn` (providers, requirements, side effects), `error` (Envoy texts),
//! `cache` (the per-node verified-token cache).

mod authn;
mod cache;
mod error;
mod extract;
pub(crate) mod json;
mod jwks;
mod token;
mod verify;

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod rule_fields_tests;
#[cfg(test)]
pub(crate) mod signers;
#[cfg(test)]
mod tests;

pub use authn::{
    authenticate, bypass, spoofable_headers, verify_token, verify_token_cached, AuthnEdits,
    AuthnOutcome, Identity, Keys, CLOCK_SKEW_SECS,
};
pub use cache::{CacheConfig, CacheStats, TokenCache};
pub use error::JwtError;
pub use extract::{extract, FoundToken, HeaderLine, TokenLocation};
pub use jwks::{Curve, Jwk, KeyMaterial, Thumbprint};
pub use token::{parse, Alg, Jwt};

use std::sync::atomic::{AtomicU64, Ordering};

/// Source of `JwkSet::generation`; 0 is left to `JwkSet::default()`.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// A parsed JSON Web Key Set. Keys that fail to parse are skipped.
#[derive(Debug, Clone, Default)]
pub struct JwkSet {
    keys: Vec<Jwk>,
    /// Unique per parsed document: the token cache's fast path ("verified by
    /// this very set") before it looks for the key's thumbprint.
    generation: u64,
}

/// Why a JWKS document could not be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("Jwks is an invalid JSON")]
    InvalidJson,
    #[error("Jwks does not have [keys] field")]
    NoKeysField,
    #[error("[keys] in Jwks is not an array")]
    KeysNotArray,
}

impl JwkSet {
    pub fn parse(json: &str) -> Result<JwkSet, JwksError> {
        jwks::parse(json)
    }

    fn from_keys(keys: Vec<Jwk>) -> JwkSet {
        JwkSet {
            keys,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a key with this thumbprint (same kid, alg and material) is in
    /// the set.
    pub fn contains_key(&self, thumbprint: &Thumbprint) -> bool {
        self.keys.iter().any(|k| &k.thumbprint == thumbprint)
    }

    /// True when both sets hold the same keys in the same order, i.e. they
    /// would decide every token alike.
    pub fn same_keys(&self, other: &JwkSet) -> bool {
        self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(a, b)| a.thumbprint == b.thumbprint)
    }

    /// Thumbprints of the keys of `self` that `newer` no longer has.
    pub fn removed_in(&self, newer: &JwkSet) -> Vec<Thumbprint> {
        self.keys
            .iter()
            .map(|k| k.thumbprint)
            .filter(|t| !newer.contains_key(t))
            .collect()
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The usable keys, in document order.
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }
}
