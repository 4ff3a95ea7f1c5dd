//! `jwtgate check`: decide one request offline with exactly the agent's code
//! path (policy folder → JWKS fetch → request shape → `authz::evaluate`) and
//! print the decision as one JSON object. Exit 0 allowed, 1 denied, 2 bad
//! input — including a policy file that is not valid YAML: a dry run must
//! not decide while silently ignoring a policy (the agent, unlike `check`,
//! keeps that file's last good version in force).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use serde_json::json;

use crate::authz::request_shape::{self, LocalReply, RequestHead, ShapeOptions};
use crate::authz::{self, Decision, PathNormalization, Reason};
use crate::policy::WorkloadRef;
use crate::sources::jwks::{JwksOptions, JwksStore};
use crate::sources::policy_dir::PolicyDir;

/// One request to decide, and where its policies come from (built from the
/// command line by `cli/check.rs`).
#[derive(Debug, Clone)]
pub struct CheckInput {
    pub policies: PathBuf,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub method: String,
    /// Request target, path plus optional query.
    pub path: String,
    /// The Host header exactly as the client sends it.
    pub host: String,
    pub port: u16,
    /// Further headers, names lower case.
    pub headers: Vec<(String, String)>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    /// The clock for `exp`/`nbf` (default: now).
    pub now: Option<u64>,
    pub root_namespace: String,
    pub path_normalization: PathNormalization,
    pub jwks: JwksOptions,
}

pub fn run(args: &CheckInput) -> ExitCode {
    match decide(args) {
        Ok((decision, policy_errors)) => {
            let head = args.method == "HEAD";
            println!("{}", render(&decision, &policy_errors, head));
            if decision.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            eprintln!("jwtgate check: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The decision plus the policy problems met on the way (invalid resources
/// are left out, as in the agent, and reported on stderr and in the JSON).
fn decide(args: &CheckInput) -> anyhow::Result<(Decision, Vec<String>)> {
    let labels = args.labels.clone();
    let headers = args.headers.clone();
    let loaded = PolicyDir::new(&args.policies).load()?;
    if let Some(file) = loaded.unusable_files.first() {
        // yaml_serde's message carries the line and column.
        bail!(
            "policy file {} cannot be used, so no decision is made: {}",
            file.origin,
            file.message
        );
    }
    for err in &loaded.errors {
        eprintln!("jwtgate check: policy: {err}");
    }
    let policy = loaded.set.for_workload(
        &WorkloadRef {
            namespace: args.namespace.clone(),
            labels,
        },
        &args.root_namespace,
    );
    // What Envoy refuses before any filter (method, target, Host, size),
    // and the authority/target the filters see. `--host` is the first Host
    // line; `--header 'Host: …'` adds more.
    let hosts: Vec<&[u8]> = std::iter::once(args.host.as_str())
        .chain(
            headers
                .iter()
                .filter(|(n, _)| n == "host")
                .map(|(_, v)| v.as_str()),
        )
        .map(str::as_bytes)
        .collect();
    let head_bytes = request_shape::head_size(
        &args.method,
        &args.path,
        std::iter::once(("host".as_bytes(), args.host.as_bytes()))
            .chain(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))),
    );
    let head = RequestHead {
        method: &args.method,
        version: http::Version::HTTP_11,
        target: &args.path,
        hosts: &hosts,
        head_bytes,
        header_count: headers.len() + 1,
    };
    let admitted = match request_shape::admit(&head, ShapeOptions::default()) {
        Ok(admitted) => admitted,
        Err(reply) => return Ok((refused(&reply), loaded.errors)),
    };
    let jwks = JwksStore::new(args.jwks.clone(), None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (uri, timeout) in loaded.set.jwks_uris() {
        // As in the agent, a key set that cannot be fetched leaves the
        // provider without keys: its tokens are rejected.
        if let Err(err) = runtime.block_on(jwks.refresh(&uri, timeout)) {
            eprintln!("jwtgate check: JWKS fetch failed: {err:#}");
        }
    }
    // `--host` is the Host header exactly as the client sends it: `hosts`
    // match `:authority` as a string (§3.4), so `httpbin.foo` and
    // `httpbin.foo:8000` are different requests; `--port` is the destination
    // port (`ports`, `destination.port`). An absolute-form `--path` brings
    // its own authority.
    let request = authz::Request {
        method: &args.method,
        path: admitted.target,
        host: &admitted.authority,
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect(),
        source_ip: args.source_ip,
        destination_ip: args.destination_ip,
        destination_port: args.port,
    };
    let now = args.now.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    // Exactly as the proxy decides, the one re-fetch on an unknown kid
    // included.
    let decision = runtime.block_on(crate::sources::jwks::decide(
        &jwks,
        &policy,
        &request,
        now,
        args.path_normalization,
        None,
    ));
    Ok((decision, loaded.errors))
}

/// A request Envoy refuses before any filter, as a decision.
fn refused(reply: &LocalReply) -> Decision {
    Decision {
        status: reply.status,
        allowed: false,
        body: reply.body.to_owned(),
        reason: Reason::Refused {
            details: reply.details,
        },
        principal: None,
        policy: None,
        audit: None,
        www_authenticate: None,
        forward_path: String::new(),
        headers: Default::default(),
    }
}

/// The contract's JSON: status, allowed, body, reason, principal, policy,
/// headers (added / removed on the forwarded request, plus the reply's
/// `www-authenticate`); beyond the contract: the forwarded `path`, the
/// matching `audit` policy and `policy_errors`. `body` is what the client
/// receives: nothing for HEAD.
fn render(d: &Decision, policy_errors: &[String], head: bool) -> serde_json::Value {
    let added: BTreeMap<&str, &str> = d
        .headers
        .add
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut headers = json!({ "added": added, "removed": d.headers.remove });
    if let Some(www) = &d.www_authenticate {
        headers["www-authenticate"] = json!(www);
    }
    let body = if head { "" } else { d.body.as_str() };
    json!({
        "status": d.status,
        "allowed": d.allowed,
        "body": body,
        "reason": d.reason.to_string(),
        "principal": d.principal,
        "policy": d.policy,
        "audit": d.audit,
        "path": d.forward_path,
        "headers": headers,
        "policy_errors": policy_errors,
    })
}
