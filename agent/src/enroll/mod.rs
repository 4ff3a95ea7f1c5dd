//! Which workloads are enrolled (steered into the verifier) and keeping that
//! equal to what the sources want, whatever the source (`--workloads` file or
//! `--kube`).
//!
//! `state` is the desired-versus-enrolled state machine (ztunnel's
//! `statemanager.rs`): pure, driven through the [`Backend`] trait so that unit
//! tests use a fake. `live` is the real backend: netns lookup, eBPF steering
//! and one proxy task per workload.

mod live;
mod state;

pub use live::{LiveBackend, LiveHandle};
pub use state::{Backend, Enroller, Progress};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// How to reach a workload's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsRef {
    /// A namespace file (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
    Path(PathBuf),
    /// A process inside the namespace.
    Pid(u32),
    /// Whichever namespace on this host owns the address (Kubernetes pods:
    /// the pod IP is unique on the node; see `netns::Finder`).
    OwnerOf(IpAddr),
}

/// A workload a source wants protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// `namespace/name`: logs, metrics, pin paths.
    pub key: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub netns: NetnsRef,
    /// Addresses to steer; empty = the namespace's own addresses.
    pub ips: Vec<IpAddr>,
    /// Mesh ports (TCP).
    pub ports: Vec<u16>,
    /// `None`: the agent's `--fail-open`.
    pub fail_open: Option<bool>,
    /// Enrol even when no policy selects it. The workloads file lists
    /// workloads explicitly (an opt-in), Kubernetes pods are enrolled only
    /// while a policy selects them, so unprotected pods are never steered.
    pub always: bool,
    /// Distinguishes incarnations under one key (a pod's uid): a pod deleted
    /// and re-created with the same name is a new netns and a new enrolment.
    pub instance: String,
}

impl WorkloadSpec {
    /// From an entry of the `--workloads` file.
    pub fn from_file(wl: &crate::sources::workloads::Workload) -> WorkloadSpec {
        let netns = match (&wl.netns, wl.pid) {
            (Some(path), _) => NetnsRef::Path(path.clone()),
            // `workloads::parse` guarantees one of them.
            (None, pid) => NetnsRef::Pid(pid.unwrap_or_default()),
        };
        WorkloadSpec {
            key: wl.key(),
            namespace: wl.namespace.clone(),
            labels: wl.labels.clone(),
            netns,
            ips: wl.ips.clone(),
            ports: wl.ports.clone(),
            fail_open: wl.fail_open,
            always: true,
            instance: String::new(),
        }
    }
}

/// What a source feeds the engine: the single policy store and the workload
/// snapshot. Each is replaced whole on change; `workloads` is `None` until
/// the source has a complete first view (readiness waits for it). A source
/// that publishes both sends the policies first. `jwks_outcomes`: where the
/// engine sends the result of every scheduled `jwksUri` fetch, for a source
/// that reports failures to the policies' owners (Kubernetes Events).
pub struct Inputs {
    pub policies: tokio::sync::watch::Receiver<std::sync::Arc<crate::policy::PolicySet>>,
    pub workloads: tokio::sync::watch::Receiver<Option<Vec<WorkloadSpec>>>,
    pub jwks_outcomes:
        Option<tokio::sync::mpsc::UnboundedSender<crate::sources::jwks::FetchOutcome>>,
}
