//! Verification failures with the exact texts Envoy's jwt_verify_lib returns
//! (`reference/istio-semantics.md` §2.4 table), because clients and tests see
//! them as the 401/403 body.

/// One reason a token (or the absence of one) failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum JwtError {
    #[error("Jwt is missing")]
    Missing,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBadBase64,
    #[error("Jwt header is an invalid JSON")]
    HeaderBadJson,
    #[error("Jwt header [alg] field is required and must be a string")]
    HeaderBadAlg,
    #[error("Jwt header [alg] is not supported")]
    HeaderNotImplementedAlg,
    #[error("Jwt header [kid] field is not a string")]
    HeaderBadKid,
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBadBase64,
    #[error("Jwt payload is an invalid JSON")]
    PayloadBadJson,
    #[error("Jwt payload [iss] field is not a string")]
    IssNotString,
    #[error("Jwt payload [sub] field is not a string")]
    SubNotString,
    #[error("Jwt payload [iat] field is not an integer")]
    IatNotInteger,
    #[error("Jwt payload [iat] field is not a positive 64 bit integer")]
    IatOutOfRange,
    #[error("Jwt payload [nbf] field is not an integer")]
    NbfNotInteger,
    #[error("Jwt payload [nbf] field is not a positive 64 bit integer")]
    NbfOutOfRange,
    #[error("Jwt payload [exp] field is not an integer")]
    ExpNotInteger,
    #[error("Jwt payload [exp] field is not a positive 64 bit integer")]
    ExpOutOfRange,
    #[error("Jwt payload [jti] field is not a string")]
    JtiNotString,
    #[error("Jwt payload [aud] field is not a string or string list")]
    AudNotString,
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBadBase64,
    #[error("Jwt ED25519 signature is wrong length")]
    Ed25519SignatureWrongLength,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwt verification fails")]
    VerificationFail,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    KidAlgMismatch,
    #[error("Jwks doesn't have any valid public key")]
    NoValidKeys,
    #[error("Jwks remote fetch is failed")]
    FetchFail,
}

impl JwtError {
    /// Envoy maps only the audience failure to 403; everything else is 401
    /// (§2.2, `filter.cc` `onComplete`).
    pub fn http_status(self) -> u16 {
        match self {
            JwtError::AudienceNotAllowed => 403,
            _ => 401,
        }
    }

    /// A metric label per failure: `jwt_` and the variant in snake case
    /// (`jwt_expired`, `jwt_kid_alg_mismatch`, …).
    pub fn label(self) -> &'static str {
        match self {
            JwtError::Missing => "jwt_missing",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::Expired => "jwt_expired",
            JwtError::BadFormat => "jwt_bad_format",
            JwtError::HeaderBadBase64 => "jwt_header_bad_base64",
            JwtError::HeaderBadJson => "jwt_header_bad_json",
            JwtError::HeaderBadAlg => "jwt_header_bad_alg",
            JwtError::HeaderNotImplementedAlg => "jwt_header_not_implemented_alg",
            JwtError::HeaderBadKid => "jwt_header_bad_kid",
            JwtError::PayloadBadBase64 => "jwt_payload_bad_base64",
            JwtError::PayloadBadJson => "jwt_payload_bad_json",
            JwtError::IssNotString => "jwt_iss_not_string",
            JwtError::SubNotString => "jwt_sub_not_string",
            JwtError::IatNotInteger => "jwt_iat_not_integer",
            JwtError::IatOutOfRange => "jwt_iat_out_of_range",
            JwtError::NbfNotInteger => "jwt_nbf_not_integer",
            JwtError::NbfOutOfRange => "jwt_nbf_out_of_range",
            JwtError::ExpNotInteger => "jwt_exp_not_integer",
            JwtError::ExpOutOfRange => "jwt_exp_out_of_range",
            JwtError::JtiNotString => "jwt_jti_not_string",
            JwtError::AudNotString => "jwt_aud_not_string",
            JwtError::SignatureBadBase64 => "jwt_signature_bad_base64",
            JwtError::Ed25519SignatureWrongLength => "jwt_ed25519_signature_wrong_length",
            JwtError::UnknownIssuer => "jwt_unknown_issuer",
            JwtError::AudienceNotAllowed => "jwt_audience_not_allowed",
            JwtError::VerificationFail => "jwt_verification_fail",
            JwtError::KidAlgMismatch => "jwt_kid_alg_mismatch",
            JwtError::NoValidKeys => "jwt_no_valid_keys",
            JwtError::FetchFail => "jwt_fetch_fail",
        }
    }
}
