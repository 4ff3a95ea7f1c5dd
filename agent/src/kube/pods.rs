//! A Pod on this node → the workload the enroller may protect. Pure.
//!
//! Mesh ports are the pod's TCP container ports, or the `jwtgate.io/ports`
//! annotation (`"8000,9080"`) when set; `jwtgate.io/inject: "false"` on the
//! pod (annotation or label) or on its namespace (label) opts it out;
//! `jwtgate.io/fail-open: "true"` lets its ports through while no agent
//! runs. Whether it is enrolled at all depends on a policy selecting it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use crate::enroll::{NetnsRef, WorkloadSpec};

pub const ANNOTATION_PORTS: &str = "jwtgate.io/ports";
pub const ANNOTATION_INJECT: &str = "jwtgate.io/inject";
pub const ANNOTATION_FAIL_OPEN: &str = "jwtgate.io/fail-open";

/// Why a pod is not a candidate (debug logs, tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    HostNetwork,
    NoIp,
    Finished,
    OptedOut,
    NoPorts,
    BadPortsAnnotation(String),
}

/// Is the namespace opted out (`jwtgate.io/inject=false` label)?
pub fn namespace_opted_out(ns: &Namespace) -> bool {
    ns.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ANNOTATION_INJECT))
        .is_some_and(|v| v == "false")
}

/// The workload for `pod`, or why there is none.
pub fn workload(pod: &Pod, namespace_opted_out: bool) -> Result<WorkloadSpec, Skip> {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        // Shares the node's namespace: steering it would capture the node.
        return Err(Skip::HostNetwork);
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Err(Skip::Finished);
    }
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let labels = meta.labels.clone().unwrap_or_default();
    if namespace_opted_out
        || annotations
            .get(ANNOTATION_INJECT)
            .is_some_and(|v| v == "false")
        || labels.get(ANNOTATION_INJECT).is_some_and(|v| v == "false")
    {
        return Err(Skip::OptedOut);
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    // IPv4 first: the namespace is looked up by the first address.
    ips.sort_by_key(|ip| !ip.is_ipv4());
    let Some(first) = ips.first().copied() else {
        return Err(Skip::NoIp);
    };
    let ports = match annotations.get(ANNOTATION_PORTS) {
        Some(list) => parse_ports(list).map_err(Skip::BadPortsAnnotation)?,
        None => container_ports(&spec),
    };
    if ports.is_empty() {
        return Err(Skip::NoPorts);
    }
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    Ok(WorkloadSpec {
        key: format!("{namespace}/{name}"),
        namespace,
        labels,
        netns: NetnsRef::OwnerOf(first),
        ips,
        ports,
        fail_open: annotations
            .get(ANNOTATION_FAIL_OPEN)
            .map(|v| v.eq_ignore_ascii_case("true")),
        always: false,
        instance: meta.uid.clone().unwrap_or_default(),
    })
}

/// TCP container ports (protocol defaults to TCP), sorted, unique.
fn container_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<u16> {
    let mut ports: Vec<u16> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// `"8000, 9080"` → `[8000, 9080]`.
fn parse_ports(list: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(p) if p != 0 => ports.push(p),
            _ => return Err(format!("{ANNOTATION_PORTS}: {item:?} is not a port")),
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": "web", "namespace": "foo", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "a", "image": "x", "ports": [
                    {"containerPort": 9080}, {"containerPort": 53, "protocol": "UDP"}]},
                {"name": "b", "image": "x", "ports": [{"containerPort": 8000, "protocol": "TCP"}]}
            ]},
            "status": {"podIP": "10.1.2.3", "podIPs": [{"ip": "fd00::3"}, {"ip": "10.1.2.3"}]}
        })
    }

    #[test]
    fn tcp_container_ports_and_ipv4_first() {
        let wl = workload(&pod(base()), false).unwrap();
        assert_eq!(wl.key, "foo/web");
        assert_eq!(wl.ports, [8000, 9080]);
        assert_eq!(wl.netns, NetnsRef::OwnerOf("10.1.2.3".parse().unwrap()));
        assert_eq!(wl.ips.len(), 2);
        assert_eq!(wl.instance, "u1");
        assert!(
            !wl.always,
            "pods are enrolled only when a policy selects them"
        );
    }

    #[test]
    fn annotations_override_and_opt_out() {
        let mut v = base();
        v["metadata"]["annotations"] =
            serde_json::json!({"jwtgate.io/ports": "7000, 7001", "jwtgate.io/fail-open": "true"});
        let wl = workload(&pod(v.clone()), false).unwrap();
        assert_eq!(wl.ports, [7000, 7001]);
        assert_eq!(wl.fail_open, Some(true));

        v["metadata"]["annotations"] = serde_json::json!({"jwtgate.io/ports": "http"});
        assert!(matches!(
            workload(&pod(v.clone()), false),
            Err(Skip::BadPortsAnnotation(_))
        ));
        v["metadata"]["annotations"] = serde_json::json!({"jwtgate.io/inject": "false"});
        assert_eq!(workload(&pod(v), false), Err(Skip::OptedOut));
        assert_eq!(workload(&pod(base()), true), Err(Skip::OptedOut));
    }

    #[test]
    fn pods_that_cannot_be_steered_are_skipped() {
        let mut v = base();
        v["spec"]["hostNetwork"] = true.into();
        assert_eq!(workload(&pod(v), false), Err(Skip::HostNetwork));
        let mut v = base();
        v["status"] = serde_json::json!({"phase": "Pending"});
        assert_eq!(workload(&pod(v), false), Err(Skip::NoIp));
        let mut v = base();
        v["status"]["phase"] = "Succeeded".into();
        assert_eq!(workload(&pod(v), false), Err(Skip::Finished));
        let mut v = base();
        v["spec"]["containers"] = serde_json::json!([{"name": "a", "image": "x"}]);
        assert_eq!(workload(&pod(v), false), Err(Skip::NoPorts));
    }
}
