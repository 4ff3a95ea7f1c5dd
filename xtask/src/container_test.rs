//! `cargo xtask container-test`: the agent image, run the way the DaemonSet in
//! deploy/ runs it, enforcing the FAQ table on workloads in network namespaces
//! of this host; then stopped (fail-closed) and started again (pins re-adopted).
//!
//! Everything the kubelet would take from the manifest — capabilities,
//! securityContext, hostNetwork, hostPID, volume mounts — is read from it
//! (`daemonset.rs`). What local mode adds: the policies folder and the
//! workloads file (a ConfigMap's job on a cluster), the metrics address (a free
//! port, so runs do not collide) and, as the bpffs volume's source, a bpffs
//! private to the test instead of the host's /sys/fs/bpf.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use jwtgate_e2e::faq::{self, FaqBed};
use jwtgate_e2e::Outcome;

use crate::daemonset::{self, PodRun};
use crate::image;

/// hostPath volumes of the DaemonSet that only Kubernetes mode uses (the CNI
/// plugin's socket, bin and conf dirs).
const KUBE_ONLY_HOST_DIRS: [&str; 3] = ["/var/run/jwtgate", "/opt/cni/bin", "/etc/cni/net.d"];

/// Where local mode's configuration is mounted in the container.
const CONFIG_DIR: &str = "/etc/jwtgate";
/// The agent's default `--pin-root`, used when the manifest does not pass one.
const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/jwtgate";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ContainerTestArgs {
    /// Use the image that is there (`cargo xtask image` builds it).
    #[arg(long)]
    pub no_build: bool,
    /// Read the DaemonSet from this file instead of deploy/ (to try a change first).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
}

pub fn run(args: &ContainerTestArgs) -> Result<()> {
    let started = Instant::now();
    if !jwtgate_e2e::is_root() {
        bail!(
            "the container test loads eBPF programs and creates network namespaces: run it as root"
        );
    }
    if !image::podman_available() {
        bail!("podman is missing: `cargo xtask setup` installs it");
    }
    if args.no_build {
        image::podman_out(&["image", "exists", &image::reference()])
            .with_context(|| format!("no image {}: run `cargo xtask image`", image::reference()))?;
    } else {
        let binary = image::build_release()?;
        image::build_image(&image::stage_rootfs(&binary)?)?;
    }
    let pod = match &args.manifest {
        Some(f) => {
            daemonset::load_file(f)?.with_context(|| format!("no DaemonSet in {}", f.display()))?
        }
        None => daemonset::load(&crate::build::workspace_root())?,
    };
    println!(
        "container-test: {} run as the DaemonSet in {} declares",
        image::reference(),
        pod.source.display()
    );
    ensure!(
        pod.host_network,
        "the DaemonSet must use hostNetwork: the agent's metrics and the JWKS fetches are on the node's network"
    );

    let mut bed = FaqBed::build("ctr")?;
    let result = exercise(&mut bed, &pod);
    // Whatever happened: no container may outlive the test.
    let names = [container_name(&bed, 1), container_name(&bed, 2)];
    let _ = image::podman_out(&["rm", "--force", "--ignore", &names[0], &names[1]]);
    let teardown = bed.node.teardown();
    result?;
    teardown?;
    println!(
        "container-test: passed in {:.1?} (image {}, {})",
        started.elapsed(),
        image::reference(),
        image::human_size(image::image_size()?)
    );
    Ok(())
}

fn exercise(bed: &mut FaqBed, pod: &PodRun) -> Result<()> {
    // The bpffs volume's source: a bpffs private to the test, mounted where the
    // test bed expects its pins, shared by both containers.
    let bpffs = bed.node.pin_root().to_path_buf();
    crate::setup::sh(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))
        .context("mounting the test's bpffs")?;
    let pin_root = pod
        .arg_value("--pin-root")
        .unwrap_or(DEFAULT_PIN_ROOT)
        .to_string();
    let bpf_mount = pod
        .mounts
        .iter()
        .find(|m| Path::new(&pin_root).starts_with(&m.container_path) && m.host_path.is_some())
        .with_context(|| format!("no hostPath volume holds the pin root {pin_root}: the pins would die with the container"))?;
    let host_pins = bpffs.join(Path::new(&pin_root).strip_prefix(&bpf_mount.container_path)?);
    let bpf_host = bpf_mount.host_path.clone().expect("checked above");
    // Host directories only Kubernetes mode writes (the CNI plugin's) go to
    // the bed's own directory: this test must not touch the host's CNI setup.
    let private = bed.node.dir().join("host");
    let redirect = |p: &Path| -> Option<PathBuf> {
        if p == bpf_host {
            Some(bpffs.clone())
        } else if KUBE_ONLY_HOST_DIRS.iter().any(|d| p == Path::new(d)) {
            Some(private.join(p.strip_prefix("/").unwrap_or(p)))
        } else {
            None
        }
    };
    let mut flags = pod.podman_args(redirect);
    for m in &pod.mounts {
        // DirectoryOrCreate is the kubelet's job; Directory must already exist.
        if let (Some(p), Some("DirectoryOrCreate")) = (&m.host_path, m.host_path_type.as_deref()) {
            if *p != bpf_host {
                std::fs::create_dir_all(redirect(p).unwrap_or_else(|| p.clone()))?;
            }
        }
    }
    flags.extend(local_mode_mounts(bed));
    println!("  podman run {}", flags.join(" "));

    start(bed, pod, &flags, 1)?;
    check_capabilities(bed, pod)?;
    faq_table(bed, "first container")?;
    let steer_before = steer_link_ids(&host_pins)?;
    ensure!(
        !steer_before.is_empty(),
        "no pinned steer link under {}",
        host_pins.display()
    );

    // Stop as the kubelet does: SIGTERM, then SIGKILL after the grace period.
    stop(bed, pod, 1)?;
    let t = Instant::now();
    let outcome = bed.client.probe(bed.pod.mesh_addr());
    ensure!(
        outcome == Outcome::Refused && t.elapsed() < Duration::from_secs(1),
        "with the container stopped the mesh port must refuse at once (fail-closed), got {outcome} after {:?}",
        t.elapsed()
    );
    println!(
        "  container stopped: {} refused at once (fail-closed)",
        bed.pod.mesh_addr()
    );

    start(bed, pod, &flags, 2)?;
    let steer_after = steer_link_ids(&host_pins)?;
    ensure!(
        steer_after == steer_before,
        "the new container must re-adopt the pinned steer links {steer_before:?}, found {steer_after:?}"
    );
    println!("  new container re-adopted steer link(s) {steer_after:?}");
    faq_table(bed, "after the restart")?;
    stop(bed, pod, 2)
}

/// The policies folder and workloads file, read-only, at CONFIG_DIR.
fn local_mode_mounts(bed: &FaqBed) -> Vec<String> {
    let files = host_files(bed);
    vec![
        format!(
            "--mount=type=bind,source={},destination={CONFIG_DIR}/policies,ro=true",
            files.0.display()
        ),
        format!(
            "--mount=type=bind,source={},destination={CONFIG_DIR}/workloads.yaml,ro=true",
            files.1.display()
        ),
    ]
}

fn host_files(bed: &FaqBed) -> (PathBuf, PathBuf) {
    (
        bed.node.policies_dir(),
        bed.node.dir().join("workloads.yaml"),
    )
}

fn container_name(bed: &FaqBed, n: u32) -> String {
    format!("{}-agent-{n}", bed.node.prefix())
}

/// `podman run` in the foreground: the test bed owns it like the agent process,
/// its output is the agent's log, and it is ready when `/readyz` says so.
fn start(bed: &mut FaqBed, pod: &PodRun, flags: &[String], n: u32) -> Result<()> {
    let name = container_name(bed, n);
    let t = Instant::now();
    let args = pod.local_mode_args(
        &format!("{CONFIG_DIR}/policies"),
        &format!("{CONFIG_DIR}/workloads.yaml"),
        "METRICS",
    )?;
    bed.node.start_agent_with(|_, metrics| {
        let mut cmd = image::podman();
        cmd.args(["run", "--rm", "--pull=never", "--name", &name])
            .args(flags)
            .args(["--env=RUST_LOG=info", "--env=NO_COLOR=1"])
            .arg(image::reference())
            .args(
                args.iter()
                    .map(|a| a.replace("METRICS", &metrics.to_string())),
            )
            // The test bed's JWKS server is on the host's loopback.
            .args(jwtgate_e2e::agent::JWKS_ON_LOOPBACK);
        Ok(cmd)
    })?;
    println!("  container {name} ready in {:.1?}", t.elapsed());
    Ok(())
}

/// `podman stop` with the manifest's grace period, then reaps `podman run`.
fn stop(bed: &mut FaqBed, pod: &PodRun, n: u32) -> Result<()> {
    let name = container_name(bed, n);
    image::podman_out(&[
        "stop",
        "--time",
        &pod.termination_grace_secs.to_string(),
        &name,
    ])?;
    // `podman stop` returns once the container is gone; `podman run` then
    // finishes its own cleanup (--rm) and exits with the agent's status.
    let status = bed.node.wait_agent_exit(Duration::from_secs(30))?;
    ensure!(
        status.success(),
        "the agent in {name} must drain and exit 0 on SIGTERM, got {status}\n{}",
        bed.node.agent_log()
    );
    Ok(())
}

fn faq_table(bed: &FaqBed, when: &str) -> Result<()> {
    let results = bed.run_rows();
    let table = faq::format_table(&results);
    println!("  FAQ table, {when}:\n{table}");
    ensure!(
        results.iter().all(|r| r.ok()),
        "FAQ table differs {when}:\n{table}\n{}",
        bed.node.agent_log()
    );
    Ok(())
}

/// The agent's effective capabilities are the manifest's `add` list, nothing
/// more — less only where this host's own bounding set lacks one (root on these
/// VMs has no CAP_SYS_RESOURCE), which no runtime could grant either.
fn check_capabilities(bed: &FaqBed, pod: &PodRun) -> Result<()> {
    if pod.security.iter().any(|f| f == "--privileged")
        || !pod.security.iter().any(|f| f == "--cap-drop=ALL")
    {
        return Ok(());
    }
    let name = container_name(bed, 1);
    let pid = image::podman_out(&["inspect", "--format", "{{.State.Pid}}", &name])?;
    let eff = cap_mask(&format!("/proc/{pid}/status"), "CapEff:")?;
    let host = cap_mask("/proc/self/status", "CapBnd:")?;
    let added: Vec<&str> = pod
        .security
        .iter()
        .filter_map(|f| f.strip_prefix("--cap-add="))
        .collect();
    let mut want = 0u64;
    for cap in &added {
        want |= 1 << cap_number(cap).with_context(|| format!("unknown capability {cap}"))?;
    }
    ensure!(
        eff == want & host,
        "the agent runs with capabilities {eff:#x}, the DaemonSet grants {want:#x} ({}), the host has {host:#x}",
        added.join(", ")
    );
    let lacking: Vec<&&str> = added
        .iter()
        .filter(|c| host & (1 << cap_number(c).unwrap_or(0)) == 0)
        .collect();
    println!(
        "  capabilities: exactly the DaemonSet's {}{}",
        added.join(", "),
        if lacking.is_empty() {
            String::new()
        } else {
            format!(" (this host's bounding set lacks {lacking:?})")
        }
    );
    Ok(())
}

fn cap_mask(status_file: &str, field: &str) -> Result<u64> {
    std::fs::read_to_string(status_file)?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .with_context(|| format!("no {field} in {status_file}"))
}

/// linux/capability.h numbers of the capabilities an agent might be given.
fn cap_number(name: &str) -> Option<u32> {
    Some(match name {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "DAC_READ_SEARCH" => 2,
        "FOWNER" => 3,
        "KILL" => 5,
        "SETGID" => 6,
        "SETUID" => 7,
        "NET_BIND_SERVICE" => 10,
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "IPC_LOCK" => 14,
        "SYS_MODULE" => 16,
        "SYS_CHROOT" => 18,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        _ => return None,
    })
}

/// Kernel ids of the pinned steer links under `<pins>/links/*/steer`.
fn steer_link_ids(pins: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(pins.join("links"))? {
        let pin = entry?.path().join("steer");
        if !pin.exists() {
            continue;
        }
        let out = Command::new("bpftool")
            .args(["--json", "link", "show", "pinned"])
            .arg(&pin)
            .output()
            .context("running bpftool")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text
            .split("\"id\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("bpftool link show pinned {}: {text}", pin.display()))?;
        ids.push(id);
    }
    ids.sort();
    Ok(ids)
}
