//! Network namespaces: open one by path or pid, run code inside it, create the
//! verifier's listener and upstream sockets there. A socket belongs to the
//! namespace of the thread that created it, for its whole life, so only the
//! `socket()` call needs to happen inside; accept/connect/IO can then run on
//! any thread (ztunnel's in-pod socket factory works the same way).

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

mod find;
mod passthrough;
pub use find::{FindError, Finder};
pub use passthrough::{PASSTHROUGH_V4, PASSTHROUGH_V6};

/// Identity of a network namespace: equal ids mean the same namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId {
    pub dev: u64,
    pub inode: u64,
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
    id: NetnsId,
}

impl Netns {
    /// Open a namespace file such as `/var/run/netns/NAME` or `/proc/PID/ns/net`.
    pub fn open(path: &Path) -> io::Result<Netns> {
        let file = File::open(path).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot open network namespace {}: {err}", path.display()),
            )
        })?;
        let meta = file.metadata()?;
        Ok(Netns {
            file,
            path: path.to_path_buf(),
            id: NetnsId {
                dev: meta.dev(),
                inode: meta.ino(),
            },
        })
    }

    /// The network namespace of process `pid` (through /proc, so it needs hostPID in a pod).
    pub fn open_pid(pid: u32) -> io::Result<Netns> {
        Netns::open(&PathBuf::from(format!("/proc/{pid}/ns/net")))
    }

    pub fn id(&self) -> NetnsId {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Run `f` on the calling thread while it is switched into this namespace,
    /// then switch back. `f` must not block on async work: the thread is only
    /// borrowed for the duration of the call.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let home = File::open("/proc/thread-self/ns/net")?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let out = f();
        // A thread left in a pod's namespace would make every later socket of
        // this process land there: better to stop the process than continue.
        if let Err(err) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            panic!("cannot return to the agent's network namespace: {err}");
        }
        Ok(out)
    }

    /// Create a verifier listener of `ip`'s family inside the namespace. Its
    /// address does not matter for steering (sk_lookup hands it connections
    /// for any address of its family), so it takes an ephemeral loopback port
    /// that cannot clash with the app. Connections made to that address
    /// directly are not steered ones: the proxy refuses them.
    pub fn bind_listener(&self, ip: IpAddr) -> io::Result<TcpListener> {
        let addr = match ip {
            IpAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            IpAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
        };
        let listener = self.run(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Make sure the IPv6 passthrough source `::6` exists on the loopback
    /// device, as Istio's sidecar does: the verifier's forward hop to the
    /// app must come from an address the namespace owns (unlike 127.0.0.6,
    /// ::6 is not loopback by itself) and must travel over `lo`.
    pub fn ensure_v6_passthrough(&self) -> io::Result<()> {
        self.run(passthrough::add_v6_to_loopback)?
    }

    /// Addresses of the namespace's interfaces, loopback excluded: the
    /// workload's IPs when the workloads file does not list them.
    pub fn addresses(&self) -> io::Result<Vec<IpAddr>> {
        self.run(own_addresses)?
    }
}

/// Addresses of the calling thread's namespace, loopback and link-local
/// excluded. For the agent (hostNetwork) these are the node's addresses.
pub fn own_addresses() -> io::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    let mut ips: Vec<IpAddr> = addrs
        .filter_map(|ifa| ifa.address)
        .filter_map(|addr| {
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
        .collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_has_an_identity_and_runs_code() {
        let ns = Netns::open(Path::new("/proc/self/ns/net")).expect("own netns");
        let again = Netns::open(Path::new("/proc/thread-self/ns/net")).expect("own netns");
        assert_eq!(ns.id(), again.id());
        // setns into one's own namespace needs CAP_SYS_ADMIN; without it the
        // error must surface, not panic.
        match ns.run(|| 7) {
            Ok(v) => assert_eq!(v, 7),
            Err(err) => assert_eq!(err.kind(), io::ErrorKind::PermissionDenied),
        }
    }

    #[test]
    fn missing_namespace_names_the_path() {
        let err = Netns::open(Path::new("/var/run/netns/jg-does-not-exist")).unwrap_err();
        assert!(err.to_string().contains("jg-does-not-exist"), "{err}");
    }
}
