//! Protection from a pod's first packet: a chained CNI plugin, as istio-cni
//! does for ambient mode. At CNI ADD — after the network plugin gave the pod
//! its addresses, before any container of the pod runs — the plugin hands
//! the pod's network namespace to the agent over a node-local unix socket
//! and returns only once the pod is enrolled (or is not selected by any
//! policy). When the agent cannot say so, the ADD fails and the kubelet
//! retries: a selected pod never starts serving unverified. The namespace the
//! runtime hands over is also the pod's identity: no lookup by IP or cgroup.
//!
//! * `protocol` — the request and reply on the socket (JSON lines).
//! * `plugin` — the plugin: `jwtgate` run as `jwtgate-cni` by the runtime.
//! * `install` — puts the plugin binary and its entry in the node's CNI
//!   configuration (and takes the entry out again).
//! * The agent's side of the socket is `kube::cni` (it needs the pod and
//!   policy stores).

pub mod install;
pub mod plugin;
pub mod protocol;

/// The name the plugin binary has in the CNI bin dir, and its `type`.
pub const PLUGIN_NAME: &str = "jwtgate-cni";
