//! `jwtgate agent` arguments.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use std::time::Duration;

use clap::Args;

use crate::config::{AgentConfig, CniConfig, ProbeSourcesConfig};
use crate::proxy::Timeouts;

use super::{
    LogFormatArg, PathNormalizationArg, DEFAULT_METRICS_ADDR, DEFAULT_PIN_ROOT,
    DEFAULT_ROOT_NAMESPACE,
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
    /// The CNI plugin (Kubernetes mode).
    #[command(flatten)]
    pub cni: super::CniArgs,
    /// kubeconfig file for --kube (default: in-cluster config, then $KUBECONFIG / ~/.kube/config).
    #[arg(long, value_name = "FILE", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// The host's /proc (hostPID): a pod's network namespace is the one its
    /// processes are in, found by the pod UID in their cgroups
    /// (`/host/proc` in the DaemonSet).
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub host_proc: PathBuf,
    /// bpffs directory for pinned maps and links (bpffs is mounted there when absent).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// Also serve /healthz, /readyz and /metrics on this unix socket, for
    /// probes that must reach this agent and no other (`jwtgate probe`): in
    /// a surge upgrade two agents share the node's metrics port.
    #[arg(long, value_name = "PATH")]
    pub health_socket: Option<PathBuf>,
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
    /// How long to wait for a client's first bytes on a port whose protocol
    /// is not declared (by port name) before taking the connection for a
    /// server-first TCP protocol such as MySQL or SMTP. 0 waits for ever, as
    /// Istio does by default (server-first protocols then hang unless
    /// declared). An HTTP request sent after this is closed, never spliced.
    #[arg(long, value_name = "MILLISECONDS", default_value_t = 1000)]
    pub protocol_detection_timeout_ms: u64,
    /// Where kubelet probes come from: `auto` (this node's own addresses,
    /// re-read every 10 s), `none`, or a comma-separated list of addresses.
    /// Only requests from these sources that match a probe the pod declares
    /// (port, path, GET) pass without a token.
    #[arg(long, value_name = "auto|none|IP,...", default_value = "auto", value_parser = parse_probe_sources)]
    pub probe_sources: ProbeSourcesArg,
    /// Open downstream connections the agent accepts in all (every proxied
    /// connection holds two descriptors); over it, new ones are reset.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub max_connections: usize,
    /// Open downstream connections one source address may hold; over it,
    /// that source's new connections are reset while others are served.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_connections_per_source: usize,
    /// Requests (and HTTP/2 streams, at most 100 per connection) in progress
    /// node-wide; over it, 503 `envoy overloaded` (Envoy's overload manager
    /// answer). Bounds the memory requests in flight hold.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_requests: usize,
    /// Requests in progress one source address may hold across all its
    /// connections; over it, that source gets 503 `envoy overloaded` while
    /// others are served (one client stalling HTTP/2 streams must not take
    /// every place of --max-requests).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_requests_per_source: usize,
    /// A request head must be complete this long after its first byte, or
    /// the client gets 408 and the connection closes (Envoy's
    /// request_headers_timeout, which it leaves off by default: that is the
    /// slow-header hole).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// A connection with no request in progress closes after this long
    /// without traffic (Envoy's idle_timeout, 1 h).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub idle_timeout_secs: u64,
    /// A request in progress that moves no byte for this long is cut
    /// (Envoy's stream_idle_timeout, 5 min).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub stream_idle_timeout_secs: u64,
    /// On shutdown, how long open HTTP connections keep serving (each
    /// response with `Connection: close`) before idle ones are closed.
    #[arg(long, value_name = "MILLISECONDS", default_value_t = 2000)]
    pub drain_grace_ms: u64,
    /// Serve HTTP/1.0 requests instead of answering 426 Upgrade Required:
    /// the equivalent of Istio's PILOT_HTTP10=1 (Envoy's accept_http_10).
    #[arg(long)]
    pub accept_http10: bool,
    /// Threads that serve proxied connections, each connection on one of
    /// them for its life (docs/performance.md says why). Default: half the
    /// CPUs the agent may use, at least one. 0 serves them on the agent's
    /// shared runtime instead.
    #[arg(long, value_name = "N")]
    pub proxy_threads: Option<usize>,
    /// How long in-flight connections may take to finish after SIGTERM.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub drain_secs: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Text)]
    pub log_format: LogFormatArg,
    /// JWKS fetching and the verified-token cache (`cli/jwt.rs`).
    #[command(flatten)]
    pub jwt: super::JwtArgs,
    /// Automatic bans (`cli/bans.rs`).
    #[command(flatten)]
    pub bans: super::BanArgs,
    /// The access log (`cli/access_log.rs`).
    #[command(flatten)]
    pub access_log: super::AccessLogArgs,
}

impl AgentArgs {
    /// The agent's [`AgentConfig`]: flags turned into the values the agent
    /// runs with.
    pub fn config(&self) -> anyhow::Result<AgentConfig> {
        let log_format = self.log_format.into();
        Ok(AgentConfig {
            policies: self.policies.clone(),
            workloads: self.workloads.clone(),
            kube: self.kube,
            node_name: self.node_name.clone(),
            kubeconfig: self.kubeconfig.clone(),
            host_proc: self.host_proc.clone(),
            pin_root: self.pin_root.clone(),
            health_socket: self.health_socket.clone(),
            metrics_addr: self.metrics_addr,
            fail_open: self.fail_open,
            root_namespace: self.root_namespace.clone(),
            path_normalization: self.path_normalization.into(),
            jwks_refresh: Duration::from_secs(self.jwks_refresh_secs),
            protocol_detection_timeout: (self.protocol_detection_timeout_ms > 0)
                .then(|| Duration::from_millis(self.protocol_detection_timeout_ms)),
            probe_sources: match &self.probe_sources {
                ProbeSourcesArg::Auto => ProbeSourcesConfig::Auto,
                ProbeSourcesArg::List(list) => ProbeSourcesConfig::List(list.clone()),
            },
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            max_requests: self.max_requests,
            max_requests_per_source: self.max_requests_per_source,
            timeouts: Timeouts {
                header_read: Duration::from_secs(self.header_read_timeout_secs),
                idle: Duration::from_secs(self.idle_timeout_secs),
                stream_idle: Duration::from_secs(self.stream_idle_timeout_secs),
                drain_grace: Duration::from_millis(self.drain_grace_ms),
            },
            accept_http10: self.accept_http10,
            proxy_threads: self.proxy_threads,
            drain: Duration::from_secs(self.drain_secs),
            log_format,
            jwks: self.jwt.jwks.options(),
            token_cache: self.jwt.cache_config(),
            bans: self.bans.config(),
            access_log: self.access_log.config(log_format),
            cni: CniConfig {
                socket: self.cni.socket.clone(),
                bin_dir: self.cni.bin_dir.clone(),
                conf_dir: self.cni.conf_dir.clone(),
                uninstall_with: self.cni.uninstall_with.clone(),
            },
        })
    }
}

/// `--probe-sources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSourcesArg {
    /// The node's own addresses, followed as they change.
    Auto,
    /// Fixed addresses (empty: no probe is recognised).
    List(Vec<IpAddr>),
}

fn parse_probe_sources(s: &str) -> Result<ProbeSourcesArg, String> {
    match s.trim() {
        "auto" => Ok(ProbeSourcesArg::Auto),
        "none" | "" => Ok(ProbeSourcesArg::List(Vec::new())),
        list => list
            .split(',')
            .map(|a| {
                a.trim().parse::<IpAddr>().map_err(|_| {
                    format!("{a:?} is not an IP address (expected auto, none or addresses)")
                })
            })
            .collect::<Result<_, _>>()
            .map(ProbeSourcesArg::List),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sources_forms() {
        assert_eq!(parse_probe_sources("auto"), Ok(ProbeSourcesArg::Auto));
        assert_eq!(
            parse_probe_sources("none"),
            Ok(ProbeSourcesArg::List(vec![]))
        );
        assert_eq!(
            parse_probe_sources("10.0.0.1, fd00::1"),
            Ok(ProbeSourcesArg::List(vec![
                "10.0.0.1".parse().unwrap(),
                "fd00::1".parse().unwrap()
            ]))
        );
        assert!(parse_probe_sources("10.0.0.0/8").is_err());
    }
}
