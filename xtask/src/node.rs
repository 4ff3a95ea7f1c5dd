//! `cargo xtask node`: a real one-node Kubernetes cluster on this machine
//! (`jwtgate_e2e::node::Node`), and everything it and the real-node test need,
//! made once:
//!
//! - kubelet, kube-controller-manager, kube-scheduler, kube-proxy and kubectl
//!   v1.20.2 from the same Debian source package and Go cache as the
//!   kube-apiserver (`xtask/scripts/build-kube-apiserver.sh`, into
//!   `~/.cache/jwtgate/kube/bin`), and the pod sandbox from the tree's
//!   `build/pause/linux/pause.c`;
//! - containerd, runc, the CNI plugins and iptables from Debian (`setup`);
//! - images, built locally with podman (`--pull=never`, FROM scratch) and
//!   saved as archives for `ctr images import`: the pause image, the test
//!   pods' image (`jwtgate-testpod`, the test bed's echo app and client), and
//!   for the tests the agent's own image (`cargo xtask image`).
//!
//! Nothing is pulled: the node has no network path to a registry.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jwtgate_e2e::interrupt;
use jwtgate_e2e::node::{self, Node, NodeSetup, PAUSE_IMAGE, TESTPOD_IMAGE};

use crate::build::{host_cargo, target_dir, workspace_root};
use crate::image;
use crate::kube::cache_dir;
use crate::setup::sh;

const BUILD_SCRIPT: &str = include_str!("../scripts/build-kube-apiserver.sh");
/// What the script builds for a node (the apiserver included: one call, one lock).
const COMPONENTS: [&str; 7] = [
    "kube-apiserver",
    "kubelet",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubectl",
    "pause",
];

#[derive(clap::Args, Debug, Clone, Default)]
pub struct NodeArgs {
    /// Bring the node up, show it, and tear it down at once (no waiting for Ctrl-C).
    #[arg(long)]
    pub check: bool,
    /// Only remove what killed runs left (cgroups, netns, directories of dead pids) and exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// Everything a node and the real-node test need.
#[derive(Debug, Clone)]
pub struct NodeTools {
    pub bin_dir: PathBuf,
    pub runc_wrapper: PathBuf,
    pub pause_archive: PathBuf,
    pub testpod_archive: PathBuf,
    /// `cargo xtask image`'s archive (only when asked for).
    pub agent_archive: Option<PathBuf>,
}

/// Build or reuse everything; idempotent. `agent_image`: also the agent's
/// release image (the test installs it; a bare node does not need it).
pub fn ensure(agent_image: bool) -> Result<NodeTools> {
    let kube_dir = cache_dir().join("kube");
    let bin_dir = kube_dir.join("bin");
    if !COMPONENTS.iter().all(|c| bin_dir.join(c).is_file()) {
        let t = Instant::now();
        eprintln!(
            "node: building the node's Kubernetes binaries into {} (once; ~6 min on 2 cores after the apiserver)",
            bin_dir.display()
        );
        let script = cache_dir().join("build-kube-node.sh");
        std::fs::create_dir_all(cache_dir())?;
        std::fs::write(&script, BUILD_SCRIPT)?;
        sh(Command::new("bash")
            .arg(&script)
            .arg(&kube_dir)
            .args(COMPONENTS))
        .context("building the Kubernetes node binaries (see the log above)")?;
        eprintln!("node: binaries built in {:.0?}", t.elapsed());
    }
    let (testpod, runc_wrapper) = build_helpers()?;
    let images = target_dir().join("node-images");
    let pause_archive = images.join("pause.tar");
    build_image(
        &bin_dir.join("pause"),
        "pause",
        "tests/images/pause/Dockerfile",
        PAUSE_IMAGE,
        &pause_archive,
    )?;
    let testpod_archive = images.join("testpod.tar");
    build_image(
        &testpod,
        "usr/local/bin/jwtgate-testpod",
        "tests/images/testpod/Dockerfile",
        TESTPOD_IMAGE,
        &testpod_archive,
    )?;
    let agent_archive = if agent_image {
        let archive = image::dir().join(format!("{}-{}.tar", image::NAME, image::VERSION));
        image::run(&image::ImageArgs {
            archive: Some(archive.clone()),
            ..Default::default()
        })?;
        Some(archive)
    } else {
        None
    };
    Ok(NodeTools {
        bin_dir,
        runc_wrapper,
        pause_archive,
        testpod_archive,
        agent_archive,
    })
}

/// The variables the real-node test reads (`jwtgate_e2e::node::require_setup`).
pub fn test_env(t: &NodeTools) -> Vec<(&'static str, PathBuf)> {
    let mut env = vec![
        ("JWTGATE_NODE_BIN_DIR", t.bin_dir.clone()),
        ("JWTGATE_NODE_RUNC", t.runc_wrapper.clone()),
        ("JWTGATE_NODE_PAUSE_ARCHIVE", t.pause_archive.clone()),
        ("JWTGATE_NODE_TESTPOD_ARCHIVE", t.testpod_archive.clone()),
    ];
    if let Some(a) = &t.agent_archive {
        env.push(("JWTGATE_AGENT_IMAGE_ARCHIVE", a.clone()));
    }
    env
}

/// `jwtgate-testpod` (the pods' program) and `jwtgate-node-runc` (the runc
/// wrapper), debug builds of the test bed's binaries.
fn build_helpers() -> Result<(PathBuf, PathBuf)> {
    sh(host_cargo()
        .args(["build", "--quiet", "-p", "jwtgate-e2e"])
        .args(["--bin", "jwtgate-testpod", "--bin", "jwtgate-node-runc"])
        .current_dir(workspace_root()))
    .context("building jwtgate-testpod and jwtgate-node-runc")?;
    let dir = target_dir().join("debug");
    Ok((dir.join("jwtgate-testpod"), dir.join("jwtgate-node-runc")))
}

/// A FROM-scratch image holding `binary` (stripped) at `in_image` and the
/// shared libraries it links, built with `dockerfile` and saved to `archive`
/// under `reference`. Skipped while the archive is newer than the binary and
/// the Dockerfile.
fn build_image(
    binary: &Path,
    in_image: &str,
    dockerfile: &str,
    reference: &str,
    archive: &Path,
) -> Result<()> {
    let dockerfile = workspace_root().join(dockerfile);
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    if let (Some(a), Some(b), Some(d)) = (mtime(archive), mtime(binary), mtime(&dockerfile)) {
        if a > b && a > d {
            return Ok(());
        }
    }
    let rootfs = archive.with_extension("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)?;
    }
    let dest = rootfs.join(in_image);
    std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
    sh(Command::new("strip").arg("-o").arg(&dest).arg(binary))
        .with_context(|| format!("stripping {}", binary.display()))?;
    for lib in image::shared_libraries(binary).unwrap_or_default() {
        let to = rootfs.join(lib.strip_prefix("/").expect("ldd paths are absolute"));
        std::fs::create_dir_all(to.parent().expect("has a parent"))?;
        std::fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    let old = image::podman_out(&["image", "inspect", "--format", "{{.Id}}", reference]).ok();
    sh(image::podman()
        .args([
            "build",
            "--pull=never",
            "--layers=false",
            "--quiet",
            "--timestamp=0",
        ])
        .arg("--file")
        .arg(&dockerfile)
        .args(["--tag", reference])
        .arg(&rootfs)
        // --quiet still prints the image id.
        .stdout(std::process::Stdio::null()))
    .with_context(|| format!("podman build of {reference}"))?;
    let new = image::podman_out(&["image", "inspect", "--format", "{{.Id}}", reference])?;
    if let Some(old) = old.filter(|o| *o != new) {
        let _ = image::podman_out(&["rmi", &old]);
    }
    std::fs::create_dir_all(archive.parent().expect("has a parent"))?;
    let _ = std::fs::remove_file(archive);
    image::podman_out(&[
        "save",
        "--quiet",
        "--format",
        "docker-archive",
        "--output",
        archive.to_str().context("archive path is not UTF-8")?,
        reference,
    ])?;
    std::fs::remove_dir_all(&rootfs)?;
    eprintln!("node: image {reference} -> {}", archive.display());
    Ok(())
}

pub fn run(args: &NodeArgs) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("the node needs root (namespaces, cgroups, containerd): run it as root");
    }
    if args.cleanup {
        let removed = node::host::remove_stale("jg-node-")?;
        println!("removed {} leftover(s): {removed:?}", removed.len());
        return Ok(());
    }
    crate::setup::run()?;
    let tools = ensure(false)?;
    interrupt::install()?;
    // The cache may be $JWTGATE_CACHE's rather than $HOME's: name it.
    let bins =
        node::binaries_in(tools.bin_dir.clone()).map_err(|m| anyhow::anyhow!("missing: {m}"))?;
    let t = Instant::now();
    let mut n = Node::start(NodeSetup {
        bins,
        runc_wrapper: tools.runc_wrapper.clone(),
        pause_archive: tools.pause_archive.clone(),
        cni_chain: Vec::new(),
    })?;
    n.import_image(&tools.testpod_archive)?;
    let b = &n.bring_up;
    println!(
        "node {} Ready in {:.1?} (API server {:.1?}, containerd {:.1?})",
        n.name(),
        b.node_ready,
        b.api_ready,
        b.runtime_ready
    );
    println!("{}", n.kubectl(&["get", "nodes,pods", "-A", "-o", "wide"])?);
    println!(
        "  kubectl: ip netns exec {} {} --kubeconfig {} get pods -A",
        n.name(),
        tools.bin_dir.join("kubectl").display(),
        n.admin_kubeconfig().display()
    );
    println!(
        "  images:  {PAUSE_IMAGE}, {TESTPOD_IMAGE} (imported; pods use imagePullPolicy: Never)"
    );
    println!("  logs:    {}", n.dir().join("logs").display());
    if !args.check {
        println!("Ctrl-C stops and removes it.");
        while !interrupt::interrupted() {
            n.check_daemons()?;
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let td = Instant::now();
    n.teardown()?;
    println!(
        "node removed in {:.1?} (up {:.1?} in all)",
        td.elapsed(),
        t.elapsed()
    );
    Ok(())
}
