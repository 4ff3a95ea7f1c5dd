//! Finding a Kubernetes pod's network namespace from the host.
//!
//! The pod is identified by its UID, which the kubelet writes into the cgroup
//! path of every container of the pod (`…/pod<uid>/…` with the cgroupfs
//! driver, `…-pod<uid with _>.slice/…` with the systemd driver). Another pod
//! cannot choose its cgroup path, while it can put any address on its own
//! interfaces: so the namespace is the one the pod's processes are in, and
//! the pod IP only confirms it. A namespace that merely claims the IP is
//! never taken; two namespaces that both hold processes of the pod and the IP
//! are refused rather than guessed between.
//!
//! This needs the host's `/proc` (hostPID in the DaemonSet, `--host-proc`).

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{Netns, NetnsId};

/// Where processes are looked for: `proc_root` is the host's `/proc`
/// (`--host-proc`, `/host/proc` in the DaemonSet).
#[derive(Debug, Clone)]
pub struct Finder {
    pub proc_root: PathBuf,
}

impl Default for Finder {
    fn default() -> Self {
        Finder {
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// Why a pod's namespace cannot be used (yet).
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no process of pod {uid} is running yet (looked for its uid in the cgroups under {proc_root})")]
    NoSandbox { uid: String, proc_root: PathBuf },
    #[error("the network namespace of pod {uid} does not have {ip} (yet)")]
    NoAddress { uid: String, ip: IpAddr },
    #[error("{count} network namespaces hold processes of pod {uid} and {ip}: refusing to guess")]
    Ambiguous {
        uid: String,
        ip: IpAddr,
        count: usize,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Finder {
    /// The network namespace of process `pid`, through `proc_root`.
    pub fn open_pid(&self, pid: u32) -> io::Result<Netns> {
        Netns::open(&self.proc_root.join(pid.to_string()).join("ns/net"))
    }

    /// The network namespace of pod `uid`, which must have `ip`.
    pub fn find_pod(&self, uid: &str, ip: IpAddr) -> Result<Netns, FindError> {
        let own = Netns::open(Path::new("/proc/thread-self/ns/net"))?.id();
        let mut candidates: BTreeMap<(u64, u64), Netns> = BTreeMap::new();
        for pid in pids(&self.proc_root) {
            let dir = self.proc_root.join(pid.to_string());
            let Ok(cgroups) = std::fs::read_to_string(dir.join("cgroup")) else {
                continue; // exited meanwhile
            };
            if !in_pod_cgroup(&cgroups, uid) {
                continue;
            }
            let Ok(ns) = Netns::open(&dir.join("ns/net")) else {
                continue;
            };
            let NetnsId { dev, inode } = ns.id();
            if ns.id() != own {
                candidates.entry((dev, inode)).or_insert(ns);
            }
        }
        if candidates.is_empty() {
            return Err(FindError::NoSandbox {
                uid: uid.to_string(),
                proc_root: self.proc_root.clone(),
            });
        }
        let mut with_ip: Vec<Netns> = candidates
            .into_values()
            .filter(|ns| ns.addresses().is_ok_and(|a| a.contains(&ip)))
            .collect();
        match with_ip.len() {
            0 => Err(FindError::NoAddress {
                uid: uid.to_string(),
                ip,
            }),
            1 => Ok(with_ip.remove(0)),
            count => Err(FindError::Ambiguous {
                uid: uid.to_string(),
                ip,
                count,
            }),
        }
    }
}

/// Does a `/proc/PID/cgroup` text put the process in pod `uid`'s cgroup?
/// Whole path components only, so a uid never matches inside another name.
fn in_pod_cgroup(cgroups: &str, uid: &str) -> bool {
    if uid.is_empty() {
        return false;
    }
    let cgroupfs = format!("pod{uid}");
    let systemd = format!("-pod{}.slice", uid.replace('-', "_"));
    cgroups
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .any(|c| c == cgroupfs || c.ends_with(&systemd))
}

/// Numeric entries of a proc root, newest (highest) first: pods are usually
/// younger than system daemons.
fn pids(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable_by(|a, b| b.cmp(a));
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f1c2a8e-7d4b-4c1a-9e2f-0a1b2c3d4e5f";

    #[test]
    fn recognises_both_cgroup_drivers_and_nothing_else() {
        let cgroupfs = format!("12:pids:/kubepods/besteffort/pod{UID}/0123abcd\n0::/kubepods/besteffort/pod{UID}/0123abcd\n");
        assert!(in_pod_cgroup(&cgroupfs, UID));
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-0123.scope\n",
            UID.replace('-', "_")
        );
        assert!(in_pod_cgroup(&systemd, UID));
        let guaranteed = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/x\n",
            UID.replace('-', "_")
        );
        assert!(in_pod_cgroup(&guaranteed, UID));
        for other in [
            "0::/system.slice/containerd.service\n".to_string(),
            format!("0::/kubepods/besteffort/pod{UID}x/c\n"),
            format!("0::/kubepods/besteffort/xpod{UID}/c\n"),
            format!("0::/user.slice/{UID}\n"),
        ] {
            assert!(!in_pod_cgroup(&other, UID), "{other}");
        }
        assert!(!in_pod_cgroup(&cgroupfs, ""));
    }

    #[test]
    fn lists_pids_newest_first_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["1", "42", "7", "self", "sys"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(pids(dir.path()), [42, 7, 1]);
    }

    #[test]
    fn a_pod_without_processes_is_not_found() {
        let finder = Finder {
            proc_root: PathBuf::from("/proc"),
        };
        let err = finder
            .find_pod(UID, "192.0.2.77".parse().unwrap())
            .unwrap_err();
        assert!(matches!(err, FindError::NoSandbox { .. }), "{err}");
    }
}
