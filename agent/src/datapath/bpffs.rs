//! Where the pins live: making sure `--pin-root` is on a bpffs.
//!
//! Pins only work on a bpffs. systemd mounts one at `/sys/fs/bpf`, and
//! Cilium mounts it there itself when it is missing; hosts without systemd
//! and minimal VMs have the empty `/sys/fs/bpf` directory of sysfs and no
//! bpffs on it — where nothing can be created, so `mkdir
//! /sys/fs/bpf/jwtgate` fails. The agent then does what Cilium does: it
//! mounts a bpffs on the pin root's parent and puts its directory inside.
//!
//! The parent is only mounted over when nothing can be hidden by it: an
//! empty directory (sysfs's `/sys/fs/bpf` is one). Any other parent — a
//! test's temporary directory holding other files — gets the bpffs on the
//! pin root itself instead (an empty or new directory), as before.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use tracing::info;

/// `statfs.f_type` of a bpffs mount (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What `ensure` had to do, for the log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The pin root or its parent already was a bpffs.
    Existing,
    /// A bpffs was mounted at this path (the pin root's parent, or the pin
    /// root itself).
    Mounted(PathBuf),
}

/// Make sure `pin_root` is a directory on a bpffs, mounting one on its
/// parent (or, when the parent holds other files, on the pin root itself).
pub fn ensure(pin_root: &Path) -> Result<Prepared> {
    if is_bpffs(pin_root)? == Some(true) {
        return Ok(Prepared::Existing);
    }
    let parent = pin_root
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| anyhow!("--pin-root {} has no parent directory", pin_root.display()))?;
    let mounted = match is_bpffs(parent)? {
        Some(true) => None,
        Some(false) if is_empty_dir(parent)? => {
            mount_bpffs(parent)?;
            Some(parent.to_path_buf())
        }
        Some(false) => {
            // The parent has other files: a bpffs there would hide them.
            create_dir(pin_root)?;
            mount_bpffs(pin_root)?;
            return Ok(Prepared::Mounted(pin_root.to_path_buf()));
        }
        None => {
            // A parent that does not exist yet (say `/run/jwtgate/bpf`)
            // holds nothing a mount could hide.
            create_dir(parent)?;
            mount_bpffs(parent)?;
            Some(parent.to_path_buf())
        }
    };
    create_dir(pin_root)?;
    Ok(mounted.map_or(Prepared::Existing, Prepared::Mounted))
}

/// Whether `dir` is on a bpffs; `None` when it does not exist.
fn is_bpffs(dir: &Path) -> Result<Option<bool>> {
    match nix::sys::statfs::statfs(dir) {
        // The field is `i64` on x86_64 and `u32`/`i32` elsewhere; widen to compare.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => Ok(Some(st.filesystem_type().0 as i64 == BPF_FS_MAGIC)),
        Err(Errno::ENOENT) => Ok(None),
        Err(err) => Err(anyhow!("statfs {}: {err}", dir.display())),
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(entries.next().is_none())
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|err| {
        let hint = if err.raw_os_error() == Some(libc::EACCES)
            || err.raw_os_error() == Some(libc::EPERM)
        {
            " (is this root? the agent needs to create its pin directory)"
        } else {
            ""
        };
        anyhow!("cannot create {}: {err}{hint}", dir.display())
    })
}

fn mount_bpffs(at: &Path) -> Result<()> {
    let flags = nix::mount::MsFlags::MS_NOSUID
        | nix::mount::MsFlags::MS_NODEV
        | nix::mount::MsFlags::MS_NOEXEC;
    // Mode 0700, as systemd and Cilium mount it: pins are root's business.
    match nix::mount::mount(Some("bpf"), at, Some("bpf"), flags, Some("mode=0700")) {
        Ok(()) => {}
        Err(Errno::EPERM) => {
            return Err(anyhow!(
                "cannot mount a bpffs at {}: permission denied — mounting needs CAP_SYS_ADMIN \
                 (or mount one beforehand: `mount -t bpf bpf {}`)",
                at.display(),
                at.display()
            ))
        }
        Err(Errno::ENODEV) => {
            return Err(anyhow!(
                "cannot mount a bpffs at {}: the kernel has no bpf filesystem \
                 (it needs CONFIG_BPF_SYSCALL)",
                at.display()
            ))
        }
        Err(err) => return Err(anyhow!("cannot mount a bpffs at {}: {err}", at.display())),
    }
    if is_bpffs(at)? != Some(true) {
        return Err(anyhow!(
            "{} is still not a bpffs after mounting one",
            at.display()
        ));
    }
    info!(path = %at.display(), "no bpffs was mounted here: mounted one for the pins");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_directory_is_not_a_bpffs_and_a_missing_one_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(is_bpffs(dir.path()).unwrap(), Some(false));
        assert_eq!(is_bpffs(&dir.path().join("missing")).unwrap(), None);
        assert!(is_empty_dir(dir.path()).unwrap());
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        assert!(!is_empty_dir(dir.path()).unwrap());
    }

    #[test]
    fn a_pin_root_without_parent_is_refused() {
        let err = ensure(Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("no parent"), "{err}");
    }
}
