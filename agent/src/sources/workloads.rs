//! The `--workloads` file: which workloads on this node to protect.
//!
//! ```yaml
//! workloads:
//! - name: httpbin
//!   namespace: foo
//!   labels: {app: httpbin}
//!   netns: /var/run/netns/httpbin   # or pid: 1234
//!   ports: [8000]
//!   failOpen: false                 # optional
//!   ips: [10.0.0.2]                 # optional; default: the netns's addresses
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadsFile {
    #[serde(default)]
    workloads: Vec<Workload>,
}

/// One workload to enrol.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Path of the network namespace file.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// A process in the workload's network namespace.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Mesh ports to steer into the verifier.
    pub ports: Vec<u16>,
    #[serde(default)]
    pub fail_open: Option<bool>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

fn default_namespace() -> String {
    "default".to_string()
}

impl Workload {
    /// `namespace/name`, the key used in logs, metrics and pin paths.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Read and validate the workloads file.
pub fn load(path: &Path) -> anyhow::Result<Vec<Workload>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read workloads file {}", path.display()))?;
    parse(&text).with_context(|| format!("invalid workloads file {}", path.display()))
}

/// Parse the workloads file text; every problem names the workload and field.
pub fn parse(text: &str) -> anyhow::Result<Vec<Workload>> {
    let file: WorkloadsFile = serde_yaml::from_str(text)?;
    let mut seen = std::collections::BTreeSet::new();
    for wl in &file.workloads {
        let key = wl.key();
        if wl.name.is_empty() || !is_dns_label(&wl.name) || !is_dns_label(&wl.namespace) {
            bail!("workload {key:?}: name and namespace must be DNS labels");
        }
        if wl.netns.is_some() == wl.pid.is_some() {
            bail!("workload {key}: give exactly one of `netns` and `pid`");
        }
        if wl.ports.is_empty() || wl.ports.contains(&0) {
            bail!("workload {key}: `ports` must list at least one port, none of them 0");
        }
        if !seen.insert(key.clone()) {
            bail!("workload {key} is listed twice");
        }
    }
    Ok(file.workloads)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let wls = parse(
            "workloads:\n- name: httpbin\n  namespace: foo\n  labels: {app: httpbin}\n  \
             netns: /var/run/netns/httpbin\n  ports: [8000]\n",
        )
        .unwrap();
        assert_eq!(wls.len(), 1);
        assert_eq!(wls[0].key(), "foo/httpbin");
        assert_eq!(
            wls[0].labels.get("app").map(String::as_str),
            Some("httpbin")
        );
        assert_eq!(wls[0].ports, vec![8000]);
        assert_eq!(wls[0].fail_open, None);
    }

    #[test]
    fn rejects_bad_entries_with_the_workload_named() {
        for (text, needle) in [
            ("workloads:\n- name: a\n  ports: [80]\n", "exactly one of"),
            ("workloads:\n- name: a\n  pid: 1\n  netns: /x\n  ports: [80]\n", "exactly one of"),
            ("workloads:\n- name: a\n  pid: 1\n  ports: []\n", "ports"),
            ("workloads:\n- name: A_b\n  pid: 1\n  ports: [80]\n", "DNS"),
            ("workloads:\n- name: a\n  pid: 1\n  ports: [80]\n- name: a\n  pid: 2\n  ports: [81]\n", "twice"),
            ("workloads:\n- name: a\n  pid: 1\n  ports: [80]\n  colour: red\n", "colour"),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
