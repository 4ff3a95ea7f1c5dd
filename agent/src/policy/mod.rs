//! Istio `RequestAuthentication` and `AuthorizationPolicy` resources: parsing
//! from YAML text and selection for one workload. Pure: no files, no sockets.
//!
//! INTERFACE CONTRACT (used by sources/, proxy/ and cli/; keep these signatures).
//!
//! Layout: `document` (the one input form of both sources: files and API
//! objects), `raw` (the spec's shape), `parse` (validation, RequestAuthn),
//! `rules` (AuthorizationPolicy rules), `model` (what the engines consume),
//! `in_force` (the last-good-version rule both sources share), selection
//! below (§2.1).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

mod document;
mod in_force;
mod model;
mod parse;
mod raw;
mod rules;

#[cfg(test)]
mod tests;

pub use document::{read_files, DocumentMeta, PolicyDocument};
pub use in_force::{InForce, Kept, Update};
pub use model::*;
pub use parse::{parse_duration, DRY_RUN};
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
    /// The whole file could not be used (YAML syntax error, unreadable): its
    /// resources cannot be told apart, so they are kept or dropped together.
    pub whole_file: bool,
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
        let (docs, mut errors) = read_files(files);
        let (set, more) = PolicySet::from_documents(&docs);
        errors.extend(more);
        (set, errors)
    }

    /// Parse documents, whichever source they came from: the one entry point
    /// of both the folder and the Kubernetes source. Invalid resources are
    /// reported and left out.
    pub fn from_documents(docs: &[PolicyDocument]) -> (PolicySet, Vec<PolicyError>) {
        let (
            Parsed {
                authns,
                authzs,
                warnings,
            },
            errors,
        ) = parse::parse_documents(docs);
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

    /// `(jwksUri, origin)` for each RequestAuthentication whose rules name
    /// that URI (origin as given to `parse`), sorted and without duplicates:
    /// whom to tell when the URI cannot be fetched.
    pub fn jwks_uri_origins(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .authns
            .iter()
            .flat_map(|ra| {
                ra.rules.iter().filter_map(|rule| match &rule.jwks {
                    JwksSource::Uri(u) => Some((u.clone(), ra.origin.clone())),
                    _ => None,
                })
            })
            .collect();
        out.sort();
        out.dedup();
        out
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

    /// Keep the last good version of what `errors` (from parsing `self`)
    /// broke, taken from `previous`, the set that was in force: a resource
    /// that became invalid keeps its previous version, and a file that
    /// stopped parsing keeps all of its previous resources. A broken edit must
    /// never open a workload (nor close one that worked). Resources that were
    /// never valid stay out, as a `kubectl apply` rejected by admission would.
    /// Returns what was kept. `InForce` is the one caller.
    fn keep_last_good(&mut self, previous: &PolicySet, errors: &[PolicyError]) -> Vec<Kept> {
        let mut kept = Vec::new();
        let mut files: Vec<&str> = errors
            .iter()
            .filter(|e| e.whole_file)
            .map(|e| e.origin.as_str())
            .collect();
        files.dedup();
        for file in files {
            let old_authns: Vec<_> = previous
                .authns
                .iter()
                .filter(|r| r.origin == file)
                .cloned()
                .collect();
            let old_authzs: Vec<_> = previous
                .authzs
                .iter()
                .filter(|r| r.origin == file)
                .cloned()
                .collect();
            if old_authns.is_empty() && old_authzs.is_empty() {
                // Nothing known good: what did parse (documents before the
                // syntax error) is used.
                continue;
            }
            self.authns.retain(|r| r.origin != file);
            self.authzs.retain(|r| r.origin != file);
            kept.push(Kept {
                origin: file.to_owned(),
                resource: None,
                resources: old_authns.len() + old_authzs.len(),
            });
            self.authns.extend(old_authns);
            self.authzs.extend(old_authzs);
        }
        for e in errors.iter().filter(|e| !e.whole_file) {
            let present = self.authns.iter().any(|r| r.resource == e.resource)
                || self.authzs.iter().any(|r| r.resource == e.resource);
            if present {
                continue;
            }
            let old_authns: Vec<_> = previous
                .authns
                .iter()
                .filter(|r| r.resource == e.resource)
                .cloned()
                .collect();
            let old_authzs: Vec<_> = previous
                .authzs
                .iter()
                .filter(|r| r.resource == e.resource)
                .cloned()
                .collect();
            if old_authns.is_empty() && old_authzs.is_empty() {
                continue;
            }
            kept.push(Kept {
                origin: e.origin.clone(),
                resource: Some(e.resource.clone()),
                resources: old_authns.len() + old_authzs.len(),
            });
            self.authns.extend(old_authns);
            self.authzs.extend(old_authzs);
        }
        kept
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
