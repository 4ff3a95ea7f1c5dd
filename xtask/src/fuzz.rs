//! `cargo xtask fuzz [--minutes N] [TARGET]`: the libFuzzer targets of
//! `agent/fuzz` (docs/fuzzing.md), one after the other, each for N minutes.
//! Not part of `cargo xtask test`: fuzzing is open-ended and long.
//!
//! Installs what it needs when missing (idempotent, like `setup`): rustup's
//! nightly toolchain (libFuzzer's instrumentation and the sanitizers are
//! nightly-only) and `cargo-fuzz` from crates.io.
//!
//! Where things go, all under `agent/fuzz/`:
//! - `seeds/<target>/`: small hand-picked inputs, committed; the Istio
//!   sample tokens and key sets (`agent/testdata/istio-samples`) and the
//!   example policies (`deploy/examples`) are read as seeds too;
//! - `corpus/<target>/`: what libFuzzer grows, kept between runs (ignored
//!   by git);
//! - `artifacts/<target>/`: crashing, leaking or slow inputs (cargo-fuzz's
//!   place for them; ignored by git);
//!   `cargo +nightly fuzz run --fuzz-dir agent/fuzz <target> <file>` replays one;
//! - `logs/<target>.log`: libFuzzer's whole output of the last run.
//!
//! Exits non-zero when any target found a crash; the others still run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::build;
use crate::setup::sh;

#[derive(clap::Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Minutes per target (fractions allowed: `--minutes 0.5`).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Only this target (default: every target, in turn).
    pub target: Option<String>,
}

/// Seeds that live elsewhere in the tree, per target (read, never written).
fn shared_seeds(target: &str) -> &'static [&'static str] {
    match target {
        "token_verify" | "jwks_parse" => &["agent/testdata/istio-samples"],
        "policy_parse" => &["deploy/examples"],
        _ => &[],
    }
}

/// Per-input time limit: a slower input is reported as a crash (a request
/// or a policy that pins a core is a denial of service).
const TIMEOUT_SECS: u32 = 10;

pub fn run(args: &FuzzArgs) -> Result<()> {
    if args.minutes.is_nan() || args.minutes <= 0.0 {
        bail!("--minutes must be positive");
    }
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let root = build::workspace_root();
    let fuzz_dir = root.join("agent/fuzz");

    let all = list_targets(&root)?;
    let targets: Vec<String> = match &args.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target {t:?}; targets: {}", all.join(", ")),
        None => all,
    };

    eprintln!("fuzz: building {} target(s) (nightly, ASan)", targets.len());
    let mut cmd = fuzz_cmd(&root);
    cmd.args(["build", "--fuzz-dir"]).arg(&fuzz_dir);
    if let [one] = &targets[..] {
        cmd.arg(one);
    }
    sh(&mut cmd).context("building the fuzz targets")?;

    let seconds = (args.minutes * 60.0).round().max(1.0) as u64;
    let mut results = Vec::new();
    for t in &targets {
        results.push(run_target(&root, &fuzz_dir, t, seconds)?);
    }

    eprintln!("\nfuzz: {seconds} s per target; corpus in agent/fuzz/corpus/, crashes in agent/fuzz/artifacts/, logs in agent/fuzz/logs/");
    eprintln!(
        "{:<16} {:>6} {:>12} {:>8} {:>8} {:>7} {:>7}  crash",
        "target", "secs", "execs", "cov", "ft", "corpus", "rss MB"
    );
    for r in &results {
        eprintln!(
            "{:<16} {:>6} {:>12} {:>8} {:>8} {:>7} {:>7}  {}",
            r.target,
            r.seconds,
            r.stat("number_of_executed_units"),
            r.cov.as_deref().unwrap_or("?"),
            r.ft.as_deref().unwrap_or("?"),
            r.corpus.as_deref().unwrap_or("?"),
            r.stat("peak_rss_mb"),
            r.crash.as_deref().unwrap_or("-"),
        );
    }
    record_runs(&fuzz_dir, &results)?;
    let crashed: Vec<&str> = results
        .iter()
        .filter(|r| r.crash.is_some())
        .map(|r| r.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "crash in {} (inputs in agent/fuzz/artifacts/, output in agent/fuzz/logs/)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// Appends one line per run to `logs/runs.tsv`, so the hours each target
/// has run add up across runs and sessions (the per-target logs are
/// overwritten by the next run). Several `cargo xtask fuzz TARGET` may run
/// at once: each line is one append.
fn record_runs(fuzz_dir: &Path, results: &[Outcome]) -> Result<()> {
    let path = fuzz_dir.join("logs").join("runs.tsv");
    let new = !path.exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let when = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut text = String::new();
    if new {
        text.push_str("finished\ttarget\tseconds\texecs\tcov\tft\tcrash\n");
    }
    for r in results {
        text.push_str(&format!(
            "{when}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.target,
            r.seconds,
            r.stat("number_of_executed_units"),
            r.cov.as_deref().unwrap_or("?"),
            r.ft.as_deref().unwrap_or("?"),
            r.crash.as_deref().unwrap_or("-"),
        ));
    }
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// What one run reported (libFuzzer's last status line and final stats).
struct Outcome {
    target: String,
    seconds: u64,
    cov: Option<String>,
    ft: Option<String>,
    corpus: Option<String>,
    stats: Vec<(String, String)>,
    crash: Option<String>,
}

impl Outcome {
    fn stat(&self, name: &str) -> &str {
        self.stats
            .iter()
            .find(|(k, _)| k == name)
            .map_or("?", |(_, v)| v.as_str())
    }
}

fn run_target(root: &Path, fuzz_dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = fuzz_dir.join("corpus").join(target);
    let seeds = fuzz_dir.join("seeds").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let logs = fuzz_dir.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;

    let mut cmd = fuzz_cmd(root);
    cmd.args(["run", "--fuzz-dir"])
        .arg(fuzz_dir)
        .arg(target)
        // libFuzzer adds new inputs to the first directory only.
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    for s in shared_seeds(target) {
        cmd.arg(root.join(s));
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());

    eprintln!(
        "\nfuzz: {target} for {seconds} s (log: {})",
        log_path.display()
    );
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting cargo fuzz run")?;
    let stderr = child.stderr.take().expect("piped");
    let mut out = Outcome {
        target: target.to_owned(),
        seconds: 0,
        cov: None,
        ft: None,
        corpus: None,
        stats: Vec::new(),
        crash: None,
    };
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        writeln!(log, "{line}")?;
        // Status lines: `#12345\tNEW    cov: 812 ft: 2406 corp: 91/3114b ...`.
        if line.starts_with('#') {
            for (key, slot) in [
                ("cov: ", &mut out.cov),
                ("ft: ", &mut out.ft),
                ("corp: ", &mut out.corpus),
            ] {
                if let Some(v) = field(&line, key) {
                    *slot = Some(v.to_owned());
                }
            }
            // Only the periodic and final lines reach the terminal.
            if !(line.contains("pulse") || line.contains("DONE") || line.contains("INITED")) {
                continue;
            }
        }
        // libFuzzer's suggested dictionary and new-function notes: in the
        // log only.
        if line.starts_with('"') || line.starts_with("######") || line.starts_with("\tNEW_") {
            continue;
        }
        if let Some(stat) = line.strip_prefix("stat::") {
            if let Some((k, v)) = stat.split_once(':') {
                out.stats.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        // `Done 131475 runs in 31 second(s)`: the time libFuzzer ran.
        if let Some(rest) = line.strip_prefix("Done ") {
            if let Some(secs) = field(rest, "runs in ") {
                out.seconds = secs.parse().unwrap_or(0);
            }
        }
        if line.contains("Test unit written to") {
            out.crash = Some(line.rsplit(' ').next().unwrap_or("").to_owned());
        }
        eprintln!("{line}");
    }
    let status = child.wait()?;
    if out.seconds == 0 {
        // Stopped before libFuzzer's summary (a crash): wall time, build included.
        out.seconds = started.elapsed().as_secs();
    }
    if !status.success() && out.crash.is_none() {
        out.crash = Some(format!("exit {status} (see {})", log_path.display()));
    }
    Ok(out)
}

/// The value after `key` up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()
}

/// `cargo +nightly fuzz …` with rustup's cargo.
fn fuzz_cmd(root: &Path) -> Command {
    let mut cmd = Command::new(rustup_cargo());
    cmd.args(["+nightly", "fuzz"]).current_dir(root);
    // The toolchain is chosen by `+nightly`; a RUSTUP_TOOLCHAIN inherited
    // from the outer `cargo xtask` would override it.
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// rustup's `cargo` proxy (which understands `+toolchain`), not the
/// toolchain binary `$CARGO` points at.
fn rustup_cargo() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    home.map(|h| h.join("bin/cargo"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("cargo"))
}

fn ensure_nightly() -> Result<()> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup is needed for the nightly toolchain")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        return Ok(());
    }
    eprintln!("fuzz: installing the nightly toolchain");
    sh(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new(rustup_cargo())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("fuzz: cargo-fuzz missing, running: cargo install cargo-fuzz --locked");
    sh(Command::new(rustup_cargo()).args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz; to retry by hand: cargo install cargo-fuzz --locked")
}

fn list_targets(root: &Path) -> Result<Vec<String>> {
    let out = fuzz_cmd(root)
        .args(["list", "--fuzz-dir", "agent/fuzz"])
        .output()
        .context("cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}
