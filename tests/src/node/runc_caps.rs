//! The runc wrapper's one job (`jwtgate-node-runc`, containerd's `BinaryName`):
//! before `runc create|run|exec`, remove from the OCI process's capability
//! sets every capability the host's bounding set lacks.
//!
//! Why: root on these VMs has no CAP_SYS_RESOURCE in its bounding set; the
//! DaemonSet asks for it (memlock on older kernels), containerd copies it into
//! the spec as asked, and runc then fails with "unable to apply caps:
//! operation not permitted". podman drops such capabilities by itself; with
//! the wrapper containerd behaves the same, and the container gets exactly
//! the manifest's capabilities that exist here — which the test checks.

use serde_json::Value;

/// linux/capability.h, index = capability number.
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capability number of `CAP_NAME` (or `NAME`).
pub fn cap_number(name: &str) -> Option<u32> {
    let full = if name.starts_with("CAP_") {
        name.to_string()
    } else {
        format!("CAP_{name}")
    };
    CAP_NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

/// `CapBnd` of /proc/self/status as a mask.
pub fn bounding_set() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| std::io::Error::other("no CapBnd in /proc/self/status"))
}

/// Removes from every set of `caps` (an OCI `process.capabilities` object)
/// the capabilities outside `bounding`. Unknown names are kept: runc will
/// report them itself. Returns the names removed.
pub fn strip(caps: &mut Value, bounding: u64) -> Vec<String> {
    let mut removed = Vec::new();
    let Some(sets) = caps.as_object_mut() else {
        return removed;
    };
    for set in sets.values_mut() {
        let Some(list) = set.as_array_mut() else {
            continue;
        };
        list.retain(|c| {
            let keep = c
                .as_str()
                .and_then(cap_number)
                .is_none_or(|n| bounding & (1u64 << n) != 0);
            if !keep {
                let name = c.as_str().unwrap_or_default().to_string();
                if !removed.contains(&name) {
                    removed.push(name);
                }
            }
            keep
        });
    }
    removed
}

/// Which JSON file of a runc invocation holds the process to start, and
/// where in it the capabilities are: `create`/`run` → `<bundle>/config.json`
/// at `process.capabilities`; `exec --process F` → `F` at `capabilities`.
/// None for every other command.
pub fn spec_file(args: &[String]) -> Option<(std::path::PathBuf, &'static [&'static str])> {
    // Global options come before the command; those with values are skipped
    // with their value.
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') {
        let takes_value = matches!(
            args[i].as_str(),
            "--root" | "--log" | "--log-format" | "--criu" | "--rootless"
        );
        i += if takes_value { 2 } else { 1 };
    }
    let cmd = args.get(i)?.as_str();
    let rest = &args[i + 1..];
    let value_of = |names: &[&str]| -> Option<String> {
        rest.iter().enumerate().find_map(|(j, a)| {
            for n in names {
                if a == n {
                    return rest.get(j + 1).cloned();
                }
                if let Some(v) = a.strip_prefix(&format!("{n}=")) {
                    return Some(v.to_string());
                }
            }
            None
        })
    };
    match cmd {
        "create" | "run" => {
            let bundle = value_of(&["--bundle", "-b"]).unwrap_or_else(|| ".".into());
            Some((
                std::path::Path::new(&bundle).join("config.json"),
                &["process", "capabilities"],
            ))
        }
        "exec" => value_of(&["--process", "-p"]).map(|p| (p.into(), &["capabilities"][..])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn names_match_the_kernel_numbers() {
        assert_eq!(cap_number("SYS_RESOURCE"), Some(24));
        assert_eq!(cap_number("CAP_BPF"), Some(39));
        assert_eq!(cap_number("PERFMON"), Some(38));
        assert_eq!(cap_number("NOPE"), None);
    }

    #[test]
    fn strips_only_what_the_bounding_set_lacks() {
        let mut caps = serde_json::json!({
            "bounding": ["CAP_BPF", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN"],
            "effective": ["CAP_BPF", "CAP_SYS_RESOURCE"],
            "permitted": ["CAP_SYS_RESOURCE"],
        });
        let all_but_sys_resource = !(1u64 << 24);
        let removed = strip(&mut caps, all_but_sys_resource);
        assert_eq!(removed, ["CAP_SYS_RESOURCE"]);
        assert_eq!(
            caps["bounding"],
            serde_json::json!(["CAP_BPF", "CAP_NET_ADMIN"])
        );
        assert_eq!(caps["effective"], serde_json::json!(["CAP_BPF"]));
        assert_eq!(caps["permitted"], serde_json::json!([]));
    }

    #[test]
    fn finds_the_spec_of_create_and_exec() {
        let (f, at) = spec_file(&args(
            "--root /run/containerd/runc/k8s.io --log /x/log.json --log-format json create --bundle /b/id --pid-file /b/pid id",
        ))
        .unwrap();
        assert_eq!(f, std::path::Path::new("/b/id/config.json"));
        assert_eq!(at, ["process", "capabilities"]);
        let (f, at) = spec_file(&args(
            "--root /r exec --process /tmp/p.json --detach --pid-file /p id",
        ))
        .unwrap();
        assert_eq!(f, std::path::Path::new("/tmp/p.json"));
        assert_eq!(at, ["capabilities"]);
        assert!(spec_file(&args("--root /r start id")).is_none());
        assert!(spec_file(&args("--root /r delete --force id")).is_none());
    }
}
