//! Test bed for jwtgate's privileged end-to-end tests and `cargo xtask demo`.
//!
//! One fixture, [`TestNode`], builds a node in network namespaces (pods with an echo
//! app, clients, nginx as JWKS server, the real agent) and tears it down in reverse
//! from `Drop`. Tests run as root with `--test-threads=1`: the agent's eBPF programs
//! are kernel-wide state.

pub mod agent;
pub mod apiserver;
pub mod app;
pub mod faq;
pub mod http;
pub mod interrupt;
pub mod jwks_server;
pub mod kube_bed;
pub mod netns;
pub mod node;
pub mod process;
pub mod topology;

use std::path::{Path, PathBuf};

pub use agent::{Agent, AgentFiles, AgentOptions, Workload};
pub use app::{EchoApp, SeenRequest};
pub use http::{Conn, Outcome, Request, Response};
pub use topology::{Client, PodHandle, PodSpec, TestNode};

/// A file under this crate's `testdata/` (independent of the working directory).
pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

/// CAP_BPF is 39, CAP_NET_ADMIN 12, CAP_SYS_ADMIN 21 (mounts, setns).
const NEEDED_CAPS: [(u32, &str); 3] = [
    (39, "CAP_BPF"),
    (12, "CAP_NET_ADMIN"),
    (21, "CAP_SYS_ADMIN"),
];

/// True when this process may build the test bed. Otherwise prints a loud SKIP and
/// returns false, so `cargo test` as a user stays green; with `CI` set it panics
/// instead, because a skipped privileged suite must never look like a pass there.
pub fn require_privileges() -> bool {
    let missing = missing_capabilities();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "SKIP: needs root/CAP_BPF (missing {}); run `sudo -E cargo test -p jwtgate-e2e -- --test-threads=1` or `cargo xtask test`",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set, so this is a failure)");
    }
    // Straight to the process's stderr: libtest captures eprintln! of passing tests,
    // and a skip has to be seen.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n======== {msg} ========\n");
    false
}

/// True when the effective uid is 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn missing_capabilities() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let mut missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if !is_root() {
        missing.insert(0, "root");
    }
    missing
}

/// Removes what a killed run left behind: `jg-*` network namespaces and bpffs mounts
/// in `jg-*` temp dirs. Returns what it removed.
pub fn cleanup_leftovers() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let tmp = std::env::temp_dir().canonicalize()?;
    for m in topology::mounts_under(&tmp) {
        let in_ours = m
            .strip_prefix(&tmp)
            .ok()
            .and_then(|r| r.components().next())
            .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with("jg-"));
        if in_ours {
            topology::unmount_all_under(&m)?;
            removed.push(format!("mount {}", m.display()));
        }
    }
    for name in netns::list().into_iter().filter(|n| n.starts_with("jg-")) {
        netns::remove_named(&Path::new(netns::NETNS_DIR).join(&name))?;
        removed.push(format!("netns {name}"));
    }
    Ok(removed)
}

/// First line of every privileged test returning `anyhow::Result<()>`: skips (or, in
/// CI, fails) without root/CAP_BPF.
#[macro_export]
macro_rules! privileged {
    () => {
        if !$crate::require_privileges() {
            return Ok(());
        }
    };
}
