//! `jwtgate explain`: for one workload, the policies that select it, their
//! rules, and (from a running agent) its last denials — read from the
//! agent's admin endpoint or decided from a policy folder (`explain.rs`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use serde_json::Value;

use super::{DEFAULT_METRICS_ADDR, DEFAULT_ROOT_NAMESPACE};
use crate::policy::WorkloadRef;
use crate::sources::policy_dir::PolicyDir;

#[derive(Args, Debug, Clone)]
pub struct ExplainArgs {
    /// The workload, `namespace/name` (as in the agent's logs and metrics).
    #[arg(long, value_name = "NS/NAME")]
    pub workload: String,
    /// A running agent's admin address (its --metrics-addr; the default
    /// when --policies is not given).
    #[arg(long, value_name = "ADDR", conflicts_with = "policies")]
    pub agent: Option<SocketAddr>,
    /// Explain from a folder of Istio YAML instead of a running agent.
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// The workload's labels, `k=v,k=v` (with --policies).
    #[arg(
        long,
        value_name = "K=V,...",
        default_value = "",
        requires = "policies"
    )]
    pub labels: String,
    #[arg(long, value_name = "NS", default_value = DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    /// How many of the last denials to show.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub last: usize,
    #[arg(long, value_enum, default_value_t = ExplainOutput::Text)]
    pub output: ExplainOutput,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExplainOutput {
    Text,
    Json,
}

pub fn run(args: &ExplainArgs) -> ExitCode {
    match explain(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("jwtgate explain: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn explain(args: &ExplainArgs) -> anyhow::Result<String> {
    let (workload, denials) = match &args.policies {
        Some(dir) => (from_folder(args, dir)?, Vec::new()),
        None => from_agent(args)?,
    };
    Ok(match args.output {
        ExplainOutput::Json => {
            let mut all = workload;
            all["recent_denials"] = Value::Array(denials);
            format!("{all:#}\n")
        }
        ExplainOutput::Text => crate::explain::render_text(&workload, &denials),
    })
}

fn from_folder(args: &ExplainArgs, dir: &std::path::Path) -> anyhow::Result<Value> {
    let (namespace, _) = args
        .workload
        .split_once('/')
        .ok_or_else(|| anyhow!("--workload {:?} is not namespace/name", args.workload))?;
    let labels = super::check::parse_labels(&args.labels)?;
    let loaded = PolicyDir::new(dir).load()?;
    for err in &loaded.errors {
        eprintln!("jwtgate explain: policy: {err}");
    }
    let policy = loaded.set.for_workload(
        &WorkloadRef {
            namespace: namespace.to_string(),
            labels: labels.clone(),
        },
        &args.root_namespace,
    );
    Ok(crate::explain::workload_json(
        &args.workload,
        &labels,
        &policy,
    ))
}

fn from_agent(args: &ExplainArgs) -> anyhow::Result<(Value, Vec<Value>)> {
    let addr = match args.agent {
        Some(a) => a,
        None => DEFAULT_METRICS_ADDR.parse()?,
    };
    let key = args.workload.replace('/', "%2F");
    let workloads = get_json(addr, &format!("/debug/workloads?workload={key}"))?;
    let workload = workloads
        .as_array()
        .and_then(|w| w.first().cloned())
        .ok_or_else(|| {
            anyhow!(
                "the agent at {addr} has no enrolled workload {}",
                args.workload
            )
        })?;
    let denials = get_json(addr, &format!("/debug/denials?workload={key}"))?;
    let denials = denials.as_array().cloned().unwrap_or_default();
    let skip = denials.len().saturating_sub(args.last);
    Ok((workload, denials.into_iter().skip(skip).collect()))
}

/// One GET on the agent's admin endpoint; the body as JSON.
fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot reach the agent's admin endpoint at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{addr}{path}: not an HTTP answer"))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    match status {
        "200" => serde_json::from_str(body).with_context(|| format!("{addr}{path}: not JSON")),
        "404" => bail!("{addr}{path}: not found ({})", body.trim()),
        other => bail!("{addr}{path}: HTTP {other}"),
    }
}
