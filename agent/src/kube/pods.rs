//! A Pod on this node → the workload the enroller may protect. Pure.
//!
//! Every TCP port of the pod is steered unless its annotations say otherwise
//! (`inbound::ports`: Istio's `traffic.sidecar.istio.io/*InboundPorts` and
//! jwtgate's own spelling); a malformed annotation steers every port and is
//! reported on the pod. Container port names declare protocols the Istio way
//! (`http-…`, `tcp-…`, `grpc`, `mysql`…); the pod's liveness, readiness and
//! startup probes are what the kubelet may send without a token.
//! `jwtgate.io/inject: "false"` on the pod (annotation or label) or on its
//! namespace (label) opts it out; `jwtgate.io/fail-open: "true"` lets its
//! ports through while no agent runs. Whether it is enrolled at all depends
//! on a policy selecting it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod, Probe as K8sProbe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cni::Sandbox;
use crate::enroll::{NetnsRef, WorkloadSpec};
use crate::inbound::ports::{self, BadAnnotation};
use crate::inbound::protocol::declared_by_port_name;
use crate::inbound::{Declared, PortSelection, Probe, ProbeCheck};

pub const ANNOTATION_INJECT: &str = "jwtgate.io/inject";
pub const ANNOTATION_FAIL_OPEN: &str = "jwtgate.io/fail-open";

/// Why a pod is not a candidate (debug logs, tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    HostNetwork,
    NoIp,
    Finished,
    OptedOut,
    /// An empty include list (`includeInboundPorts: ""`): inbound capture
    /// disabled, as in Istio.
    CaptureDisabled,
}

/// A candidate pod, and what its owner should be told about it.
#[derive(Debug, PartialEq, Eq)]
pub struct Candidate {
    pub spec: WorkloadSpec,
    /// A port annotation that did not parse (every port is steered instead).
    pub bad_annotation: Option<BadAnnotation>,
}

/// Is the namespace opted out (`jwtgate.io/inject=false` label)?
pub fn namespace_opted_out(ns: &Namespace) -> bool {
    ns.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ANNOTATION_INJECT))
        .is_some_and(|v| v == "false")
}

/// The workload for `pod`, or why there is none. `sandbox`: the namespace
/// the runtime handed over at CNI ADD, which then is the pod's namespace
/// (and gives its addresses before the API server has them).
pub fn workload(
    pod: &Pod,
    namespace_opted_out: bool,
    sandbox: Option<&Sandbox>,
) -> Result<Candidate, Skip> {
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
    if ips.is_empty() {
        ips.extend(sandbox.iter().flat_map(|s| s.ips.iter().copied()));
    }
    ips.sort();
    ips.dedup();
    let Some(first) = ips.first().copied() else {
        return Err(Skip::NoIp);
    };
    let (ports, bad_annotation) = match ports::from_annotations(annotations) {
        Ok(ports) => (ports, None),
        // Fail closed: a typo in an exclusion must not open a port.
        Err(bad) => (PortSelection::all(), Some(bad)),
    };
    if ports.is_empty() {
        return Err(Skip::CaptureDisabled);
    }
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    Ok(Candidate {
        spec: WorkloadSpec {
            key: format!("{namespace}/{name}"),
            namespace,
            labels,
            netns: match sandbox {
                Some(sandbox) => NetnsRef::Path(sandbox.netns.clone()),
                None => NetnsRef::Pod {
                    uid: uid.clone(),
                    ip: first,
                },
            },
            ips,
            ports,
            protocols: declared_protocols(&spec.containers),
            probes: probes(&spec.containers),
            fail_open: annotations
                .get(ANNOTATION_FAIL_OPEN)
                .map(|v| v.eq_ignore_ascii_case("true")),
            always: false,
            instance: uid,
        },
        bad_annotation,
    })
}

/// Protocols declared by TCP container port names (Istio reads Service port
/// names; a node agent watching only Pods reads the container's, which
/// charts usually name the same way).
fn declared_protocols(containers: &[Container]) -> BTreeMap<u16, Declared> {
    containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = u16::try_from(p.container_port).ok()?;
            Some((port, declared_by_port_name(p.name.as_deref()?)?))
        })
        .collect()
}

/// Every liveness, readiness and startup probe of the pod's containers that
/// reaches the network (exec probes do not).
fn probes(containers: &[Container]) -> Vec<Probe> {
    let mut out: Vec<Probe> = containers
        .iter()
        .flat_map(|c| {
            [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
                .into_iter()
                .flatten()
                .filter_map(move |p| probe(c, p))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn probe(container: &Container, p: &K8sProbe) -> Option<Probe> {
    if let Some(get) = &p.http_get {
        let port = resolve_port(container, &get.port)?;
        return Some(if get.scheme.as_deref() == Some("HTTPS") {
            Probe {
                port,
                check: ProbeCheck::Tcp,
            }
        } else {
            Probe::http(port, get.path.as_deref().unwrap_or("/"))
        });
    }
    if let Some(tcp) = &p.tcp_socket {
        return Some(Probe {
            port: resolve_port(container, &tcp.port)?,
            check: ProbeCheck::Tcp,
        });
    }
    let grpc = p.grpc.as_ref()?;
    Some(Probe {
        port: u16::try_from(grpc.port).ok()?,
        check: ProbeCheck::Grpc,
    })
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve_port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::ports::{ISTIO_EXCLUDE, JWTGATE_PORTS};

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": "web", "namespace": "foo", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "a", "image": "x", "ports": [
                    {"containerPort": 9080, "name": "http-web"}, {"containerPort": 53, "protocol": "UDP", "name": "tcp-dns"},
                    {"containerPort": 3306, "name": "mysql"}],
                 "readinessProbe": {"httpGet": {"port": "http-web", "path": "/ready"}},
                 "livenessProbe": {"tcpSocket": {"port": 3306}}},
                {"name": "b", "image": "x", "ports": [{"containerPort": 8000, "protocol": "TCP"}],
                 "startupProbe": {"grpc": {"port": 8000}},
                 "livenessProbe": {"exec": {"command": ["true"]}}}
            ]},
            "status": {"podIP": "10.1.2.3", "podIPs": [{"ip": "fd00::3"}, {"ip": "10.1.2.3"}]}
        })
    }

    #[test]
    fn every_port_both_families_declared_protocols_and_probes() {
        let c = workload(&pod(base()), false, None).unwrap();
        let wl = c.spec;
        assert_eq!(c.bad_annotation, None);
        assert_eq!(wl.key, "foo/web");
        assert_eq!(wl.ports, PortSelection::all());
        assert_eq!(
            wl.netns,
            NetnsRef::Pod {
                uid: "u1".into(),
                ip: "10.1.2.3".parse().unwrap()
            }
        );
        assert_eq!(
            wl.ips,
            [
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "fd00::3".parse().unwrap()
            ]
        );
        assert_eq!(wl.instance, "u1");
        assert_eq!(
            wl.protocols,
            BTreeMap::from([(3306, Declared::Tcp), (9080, Declared::Http)])
        );
        assert_eq!(
            wl.probes,
            [
                Probe {
                    port: 3306,
                    check: ProbeCheck::Tcp
                },
                Probe {
                    port: 8000,
                    check: ProbeCheck::Grpc
                },
                Probe::http(9080, "/ready"),
            ]
        );
        assert!(
            !wl.always,
            "pods are enrolled only when a policy selects them"
        );
    }

    #[test]
    fn an_ipv6_only_pod_is_a_candidate() {
        let mut v = base();
        v["status"] = serde_json::json!({"podIP": "fd00::7", "podIPs": [{"ip": "fd00::7"}]});
        let wl = workload(&pod(v), false, None).unwrap().spec;
        assert_eq!(wl.ips, ["fd00::7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn annotations_select_ports_and_opt_out() {
        let mut v = base();
        v["metadata"]["annotations"] =
            serde_json::json!({JWTGATE_PORTS: "7000, 7001", "jwtgate.io/fail-open": "true"});
        let wl = workload(&pod(v.clone()), false, None).unwrap().spec;
        assert_eq!(wl.ports, PortSelection::Only([7000, 7001].into()));
        assert_eq!(wl.fail_open, Some(true));

        v["metadata"]["annotations"] = serde_json::json!({ISTIO_EXCLUDE: "22"});
        let wl = workload(&pod(v.clone()), false, None).unwrap().spec;
        assert_eq!(
            wl.ports,
            PortSelection::All {
                exclude: [22].into()
            }
        );

        v["metadata"]["annotations"] =
            serde_json::json!({"traffic.sidecar.istio.io/includeInboundPorts": ""});
        assert_eq!(
            workload(&pod(v.clone()), false, None),
            Err(Skip::CaptureDisabled)
        );

        v["metadata"]["annotations"] = serde_json::json!({"jwtgate.io/inject": "false"});
        assert_eq!(workload(&pod(v), false, None), Err(Skip::OptedOut));
        assert_eq!(workload(&pod(base()), true, None), Err(Skip::OptedOut));
    }

    #[test]
    fn a_cni_sandbox_names_the_namespace_and_gives_the_addresses() {
        let mut v = base();
        v["status"] = serde_json::json!({"phase": "Pending"});
        let sandbox = Sandbox {
            netns: "/var/run/netns/cni-1".into(),
            ips: vec!["10.1.2.9".parse().unwrap()],
        };
        let wl = workload(&pod(v), false, Some(&sandbox)).unwrap().spec;
        assert_eq!(wl.netns, NetnsRef::Path("/var/run/netns/cni-1".into()));
        assert_eq!(wl.ips, sandbox.ips);
    }

    #[test]
    fn a_malformed_port_annotation_steers_every_port_and_is_reported() {
        let mut v = base();
        v["metadata"]["annotations"] =
            serde_json::json!({ISTIO_EXCLUDE: "22,ssh", JWTGATE_PORTS: "80"});
        let c = workload(&pod(v), false, None).unwrap();
        assert_eq!(c.spec.ports, PortSelection::all());
        let bad = c.bad_annotation.expect("reported");
        assert_eq!(bad.annotation, ISTIO_EXCLUDE);
    }

    #[test]
    fn pods_that_cannot_be_steered_are_skipped() {
        let mut v = base();
        v["spec"]["hostNetwork"] = true.into();
        assert_eq!(workload(&pod(v), false, None), Err(Skip::HostNetwork));
        let mut v = base();
        v["status"] = serde_json::json!({"phase": "Pending"});
        assert_eq!(workload(&pod(v), false, None), Err(Skip::NoIp));
        let mut v = base();
        v["status"]["phase"] = "Succeeded".into();
        assert_eq!(workload(&pod(v), false, None), Err(Skip::Finished));
    }
}
