//! Small system helpers for the data path: bpffs mounting, raw `bpf(2)` calls
//! that aya 0.14 does not expose, running code inside a network namespace,
//! and the monotonic clock.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

/// `statfs.f_type` of a bpffs mount (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `dir` is on a bpffs, mounting a fresh one there if it is not.
///
/// Pins only work on bpffs, and on some hosts (these test VMs, minimal
/// container hosts) `/sys/fs/bpf` is not mounted at all. A directory below an
/// existing bpffs (e.g. `/sys/fs/bpf/jwtgate`) is accepted as is.
pub(crate) fn ensure_bpffs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if is_bpffs(dir)? {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {}", dir.display()))?;
    if !is_bpffs(dir)? {
        return Err(anyhow!(
            "{} is still not a bpffs after mounting",
            dir.display()
        ));
    }
    Ok(())
}

fn is_bpffs(dir: &Path) -> Result<bool> {
    let st = nix::sys::statfs::statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    // The field is `i64` on x86_64 and `u32`/`i32` elsewhere; widen to compare.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.filesystem_type().0 as i64;
    Ok(magic == BPF_FS_MAGIC)
}

/// Runs `f` on a fresh thread that has joined the network namespace `netns`.
///
/// `setns` changes only the calling thread, and a socket (or an interface
/// name lookup, or an XDP attach by ifindex) belongs to the netns of the
/// thread that makes it. A short-lived scoped thread keeps the caller's
/// threads, including tokio's workers, in the host namespace.
pub(crate) fn in_netns<T: Send>(netns: &File, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns(CLONE_NEWNET) into the workload namespace")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread inside the network namespace panicked"))?
    })
}

/// Inode of a network namespace file: what the kernel reports as
/// `netns_ino` for links attached to it.
pub(crate) fn netns_inode(netns: &File) -> Result<u64> {
    Ok(netns.metadata().context("fstat netns")?.ino())
}

/// Interfaces that are up and not loopback, in the calling thread's netns.
pub(crate) fn up_interfaces() -> Result<Vec<(String, u32)>> {
    use nix::net::if_::InterfaceFlags;
    let mut out: Vec<(String, u32)> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("getifaddrs")? {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP)
            || ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            || out.iter().any(|(n, _)| *n == ifa.interface_name)
        {
            continue;
        }
        let index = nix::net::if_::if_nametoindex(ifa.interface_name.as_str())
            .with_context(|| format!("if_nametoindex({})", ifa.interface_name))?;
        out.push((ifa.interface_name, index));
    }
    Ok(out)
}

/// `CLOCK_MONOTONIC` now plus `ttl`, in nanoseconds: the clock
/// `bpf_ktime_get_ns()` reads in the programs.
pub(crate) fn monotonic_deadline(ttl: Duration) -> Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .context("clock_gettime(CLOCK_MONOTONIC)")?;
    let now_ns = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
    // Never 0: 0 means "forever" in DenyVal.
    Ok(now_ns
        .saturating_add(ttl.as_nanos().min(u64::MAX as u128) as u64)
        .max(1))
}

// --- raw bpf(2) -------------------------------------------------------------
//
// aya 0.14's `LinkInfo` exposes only id/program/type, but re-adopting a pinned
// link needs the netns inode (sk_lookup) or ifindex (XDP) it is attached to.

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// What the kernel says about a pinned link (`struct bpf_link_info`,
/// leading part), and an fd to it.
#[derive(Debug)]
pub(crate) struct LinkTarget {
    /// `netns.netns_ino` for netns links, `xdp.ifindex` for XDP links; 0 once
    /// the namespace or device is gone (the link is then defunct).
    pub target: u32,
    /// The program the link runs.
    pub prog_id: u32,
    pub fd: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed `union bpf_attr`-sized buffer (128 bytes)
    // whose leading fields were filled for `cmd`; the kernel reads/writes at
    // most that many bytes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `BPF_OBJ_GET` on a pin: a new fd to the pinned object.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64; // pathname
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attach target of the link pinned at `path`, or `None` when no pin exists.
pub(crate) fn pinned_link_target(path: &Path) -> Result<Option<LinkTarget>> {
    let fd = match obj_get(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("BPF_OBJ_GET {}", path.display())),
    };
    // struct bpf_link_info: type, id, prog_id (u32 each), then an 8-aligned
    // union at offset 16 whose first u32 is netns_ino / ifindex.
    let mut info = [0u8; 64];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64 | ((info.len() as u64) << 32); // bpf_fd, info_len
    attr[1] = info.as_mut_ptr() as u64; // info
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .with_context(|| format!("BPF_OBJ_GET_INFO_BY_FD {}", path.display()))?;
    let target = u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes"));
    let prog_id = u32::from_ne_bytes(info[8..12].try_into().expect("4 bytes"));
    Ok(Some(LinkTarget {
        target,
        prog_id,
        fd,
    }))
}

/// `BPF_LINK_UPDATE`: make the link run `prog` instead, atomically (no
/// instant without a program on the hook). How a newer agent moves the
/// links it re-adopts to its own programs.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u64; 16];
    // link_fd, new_prog_fd, flags (0), old_prog_fd (0)
    attr[0] = link.as_raw_fd() as u32 as u64 | ((prog.as_raw_fd() as u32 as u64) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}
