//! Istio `RequestAuthentication` and `AuthorizationPolicy` resources: parsing
//! from YAML text and selection for one workload. Pure: no files, no sockets.
//!
//! INTERFACE CONTRACT (used by sources/, proxy/ and cli/; keep these signatures).
//!
//! Layout: `raw` (YAML shape), `parse` (documents, validation, RequestAuthn),
//! `rules` (AuthorizationPolicy rules), `model` (what the engines consume),
//! selection below (§2.1).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

mod model;
mod parse;
mod raw;
mod rules;

#[cfg(test)]
mod tests;

pub use model::*;
pub use parse::parse_duration;
use parse::{Attachment, Parsed};

/// A workload as policy selection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRef {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// A problem with one document or resource; the other resources still load.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{origin}: {resource}: {message}")]
pub struct PolicyError {
    /// File (or other source) the resource came from.
    pub origin: String,
    /// `Kind ns/name`, or `document N` when the name is unknown.
    pub resource: String,
    pub message: String,
}

/// All policies known to the agent (from one source).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    authns: Vec<parse::RequestAuthn>,
    authzs: Vec<parse::AuthzEntry>,
    warnings: Vec<PolicyError>,
}

/// The policies that apply to one workload, resolved (see `PolicySet::for_workload`).
#[derive(Debug, Clone, Default)]
pub struct WorkloadPolicy {
    /// Rules of every selected RequestAuthentication, sorted by issuer (§2.1).
    pub jwt_rules: Vec<Arc<JwtRule>>,
    /// Selected AuthorizationPolicies (dry-run ones left out), by `ns/name`.
    pub authz: Vec<Arc<AuthzPolicy>>,
}

impl PolicySet {
    /// Parse a set of YAML files (`(origin, text)`), each holding any number of
    /// `---`-separated documents. Resources of other kinds are ignored; invalid
    /// ones are reported and left out.
    pub fn parse(files: &[(String, String)]) -> (PolicySet, Vec<PolicyError>) {
        let (
            Parsed {
                authns,
                authzs,
                warnings,
            },
            errors,
        ) = parse::parse_files(files);
        for w in &warnings {
            tracing::warn!(%w, "policy field not supported");
        }
        (
            PolicySet {
                authns,
                authzs,
                warnings,
            },
            errors,
        )
    }

    /// Policies that apply to `workload` (its namespace plus `root_namespace`).
    pub fn for_workload(&self, workload: &WorkloadRef, root_namespace: &str) -> WorkloadPolicy {
        let applies = |ns: &str, a: &Attachment| {
            (ns == workload.namespace || ns == root_namespace)
                && match a {
                    // Sidecar-style workloads ignore targetRef policies (§2.1).
                    Attachment::TargetRef => false,
                    Attachment::Selector(None) => true,
                    Attachment::Selector(Some(labels)) => labels
                        .iter()
                        .all(|(k, v)| workload.labels.get(k) == Some(v)),
                }
        };
        let mut jwt_rules: Vec<Arc<JwtRule>> = self
            .authns
            .iter()
            .filter(|ra| applies(&ra.namespace, &ra.attachment))
            .flat_map(|ra| ra.rules.iter().cloned())
            .collect();
        // Plain union sorted by issuer, no de-duplication (istio#19245).
        jwt_rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        let mut authz: Vec<Arc<AuthzPolicy>> = self
            .authzs
            .iter()
            .filter(|e| !e.dry_run && applies(&e.policy.namespace, &e.attachment))
            .map(|e| e.policy.clone())
            .collect();
        authz.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        WorkloadPolicy { jwt_rules, authz }
    }

    /// Every `jwksUri` referenced by any rule, with the rule's fetch timeout.
    pub fn jwks_uris(&self) -> Vec<(String, Duration)> {
        let mut out: Vec<(String, Duration)> = Vec::new();
        for rule in self.authns.iter().flat_map(|ra| &ra.rules) {
            if let JwksSource::Uri(u) = &rule.jwks {
                match out.iter_mut().find(|(x, _)| x == u) {
                    // Shared URI: the most patient rule's timeout.
                    Some((_, t)) => *t = (*t).max(rule.timeout),
                    None => out.push((u.clone(), rule.timeout)),
                }
            }
        }
        out.sort();
        out
    }

    /// Number of RequestAuthentication and AuthorizationPolicy resources.
    pub fn counts(&self) -> (usize, usize) {
        (self.authns.len(), self.authzs.len())
    }

    /// Resources that loaded but use fields jwtgate evaluates fail-safe
    /// (`Attribute::Unsupported`).
    pub fn warnings(&self) -> &[PolicyError] {
        &self.warnings
    }
}

impl WorkloadPolicy {
    /// True when nothing applies: requests can be passed through unchecked.
    pub fn is_empty(&self) -> bool {
        self.jwt_rules.is_empty() && self.authz.is_empty()
    }
}
