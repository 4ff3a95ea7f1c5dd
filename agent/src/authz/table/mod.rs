//! The table-driven suite: one `Case` per line, each naming where it comes
//! from (a section of `reference/istio-semantics.md`, an istio.io page, or an
//! upstream Istio test). Every case is an AuthorizationPolicy (YAML) plus a
//! request, decided through `evaluate` with the RequestAuthentication below,
//! which accepts the Istio sample tokens of `testdata/istio-samples`.
//!
//! Files by topic: `actions` (order, empty policies, CUSTOM, AUDIT, scoping),
//! `source`, `operation`, `conditions`, `paths` (normalization bypasses).

use std::collections::HashMap;
use std::net::IpAddr;

use super::tests::{sample, Map, NOW};
use super::*;
use crate::policy::{PolicySet, WorkloadRef};

mod actions;
mod conditions;
mod operation;
mod paths;
mod source;

/// Accepts every sample token: the istio.io samples (`demo`, `groups`) and
/// Istio's tests/common/jwt issuers 1 and 2 (issuer 3 stays unknown).
fn request_authentication() -> String {
    let samples = sample("jwks.json").replace('\n', "");
    let common = sample("tests-common-jwt/jwks.json").replace('\n', "");
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ra, namespace: foo}}
spec:
  jwtRules:
  - issuer: testing@secure.istio.io
    jwks: '{samples}'
  - issuer: test-issuer-1@istio.io
    jwks: '{common}'
  - issuer: test-issuer-2@istio.io
    jwks: '{common}'
    spaceDelimitedClaims: [custom_scope]
"
    )
}

/// One request. Defaults: `GET`, host `httpbin.foo:8000`, peer 10.0.0.1,
/// destination 10.0.0.2:8000, workload `foo` with `app: httpbin`.
#[derive(Clone)]
pub struct Req {
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    token: Option<&'static str>,
    source: &'static str,
    destination: &'static str,
    port: u16,
    norm: PathNormalization,
    ns: &'static str,
    labels: Vec<(&'static str, &'static str)>,
}

pub fn get(path: &'static str) -> Req {
    Req {
        method: "GET",
        path,
        host: "httpbin.foo:8000",
        headers: Vec::new(),
        token: None,
        source: "10.0.0.1",
        destination: "10.0.0.2",
        port: 8000,
        norm: PathNormalization::default(),
        ns: "foo",
        labels: vec![("app", "httpbin")],
    }
}

impl Req {
    pub fn method(mut self, m: &'static str) -> Req {
        self.method = m;
        self
    }
    /// `demo`, `groups` (istio.io samples) or a tests/common/jwt name.
    pub fn tok(mut self, t: &'static str) -> Req {
        self.token = Some(t);
        self
    }
    pub fn h(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.push((name, value));
        self
    }
    pub fn host(mut self, h: &'static str) -> Req {
        self.host = h;
        self
    }
    pub fn src(mut self, ip: &'static str) -> Req {
        self.source = ip;
        self
    }
    pub fn dst(mut self, ip: &'static str) -> Req {
        self.destination = ip;
        self
    }
    pub fn port(mut self, p: u16) -> Req {
        self.port = p;
        self
    }
    /// Istio's default normalization (BASE) instead of jwtgate's.
    pub fn base(self) -> Req {
        self.norm(PathNormalization::Base)
    }
    pub fn norm(mut self, n: PathNormalization) -> Req {
        self.norm = n;
        self
    }
    pub fn wl(mut self, ns: &'static str, labels: &[(&'static str, &'static str)]) -> Req {
        self.ns = ns;
        self.labels = labels.to_vec();
        self
    }
}

pub struct Case {
    /// Where the expectation comes from.
    pub src: &'static str,
    /// `ALLOW`/`DENY`/`AUDIT`/`CUSTOM` with `rules` the YAML of `rules:`
    /// (empty: no `rules` key); `SPEC` with `rules` the whole `spec:` body;
    /// `DOCS` with `rules` whole YAML documents.
    pub action: &'static str,
    pub rules: &'static str,
    pub req: Req,
    pub want: u16,
}

pub fn c(
    src: &'static str,
    action: &'static str,
    rules: &'static str,
    req: Req,
    want: u16,
) -> Case {
    Case {
        src,
        action,
        rules,
        req,
        want,
    }
}

fn policy_yaml(case: &Case) -> String {
    let head = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n";
    match case.action {
        "DOCS" => case.rules.to_owned(),
        "SPEC" => format!("{head}{}", case.rules),
        action => {
            let provider = if action == "CUSTOM" {
                "  provider: {name: ext-authz}\n"
            } else {
                ""
            };
            let rules = if case.rules.is_empty() {
                String::new()
            } else {
                format!("  rules: {}\n", case.rules)
            };
            format!("{head}  action: {action}\n{provider}{rules}")
        }
    }
}

fn token_path(t: &str) -> String {
    match t {
        "demo" => "demo.jwt".into(),
        "groups" => "groups-scope.jwt".into(),
        other => format!("tests-common-jwt/{other}.jwt"),
    }
}

pub fn decide(case: &Case) -> Decision {
    let yaml = format!("{}---\n{}", request_authentication(), policy_yaml(case));
    let (set, errors) = PolicySet::parse(&[("table.yaml".into(), yaml)]);
    assert!(errors.is_empty(), "{}: {errors:?}", case.src);
    let r = &case.req;
    let w = WorkloadRef {
        namespace: r.ns.into(),
        labels: r
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(t) = r.token {
        headers.push((
            "authorization".into(),
            format!("Bearer {}", sample(&token_path(t))),
        ));
    }
    let request = Request {
        method: r.method,
        path: r.path,
        host: r.host,
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect(),
        source_ip: r.source.parse::<IpAddr>().unwrap(),
        destination_ip: r.destination.parse::<IpAddr>().unwrap(),
        destination_port: r.port,
    };
    evaluate(
        &set.for_workload(&w, "istio-system"),
        &request,
        &Map(HashMap::new()),
        NOW,
        r.norm,
        None,
    )
}

/// Run every case, report all failures at once.
pub fn run_all(cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let d = decide(case);
        if d.status != case.want {
            failures.push(format!(
                "{} [{} {}]: want {}, got {} ({})",
                case.src, case.req.method, case.req.path, case.want, d.status, d.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn at_least_150_cases() {
    let n = actions::count()
        + source::count()
        + operation::count()
        + conditions::count()
        + paths::count();
    assert!(n >= 150, "{n} cases");
}
