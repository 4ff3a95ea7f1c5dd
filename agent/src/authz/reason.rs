//! Why a request or connection got its answer, as a value: the proxy keys
//! its JWKS re-fetch, metrics labels and access-log fields on it, `check`
//! and the logs print its text. The text (`Display`) is the human
//! explanation `check` has always printed.

use std::fmt;

use crate::jwt::JwtError;

/// The cause of a [`super::Decision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Allowed: no ALLOW policy applies to the workload (and no DENY rule
    /// matched).
    NoAllowPolicy { network: bool },
    /// Allowed by rule `rule` of ALLOW policy `policy` (`namespace/name`).
    Allowed {
        policy: String,
        rule: usize,
        network: bool,
    },
    /// A kubelet probe the pod declares, sent from a probe source: passed
    /// without a decision.
    DeclaredProbe,
    /// Refused before any filter by what Envoy's codec or connection
    /// manager refuses; `details` is Envoy's response code details.
    Refused { details: &'static str },
    /// The path could not be normalized (`%00`): 400 like Envoy.
    PathNormalizationFailed,
    /// A CUSTOM rule matched; without an ext_authz provider it denies.
    Custom {
        policy: String,
        rule: usize,
        network: bool,
    },
    /// jwt_authn rejected the request.
    Jwt(JwtError),
    /// Rule `rule` of DENY policy `policy` matched.
    Denied {
        policy: String,
        rule: usize,
        network: bool,
    },
    /// ALLOW policies apply and none matched.
    NoAllowMatch { network: bool },
}

impl Reason {
    /// A label value for metrics: a small fixed set (never a policy name,
    /// so series stay bounded whatever the policies).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Reason::NoAllowPolicy { .. } => "allowed_no_policy",
            Reason::Allowed { .. } => "allowed_by_policy",
            Reason::DeclaredProbe => "declared_probe",
            Reason::Refused { .. } => "request_refused",
            Reason::PathNormalizationFailed => "path_normalization_failed",
            Reason::Custom { .. } => "custom_policy",
            Reason::Jwt(e) => e.label(),
            Reason::Denied { .. } => "denied_by_policy",
            Reason::NoAllowMatch { .. } => "no_allow_match",
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for this outcome, as an Istio
    /// access log shows it (`jwt_authn_access_denied{Jwt_is_expired}`,
    /// `rbac_access_denied_matched_policy[ns[foo]-policy[deny]-rule[0]]`);
    /// `via_upstream` for what was forwarded.
    pub fn response_code_details(&self) -> String {
        match self {
            Reason::NoAllowPolicy { .. } | Reason::Allowed { .. } | Reason::DeclaredProbe => {
                "via_upstream".to_string()
            }
            Reason::Refused { details } => (*details).to_string(),
            Reason::PathNormalizationFailed => "path_normalization_failed".to_string(),
            Reason::Jwt(e) => format!(
                "jwt_authn_access_denied{{{}}}",
                e.to_string().replace(' ', "_")
            ),
            Reason::Custom { policy, rule, .. } | Reason::Denied { policy, rule, .. } => {
                let (ns, name) = policy.split_once('/').unwrap_or(("", policy));
                format!("rbac_access_denied_matched_policy[ns[{ns}]-policy[{name}]-rule[{rule}]]")
            }
            Reason::NoAllowMatch { .. } => "rbac_access_denied_matched_policy[none]".to_string(),
        }
    }

    /// The policy and rule that decided, if one did.
    pub fn rule(&self) -> Option<(&str, usize)> {
        match self {
            Reason::Allowed { policy, rule, .. }
            | Reason::Custom { policy, rule, .. }
            | Reason::Denied { policy, rule, .. } => Some((policy, *rule)),
            _ => None,
        }
    }

    /// True when authentication failed because no key matched the
    /// token's `kid`/`alg`: the case a key rotation at the IdP produces,
    /// worth one JWKS re-fetch.
    pub fn is_unknown_kid(&self) -> bool {
        matches!(self, Reason::Jwt(JwtError::KidAlgMismatch))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let net = |network: &bool| if *network { " (network RBAC)" } else { "" };
        match self {
            Reason::NoAllowPolicy { .. } => f.write_str("no ALLOW policy applies"),
            Reason::Allowed {
                policy,
                rule,
                network,
            } => write!(f, "allowed by ALLOW policy {policy} rule {rule}{}", net(network)),
            Reason::DeclaredProbe => f.write_str("kubelet probe declared by the pod"),
            Reason::Refused { details } => write!(
                f,
                "refused before authentication, as Envoy does ({details})"
            ),
            Reason::PathNormalizationFailed => {
                f.write_str("path normalization failed: %00 in the path (rejected like Envoy)")
            }
            Reason::Custom {
                policy,
                rule,
                network: false,
            } => write!(
                f,
                "CUSTOM action is not supported (no ext_authz provider): policy {policy} rule {rule} matched, denied as istiod does for an unknown provider"
            ),
            Reason::Custom {
                policy,
                rule,
                network: true,
            } => write!(f, "denied by CUSTOM policy {policy} rule {rule} (network RBAC)"),
            Reason::Jwt(e) => write!(f, "jwt_authn: {e}"),
            Reason::Denied {
                policy,
                rule,
                network,
            } => write!(f, "denied by DENY policy {policy} rule {rule}{}", net(network)),
            Reason::NoAllowMatch { network: false } => f.write_str("no ALLOW policy matched"),
            Reason::NoAllowMatch { network: true } => f.write_str(
                "no ALLOW policy matched (network RBAC: rules with HTTP-only fields do not apply to TCP)",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_details_and_labels() {
        let deny = Reason::Denied {
            policy: "foo/deny-admin".into(),
            rule: 1,
            network: false,
        };
        assert_eq!(
            deny.response_code_details(),
            "rbac_access_denied_matched_policy[ns[foo]-policy[deny-admin]-rule[1]]"
        );
        assert_eq!(deny.metric_label(), "denied_by_policy");
        assert_eq!(
            deny.to_string(),
            "denied by DENY policy foo/deny-admin rule 1"
        );
        let expired = Reason::Jwt(JwtError::Expired);
        assert_eq!(
            expired.response_code_details(),
            "jwt_authn_access_denied{Jwt_is_expired}"
        );
        assert_eq!(expired.metric_label(), "jwt_expired");
        assert!(Reason::Jwt(JwtError::KidAlgMismatch).is_unknown_kid());
        assert!(!expired.is_unknown_kid());
        assert_eq!(
            Reason::NoAllowMatch { network: false }.response_code_details(),
            "rbac_access_denied_matched_policy[none]"
        );
    }
}
