//! What the Kubernetes-mode tests need, made once and cached outside the
//! repository (`~/.cache/jwtgate`, or `$JWTGATE_CACHE`):
//!
//! - kube-apiserver v1.20.2 built from Debian bookworm's `kubernetes` source
//!   package with Debian's Go 1.19, and Debian's etcd 3.4
//!   (`xtask/scripts/build-kube-apiserver.sh`; no registry ships an
//!   apiserver binary). Cold ≈ 5 min on 2 cores, then skipped.
//! - a Python venv with PyPI's `kubernetes-validate`, which checks deploy/
//!   offline against the Kubernetes 1.30+ schemas.
//!
//! The tests find them through the variables of [`test_env`]; the test bed
//! (`jwtgate_e2e::apiserver`) starts and stops the servers.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::setup::sh;

const BUILD_SCRIPT: &str = include_str!("../scripts/build-kube-apiserver.sh");
/// Pinned so the schemas the tests validate against do not move under us.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// `$JWTGATE_CACHE` or `~/.cache/jwtgate`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("JWTGATE_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".cache/jwtgate")
}

/// Built binaries and the validator.
#[derive(Debug, Clone)]
pub struct KubeTools {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
    pub validate: PathBuf,
}

/// Build or reuse everything; idempotent.
pub fn ensure() -> Result<KubeTools> {
    let kube_dir = cache_dir().join("kube");
    let bin = kube_dir.join("bin");
    let apiserver = bin.join("kube-apiserver");
    let etcd = bin.join("etcd");
    if !(apiserver.is_file() && etcd.is_file()) {
        let t = Instant::now();
        eprintln!(
            "kube: building kube-apiserver from Debian's source package into {} (once; ~5 min on 2 cores)",
            kube_dir.display()
        );
        let script = cache_dir().join("build-kube-apiserver.sh");
        std::fs::create_dir_all(cache_dir())?;
        std::fs::write(&script, BUILD_SCRIPT)?;
        sh(Command::new("bash").arg(&script).arg(&kube_dir))
            .context("building kube-apiserver (see the log above)")?;
        eprintln!("kube: kube-apiserver built in {:.0?}", t.elapsed());
    }
    let validate = ensure_validator()?;
    Ok(KubeTools {
        apiserver,
        etcd,
        validate,
    })
}

/// The variables the Kubernetes tests read.
pub fn test_env(tools: &KubeTools) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("JWTGATE_KUBE_APISERVER", tools.apiserver.clone()),
        ("JWTGATE_ETCD", tools.etcd.clone()),
        ("JWTGATE_KUBERNETES_VALIDATE", tools.validate.clone()),
    ]
}

/// `<cache>/venv/bin/kubernetes-validate`, installed from PyPI when missing.
fn ensure_validator() -> Result<PathBuf> {
    let venv = cache_dir().join("venv");
    let exe = venv.join("bin/kubernetes-validate");
    if exe.is_file() {
        return Ok(exe);
    }
    if !venv.join("bin/pip").is_file() {
        if !python_has_venv() {
            install_python_venv()?;
        }
        let _ = std::fs::remove_dir_all(&venv);
        sh(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating the Python venv for kubernetes-validate")?;
    }
    sh(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
    ]))
    .context("installing kubernetes-validate from PyPI")?;
    if !exe.is_file() {
        bail!("{} missing after pip install", exe.display());
    }
    Ok(exe)
}

fn python_has_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Debian splits `venv`/`ensurepip` into `python3-venv`.
fn install_python_venv() -> Result<()> {
    if !crate::setup::is_root() {
        bail!("python3 with venv is missing: run `sudo apt-get install -y python3 python3-venv`");
    }
    let install = || {
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq", "python3", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        sh(Command::new("apt-get").args(["update", "-qq"]))?;
        install()?;
    }
    Ok(())
}

/// `cargo xtask build-kube`: build/refresh the cache and print where it is.
pub fn run() -> Result<()> {
    let tools = ensure()?;
    for (var, path) in test_env(&tools) {
        println!("{var}={}", path.display());
    }
    Ok(())
}
