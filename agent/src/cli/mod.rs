//! Command-line interface (the contract in DESIGN.md, "Command line"). This
//! module parses and dispatches; it decides nothing itself. The arguments of
//! `agent` and `check` live in their own files.

mod agent;
mod bans;
mod check;
mod cni;
mod jwt;

pub use agent::{AgentArgs, ProbeSourcesArg};
pub use bans::BanArgs;
pub use check::CheckArgs;
pub use cni::CniArgs;
pub use jwt::{JwksArgs, JwtArgs};

use std::net::IpAddr;
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
    Agent(Box<AgentArgs>),
    /// Decide one request offline with the agent's engine and print JSON
    /// (exit 0 allowed, 1 denied, 2 bad input).
    Check(Box<CheckArgs>),
    /// Drop every packet from a source in the kernel (XDP), until the TTL
    /// expires. Operator bans are never evicted by automatic ones: when the
    /// map is full this fails instead.
    DenySource(DenySourceArgs),
    /// Lift every ban of a source: operator, node-wide and per-workload.
    AllowSource(AllowSourceArgs),
    /// Ask a running agent's health socket (`agent --health-socket`) for
    /// `/readyz` or `/healthz`: exit 0 on 200. For exec probes, which only
    /// ever reach the agent of their own pod.
    Probe(ProbeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// The agent's `--health-socket`.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Ask `/readyz` instead of `/healthz`.
    #[arg(long)]
    pub ready: bool,
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
            match crate::app::run(*args) {
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
        Command::Probe(args) => {
            let path = if args.ready { "/readyz" } else { "/healthz" };
            match crate::metrics::probe_unix(&args.socket, path) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("jwtgate: {path} is not 200");
                    ExitCode::FAILURE
                }
                Err(err) => report(Err(err)),
            }
        }
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
