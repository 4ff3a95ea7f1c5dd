//! JWKS parsing (`JwkSet::parse`). A key that cannot be used is skipped
//! rather than failing the set, so one odd key from an IdP cannot take the
//! other keys down with it.

use std::sync::Arc;

use aws_lc_rs::digest;
use serde_json::{Map, Value};

use super::token::{Alg, B64URL};
use super::verify::Prepared;
use super::{JwkSet, JwksError};
use base64::Engine;

/// SHA-256 over a key's `kid`, `alg` and material: what the token cache
/// records as "the key that verified this token", so a hit is only honoured
/// while a key with the same selection attributes and bytes is still served.
pub type Thumbprint = [u8; 32];

/// Elliptic curves accepted for `kty: EC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// Coordinate length in bytes.
    fn coord_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

/// Public key material, already decoded into what aws-lc-rs takes.
#[derive(Debug, Clone)]
pub enum KeyMaterial {
    /// Big-endian modulus (no leading zeros) and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point `04 || x || y`.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
    /// HMAC secret (`kty: oct`).
    Oct(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub material: KeyMaterial,
    pub thumbprint: Thumbprint,
    /// aws-lc-rs keys parsed once at JWKS load, so a verification does not
    /// re-parse the key (≈5 µs for RSA, performance.md §3.2).
    pub(crate) prepared: Arc<Prepared>,
}

pub(crate) fn parse(json: &str) -> Result<JwkSet, JwksError> {
    let root: Value = serde_json::from_str(json).map_err(|_| JwksError::InvalidJson)?;
    let Value::Object(root) = root else {
        return Err(JwksError::InvalidJson);
    };
    let keys = root.get("keys").ok_or(JwksError::NoKeysField)?;
    let Value::Array(keys) = keys else {
        return Err(JwksError::KeysNotArray);
    };
    let keys = keys
        .iter()
        .filter_map(|k| k.as_object().and_then(parse_key))
        .collect();
    Ok(JwkSet::from_keys(keys))
}

fn parse_key(k: &Map<String, Value>) -> Option<Jwk> {
    let text = |name: &str| k.get(name).and_then(Value::as_str);
    // An encryption key must never verify a signature.
    if matches!(text("use"), Some(u) if u != "sig") {
        return None;
    }
    let bytes = |name: &str| {
        text(name)
            .and_then(|s| B64URL.decode(s).ok())
            .filter(|b| !b.is_empty())
    };
    let material = match text("kty")? {
        "RSA" => {
            let n = bytes("n")?;
            let e = bytes("e")?;
            let n = strip_zeros(n);
            let e = strip_zeros(e);
            if n.is_empty() || e.is_empty() {
                return None;
            }
            KeyMaterial::Rsa { n, e }
        }
        "EC" => {
            let curve = match text("crv")? {
                "P-256" => Curve::P256,
                "P-384" => Curve::P384,
                "P-521" => Curve::P521,
                _ => return None,
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            let len = curve.coord_len();
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::Ec { curve, point }
        }
        "OKP" => {
            if text("crv")? != "Ed25519" {
                return None;
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return None;
            }
            KeyMaterial::Ed25519(x)
        }
        "oct" => KeyMaterial::Oct(bytes("k")?),
        _ => return None,
    };
    let kid = text("kid").filter(|s| !s.is_empty()).map(str::to_owned);
    let alg = text("alg").filter(|s| !s.is_empty()).map(str::to_owned);
    // A key aws-lc-rs rejects (modulus too small to parse, point off the
    // curve) can verify nothing: skip it like any other unusable key.
    let prepared = Prepared::new(&material, alg.as_deref().and_then(Alg::from_name))?;
    Some(Jwk {
        thumbprint: thumbprint(kid.as_deref(), alg.as_deref(), &material),
        kid,
        alg,
        material,
        prepared: Arc::new(prepared),
    })
}

fn thumbprint(kid: Option<&str>, alg: Option<&str>, material: &KeyMaterial) -> Thumbprint {
    let mut ctx = digest::Context::new(&digest::SHA256);
    // Length-prefixed fields, so no two different keys serialize alike.
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(kid.unwrap_or("").as_bytes());
    field(alg.unwrap_or("").as_bytes());
    match material {
        KeyMaterial::Rsa { n, e } => {
            field(b"RSA");
            field(n);
            field(e);
        }
        KeyMaterial::Ec { point, .. } => {
            field(b"EC");
            field(point);
        }
        KeyMaterial::Ed25519(x) => {
            field(b"OKP");
            field(x);
        }
        KeyMaterial::Oct(k) => {
            field(b"oct");
            field(k);
        }
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_level_errors() {
        // JwksError texts are Envoy's (§2.4 table, last row).
        let cases: &[(&str, Result<usize, JwksError>)] = &[
            ("not json", Err(JwksError::InvalidJson)),
            ("[]", Err(JwksError::InvalidJson)),
            ("{}", Err(JwksError::NoKeysField)),
            (r#"{"keys":{}}"#, Err(JwksError::KeysNotArray)),
            (r#"{"keys":[]}"#, Ok(0)),
            (
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/testdata/istio-samples/jwks.json"
                )),
                Ok(1),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(&JwkSet::parse(json).map(|s| s.len()), want, "{json}");
        }
    }

    #[test]
    fn bad_keys_are_skipped() {
        let json = r#"{"keys":[
            {"kty":"RSA","n":"AQAB"},
            {"kty":"RSA","n":"AQAB","e":"AQAB","use":"enc"},
            {"kty":"EC","crv":"P-256","x":"AQAB","y":"AQAB"},
            {"kty":"EC","crv":"secp256k1","x":"AQAB","y":"AQAB"},
            {"kty":"OKP","crv":"X25519","x":"AQAB"},
            {"kty":"oct","k":""},
            {"kty":"foo"},
            "string",
            {"kty":"oct","k":"c2VjcmV0","kid":"h","alg":"HS256"}
        ]}"#;
        let set = JwkSet::parse(json).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("h"));
    }
}
