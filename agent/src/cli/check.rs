//! `jwtgate check` arguments.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::Args;

use crate::check::CheckInput;

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

impl CheckArgs {
    /// The request to decide, with labels and headers parsed.
    pub fn input(&self) -> anyhow::Result<CheckInput> {
        Ok(CheckInput {
            policies: self.policies.clone(),
            namespace: self.namespace.clone(),
            labels: parse_labels(&self.labels)?,
            method: self.method.clone(),
            path: self.path.clone(),
            host: self.host.clone(),
            port: self.port,
            headers: self
                .headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<anyhow::Result<Vec<_>>>()?,
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            now: self.now,
            root_namespace: self.root_namespace.clone(),
            path_normalization: self.path_normalization.into(),
            jwks: self.jwks.options(),
        })
    }
}

pub(super) fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--labels: {pair:?} is not k=v"))?;
        if k.is_empty() {
            bail!("--labels: empty label name in {pair:?}");
        }
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

fn parse_header(text: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = text
        .split_once(':')
        .with_context(|| format!("--header {text:?} is not 'Name: value'"))?;
    let name = name.trim();
    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        bail!("--header {text:?}: invalid header name");
    }
    Ok((name.to_ascii_lowercase(), value.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_headers_parse_or_say_why() {
        let labels = parse_labels("app=httpbin, version=v1").unwrap();
        assert_eq!(labels.get("version").map(String::as_str), Some("v1"));
        assert!(parse_labels("app").is_err());
        assert!(parse_labels("=x").is_err());
        assert_eq!(
            parse_header("Authorization: Bearer a.b.c").unwrap(),
            ("authorization".to_string(), "Bearer a.b.c".to_string())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}
