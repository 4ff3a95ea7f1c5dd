//! Finding a pod's network namespace from the host, by the pod's IP.
//!
//! Why by IP: the IP is what the API server reports (`status.podIPs`) and it
//! is unique on the node, whatever the container runtime. containerd and
//! CRI-O both pin pod namespaces under `/var/run/netns` (`cni-<uuid>`,
//! `<uuid>`), which is checked first; every process's `/proc/PID/ns/net`
//! (host `/proc`, hostPID) is the fallback for runtimes that do not pin.
//! Cgroup paths, the other option, differ between runtimes and cgroup
//! drivers (cgroupfs, systemd), and runtimes without a pinned netns file
//! still have a process in the pod.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{Netns, NetnsId};

/// Where namespaces are looked for. `proc_root` is the host's `/proc`
/// (`--host-proc`, `/host/proc` in the DaemonSet).
#[derive(Debug, Clone)]
pub struct Finder {
    pub proc_root: PathBuf,
    pub netns_dirs: Vec<PathBuf>,
}

impl Default for Finder {
    fn default() -> Self {
        Finder {
            proc_root: PathBuf::from("/proc"),
            netns_dirs: vec![PathBuf::from("/var/run/netns")],
        }
    }
}

impl Finder {
    /// The network namespace of process `pid`, through `proc_root`.
    pub fn open_pid(&self, pid: u32) -> io::Result<Netns> {
        Netns::open(&self.proc_root.join(pid.to_string()).join("ns/net"))
    }

    /// The namespace (other than the agent's own) that has `ip` on one of
    /// its interfaces.
    pub fn find_by_ip(&self, ip: IpAddr) -> io::Result<Option<Netns>> {
        let own = Netns::open(Path::new("/proc/thread-self/ns/net"))?.id();
        let mut seen: HashSet<NetnsId> = HashSet::from([own]);
        for dir in &self.netns_dirs {
            for path in files_in(dir) {
                if let Some(ns) = check(&path, ip, &mut seen) {
                    return Ok(Some(ns));
                }
            }
        }
        for pid in pids(&self.proc_root) {
            let path = self.proc_root.join(pid).join("ns/net");
            if let Some(ns) = check(&path, ip, &mut seen) {
                return Ok(Some(ns));
            }
        }
        Ok(None)
    }
}

/// Open `path` unless its namespace was already looked at; keep it when it
/// has `ip`. Unreadable entries (processes that exited, races) are skipped.
fn check(path: &Path, ip: IpAddr, seen: &mut HashSet<NetnsId>) -> Option<Netns> {
    let ns = Netns::open(path).ok()?;
    if !seen.insert(ns.id()) {
        return None;
    }
    let addrs = ns.addresses().ok()?;
    addrs.contains(&ip).then_some(ns)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
}

/// Numeric entries of a proc root, newest (highest) first: pods are usually
/// younger than system daemons.
fn pids(proc_root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable_by(|a, b| b.cmp(a));
    pids.into_iter().map(|p| p.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_pids_newest_first_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["1", "42", "7", "self", "sys"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(pids(dir.path()), ["42", "7", "1"]);
        assert!(files_in(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn an_address_nobody_has_is_not_found() {
        let finder = Finder {
            proc_root: PathBuf::from("/nonexistent-proc"),
            netns_dirs: vec![],
        };
        // Only the agent's own namespace is known, and it is skipped.
        assert!(finder
            .find_by_ip("192.0.2.77".parse().unwrap())
            .unwrap()
            .is_none());
    }
}
