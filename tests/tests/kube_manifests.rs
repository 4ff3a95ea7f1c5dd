//! deploy/ validated offline: the Kubernetes objects against the 1.30 and
//! newest schemas of PyPI's `kubernetes-validate` (strict: unknown fields
//! fail), and the example Istio policies against the CRDs' own schemas.
//! `cargo xtask test` installs the validator (JWTGATE_KUBERNETES_VALIDATE).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use jwtgate_e2e::agent::workspace_root;

/// Oldest and newest Kubernetes the manifests promise to fit.
const VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

fn validator() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("JWTGATE_KUBERNETES_VALIDATE") {
        return Some(PathBuf::from(p));
    }
    let cached = PathBuf::from(std::env::var_os("HOME")?)
        .join(".cache/jwtgate/venv/bin/kubernetes-validate");
    if cached.is_file() {
        return Some(cached);
    }
    jwtgate_e2e::skip("kubernetes-validate not installed; run `cargo xtask build-kube`");
    None
}

#[test]
fn deploy_manifests_are_valid_for_kubernetes_1_30_and_newer() -> Result<()> {
    let Some(validate) = validator() else {
        return Ok(());
    };
    let deploy = workspace_root().join("deploy");
    // The kustomization's resources, so a file added there is validated too.
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy.join("kustomization.yaml"))?)?;
    let files: Vec<PathBuf> = kustomization["resources"]
        .as_sequence()
        .context("kustomization without resources")?
        .iter()
        .filter_map(|r| r.as_str())
        .map(|r| deploy.join(r))
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    for version in VERSIONS {
        let out = Command::new(&validate)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .with_context(|| format!("running {}", validate.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || text.contains("ERROR") || text.contains("WARN") {
            bail!("deploy/ does not validate for Kubernetes {version}:\n{text}");
        }
        for kind in [
            "daemonset/jwtgate",
            "clusterrole/jwtgate",
            "serviceaccount/jwtgate",
        ] {
            assert!(
                text.contains(&format!("passed for resource {kind}")),
                "{text}"
            );
        }
    }
    Ok(())
}

/// The example policies against the CRDs' openAPIV3Schema (Draft 4, which
/// is what Kubernetes structural schemas are; CEL rules are not evaluated).
#[test]
fn example_policies_match_the_istio_crd_schemas() -> Result<()> {
    let Some(validate) = validator() else {
        return Ok(());
    };
    let python = validate.with_file_name("python");
    let deploy = workspace_root().join("deploy");
    let script = r#"
import sys, yaml, jsonschema
def strip(s):
    if isinstance(s, dict):
        return {k: strip(v) for k, v in s.items() if not k.startswith("x-kubernetes")}
    if isinstance(s, list):
        return [strip(v) for v in s]
    return s
schemas = {}
for crd_file in sys.argv[2:]:
    crd = yaml.safe_load(open(crd_file))
    for v in crd["spec"]["versions"]:
        schemas[(crd["spec"]["group"] + "/" + v["name"], crd["spec"]["names"]["kind"])] = strip(v["schema"]["openAPIV3Schema"])
n = 0
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc:
        continue
    schema = schemas[(doc["apiVersion"], doc["kind"])]
    jsonschema.Draft4Validator(schema).validate(doc)
    n += 1
print(f"{n} policies valid")
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(deploy.join("examples/faq-policies.yaml"))
        .arg(deploy.join("istio-crds/requestauthentications.security.istio.io.yaml"))
        .arg(deploy.join("istio-crds/authorizationpolicies.security.istio.io.yaml"))
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 policies valid"), "{text}");
    Ok(())
}
