//! Signing keys for every JWT algorithm family, for tests and benchmarks.
//!
//! The unit tests compile this file as `jwt::signers` (`#[cfg(test)]`) and
//! the benchmarks include it by path, so both sign tokens the same way. It
//! depends on nothing of the crate, so it compiles in either place; callers
//! parse [`Signers::jwks_json`] with their own `JwkSet`.

// Each includer uses a different part of it.
#![allow(dead_code)]

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// A file of the copied Istio samples (`agent/testdata/istio-samples`).
pub fn testdata(name: &str) -> String {
    let p = format!(
        "{}/testdata/istio-samples/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// One key per family: the Istio sample RSA-2048 key (whose public half is
/// the sample `jwks.json`), fresh P-256/384/521 and Ed25519 keys, an HMAC secret.
pub struct Signers {
    pub rsa: RsaKeyPair,
    pub p256: EcdsaKeyPair,
    pub p384: EcdsaKeyPair,
    pub p521: EcdsaKeyPair,
    pub ed: Ed25519KeyPair,
    pub secret: Vec<u8>,
}

impl Signers {
    pub fn new() -> Signers {
        let pem = testdata("key.pem");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let ec = |alg| EcdsaKeyPair::generate(alg).unwrap();
        Signers {
            rsa: RsaKeyPair::from_der(&STANDARD.decode(b64).unwrap()).unwrap(),
            p256: ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            p384: ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            p521: ec(&signature::ECDSA_P521_SHA512_FIXED_SIGNING),
            ed: Ed25519KeyPair::generate().unwrap(),
            secret: b"a-test-secret-of-32-bytes-length".to_vec(),
        }
    }

    /// The public JWK of an EC key pair (uncompressed point split into x, y).
    pub fn ec_jwk(kp: &EcdsaKeyPair, crv: &str, kid: &str) -> String {
        let point = kp.public_key().as_ref();
        let n = (point.len() - 1) / 2;
        format!(
            r#"{{"kty":"EC","crv":"{crv}","kid":"{kid}","x":"{}","y":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(&point[1..1 + n]),
            URL_SAFE_NO_PAD.encode(&point[1 + n..])
        )
    }

    /// One JWKS holding every public key; kids as [`Signers::kid_for`] names them.
    pub fn jwks_json(&self) -> String {
        let rsa: serde_json::Value = serde_json::from_str(&testdata("jwks.json")).unwrap();
        let mut rsa = rsa["keys"][0].clone();
        rsa["kid"] = "rsa".into();
        format!(
            r#"{{"keys":[{rsa},{},{},{},{{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"{}"}},{{"kty":"oct","kid":"hmac","k":"{}"}}]}}"#,
            Self::ec_jwk(&self.p256, "P-256", "p256"),
            Self::ec_jwk(&self.p384, "P-384", "p384"),
            Self::ec_jwk(&self.p521, "P-521", "p521"),
            URL_SAFE_NO_PAD.encode(self.ed.public_key().as_ref()),
            URL_SAFE_NO_PAD.encode(&self.secret),
        )
    }

    /// The `kid` of the key that signs `alg` in [`Signers::jwks_json`].
    pub fn kid_for(alg: &str) -> &'static str {
        match alg {
            a if a.starts_with("RS") || a.starts_with("PS") => "rsa",
            "ES256" => "p256",
            "ES384" => "p384",
            "ES512" => "p521",
            "EdDSA" => "ed",
            _ => "hmac",
        }
    }

    /// Sign `payload` with `alg` using that family's key; `kid` optional.
    pub fn token(&self, alg: &str, kid: Option<&str>, payload: &str) -> String {
        let header = match kid {
            Some(k) => format!(r#"{{"alg":"{alg}","kid":"{k}"}}"#),
            None => format!(r#"{{"alg":"{alg}"}}"#),
        };
        self.token_with_header(alg, &header, payload)
    }

    /// Sign `payload` under an exact JOSE header (which should name `alg`).
    pub fn token_with_header(&self, alg: &str, header: &str, payload: &str) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let msg = signed.as_bytes();
        let rng = SystemRandom::new();
        let rsa = |enc: &'static dyn signature::RsaEncoding| {
            let mut sig = vec![0; self.rsa.public_modulus_len()];
            self.rsa.sign(enc, &rng, msg, &mut sig).unwrap();
            sig
        };
        let hs = |a| {
            hmac::sign(&hmac::Key::new(a, &self.secret), msg)
                .as_ref()
                .to_vec()
        };
        let sig: Vec<u8> = match alg {
            "RS256" => rsa(&signature::RSA_PKCS1_SHA256),
            "RS384" => rsa(&signature::RSA_PKCS1_SHA384),
            "RS512" => rsa(&signature::RSA_PKCS1_SHA512),
            "PS256" => rsa(&signature::RSA_PSS_SHA256),
            "PS384" => rsa(&signature::RSA_PSS_SHA384),
            "PS512" => rsa(&signature::RSA_PSS_SHA512),
            "ES256" => self.p256.sign(&rng, msg).unwrap().as_ref().to_vec(),
            "ES384" => self.p384.sign(&rng, msg).unwrap().as_ref().to_vec(),
            "ES512" => self.p521.sign(&rng, msg).unwrap().as_ref().to_vec(),
            "EdDSA" => self.ed.sign(msg).as_ref().to_vec(),
            "HS256" => hs(hmac::HMAC_SHA256),
            "HS384" => hs(hmac::HMAC_SHA384),
            "HS512" => hs(hmac::HMAC_SHA512),
            other => panic!("no signer for {other}"),
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}
