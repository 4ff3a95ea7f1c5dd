//! The one form in which every source hands a policy resource to the parser:
//! `apiVersion`, `kind`, the metadata that carries meaning (name, namespace,
//! annotations) and `spec` as JSON — what `kubectl apply` sends and what the
//! API server returns, minus server-side fields and `status`.
//!
//! The folder source reads files into documents here (`read_files`); the
//! Kubernetes source builds them from API objects (`kube/policies.rs`). From
//! there on both take the same path (`PolicySet::from_documents`), so a
//! policy cannot mean one thing in a file and another in the cluster (an
//! annotation such as `istio.io/dry-run` used to be lost on the way from the
//! API server).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use super::PolicyError;

/// The kinds jwtgate reads; documents of any other kind are not policies.
pub const KINDS: [&str; 2] = ["RequestAuthentication", "AuthorizationPolicy"];

/// One RequestAuthentication or AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    /// Where it came from: a file path, or `Kind/namespace/name` for an API
    /// object. Errors and last-good bookkeeping are keyed by it.
    pub origin: String,
    pub api_version: String,
    pub kind: String,
    pub metadata: DocumentMeta,
    /// `{}` when absent.
    pub spec: serde_json::Value,
}

/// The part of `metadata` that policy semantics depend on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocumentMeta {
    pub name: String,
    /// `default` when a file leaves it out, as `kubectl apply` would.
    pub namespace: String,
    pub annotations: BTreeMap<String, String>,
}

impl PolicyDocument {
    /// `Kind ns/name`: how errors name the resource, and its identity for
    /// keeping the last good version.
    pub fn resource(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind, self.metadata.namespace, self.metadata.name
        )
    }
}

/// `metadata` as a file may write it. Not `deny_unknown_fields`: labels,
/// uid and the rest of `kubectl get -o yaml` output are fine, they just do
/// not matter. Annotation values must be strings, as the API server demands
/// (`istio.io/dry-run: true` unquoted is rejected by `kubectl apply` too).
#[derive(Deserialize)]
struct FileMeta {
    name: Option<String>,
    namespace: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

/// Split YAML files (`(origin, text)`, each with any number of
/// `---`-separated documents) into policy documents. Documents of other
/// kinds are skipped; a `kind: List` (`kubectl get -o yaml`) is unpacked. A
/// YAML syntax error ends its file (the stream cannot be resynchronised) and
/// is reported as `whole_file`.
pub fn read_files(files: &[(String, String)]) -> (Vec<PolicyDocument>, Vec<PolicyError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (origin, text) in files {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let label = format!("document {}", i + 1);
            match Value::deserialize(doc) {
                Ok(v) => read_value(origin, &label, v, &mut docs, &mut errors),
                Err(e) => {
                    errors.push(PolicyError {
                        origin: origin.clone(),
                        resource: label,
                        message: format!("invalid YAML: {e}"),
                        whole_file: true,
                    });
                    break;
                }
            }
        }
    }
    (docs, errors)
}

fn read_value(
    origin: &str,
    label: &str,
    v: Value,
    docs: &mut Vec<PolicyDocument>,
    errors: &mut Vec<PolicyError>,
) {
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let (api_version, kind) = (field("apiVersion").to_owned(), field("kind").to_owned());
    if kind == "List" {
        if let Some(Value::Sequence(items)) = v.get("items") {
            for item in items.clone() {
                read_value(origin, label, item, docs, errors);
            }
        }
        return;
    }
    // Same kind names in other API groups are not Istio's.
    if !KINDS.contains(&kind.as_str()) || !api_version.starts_with("security.istio.io/") {
        return;
    }
    let error = |resource: &str, message: String| PolicyError {
        origin: origin.to_owned(),
        resource: resource.to_owned(),
        message,
        whole_file: false,
    };
    let meta = v.get("metadata").cloned().unwrap_or(Value::Null);
    let meta: FileMeta = if meta.is_null() {
        FileMeta {
            name: None,
            namespace: None,
            annotations: None,
        }
    } else {
        match serde_path_to_error::deserialize(meta) {
            Ok(m) => m,
            Err(e) => {
                let path = e.path().to_string();
                errors.push(error(
                    label,
                    format!("{kind}: metadata.{path}: {}", e.into_inner()),
                ));
                return;
            }
        }
    };
    let Some(name) = meta.name.filter(|n| !n.is_empty()) else {
        errors.push(error(label, format!("{kind}: metadata.name is required")));
        return;
    };
    let metadata = DocumentMeta {
        name,
        namespace: meta
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
        annotations: meta.annotations.unwrap_or_default(),
    };
    let spec = match v.get("spec") {
        None | Some(Value::Null) => Ok(serde_json::json!({})),
        // JSON is the API server's form; YAML that has no JSON form (a
        // non-string key) could not be applied either.
        Some(spec) => serde_json::to_value(spec),
    };
    let doc = PolicyDocument {
        origin: origin.to_owned(),
        api_version,
        kind,
        metadata,
        spec: serde_json::Value::Null,
    };
    match spec {
        Ok(spec) => docs.push(PolicyDocument { spec, ..doc }),
        Err(e) => errors.push(error(&doc.resource(), format!("spec: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_become_documents_with_their_annotations() {
        let yaml = "apiVersion: v1\nkind: List\nitems:\n\
            - apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  \
              metadata: {name: a, namespace: foo, uid: x, labels: {k: v}, annotations: {istio.io/dry-run: 'true'}}\n  \
              spec: {action: DENY, rules: [{}]}\n\
            ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n\
            ---\napiVersion: other.example/v1\nkind: AuthorizationPolicy\nmetadata: {name: o}\n\
            ---\napiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: r}\n";
        let (docs, errors) = read_files(&[("f.yaml".into(), yaml.into())]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].resource(), "AuthorizationPolicy foo/a");
        assert_eq!(docs[0].metadata.annotations["istio.io/dry-run"], "true");
        assert_eq!(docs[0].spec["action"], "DENY");
        assert_eq!(docs[1].resource(), "RequestAuthentication default/r");
        assert_eq!(docs[1].spec, serde_json::json!({}));
    }

    #[test]
    fn metadata_that_the_api_server_would_refuse_is_an_error() {
        let cases = [
            (
                "metadata: {namespace: foo}",
                "document 1",
                "metadata.name is required",
            ),
            (
                "metadata: {name: a, annotations: {istio.io/dry-run: true}}",
                "document 1",
                "metadata.annotations.istio.io/dry-run: invalid type: boolean `true`, expected a string",
            ),
            (
                "metadata: {name: a}\nspec: {? [1, 2] : x}",
                "AuthorizationPolicy default/a",
                "spec: ",
            ),
        ];
        for (rest, resource, message) in cases {
            let yaml =
                format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n{rest}\n");
            let (docs, errors) = read_files(&[("f.yaml".into(), yaml)]);
            assert!(docs.is_empty(), "{rest}");
            assert_eq!(errors.len(), 1, "{rest}");
            assert_eq!(errors[0].resource, resource);
            assert!(errors[0].message.contains(message), "{}", errors[0].message);
        }
    }

    #[test]
    fn a_syntax_error_ends_the_file() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n---\nkind: [\n";
        let (docs, errors) = read_files(&[("f.yaml".into(), yaml.into())]);
        assert_eq!(docs.len(), 1);
        assert!(errors[0].whole_file);
        assert_eq!(errors[0].resource, "document 2");
    }
}
