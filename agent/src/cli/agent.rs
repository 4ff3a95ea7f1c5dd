//! `jwtgate agent` arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{
    LogFormat, PathNormalizationArg, DEFAULT_METRICS_ADDR, DEFAULT_PIN_ROOT, DEFAULT_ROOT_NAMESPACE,
};

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Folder of Istio YAML (RequestAuthentication, AuthorizationPolicy), as
    /// `kubectl apply -f` takes it; re-read when a file changes.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    pub policies: Option<PathBuf>,
    /// YAML file listing the workloads to protect (name, namespace, labels,
    /// netns or pid, ports).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    pub workloads: Option<PathBuf>,
    /// Kubernetes mode: policies, this node's Pods and Namespaces come from
    /// the API server (in-cluster config, or --kubeconfig); pods that a
    /// policy selects are enrolled.
    #[arg(long)]
    pub kube: bool,
    /// This node's name (the DaemonSet passes spec.nodeName): only Pods with
    /// this spec.nodeName are considered.
    #[arg(
        long,
        value_name = "NAME",
        env = "NODE_NAME",
        required_if_eq("kube", "true")
    )]
    pub node_name: Option<String>,
    /// kubeconfig file for --kube (default: in-cluster config, then $KUBECONFIG / ~/.kube/config).
    #[arg(long, value_name = "FILE", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// The host's /proc (hostPID): where pods' network namespaces are found
    /// (`/host/proc` in the DaemonSet).
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub host_proc: PathBuf,
    /// Folder of pinned network namespaces (containerd, CRI-O, `ip netns`),
    /// searched before --host-proc.
    #[arg(long, value_name = "DIR", default_value = "/var/run/netns")]
    pub netns_dir: PathBuf,
    /// bpffs directory for pinned maps and links (bpffs is mounted there when absent).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Let connections reach the application directly while no verifier is
    /// listening (agent stopped). The default refuses them (fail-closed).
    #[arg(long)]
    pub fail_open: bool,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, value_name = "NS", default_value = DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    /// How request paths are normalized before matching and forwarding.
    #[arg(long, value_enum, default_value_t = PathNormalizationArg::DecodeAndMergeSlashes)]
    pub path_normalization: PathNormalizationArg,
    /// How often every jwksUri is fetched again.
    #[arg(long, value_name = "SECONDS", default_value_t = 20 * 60)]
    pub jwks_refresh_secs: u64,
    /// How long in-flight connections may take to finish after SIGTERM.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub drain_secs: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// JWKS fetching and the verified-token cache (`cli/jwt.rs`).
    #[command(flatten)]
    pub jwt: super::JwtArgs,
    /// Automatic bans (`cli/bans.rs`).
    #[command(flatten)]
    pub bans: super::BanArgs,
}
