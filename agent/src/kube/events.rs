//! Kubernetes Events on policies that cannot be enforced (invalid fields,
//! CUSTOM without ext_authz, …), so `kubectl describe` shows why. Each
//! problem is reported once while it lasts; a fixed and re-broken policy is
//! reported again.

use std::collections::HashSet;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tracing::{debug, warn};

use super::policies::Problem;

pub struct PolicyEvents {
    recorder: Recorder,
    reported: HashSet<(Option<String>, String)>,
}

impl PolicyEvents {
    pub fn new(client: Client, node: &str) -> PolicyEvents {
        let reporter = Reporter {
            controller: "jwtgate".into(),
            instance: Some(format!("jwtgate-{node}")),
        };
        PolicyEvents {
            recorder: Recorder::new(client, reporter),
            reported: HashSet::new(),
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
            let name = format!(
                "{} {}/{}",
                p.object.kind.as_deref().unwrap_or_default(),
                p.object.namespace.as_deref().unwrap_or_default(),
                p.object.name.as_deref().unwrap_or_default()
            );
            warn!(policy = %name, invalid = p.invalid, "policy cannot be enforced as written: {}", p.message);
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
            let recorder = self.recorder.clone();
            let reference = p.object.clone();
            // Off the sync path: a slow or refusing API server must not
            // delay enforcement.
            tokio::spawn(async move {
                match recorder.publish(&event, &reference).await {
                    Ok(()) => debug!(policy = %name, "event published"),
                    Err(err) => warn!(policy = %name, "cannot publish event: {err}"),
                }
            });
        }
        self.reported = current;
    }
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
