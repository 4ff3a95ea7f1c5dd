//! Command-line interface (the contract in DESIGN.md, "Command line"). This
//! module parses and dispatches; it decides nothing itself.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::authz::PathNormalization;

/// Default bpffs directory holding jwtgate's pinned maps and links.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/jwtgate";
/// Istio's default root namespace (MeshConfig `rootNamespace`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Default address of the health and metrics endpoint.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:15020";

#[derive(Parser, Debug)]
#[command(
    name = "jwtgate",
    version,
    about = "Enforce Istio RequestAuthentication and AuthorizationPolicy on a node, without sidecars",
    long_about = "jwtgate steers inbound connections on the mesh ports of selected workloads \
                  into a verifier (eBPF sk_lookup), checks JWTs and authorization exactly as \
                  Istio/Envoy would (200 / 401 / 403 with the same bodies), and drops banned \
                  sources in the kernel (XDP)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node agent: enrol workloads, verify and forward their requests.
    Agent(AgentArgs),
    /// Decide one request offline with the agent's engine and print JSON
    /// (exit 0 allowed, 1 denied, 2 bad input).
    Check(CheckArgs),
    /// Drop every packet from a source in the kernel (XDP), until the TTL expires.
    DenySource(DenySourceArgs),
    /// Remove a source from the kernel deny list.
    AllowSource(AllowSourceArgs),
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Folder of Istio YAML (RequestAuthentication, AuthorizationPolicy), as
    /// `kubectl apply -f` takes it; re-read when a file changes.
    #[arg(long, value_name = "DIR")]
    pub policies: PathBuf,
    /// YAML file listing the workloads to protect (name, namespace, labels,
    /// netns or pid, ports).
    #[arg(long, value_name = "FILE")]
    pub workloads: PathBuf,
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
    /// Ban a source in the kernel after this many failed token verifications
    /// within --ban-window-secs (0 disables banning).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub ban_after: u32,
    /// Window for --ban-after.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub ban_window_secs: u64,
    /// How long a banned source stays banned.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub ban_ttl_secs: u64,
    /// How long in-flight connections may take to finish after SIGTERM.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub drain_secs: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Folder of Istio YAML, as for `agent`.
    #[arg(long, value_name = "DIR")]
    pub policies: PathBuf,
    /// Namespace of the workload receiving the request.
    #[arg(long, value_name = "NS")]
    pub namespace: String,
    /// Labels of the workload, `k=v,k=v`.
    #[arg(long, value_name = "K=V,...", default_value = "")]
    pub labels: String,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request target, path plus optional query.
    #[arg(long, default_value = "/")]
    pub path: String,
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// Destination port of the request.
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// A request header, `Name: value`; repeat for more.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub source_ip: IpAddr,
    /// The clock for `exp`/`nbf`, UNIX seconds (default: now).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub now: Option<u64>,
    #[arg(long, value_name = "NS", default_value = DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    #[arg(long, value_enum, default_value_t = PathNormalizationArg::DecodeAndMergeSlashes)]
    pub path_normalization: PathNormalizationArg,
}

#[derive(Args, Debug, Clone)]
pub struct DenySourceArgs {
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    #[arg(long, value_name = "IP")]
    pub source: IpAddr,
    /// Seconds until the ban expires (default: never).
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct AllowSourceArgs {
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    #[arg(long, value_name = "IP")]
    pub source: IpAddr,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--path-normalization` values, named as in Istio's MeshConfig.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathNormalizationArg {
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

impl From<PathNormalizationArg> for PathNormalization {
    fn from(arg: PathNormalizationArg) -> Self {
        match arg {
            PathNormalizationArg::Base => PathNormalization::Base,
            PathNormalizationArg::MergeSlashes => PathNormalization::MergeSlashes,
            PathNormalizationArg::DecodeAndMergeSlashes => PathNormalization::DecodeAndMergeSlashes,
        }
    }
}

/// Run a parsed command line and turn the outcome into the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Agent(args) => {
            crate::telemetry::init(args.log_format);
            match crate::app::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("agent failed: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => {
            crate::telemetry::init_quiet();
            crate::check::run(&args)
        }
        Command::DenySource(args) => {
            let ttl = args.ttl.map(Duration::from_secs);
            report(
                crate::datapath::DenyList::open_pinned(&args.pin_root).and_then(|mut deny| {
                    deny.deny_source(args.source, ttl, jwtgate_common::DENY_REASON_MANUAL)
                }),
            )
        }
        Command::AllowSource(args) => report(
            crate::datapath::DenyList::open_pinned(&args.pin_root)
                .and_then(|mut deny| deny.allow_source(args.source)),
        ),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("jwtgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}
