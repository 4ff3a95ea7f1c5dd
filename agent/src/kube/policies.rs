//! Istio policy objects from the API → the same `PolicyDocument`s the
//! folder source reads from files, put in force through the same
//! `policy::InForce` (parse, and the last-good-version rule). Pure.
//!
//! A document keeps what carries policy meaning: `apiVersion`, `kind`,
//! name, namespace, annotations (`istio.io/dry-run`) and `spec`. Server-side
//! metadata (uid, resourceVersion, managedFields, …) and `status` are left
//! out, so they neither change a decision nor trigger a re-parse. The
//! document's origin is `Kind/namespace/name`, so a problem can be traced
//! back to its object (Events).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::{ApiResource, DynamicObject};

use crate::policy::{DocumentMeta, InForce, PolicyDocument, PolicyError, PolicySet};

/// A policy object with the resource it was read through.
#[derive(Debug, Clone)]
pub struct PolicyObject {
    pub resource: ApiResource,
    pub object: DynamicObject,
}

impl PolicyObject {
    /// `Kind/namespace/name`: the origin of its document.
    pub fn origin(&self) -> String {
        format!(
            "{}/{}/{}",
            self.resource.kind,
            self.object
                .metadata
                .namespace
                .as_deref()
                .unwrap_or_default(),
            self.object.metadata.name.as_deref().unwrap_or_default()
        )
    }

    pub fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.resource.api_version.clone()),
            kind: Some(self.resource.kind.clone()),
            name: self.object.metadata.name.clone(),
            namespace: self.object.metadata.namespace.clone(),
            uid: self.object.metadata.uid.clone(),
            resource_version: self.object.metadata.resource_version.clone(),
            ..ObjectReference::default()
        }
    }

    fn document(&self) -> PolicyDocument {
        let meta = &self.object.metadata;
        PolicyDocument {
            origin: self.origin(),
            api_version: self.resource.api_version.clone(),
            kind: self.resource.kind.clone(),
            metadata: DocumentMeta {
                name: meta.name.clone().unwrap_or_default(),
                namespace: meta.namespace.clone().unwrap_or_default(),
                annotations: meta.annotations.clone().unwrap_or_default(),
            },
            spec: match self.object.data.get("spec") {
                None | Some(serde_json::Value::Null) => serde_json::json!({}),
                Some(spec) => spec.clone(),
            },
        }
    }
}

/// The documents in a stable order (origin), so equal inputs compare equal.
pub fn documents(objects: &[PolicyObject]) -> Vec<PolicyDocument> {
    let mut docs: Vec<PolicyDocument> = objects.iter().map(PolicyObject::document).collect();
    docs.sort_by(|a, b| a.origin.cmp(&b.origin));
    docs
}

/// A policy problem attached to the object it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub object: ObjectReference,
    /// Invalid: this version is not used (the last good one stays in force,
    /// or, if there never was one, the object is left out). Not invalid:
    /// loaded, a part fails safe.
    pub invalid: bool,
    pub message: String,
}

/// Put the documents in force; errors and fail-safe warnings come back per
/// object, an error saying whether the last good version stays in force.
pub fn parse(
    in_force: &mut InForce,
    objects: &[PolicyObject],
    docs: &[PolicyDocument],
) -> (PolicySet, Vec<Problem>) {
    let update = in_force.update(docs, Vec::new());
    let refs: BTreeMap<String, ObjectReference> = objects
        .iter()
        .map(|o| (o.origin(), o.reference()))
        .collect();
    let problem = |e: &PolicyError, invalid: bool, message: String| Problem {
        object: refs.get(&e.origin).cloned().unwrap_or_default(),
        invalid,
        message,
    };
    let mut problems: Vec<Problem> = update
        .errors
        .iter()
        .map(|e| {
            let outcome = match InForce::kept_for(&update.kept, e) {
                Some(_) => "this version is ignored, the last good version stays in force",
                None => "left out (no earlier valid version)",
            };
            problem(e, true, format!("{}; {outcome}", e.message))
        })
        .collect();
    problems.extend(
        update
            .set
            .warnings()
            .iter()
            .map(|e| problem(e, false, e.message.clone())),
    );
    (update.set, problems)
}

/// The RequestAuthentications of `set` (parsed from `objects`) per
/// `jwksUri` their rules name.
pub fn jwks_users(
    set: &PolicySet,
    objects: &[PolicyObject],
) -> BTreeMap<String, Vec<ObjectReference>> {
    let refs: BTreeMap<String, ObjectReference> = objects
        .iter()
        .map(|o| (o.origin(), o.reference()))
        .collect();
    let mut users: BTreeMap<String, Vec<ObjectReference>> = BTreeMap::new();
    for (uri, origin) in set.jwks_uri_origins() {
        if let Some(reference) = refs.get(&origin) {
            users.entry(uri).or_default().push(reference.clone());
        }
    }
    users
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::GroupVersionKind;

    fn object(kind: &str, version: &str, name: &str, spec: serde_json::Value) -> PolicyObject {
        let gvk = GroupVersionKind::gvk("security.istio.io", version, kind);
        let plural = format!("{}s", kind.to_lowercase());
        let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
        let mut object = DynamicObject::new(name, &resource).within("foo");
        object.metadata.uid = Some(format!("uid-{name}"));
        object.metadata.managed_fields = Some(vec![Default::default()]);
        object.data = serde_json::json!({"spec": spec, "status": {"validationMessages": []}});
        PolicyObject { resource, object }
    }

    #[test]
    fn objects_parse_like_files_and_problems_name_their_object() {
        let objects = vec![
            object(
                "RequestAuthentication",
                "v1beta1",
                "jwt",
                serde_json::json!({"jwtRules": [{"issuer": "i", "jwks_uri": "http://j/keys"}]}),
            ),
            object(
                "AuthorizationPolicy",
                "v1",
                "bad",
                serde_json::json!({"action": "DENY", "rules": [{"to": [{"operation": {"pathz": ["/"]}}]}]}),
            ),
            object(
                "AuthorizationPolicy",
                "v1",
                "custom",
                serde_json::json!({"action": "CUSTOM", "provider": {"name": "ext"},
                                   "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}),
            ),
        ];
        let docs = documents(&objects);
        assert_eq!(docs[0].origin, "AuthorizationPolicy/foo/bad");
        assert_eq!(docs[0].spec["action"], "DENY", "spec only, no status");
        let (set, problems) = parse(&mut InForce::default(), &objects, &docs);
        assert_eq!(set.counts(), (1, 1), "the invalid policy is left out");
        assert_eq!(set.jwks_uris()[0].0, "http://j/keys");
        let users = jwks_users(&set, &objects);
        assert_eq!(
            users["http://j/keys"]
                .iter()
                .map(|r| r.name.as_deref())
                .collect::<Vec<_>>(),
            [Some("jwt")]
        );
        let bad = problems.iter().find(|p| p.invalid).expect("an error");
        assert_eq!(bad.object.name.as_deref(), Some("bad"));
        assert_eq!(bad.object.uid.as_deref(), Some("uid-bad"));
        assert!(bad.message.contains("pathz"), "{}", bad.message);
        let custom = problems.iter().find(|p| !p.invalid).expect("a warning");
        assert_eq!(custom.object.name.as_deref(), Some("custom"));
    }

    #[test]
    fn annotations_reach_the_parser_and_a_broken_update_keeps_the_last_good_version() {
        use crate::policy::WorkloadRef;
        let enforced = |set: &PolicySet| -> Vec<String> {
            let w = WorkloadRef {
                namespace: "foo".into(),
                labels: Default::default(),
            };
            let p = set.for_workload(&w, "istio-system");
            p.authz
                .iter()
                .map(|a| format!("{} {:?}", a.id(), a.rules))
                .collect()
        };
        let mut dry = object(
            "AuthorizationPolicy",
            "v1",
            "dry",
            serde_json::json!({"action": "DENY", "rules": [{}]}),
        );
        dry.object.metadata.annotations =
            Some([("istio.io/dry-run".to_owned(), "true".to_owned())].into());
        let deny = |paths: serde_json::Value| {
            object(
                "AuthorizationPolicy",
                "v1",
                "deny",
                serde_json::json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": paths}}]}]}),
            )
        };
        let mut in_force = InForce::default();
        let objects = vec![dry.clone(), deny(serde_json::json!(["/a"]))];
        let (set, problems) = parse(&mut in_force, &objects, &documents(&objects));
        assert!(problems.is_empty(), "{problems:?}");
        let good = enforced(&set);
        assert_eq!(
            good.len(),
            1,
            "the dry-run policy is not enforced: {good:?}"
        );
        assert!(good[0].starts_with("foo/deny"), "{good:?}");

        // A CIDR that passes the CRD schema but not Istio's validation.
        let mut broken = deny(serde_json::json!(["/b"]));
        broken.object.data["spec"]["rules"][0]["from"] =
            serde_json::json!([{"source": {"ipBlocks": ["10.0.0.0/33"]}}]);
        let objects = vec![dry, broken];
        let (set, problems) = parse(&mut in_force, &objects, &documents(&objects));
        assert_eq!(enforced(&set), good, "the last good version stays");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].invalid);
        assert_eq!(problems[0].object.name.as_deref(), Some("deny"));
        assert!(
            problems[0]
                .message
                .ends_with("; this version is ignored, the last good version stays in force"),
            "{}",
            problems[0].message
        );
    }
}
