//! `cargo xtask test`: unit tests, then the privileged end-to-end tests.
//!
//! One debug build feeds everything: the eBPF object is built once and both
//! test runs get the same `JWTGATE_EBPF_OBJ` (so the agent's build script sees
//! no change and nothing rebuilds) and `JWTGATE_BIN` pointing at the agent
//! binary the e2e tests start.
//!
//! Counting: libtest's `test result:` lines, corrected by the skip log the
//! tests write (`jwtgate_e2e::skip`): a test that could not run here is
//! counted as skipped, never as passed. Suites run outside cargo test count
//! as one test each and fail under CI when their tools are missing
//! (`Tally::outside_cargo`). docs/architecture.md, "Test accounting".

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

    let mut tally = Tally::default();
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
        // Where the tests record their skips (jwtgate_e2e::skip).
        let skip_log = build::target_dir().join(format!("xtask-skips-{}", std::process::id()));
        let _ = std::fs::remove_file(&skip_log);
        let mut cmd = build::host_cargo();
        cmd.arg("test")
            .args(cargo_args)
            .arg("--")
            .args(harness)
            .args(&args.harness_args)
            .args(args.filter.iter())
            .env("JWTGATE_EBPF_OBJ", &object)
            .env("JWTGATE_BIN", &bin)
            .env(jwtgate_e2e::SKIP_LOG_ENV, &skip_log)
            .envs(kube_env.iter().map(|(k, v)| (k, v)))
            .current_dir(build::workspace_root())
            .stdout(Stdio::piped());
        let mut run = CargoRun::default();
        let ok = run_counting(&mut cmd, &mut run).unwrap_or_else(|e| {
            eprintln!("test: cannot run cargo test: {e}");
            false
        });
        let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
        let _ = std::fs::remove_file(&skip_log);
        tally.cargo_suite(name, ok, run, &skips);
    }

    // The image, run as deploy/'s DaemonSet runs it; setup installs podman.
    if wanted(args, "container_test") {
        eprintln!("test: container test (cargo xtask container-test)");
        let missing = if !jwtgate_e2e::is_root() {
            Some("root (it loads eBPF programs and creates network namespaces)".to_owned())
        } else if !crate::image::podman_available() {
            Some("podman (`cargo xtask setup` installs it)".to_owned())
        } else if crate::daemonset::load(&build::workspace_root()).is_err() {
            Some("a DaemonSet in deploy/".to_owned())
        } else {
            None
        };
        tally.outside_cargo(CONTAINER, missing, || {
            crate::container_test::run(&Default::default())
        });
    }

    eprintln!("\n==== xtask test summary ====");
    eprintln!(
        "unit/integration: {}",
        verdict(!tally.failures.iter().any(|f| f.starts_with("unit")))
    );
    eprintln!(
        "end-to-end:       {}",
        verdict(!tally.failures.iter().any(|f| f.starts_with("privileged")))
    );
    if let Some(verdict) = tally.outside.get(CONTAINER) {
        eprintln!("container:        {verdict}");
    }
    for s in &tally.skipped {
        eprintln!("skipped: {s}");
    }
    // One plain closing line over every run, so the total is read in one
    // place rather than summed by hand from cargo's per-binary lines.
    println!("{}", tally.totals.line());
    if !tally.failures.is_empty() {
        bail!(
            "{} test suite(s) failed: {}",
            tally.failures.len(),
            tally.failures.join("; ")
        );
    }
    Ok(())
}

const CONTAINER: &str = "container test";

/// Whether the test filter (if any) selects a suite that xtask runs itself.
fn wanted(args: &TestArgs, name: &str) -> bool {
    args.filter.as_deref().is_none_or(|f| name.contains(f))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "FAILED"
    }
}

/// Everything counted over the whole command.
#[derive(Debug, Default)]
struct Tally {
    totals: Totals,
    /// Names of the suites that failed.
    failures: Vec<String>,
    /// `binary::test: reason` of each test that could not run.
    skipped: Vec<String>,
    /// Verdict of each suite run outside cargo test (`ok`, `FAILED`, `SKIPPED`).
    outside: std::collections::BTreeMap<&'static str, &'static str>,
}

impl Tally {
    /// Count one `cargo test` run. libtest reports a test that skipped (it
    /// returned early) as passed; each one the tests recorded in the skip log
    /// (`binary<TAB>test<TAB>reason` lines) is moved from passed to skipped —
    /// unless libtest saw it fail after all.
    fn cargo_suite(&mut self, name: &str, ok: bool, run: CargoRun, skip_log: &str) {
        let mut totals = run.totals;
        let mut seen = std::collections::BTreeSet::new();
        for line in skip_log.lines() {
            let mut fields = line.splitn(3, '\t');
            let (Some(binary), Some(test)) = (fields.next(), fields.next()) else {
                continue;
            };
            let reason = fields.next().unwrap_or("");
            if run.failed.contains(test) || !seen.insert((binary, test)) {
                continue;
            }
            totals.passed = totals.passed.saturating_sub(1);
            totals.skipped += 1;
            self.skipped.push(format!("{binary}::{test}: {reason}"));
        }
        self.totals.add(&totals);
        if !ok {
            self.failures.push(name.to_owned());
        }
    }

    /// Count a suite xtask runs itself (one test). `missing` names what this
    /// machine lacks to run it: under CI that is a failure — CI must never
    /// look green because a suite was left out —, elsewhere a loud skip,
    /// counted as one.
    fn outside_cargo(
        &mut self,
        name: &'static str,
        missing: Option<String>,
        run: impl FnOnce() -> Result<()>,
    ) {
        let verdict = match missing {
            Some(what) if jwtgate_e2e::under_ci() => {
                eprintln!(
                    "test: {name} cannot run, it needs {what} (CI is set, so this is a failure)"
                );
                "FAILED"
            }
            Some(what) => {
                eprintln!("\n======== SKIP: {name}: needs {what} ========\n");
                self.skipped.push(format!("{name}: needs {what}"));
                "SKIPPED"
            }
            None => match run() {
                Ok(()) => "ok",
                Err(e) => {
                    eprintln!("test: {name} failed: {e:#}");
                    "FAILED"
                }
            },
        };
        match verdict {
            "ok" => self.totals.passed += 1,
            "SKIPPED" => self.totals.skipped += 1,
            _ => {
                self.totals.failed += 1;
                self.failures.push(name.to_owned());
            }
        }
        self.outside.insert(name, verdict);
    }
}

/// Test counts. `skipped` holds libtest's ignored tests and the tests that
/// could not run here.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    skipped: u64,
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
                "ignored" => self.skipped += n,
                _ => {}
            }
        }
    }

    fn add(&mut self, other: &Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }

    fn line(&self) -> String {
        format!(
            "total: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// What one `cargo test` printed: the summed result lines, and the names
/// of the tests libtest listed as failed.
#[derive(Debug, Default)]
struct CargoRun {
    totals: Totals,
    failed: std::collections::BTreeSet<String>,
    in_failures: bool,
}

impl CargoRun {
    fn add_line(&mut self, line: &str) {
        self.totals.add_line(line);
        // libtest ends a failed binary's output with `failures:` and one
        // `    name` line per failed test (an earlier `failures:` block
        // holds their output and starts with a blank line).
        if line == "failures:" {
            self.in_failures = true;
        } else if self.in_failures {
            match line.strip_prefix("    ") {
                Some(name) if !name.is_empty() && !name.starts_with(' ') => {
                    self.failed.insert(name.to_owned());
                }
                _ => self.in_failures = false,
            }
        }
    }
}

/// Run `cargo test`, echoing its stdout while counting the results.
fn run_counting(cmd: &mut std::process::Command, run: &mut CargoRun) -> std::io::Result<bool> {
    let mut child = cmd.spawn()?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            run.add_line(&line);
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
                skipped: 1
            }
        );
    }

    /// What libtest prints for a binary where `b` failed and `a`, `c`
    /// returned early after recording a skip.
    const OUTPUT: &str = "running 3 tests
test a ... ok
test b ... FAILED
test c ... ok

failures:

---- b stdout ----
SKIP-looking text inside captured output does not count

failures:
    b

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s
";

    #[test]
    fn recorded_skips_move_from_passed_to_skipped() {
        let mut run = CargoRun::default();
        for line in OUTPUT.lines() {
            run.add_line(line);
        }
        assert_eq!(run.failed.iter().collect::<Vec<_>>(), ["b"]);
        let mut tally = Tally::default();
        // `a` recorded twice (one skip per helper it called), `b` recorded
        // and then failed anyway: neither may be counted twice.
        let log = "kube_mode\ta\tneeds root\nkube_mode\ta\tneeds root\nkube_mode\tb\tx\nkube_mode\tc\tno apiserver\n";
        tally.cargo_suite("privileged end-to-end tests", false, run, log);
        assert_eq!(
            tally.totals,
            Totals {
                passed: 0,
                failed: 1,
                skipped: 2
            }
        );
        assert_eq!(
            tally.skipped,
            ["kube_mode::a: needs root", "kube_mode::c: no apiserver"]
        );
        assert_eq!(tally.totals.line(), "total: 0 passed, 1 failed, 2 skipped");
    }

    #[test]
    fn a_suite_run_outside_cargo_is_skipped_or_failed_when_its_tools_are_missing() {
        let mut tally = Tally::default();
        tally.outside_cargo("ran", None, || Ok(()));
        tally.outside_cargo("broke", None, || bail!("no"));
        let ci = jwtgate_e2e::under_ci();
        tally.outside_cargo("absent", Some("podman".into()), || {
            panic!("must not run without its tools")
        });
        assert_eq!(tally.outside["ran"], "ok");
        assert_eq!(tally.outside["broke"], "FAILED");
        assert_eq!(
            tally.outside["absent"],
            if ci { "FAILED" } else { "SKIPPED" }
        );
        assert_eq!(
            tally.totals,
            Totals {
                passed: 1,
                failed: if ci { 2 } else { 1 },
                skipped: if ci { 0 } else { 1 }
            }
        );
    }
}
