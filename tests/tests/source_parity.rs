//! Kube mode equals folder mode. Every case below goes through both policy
//! sources of the agent, run in-process exactly as `jwtgate agent` runs them:
//! the `--policies` folder (real files, picked up by its 1 s poller) and the
//! Kubernetes source (objects in a real kube-apiserver, read by the agent's
//! watchers with the agent's own RBAC). Each probe request is then decided by
//! the one engine (`authz::evaluate`) on both published policy sets: the two
//! decisions must be identical, and their status the one the case expects.
//!
//! Two rounds: the first versions, then updates — valid, invalid (the last
//! good version must stay in force in both modes), dry-run switched on and
//! off, deleted. Each case lives in its own namespace, so all cases of a
//! round are applied at once; a sentinel policy written after them tells
//! when a source has seen the whole round.
//!
//! Only what the API server stores as written can be compared: it prunes
//! unknown spec fields (a typo that the folder reports), so those cases are
//! covered by the unit tests of `policy/`. No root needed: no netns, no eBPF.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser as _;
use jwtgate::authz::{self, Decision, JwksLookup, PathNormalization, Request};
use jwtgate::jwt::JwkSet;
use jwtgate::policy::{PolicySet, WorkloadRef};
use jwtgate_e2e::apiserver::{require_binaries, ApiServer};
use jwtgate_e2e::faq::demo_jwt;
use jwtgate_e2e::kube_bed::install_deploy;
use tokio::sync::watch;

const V1: &str = "apiVersion: security.istio.io/v1";
/// How long a source may take to show a round (the folder polls every second).
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Token {
    None,
    /// The Istio sample token (`testing@secure.istio.io`).
    Good,
    Forged,
}

/// One request and the status expected in each round.
struct Probe {
    path: &'static str,
    token: Token,
    first: u16,
    second: u16,
}

fn p(path: &'static str, first: u16, second: u16) -> Probe {
    Probe {
        path,
        token: Token::None,
        first,
        second,
    }
}

fn pt(path: &'static str, token: Token, first: u16, second: u16) -> Probe {
    Probe {
        path,
        token,
        first,
        second,
    }
}

/// Policies of one case in namespace `{ns}` (`---`-separated), per round.
struct Case {
    name: &'static str,
    first: String,
    /// `None`: unchanged; `Some("")`: every object deleted.
    second: Option<String>,
    /// Labels of the workload the probes are decided for (`app: web` and these).
    labels: &'static [(&'static str, &'static str)],
    probes: Vec<Probe>,
}

fn case(name: &'static str, first: String, second: Option<String>, probes: Vec<Probe>) -> Case {
    Case {
        name,
        first,
        second,
        labels: &[],
        probes,
    }
}

/// An AuthorizationPolicy `name` with optional annotations and this spec body.
fn ap(name: &str, annotations: &str, spec: &str) -> String {
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!(", annotations: {{{annotations}}}")
    };
    format!("{V1}\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: '{{ns}}'{annotations}}}\nspec:\n{spec}")
}

fn deny_paths(paths: &str) -> String {
    format!("  action: DENY\n  rules: [{{to: [{{operation: {{paths: [{paths}]}}}}]}}]\n")
}

fn request_authentication(jwks: &str) -> String {
    format!(
        "{V1}\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: '{{ns}}'}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  jwtRules:\n  - issuer: testing@secure.istio.io\n    jwks: {}\n",
        serde_json::Value::String(jwks.to_owned())
    )
}

fn cases() -> Vec<Case> {
    let jwks = std::fs::read_to_string(jwtgate_e2e::testdata("istio-samples/jwks.json"))
        .expect("sample JWKS");
    let join = |docs: &[String]| docs.join("---\n");
    let dry = |v: &str| format!("istio.io/dry-run: '{v}'");
    let bad_cidr = "  action: DENY\n  rules: [{to: [{operation: {paths: ['/other*']}}], from: [{source: {ipBlocks: ['10.0.0.0/33']}}]}]\n";
    vec![
        case(
            "deny-invalid-update",
            ap("d", "", &deny_paths("'/admin*'")),
            Some(ap("d", "", bad_cidr)),
            vec![p("/admin", 403, 403), p("/other", 200, 200), p("/", 200, 200)],
        ),
        case(
            "deny-changed",
            ap("d", "", &deny_paths("'/admin*'")),
            Some(ap("d", "", &deny_paths("'/other*'"))),
            vec![p("/admin", 403, 200), p("/other", 200, 403)],
        ),
        case(
            "allow-nothing",
            ap("a", "", "  {}\n"),
            None,
            vec![p("/", 403, 403)],
        ),
        case(
            "allow-all-and-deny",
            join(&[
                ap("a", "", "  rules: [{}]\n"),
                ap("d", "", &deny_paths("'/admin'")),
            ]),
            None,
            vec![p("/", 200, 200), p("/admin", 403, 403)],
        ),
        case(
            "allow-path-deleted",
            ap("a", "", "  rules: [{to: [{operation: {paths: ['/public*']}}]}]\n"),
            Some(String::new()),
            vec![p("/public/x", 200, 200), p("/x", 403, 200)],
        ),
        case(
            "dry-run-deny",
            ap("d", &dry("true"), &deny_paths("'/admin'")),
            Some(ap("d", &dry("false"), &deny_paths("'/admin'"))),
            vec![p("/admin", 200, 403)],
        ),
        case(
            "dry-run-allow",
            ap("a", &dry("True"), "  rules: [{to: [{operation: {paths: ['/only']}}]}]\n"),
            None,
            vec![p("/other", 200, 200), p("/only", 200, 200)],
        ),
        case(
            "dry-run-added",
            ap("d", "", &deny_paths("'/admin'")),
            Some(ap("d", &dry("1"), &deny_paths("'/admin'"))),
            vec![p("/admin", 403, 200)],
        ),
        case(
            "dry-run-invalid-update",
            ap("d", &dry("false"), &deny_paths("'/admin'")),
            Some(ap("d", &dry("maybe"), &deny_paths("'/admin'"))),
            vec![p("/admin", 403, 403)],
        ),
        case(
            "dry-run-invalid-new",
            ap("d", &dry("yes"), &deny_paths("'/admin'")),
            None,
            vec![p("/admin", 200, 200)],
        ),
        case(
            "audit-dry-run-refused",
            join(&[
                ap("audit", "", "  action: AUDIT\n  rules: [{}]\n"),
                ap("d", "", &deny_paths("'/admin'")),
            ]),
            // Istio refuses dry-run on AUDIT: the AUDIT policy keeps its
            // last good version (visible in the decision's `audit`).
            Some(join(&[
                ap("audit", &dry("true"), "  action: AUDIT\n  rules: [{}]\n"),
                ap("d", "", &deny_paths("'/admin'")),
            ])),
            vec![p("/", 200, 200), p("/admin", 403, 403)],
        ),
        case(
            "jwt-required",
            join(&[
                request_authentication(&jwks),
                ap(
                    "need-jwt",
                    "",
                    "  action: DENY\n  rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]\n",
                ),
            ]),
            // A broken JWKS: the RequestAuthentication keeps its last good keys.
            Some(join(&[
                request_authentication("not a key set"),
                ap(
                    "need-jwt",
                    "",
                    "  action: DENY\n  rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]\n",
                ),
            ])),
            vec![
                pt("/x", Token::None, 403, 403),
                pt("/x", Token::Good, 200, 200),
                pt("/x", Token::Forged, 401, 401),
            ],
        ),
        case(
            "other-selector",
            ap(
                "d",
                "",
                "  selector: {matchLabels: {app: other}}\n  action: DENY\n  rules: [{}]\n",
            ),
            None,
            vec![p("/", 200, 200)],
        ),
        case(
            "target-refs",
            ap(
                "d",
                "",
                "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}]\n  action: DENY\n  rules: [{}]\n",
            ),
            None,
            vec![p("/", 200, 200)],
        ),
        case(
            "v1beta1",
            ap("d", "", &deny_paths("'/admin'"))
                .replace("security.istio.io/v1\n", "security.istio.io/v1beta1\n"),
            None,
            vec![p("/admin", 403, 403), p("/", 200, 200)],
        ),
        case(
            "custom-as-deny",
            ap(
                "c",
                "",
                "  action: CUSTOM\n  provider: {name: ext-authz}\n  rules: [{to: [{operation: {paths: ['/ext']}}]}]\n",
            ),
            None,
            vec![p("/ext", 403, 403), p("/", 200, 200)],
        ),
        case(
            "invalid-new",
            ap("d", "", bad_cidr),
            None,
            vec![p("/", 200, 200)],
        ),
        Case {
            labels: &[("parity", "root")],
            ..case(
                "root-namespace",
                ap(
                    "root-deny",
                    "",
                    "  selector: {matchLabels: {parity: root}}\n  action: DENY\n  rules: [{to: [{operation: {paths: ['/root']}}]}]\n",
                )
                .replace("'{ns}'", "istio-system"),
                None,
                vec![p("/root", 403, 403), p("/", 200, 200)],
            )
        },
    ]
}

#[test]
fn every_case_decides_the_same_from_a_folder_and_from_the_api_server() -> Result<()> {
    let Some(bins) = require_binaries() else {
        return Ok(());
    };
    let dir = tempfile::Builder::new().prefix("jg-parity-").tempdir()?;
    let api = ApiServer::start(bins, &dir.path().join("k8s"))?;
    install_deploy(&api)?;
    let cases = cases();
    let mut namespaces = vec!["istio-system".to_owned(), "sentinel".to_owned()];
    namespaces.extend(cases.iter().map(|c| namespace(c.name)));
    for ns in &namespaces {
        api.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
        ))?;
    }

    let folder = dir.path().join("policies");
    std::fs::create_dir(&folder)?;
    let workloads = dir.path().join("workloads.yaml");
    std::fs::write(&workloads, "workloads: []\n")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = watch::channel(false);
    let mut from_folder = rt.block_on(async {
        anyhow::Ok(
            jwtgate::sources::local::Local::load(&folder, &workloads)?
                .start(stopped.clone())
                .policies,
        )
    })?;
    let args = agent_args(&api)?;
    let mut from_api = rt
        .block_on(jwtgate::kube::start(&args.config()?, stopped.clone()))?
        .policies;

    let token = demo_jwt();
    let mut failures = Vec::new();
    let mut compared = 0;
    for round in [1, 2] {
        for c in &cases {
            let (before, now) = match round {
                1 => (None, Some(c.first.clone())),
                _ => (Some(c.first.clone()), c.second.clone()),
            };
            let Some(now) = now else { continue };
            let ns = namespace(c.name);
            let now = now.replace("{ns}", &ns);
            write_atomically(&folder.join(format!("{}.yaml", c.name)), &now)?;
            let kept = objects(&now)?;
            for object in objects(&before.unwrap_or_default().replace("{ns}", &ns))? {
                if !kept.contains(&object) {
                    let (api_version, kind, namespace, name) = object;
                    api.delete(&api_version, &kind, &namespace, &name)?;
                }
            }
            if !now.trim().is_empty() {
                api.apply(&now)
                    .with_context(|| format!("case {}", c.name))?;
            }
        }
        let sentinel = sentinel(round);
        write_atomically(&folder.join("zz-sentinel.yaml"), &sentinel)?;
        api.apply(&sentinel)?;
        let folder_set = rt.block_on(wait_for_round(&mut from_folder, round, "folder"))?;
        let api_set = rt.block_on(wait_for_round(&mut from_api, round, "API server"))?;

        for c in &cases {
            for probe in &c.probes {
                let want = if round == 1 {
                    probe.first
                } else {
                    probe.second
                };
                let folder_decision = decide(&folder_set, c, probe, &token);
                let api_decision = decide(&api_set, c, probe, &token);
                compared += 1;
                let what = format!(
                    "round {round}, case {}, GET {} ({:?})",
                    c.name, probe.path, probe.token
                );
                if folder_decision != api_decision {
                    failures.push(format!(
                        "{what}: the modes differ\n  folder: {folder_decision:?}\n  kube:   {api_decision:?}"
                    ));
                } else if folder_decision.status != want {
                    failures.push(format!(
                        "{what}: both modes answer {} ({}), expected {want}",
                        folder_decision.status, folder_decision.reason
                    ));
                }
            }
        }
    }
    let _ = stop.send(true);
    eprintln!(
        "{compared} decisions compared over {} cases and 2 rounds",
        cases.len()
    );
    if !failures.is_empty() {
        bail!(
            "{} of {compared} decisions wrong:\n{}\n--- apiserver\n{}",
            failures.len(),
            failures.join("\n"),
            api.log()
        );
    }
    Ok(())
}

fn namespace(case: &str) -> String {
    format!("parity-{case}")
}

/// `jwtgate agent --kube` with the agent's kubeconfig (deploy/'s RBAC).
fn agent_args(api: &ApiServer) -> Result<jwtgate::cli::AgentArgs> {
    let kubeconfig = api.agent_kubeconfig();
    let cli = jwtgate::cli::Cli::try_parse_from([
        "jwtgate",
        "agent",
        "--kube",
        "--node-name",
        "parity-node",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
    ])?;
    match cli.command {
        jwtgate::cli::Command::Agent(args) => Ok(*args),
        other => bail!("parsed as {other:?}"),
    }
}

/// An AuthorizationPolicy and a RequestAuthentication named for the round:
/// written after all cases, so a set that holds both holds the whole round.
fn sentinel(round: u32) -> String {
    format!(
        "{V1}\nkind: AuthorizationPolicy\nmetadata: {{name: round-{round}, namespace: sentinel}}\nspec: {{rules: [{{}}]}}\n---\n\
         {V1}\nkind: RequestAuthentication\nmetadata: {{name: round-{round}, namespace: sentinel}}\nspec: {{jwtRules: [{{issuer: round-{round}}}]}}\n"
    )
}

async fn wait_for_round(
    rx: &mut watch::Receiver<Arc<PolicySet>>,
    round: u32,
    source: &str,
) -> Result<Arc<PolicySet>> {
    let name = format!("round-{round}");
    let sentinel = WorkloadRef {
        namespace: "sentinel".into(),
        labels: BTreeMap::new(),
    };
    let complete = |set: &PolicySet| {
        let p = set.for_workload(&sentinel, "istio-system");
        p.authz.iter().any(|a| a.name == name) && p.jwt_rules.iter().any(|r| r.issuer == name)
    };
    let wait = async {
        loop {
            let set = rx.borrow_and_update().clone();
            if complete(&set) {
                return Ok(set);
            }
            rx.changed().await?;
        }
    };
    match tokio::time::timeout(ROUND_TIMEOUT, wait).await {
        Ok(result) => result,
        Err(_) => {
            bail!("the {source} source did not publish round {round} within {ROUND_TIMEOUT:?}")
        }
    }
}

/// Write through a hidden temporary file (the folder source skips those),
/// so the poller never reads half a file.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().context("file name")?.to_string_lossy();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.tmp"));
    if text.trim().is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        };
    }
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `(apiVersion, kind, namespace, name)` of each document.
fn objects(yaml: &str) -> Result<Vec<(String, String, String, String)>> {
    let mut out = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(yaml) {
        let v: yaml_serde::Value = serde::Deserialize::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        let s = |v: &yaml_serde::Value| v.as_str().unwrap_or_default().to_owned();
        out.push((
            s(&v["apiVersion"]),
            s(&v["kind"]),
            s(&v["metadata"]["namespace"]),
            s(&v["metadata"]["name"]),
        ));
    }
    Ok(out)
}

/// No `jwksUri` in these cases: inline key sets only.
struct NoFetchedKeys;

impl JwksLookup for NoFetchedKeys {
    fn jwks(&self, _uri: &str) -> Option<Arc<JwkSet>> {
        None
    }
}

fn decide(set: &PolicySet, c: &Case, probe: &Probe, token: &str) -> Decision {
    let mut labels: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
    labels.extend(c.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let workload = WorkloadRef {
        namespace: namespace(c.name),
        labels,
    };
    let mut headers = Vec::new();
    match probe.token {
        Token::None => {}
        Token::Good => headers.push(("authorization".to_owned(), format!("Bearer {token}"))),
        Token::Forged => headers.push(("authorization".to_owned(), "Bearer a.b.c".to_owned())),
    }
    let request = Request {
        method: "GET",
        path: probe.path,
        host: "web:9080",
        headers: headers
            .iter()
            .map(|(n, v): &(String, String)| (n.as_str(), v.as_str()))
            .collect(),
        source_ip: "10.0.0.1".parse().expect("address"),
        destination_ip: "10.0.0.2".parse().expect("address"),
        destination_port: 9080,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    authz::evaluate(
        &set.for_workload(&workload, "istio-system"),
        &request,
        &NoFetchedKeys,
        now,
        PathNormalization::default(),
        None,
    )
}
