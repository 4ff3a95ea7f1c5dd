//! The desired-versus-enrolled state machine. Inputs: the latest workload
//! snapshot and the latest policy set, each replaced whole by its source.
//! `reconcile` makes the enrolled set equal to the wanted one through a
//! [`Backend`]: unenrol what is no longer wanted, change in place what changed
//! but is still the same pod (make-before-break: its steering never lapses),
//! replace what is a new incarnation, enrol what is missing, hand every
//! enrolled workload its current policy. Failed enrolments and updates stay
//! pending and are retried by the next `reconcile`; a failed update keeps the
//! previous steering in force.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::WorkloadSpec;
use crate::policy::{PolicySet, WorkloadPolicy, WorkloadRef};

/// What enrolling does; the real one steers and proxies, tests fake it.
pub trait Backend {
    /// What stays alive while a workload is enrolled.
    type Handle;
    fn enrol(
        &mut self,
        spec: &WorkloadSpec,
        policy: Arc<WorkloadPolicy>,
    ) -> anyhow::Result<Self::Handle>;
    /// The policies that apply to an enrolled workload changed.
    fn update(&mut self, handle: &Self::Handle, policy: Arc<WorkloadPolicy>);
    /// The workload changed but is the same incarnation in the same netns
    /// (`WorkloadSpec::same_incarnation`): apply `spec` in place, new
    /// steering in before the old goes. On error nothing changed.
    fn update_spec(
        &mut self,
        handle: &mut Self::Handle,
        spec: &WorkloadSpec,
        policy: Arc<WorkloadPolicy>,
    ) -> anyhow::Result<()>;
    /// Undo `enrol` completely (map entries, pinned links, listener, proxy).
    fn unenrol(&mut self, key: &str, handle: Self::Handle) -> anyhow::Result<()>;
    /// Keys of the workloads whose steering is pinned, including what an
    /// earlier agent left.
    fn pinned(&mut self) -> anyhow::Result<Vec<String>>;
    /// Remove the pinned steering (map entries, pinned links) of a workload
    /// this agent has not enrolled. Idempotent.
    fn remove_pinned(&mut self, key: &str) -> anyhow::Result<()>;
}

/// The state machine. See the module docs.
pub struct Enroller<B: Backend> {
    root_namespace: String,
    policies: Arc<PolicySet>,
    /// `None` until the source delivered its first complete snapshot.
    desired: Option<BTreeMap<String, WorkloadSpec>>,
    enrolled: BTreeMap<String, (WorkloadSpec, B::Handle)>,
    /// Wanted but not enrolled yet: key → last error.
    pending: BTreeMap<String, String>,
    /// Enrolled workloads need their policy recomputed.
    policies_changed: bool,
    /// Pins left by an earlier agent were compared with the first snapshot.
    swept: bool,
}

/// What one `reconcile` did (for logs and tests).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub enrolled: Vec<String>,
    /// Changed in place (same pod).
    pub updated: Vec<String>,
    pub unenrolled: Vec<String>,
    pub failed: Vec<String>,
}

impl<B: Backend> Enroller<B> {
    pub fn new(root_namespace: &str) -> Self {
        Enroller {
            root_namespace: root_namespace.to_string(),
            policies: Arc::new(PolicySet::default()),
            desired: None,
            enrolled: BTreeMap::new(),
            pending: BTreeMap::new(),
            policies_changed: false,
            swept: false,
        }
    }

    pub fn set_policies(&mut self, policies: Arc<PolicySet>) {
        self.policies = policies;
        self.policies_changed = true;
    }

    /// Replace the desired workloads with a complete snapshot.
    pub fn set_workloads(&mut self, workloads: Vec<WorkloadSpec>) {
        let mut desired = BTreeMap::new();
        for wl in workloads {
            if let Some(old) = desired.insert(wl.key.clone(), wl) {
                warn!(wl = %old.key, "workload listed twice; the last entry wins");
            }
        }
        self.desired = Some(desired);
    }

    /// Ready once the first snapshot arrived and nothing wanted is pending.
    pub fn is_ready(&self) -> bool {
        self.desired.is_some() && self.pending.is_empty()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Wanted workloads not (fully) enrolled: key → last error.
    pub fn pending(&self) -> &BTreeMap<String, String> {
        &self.pending
    }

    /// Keys currently enrolled.
    pub fn enrolled_keys(&self) -> Vec<String> {
        self.enrolled.keys().cloned().collect()
    }

    /// Enrolled workloads: key → instance (a pod's uid).
    pub fn enrolled_instances(&self) -> BTreeMap<String, String> {
        self.enrolled
            .iter()
            .map(|(k, (spec, _))| (k.clone(), spec.instance.clone()))
            .collect()
    }

    fn resolve(&self, spec: &WorkloadSpec) -> WorkloadPolicy {
        self.policies.for_workload(
            &WorkloadRef {
                namespace: spec.namespace.clone(),
                labels: spec.labels.clone(),
            },
            &self.root_namespace,
        )
    }

    /// Bring the enrolled set to the wanted set. Before the first snapshot
    /// nothing is touched (an empty view must not unenrol everything).
    pub fn reconcile(&mut self, backend: &mut B) -> Progress {
        let mut progress = Progress::default();
        let Some(desired) = self.desired.as_ref() else {
            return progress;
        };
        // Wanted: desired and (explicitly listed or selected by a policy).
        let mut wanted: BTreeMap<String, (WorkloadSpec, WorkloadPolicy)> = BTreeMap::new();
        for spec in desired.values() {
            let policy = self.resolve(spec);
            if spec.always || !policy.is_empty() {
                wanted.insert(spec.key.clone(), (spec.clone(), policy));
            }
        }

        if !self.swept {
            let enrolled = &self.enrolled;
            self.swept = sweep(backend, |key| {
                wanted.contains_key(key) || enrolled.contains_key(key)
            });
        }

        // Unenrol what is not wanted any more, and what is a new incarnation
        // under the same key (a pod re-created with its name: new netns);
        // the latter is enrolled anew below.
        let stale: Vec<String> = self
            .enrolled
            .iter()
            .filter(|(key, (spec, _))| {
                wanted
                    .get(*key)
                    .is_none_or(|(w, _)| !w.same_incarnation(spec))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some((_, handle)) = self.enrolled.remove(&key) {
                match backend.unenrol(&key, handle) {
                    Ok(()) => info!(wl = %key, "unenrolled"),
                    Err(err) => warn!(wl = %key, "unenrol incomplete: {err:#}"),
                }
                progress.unenrolled.push(key);
            }
        }
        // The same pod with other labels, ports, probes…: in place, so that
        // not one connection reaches it unsteered meanwhile.
        for (key, (spec, policy)) in &wanted {
            let Some((old, handle)) = self.enrolled.get_mut(key) else {
                continue;
            };
            if old == spec {
                continue;
            }
            match backend.update_spec(handle, spec, Arc::new(policy.clone())) {
                Ok(()) => {
                    info!(wl = %key, "re-enrolled in place");
                    *old = spec.clone();
                    self.pending.remove(key);
                    progress.updated.push(key.clone());
                }
                Err(err) => {
                    let msg = format!("{err:#}");
                    if self.pending.get(key) != Some(&msg) {
                        warn!(wl = %key, "cannot apply the workload's change, keeping its previous steering (retrying): {msg}");
                    }
                    self.pending.insert(key.clone(), msg);
                    progress.failed.push(key.clone());
                }
            }
        }
        // A workload that stops being wanted before it was ever enrolled may
        // still have steering pinned by an earlier agent.
        let dropped: Vec<String> = self
            .pending
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .cloned()
            .collect();
        for key in dropped {
            self.pending.remove(&key);
            if let Err(err) = backend.remove_pinned(&key) {
                warn!(wl = %key, "cannot remove pinned steering: {err:#}");
            }
        }

        for (key, (spec, policy)) in wanted {
            if let Some((_, handle)) = self.enrolled.get(&key) {
                if self.policies_changed {
                    backend.update(handle, Arc::new(policy));
                }
                continue;
            }
            match backend.enrol(&spec, Arc::new(policy)) {
                Ok(handle) => {
                    self.pending.remove(&key);
                    self.enrolled.insert(key.clone(), (spec, handle));
                    progress.enrolled.push(key);
                }
                Err(err) => {
                    let msg = format!("{err:#}");
                    if self.pending.get(&key) != Some(&msg) {
                        warn!(wl = %key, "cannot enrol workload (retrying): {msg}");
                    }
                    self.pending.insert(key.clone(), msg);
                    progress.failed.push(key);
                }
            }
        }
        self.policies_changed = false;
        progress
    }

    /// Unenrol everything (not used on SIGTERM: steering stays pinned then,
    /// fail-closed; this is for tests and an explicit teardown).
    pub fn clear(&mut self, backend: &mut B) {
        for (key, (_, handle)) in std::mem::take(&mut self.enrolled) {
            if let Err(err) = backend.unenrol(&key, handle) {
                warn!(wl = %key, "unenrol incomplete: {err:#}");
            }
        }
    }

    /// Handles of every enrolled workload.
    pub fn handles(&self) -> impl Iterator<Item = &B::Handle> {
        self.enrolled.values().map(|(_, h)| h)
    }
}

/// After the first snapshot: remove the pinned steering of every workload
/// that is not wanted — pods deleted or relabelled, or workloads dropped from
/// the file, while no agent ran. Their ports would otherwise stay steered to
/// no listener (refused) for good. Wanted ones keep their pins: `enrol`
/// re-adopts them without a gap (and enrolled ones are `unenrol`'s business).
/// False when the pins could not be listed, so the next `reconcile` tries
/// again.
fn sweep<B: Backend>(backend: &mut B, keep: impl Fn(&str) -> bool) -> bool {
    let pinned = match backend.pinned() {
        Ok(keys) => keys,
        Err(err) => {
            warn!("cannot list pinned workloads: {err:#}");
            return false;
        }
    };
    for key in pinned.iter().filter(|key| !keep(key)) {
        match backend.remove_pinned(key) {
            Ok(()) => info!(wl = %key, "removed steering left by an earlier agent"),
            Err(err) => {
                warn!(wl = %key, "cannot remove steering left by an earlier agent: {err:#}")
            }
        }
    }
    true
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
