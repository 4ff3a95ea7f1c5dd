//! Tokens made in bulk for `cargo xtask loadtest`: valid RS256 tokens signed
//! with the Istio sample key (the private half of `testdata/istio-samples/
//! jwks.json`, so the FAQ's RequestAuthentication accepts them), one per
//! request on the cache-miss path; and forged tokens for the flood, each one
//! different (so the agent's failed-token cache cannot answer it) and with a
//! signature that no key made (so every one costs a signature check).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use anyhow::{Context, Result};

use crate::faq::ISSUER;

/// `exp` of the load tokens: the sample `demo.jwt`'s (year 2118), so a pool
/// kept on disk stays valid.
pub const EXP: u64 = 4_685_989_700;
const IAT: u64 = 1_532_389_700;

/// The Istio sample RSA-2048 key and its `kid` in the sample JWKS.
pub struct Signer {
    key: RsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl Signer {
    /// Reads the key from the agent's copy of the Istio samples
    /// (`agent/testdata/istio-samples/key.pem`, PKCS#1) and the `kid` from
    /// this crate's `jwks.json`.
    pub fn istio_sample() -> Result<Self> {
        let path = crate::agent::workspace_root().join("agent/testdata/istio-samples/key.pem");
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(b64).context("key.pem is not base64")?;
        let key = RsaKeyPair::from_der(&der)
            .map_err(|e| anyhow::anyhow!("key.pem is not a PKCS#1 RSA key: {e}"))?;
        Ok(Signer {
            key,
            kid: sample_kid()?,
            rng: SystemRandom::new(),
        })
    }

    /// The `n`-th load token: issuer and subject as the FAQ expects, a `jti`
    /// that makes it unique, RS256.
    pub fn load_token(&self, n: u64) -> Result<String> {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header(&self.kid)),
            URL_SAFE_NO_PAD.encode(claims(n, "load"))
        );
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|e| anyhow::anyhow!("RS256 signing failed: {e}"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// Load tokens `first..first + count`, signed on `threads` threads
    /// (RSA-2048 signing takes ≈ 0.3 ms each).
    pub fn load_tokens(&self, first: u64, count: u64, threads: usize) -> Result<Vec<String>> {
        let threads = threads.max(1) as u64;
        let per = count.div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = (0..threads)
                .map(|t| {
                    let start = first + t * per;
                    let end = (start + per).min(first + count);
                    s.spawn(move || (start..end).map(|n| self.load_token(n)).collect())
                })
                .collect();
            let mut all = Vec::with_capacity(count as usize);
            for p in parts {
                let part: Result<Vec<String>> = p.join().expect("signing thread panicked");
                all.extend(part?);
            }
            Ok(all)
        })
    }
}

/// The `kid` of the sample JWKS's only key.
fn sample_kid() -> Result<String> {
    let path = crate::testdata("istio-samples/jwks.json");
    let jwks: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    jwks["keys"][0]["kid"]
        .as_str()
        .map(str::to_owned)
        .context("no kid in the sample jwks.json")
}

fn header(kid: &str) -> String {
    serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"}).to_string()
}

fn claims(n: u64, kind: &str) -> String {
    serde_json::json!({
        "iss": ISSUER,
        "sub": ISSUER,
        "iat": IAT,
        "exp": EXP,
        "jti": format!("{kind}-{n}"),
    })
    .to_string()
}

/// The `n`-th forged token: the sample key's header and well-formed claims
/// with a unique `jti`, and 256 bytes of signature that no key made.
pub fn forged_token(kid: &str, n: u64) -> String {
    // xorshift64*: cheap, deterministic, different for every n; it only has
    // to make bytes that are not a valid signature.
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let sig: Vec<u8> = (0..256)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header(kid)),
        URL_SAFE_NO_PAD.encode(claims(n, "forged")),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

/// The sample JWKS's `kid`, for [`forged_token`].
pub fn sample_key_id() -> Result<String> {
    sample_kid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};

    /// Checks `token` against the public key of the sample JWKS, as the
    /// agent would (RS256 with the key that `kid` names).
    fn verifies_with_sample_jwks(token: &str) -> bool {
        let jwks: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(crate::testdata("istio-samples/jwks.json")).unwrap(),
        )
        .unwrap();
        let part = |k: &str| {
            URL_SAFE_NO_PAD
                .decode(jwks["keys"][0][k].as_str().unwrap())
                .unwrap()
        };
        let (input, sig) = token.rsplit_once('.').unwrap();
        let key = RsaPublicKeyComponents {
            n: part("n"),
            e: part("e"),
        };
        key.verify(
            &RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(sig).unwrap(),
        )
        .is_ok()
    }

    #[test]
    fn load_tokens_are_valid_and_distinct() {
        let signer = Signer::istio_sample().unwrap();
        let tokens = signer.load_tokens(10, 4, 2).unwrap();
        assert_eq!(tokens.len(), 4);
        let unique: std::collections::BTreeSet<_> = tokens.iter().collect();
        assert_eq!(unique.len(), 4);
        for t in &tokens {
            assert!(verifies_with_sample_jwks(t), "{t}");
            let payload = URL_SAFE_NO_PAD
                .decode(t.split('.').nth(1).unwrap())
                .unwrap();
            let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(claims["iss"], ISSUER);
            assert_eq!(claims["exp"], EXP);
        }
        assert!(tokens[0].contains(&URL_SAFE_NO_PAD.encode(header(&signer.kid))));
    }

    #[test]
    fn forged_tokens_are_distinct_and_do_not_verify() {
        let kid = sample_key_id().unwrap();
        let (a, b) = (forged_token(&kid, 1), forged_token(&kid, 2));
        assert_ne!(a, b);
        assert_ne!(a.rsplit_once('.').unwrap().1, b.rsplit_once('.').unwrap().1);
        assert!(!verifies_with_sample_jwks(&a));
        assert!(!verifies_with_sample_jwks(&b));
    }
}
