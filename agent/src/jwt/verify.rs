//! Signature verification with strict key selection (DESIGN.md "JWT
//! verification"): jwt_verify_lib's kid/alg filter, plus our rule that a key
//! only ever verifies its own family and curve, so algorithm confusion
//! (HS256 signed with an RSA public key, ES384 against a P-256 key) cannot
//! happen.

use std::fmt;

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};

use super::error::JwtError;
use super::jwks::{Curve, KeyMaterial};
use super::token::{Alg, Jwt};
use super::JwkSet;

/// jwt_verify_lib's `verifyJwtWithoutTimeChecking` loop (§2.4 step 6).
/// Returns the index of the key that verified the signature.
pub(crate) fn verify_signature(jwt: &Jwt, keys: &JwkSet) -> Result<usize, JwtError> {
    if keys.is_empty() {
        return Err(JwtError::NoValidKeys);
    }
    let mut kid_alg_matched = false;
    for (i, key) in keys.keys.iter().enumerate() {
        if let (Some(want), Some(have)) = (&jwt.kid, &key.kid) {
            if want != have {
                continue;
            }
        }
        if matches!(&key.alg, Some(a) if a != jwt.alg.name()) {
            continue;
        }
        kid_alg_matched = true;
        if jwt.alg == Alg::EdDsa
            && matches!(key.material, KeyMaterial::Ed25519(_))
            && jwt.signature.len() != 64
        {
            return Err(JwtError::Ed25519SignatureWrongLength);
        }
        if key
            .prepared
            .verify(jwt.alg, jwt.signed.as_bytes(), &jwt.signature)
        {
            return Ok(i);
        }
    }
    Err(if kid_alg_matched {
        JwtError::VerificationFail
    } else {
        JwtError::KidAlgMismatch
    })
}

/// A key ready for aws-lc-rs, one entry per algorithm it may verify: the
/// key's family and curve decide which (strict key selection), and a key
/// with its own `alg` only gets that one.
pub(crate) struct Prepared {
    verifiers: Vec<(Alg, Verifier)>,
}

enum Verifier {
    Public(ParsedPublicKey),
    // hmac::Key holds the precomputed inner/outer states (~1.2 KB).
    Hmac(Box<hmac::Key>),
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<&str> = self.verifiers.iter().map(|(a, _)| a.name()).collect();
        f.debug_struct("Prepared").field("algs", &algs).finish()
    }
}

const RSA_ALGS: [Alg; 6] = [
    Alg::Rs256,
    Alg::Rs384,
    Alg::Rs512,
    Alg::Ps256,
    Alg::Ps384,
    Alg::Ps512,
];
const HMAC_ALGS: [Alg; 3] = [Alg::Hs256, Alg::Hs384, Alg::Hs512];

impl Prepared {
    /// `None` when aws-lc-rs rejects the key material.
    pub(crate) fn new(material: &KeyMaterial, key_alg: Option<Alg>) -> Option<Prepared> {
        // A key's own `alg` narrows it to that algorithm; an `alg` of another
        // family leaves it with nothing to verify (it still counts as a
        // kid/alg match, as in jwt_verify_lib, and then fails).
        let wanted = |alg: Alg| key_alg.is_none_or(|k| k == alg);
        let mut verifiers = Vec::new();
        match material {
            KeyMaterial::Rsa { n, e } => {
                let components = RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                };
                for alg in RSA_ALGS.into_iter().filter(|a| wanted(*a)) {
                    let key = components.to_parsed_public_key(rsa_params(alg)).ok()?;
                    verifiers.push((alg, Verifier::Public(key)));
                }
            }
            KeyMaterial::Ec { curve, point } => {
                let (alg, algorithm): (Alg, &'static signature::EcdsaVerificationAlgorithm) =
                    match curve {
                        Curve::P256 => (Alg::Es256, &signature::ECDSA_P256_SHA256_FIXED),
                        Curve::P384 => (Alg::Es384, &signature::ECDSA_P384_SHA384_FIXED),
                        Curve::P521 => (Alg::Es512, &signature::ECDSA_P521_SHA512_FIXED),
                    };
                let key = ParsedPublicKey::new(algorithm, point).ok()?;
                if wanted(alg) {
                    verifiers.push((alg, Verifier::Public(key)));
                }
            }
            KeyMaterial::Ed25519(x) => {
                let key = ParsedPublicKey::new(&signature::ED25519, x).ok()?;
                if wanted(Alg::EdDsa) {
                    verifiers.push((Alg::EdDsa, Verifier::Public(key)));
                }
            }
            KeyMaterial::Oct(k) => {
                for alg in HMAC_ALGS.into_iter().filter(|a| wanted(*a)) {
                    let algorithm = match alg {
                        Alg::Hs256 => hmac::HMAC_SHA256,
                        Alg::Hs384 => hmac::HMAC_SHA384,
                        _ => hmac::HMAC_SHA512,
                    };
                    verifiers.push((alg, Verifier::Hmac(Box::new(hmac::Key::new(algorithm, k)))));
                }
            }
        }
        Some(Prepared { verifiers })
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, v)| match v {
                Verifier::Public(key) => key.verify_sig(msg, sig).is_ok(),
                Verifier::Hmac(key) => hmac::verify(key, msg, sig).is_ok(),
            })
    }
}

fn rsa_params(alg: Alg) -> &'static signature::RsaParameters {
    match alg {
        Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
        Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
        _ => &signature::RSA_PSS_2048_8192_SHA512,
    }
}
