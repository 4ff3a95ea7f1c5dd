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

use crate::inbound::{Declared, PortSelection, Probe};

/// How to reach a workload's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsRef {
    /// A namespace file (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
    Path(PathBuf),
    /// A process inside the namespace.
    Pid(u32),
    /// A Kubernetes pod: the namespace its processes are in, found through
    /// the pod UID in their cgroup paths, which must have `ip` (see
    /// `netns::Finder`).
    Pod { uid: String, ip: IpAddr },
}

/// A workload a source wants protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// `namespace/name`: logs, metrics, pin paths.
    pub key: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub netns: NetnsRef,
    /// Addresses to steer, IPv4 and IPv6; empty = the namespace's own
    /// addresses.
    pub ips: Vec<IpAddr>,
    /// Which TCP ports are steered (default: all of them).
    pub ports: PortSelection,
    /// Ports whose protocol is declared (by port name); the others are
    /// sniffed from the client's first bytes.
    pub protocols: BTreeMap<u16, Declared>,
    /// Kubelet probes the pod declares: they pass from the node's addresses.
    pub probes: Vec<Probe>,
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
            ports: wl.port_selection(),
            protocols: wl.declared_protocols(),
            probes: wl.probes(),
            fail_open: wl.fail_open,
            always: true,
            instance: String::new(),
        }
    }

    /// Same pod, same namespace: a change between two such specs (labels,
    /// addresses, ports, protocols, probes, fail-open) is applied in place,
    /// without ever unsteering the workload.
    pub fn same_incarnation(&self, other: &WorkloadSpec) -> bool {
        self.instance == other.instance && self.netns == other.netns
    }
}

/// What a source feeds the engine: the single policy store and the workload
/// snapshot. Each is replaced whole on change; `workloads` is `None` until
/// the source has a complete first view (readiness waits for it). A source
/// that publishes both sends the policies first. `jwks_outcomes`: where the
/// engine sends the result of every scheduled `jwksUri` fetch, for a source
/// that reports failures to the policies' owners (Kubernetes Events);
/// `enrolment_failures` likewise for pods.
pub struct Inputs {
    pub policies: tokio::sync::watch::Receiver<std::sync::Arc<crate::policy::PolicySet>>,
    pub workloads: tokio::sync::watch::Receiver<Option<Vec<WorkloadSpec>>>,
    pub jwks_outcomes:
        Option<tokio::sync::mpsc::UnboundedSender<crate::sources::jwks::FetchOutcome>>,
    /// Where the engine sends the wanted workloads it could not enrol
    /// (key → error), whenever that set changes, for a source that tells
    /// their owners (Kubernetes Events on the pods).
    pub enrolment_failures: Option<tokio::sync::mpsc::UnboundedSender<BTreeMap<String, String>>>,
    /// Where the engine publishes what is enrolled (key → instance), for a
    /// source that waits on it (the CNI socket answers once a pod is in).
    pub enrolled: Option<tokio::sync::watch::Sender<BTreeMap<String, String>>>,
}
