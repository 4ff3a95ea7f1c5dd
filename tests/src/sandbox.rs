//! A stand-in for a pod sandbox's processes: a `sleep` inside the pod's
//! network namespace, placed in a cgroup whose path carries the pod UID the
//! way the kubelet's cgroupfs driver names it (`…/pod<uid>/…`). That is how
//! the agent finds a Kubernetes pod's namespace (`netns::Finder::find_pod`),
//! so a KubeBed pod needs one, exactly like a real pod has its pause process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The process and its cgroup directories; removed on drop.
pub struct Sandbox {
    child: Child,
    /// Created directories, innermost first.
    dirs: Vec<PathBuf>,
}

impl Sandbox {
    /// `sleep` in network namespace `netns` (a path) and in cgroup
    /// `<hierarchy>/<group>/pod<uid>`.
    pub fn start(netns: &Path, group: &str, uid: &str) -> Result<Sandbox> {
        let root = cgroup_root()?;
        let outer = root.join(group);
        let inner = outer.join(format!("pod{uid}"));
        fs::create_dir_all(&inner).with_context(|| format!("creating {}", inner.display()))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the sandbox process (nsenter from util-linux)")?;
        let mut sandbox = Sandbox {
            child,
            dirs: vec![inner.clone(), outer],
        };
        fs::write(inner.join("cgroup.procs"), sandbox.child.id().to_string())
            .with_context(|| format!("moving the sandbox into {}", inner.display()))?;
        // nsenter execs sleep: the pid stays, and so does the cgroup.
        let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", sandbox.child.id()))?;
        if !cgroup.contains(&format!("pod{uid}")) {
            let _ = sandbox.child.kill();
            bail!("the sandbox process is not in pod{uid}'s cgroup: {cgroup}");
        }
        Ok(sandbox)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in &self.dirs {
            // Fails while another pod's directory is still inside: fine.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// A cgroup hierarchy to create groups in: the cgroup2 mount (unified or
/// hybrid), else the named systemd v1 hierarchy.
fn cgroup_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mut v1 = None;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        let mut fields = right.split(' ');
        let fstype = fields.next().unwrap_or_default();
        let options = fields.nth(1).unwrap_or_default();
        if fstype == "cgroup2" {
            return Ok(PathBuf::from(mount_point));
        }
        if fstype == "cgroup" && options.contains("name=systemd") {
            v1 = Some(PathBuf::from(mount_point));
        }
    }
    v1.context("no cgroup2 or name=systemd cgroup hierarchy is mounted")
}
