//! The state machine against a fake backend: no root, no kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::enroll::NetnsRef;

/// Records calls; `fail` makes enrolments of those keys fail.
#[derive(Default)]
struct Fake {
    live: BTreeMap<String, usize>,
    log: Vec<String>,
    fail: Vec<String>,
    next: usize,
}

impl Backend for Fake {
    type Handle = usize;
    fn enrol(&mut self, spec: &WorkloadSpec, policy: Arc<WorkloadPolicy>) -> anyhow::Result<usize> {
        if self.fail.contains(&spec.key) {
            anyhow::bail!("netns of {} not found", spec.key);
        }
        self.next += 1;
        self.live.insert(spec.key.clone(), self.next);
        self.log.push(format!(
            "enrol {} {:?} authz={}",
            spec.key,
            spec.ports,
            policy.authz.len()
        ));
        Ok(self.next)
    }
    fn update(&mut self, handle: &usize, policy: Arc<WorkloadPolicy>) {
        self.log
            .push(format!("update #{handle} authz={}", policy.authz.len()));
    }
    fn unenrol(&mut self, key: &str, handle: usize) -> anyhow::Result<()> {
        assert_eq!(
            self.live.remove(key),
            Some(handle),
            "unenrol of a live handle"
        );
        self.log.push(format!("unenrol {key}"));
        Ok(())
    }
}

fn pod(name: &str, app: &str, ip: &str) -> WorkloadSpec {
    WorkloadSpec {
        key: format!("foo/{name}"),
        namespace: "foo".into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        netns: NetnsRef::OwnerOf(ip.parse::<IpAddr>().unwrap()),
        ips: vec![ip.parse().unwrap()],
        ports: vec![9080],
        fail_open: None,
        always: false,
        instance: format!("uid-{name}"),
    }
}

fn deny_policy(app: &str) -> Arc<PolicySet> {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\n\
         spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  action: DENY\n  rules:\n  - to:\n    - operation: {{paths: [/admin]}}\n"
    );
    let (set, errors) = PolicySet::parse(&[("test".into(), yaml)]);
    assert!(errors.is_empty(), "{errors:?}");
    Arc::new(set)
}

fn drain(fake: &mut Fake) -> Vec<String> {
    std::mem::take(&mut fake.log)
}

#[test]
fn nothing_happens_before_the_first_snapshot() {
    let mut e = Enroller::<Fake>::new("istio-system");
    let mut fake = Fake::default();
    e.set_policies(deny_policy("a"));
    assert_eq!(e.reconcile(&mut fake), Progress::default());
    assert!(!e.is_ready());
    e.set_workloads(vec![]);
    e.reconcile(&mut fake);
    assert!(e.is_ready(), "an empty node is ready");
}

#[test]
fn only_selected_pods_are_enrolled_and_follow_policy_changes() {
    let mut e = Enroller::<Fake>::new("istio-system");
    let mut fake = Fake::default();
    e.set_workloads(vec![pod("a", "a", "10.0.0.2"), pod("b", "b", "10.0.0.3")]);
    e.reconcile(&mut fake);
    assert!(drain(&mut fake).is_empty(), "no policy: nothing steered");

    e.set_policies(deny_policy("a"));
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["enrol foo/a [9080] authz=1"]);

    // Re-selecting to b: a is unenrolled, b enrolled.
    e.set_policies(deny_policy("b"));
    e.reconcile(&mut fake);
    assert_eq!(
        drain(&mut fake),
        ["unenrol foo/a", "enrol foo/b [9080] authz=1"]
    );

    // Policy deleted: back to open, nothing left.
    e.set_policies(Arc::new(PolicySet::default()));
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["unenrol foo/b"]);
    assert!(fake.live.is_empty());
}

#[test]
fn relabel_and_deletion_and_recreation() {
    let mut e = Enroller::<Fake>::new("istio-system");
    let mut fake = Fake::default();
    e.set_policies(deny_policy("a"));
    e.set_workloads(vec![pod("a", "a", "10.0.0.2")]);
    e.reconcile(&mut fake);
    drain(&mut fake);

    // An unrelated policy change only updates the enrolled workload.
    e.set_policies(deny_policy("a"));
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["update #1 authz=1"]);

    // Same name, new pod (uid and IP): unenrol then enrol.
    e.set_workloads(vec![WorkloadSpec {
        instance: "uid-a2".into(),
        ..pod("a", "a", "10.0.0.9")
    }]);
    e.reconcile(&mut fake);
    assert_eq!(
        drain(&mut fake),
        ["unenrol foo/a", "enrol foo/a [9080] authz=1"]
    );

    // Relabelled out of the selector.
    e.set_workloads(vec![pod("a", "other", "10.0.0.9")]);
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["unenrol foo/a"]);

    // Deleted pod: nothing to do, nothing left.
    e.set_workloads(vec![]);
    e.reconcile(&mut fake);
    assert!(drain(&mut fake).is_empty());
    assert!(fake.live.is_empty());
}

#[test]
fn failures_stay_pending_until_a_retry_succeeds() {
    let mut e = Enroller::<Fake>::new("istio-system");
    let mut fake = Fake {
        fail: vec!["foo/a".into()],
        ..Fake::default()
    };
    e.set_policies(deny_policy("a"));
    e.set_workloads(vec![pod("a", "a", "10.0.0.2")]);
    let p = e.reconcile(&mut fake);
    assert_eq!(p.failed, ["foo/a"]);
    assert!(!e.is_ready());
    fake.fail.clear();
    let p = e.reconcile(&mut fake);
    assert_eq!(p.enrolled, ["foo/a"]);
    assert!(e.is_ready());

    // A pending workload that disappears is no longer waited for.
    fake.fail = vec!["foo/b".into()];
    e.set_workloads(vec![pod("a", "a", "10.0.0.2"), pod("b", "a", "10.0.0.3")]);
    e.reconcile(&mut fake);
    assert!(!e.is_ready());
    e.set_workloads(vec![pod("a", "a", "10.0.0.2")]);
    e.reconcile(&mut fake);
    assert!(e.is_ready());
}

#[test]
fn listed_workloads_are_enrolled_without_policy() {
    let mut e = Enroller::<Fake>::new("istio-system");
    let mut fake = Fake::default();
    e.set_workloads(vec![WorkloadSpec {
        always: true,
        ..pod("a", "a", "10.0.0.2")
    }]);
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["enrol foo/a [9080] authz=0"]);
    e.clear(&mut fake);
    assert!(fake.live.is_empty());
}
