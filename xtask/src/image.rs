//! `cargo xtask image`: the agent's container image, without Docker or a registry.
//!
//! A root filesystem holding only the release binary and the shared libraries
//! `ldd` lists for it is built into an image by `podman build --pull=never` with
//! `deploy/Dockerfile` (FROM scratch), tagged `jwtgate:<version>`, and saved as
//! a docker archive that `kind load image-archive` takes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::build::{self, BuildArgs};

pub const NAME: &str = "jwtgate";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the binary sits in the image (the Dockerfile's ENTRYPOINT).
pub const BIN_IN_IMAGE: &str = "usr/local/bin/jwtgate";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ImageArgs {
    /// Only stage the root filesystem (for `docker build -f deploy/Dockerfile`).
    #[arg(long)]
    pub rootfs_only: bool,
    /// Where to write the image archive (default target/image/jwtgate-<version>.tar).
    #[arg(long, value_name = "PATH")]
    pub archive: Option<PathBuf>,
}

/// The image as podman names a local, registry-less image.
pub fn reference() -> String {
    format!("localhost/{NAME}:{VERSION}")
}

/// The name the archive carries, so that after `kind load image-archive` the
/// DaemonSet's `image: jwtgate:<version>` (docker.io/library/…) is found.
pub fn kind_reference() -> String {
    format!("docker.io/library/{NAME}:{VERSION}")
}

/// `target/image`: the staged rootfs and the archive.
pub fn dir() -> PathBuf {
    build::target_dir().join("image")
}

/// podman with this project's settings (runc, explicit ulimits: see the file).
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env(
        "CONTAINERS_CONF",
        build::workspace_root().join("xtask/podman/containers.conf"),
    );
    cmd
}

pub fn podman_available() -> bool {
    podman()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs podman and returns its trimmed stdout; errors carry its stderr.
pub fn podman_out(args: &[&str]) -> Result<String> {
    let out = podman()
        .args(args)
        .output()
        .context("running podman (install it with `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "podman {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn run(args: &ImageArgs) -> Result<()> {
    let binary = build_release()?;
    let rootfs = stage_rootfs(&binary)?;
    if args.rootfs_only {
        println!("rootfs: {}", rootfs.display());
        return Ok(());
    }
    build_image(&rootfs)?;
    let archive = args
        .archive
        .clone()
        .unwrap_or_else(|| dir().join(format!("{NAME}-{VERSION}.tar")));
    save(&archive)?;
    println!("image:   {} ({})", reference(), human_size(image_size()?));
    println!("archive: {}", archive.display());
    Ok(())
}

/// Release agent with the eBPF object (setup and the BPF build included).
pub fn build_release() -> Result<PathBuf> {
    build::run(&BuildArgs { release: true })?;
    Ok(build::target_dir().join("release").join(NAME))
}

/// Stages `target/image/rootfs`: the stripped binary and its shared libraries
/// at the paths the dynamic loader looks for them, the CA bundle, an empty /tmp.
pub fn stage_rootfs(binary: &Path) -> Result<PathBuf> {
    let rootfs = dir().join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)?;
    }
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    let bin = rootfs.join(BIN_IN_IMAGE);
    std::fs::create_dir_all(bin.parent().expect("has a parent"))?;
    // Symbols only cost size here; panics still name their location.
    crate::setup::sh(Command::new("strip").arg("-o").arg(&bin).arg(binary))
        .context("stripping the agent binary")?;
    for lib in shared_libraries(binary)? {
        let dest = rootfs.join(lib.strip_prefix("/").expect("ldd paths are absolute"));
        std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
        // fs::copy follows symlinks: the image gets the file under the name
        // the loader asks for.
        std::fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    // Not a library, but what an https jwksUri is verified against (the agent
    // reads the system's CA bundle); taken from the build host's ca-certificates.
    let bundle = Path::new(CA_BUNDLE);
    if bundle.is_file() {
        let dest = rootfs.join(CA_BUNDLE.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
        std::fs::copy(bundle, &dest)?;
    } else {
        eprintln!("image: no {CA_BUNDLE} on this host: the image cannot verify https jwksUri");
    }
    Ok(rootfs)
}

/// Debian's CA bundle (package ca-certificates), where rustls looks for it.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Absolute paths of the libraries `ldd` resolves for `binary`, the dynamic
/// loader included; the vDSO has no file and is skipped.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed", binary.display());
    }
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd: {line}");
        }
        // `name => /path (0x…)` or, for the loader, `/path (0x…)`.
        let path = line.split(" => ").nth(1).unwrap_or(line);
        let path = path.split(" (").next().unwrap_or(path).trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// `podman build` of the staged rootfs with deploy/Dockerfile; the image it
/// replaces under the same tag is removed, so rebuilds leave nothing dangling.
pub fn build_image(rootfs: &Path) -> Result<()> {
    let reference = reference();
    let old = podman_out(&["image", "inspect", "--format", "{{.Id}}", &reference]).ok();
    let started = Instant::now();
    let dockerfile = build::workspace_root().join("deploy/Dockerfile");
    crate::setup::sh(
        podman()
            // --layers=false: no intermediate images left behind.
            .args([
                "build",
                "--pull=never",
                "--layers=false",
                "--quiet",
                "--timestamp=0",
            ])
            .arg(format!("--build-arg=VERSION={VERSION}"))
            .arg("--file")
            .arg(&dockerfile)
            .args(["--tag", &reference])
            .arg(rootfs),
    )
    .context("podman build")?;
    let new = podman_out(&["image", "inspect", "--format", "{{.Id}}", &reference])?;
    if let Some(old) = old.filter(|o| *o != new) {
        let _ = podman_out(&["rmi", &old]);
    }
    eprintln!("image: built {reference} ({:.1?})", started.elapsed());
    Ok(())
}

/// `podman save` as a docker archive (what `kind load image-archive` reads).
pub fn save(archive: &Path) -> Result<()> {
    if let Some(parent) = archive.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(archive);
    let archive_str = archive.to_str().context("archive path is not UTF-8")?;
    let name = kind_reference();
    podman_out(&["tag", &reference(), &name])?;
    let saved = podman_out(&[
        "save",
        "--quiet",
        "--format",
        "docker-archive",
        "--output",
        archive_str,
        &name,
    ]);
    // The extra name was only for the archive.
    let _ = podman_out(&["untag", &reference(), &name]);
    saved.map(|_| ())
}

/// The image's size in bytes as podman reports it (uncompressed layers).
pub fn image_size() -> Result<u64> {
    podman_out(&["image", "inspect", "--format", "{{.Size}}", &reference()])?
        .parse()
        .context("podman's image size")
}

pub fn human_size(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths_and_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }
}
