//! `cargo xtask test`: unit tests, then the privileged end-to-end tests.
//!
//! One debug build feeds everything: the eBPF object is built once and both
//! test runs get the same `JWTGATE_EBPF_OBJ` (so the agent's build script sees
//! no change and nothing rebuilds) and `JWTGATE_BIN` pointing at the agent
//! binary the e2e tests start.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use anyhow::{bail, Result};

use crate::build::{self, BuildArgs};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct TestArgs {
    /// Only run tests whose name contains this string (passed to both runs).
    pub filter: Option<String>,
    /// Extra arguments for the test harness, after `--`.
    #[arg(last = true)]
    pub harness_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    // build::run runs setup first.
    let object = build::run(&BuildArgs { release: false })?;
    let bin = build::target_dir().join("debug/jwtgate");
    // The Kubernetes-mode tests need a real API server and the manifest
    // validator, built once into ~/.cache/jwtgate (xtask/src/kube.rs).
    let mut kube_env = crate::kube::test_env(&crate::kube::ensure()?);
    // The real-node test (tests/tests/real_node.rs) needs the node's binaries,
    // the pods' and the agent's images (xtask/src/node.rs); as root only, like
    // every privileged test (without root it skips, or fails under CI).
    let real_node_selected = args
        .filter
        .as_deref()
        .is_none_or(|f| "real_node::daemonset_on_a_real_node_enforces_the_faq".contains(f));
    if crate::setup::is_root() && real_node_selected {
        let t = std::time::Instant::now();
        kube_env.extend(crate::node::test_env(&crate::node::ensure(true)?));
        eprintln!("test: real node prepared in {:.0?}", t.elapsed());
    }

    let mut failures: Vec<&str> = Vec::new();
    let mut totals = Totals::default();
    let suites: [(&str, &[&str], &[&str]); 2] = [
        (
            "unit and integration tests (workspace, without jwtgate-e2e)",
            &["--workspace", "--exclude", "jwtgate-e2e"],
            &[],
        ),
        (
            // Namespaces, bpffs and the agent process: one at a time.
            "privileged end-to-end tests (jwtgate-e2e)",
            &["-p", "jwtgate-e2e"],
            &["--test-threads=1"],
        ),
    ];
    for (name, cargo_args, harness) in suites {
        eprintln!("test: {name}");
        let mut cmd = build::host_cargo();
        cmd.arg("test")
            .args(cargo_args)
            .arg("--")
            .args(harness)
            .args(&args.harness_args)
            .args(args.filter.iter())
            .env("JWTGATE_EBPF_OBJ", &object)
            .env("JWTGATE_BIN", &bin)
            .envs(kube_env.iter().map(|(k, v)| (k, v)))
            .current_dir(build::workspace_root())
            .stdout(Stdio::piped());
        let ok = run_counting(&mut cmd, &mut totals).unwrap_or_else(|e| {
            eprintln!("test: cannot run cargo test: {e}");
            false
        });
        if !ok {
            failures.push(name);
        }
    }

    // The image, run as deploy/'s DaemonSet runs it; setup installs podman.
    let container = args
        .filter
        .as_deref()
        .is_none_or(|f| "container_test".contains(f))
        && crate::image::podman_available();
    if container {
        eprintln!("test: container test (cargo xtask container-test)");
        if crate::daemonset::load(&build::workspace_root()).is_err() {
            eprintln!("\n======== SKIP: container test: no DaemonSet in deploy/ yet ========\n");
            totals.ignored += 1;
        } else if let Err(e) = crate::container_test::run(&Default::default()) {
            eprintln!("test: container test failed: {e:#}");
            totals.failed += 1;
            failures.push("container test");
        } else {
            totals.passed += 1;
        }
    }

    eprintln!("\n==== xtask test summary ====");
    eprintln!(
        "unit/integration: {}",
        verdict(!failures.iter().any(|f| f.starts_with("unit")))
    );
    eprintln!(
        "end-to-end:       {}",
        verdict(!failures.iter().any(|f| f.starts_with("privileged")))
    );
    if container {
        eprintln!(
            "container:        {}",
            verdict(!failures.contains(&"container test"))
        );
    }
    // One plain closing line over both runs, so the total is read in one
    // place rather than summed by hand from cargo's per-binary lines.
    println!(
        "total: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !failures.is_empty() {
        bail!(
            "{} test suite(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "FAILED"
    }
}

/// Test counts summed over cargo's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Add the counts of one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Run `cargo test`, echoing its stdout while counting the results.
fn run_counting(cmd: &mut std::process::Command, totals: &mut Totals) -> std::io::Result<bool> {
    let mut child = cmd.spawn()?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            totals.add_line(&line);
        }
    }
    Ok(child.wait()?.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cargo_result_lines_and_ignores_the_rest() {
        let mut t = Totals::default();
        t.add_line("test result: ok. 42 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.05s");
        t.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 5 tests");
        assert_eq!(
            t,
            Totals {
                passed: 45,
                failed: 2,
                ignored: 1
            }
        );
    }
}
