//! What `jwtgate agent` runs with, as plain values: built from the command
//! line by `cli/` (`AgentArgs::config`) and passed to `app`, `kube` and
//! `telemetry`, none of which sees clap. Tests and embedders can build one
//! without parsing anything.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::access_log::AccessLogConfig;
use crate::authz::PathNormalization;
use crate::jwt::CacheConfig;
use crate::proxy::{BanConfig, Timeouts};
use crate::sources::jwks::JwksOptions;
use crate::telemetry::LogFormat;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Local mode: the policy folder and the workloads file.
    pub policies: Option<PathBuf>,
    pub workloads: Option<PathBuf>,
    /// Kubernetes mode, with this node's name and an optional kubeconfig.
    pub kube: bool,
    pub node_name: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    /// The host's /proc (pods' network namespaces are found through it).
    pub host_proc: PathBuf,
    /// bpffs directory for pinned maps and links.
    pub pin_root: PathBuf,
    pub health_socket: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    pub fail_open: bool,
    pub root_namespace: String,
    pub path_normalization: PathNormalization,
    pub jwks_refresh: Duration,
    /// How long to wait for a client's first bytes on an undeclared port;
    /// `None` waits for ever (Istio's default).
    pub protocol_detection_timeout: Option<Duration>,
    pub probe_sources: ProbeSourcesConfig,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// Requests and HTTP/2 streams in progress node-wide; over it, 503.
    pub max_requests: usize,
    pub max_requests_per_source: usize,
    pub timeouts: Timeouts,
    pub accept_http10: bool,
    /// Threads serving proxied connections; `None`: one per CPU, 0: the
    /// agent's shared runtime.
    pub proxy_threads: Option<usize>,
    /// How long open connections may take to finish after SIGTERM.
    pub drain: Duration,
    pub log_format: LogFormat,
    pub jwks: JwksOptions,
    pub token_cache: CacheConfig,
    pub bans: BanConfig,
    pub access_log: AccessLogConfig,
    pub cni: CniConfig,
}

/// Where kubelet probes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSourcesConfig {
    /// The node's own addresses, followed as they change.
    Auto,
    /// Fixed addresses (empty: no probe is recognised).
    List(Vec<IpAddr>),
}

/// The chained CNI plugin (Kubernetes mode).
#[derive(Debug, Clone, Default)]
pub struct CniConfig {
    /// Where the plugin reaches the agent.
    pub socket: Option<PathBuf>,
    /// Install the plugin there at start (the host's CNI bin and conf dirs).
    pub bin_dir: Option<PathBuf>,
    pub conf_dir: Option<PathBuf>,
    /// Take the plugin out at exit when this DaemonSet (`namespace/name`)
    /// is gone.
    pub uninstall_with: Option<String>,
}
