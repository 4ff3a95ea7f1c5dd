//! The policies in force from one source, and the rule both sources follow
//! when an update is broken: a resource that becomes invalid keeps its last
//! good version, and an origin that cannot be read or parsed at all (a file
//! with a YAML syntax error) keeps all of its previous resources. What was
//! never valid stays out, as a `kubectl apply` refused by Istio's admission
//! webhook leaves nothing behind. In a cluster with that webhook an invalid
//! update never reaches the API server, so the old version stays in force
//! there too; without it, the update does reach us, and this rule gives the
//! same outcome.

use std::fmt;

use super::{PolicyDocument, PolicyError, PolicySet};

/// Holds the set last put in force; `update` derives the next one.
#[derive(Debug, Default)]
pub struct InForce {
    current: Option<PolicySet>,
}

/// The result of one update.
#[derive(Debug)]
pub struct Update {
    /// The set to put in force now.
    pub set: PolicySet,
    /// Every problem found (each names origin, resource and field).
    pub errors: Vec<PolicyError>,
    /// What stayed at its last good version because of those problems.
    pub kept: Vec<Kept>,
}

/// A resource (or a whole origin) that stays at its last good version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub origin: String,
    /// `Kind ns/name`; `None` when the whole origin was kept.
    pub resource: Option<String>,
    /// How many resources that version holds.
    pub resources: usize,
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resource {
            Some(r) => write!(f, "{}: {r}: keeping its last good version", self.origin),
            None => write!(
                f,
                "{}: keeping its last good version ({} resources)",
                self.origin, self.resources
            ),
        }
    }
}

impl InForce {
    /// Parse `docs` — the complete current contents of the source — and
    /// return the set to put in force. `unread` are problems the source met
    /// before parsing (unreadable or syntactically broken origins, marked
    /// `whole_file`, and documents it could not build).
    pub fn update(&mut self, docs: &[PolicyDocument], unread: Vec<PolicyError>) -> Update {
        let (mut set, parse_errors) = PolicySet::from_documents(docs);
        let mut errors = unread;
        errors.extend(parse_errors);
        let kept = match &self.current {
            Some(previous) => set.keep_last_good(previous, &errors),
            None => Vec::new(),
        };
        self.current = Some(set.clone());
        Update { set, errors, kept }
    }

    /// Whether `error` left its resource (or origin) at the last good version.
    pub fn kept_for<'a>(kept: &'a [Kept], error: &PolicyError) -> Option<&'a Kept> {
        kept.iter().find(|k| {
            k.origin == error.origin
                && (k.resource.is_none() || k.resource.as_deref() == Some(error.resource.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{read_files, WorkloadRef};

    fn docs(yaml: &str) -> (Vec<PolicyDocument>, Vec<PolicyError>) {
        read_files(&[("f.yaml".into(), yaml.into())])
    }

    fn deny(path: &str, extra: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: d, namespace: foo}}\nspec:\n  action: DENY\n  \
             rules: [{{to: [{{operation: {{paths: ['{path}']}}}}]{extra}}}]\n"
        )
    }

    fn denied_path(set: &PolicySet) -> Option<String> {
        let w = WorkloadRef {
            namespace: "foo".into(),
            labels: Default::default(),
        };
        let p = set.for_workload(&w, "istio-system");
        p.authz.first().map(|a| format!("{:?}", a.rules))
    }

    #[test]
    fn a_broken_update_keeps_the_last_good_version_and_a_new_one_replaces_it() {
        let mut in_force = InForce::default();
        let (d, e) = docs(&deny("/a", ""));
        let first = in_force.update(&d, e);
        assert!(first.errors.is_empty() && first.kept.is_empty());
        let good = denied_path(&first.set).expect("enforced");

        // Invalid update (a CIDR Istio refuses): the first version stays.
        let (d, e) = docs(&deny(
            "/b",
            ", from: [{source: {ipBlocks: ['10.0.0.0/33']}}]",
        ));
        let broken = in_force.update(&d, e);
        assert_eq!(broken.errors.len(), 1);
        assert_eq!(
            broken.kept,
            [Kept {
                origin: "f.yaml".into(),
                resource: Some("AuthorizationPolicy foo/d".into()),
                resources: 1
            }]
        );
        assert!(InForce::kept_for(&broken.kept, &broken.errors[0]).is_some());
        assert_eq!(denied_path(&broken.set).as_ref(), Some(&good));

        // Still broken: still kept (the kept version is what is in force).
        let (d, e) = docs(&deny("/c", ", from: [{source: {ipBlocks: ['x']}}]"));
        assert_eq!(
            denied_path(&in_force.update(&d, e).set).as_ref(),
            Some(&good)
        );

        // Fixed: the new version applies.
        let (d, e) = docs(&deny("/d", ""));
        let fixed = in_force.update(&d, e);
        assert!(fixed.kept.is_empty());
        assert_ne!(denied_path(&fixed.set).as_ref(), Some(&good));

        // Gone from the source: gone.
        assert!(denied_path(&in_force.update(&[], vec![]).set).is_none());

        // Never valid: stays out.
        let (d, e) = docs(&deny("/e", ", from: [{source: {ipBlocks: ['x']}}]"));
        let never = in_force.update(&d, e);
        assert!(never.kept.is_empty() && denied_path(&never.set).is_none());
        assert!(InForce::kept_for(&never.kept, &never.errors[0]).is_none());
    }
}
