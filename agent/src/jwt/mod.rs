//! JWT verification as Envoy's jwt_authn does it. Pure: no HTTP, no timers.
//!
//! INTERFACE CONTRACT (used by sources/ and authz/; keep these signatures).
//!
//! Layout: `token` (JOSE parsing), `json` (strict JSON), `jwks` (key sets),
//! `verify` (signatures, strict key selection), `extract` (token locations),
//! `authn` (providers, requirements, side effects), `error` (Envoy texts).

mod authn;
mod error;
mod extract;
mod json;
mod jwks;
mod token;
mod verify;

#[cfg(test)]
mod tests;

pub use authn::{
    authenticate, verify_token, AuthnEdits, AuthnOutcome, Identity, Keys, CLOCK_SKEW_SECS,
};
pub use error::JwtError;
pub use extract::{extract, FoundToken, TokenLocation};
pub use jwks::{Curve, Jwk, KeyMaterial};
pub use token::{parse, Alg, Jwt};

/// A parsed JSON Web Key Set. Keys that fail to parse are skipped.
#[derive(Debug, Clone, Default)]
pub struct JwkSet {
    keys: Vec<Jwk>,
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
