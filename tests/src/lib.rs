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
pub mod raw_app;
pub mod raw_client;
pub mod sandbox;
pub mod tcp_app;
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

/// True when this process may build the test bed. Otherwise the test is skipped
/// ([`skip`]): a failure under CI, counted as skipped by `cargo xtask test`.
pub fn require_privileges() -> bool {
    let missing = missing_capabilities();
    if missing.is_empty() {
        return true;
    }
    skip(&format!(
        "needs root/CAP_BPF (missing {}); run `sudo -E cargo test -p jwtgate-e2e -- --test-threads=1` or `cargo xtask test`",
        missing.join(", ")
    ));
    false
}

/// True when `CI` is set to anything but empty, `0` or `false` (`.ci/run`
/// exports `CI=true`): then a test that cannot run must fail, never pass.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}

/// The file where skipped tests are recorded, one line each, set by
/// `cargo xtask test` (see [`skip`]).
pub const SKIP_LOG_ENV: &str = "JWTGATE_SKIP_LOG";

/// A test that cannot run on this machine calls this and then returns at once
/// (the [`privileged!`] macro and the `require_*` helpers do both).
///
/// Under CI it panics, so the test fails. Otherwise it prints a loud SKIP and
/// appends `binary<TAB>test<TAB>reason` to `$JWTGATE_SKIP_LOG`: libtest itself
/// cannot report a skip — a test that returns early is "ok" to it —, so this
/// file is how `cargo xtask test` moves the test from passed to skipped. A
/// file rather than a line in the test's output: libtest captures test output
/// (and shows it only for failures), and threads would interleave it.
pub fn skip(reason: &str) {
    let msg = format!("SKIP: {reason}");
    if under_ci() {
        panic!("{msg} (CI is set, so this is a failure)");
    }
    // Straight to the process's stderr: libtest captures eprintln! of passing
    // tests, and a skip has to be seen.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n======== {msg} ========\n");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        if let Err(e) = record_skip(Path::new(&log), reason) {
            panic!(
                "cannot record the skip in {}: {e}",
                Path::new(&log).display()
            );
        }
    }
}

/// Append this test's skip line to `log`: one short `O_APPEND` write, so
/// lines stay whole even when parallel tests skip at once.
fn record_skip(log: &Path, reason: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let line = format!(
        "{}\t{}\t{}\n",
        test_binary(),
        test_name(),
        reason.replace(['\t', '\n'], " ")
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?
        .write_all(line.as_bytes())
}

/// The test binary's name without cargo's hash (`kube_mode`).
fn test_binary() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_owned()
        }
        _ => stem,
    }
}

/// libtest runs each test on a thread named after it.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned()
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
            .is_some_and(|c| left_behind(&c.as_os_str().to_string_lossy()));
        if in_ours {
            topology::unmount_all_under(&m)?;
            removed.push(format!("mount {}", m.display()));
        }
    }
    for name in netns::list().into_iter().filter(|n| left_behind(n)) {
        netns::remove_named(&Path::new(netns::NETNS_DIR).join(&name))?;
        removed.push(format!("netns {name}"));
    }
    Ok(removed)
}

/// A `jg-…` name made by a test process that is gone. Names carry their
/// maker's pid (`jg-<tag>-<pid>-<n>`); one whose pid still runs belongs to a
/// test running now (another `cargo test` on this machine) and is kept.
fn left_behind(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("jg-") else {
        return false;
    };
    let rest = rest.split('.').next().unwrap_or(rest);
    !rest
        .split('-')
        .filter_map(|part| part.parse::<u32>().ok())
        .any(|pid| pid > 1 && Path::new(&format!("/proc/{pid}")).exists())
}

/// First line of every privileged test returning `anyhow::Result<()>`: skips (or, in
/// CI, fails) without root/CAP_BPF; a skip is recorded for `cargo xtask test`'s count.
#[macro_export]
macro_rules! privileged {
    () => {
        if !$crate::require_privileges() {
            return Ok(());
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `cargo xtask test` reads back: the binary without its hash and
    /// the test's own name, which libtest gives the thread running it.
    #[test]
    fn a_skip_is_recorded_with_its_binary_and_test() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        record_skip(&log, "no\ttabs\nor newlines").unwrap();
        record_skip(&log, "again").unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "jwtgate_e2e\ttests::a_skip_is_recorded_with_its_binary_and_test\tno tabs or newlines\n\
             jwtgate_e2e\ttests::a_skip_is_recorded_with_its_binary_and_test\tagain\n"
        );
    }
}
