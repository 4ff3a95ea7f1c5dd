//! The files a one-node cluster is configured with: certificates and static
//! tokens, a kubeconfig per identity, containerd's config, the kubelet's
//! config and the CNI network. Pure text rendering, no I/O besides writing.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use super::{CLUSTER_DNS_DOMAIN, KUBERNETES_SERVICE_IP, NODE_IP, POD_CIDR};

/// One identity of the cluster: a static bearer token bound to a user and
/// groups, as `--token-auth-file` reads it, and the kubeconfig that uses it.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub file: &'static str,
    pub user: &'static str,
    pub groups: &'static str,
}

/// system:masters for the tests' kubectl; the bootstrap RBAC of 1.20 binds
/// the controller-manager, scheduler and kube-proxy users; the Node
/// authorizer handles `system:node:<name>` in group `system:nodes`.
pub fn identities(node: &'static str) -> [Identity; 5] {
    [
        Identity {
            file: "admin",
            user: "admin",
            groups: "system:masters",
        },
        Identity {
            file: "controller-manager",
            user: "system:kube-controller-manager",
            groups: "",
        },
        Identity {
            file: "scheduler",
            user: "system:kube-scheduler",
            groups: "",
        },
        Identity {
            file: "kubelet",
            user: node,
            groups: "system:nodes",
        },
        Identity {
            file: "proxy",
            user: "system:kube-proxy",
            groups: "",
        },
    ]
}

/// Writes `pki/` (CA, apiserver serving cert, service-account key pair),
/// `tokens.csv` and `<identity>.kubeconfig` for each identity into `dir`.
pub fn write_credentials(dir: &Path, node_user: &'static str) -> Result<()> {
    let pki = dir.join("pki");
    fs::create_dir_all(&pki)?;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "jwtgate-e2e node CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    // Every name and address the apiserver is reached by: the node address
    // (components, kubectl), the `kubernetes` Service's ClusterIP and names
    // (in-cluster clients such as the agent verify these).
    let sans: Vec<String> = [
        NODE_IP,
        KUBERNETES_SERVICE_IP,
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("kubernetes.default.svc.{CLUSTER_DNS_DOMAIN}")])
    .collect();
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(sans)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;
    fs::write(pki.join("ca.crt"), ca_cert.pem())?;
    fs::write(pki.join("apiserver.crt"), server_cert.pem())?;
    fs::write(pki.join("apiserver.key"), server_key.serialize_pem())?;
    // The ServiceAccount token signer (apiserver and controller-manager).
    let sa = KeyPair::generate()?;
    fs::write(pki.join("sa.key"), sa.serialize_pem())?;
    fs::write(pki.join("sa.pub"), sa.public_key_pem())?;

    let mut tokens = String::new();
    for (uid, id) in identities(node_user).iter().enumerate() {
        let token = format!("jwtgate-e2e-{}-token", id.file);
        let _ = writeln!(tokens, "{token},{},{},\"{}\"", id.user, uid + 1, id.groups);
        fs::write(
            dir.join(format!("{}.kubeconfig", id.file)),
            kubeconfig(&pki.join("ca.crt"), id.file, &token),
        )?;
    }
    fs::write(dir.join("tokens.csv"), tokens)?;
    Ok(())
}

fn kubeconfig(ca: &Path, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: node\n  cluster:\n    server: https://{NODE_IP}:6443\n    certificate-authority: {}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: node\n  context: {{cluster: node, user: {user}}}\n\
         current-context: node\n",
        ca.display()
    )
}

/// Where containerd and its CNI configuration live.
#[derive(Debug, Clone)]
pub struct RuntimePaths {
    /// containerd's `root` (images, snapshots): on disk, in the node's dir.
    pub root: PathBuf,
    /// The runc wrapper (`jwtgate-node-runc`) containerd runs instead of runc.
    pub runc: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub sandbox_image: String,
}

/// containerd 1.6 config (version 2). Everything not listed is the default;
/// `state` and the socket stay at their defaults under /run, which is private
/// to the node.
pub fn containerd_toml(p: &RuntimePaths) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    format!(
        r#"version = 2
root = {root}
state = "/run/containerd"
# Snapshotters that cannot work here (or need extra tools) only add noise.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  # Root here lacks CAP_SYS_RESOURCE, so no process may lower its OOM score
  # below containerd's own: without this the pod sandbox (-998) cannot start.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc behind a wrapper that drops from each spec the capabilities
        # this host's bounding set lacks (as podman does by itself).
        BinaryName = {runc}

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {bin}
    conf_dir = {conf}
"#,
        root = q(&p.root),
        opt = q(&p.root.join("opt")),
        sandbox = toml_string(&p.sandbox_image),
        runc = q(&p.runc),
        bin = q(&p.cni_bin_dir),
        conf = q(&p.cni_conf_dir),
    )
}

/// A TOML basic string (paths here have no control characters).
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The pod network: Debian's `bridge` plugin with `host-local` IPAM on
/// [`POD_CIDR`], the bridge's address as the pods' gateway, no masquerade
/// (nothing leaves the node). `chained` plugins follow it in the list — where
/// a CNI plugin such as istio-cni's would go.
pub fn cni_conflist(ipam_dir: &Path, chained: &[serde_json::Value]) -> String {
    let mut plugins = vec![serde_json::json!({
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        // A pod reaching itself through a ClusterIP comes back on its own port.
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": POD_CIDR}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        }
    })];
    plugins.extend(chained.iter().cloned());
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "0.4.0",
        "name": super::CNI_NETWORK,
        "plugins": plugins,
    }))
    .expect("JSON values serialise")
}

/// KubeletConfiguration for 1.20 on this host: cgroupfs driver (no systemd),
/// no swap check, the node's own cgroup root, no DNS (there is no CoreDNS
/// image and nothing may leave the node), eviction and image GC out of the
/// way (the images are imported, never pulled back), and container logs
/// rotated only past 500 MiB: the agents write an access-log line per
/// denial (thousands a second under the tests' load) and the tests follow
/// them with `kubectl logs -f`, which in 1.20 stops at a rotation — an
/// agent's last words would be lost.
pub fn kubelet_yaml(cgroup_root: &str) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
cgroupsPerQOS: true
failSwapOn: false
oomScoreAdj: 0
resolvConf: ""
clusterDomain: {CLUSTER_DNS_DOMAIN}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "50Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}}
serializeImagePulls: false
maxPods: 30
containerLogMaxSize: 500Mi
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_chains_plugins_after_the_bridge() {
        let extra = serde_json::json!({"type": "jwtgate-cni"});
        let v: serde_json::Value =
            serde_json::from_str(&cni_conflist(Path::new("/x"), &[extra])).unwrap();
        let types: Vec<&str> = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "jwtgate-cni"]);
        assert_eq!(v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], POD_CIDR);
    }

    #[test]
    fn containerd_config_names_the_wrapper_and_paths() {
        let p = RuntimePaths {
            root: "/tmp/n/containerd".into(),
            runc: "/t/jwtgate-node-runc".into(),
            cni_conf_dir: "/tmp/n/net.d".into(),
            cni_bin_dir: "/usr/lib/cni".into(),
            sandbox_image: "localhost/jwtgate-e2e/pause:3.4".into(),
        };
        let t = containerd_toml(&p);
        assert!(t.contains(r#"BinaryName = "/t/jwtgate-node-runc""#));
        assert!(t.contains("restrict_oom_score_adj = true"));
        assert!(t.contains(r#"conf_dir = "/tmp/n/net.d""#));
    }

    #[test]
    fn credentials_have_a_token_per_identity() {
        let dir = tempfile::tempdir().unwrap();
        write_credentials(dir.path(), "system:node:n1").unwrap();
        let tokens = fs::read_to_string(dir.path().join("tokens.csv")).unwrap();
        assert_eq!(tokens.lines().count(), 5);
        assert!(tokens.contains("system:node:n1,4,\"system:nodes\""));
        let kc = fs::read_to_string(dir.path().join("kubelet.kubeconfig")).unwrap();
        assert!(kc.contains("token: jwtgate-e2e-kubelet-token"));
    }
}
