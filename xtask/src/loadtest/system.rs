//! The machine under the load test: what it is (for the report), how busy it
//! was, and the two knobs the load test may turn on it — its own priority
//! (`--nice`) and the guest's idle polling (`--idle-poll-ns`).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// One line: CPU model, CPU count, kernel.
pub fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let hypervisor = if cpuinfo.contains(" hypervisor") {
        ", virtual machine"
    } else {
        ""
    };
    format!("{model}, {cpus} CPUs{hypervisor}, Linux {}", kernel.trim())
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Sets this process's nice value. Call before any thread or child exists:
/// threads and children inherit it, so wrk, nginx, the bare hop and the
/// agent all run at it.
pub fn renice(nice: i32) -> Result<()> {
    let out = Command::new("renice")
        .args([
            "-n",
            &nice.to_string(),
            "-p",
            &std::process::id().to_string(),
        ])
        .output()
        .context("running renice")?;
    if !out.status.success() {
        bail!("renice -n {nice}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The cpuidle-haltpoll driver's poll time: how long an idle vCPU spins
/// before it halts (and leaves the CPU to the host, so that the next wake-up
/// costs a VM exit and entry).
const HALT_POLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// Sets the guest's idle polling while it lives and puts the old value back
/// on drop. Only virtual machines with the cpuidle-haltpoll driver have it.
pub struct IdlePoll {
    old: String,
}

impl IdlePoll {
    pub fn set(ns: u64) -> Result<Self> {
        if !Path::new(HALT_POLL_NS).exists() {
            bail!("--idle-poll-ns needs the cpuidle-haltpoll driver ({HALT_POLL_NS} is missing): a KVM guest with cpuidle_haltpoll loaded");
        }
        let old = std::fs::read_to_string(HALT_POLL_NS)?.trim().to_owned();
        std::fs::write(HALT_POLL_NS, ns.to_string())
            .with_context(|| format!("writing {HALT_POLL_NS}"))?;
        eprintln!("loadtest: {HALT_POLL_NS} = {ns} for this run (was {old})");
        Ok(IdlePoll { old })
    }
}

impl Drop for IdlePoll {
    fn drop(&mut self) {
        match std::fs::write(HALT_POLL_NS, &self.old) {
            Ok(()) => eprintln!("loadtest: {HALT_POLL_NS} restored to {}", self.old),
            Err(e) => eprintln!(
                "loadtest: cannot restore {HALT_POLL_NS} to {}: {e}",
                self.old
            ),
        }
    }
}
