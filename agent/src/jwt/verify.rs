//! Signature verification with strict key selection (DESIGN.md "JWT
//! verification"): jwt_verify_lib's kid/alg filter, plus our rule that a key
//! only ever verifies its own family and curve, so algorithm confusion
//! (HS256 signed with an RSA public key, ES384 against a P-256 key) cannot
//! happen.

use aws_lc_rs::{hmac, signature};

use super::error::JwtError;
use super::jwks::{Curve, Jwk, KeyMaterial};
use super::token::{Alg, Jwt};
use super::JwkSet;

/// jwt_verify_lib's `verifyJwtWithoutTimeChecking` loop (§2.4 step 6).
pub(crate) fn verify_signature(jwt: &Jwt, keys: &JwkSet) -> Result<(), JwtError> {
    if keys.is_empty() {
        return Err(JwtError::NoValidKeys);
    }
    let mut kid_alg_matched = false;
    for key in &keys.keys {
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
        if verify_with(jwt, key) {
            return Ok(());
        }
    }
    Err(if kid_alg_matched {
        JwtError::VerificationFail
    } else {
        JwtError::KidAlgMismatch
    })
}

fn verify_with(jwt: &Jwt, key: &Jwk) -> bool {
    let msg = jwt.signed.as_bytes();
    let sig = jwt.signature.as_slice();
    match (&key.material, jwt.alg) {
        (KeyMaterial::Rsa { n, e }, alg) => {
            let params: &signature::RsaParameters = match alg {
                Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return false,
            };
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, msg, sig)
                .is_ok()
        }
        (KeyMaterial::Ec { curve, point }, alg) => {
            let algorithm: &signature::EcdsaVerificationAlgorithm = match (curve, alg) {
                (Curve::P256, Alg::Es256) => &signature::ECDSA_P256_SHA256_FIXED,
                (Curve::P384, Alg::Es384) => &signature::ECDSA_P384_SHA384_FIXED,
                (Curve::P521, Alg::Es512) => &signature::ECDSA_P521_SHA512_FIXED,
                _ => return false,
            };
            signature::UnparsedPublicKey::new(algorithm, point)
                .verify(msg, sig)
                .is_ok()
        }
        (KeyMaterial::Ed25519(x), Alg::EdDsa) => {
            signature::UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(msg, sig)
                .is_ok()
        }
        (KeyMaterial::Oct(k), alg) => {
            let algorithm = match alg {
                Alg::Hs256 => hmac::HMAC_SHA256,
                Alg::Hs384 => hmac::HMAC_SHA384,
                Alg::Hs512 => hmac::HMAC_SHA512,
                _ => return false,
            };
            hmac::verify(&hmac::Key::new(algorithm, k), msg, sig).is_ok()
        }
        _ => false,
    }
}
