//! "Why 403?": for one workload, which policies select it, the rules they
//! hold, and its last denials with their reasons — what `istioctl x authz
//! check` answers for Istio. The same JSON comes from a running agent
//! (`/debug/workloads`, `/debug/denials` on `--metrics-addr`) and from a
//! policy folder (`jwtgate explain --policies DIR`); `render_text` turns it
//! into what a person reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, RwLock};

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::access_log::{AccessLog, Entry};
use crate::jwt::TokenLocation;
use crate::policy::{
    Action, Attribute, FieldMatch, JwksSource, Rule, StringPattern, TemplatePart, ValueMatch,
    WorkloadPolicy,
};

/// A workload's policies as JSON: its RequestAuthentication rules (by
/// origin) and its AuthorizationPolicies in evaluation order, each rule
/// spelled out.
pub fn workload_json(
    key: &str,
    labels: &BTreeMap<String, String>,
    policy: &WorkloadPolicy,
) -> Value {
    let jwt_rules: Vec<Value> = policy
        .jwt_rules
        .iter()
        .map(|r| {
            let jwks = match &r.jwks {
                JwksSource::Inline(_) => "inline".to_string(),
                JwksSource::Uri(uri) => uri.clone(),
                JwksSource::Unset => "none".to_string(),
            };
            json!({
                "request_authentication": r.origin,
                "issuer": r.issuer,
                "audiences": r.audiences,
                "jwks": jwks,
                "from": r.locations.iter().map(location).collect::<Vec<_>>(),
                "forward_original_token": r.forward_original_token,
            })
        })
        .collect();
    // Envoy's order: CUSTOM, (jwt_authn), AUDIT, DENY, ALLOW.
    let order = [Action::Custom, Action::Audit, Action::Deny, Action::Allow];
    let mut authz: Vec<Value> = Vec::new();
    for action in order {
        for p in policy.authz.iter().filter(|p| p.action == action) {
            authz.push(json!({
                "policy": p.id(),
                "action": action_name(action),
                "rules": p.rules.iter().enumerate().map(|(i, r)| json!({
                    "rule": i,
                    "matches": describe_rule(r),
                })).collect::<Vec<_>>(),
            }));
        }
    }
    let has_allow = policy.authz.iter().any(|p| p.action == Action::Allow);
    json!({
        "workload": key,
        "labels": labels,
        "jwt_rules": jwt_rules,
        "authorization_policies": authz,
        "default": if has_allow {
            "deny: ALLOW policies apply, a request no ALLOW rule matches gets 403"
        } else {
            "allow: no ALLOW policy applies, what no DENY rule matches is allowed"
        },
    })
}

/// The denials as JSON (newest last).
pub fn denials_json(denials: &[Entry]) -> Value {
    json!(denials)
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}

fn location(l: &TokenLocation) -> String {
    match l {
        TokenLocation::Header { name, prefix } if prefix.is_empty() => format!("header {name}"),
        TokenLocation::Header { name, prefix } => format!("header {name} ({prefix:?}…)"),
        TokenLocation::Param(p) => format!("query parameter {p}"),
        TokenLocation::Cookie(c) => format!("cookie {c}"),
    }
}

/// A rule as readable conditions: every `from` and `to` entry is an
/// alternative (any may match), the fields inside one must all match,
/// and every `when` must hold.
fn describe_rule(rule: &Rule) -> Value {
    let side = |entries: &Option<Vec<Vec<FieldMatch>>>| -> Value {
        match entries {
            None => Value::Null,
            Some(entries) => json!(entries
                .iter()
                .map(|fields| fields.iter().map(describe_field).collect::<Vec<_>>())
                .collect::<Vec<_>>()),
        }
    };
    json!({
        "from": side(&rule.from),
        "to": side(&rule.to),
        "when": rule.when.iter().map(describe_field).collect::<Vec<_>>(),
    })
}

fn describe_field(f: &FieldMatch) -> String {
    let attr = match &f.attr {
        Attribute::RequestPrincipal => "request.auth.principal".to_string(),
        Attribute::Path => "path".to_string(),
        Attribute::Method => "method".to_string(),
        Attribute::Host => "host".to_string(),
        Attribute::Port => "destination.port".to_string(),
        Attribute::SourceIp => "source.ip".to_string(),
        Attribute::RemoteIp => "remote.ip".to_string(),
        Attribute::DestinationIp => "destination.ip".to_string(),
        Attribute::Header(h) => format!("request.headers[{h}]"),
        Attribute::Claim(path) => format!("request.auth.claims[{}]", path.join("][")),
        Attribute::Absent(what) => format!("{what} (never present: plaintext)"),
        Attribute::Unsupported(what) => format!("{what} (unsupported: fails safe)"),
    };
    let values: Vec<String> = f.values.iter().map(describe_value).collect();
    let op = if f.negated { "not in" } else { "in" };
    format!("{attr} {op} [{}]", values.join(", "))
}

fn pattern(p: &StringPattern) -> String {
    match p {
        StringPattern::Exact(s) => s.clone(),
        StringPattern::Prefix(s) => format!("{s}*"),
        StringPattern::Suffix(s) => format!("*{s}"),
        StringPattern::Present => "*".to_string(),
    }
}

fn describe_value(v: &ValueMatch) -> String {
    match v {
        ValueMatch::Str(p) => pattern(p),
        ValueMatch::Principal { iss, sub } => format!("{}/{}", pattern(iss), pattern(sub)),
        ValueMatch::Port(p) => p.to_string(),
        ValueMatch::Cidr(ip, len) => format!("{ip}/{len}"),
        ValueMatch::PathTemplate(parts) => parts
            .iter()
            .map(|p| match p {
                TemplatePart::Literal(s) => s.clone(),
                TemplatePart::OneSegment => "{*}".to_string(),
                TemplatePart::Rest => "{**}".to_string(),
            })
            .collect(),
    }
}

/// What `jwtgate explain` prints for people: the workload's policies, then
/// its denials.
pub fn render_text(workload: &Value, denials: &[Value]) -> String {
    let mut out = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let _ = writeln!(out, "workload {}", s(&workload["workload"]));
    if let Some(labels) = workload["labels"].as_object() {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", s(v)))
            .collect();
        let _ = writeln!(out, "  labels: {}", l.join(","));
    }
    let _ = writeln!(out, "\nRequestAuthentication (jwt_authn):");
    match workload["jwt_rules"].as_array() {
        Some(rules) if !rules.is_empty() => {
            for r in rules {
                let _ = writeln!(
                    out,
                    "  {}  issuer {}  jwks {}  audiences {}  from {}",
                    s(&r["request_authentication"]),
                    s(&r["issuer"]),
                    s(&r["jwks"]),
                    r["audiences"],
                    r["from"]
                );
            }
        }
        _ => {
            let _ = writeln!(
                out,
                "  none: tokens are not verified, requests go on to authorization"
            );
        }
    }
    let _ = writeln!(out, "\nAuthorizationPolicy (in evaluation order):");
    match workload["authorization_policies"].as_array() {
        Some(policies) if !policies.is_empty() => {
            for p in policies {
                let _ = writeln!(out, "  {} {}", s(&p["action"]), s(&p["policy"]));
                for r in p["rules"].as_array().into_iter().flatten() {
                    let _ = writeln!(out, "    rule {}: {}", r["rule"], r["matches"]);
                }
            }
        }
        _ => {
            let _ = writeln!(out, "  none");
        }
    }
    let _ = writeln!(out, "  default: {}", s(&workload["default"]));
    if !denials.is_empty() {
        let _ = writeln!(out, "\nlast {} denials (oldest first):", denials.len());
        for d in denials {
            let _ = writeln!(
                out,
                "  {} {} {} {} -> {} {}  {}  from {}",
                s(&d["start_time"]),
                s(&d["method"]),
                s(&d["path"]),
                s(&d["protocol"]),
                d["response_code"],
                s(&d["response_code_details"]),
                s(&d["reason"]),
                s(&d["downstream_remote_address"]),
            );
        }
    }
    out
}

/// The enrolled workloads as the debug endpoint sees them: kept by the
/// enrolment backend, read by `/debug/workloads`.
#[derive(Default)]
pub struct Directory {
    workloads: RwLock<BTreeMap<String, Listed>>,
}

struct Listed {
    labels: BTreeMap<String, String>,
    policy: Mutex<watch::Receiver<std::sync::Arc<WorkloadPolicy>>>,
}

impl Directory {
    pub fn insert(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        policy: watch::Receiver<std::sync::Arc<WorkloadPolicy>>,
    ) {
        if let Ok(mut w) = self.workloads.write() {
            w.insert(
                key.to_string(),
                Listed {
                    labels,
                    policy: Mutex::new(policy),
                },
            );
        }
    }

    pub fn remove(&self, key: &str) {
        if let Ok(mut w) = self.workloads.write() {
            w.remove(key);
        }
    }

    /// Every enrolled workload's explanation, or only `key`'s.
    pub fn json(&self, key: Option<&str>) -> Vec<Value> {
        let Ok(w) = self.workloads.read() else {
            return Vec::new();
        };
        w.iter()
            .filter(|(k, _)| key.is_none_or(|want| want == k.as_str()))
            .map(|(k, listed)| {
                let policy = listed
                    .policy
                    .lock()
                    .map(|p| p.borrow().clone())
                    .unwrap_or_default();
                workload_json(k, &listed.labels, &policy)
            })
            .collect()
    }
}

/// `/debug/workloads[?workload=ns/name]` and
/// `/debug/denials[?workload=ns/name]`, as JSON.
pub fn debug_answer(
    directory: &Directory,
    access_log: &AccessLog,
    path: &str,
    query: &str,
) -> Option<(u16, String)> {
    let workload = query_param(query, "workload");
    match path {
        "/debug/workloads" => {
            let found = directory.json(workload.as_deref());
            if workload.is_some() && found.is_empty() {
                return Some((
                    404,
                    json!({"error": "no such enrolled workload"}).to_string(),
                ));
            }
            Some((200, Value::Array(found).to_string()))
        }
        "/debug/denials" => Some((
            200,
            denials_json(&access_log.recent_denials(workload.as_deref())).to_string(),
        )),
        _ => None,
    }
}

/// A query parameter's value, percent-decoded (`ns%2Fname` → `ns/name`).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySet, WorkloadRef};

    const POLICIES: &str = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwksUri: http://jwks.example/keys
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - to:
    - operation: {paths: [\"/admin*\"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other, namespace: bar}
spec:
  action: DENY
  rules: [{}]
";

    #[test]
    fn a_workload_shows_the_policies_that_select_it_and_their_rules() {
        let (set, errors) = PolicySet::parse(&[("p.yaml".into(), POLICIES.into())]);
        assert!(errors.is_empty(), "{errors:?}");
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let policy = set.for_workload(
            &WorkloadRef {
                namespace: "foo".into(),
                labels: labels.clone(),
            },
            "istio-system",
        );
        let json = workload_json("foo/web", &labels, &policy);
        assert_eq!(json["jwt_rules"][0]["issuer"], "testing@secure.istio.io");
        assert_eq!(json["jwt_rules"][0]["jwks"], "http://jwks.example/keys");
        let authz = json["authorization_policies"].as_array().unwrap();
        assert_eq!(authz.len(), 1, "bar/other selects nothing here: {json}");
        assert_eq!(authz[0]["policy"], "foo/deny-admin");
        assert_eq!(authz[0]["action"], "DENY");
        assert_eq!(
            authz[0]["rules"][0]["matches"]["to"][0][0],
            "path in [/admin*]"
        );
        let text = render_text(&json, &[]);
        assert!(text.contains("DENY foo/deny-admin"), "{text}");
        assert!(text.contains("path in [/admin*]"), "{text}");
    }

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_param("workload=foo%2Fweb&x=1", "workload").as_deref(),
            Some("foo/web")
        );
        assert_eq!(query_param("x=1", "workload"), None);
        assert_eq!(percent_decode("a%zz%"), "a%zz%");
    }
}
