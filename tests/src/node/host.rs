//! What a test node creates on the host outside its own directory, each piece
//! made so that exactly it can be removed again:
//!
//! - [`MountNs`]: a private mount namespace held by one `sleep` process. The
//!   node's daemons join it, so `/run`, `/var/lib`, `/var/log`, the bpffs at
//!   `/sys/fs/bpf` and the kubelet's sysctls are theirs alone and vanish with
//!   the last process in it.
//! - [`Cgroups`]: `/<name>` in every cgroup hierarchy (the kubelet's
//!   `cgroupRoot`); the daemons join `<name>/node` in the pids hierarchy, so
//!   one tree holds every process of the node (daemons, shims, containers).
//! - [`Sysctls`]: the kernel-wide settings the kubelet rewrites on start,
//!   recorded before and restored after.
//!
//! The network namespace is [`crate::netns::NetNs`].

use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Set by the kubelet's container manager at start (`setupKernelTunables`,
/// pkg/kubelet/cm of 1.20) whenever they differ from what it wants. They are
/// kernel-wide, not per namespace: `kernel/panic_on_oops=1` together with this
/// VM's `kernel/panic=1` would reboot the machine on any oops.
pub const KUBELET_SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

const SYSCTL_ROOT: &str = "/proc/sys";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A private mount namespace, kept alive by a `sleep` that was unshared into
/// it, and entered by the node's daemons at spawn (`setns`).
pub struct MountNs {
    holder: Option<Child>,
    file: Option<File>,
}

impl MountNs {
    /// Unshares a new mount namespace whose mounts no longer propagate to or
    /// from the host's.
    pub fn create() -> Result<MountNs> {
        let mut cmd = Command::new("sleep");
        cmd.arg("infinity").stdin(Stdio::null());
        crate::process::detach_from_terminal(&mut cmd);
        // SAFETY: only raw syscalls with static C strings after fork.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let holder = cmd.spawn().context("starting the mount namespace holder")?;
        let path = format!("/proc/{}/ns/mnt", holder.id());
        let mut ns = MountNs {
            holder: Some(holder),
            file: None,
        };
        ns.file = Some(File::open(&path).with_context(|| format!("opening {path}"))?);
        Ok(ns)
    }

    /// The namespace, for `setns` in spawned children.
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("open while the MountNs lives")
    }

    /// Runs `f` on a thread that has joined the namespace (its own fs context
    /// first: `setns` into a mount namespace refuses a shared one).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let file = self.file();
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                unshare(CloneFlags::CLONE_FS).context("unshare(CLONE_FS)")?;
                setns(file, CloneFlags::CLONE_NEWNS).context("setns(CLONE_NEWNS)")?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in the node's mount namespace panicked"))?
        })
    }

    /// Gives the node its own `/run`, `/var/lib`, `/var/log` (the kubelet and
    /// containerd hard-code paths there), a bpffs at `/sys/fs/bpf` (the
    /// DaemonSet's pin root), and regular files over the kubelet's sysctls, so
    /// its writes never reach the kernel. Then makes every mount shared inside
    /// the namespace, which `mountPropagation: HostToContainer` needs.
    pub fn prepare(&self, sysctl_dir: &Path) -> Result<()> {
        fs::create_dir_all(sysctl_dir)?;
        let masks: Vec<(PathBuf, PathBuf)> = KUBELET_SYSCTLS
            .iter()
            .map(|s| -> Result<(PathBuf, PathBuf)> {
                let real = Path::new(SYSCTL_ROOT).join(s);
                let copy = sysctl_dir.join(s.replace('/', "."));
                fs::copy(&real, &copy).with_context(|| format!("copying {}", real.display()))?;
                Ok((copy, real))
            })
            .collect::<Result<_>>()?;
        self.run(move || {
            for dir in ["/run", "/var/lib", "/var/log"] {
                mount(
                    Some("tmpfs"),
                    dir,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=755"),
                )
                .with_context(|| format!("mounting a tmpfs on {dir}"))?;
            }
            mount(
                Some("bpf"),
                "/sys/fs/bpf",
                Some("bpf"),
                MsFlags::empty(),
                None::<&str>,
            )
            .context("mounting a bpffs on /sys/fs/bpf")?;
            for (copy, real) in &masks {
                mount(
                    Some(copy.as_path()),
                    real.as_path(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .with_context(|| format!("masking {}", real.display()))?;
            }
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_SHARED,
                None::<&str>,
            )
            .context("making / rshared inside the node")?;
            Ok(())
        })
    }

    /// Stops the holder; the namespace goes once no process is left in it.
    pub fn release(&mut self) {
        self.file = None;
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        self.release();
    }
}

/// `/<name>` in every cgroup hierarchy of the host.
pub struct Cgroups {
    name: String,
    removed: bool,
}

impl Cgroups {
    /// Creates `/<name>` in every v1 hierarchy (cpuset initialised from its
    /// parent, or nothing could run in it) and `<name>/node` in pids.
    pub fn create(name: &str) -> Result<Cgroups> {
        let cg = Cgroups {
            name: name.to_string(),
            removed: false,
        };
        for h in hierarchies()? {
            if h.v2 {
                continue;
            }
            let dir = h.path.join(name);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if h.controllers.iter().any(|c| c == "cpuset") {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = fs::read_to_string(h.path.join(f))?;
                    fs::write(dir.join(f), v.trim())
                        .with_context(|| format!("initialising {}/{f}", dir.display()))?;
                }
            }
        }
        fs::create_dir_all(cg.node_dir()?)?;
        Ok(cg)
    }

    /// The kubelet's `cgroupRoot`.
    pub fn root(&self) -> String {
        format!("/{}", self.name)
    }

    /// `cgroup.procs` of the daemons' cgroup, opened for writing: a child
    /// writes "0" to it before exec and so is inside from its first instruction.
    pub fn node_procs(&self) -> Result<File> {
        let path = self.node_dir()?.join("cgroup.procs");
        File::options()
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    fn node_dir(&self) -> Result<PathBuf> {
        Ok(pids_hierarchy()?.join(&self.name).join("node"))
    }

    /// Every process still in the node (daemons, shims, containers).
    pub fn pids(&self) -> Vec<i32> {
        match pids_hierarchy() {
            Ok(h) => procs_under(&h.join(&self.name)),
            Err(_) => Vec::new(),
        }
    }

    /// SIGKILLs every process of the node until none is left, then removes the
    /// cgroups bottom-up in every hierarchy.
    pub fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        kill_tree(&self.name)?;
        remove_tree(&self.name)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("jwtgate-e2e: removing cgroups /{}: {e:#}", self.name);
        }
    }
}

/// One mounted cgroup hierarchy.
#[derive(Debug)]
struct Hierarchy {
    path: PathBuf,
    controllers: Vec<String>,
    v2: bool,
}

/// The cgroup mounts under /sys/fs/cgroup, from /proc/self/mountinfo.
fn hierarchies() -> Result<Vec<Hierarchy>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in info.lines() {
        // `... mountpoint opts [optional...] - fstype source superopts`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (Some(fstype), Some(_), Some(superopts)) = (r.next(), r.next(), r.next()) else {
            continue;
        };
        let Some(mountpoint) = left.split_whitespace().nth(4) else {
            continue;
        };
        if !mountpoint.starts_with(CGROUP_ROOT) || !matches!(fstype, "cgroup" | "cgroup2") {
            continue;
        }
        let controllers = superopts
            .split(',')
            .filter(|o| !matches!(*o, "rw" | "ro" | "relatime" | "nosuid" | "nodev" | "noexec"))
            .map(String::from)
            .collect();
        out.push(Hierarchy {
            path: PathBuf::from(mountpoint),
            controllers,
            v2: fstype == "cgroup2",
        });
    }
    if out.is_empty() {
        bail!("no cgroup hierarchy mounted under {CGROUP_ROOT}");
    }
    Ok(out)
}

fn pids_hierarchy() -> Result<PathBuf> {
    hierarchies()?
        .into_iter()
        .find(|h| !h.v2 && h.controllers.iter().any(|c| c == "pids"))
        .map(|h| h.path)
        .context("no cgroup v1 pids hierarchy (the node test bed needs the hybrid v1 layout of these machines)")
}

/// Pids listed in `cgroup.procs` of `dir` and every cgroup below it.
fn procs_under(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            stack.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
        }
    }
    pids
}

/// SIGKILL everything under `/<name>` in every hierarchy until it stays empty
/// (a process may fork while being killed).
fn kill_tree(name: &str) -> Result<()> {
    let dirs: Vec<PathBuf> = hierarchies()?
        .into_iter()
        .map(|h| h.path.join(name))
        .filter(|d| d.is_dir())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids: Vec<i32> = dirs.iter().flat_map(|d| procs_under(d)).collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes {pids:?} survive SIGKILL in cgroup /{name}");
        }
        for pid in pids {
            // ESRCH: already gone.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// rmdir `/<name>` and its children, deepest first, in every hierarchy. A
/// cgroup whose last process just died can be busy for a moment.
fn remove_tree(name: &str) -> Result<()> {
    let mut errors = Vec::new();
    for h in hierarchies()? {
        let top = h.path.join(name);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = vec![top.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(rd) = fs::read_dir(&dirs[i]) {
                dirs.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(e) => {
                        errors.push(format!("rmdir {}: {e}", d.display()));
                        break;
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

/// Kernel-wide sysctls recorded at start and put back at the end.
pub struct Sysctls {
    saved: Vec<(&'static str, String)>,
}

impl Sysctls {
    pub fn record() -> Result<Sysctls> {
        let saved = KUBELET_SYSCTLS
            .iter()
            .map(|s| Ok((*s, read_sysctl(s)?)))
            .collect::<Result<_>>()?;
        Ok(Sysctls { saved })
    }

    /// Writes back every recorded value that differs now; returns what was
    /// changed as `name: now -> restored`.
    pub fn restore(&self) -> Result<Vec<String>> {
        let mut changed = Vec::new();
        for (name, want) in &self.saved {
            let now = read_sysctl(name)?;
            if now != *want {
                fs::write(Path::new(SYSCTL_ROOT).join(name), want)
                    .with_context(|| format!("restoring {name}"))?;
                changed.push(format!("{name}: {now} -> {want}"));
            }
        }
        Ok(changed)
    }
}

fn read_sysctl(name: &str) -> Result<String> {
    let p = Path::new(SYSCTL_ROOT).join(name);
    Ok(fs::read_to_string(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

/// What a run that was killed (SIGKILL, no Drop) left: the cgroups and the
/// netns `jg-node-<pid>-<n>` of a `<pid>` that no longer exists, and its temp
/// dir. Only dead owners' leftovers are touched: another run's live node is
/// never removed. Returns what was removed.
pub fn remove_stale(prefix: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(prefix) else {
            return false;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            return false;
        };
        // ESRCH: no such process. EPERM cannot happen as root.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH)
    };
    if let Ok(pids) = pids_hierarchy() {
        for e in fs::read_dir(&pids)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                kill_tree(&name)?;
                remove_tree(&name)?;
                removed.push(format!("cgroup /{name}"));
            }
        }
    }
    for name in crate::netns::list() {
        if dead(&name) {
            crate::netns::remove_named(&Path::new(crate::netns::NETNS_DIR).join(&name))?;
            removed.push(format!("netns {name}"));
        }
    }
    for e in fs::read_dir(std::env::temp_dir())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if dead(&name) && e.path().is_dir() {
            fs::remove_dir_all(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
            removed.push(format!("dir {}", e.path().display()));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_cgroup_hierarchies() {
        // Every Linux host running these tests has at least one.
        let h = super::hierarchies().unwrap();
        assert!(!h.is_empty());
        assert!(h.iter().all(|h| h.path.starts_with(super::CGROUP_ROOT)));
    }
}
