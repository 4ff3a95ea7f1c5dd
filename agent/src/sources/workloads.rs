//! The `--workloads` file: which workloads on this node to protect.
//!
//! ```yaml
//! workloads:
//! - name: httpbin
//!   namespace: foo
//!   labels: {app: httpbin}
//!   netns: /var/run/netns/httpbin   # or pid: 1234
//!   ports: all                      # optional; default all; or a list: [8000]
//!   excludePorts: [22]              # optional; never steered
//!   protocols: {3306: tcp}          # optional; port -> http | tcp, or an Istio
//!                                   # port name (mysql, grpc…); others sniffed
//!   probes:                         # optional; kubelet-style probes that pass
//!   - {port: 8000, path: /healthz}  #   from --probe-sources without a token
//!   - {port: 3306, type: tcp}
//!   failOpen: false                 # optional
//!   ips: [10.0.0.2]                 # optional; default: the netns's addresses
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::inbound::protocol::declared_by_port_name;
use crate::inbound::{Declared, PortSelection, Probe, ProbeCheck};

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
    /// Ports to steer into the verifier: `all` (the default) or a list.
    #[serde(default)]
    pub ports: Ports,
    /// Ports never steered.
    #[serde(default)]
    pub exclude_ports: Vec<u16>,
    /// Declared protocol per port.
    #[serde(default)]
    pub protocols: BTreeMap<u16, String>,
    #[serde(default)]
    pub probes: Vec<ProbeEntry>,
    #[serde(default)]
    pub fail_open: Option<bool>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// `ports:` — the word `all`, or a list of ports.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(untagged)]
pub enum Ports {
    #[default]
    #[serde(skip)]
    All,
    Word(String),
    List(Vec<u16>),
}

/// One entry of `probes:`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeEntry {
    pub port: u16,
    /// `http` (the default), `tcp` or `grpc`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Request target of an `http` probe (default `/`).
    #[serde(default)]
    pub path: Option<String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

impl Workload {
    /// `namespace/name`, the key used in logs, metrics and pin paths.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The steered ports (`parse` has validated the fields).
    pub fn port_selection(&self) -> PortSelection {
        let include = match &self.ports {
            Ports::All | Ports::Word(_) => None,
            Ports::List(list) => Some(list.iter().copied().collect()),
        };
        PortSelection::new(include, self.exclude_ports.iter().copied().collect())
    }

    /// Declared protocols (`parse` has validated the names).
    pub fn declared_protocols(&self) -> BTreeMap<u16, Declared> {
        self.protocols
            .iter()
            .filter_map(|(port, name)| Some((*port, declared_by_port_name(name)?)))
            .collect()
    }

    /// Probes (`parse` has validated the kinds).
    pub fn probes(&self) -> Vec<Probe> {
        self.probes
            .iter()
            .map(|p| match p.kind.as_deref() {
                Some("tcp") => Probe {
                    port: p.port,
                    check: ProbeCheck::Tcp,
                },
                Some("grpc") => Probe {
                    port: p.port,
                    check: ProbeCheck::Grpc,
                },
                _ => Probe::http(p.port, p.path.as_deref().unwrap_or("/")),
            })
            .collect()
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
        match &wl.ports {
            Ports::All => {}
            Ports::Word(w) if w == "all" => {}
            Ports::Word(w) => {
                bail!("workload {key}: `ports` is `all` or a list of ports, not {w:?}")
            }
            Ports::List(list) if list.is_empty() || list.contains(&0) => {
                bail!("workload {key}: `ports` must list at least one port, none of them 0")
            }
            Ports::List(_) => {}
        }
        if wl.exclude_ports.contains(&0) {
            bail!("workload {key}: `excludePorts` cannot contain 0");
        }
        if wl.port_selection().is_empty() {
            bail!("workload {key}: `excludePorts` removes every port of `ports`");
        }
        for (port, name) in &wl.protocols {
            if declared_by_port_name(name).is_none() {
                bail!("workload {key}: protocol {name:?} of port {port} is not http, tcp or an Istio port name (grpc, http2, mysql, …)");
            }
        }
        for p in &wl.probes {
            match p.kind.as_deref() {
                None | Some("http") => {}
                Some("tcp" | "grpc") if p.path.is_none() => {}
                Some("tcp" | "grpc") => bail!(
                    "workload {key}: a {} probe has no `path`",
                    p.kind.as_deref().unwrap_or("")
                ),
                Some(other) => {
                    bail!("workload {key}: probe type {other:?} is not http, tcp or grpc")
                }
            }
            if p.port == 0 {
                bail!("workload {key}: probe port 0");
            }
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
        assert_eq!(
            wls[0].port_selection(),
            PortSelection::Only([8000].into_iter().collect())
        );
        assert_eq!(wls[0].fail_open, None);
    }

    #[test]
    fn every_port_unless_listed() {
        let wls = parse(
            "workloads:\n- name: a\n  pid: 1\n- name: b\n  pid: 2\n  ports: all\n  excludePorts: [22]\n  \
             protocols: {3306: mysql, 8080: http}\n  probes:\n  - {port: 8080, path: healthz}\n  - {port: 3306, type: tcp}\n",
        )
        .unwrap();
        assert_eq!(wls[0].port_selection(), PortSelection::all());
        let b = &wls[1];
        assert!(!b.port_selection().steers(22) && b.port_selection().steers(23));
        assert_eq!(b.declared_protocols().get(&3306), Some(&Declared::Tcp));
        assert_eq!(b.declared_protocols().get(&8080), Some(&Declared::Http));
        assert_eq!(
            b.probes(),
            [
                Probe::http(8080, "/healthz"),
                Probe {
                    port: 3306,
                    check: ProbeCheck::Tcp
                }
            ]
        );
    }

    #[test]
    fn rejects_bad_entries_with_the_workload_named() {
        for (text, needle) in [
            ("workloads:\n- name: a\n  ports: [80]\n", "exactly one of"),
            ("workloads:\n- name: a\n  pid: 1\n  netns: /x\n  ports: [80]\n", "exactly one of"),
            ("workloads:\n- name: a\n  pid: 1\n  ports: []\n", "ports"),
            ("workloads:\n- name: a\n  pid: 1\n  ports: some\n", "not \"some\""),
            ("workloads:\n- name: a\n  pid: 1\n  ports: [80]\n  excludePorts: [80]\n", "every port"),
            ("workloads:\n- name: a\n  pid: 1\n  protocols: {80: gopher}\n", "gopher"),
            ("workloads:\n- name: a\n  pid: 1\n  probes: [{port: 80, type: udp}]\n", "udp"),
            ("workloads:\n- name: A_b\n  pid: 1\n  ports: [80]\n", "DNS"),
            ("workloads:\n- name: a\n  pid: 1\n  ports: [80]\n- name: a\n  pid: 2\n  ports: [81]\n", "twice"),
            ("workloads:\n- name: a\n  pid: 1\n  ports: [80]\n  colour: red\n", "colour"),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
