//! `--perf`: where the proxies spend their CPU under load. Debian's
//! `linux-perf` samples the bare hop and then the agent while each serves
//! the (c)-shaped load, and the report lists the hottest symbols of each.
//!
//! The release binaries keep their symbols (the profile does not strip) but
//! have no frame pointers, so the call graph comes from DWARF unwinding
//! through `.eh_frame`, which every Rust binary carries.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::wrk::{self, WrkSpec};
use super::Scripts;

/// Samples `pid` with perf while `spec`'s load runs; writes `<name>.data`
/// and `<name>.txt` (the report) into `dir` and returns the report's top.
pub fn profile(
    dir: &Path,
    name: &str,
    pid: u32,
    spec: &WrkSpec,
    scripts: &Scripts,
) -> Result<String> {
    let data = dir.join(format!("{name}.data"));
    let secs = spec.duration.as_secs().max(1);
    // Start the load first, so perf samples steady state, not connection
    // set-up; it lasts for the sampling and then the syscall count.
    let load = wrk::spawn(
        &WrkSpec {
            duration: Duration::from_secs(2 * secs + 2),
            ..spec.clone()
        },
        scripts,
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let rec = Command::new("perf")
        .args(["record", "-F", "1999", "--call-graph", "dwarf,16384", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running perf record (Debian package linux-perf)")?;
    let syscalls = count_syscalls(pid, secs);
    let result = load.wait()?;
    if !rec.status.success() {
        bail!(
            "perf record failed: {}",
            String::from_utf8_lossy(&rec.stderr)
        );
    }
    // Per request: the calls counted over `secs` at the run's mean rate.
    let requests = (result.rps() * secs as f64).max(1.0);
    let syscalls = match syscalls {
        Ok(counts) => {
            let total: u64 = counts.iter().map(|(_, n)| n).sum();
            let each: String = counts
                .iter()
                .take(8)
                .map(|(call, n)| format!(" {call} {:.2}", *n as f64 / requests))
                .collect();
            format!(
                "  syscalls per request: {:.2} ({each})\n",
                total as f64 / requests
            )
        }
        Err(err) => format!("  syscalls per request: not counted ({err:#})\n"),
    };
    let report = |args: &[&str]| -> Result<String> {
        let out = Command::new("perf")
            .args(["report", "--stdio", "--no-header", "-i"])
            .arg(&data)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .context("running perf report")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // Self time per symbol, and the same per shared object (kernel, libc,
    // the binary).
    let flat = report(&[
        "--no-children",
        "-F",
        "overhead,dso,sym",
        "--percent-limit",
        "0.4",
        "-g",
        "none",
    ])?;
    let dsos = report(&["--no-children", "--sort", "dso", "-g", "none"])?;
    let inclusive = report(&[
        "--children",
        "--sort",
        "symbol",
        "--percent-limit",
        "1",
        "-g",
        "none",
    ])?;
    std::fs::write(
        dir.join(format!("{name}.txt")),
        format!("# self time by dso\n{dsos}\n# self time by symbol\n{flat}\n# inclusive (children) by symbol\n{inclusive}"),
    )?;
    let top = |text: &str, n: usize| -> String {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .take(n)
            // perf pads some layouts with empty "-" columns.
            .map(|l| format!("    {}\n", l.trim_end_matches([' ', '-'])))
            .collect()
    };
    // Inclusive time of the proxy's own functions and hyper's: the runtime
    // and syscall entry frames above them say nothing.
    let own: String = inclusive
        .lines()
        .filter(|l| {
            ["jwtgate", "hyper::", "http::"]
                .iter()
                .any(|k| l.contains(k))
        })
        .filter(|l| !l.contains("{{closure}}") || l.contains("jwtgate::"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(format!(
        "{name}: {:.0} req/s while sampled ({} at {} conns)\n{syscalls}  self time by object:\n{}  hottest symbols (self):\n{}  inclusive time (children, self) of the proxy's and hyper's functions:\n{}",
        result.rps(),
        spec.url,
        spec.conns,
        top(&dsos, 8),
        top(&flat, 30),
        top(&own, 30)
    ))
}

/// System calls `pid` makes in `secs`, by name, most frequent first (perf
/// stat on the `syscalls:sys_enter_*` tracepoints: counted in the kernel,
/// no sample per call).
fn count_syscalls(pid: u32, secs: u64) -> Result<Vec<(String, u64)>> {
    let out = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "syscalls:sys_enter_*", "-p"])
        .arg(pid.to_string())
        .args(["--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .output()
        .context("running perf stat")?;
    if !out.status.success() {
        bail!("perf stat failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // CSV lines on stderr: count,unit,event,...
    let mut counts: Vec<(String, u64)> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',');
            let count = fields.next()?.trim().parse::<u64>().ok()?;
            let event = fields.nth(1)?;
            let call = event.strip_prefix("syscalls:sys_enter_")?;
            (count > 0).then(|| (call.to_string(), count))
        })
        .collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    Ok(counts)
}
