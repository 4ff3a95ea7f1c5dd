//! Istio policy objects from the API → the same `PolicySet` local mode
//! builds. Pure.
//!
//! Each object becomes one JSON document (JSON is YAML, so `PolicySet::parse`
//! reads it unchanged) holding only `apiVersion`, `kind`, `metadata.name`,
//! `metadata.namespace` and `spec`: server-side metadata and `status` are not
//! policy. The document's origin is `Kind/namespace/name`, so a parse error
//! can be traced back to its object (Events).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::{ApiResource, DynamicObject};

use crate::policy::{PolicyError, PolicySet};

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

    fn document(&self) -> String {
        let doc = serde_json::json!({
            "apiVersion": self.resource.api_version,
            "kind": self.resource.kind,
            "metadata": {
                "name": self.object.metadata.name,
                "namespace": self.object.metadata.namespace,
            },
            "spec": self.object.data.get("spec").cloned().unwrap_or_else(|| serde_json::json!({})),
        });
        doc.to_string()
    }
}

/// The documents in a stable order (origin), so equal inputs compare equal.
pub fn documents(objects: &[PolicyObject]) -> Vec<(String, String)> {
    let mut docs: Vec<(String, String)> =
        objects.iter().map(|o| (o.origin(), o.document())).collect();
    docs.sort();
    docs
}

/// A policy problem attached to the object it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub object: ObjectReference,
    /// Invalid: left out entirely. Not invalid: loaded, part fails safe.
    pub invalid: bool,
    pub message: String,
}

/// Parse the documents; errors and fail-safe warnings come back per object.
pub fn parse(objects: &[PolicyObject], docs: &[(String, String)]) -> (PolicySet, Vec<Problem>) {
    let (set, errors) = PolicySet::parse(docs);
    let refs: BTreeMap<String, ObjectReference> = objects
        .iter()
        .map(|o| (o.origin(), o.reference()))
        .collect();
    let problem = |e: &PolicyError, invalid: bool| Problem {
        object: refs.get(&e.origin).cloned().unwrap_or_default(),
        invalid,
        message: e.message.clone(),
    };
    let mut problems: Vec<Problem> = errors.iter().map(|e| problem(e, true)).collect();
    problems.extend(set.warnings().iter().map(|e| problem(e, false)));
    (set, problems)
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
        assert!(docs[0].0.starts_with("AuthorizationPolicy/foo/bad"));
        let (set, problems) = parse(&objects, &docs);
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
}
