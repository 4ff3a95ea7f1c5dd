//! Local mode as an input source: the `--workloads` file (read once) and the
//! `--policies` folder (polled every second), published on the same
//! channels as the Kubernetes source (`enroll::Inputs`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::policy_dir::PolicyDir;
use super::workloads;
use crate::enroll::{Inputs, WorkloadSpec};
use crate::policy::PolicySet;

/// How often the policy folder is checked for changes.
const POLICY_POLL: Duration = Duration::from_secs(1);

/// Loaded local inputs, before the runtime starts.
pub struct Local {
    dir: PolicyDir,
    policies: PolicySet,
    workloads: Vec<WorkloadSpec>,
}

impl Local {
    /// Read both inputs; an unreadable file or folder is an error now.
    pub fn load(policies: &Path, workloads_file: &Path) -> anyhow::Result<Local> {
        let workloads = workloads::load(workloads_file)?
            .iter()
            .map(WorkloadSpec::from_file)
            .collect();
        let mut dir = PolicyDir::new(policies);
        let loaded = dir.load()?;
        log_loaded(&loaded, "policies loaded");
        Ok(Local {
            dir,
            policies: loaded.set,
            workloads,
        })
    }

    /// Publish the inputs and keep the policies fresh until `shutdown`.
    pub fn start(self, mut shutdown: watch::Receiver<bool>) -> Inputs {
        let (policies_tx, policies_rx) = watch::channel(Arc::new(self.policies));
        let (workloads_tx, workloads_rx) = watch::channel(Some(self.workloads));
        let mut dir = self.dir;
        tokio::spawn(async move {
            // Held so the engine sees an open channel (the file is read once).
            let _workloads = workloads_tx;
            let mut poll = tokio::time::interval(POLICY_POLL);
            loop {
                tokio::select! {
                    _ = poll.tick() => {}
                    _ = shutdown.changed() => return,
                }
                if !dir.changed() {
                    continue;
                }
                match dir.load() {
                    Ok(loaded) => {
                        log_loaded(&loaded, "policies reloaded");
                        let _ = policies_tx.send(Arc::new(loaded.set));
                    }
                    Err(err) => {
                        warn!("policy folder unreadable, keeping the current policies: {err:#}")
                    }
                }
            }
        });
        Inputs {
            policies: policies_rx,
            workloads: workloads_rx,
            // Fetch failures are logged by the fetch loop; nobody else to tell.
            jwks_outcomes: None,
            // Likewise enrolment failures: the engine logs them.
            enrolment_failures: None,
            enrolled: None,
        }
    }
}

fn log_loaded(loaded: &super::policy_dir::Loaded, what: &str) {
    for err in &loaded.errors {
        warn!("policy: {err}");
    }
    let (ras, aps) = loaded.set.counts();
    info!(
        request_authentications = ras,
        authorization_policies = aps,
        "{what}"
    );
}
