//! The policy parser (`PolicySet::parse`, agent/src/policy/) on random YAML
//! and JSON documents, as a tenant's file or a Kubernetes object can carry.
//!
//! Properties:
//! - parsing is deterministic (same counts, same errors), and every error
//!   names the file;
//! - per-workload views are sorted as documented (rules by issuer,
//!   policies by namespace/name), the `jwksUri` lists sorted and unique;
//! - whatever loaded can be evaluated: fixed requests get well-formed
//!   decisions;
//! - the last good config is never lost: when the file no longer parses,
//!   `InForce::update` restores exactly the previous (fixed, valid) set;
//! - heap held ≤ 512 × input + 1 MiB (docs/fuzzing.md).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use jwtgate::authz::{evaluate, PathNormalization};
use jwtgate_fuzz::request::OwnedRequest;
use jwtgate::policy::{read_files, InForce, PolicySet, WorkloadRef};
use jwtgate_fuzz::alloc::{measure, Bound};
use jwtgate_fuzz::fixtures::{lookup, policy_tokens, policy_yaml, Lookup, NOW};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.yaml";

const BOUND: Bound = Bound {
    per_byte: 512,
    fixed: 1024 * 1024,
};

struct Fixed {
    good: PolicySet,
    workloads: Vec<WorkloadRef>,
    requests: Vec<OwnedRequest>,
    lookup: Lookup,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let (good, errors) = PolicySet::parse(&[(FILE.into(), policy_yaml())]);
        assert!(errors.is_empty(), "fixture policies: {errors:?}");
        let wl = |ns: &str, labels: &[(&str, &str)]| WorkloadRef {
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let tokens = policy_tokens();
        let req = |method: &str, path: &str, headers: Vec<(String, String)>| OwnedRequest {
            method: method.into(),
            path: path.into(),
            host: "httpbin.foo:8000".into(),
            headers,
            source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            destination_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            destination_port: 8000,
        };
        let bearer = |t: &str| vec![("authorization".to_string(), format!("Bearer {t}"))];
        Fixed {
            good,
            workloads: vec![
                wl("foo", &[("app", "httpbin")]),
                wl("bar", &[]),
                wl("istio-system", &[("app", "x")]),
            ],
            requests: vec![
                req("GET", "/", vec![]),
                req("GET", "/admin/x?token=a.b.c", bearer(&tokens[0])),
                req("POST", "/api/v1/x.json", bearer(&tokens[16])),
                req("GET", "/a/%2e%2e//public/x", bearer(&tokens[2])),
                req(
                    "OPTIONS",
                    "/",
                    vec![
                        ("origin".into(), "https://a.example".into()),
                        ("access-control-request-method".into(), "GET".into()),
                    ],
                ),
            ],
            lookup: lookup(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixed();
    let files = [(FILE.to_owned(), text.to_owned())];
    let ((set, errors), peak) = measure(|| PolicySet::parse(&files));
    BOUND.check("PolicySet::parse", text.len(), peak);

    let (again, errors_again) = PolicySet::parse(&files);
    assert_eq!(set.counts(), again.counts(), "parse is not deterministic");
    let messages =
        |e: &[jwtgate::policy::PolicyError]| e.iter().map(|e| e.to_string()).collect::<Vec<_>>();
    assert_eq!(messages(&errors), messages(&errors_again));
    assert!(errors.iter().all(|e| e.origin == FILE));

    let uris = set.jwks_uris();
    assert!(
        uris.windows(2).all(|w| w[0].0 < w[1].0),
        "jwks_uris not sorted/unique"
    );
    let origins = set.jwks_uri_origins();
    assert!(origins.windows(2).all(|w| w[0] < w[1]));

    for w in &f.workloads {
        let policy = set.for_workload(w, "istio-system");
        assert!(policy
            .jwt_rules
            .windows(2)
            .all(|r| r[0].issuer <= r[1].issuer));
        assert!(policy
            .authz
            .windows(2)
            .all(|p| (&p[0].namespace, &p[0].name) <= (&p[1].namespace, &p[1].name)));
        for r in &f.requests {
            for mode in [
                PathNormalization::DecodeAndMergeSlashes,
                PathNormalization::Base,
            ] {
                let d = evaluate(&policy, &r.view(), &f.lookup, NOW, mode, None);
                assert!(matches!(d.status, 200 | 400 | 401 | 403));
                assert_eq!(d.allowed, d.status == 200);
            }
        }
    }

    // The fixed set was in force; this text replaces the file. `InForce`
    // is what both sources (folder and Kubernetes) put updates through.
    let mut in_force = InForce::default();
    let (docs, unread) = read_files(&[(FILE.into(), policy_yaml())]);
    in_force.update(&docs, unread);
    let (docs, unread) = read_files(&files);
    let next = in_force.update(&docs, unread);
    if next.errors.iter().any(|e| e.whole_file) {
        assert_eq!(
            next.set.counts(),
            f.good.counts(),
            "a broken file lost its last good version"
        );
    }
});
