//! The first `jwtgate agent` on a bare host: no bpffs mounted at
//! `/sys/fs/bpf` (hosts without systemd, minimal VMs), and start-up
//! failures that say which capability is missing.
//!
//! The bare host is a private mount namespace (`unshare --mount`, private
//! propagation) in which `/sys/fs/bpf` is unmounted if this machine has it
//! mounted: the agent's own mount stays inside that namespace and vanishes
//! with it, so no other test or engineer on the machine sees it.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jwtgate_e2e::agent::{agent_args, binary, AgentOptions};
use jwtgate_e2e::faq::{demo_jwt, FaqBed};
use jwtgate_e2e::privileged;

/// `statfs.f_type` of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    // The field is `i64` on x86_64 and narrower elsewhere; widen to compare.
    #[allow(clippy::unnecessary_cast)]
    nix::sys::statfs::statfs(path)
        .map(|st| st.filesystem_type().0 as i64 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// `args` with the value after `--pin-root` replaced.
fn with_pin_root(mut args: Vec<OsString>, pin_root: &str) -> Vec<OsString> {
    if let Some(i) = args.iter().position(|a| a == "--pin-root") {
        args[i + 1] = pin_root.into();
    }
    args
}

#[test]
fn bare_host_without_a_bpffs_gets_one_mounted_at_sys_fs_bpf() -> Result<()> {
    privileged!();
    let host_had_bpffs = is_bpffs(Path::new("/sys/fs/bpf"));
    let mut bed = FaqBed::build("bare-host")?;
    let bin = binary()?;
    bed.node.start_agent_with(|files, metrics| {
        let args = with_pin_root(
            agent_args(files, metrics, &AgentOptions::default()),
            "/sys/fs/bpf/jwtgate",
        );
        // `unshare` execs (no fork for a mount namespace), and so does the
        // shell: SIGTERM from the test bed reaches the agent itself.
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("umount -R -l /sys/fs/bpf 2>/dev/null; exec \"$@\"")
            .arg("sh")
            .arg(&bin)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        Ok(cmd)
    })?;

    let log = bed.node.agent_log();
    assert!(
        log.contains("mounted one for the pins") && log.contains("/sys/fs/bpf"),
        "the agent did not say it mounted a bpffs at /sys/fs/bpf:\n{log}"
    );
    // Enforcing: the FAQ policy denies without a token and lets the demo
    // token through.
    let denied = bed
        .client
        .get(bed.pod.mesh_addr(), "/api/v1/products/0", None)?;
    assert_eq!(denied.status, 403, "{}\n{log}", denied.text());
    let allowed = bed
        .client
        .get(bed.pod.mesh_addr(), "/headers", Some(&demo_jwt()))?;
    assert_eq!(allowed.status, 200, "{}\n{log}", allowed.text());
    // The mount stayed in the agent's namespace.
    assert_eq!(
        is_bpffs(Path::new("/sys/fs/bpf")),
        host_had_bpffs,
        "the agent's bpffs leaked into the host's mount namespace"
    );
    Ok(())
}

#[test]
fn agent_without_its_capabilities_names_each_missing_one() -> Result<()> {
    privileged!();
    let dir = tempfile::tempdir()?;
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies)?;
    let workloads = dir.path().join("workloads.yaml");
    std::fs::write(&workloads, "workloads: []\n")?;
    // Dropped from the bounding set, the capabilities are gone from the
    // exec'd agent even though it runs as root.
    let mut child = Command::new("setpriv")
        .args(["--bounding-set", "-bpf,-sys_admin,-net_admin", "--"])
        .arg(binary()?)
        .arg("agent")
        .arg("--policies")
        .arg(&policies)
        .arg("--workloads")
        .arg(&workloads)
        .arg("--pin-root")
        .arg(dir.path().join("bpffs"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the agent under setpriv")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the agent kept running without CAP_BPF");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    assert!(!status.success(), "{stderr}");
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"] {
        assert!(stderr.contains(cap), "{cap} not named:\n{stderr}");
    }
    assert!(
        !dir.path().join("bpffs").exists() || !is_bpffs(&dir.path().join("bpffs")),
        "nothing is mounted before the checks pass"
    );
    Ok(())
}
