//! Child processes (agent, nginx): spawning them so the harness controls their end,
//! and stopping them with a bounded wait.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Puts the child in its own process group, so a Ctrl-C in the terminal reaches only
/// the harness, which then tears down in order; and asks the kernel to kill the child
/// if the spawning thread dies without cleaning up (SIGKILL of the test process).
pub fn detach_from_terminal(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns how the child ended.
pub fn stop_child(mut child: Child, what: &str, grace: Duration) -> Result<ExitStatus> {
    if let Some(st) = child.try_wait()? {
        return Ok(st);
    }
    let pid = Pid::from_raw(child.id() as i32);
    // ESRCH just means it is already gone.
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("jwtgate-e2e: {what} (pid {pid}) ignored SIGTERM for {grace:?}; sending SIGKILL");
    let _ = child.kill();
    child.wait().with_context(|| format!("waiting for {what}"))
}

/// The last `n` lines of a log file (or a note that it is missing).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].iter().map(|l| format!("{l}\n")).collect()
        }
        Err(e) => format!("({}: {e})\n", path.display()),
    }
}
