//! JOSE compact parsing in jwt_verify_lib's order (`Jwt::parseFromString`,
//! `reference/istio-semantics.md` §2.4 step 1): the first failing check
//! decides the error text.

use std::sync::{Arc, OnceLock};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde_json::{Map, Value};

use super::error::JwtError;
use super::json::parse_object;

/// base64url that, like absl's `WebSafeBase64Unescape`, accepts the segment
/// with or without `=` padding.
pub(crate) const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The 13 signature algorithms Envoy accepts; anything else (notably `none`)
/// is rejected while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Es512,
    EdDsa,
    Hs256,
    Hs384,
    Hs512,
}

impl Alg {
    /// Every algorithm, in `index()` order.
    pub const ALL: [Alg; 13] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::Es512,
        Alg::EdDsa,
        Alg::Hs256,
        Alg::Hs384,
        Alg::Hs512,
    ];

    /// Position in `ALL` (per-algorithm counters).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "ES512" => Alg::Es512,
            "EdDSA" => Alg::EdDsa,
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
        }
    }
}

/// `(spaceDelimitedClaims, claims split accordingly)`, memoized per token.
pub(crate) type IdentityClaims = (Vec<String>, Arc<Map<String, Value>>);

/// A syntactically valid token; nothing about it is trusted yet.
#[derive(Debug, Clone)]
pub struct Jwt {
    pub alg: Alg,
    /// `kid`; an empty string counts as absent, as in jwt_verify_lib.
    pub kid: Option<String>,
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub iat: Option<u64>,
    pub nbf: Option<u64>,
    pub exp: Option<u64>,
    pub aud: Vec<String>,
    /// The payload segment exactly as in the token (for `outputPayloadToHeader`).
    pub payload_b64: String,
    pub payload: Map<String, Value>,
    /// The payload as `Identity::claims` for one `spaceDelimitedClaims`
    /// list, made on first use: a cached token then gives every later
    /// request its claims without copying the map.
    pub(crate) identity_claims: OnceLock<IdentityClaims>,
    /// `header.payload`: the bytes the signature covers.
    pub signed: String,
    pub signature: Vec<u8>,
}

pub fn parse(token: &str) -> Result<Jwt, JwtError> {
    // absl::StrSplit with SkipEmpty: empty sections vanish before counting.
    let parts: Vec<&str> = token.split('.').filter(|p| !p.is_empty()).collect();
    let [h64, p64, s64] = parts[..] else {
        return Err(JwtError::BadFormat);
    };

    let header_bytes = B64URL.decode(h64).map_err(|_| JwtError::HeaderBadBase64)?;
    let header = parse_object(&header_bytes).ok_or(JwtError::HeaderBadJson)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => Alg::from_name(a).ok_or(JwtError::HeaderNotImplementedAlg)?,
        _ => return Err(JwtError::HeaderBadAlg),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if k.is_empty() => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::HeaderBadKid),
    };

    let payload_bytes = B64URL.decode(p64).map_err(|_| JwtError::PayloadBadBase64)?;
    let payload = parse_object(&payload_bytes).ok_or(JwtError::PayloadBadJson)?;
    let iss = opt_string(&payload, "iss", JwtError::IssNotString)?;
    let sub = opt_string(&payload, "sub", JwtError::SubNotString)?;
    let iat = opt_u64(
        &payload,
        "iat",
        JwtError::IatNotInteger,
        JwtError::IatOutOfRange,
    )?;
    let nbf = opt_u64(
        &payload,
        "nbf",
        JwtError::NbfNotInteger,
        JwtError::NbfOutOfRange,
    )?;
    let exp = opt_u64(
        &payload,
        "exp",
        JwtError::ExpNotInteger,
        JwtError::ExpOutOfRange,
    )?;
    opt_string(&payload, "jti", JwtError::JtiNotString)?;
    let aud = match payload.get("aud") {
        None => Vec::new(),
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtError::AudNotString)?,
        Some(_) => return Err(JwtError::AudNotString),
    };

    let signature = B64URL
        .decode(s64)
        .map_err(|_| JwtError::SignatureBadBase64)?;

    Ok(Jwt {
        alg,
        kid,
        iss,
        sub,
        iat,
        nbf,
        exp,
        aud,
        payload_b64: p64.to_owned(),
        payload,
        identity_claims: OnceLock::new(),
        signed: format!("{h64}.{p64}"),
        signature,
    })
}

fn opt_string(
    payload: &Map<String, Value>,
    key: &str,
    err: JwtError,
) -> Result<Option<String>, JwtError> {
    match payload.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(err),
    }
}

/// jwt_verify_lib's `getUInt64`: any JSON number in [0, 2^64), fractions
/// truncated.
fn opt_u64(
    payload: &Map<String, Value>,
    key: &str,
    not_integer: JwtError,
    out_of_range: JwtError,
) -> Result<Option<u64>, JwtError> {
    let Some(v) = payload.get(key) else {
        return Ok(None);
    };
    let Value::Number(n) = v else {
        return Err(not_integer);
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        Some(f) if (0.0..18_446_744_073_709_551_616.0).contains(&f) => Ok(Some(f as u64)),
        _ => Err(out_of_range),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    fn tok(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    const H: &str = r#"{"alg":"RS256"}"#;

    #[test]
    fn parse_errors_in_jwt_verify_lib_order() {
        // §2.4 step 1 and the status table: (token, expected error).
        let cases: Vec<(String, JwtError)> = vec![
            ("TokenInvalid".into(), JwtError::BadFormat),
            ("a.b".into(), JwtError::BadFormat),
            ("a.b.c.d".into(), JwtError::BadFormat),
            ("a..b".into(), JwtError::BadFormat),
            ("!!.e30.c2ln".into(), JwtError::HeaderBadBase64),
            (format!("{}.e30.c2ln", b64("nope")), JwtError::HeaderBadJson),
            (
                format!("{}.e30.c2ln", b64(r#"{"alg":"none"}"#)),
                JwtError::HeaderNotImplementedAlg,
            ),
            (
                format!("{}.e30.c2ln", b64(r#"{"alg":"rs256"}"#)),
                JwtError::HeaderNotImplementedAlg,
            ),
            (
                format!("{}.e30.c2ln", b64(r#"{"alg":5}"#)),
                JwtError::HeaderBadAlg,
            ),
            (
                format!("{}.e30.c2ln", b64(r#"{"typ":"JWT"}"#)),
                JwtError::HeaderBadAlg,
            ),
            (
                format!("{}.e30.c2ln", b64(r#"{"alg":"RS256","kid":1}"#)),
                JwtError::HeaderBadKid,
            ),
            (
                format!("{}.e30.c2ln", b64(r#"{"alg":"RS256","alg":"HS256"}"#)),
                JwtError::HeaderBadJson,
            ),
            (format!("{}.!!.c2ln", b64(H)), JwtError::PayloadBadBase64),
            (tok(H, "[]"), JwtError::PayloadBadJson),
            (tok(H, r#"{"sub":"a","sub":"b"}"#), JwtError::PayloadBadJson),
            (tok(H, r#"{"iss":1}"#), JwtError::IssNotString),
            (tok(H, r#"{"sub":true}"#), JwtError::SubNotString),
            (tok(H, r#"{"iat":"1"}"#), JwtError::IatNotInteger),
            (tok(H, r#"{"iat":-1}"#), JwtError::IatOutOfRange),
            (tok(H, r#"{"nbf":"x"}"#), JwtError::NbfNotInteger),
            (tok(H, r#"{"exp":1e30}"#), JwtError::ExpOutOfRange),
            (tok(H, r#"{"exp":null}"#), JwtError::ExpNotInteger),
            (tok(H, r#"{"jti":[]}"#), JwtError::JtiNotString),
            (tok(H, r#"{"aud":["a",1]}"#), JwtError::AudNotString),
            (tok(H, r#"{"aud":{}}"#), JwtError::AudNotString),
            (
                format!("{}.{}.!!", b64(H), b64("{}")),
                JwtError::SignatureBadBase64,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(parse(&token).unwrap_err(), want, "{token}");
        }
    }

    #[test]
    fn parses_claims_and_tolerates_padding() {
        let padded = base64::engine::general_purpose::URL_SAFE
            .encode(r#"{"iss":"i","sub":"s","exp":12.9,"aud":"xy"}"#);
        assert!(padded.ends_with('='));
        let t = format!("{}.{padded}.c2ln", b64(r#"{"alg":"ES256","kid":""}"#));
        let jwt = parse(&t).unwrap();
        assert_eq!(jwt.alg, Alg::Es256);
        assert_eq!(jwt.kid, None);
        assert_eq!(jwt.exp, Some(12));
        assert_eq!(jwt.aud, vec!["xy".to_string()]);
        assert_eq!(jwt.signature, b"sig");
    }

    #[test]
    fn hostile_inputs_never_panic() {
        // Brief: 64 KiB token, bad base64, deep nesting ⇒ clean error.
        let big = "a".repeat(64 * 1024);
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(5000), "]".repeat(5000));
        let cases = [
            big.clone(),
            format!("{big}.{big}.{big}"),
            tok(H, &deep),
            "\u{0}.\u{0}.\u{0}".to_string(),
            "é.é.é".to_string(),
        ];
        for t in cases {
            assert!(parse(&t).is_err());
        }
    }
}
