//! Kubelet probes. The kubelet probes a pod from the node, without a token,
//! so a policy that requires one would fail the probes and get the pod
//! restarted. Istio's sidecar rewrites HTTP probes to go through its agent;
//! ambient SNATs node-originated probes to a link-local address and lets that
//! source past its redirection. jwtgate exempts exactly what the pod spec
//! declares, and only from the node's own addresses (the caller checks the
//! source): an HTTP probe is `GET` on the declared port with the declared
//! path (query included), a gRPC probe is the health-check call on its port,
//! and a TCP (or HTTPS) probe is a connection to its port. Anything else from
//! the node — another path, another method, another port — goes through the
//! policies like every other request.

/// One probe a pod declares (liveness, readiness or startup).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Probe {
    pub port: u16,
    pub check: ProbeCheck,
}

/// What the kubelet does on the probe's port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeCheck {
    /// `httpGet` with scheme HTTP: `GET <path>`.
    Http { path: String },
    /// `tcpSocket`, and `httpGet` with scheme HTTPS (TLS is opaque to the
    /// verifier, so only the connection can be recognised).
    Tcp,
    /// `grpc`: `POST /grpc.health.v1.Health/Check` over h2c.
    Grpc,
}

/// The gRPC health-checking method the kubelet calls.
pub const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

impl Probe {
    /// An `httpGet` probe as the kubelet sends it: the path as a request
    /// target, `/` when empty or missing its leading slash.
    pub fn http(port: u16, path: &str) -> Probe {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Probe {
            port,
            check: ProbeCheck::Http { path },
        }
    }
}

/// Is an HTTP request (`method`, raw request target, destination port) one
/// of the declared probes? The target is compared byte for byte, before any
/// normalization: the kubelet sends exactly the declared path.
pub fn is_probe_request(probes: &[Probe], port: u16, method: &str, target: &str) -> bool {
    probes.iter().any(|p| {
        p.port == port
            && match &p.check {
                ProbeCheck::Http { path } => method == "GET" && target == path,
                ProbeCheck::Grpc => method == "POST" && target == GRPC_HEALTH_CHECK,
                ProbeCheck::Tcp => false,
            }
    })
}

/// Is a connection to `port` a declared connection-level probe?
pub fn is_probe_connection(probes: &[Probe], port: u16) -> bool {
    probes
        .iter()
        .any(|p| p.port == port && p.check == ProbeCheck::Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_declared_method_path_and_port() {
        let probes = [
            Probe::http(8080, "/healthz"),
            Probe::http(8080, "ready?full=1"),
            Probe {
                port: 9000,
                check: ProbeCheck::Grpc,
            },
            Probe {
                port: 5432,
                check: ProbeCheck::Tcp,
            },
        ];
        assert!(is_probe_request(&probes, 8080, "GET", "/healthz"));
        assert!(is_probe_request(&probes, 8080, "GET", "/ready?full=1"));
        assert!(is_probe_request(&probes, 9000, "POST", GRPC_HEALTH_CHECK));
        for (port, method, target) in [
            (8080, "POST", "/healthz"),
            (8080, "HEAD", "/healthz"),
            (8080, "GET", "/healthz/"),
            (8080, "GET", "/healthz?x=1"),
            (8080, "GET", "//healthz"),
            (8080, "GET", "/HEALTHZ"),
            (8081, "GET", "/healthz"),
            (8080, "GET", "/ready"),
            (9000, "GET", GRPC_HEALTH_CHECK),
            (5432, "GET", "/"),
        ] {
            assert!(
                !is_probe_request(&probes, port, method, target),
                "{method} {target} on {port}"
            );
        }
        assert!(is_probe_connection(&probes, 5432));
        assert!(!is_probe_connection(&probes, 8080));
    }
}
