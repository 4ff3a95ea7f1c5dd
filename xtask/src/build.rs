//! `cargo xtask build`: the eBPF object, then the agent that embeds it.
//!
//! The eBPF crate is compiled outside the host workspace with a toolchain
//! that can target `bpfel-unknown-none` (see `setup::detect_toolchain`), and
//! handed to the agent's `build.rs` through `JWTGATE_EBPF_OBJ`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::setup::{self, EbpfToolchain};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BuildArgs {
    /// Build the agent with the release profile (the eBPF object is always
    /// optimised: the kernel verifier needs optimised code).
    #[arg(long)]
    pub release: bool,
}

/// Workspace root (xtask lives in `<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory for the host workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The cargo that runs xtask (rustup's, usually), for host builds.
pub fn host_cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn run(args: &BuildArgs) -> Result<PathBuf> {
    setup::run()?;
    let object = build_ebpf()?;
    build_agent(args.release, &object)?;
    Ok(object)
}

/// Build `ebpf/` and return the object path
/// (`target/bpf/bpfel-unknown-none/release/jwtgate`). The path is cargo's
/// own output, not a copy, so an unchanged object keeps its mtime and the
/// agent is not rebuilt needlessly.
pub fn build_ebpf() -> Result<PathBuf> {
    let toolchain =
        setup::detect_toolchain().context("no eBPF toolchain; run `cargo xtask setup`")?;
    let linker = setup::find_bpf_linker().context("bpf-linker missing; run `cargo xtask setup`")?;
    let root = workspace_root();
    let bpf_target = target_dir().join("bpf");
    // A directory holding only bpf-linker, so PATH can carry it without the
    // rest of ~/.cargo/bin (whose rustup `rustc` cannot target BPF here).
    let bin = bpf_target.join("bin");
    std::fs::create_dir_all(&bin)?;
    let link = bin.join("bpf-linker");
    if std::fs::read_link(&link).ok().as_deref() != Some(linker.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&linker, &link)
            .with_context(|| format!("linking {} into {}", linker.display(), bin.display()))?;
    }

    let mut cmd;
    match toolchain {
        EbpfToolchain::Debian => {
            cmd = Command::new("/usr/bin/cargo");
            cmd.args(["build", "--release", "--target", "bpfel-unknown-none"])
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .env("RUSTC", "/usr/bin/rustc")
                // aya-ebpf uses #![feature(asm_experimental_arch)]; scoping
                // the bootstrap to that crate keeps everything else stable.
                .env("RUSTC_BOOTSTRAP", "aya_ebpf");
        }
        EbpfToolchain::Nightly => {
            cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo", "build", "--release"])
                .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                .env("PATH", prepend_path(&bin))
                .env_remove("RUSTC")
                .env_remove("RUSTC_BOOTSTRAP");
        }
    }
    // Whatever the host build was configured with must not leak into the
    // BPF build (wrappers, host rustflags, rustup's pinned toolchain).
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_MANIFEST_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_TARGET_DIR", &bpf_target)
        .current_dir(root.join("ebpf"));

    eprintln!("build: eBPF object with the {toolchain:?} toolchain");
    let started = Instant::now();
    setup::sh(&mut cmd).context("building the eBPF object")?;
    let object = bpf_target.join("bpfel-unknown-none/release/jwtgate");
    anyhow::ensure!(
        object.is_file(),
        "expected eBPF object at {}",
        object.display()
    );
    eprintln!("build: {} ({:.1?})", object.display(), started.elapsed());
    Ok(object)
}

fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).expect("PATH entries contain no ':'")
}

fn build_agent(release: bool, object: &Path) -> Result<()> {
    let mut cmd = host_cargo();
    cmd.args(["build", "-p", "jwtgate"])
        .env("JWTGATE_EBPF_OBJ", object)
        .current_dir(workspace_root());
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "build: agent ({})",
        if release { "release" } else { "debug" }
    );
    let started = Instant::now();
    setup::sh(&mut cmd).context("building the agent")?;
    eprintln!("build: agent done ({:.1?})", started.elapsed());
    Ok(())
}
