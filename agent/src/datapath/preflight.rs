//! Start-up checks that turn the kernel's bare `EPERM`/`EINVAL` into a
//! sentence naming what is missing: a capability, a kernel version or
//! feature. Checked before loading anything, so an operator sees every
//! missing piece at once, and used again to explain a load that fails
//! anyway (a locked-down kernel, a feature compiled out).

use std::path::Path;

use anyhow::{anyhow, Result};

/// Linux capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_BPF: u32 = 39;

/// sk_lookup programs and BPF links for XDP both arrived in Linux 5.9.
const MIN_KERNEL: (u32, u32) = (5, 9);
/// Before 5.11, BPF memory is charged against RLIMIT_MEMLOCK.
const MEMCG_ACCOUNTING: (u32, u32) = (5, 11);

/// Every missing capability or kernel feature, in one error; `Ok` when the
/// agent can go on to load its programs.
pub fn check() -> Result<()> {
    let mut missing = Vec::new();
    // Without /proc the kernel's own answer has to do.
    if let Some(caps) = effective_capabilities() {
        missing.extend(missing_capabilities(caps));
    }
    if let Some(release) = kernel_release() {
        if let Some(version) = parse_release(&release) {
            if version < MIN_KERNEL {
                missing.push(format!(
                    "Linux {}.{} or newer (this kernel is {release}): sk_lookup programs and XDP links need it",
                    MIN_KERNEL.0, MIN_KERNEL.1
                ));
            } else if version < MEMCG_ACCOUNTING {
                raise_memlock(&mut missing);
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "the eBPF datapath cannot start: missing {}",
            missing.join("; ")
        ))
    }
}

/// What the capability set `caps` lacks, each with what it is needed for.
fn missing_capabilities(caps: u64) -> Vec<String> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    let mut missing = Vec::new();
    // CAP_SYS_ADMIN also covers bpf(2) (`bpf_capable()`).
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (to load the eBPF programs and create their maps)".to_string());
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN (to attach sk_lookup and XDP programs)".to_string());
    }
    if !has(CAP_SYS_ADMIN) {
        missing.push(
            "CAP_SYS_ADMIN (to enter pods' network namespaces and mount the bpffs)".to_string(),
        );
    }
    missing
}

/// Kernels before 5.11 charge maps and programs to RLIMIT_MEMLOCK, whose
/// default (64 KiB) is far too small; raise it as Cilium and aya's
/// template do.
fn raise_memlock(missing: &mut Vec<String>) {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_err() {
        let caps = effective_capabilities().unwrap_or(0);
        if caps & (1 << CAP_SYS_RESOURCE) == 0 {
            missing.push(
                "CAP_SYS_RESOURCE (kernels before 5.11 charge eBPF maps to RLIMIT_MEMLOCK, which must be raised)"
                    .to_string(),
            );
        }
    }
}

/// Add what the kernel's answer to a failed load most likely means.
pub fn explain_load_error(err: anyhow::Error, what: &str) -> anyhow::Error {
    let errno = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error);
    let hint = match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            let caps = effective_capabilities()
                .map(missing_capabilities)
                .unwrap_or_default();
            if caps.is_empty() {
                "the kernel refused: with every capability present this is usually kernel \
                 lockdown (`cat /sys/kernel/security/lockdown`) or a seccomp profile \
                 forbidding bpf(2) (the DaemonSet needs seccomp Unconfined or a profile allowing it)"
                    .to_string()
            } else {
                format!("missing {}", caps.join("; "))
            }
        }
        Some(libc::ENOSYS) => {
            "the kernel has no bpf(2) system call (it needs CONFIG_BPF_SYSCALL)".to_string()
        }
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => format!(
            "the kernel rejected a program or map type: `steer` is an sk_lookup program with a \
             SOCKHASH map, which need Linux ≥ 5.9 built with CONFIG_BPF_SYSCALL and CONFIG_INET{}",
            btf_note()
        ),
        _ => btf_note().trim_start_matches("; ").to_string(),
    };
    if hint.is_empty() {
        err.context(format!("cannot {what}"))
    } else {
        err.context(format!("cannot {what}: {hint}"))
    }
}

fn btf_note() -> String {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        String::new()
    } else {
        "; note: this kernel exposes no BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)"
            .to_string()
    }
}

/// `CapEff` of this process, from /proc/self/status.
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn kernel_release() -> Option<String> {
    nix::sys::utsname::uname()
        .ok()
        .map(|u| u.release().to_string_lossy().into_owned())
}

/// `(major, minor)` of a release string such as `6.18.44-fc-v1098`.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_missing_capability_is_named_with_its_use() {
        let all = (1u64 << 40) - 1;
        assert!(missing_capabilities(all).is_empty());
        let without_bpf_and_admin = all & !(1 << CAP_BPF) & !(1 << CAP_SYS_ADMIN);
        let missing = missing_capabilities(without_bpf_and_admin).join("; ");
        assert!(missing.contains("CAP_BPF"), "{missing}");
        assert!(missing.contains("CAP_SYS_ADMIN"), "{missing}");
        assert!(!missing.contains("CAP_NET_ADMIN"), "{missing}");
        // CAP_SYS_ADMIN alone covers bpf(2).
        let admin_only = all & !(1 << CAP_BPF);
        assert!(missing_capabilities(admin_only).is_empty());
        let none = missing_capabilities(0).join("; ");
        assert!(none.contains("CAP_NET_ADMIN"), "{none}");
    }

    #[test]
    fn status_and_release_parse() {
        let status = "Name:\tjwtgate\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1fffeffffff));
        assert_eq!(parse_release("6.18.44-fc-v1098"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert!(parse_release("5.4.0") < Some(MIN_KERNEL));
        assert_eq!(parse_release("garbage"), None);
    }
}
