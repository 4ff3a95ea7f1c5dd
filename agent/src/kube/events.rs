//! Kubernetes Events on policies that cannot be enforced (invalid fields,
//! CUSTOM without ext_authz, a `jwksUri` that cannot be fetched, …), so
//! `kubectl describe` shows why. Each problem is reported once while it
//! lasts; a fixed and re-broken policy is reported again.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tracing::{debug, warn};

use super::policies::Problem;
use crate::sources::jwks::FetchOutcome;

pub struct PolicyEvents {
    client: Client,
    reporter: Reporter,
    reported: HashSet<(Option<String>, String)>,
    jwks: JwksFailures,
    /// Pod warnings per reason, reported once while they last.
    pods: BTreeMap<&'static str, HashSet<(Option<String>, String)>>,
}

/// Something a pod's owner must fix or know: `kubectl describe pod` shows it.
#[derive(Debug, Clone)]
pub struct PodWarning {
    pub pod: ObjectReference,
    pub message: String,
}

/// A port annotation did not parse; every port is steered instead.
pub const BAD_PORT_ANNOTATION: &str = "InvalidPortAnnotation";
/// A pod a policy selects could not be enrolled (yet): its traffic is not
/// verified.
pub const NOT_PROTECTED: &str = "NotProtected";

impl PolicyEvents {
    pub fn new(client: Client, node: &str) -> PolicyEvents {
        let reporter = Reporter {
            controller: "jwtgate".into(),
            instance: Some(format!("jwtgate-{node}")),
        };
        PolicyEvents {
            client,
            reporter,
            reported: HashSet::new(),
            jwks: JwksFailures::default(),
            pods: BTreeMap::new(),
        }
    }

    /// The current warnings of kind `reason` (all of them: a warning that
    /// is gone is forgotten, so it is reported again if it comes back).
    pub fn pod_warnings(&mut self, reason: &'static str, warnings: &[PodWarning]) {
        let current: HashSet<(Option<String>, String)> = warnings
            .iter()
            .map(|w| (w.pod.uid.clone(), w.message.clone()))
            .collect();
        let reported = self.pods.entry(reason).or_default();
        let fresh: Vec<&PodWarning> = warnings
            .iter()
            .filter(|w| !reported.contains(&(w.pod.uid.clone(), w.message.clone())))
            .collect();
        *reported = current;
        for w in fresh {
            warn!(pod = %describe(&w.pod), reason, "{}", w.message);
            let event = Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(truncate(&w.message, 1000)),
                action: if reason == NOT_PROTECTED {
                    "Enrol"
                } else {
                    "SteerAllPorts"
                }
                .into(),
                secondary: None,
            };
            self.publish(event, &w.pod);
        }
    }

    /// Log and publish the problems not reported yet.
    pub fn report(&mut self, problems: &[Problem]) {
        let current: HashSet<(Option<String>, String)> = problems
            .iter()
            .map(|p| (p.object.uid.clone(), p.message.clone()))
            .collect();
        for p in problems {
            let key = (p.object.uid.clone(), p.message.clone());
            if self.reported.contains(&key) {
                continue;
            }
            warn!(policy = %describe(&p.object), invalid = p.invalid, "policy cannot be enforced as written: {}", p.message);
            let event = Event {
                type_: EventType::Warning,
                reason: if p.invalid {
                    "InvalidPolicy"
                } else {
                    "PolicyPartlyEnforced"
                }
                .into(),
                note: Some(truncate(&p.message, 1000)),
                action: if p.invalid { "Ignored" } else { "FailSafe" }.into(),
                secondary: None,
            };
            self.publish(event, &p.object);
        }
        self.reported = current;
    }

    /// The RequestAuthentications per `jwksUri` changed (policies reparsed).
    pub fn jwks_users(&mut self, users: BTreeMap<String, Vec<ObjectReference>>) {
        let due = self.jwks.set_users(users);
        self.publish_jwks(due);
    }

    /// One result of the JWKS fetch loop.
    pub fn jwks_outcome(&mut self, outcome: FetchOutcome) {
        let due = self.jwks.outcome(outcome);
        self.publish_jwks(due);
    }

    fn publish_jwks(&self, due: Vec<(ObjectReference, String)>) {
        for (object, note) in due {
            let event = Event {
                type_: EventType::Warning,
                reason: JWKS_FETCH_FAILED.into(),
                note: Some(truncate(&note, 1000)),
                action: "FetchJwks".into(),
                secondary: None,
            };
            self.publish(event, &object);
        }
    }

    /// Off the sync path: a slow or refusing API server must not delay
    /// enforcement.
    ///
    /// A fresh `Recorder` each time: kube's recorder folds events that share
    /// reason, action and object into one series and keeps the *first*
    /// note, so a pod whose enrolment fails for a new reason would go on
    /// showing the old one. Repeats are already filtered out above (each
    /// problem is published once while it lasts), so nothing is lost.
    fn publish(&self, event: Event, reference: &ObjectReference) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let reference = reference.clone();
        let name = describe(&reference);
        tokio::spawn(async move {
            match recorder.publish(&event, &reference).await {
                Ok(()) => debug!(policy = %name, reason = %event.reason, "event published"),
                Err(err) => warn!(policy = %name, "cannot publish event: {err}"),
            }
        });
    }
}

const JWKS_FETCH_FAILED: &str = "JwksFetchFailed";

/// Which RequestAuthentications still have to hear that a `jwksUri` fails.
/// A URI is told about once per failure streak — not at every retry of the
/// fetch loop (every second at first) — and again when it fails after a
/// success. A RequestAuthentication that starts naming a URI in the middle of
/// a streak is told at once.
#[derive(Debug, Default)]
struct JwksFailures {
    /// URI → the RequestAuthentications whose rules name it.
    users: BTreeMap<String, Vec<ObjectReference>>,
    /// URI → the latest failure of its current streak.
    failing: BTreeMap<String, FetchOutcome>,
    /// `(URI, object)` told about the current streak.
    told: HashSet<(String, String)>,
}

impl JwksFailures {
    /// Returns the Events now due (object, note).
    fn set_users(
        &mut self,
        users: BTreeMap<String, Vec<ObjectReference>>,
    ) -> Vec<(ObjectReference, String)> {
        // A URI no policy names is no longer fetched; named again, it is
        // fetched at once and starts a new streak.
        self.failing.retain(|uri, _| users.contains_key(uri));
        let named: HashSet<(String, String)> = users
            .iter()
            .flat_map(|(uri, objects)| objects.iter().map(|o| (uri.clone(), object_key(o))))
            .collect();
        self.told.retain(|k| named.contains(k));
        self.users = users;
        self.due()
    }

    fn outcome(&mut self, outcome: FetchOutcome) -> Vec<(ObjectReference, String)> {
        if outcome.error.is_none() {
            self.failing.remove(&outcome.uri);
            self.told.retain(|(uri, _)| *uri != outcome.uri);
            return Vec::new();
        }
        // Results for a URI the policies dropped meanwhile are stale.
        if self.users.contains_key(&outcome.uri) {
            self.failing.insert(outcome.uri.clone(), outcome);
        }
        self.due()
    }

    fn due(&mut self) -> Vec<(ObjectReference, String)> {
        let mut out = Vec::new();
        for (uri, failure) in &self.failing {
            for object in self.users.get(uri).into_iter().flatten() {
                if self.told.insert((uri.clone(), object_key(object))) {
                    out.push((object.clone(), jwks_note(failure)));
                }
            }
        }
        out
    }
}

fn jwks_note(failure: &FetchOutcome) -> String {
    let uri = &failure.uri;
    let error = failure.error.as_deref().unwrap_or_default();
    // Fetch errors start with the URI already.
    let error = error
        .strip_prefix(uri.as_str())
        .and_then(|e| e.strip_prefix(": "))
        .unwrap_or(error);
    let consequence = if failure.kept_last_good {
        "the last good key set stays in use"
    } else {
        "no key set was ever fetched, so tokens of this issuer are rejected (401) until it answers"
    };
    format!("jwksUri {uri} cannot be fetched: {error}; {consequence}")
}

/// Identity of an object across updates (uid; namespace/name without one).
fn object_key(o: &ObjectReference) -> String {
    o.uid.clone().unwrap_or_else(|| describe(o))
}

fn describe(o: &ObjectReference) -> String {
    format!(
        "{} {}/{}",
        o.kind.as_deref().unwrap_or_default(),
        o.namespace.as_deref().unwrap_or_default(),
        o.name.as_deref().unwrap_or_default()
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "http://127.0.0.1:1/jwks";

    fn ra(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("RequestAuthentication".into()),
            namespace: Some("foo".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    fn users(names: &[&str]) -> BTreeMap<String, Vec<ObjectReference>> {
        BTreeMap::from([(URI.to_string(), names.iter().map(|n| ra(n)).collect())])
    }

    fn failed(kept: bool) -> FetchOutcome {
        FetchOutcome {
            uri: URI.into(),
            error: Some(format!("{URI}: cannot connect: Connection refused")),
            kept_last_good: kept,
        }
    }

    fn ok() -> FetchOutcome {
        FetchOutcome {
            uri: URI.into(),
            error: None,
            kept_last_good: true,
        }
    }

    fn names(due: &[(ObjectReference, String)]) -> Vec<&str> {
        due.iter()
            .map(|(o, _)| o.name.as_deref().unwrap_or_default())
            .collect()
    }

    #[test]
    fn once_per_failure_streak_for_every_user_of_the_uri() {
        let mut f = JwksFailures::default();
        assert!(f.set_users(users(&["a", "b"])).is_empty());
        let due = f.outcome(failed(false));
        assert_eq!(names(&due), ["a", "b"]);
        assert_eq!(
            due[0].1,
            "jwksUri http://127.0.0.1:1/jwks cannot be fetched: cannot connect: Connection refused; \
             no key set was ever fetched, so tokens of this issuer are rejected (401) until it answers"
        );
        // Retries of the same streak are quiet.
        assert!(f.outcome(failed(false)).is_empty());
        assert!(f.set_users(users(&["a", "b"])).is_empty());

        // Recovery, then a new failure: told again, now with the kept set.
        assert!(f.outcome(ok()).is_empty());
        let due = f.outcome(failed(true));
        assert_eq!(names(&due), ["a", "b"]);
        assert!(
            due[0].1.ends_with("the last good key set stays in use"),
            "{}",
            due[0].1
        );
    }

    #[test]
    fn a_policy_naming_a_failing_uri_is_told_at_once() {
        let mut f = JwksFailures::default();
        f.set_users(users(&["a"]));
        assert_eq!(names(&f.outcome(failed(false))), ["a"]);
        assert_eq!(names(&f.set_users(users(&["a", "c"]))), ["c"]);

        // Dropped and named again: a new fetch, a new streak.
        assert!(f.set_users(BTreeMap::new()).is_empty());
        assert!(f.set_users(users(&["a"])).is_empty(), "not fetched yet");
        assert_eq!(names(&f.outcome(failed(false))), ["a"]);

        // A late result for a URI no policy names any more is ignored.
        f.set_users(BTreeMap::new());
        assert!(f.outcome(failed(false)).is_empty());
        assert!(f.failing.is_empty());
    }
}
