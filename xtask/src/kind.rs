//! `cargo xtask kind [--keep]`: jwtgate on a local kind cluster, for machines
//! with Docker and kind: create the cluster (deploy/kind/cluster.yaml), load the
//! image archive, apply the Istio CRDs, deploy/ and the FAQ's apps and
//! policies, and check the FAQ table with curl from the sleep pod.
//!
//! Everything applied comes from [`render`], which the unit tests validate
//! offline, so what this command would apply is checked on every machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use jwtgate_e2e::faq;
use serde::Deserialize as _;
use yaml_serde::Value;

use crate::build::workspace_root;
use crate::image;

const CLUSTER: &str = "jwtgate";
const KIND_DIR: &str = "deploy/kind";
/// The FAQ's JWKS server, as the policies name it.
const JWKS_URI: &str = "http://nginx-proxy.foo.svc.cluster.local/get_jwks";
const APP: &str = "httpbin";
const APP_URL: &str = "http://httpbin.foo:8000";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct KindArgs {
    /// Leave the cluster running for inspection (`kind delete cluster --name jwtgate`).
    #[arg(long)]
    pub keep: bool,
}

/// Every manifest `xtask kind` applies, in order.
#[derive(Debug)]
pub struct Rendered {
    pub cluster_config: PathBuf,
    /// Istio's RequestAuthentication and AuthorizationPolicy CRDs.
    pub crds: Vec<Value>,
    /// deploy/ (kustomization resources), the image pointed at the loaded one.
    pub jwtgate: Vec<Value>,
    /// namespace foo: httpbin, sleep, nginx-proxy and its JWKS ConfigMap.
    pub apps: Vec<Value>,
    /// The FAQ's two policies for httpbin.
    pub policies: Vec<Value>,
}

pub fn run(args: &KindArgs) -> Result<()> {
    require_tools()?;
    // Before building anything: what will be applied must hold together.
    let r = render(&workspace_root())?;
    validate(&r)?;
    image::run(&image::ImageArgs::default())?;
    let archive = image::dir().join(format!("{}-{}.tar", image::NAME, image::VERSION));
    let out = crate::build::target_dir().join("kind");
    std::fs::create_dir_all(&out)?;

    let exists = output(Command::new("kind").args(["get", "clusters"]))?
        .lines()
        .any(|l| l == CLUSTER);
    if !exists {
        sh(Command::new("kind")
            .args(["create", "cluster", "--wait", "120s", "--config"])
            .arg(&r.cluster_config))?;
    }
    let result = (|| -> Result<()> {
        sh(Command::new("kind")
            .args(["load", "image-archive", "--name", CLUSTER])
            .arg(&archive))?;
        apply(&out, "crds", &r.crds)?;
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/requestauthentications.security.istio.io",
            "crd/authorizationpolicies.security.istio.io",
        ])?;
        apply(&out, "jwtgate", &r.jwtgate)?;
        apply(&out, "apps", &r.apps)?;
        let ds = r
            .jwtgate
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .context("no DaemonSet")?;
        let ns = ds["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = ds["metadata"]["name"].as_str().unwrap_or("jwtgate");
        kubectl(&[
            "-n",
            ns,
            "rollout",
            "status",
            &format!("ds/{name}"),
            "--timeout=180s",
        ])?;
        for d in ["httpbin", "sleep", "nginx-proxy"] {
            kubectl(&[
                "-n",
                "foo",
                "rollout",
                "status",
                &format!("deploy/{d}"),
                "--timeout=180s",
            ])?;
        }
        apply(&out, "policies", &r.policies)?;
        check_faq_table()
    })();
    if args.keep {
        println!("cluster kept: kubectl --context kind-{CLUSTER} …; remove with `kind delete cluster --name {CLUSTER}`");
    } else {
        let _ = sh(Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]));
    }
    result
}

/// Docker (a reachable engine, not just the CLI), kind and kubectl, or a clear
/// message before anything is built.
fn require_tools() -> Result<()> {
    let ok = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut missing = Vec::new();
    if !ok(Command::new("docker").arg("info")) {
        missing.push("a running Docker engine (`docker info` fails)");
    }
    if !ok(Command::new("kind").arg("version")) {
        missing.push("kind (https://kind.sigs.k8s.io)");
    }
    if !ok(Command::new("kubectl").args(["version", "--client"])) {
        missing.push("kubectl");
    }
    if !missing.is_empty() {
        bail!(
            "`cargo xtask kind` needs {}. Without them, `cargo xtask container-test` runs the same image as the DaemonSet does, with podman",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Renders every manifest from the repository, without any cluster or tool.
pub fn render(root: &Path) -> Result<Rendered> {
    let kind = root.join(KIND_DIR);
    // The CRDs for clusters without Istio, as deploy/istio-crds ships them.
    let crds = kustomize(&root.join("deploy/istio-crds"))?;
    let jwtgate = kustomize(&root.join("deploy"))?;
    let mut apps = read_docs(&kind.join("apps.yaml"))?;
    let jwks = std::fs::read_to_string(jwtgate_e2e::testdata("istio-samples/jwks.json"))?;
    apps.push(yaml_serde::from_str(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: jwks, namespace: {}}}\ndata: {{}}\n",
        faq::NAMESPACE
    ))?);
    apps.last_mut().expect("just pushed")["data"]["jwks.json"] = jwks.into();
    let policies = [
        faq::request_authentication(faq::NAMESPACE, APP, JWKS_URI),
        faq::authorization_policy(faq::NAMESPACE, APP),
    ]
    .iter()
    .map(|y| yaml_serde::from_str(y))
    .collect::<Result<_, _>>()?;
    Ok(Rendered {
        cluster_config: kind.join("cluster.yaml"),
        crds,
        jwtgate,
        apps,
        policies,
    })
}

/// `kustomization.yaml`'s `resources` (files, or folders with their own
/// kustomization) and `namespace`; kustomize features beyond that are
/// refused rather than misrendered.
fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let file = dir.join("kustomization.yaml");
    let k: Value = yaml_serde::from_str(
        &std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?,
    )?;
    for key in k
        .as_mapping()
        .context("kustomization is not a mapping")?
        .keys()
    {
        let key = key.as_str().unwrap_or_default();
        ensure!(
            [
                "apiVersion",
                "kind",
                "resources",
                "namespace",
                "images",
                "labels",
                "commonLabels"
            ]
            .contains(&key),
            "{}: `{key}` is not rendered by xtask/src/kind.rs; teach it or keep deploy/ simple",
            file.display()
        );
    }
    let mut docs = Vec::new();
    for res in k["resources"].as_sequence().into_iter().flatten() {
        let p = dir.join(res.as_str().context("resources are paths")?);
        if p.is_dir() {
            docs.extend(kustomize(&p)?);
        } else {
            docs.extend(read_docs(&p)?);
        }
    }
    if let Some(ns) = k["namespace"].as_str() {
        for d in docs.iter_mut().filter(|d| is_namespaced(d)) {
            d["metadata"]["namespace"] = ns.into();
        }
    }
    Ok(docs)
}

fn is_namespaced(doc: &Value) -> bool {
    !matches!(
        doc["kind"].as_str(),
        Some(
            "Namespace"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "CustomResourceDefinition"
                | "PriorityClass"
        )
    )
}

fn read_docs(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    yaml_serde::Deserializer::from_str(&text)
        .map(Value::deserialize)
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// Structural checks of everything `render` produced: what an apiserver would
/// reject first, and the wiring between the pieces (image, namespaces, CRDs).
pub fn validate(r: &Rendered) -> Result<()> {
    validate_kind_parts(r)?;
    let ds: Vec<&Value> = r
        .jwtgate
        .iter()
        .filter(|d| d["kind"] == "DaemonSet")
        .collect();
    ensure!(
        ds.len() == 1,
        "deploy/ must hold exactly one DaemonSet, found {}",
        ds.len()
    );
    let pod = &ds[0]["spec"]["template"];
    let want = image::kind_reference();
    let got = pod["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        got == want || format!("docker.io/library/{got}") == want,
        "the DaemonSet runs {got}, but `xtask image` saves {want} for kind to load"
    );
    let selector = &ds[0]["spec"]["selector"]["matchLabels"];
    for (k, v) in selector
        .as_mapping()
        .context("DaemonSet without selector.matchLabels")?
    {
        ensure!(
            pod["metadata"]["labels"].get(k) == Some(v),
            "the DaemonSet's selector {k:?} does not match its pod labels"
        );
    }
    Ok(())
}

/// Everything but the DaemonSet: fields, namespaces, CRDs serving the policies.
fn validate_kind_parts(r: &Rendered) -> Result<()> {
    let all: Vec<&Value> = r
        .crds
        .iter()
        .chain(&r.jwtgate)
        .chain(&r.apps)
        .chain(&r.policies)
        .collect();
    for d in &all {
        ensure!(
            d["apiVersion"].is_string()
                && d["kind"].is_string()
                && d["metadata"]["name"].is_string(),
            "a manifest lacks apiVersion, kind or metadata.name: {d:?}"
        );
    }
    let namespaces: Vec<&str> = all
        .iter()
        .filter(|d| d["kind"] == "Namespace")
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    for d in all.iter().filter(|d| is_namespaced(d)) {
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("default");
        ensure!(
            ns == "default" || namespaces.contains(&ns),
            "{} {} is in namespace {ns}, which nothing creates",
            d["kind"].as_str().unwrap_or_default(),
            d["metadata"]["name"].as_str().unwrap_or_default()
        );
    }
    // Each policy's kind and version is served by one of the CRDs.
    for p in &r.policies {
        let (group, version) = p["apiVersion"]
            .as_str()
            .and_then(|a| a.split_once('/'))
            .context("policy apiVersion")?;
        let served = r.crds.iter().any(|c| {
            c["spec"]["group"] == group
                && c["spec"]["names"]["kind"] == p["kind"]
                && c["spec"]["versions"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|v| v["name"] == version && v["served"] == true)
        });
        ensure!(served, "no CRD serves {group}/{version} {:?}", p["kind"]);
    }
    let cluster: Value = yaml_serde::from_str(&std::fs::read_to_string(&r.cluster_config)?)?;
    ensure!(
        cluster["kind"] == "Cluster" && cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4",
        "{} is not a kind cluster config",
        r.cluster_config.display()
    );
    Ok(())
}

/// Each FAQ row with curl from the sleep pod. httpbin has no /productpage, so
/// an allowed request is one the app answered (its own status, not the
/// agent's 401/403 bodies); denied ones must match exactly.
fn check_faq_table() -> Result<()> {
    let mut failed = 0;
    for row in faq::ROWS {
        let mut args = vec![
            "-n",
            "foo",
            "exec",
            "deploy/sleep",
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
        ];
        let header;
        if let Some(t) = row.token.value() {
            header = format!("Authorization: Bearer {t}");
            args.extend(["-H", &header]);
        }
        let url = format!("{APP_URL}{}", row.path);
        args.push(&url);
        let out = Command::new("kubectl").args(&args).output()?;
        let status: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let body = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let ok = match row.body {
            Some(b) => status == row.status && body == b,
            None => status != 0 && status != 401 && status != 403,
        };
        println!(
            "{:<24} {:<18} expected {} got {status} {}",
            row.path,
            row.token.label(),
            row.status,
            if ok { "ok" } else { "MISMATCH" }
        );
        failed += usize::from(!ok);
    }
    ensure!(failed == 0, "{failed} FAQ rows differ on kind");
    Ok(())
}

fn apply(dir: &Path, name: &str, docs: &[Value]) -> Result<()> {
    let file = dir.join(format!("{name}.yaml"));
    let text: Vec<String> = docs
        .iter()
        .map(yaml_serde::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(&file, text.join("---\n"))?;
    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        file.to_str().context("UTF-8 path")?,
    ])
}

fn kubectl(args: &[&str]) -> Result<()> {
    sh(Command::new("kubectl")
        .arg(format!("--context=kind-{CLUSTER}"))
        .args(args))
}

fn sh(cmd: &mut Command) -> Result<()> {
    crate::setup::sh(cmd)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubernetes-validate --strict` (PyPI) over the Kubernetes objects, when it is installed.
#[cfg(test)]
fn kubernetes_validate(r: &Rendered) -> Result<Option<String>> {
    if Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_err()
    {
        return Ok(None);
    }
    let dir = tempdir()?;
    let file = dir.join("all.yaml");
    let docs: Vec<String> = r
        .jwtgate
        .iter()
        .chain(&r.apps)
        .map(yaml_serde::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(&file, docs.join("---\n"))?;
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&file)
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "kubernetes-validate --strict:\n{text}"
    );
    Ok(Some(text))
}

#[cfg(test)]
fn tempdir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("jwtgate-kind-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `xtask kind` applies renders and holds together, offline (and
    /// passes `kubernetes-validate --strict` where that is installed).
    #[test]
    fn everything_xtask_kind_applies_renders_and_validates() {
        let r = render(&workspace_root()).unwrap();
        validate(&r).unwrap();
        if let Some(out) = kubernetes_validate(&r).unwrap() {
            println!("{out}");
        }
    }

    #[test]
    fn kustomize_refuses_what_it_cannot_render() {
        let dir = tempdir().unwrap().join("k");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("kustomization.yaml"),
            "resources: []\npatches: []\n",
        )
        .unwrap();
        let err = kustomize(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("`patches`"), "{err}");
    }
}
