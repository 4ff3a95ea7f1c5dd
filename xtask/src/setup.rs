//! `cargo xtask setup`: make this machine able to build and test jwtgate.
//!
//! Idempotent: it checks first and only acts on what is missing. As root it
//! installs missing Debian packages (running `apt-get update` only then) and
//! `bpf-linker`; otherwise it prints the exact commands and fails, so a
//! fresh machine needs nothing but this repository and `cargo xtask ...`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// LLVM that Debian's rustc-web 1.96 uses; bpf-linker must link the same major.
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_FEATURE: &str = "llvm-22";

/// How the eBPF crate gets compiled for `bpfel-unknown-none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EbpfToolchain {
    /// Debian's `rustc-web` with the prebuilt `core` for bpfel
    /// (`libstd-rust-web-dev-bpf`): no `-Z build-std` needed.
    Debian,
    /// rustup nightly with `rust-src`: `-Z build-std=core`.
    Nightly,
}

/// Prebuilt `core` for the BPF target shipped by `libstd-rust-web-dev-bpf`.
const DEBIAN_BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

pub fn detect_toolchain() -> Option<EbpfToolchain> {
    let debian_core = std::fs::read_dir(DEBIAN_BPF_CORE_DIR)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
        .unwrap_or(false);
    if debian_core && Path::new("/usr/bin/rustc").exists() && Path::new("/usr/bin/cargo").exists() {
        return Some(EbpfToolchain::Debian);
    }
    if nightly_has_rust_src() {
        return Some(EbpfToolchain::Nightly);
    }
    None
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

/// Path of `bpf-linker`, looked up in `$CARGO_HOME/bin` (where `cargo
/// install` puts it) and then in `PATH`.
pub fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(home) = cargo_home() {
        dirs.push(home.join("bin"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

pub fn is_root() -> bool {
    // No libc dependency for one call: the effective uid is in /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

/// Debian packages the build and the tests need, as (package, why).
fn wanted_packages(toolchain: Option<&EbpfToolchain>) -> Vec<(&'static str, &'static str)> {
    let mut p = Vec::new();
    if toolchain != Some(&EbpfToolchain::Nightly) {
        p.push(("rustc-web", "compiles the eBPF crate (LLVM 22)"));
        p.push(("cargo-web", "cargo matching rustc-web"));
        p.push((
            "libstd-rust-web-dev-bpf",
            "prebuilt core for bpfel-unknown-none",
        ));
    }
    p.extend([
        ("llvm-22-dev", "bpf-linker links against LLVM 22"),
        (
            "libpolly-22-dev",
            "llvm-config of LLVM 22 lists Polly among its libraries (bpf-linker build)",
        ),
        (
            "zlib1g-dev",
            "LLVM's compression dependency (bpf-linker build)",
        ),
        (
            "libzstd-dev",
            "LLVM's compression dependency (bpf-linker build)",
        ),
        ("libxml2-dev", "LLVM system library (bpf-linker build)"),
        (
            "build-essential",
            "C toolchain and linker for cargo install",
        ),
        ("iproute2", "ip netns / veth for the privileged tests"),
        ("curl", "client in the end-to-end tests"),
        ("bpftool", "inspecting loaded programs in tests"),
        (
            "podman",
            "builds the agent image and runs it as the DaemonSet does (container test)",
        ),
        (
            "ca-certificates",
            "the CA bundle the image carries for https jwksUri",
        ),
        (
            "runc",
            "podman's runtime here: crun fails on hybrid cgroup layouts (xtask/podman/containers.conf)",
        ),
        // The real-node test (`cargo xtask node`): the kubelet's container
        // runtime, the pods' network and kube-proxy's Services.
        ("containerd", "the test node's container runtime (CRI)"),
        (
            "containernetworking-plugins",
            "bridge + host-local CNI plugins for the test node's pods",
        ),
        ("iptables", "kube-proxy (iptables mode) and the kubelet on the test node"),
    ]);
    // nginx serves JWKS in the end-to-end tests; nginx-light is enough.
    if !installed("nginx-light") && !Path::new("/usr/sbin/nginx").exists() {
        p.push(("nginx", "JWKS server in the end-to-end tests"));
    }
    p
}

fn bpf_linker_install_cmd() -> String {
    format!(
        "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --locked --no-default-features --features {BPF_LINKER_FEATURE}"
    )
}

pub fn run() -> Result<()> {
    let toolchain = detect_toolchain();
    let missing: Vec<(&str, &str)> = wanted_packages(toolchain.as_ref())
        .into_iter()
        .filter(|(p, _)| !installed(p))
        .collect();
    let root = is_root();

    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
        for (p, why) in &missing {
            eprintln!("setup: missing package {p} ({why})");
        }
        let install = format!(
            "apt-get install -y --no-install-recommends {}",
            names.join(" ")
        );
        if !root {
            bail!(
                "missing packages; run as root:\n    apt-get update\n    {install}\n  and then, for bpf-linker (as the user that builds):\n    {}",
                bpf_linker_install_cmd()
            );
        }
        eprintln!("setup: apt-get update");
        sh(Command::new("apt-get").arg("update"))?;
        eprintln!("setup: {install}");
        sh(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&names)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    if detect_toolchain().is_none() {
        bail!(
            "no toolchain can build for bpfel-unknown-none: install Debian's rustc-web, cargo-web and \
             libstd-rust-web-dev-bpf, or `rustup toolchain install nightly --component rust-src`"
        );
    }

    if find_bpf_linker().is_none() {
        // Installs into ~/.cargo/bin: no root needed, but a long build
        // (LLVM bindings), so only when missing.
        let cmd = bpf_linker_install_cmd();
        eprintln!("setup: bpf-linker missing, running: {cmd}  (takes a few minutes)");
        let cargo = if Command::new("cargo").arg("--version").output().is_ok() {
            "cargo"
        } else {
            "/usr/bin/cargo"
        };
        sh(Command::new(cargo)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(BPF_LINKER_FEATURE)
            .env("LLVM_PREFIX", LLVM_PREFIX))
        .with_context(|| format!("installing bpf-linker; to retry by hand: {cmd}"))?;
        if find_bpf_linker().is_none() {
            bail!("bpf-linker installed but not found in $CARGO_HOME/bin or PATH");
        }
    }
    eprintln!(
        "setup: ok (eBPF toolchain: {:?}, bpf-linker: {})",
        detect_toolchain().expect("checked above"),
        find_bpf_linker().expect("checked above").display()
    );
    Ok(())
}

/// Run a command with inherited stdio; error on non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed: {status}", cmd);
    }
    Ok(())
}
