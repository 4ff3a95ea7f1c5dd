//! `jwtgate check`: decide one request offline with exactly the agent's code
//! path (policy folder → JWKS fetch → request shape → `authz::evaluate`) and
//! print the decision as one JSON object. Exit 0 allowed, 1 denied, 2 bad
//! input — including a policy file that is not valid YAML: a dry run must
//! not decide while silently ignoring a policy (the agent, unlike `check`,
//! keeps that file's last good version in force).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde_json::json;

use crate::authz::request_shape::{self, LocalReply, RequestHead, ShapeOptions};
use crate::authz::{self, Decision};
use crate::cli::CheckArgs;
use crate::policy::WorkloadRef;
use crate::sources::jwks::JwksStore;
use crate::sources::policy_dir::PolicyDir;

pub fn run(args: &CheckArgs) -> ExitCode {
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
fn decide(args: &CheckArgs) -> anyhow::Result<(Decision, Vec<String>)> {
    let labels = parse_labels(&args.labels)?;
    let headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let loaded = PolicyDir::new(&args.policies).load()?;
    if let Some(file) = loaded.unusable_files.first() {
        // serde_yaml's message carries the line and column.
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
    let jwks = JwksStore::new(args.jwks.options(), None)?;
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
        method: args.method.clone(),
        path: admitted.target.to_owned(),
        host: admitted.authority.into_owned(),
        headers,
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
    let decide = || {
        authz::evaluate(
            &policy,
            &request,
            &jwks,
            now,
            args.path_normalization.into(),
            None,
        )
    };
    let decision = decide();
    // As in the proxy: one re-fetch before rejecting an unknown kid.
    if crate::sources::jwks::unknown_kid(&decision)
        && runtime.block_on(jwks.refetch_for_rules(&policy.jwt_rules))
    {
        return Ok((decide(), loaded.errors));
    }
    Ok((decision, loaded.errors))
}

/// A request Envoy refuses before any filter, as a decision.
fn refused(reply: &LocalReply) -> Decision {
    Decision {
        status: reply.status,
        allowed: false,
        body: reply.body.to_owned(),
        reason: format!(
            "refused before authentication, as Envoy does ({})",
            reply.details
        ),
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
        "reason": d.reason,
        "principal": d.principal,
        "policy": d.policy,
        "audit": d.audit,
        "path": d.forward_path,
        "headers": headers,
        "policy_errors": policy_errors,
    })
}

fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
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
