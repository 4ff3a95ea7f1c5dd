//! The state machine against a fake backend: no root, no kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::enroll::NetnsRef;

/// Records calls; `fail` makes enrolments of those keys fail. `pins` is
/// what the fake bpffs holds: enrolment pins, unenrolment unpins, and a test
/// may start with pins "left by an earlier agent".
#[derive(Default)]
struct Fake {
    live: BTreeMap<String, usize>,
    log: Vec<String>,
    fail: Vec<String>,
    next: usize,
    pins: BTreeSet<String>,
    /// `pinned()` fails while set (bpffs unreadable).
    pins_unreadable: bool,
    listed: usize,
}

impl Backend for Fake {
    type Handle = usize;
    fn enrol(&mut self, spec: &WorkloadSpec, policy: Arc<WorkloadPolicy>) -> anyhow::Result<usize> {
        if self.fail.contains(&spec.key) {
            anyhow::bail!("netns of {} not found", spec.key);
        }
        self.next += 1;
        self.live.insert(spec.key.clone(), self.next);
        self.pins.insert(spec.key.clone());
        self.log.push(format!(
            "enrol {} {} authz={}",
            spec.key,
            spec.ports,
            policy.authz.len()
        ));
        Ok(self.next)
    }
    fn update_spec(
        &mut self,
        handle: &mut usize,
        spec: &WorkloadSpec,
        policy: Arc<WorkloadPolicy>,
    ) -> anyhow::Result<()> {
        assert_eq!(
            self.live.get(&spec.key),
            Some(&*handle),
            "update of a live handle"
        );
        if self.fail.contains(&spec.key) {
            anyhow::bail!("{} map full", spec.key);
        }
        self.log.push(format!(
            "update-spec #{handle} {} authz={}",
            spec.ports,
            policy.authz.len()
        ));
        Ok(())
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
        self.pins.remove(key);
        self.log.push(format!("unenrol {key}"));
        Ok(())
    }
    fn pinned(&mut self) -> anyhow::Result<Vec<String>> {
        if self.pins_unreadable {
            anyhow::bail!("bpffs unreadable");
        }
        self.listed += 1;
        Ok(self.pins.iter().cloned().collect())
    }
    fn remove_pinned(&mut self, key: &str) -> anyhow::Result<()> {
        assert!(
            !self.live.contains_key(key),
            "remove_pinned of an enrolled workload"
        );
        if self.pins.remove(key) {
            self.log.push(format!("remove pins {key}"));
        }
        Ok(())
    }
}

fn pod(name: &str, app: &str, ip: &str) -> WorkloadSpec {
    WorkloadSpec {
        key: format!("foo/{name}"),
        namespace: "foo".into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        netns: NetnsRef::Pod {
            uid: format!("uid-{name}"),
            ip: ip.parse::<IpAddr>().unwrap(),
        },
        ips: vec![ip.parse().unwrap()],
        ports: crate::inbound::PortSelection::Only([9080].into()),
        protocols: BTreeMap::new(),
        probes: Vec::new(),
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
    assert_eq!(drain(&mut fake), ["enrol foo/a 9080 authz=1"]);

    // Re-selecting to b: a is unenrolled, b enrolled.
    e.set_policies(deny_policy("b"));
    e.reconcile(&mut fake);
    assert_eq!(
        drain(&mut fake),
        ["unenrol foo/a", "enrol foo/b 9080 authz=1"]
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
        netns: NetnsRef::Pod {
            uid: "uid-a2".into(),
            ip: "10.0.0.9".parse().unwrap(),
        },
        ..pod("a", "a", "10.0.0.9")
    }]);
    e.reconcile(&mut fake);
    assert_eq!(
        drain(&mut fake),
        ["unenrol foo/a", "enrol foo/a 9080 authz=1"]
    );

    // Relabelled out of the selector.
    e.set_workloads(vec![WorkloadSpec {
        instance: "uid-a2".into(),
        netns: NetnsRef::Pod {
            uid: "uid-a2".into(),
            ip: "10.0.0.9".parse().unwrap(),
        },
        ..pod("a", "other", "10.0.0.9")
    }]);
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["unenrol foo/a"]);

    // Deleted pod: nothing to do, nothing left.
    e.set_workloads(vec![]);
    e.reconcile(&mut fake);
    assert!(drain(&mut fake).is_empty());
    assert!(fake.live.is_empty());
}

#[test]
fn changes_to_the_same_pod_are_applied_in_place_never_unsteered() {
    let mut e = Enroller::<Fake>::new("istio-system");
    let mut fake = Fake::default();
    // Selects app=a and app=b alike.
    let (set, errors) = PolicySet::parse(&[(
        "test".into(),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\n\
         spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/admin]}\n"
            .into(),
    )]);
    assert!(errors.is_empty());
    e.set_policies(Arc::new(set));
    e.set_workloads(vec![pod("a", "a", "10.0.0.2")]);
    e.reconcile(&mut fake);
    drain(&mut fake);

    // Relabelled (still selected), then its ports changed: in place.
    e.set_workloads(vec![pod("a", "b", "10.0.0.2")]);
    let p = e.reconcile(&mut fake);
    assert_eq!(p.updated, ["foo/a"]);
    assert_eq!(drain(&mut fake), ["update-spec #1 9080 authz=1"]);
    e.set_workloads(vec![WorkloadSpec {
        ports: crate::inbound::PortSelection::all(),
        ..pod("a", "b", "10.0.0.2")
    }]);
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["update-spec #1 all authz=1"]);

    // An update that fails keeps the old steering and is retried.
    fake.fail = vec!["foo/a".into()];
    e.set_workloads(vec![pod("a", "b", "10.0.0.2")]);
    let p = e.reconcile(&mut fake);
    assert_eq!(p.failed, ["foo/a"]);
    assert!(!e.is_ready());
    assert!(e.pending().contains_key("foo/a"));
    assert!(drain(&mut fake).is_empty(), "nothing unenrolled");
    fake.fail.clear();
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["update-spec #1 9080 authz=1"]);
    assert!(e.is_ready());
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
    assert_eq!(drain(&mut fake), ["enrol foo/a 9080 authz=0"]);
    e.clear(&mut fake);
    assert!(fake.live.is_empty());
}

#[test]
fn pins_left_by_an_earlier_agent_are_removed_unless_wanted() {
    let mut e = Enroller::<Fake>::new("istio-system");
    // Before the restart: a and b selected, c a listed workload; then b's
    // pod was deleted, c dropped from the file and d relabelled out of the
    // selector while no agent ran.
    let mut fake = Fake {
        pins: ["foo/a", "foo/b", "foo/c", "foo/d"]
            .map(String::from)
            .into(),
        ..Fake::default()
    };
    e.set_policies(deny_policy("a"));
    e.reconcile(&mut fake);
    assert!(
        drain(&mut fake).is_empty() && fake.listed == 0,
        "nothing is swept before the first snapshot"
    );

    e.set_workloads(vec![
        pod("a", "a", "10.0.0.2"),
        pod("d", "other", "10.0.0.5"),
    ]);
    e.reconcile(&mut fake);
    assert_eq!(
        drain(&mut fake),
        [
            "remove pins foo/b",
            "remove pins foo/c",
            "remove pins foo/d",
            "enrol foo/a 9080 authz=1"
        ],
        "the wanted workload keeps its pins and is re-adopted"
    );
    assert_eq!(fake.pins, BTreeSet::from(["foo/a".to_string()]));

    // Only once: later snapshots are handled by unenrol.
    e.set_workloads(vec![]);
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["unenrol foo/a"]);
    assert_eq!(fake.listed, 1);
    assert!(fake.pins.is_empty());
}

#[test]
fn pins_of_a_pending_workload_go_when_it_stops_being_wanted() {
    let mut e = Enroller::<Fake>::new("istio-system");
    let mut fake = Fake {
        pins: BTreeSet::from(["foo/a".to_string()]),
        fail: vec!["foo/a".into()],
        ..Fake::default()
    };
    e.set_policies(deny_policy("a"));
    e.set_workloads(vec![pod("a", "a", "10.0.0.2")]);
    e.reconcile(&mut fake);
    assert!(
        drain(&mut fake).is_empty(),
        "wanted: its pins stay (fail-closed)"
    );
    assert!(fake.pins.contains("foo/a"));

    // Deleted before its netns was ever found: nothing may stay pinned.
    e.set_workloads(vec![]);
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["remove pins foo/a"]);
    assert!(e.is_ready());
}

#[test]
fn an_unreadable_pin_root_is_swept_on_a_later_reconcile() {
    let mut e = Enroller::<Fake>::new("istio-system");
    let mut fake = Fake {
        pins: BTreeSet::from(["foo/gone".to_string()]),
        pins_unreadable: true,
        ..Fake::default()
    };
    e.set_workloads(vec![]);
    e.reconcile(&mut fake);
    assert!(drain(&mut fake).is_empty());
    fake.pins_unreadable = false;
    e.reconcile(&mut fake);
    assert_eq!(drain(&mut fake), ["remove pins foo/gone"]);
}
