//! Named network namespaces (`ip netns add`, bind-mounted under /var/run/netns)
//! and running code inside them from a thread.
//!
//! `setns(CLONE_NEWNET)` only switches the calling thread, and a socket keeps the
//! namespace it was created in for its whole life, so the harness creates sockets on
//! a short-lived thread inside the namespace and then uses them from anywhere.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::mount::{umount2, MntFlags};
use nix::sched::{setns, CloneFlags};

/// Where `ip netns` keeps its bind mounts; the agent is given these paths.
pub const NETNS_DIR: &str = "/var/run/netns";

/// A named network namespace owned by the test bed. Dropping it unmounts and removes it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    removed: bool,
}

impl NetNs {
    /// Creates `/var/run/netns/<name>` with `lo` up.
    pub fn create(name: &str) -> Result<Self> {
        // IFNAMSIZ does not limit netns names, but keep them readable in `ip netns list`.
        run_ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
            removed: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `ip -n <name> <args...>`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// `ip -n NAME ARGS`, returning what it prints.
    pub fn ip_output(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip_output(&full)
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in(&self.path(), f)
    }

    /// Unmounts and removes the namespace file. Idempotent; the namespace itself dies
    /// (with its interfaces) once no process, thread or socket holds it any more.
    pub fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        remove_named(&self.path())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("jwtgate-e2e: removing netns {}: {e:#}", self.name);
        }
    }
}

/// Runs `f` on a scoped thread inside the network namespace at `path`.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            enter(&file)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread inside {} panicked", path.display()))?
    })
}

/// Moves the calling thread into the network namespace `file`. Only call this on a
/// thread that is dedicated to that namespace.
pub fn enter(file: &File) -> Result<()> {
    setns(file, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")
}

/// `umount2(MNT_DETACH)` + unlink, as `ip netns del` does, but without forking.
pub fn remove_named(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => bail!("umount2({}): {e}", path.display()),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Names of the namespaces in /var/run/netns.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn run_ip(args: &[&str]) -> Result<()> {
    ip_output(args).map(|_| ())
}

/// `ip -n <name of the namespace at path> ARGS`, for namespaces the test
/// bed owns (pods, clients) and a test adjusts.
pub fn ip_in(path: &Path, args: &[&str]) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a named namespace", path.display()))?;
    let mut full = vec!["-n", name];
    full.extend_from_slice(args);
    ip_output(&full)
}

/// `ip ARGS`, failing with its stderr; returns its stdout.
pub(crate) fn ip_output(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
