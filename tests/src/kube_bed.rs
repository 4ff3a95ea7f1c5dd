//! `KubeBed`: a [`TestNode`] whose pods also exist as Pod objects in a real
//! kube-apiserver ([`ApiServer`]), and the agent running `--kube` against it
//! with the agent's own token (the RBAC of deploy/), not the admin's.
//!
//! A pod is a network namespace with the echo app, plus a Pod object with
//! `spec.nodeName` = this node, its labels and container ports, and
//! `status.podIP` patched to the namespace's address — what the agent's
//! watchers, pod → netns lookup and enrolment need.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agent::{binary, workspace_root};
use crate::apiserver::{require_binaries, ApiServer};
use crate::sandbox::Sandbox;
use crate::topology::{Client, PodHandle, PodSpec, TestNode};
use crate::Response;

/// How long a change may take to show in the answers (the goal is < 1 s).
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The test bed. Fields drop in order: the pods' sandbox processes, the node
/// (agent first), then the servers.
pub struct KubeBed {
    sandboxes: Vec<Sandbox>,
    pub node: TestNode,
    pub api: ApiServer,
    pub client: Client,
    pub node_name: String,
}

impl KubeBed {
    /// Node, API server with the Istio CRDs and deploy/'s namespace and RBAC,
    /// and a client netns. `None` when the test must be skipped.
    pub fn build(tag: &str) -> Result<Option<KubeBed>> {
        if !crate::require_privileges() {
            return Ok(None);
        }
        let Some(bins) = require_binaries() else {
            return Ok(None);
        };
        let mut node = TestNode::new(tag)?;
        let api = ApiServer::start(bins, &node.dir().join("k8s"))?;
        install_deploy(&api)?;
        let client = node.add_client("client")?;
        let node_name = format!("{}-node", node.prefix());
        Ok(Some(KubeBed {
            sandboxes: Vec::new(),
            node,
            api,
            client,
            node_name,
        }))
    }

    /// A pod netns with the echo app on `spec`'s ports, and its Pod object
    /// on this node with the container ports and status.podIP.
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<PodHandle> {
        let pod = self.node.add_pod(spec)?;
        self.api.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n",
            pod.spec.namespace
        ))?;
        self.apply_pod(&pod, &pod.spec.labels)?;
        self.api
            .set_pod_ip(&pod.spec.namespace, &pod.spec.name, &pod.ip.to_string())?;
        self.start_sandbox(&pod)?;
        Ok(pod)
    }

    /// A pod as a runtime has it at CNI ADD: the namespace with its address
    /// and app, the Pod object scheduled on this node — but no IP in its
    /// status yet and no sandbox process for the agent to find.
    pub fn add_pod_before_cni(&mut self, spec: PodSpec) -> Result<PodHandle> {
        let pod = self.node.add_pod(spec)?;
        self.api.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n",
            pod.spec.namespace
        ))?;
        self.apply_pod(&pod, &pod.spec.labels)?;
        Ok(pod)
    }

    /// The pod's "pause process": what the agent finds the pod's netns by.
    /// Call again after re-creating the Pod object (a new UID).
    pub fn start_sandbox(&mut self, pod: &PodHandle) -> Result<()> {
        let uid = self.api.pod_uid(&pod.spec.namespace, &pod.spec.name)?;
        let sandbox = Sandbox::start(&pod.netns, self.node.prefix(), &uid)?;
        self.sandboxes.push(sandbox);
        Ok(())
    }

    /// (Re)apply the Pod object with these labels.
    pub fn apply_pod(&self, pod: &PodHandle, labels: &[(String, String)]) -> Result<()> {
        self.apply_pod_annotated(pod, labels, &[])
    }

    /// (Re)apply the Pod object with these labels and annotations.
    pub fn apply_pod_annotated(
        &self,
        pod: &PodHandle,
        labels: &[(String, String)],
        annotations: &[(&str, &str)],
    ) -> Result<()> {
        let annotations: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let ports: Vec<serde_json::Value> = pod
            .spec
            .mesh_ports
            .iter()
            .map(|p| serde_json::json!({"containerPort": p}))
            .collect();
        let obj = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.spec.name, "namespace": pod.spec.namespace, "labels": labels, "annotations": annotations},
            "spec": {"nodeName": self.node_name, "containers": [
                {"name": "app", "image": "example.invalid/echo", "ports": ports}]}
        });
        self.api.apply(&obj.to_string())
    }

    pub fn delete_pod(&self, pod: &PodHandle) -> Result<()> {
        self.api
            .delete("v1", "Pod", &pod.spec.namespace, &pod.spec.name)
    }

    /// Start `jwtgate agent --kube` with the agent's kubeconfig; returns
    /// once /readyz is 200 (first full sync done, eBPF attached).
    pub fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with_args(&[])
    }

    /// `start_agent` with more flags.
    pub fn start_agent_with_args(&mut self, extra: &[&str]) -> Result<()> {
        let bin = binary()?;
        let kubeconfig = self.api.agent_kubeconfig();
        let node_name = self.node_name.clone();
        self.node.start_agent_with(|files, metrics| {
            let mut cmd = Command::new(&bin);
            cmd.arg("agent")
                .arg("--kube")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .arg("--pin-root")
                .arg(&files.pin_root)
                .arg("--metrics-addr")
                .arg(metrics.to_string())
                .args(crate::agent::JWKS_ON_LOOPBACK)
                .args(extra)
                .env("NODE_NAME", &node_name)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .env("NO_COLOR", "1");
            Ok(cmd)
        })?;
        Ok(())
    }

    /// GET `path` on the pod's first mesh port from the client netns.
    pub fn get(&self, pod: &PodHandle, path: &str, token: Option<&str>) -> Result<Response> {
        self.client.get(pod.mesh_addr(), path, token)
    }

    /// Poll until `check` accepts the answer to `GET path`, or fail with the
    /// last answer and the agent's log.
    pub fn eventually(
        &self,
        pod: &PodHandle,
        path: &str,
        token: Option<&str>,
        what: &str,
        check: impl Fn(&Response) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < CHANGE_TIMEOUT {
            match self.get(pod, path, token) {
                Ok(r) if check(&r) => return Ok(start.elapsed()),
                Ok(r) => last = format!("{} {}", r.status, r.text()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{what}: not within {CHANGE_TIMEOUT:?} for GET {path} (last: {last})\n{}\n--- apiserver\n{}",
            self.node.agent_log(),
            self.api.log()
        )
    }
}

/// What the agent needs from deploy/ in a fresh API server: the Istio CRDs
/// (returns once they are served), the agent's namespace and its RBAC.
pub fn install_deploy(api: &ApiServer) -> Result<()> {
    let deploy = workspace_root().join("deploy");
    for file in [
        "istio-crds/requestauthentications.security.istio.io.yaml",
        "istio-crds/authorizationpolicies.security.istio.io.yaml",
        "namespace.yaml",
        "rbac.yaml",
    ] {
        api.apply(&read(&deploy.join(file))?)
            .with_context(|| format!("applying deploy/{file}"))?;
    }
    wait_served(api)
}

/// Served by the verifier (it forwards from 127.0.0.6)?
pub fn proxied(r: &Response) -> bool {
    r.json()
        .ok()
        .and_then(|j| j["peer"].as_str().map(|p| p.starts_with("127.0.0.6:")))
        .unwrap_or(false)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// CRDs take a moment to be Established and served.
fn wait_served(api: &ApiServer) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: jg-probe, namespace: default}\nspec: {}\n";
        match api.apply(probe) {
            Ok(()) => {
                return api.delete(
                    "security.istio.io/v1",
                    "AuthorizationPolicy",
                    "default",
                    "jg-probe",
                )
            }
            Err(e) if Instant::now() > deadline => return Err(e.context("Istio CRDs not served")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
