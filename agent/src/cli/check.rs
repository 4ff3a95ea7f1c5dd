//! `jwtgate check` arguments.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

use super::{PathNormalizationArg, DEFAULT_ROOT_NAMESPACE};

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
    /// The Host header (`:authority`) exactly as the client sends it,
    /// with `:port` if the client adds one (curl does for ports other than 80).
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// Destination port of the request (`ports`, `destination.port`).
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// A request header, `Name: value`; repeat for more.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The connection's peer address (`ipBlocks`, `source.ip`; also
    /// `remoteIpBlocks` unless an `X-Forwarded-For` header says otherwise).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub source_ip: IpAddr,
    /// The workload address the request arrives at (`destination.ip`).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub destination_ip: IpAddr,
    /// The clock for `exp`/`nbf`, UNIX seconds (default: now).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub now: Option<u64>,
    #[arg(long, value_name = "NS", default_value = DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    #[arg(long, value_enum, default_value_t = PathNormalizationArg::DecodeAndMergeSlashes)]
    pub path_normalization: PathNormalizationArg,
    /// JWKS fetching (`cli/jwt.rs`).
    #[command(flatten)]
    pub jwks: super::JwksArgs,
}
