//! `cargo xtask test`: unit tests, then the privileged end-to-end tests.
//!
//! One debug build feeds everything: the eBPF object is built once and both
//! test runs get the same `JWTGATE_EBPF_OBJ` (so the agent's build script sees
//! no change and nothing rebuilds) and `JWTGATE_BIN` pointing at the agent
//! binary the e2e tests start.

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

    let mut failures: Vec<&str> = Vec::new();
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
            .current_dir(build::workspace_root());
        let ok = cmd.status().map(|s| s.success()).unwrap_or_else(|e| {
            eprintln!("test: cannot start cargo: {e}");
            false
        });
        if !ok {
            failures.push(name);
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
