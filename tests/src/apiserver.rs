//! A real Kubernetes API server for the Kubernetes-mode tests: etcd and
//! kube-apiserver (built from Debian's source package by `cargo xtask
//! build-kube`) on loopback ports, state in a temp dir, static tokens for an
//! admin and for the agent (`system:serviceaccount:jwtgate-system:jwtgate`,
//! so the agent runs with exactly the RBAC of `deploy/`), and a kubeconfig
//! for each. Stopped on drop.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::Scope;
use kube::{Api, Client};

use crate::jwks_server::free_loopback_port;
use crate::process::{detach_from_terminal, stop_child, tail};

/// The agent's identity: the ServiceAccount of deploy/.
pub const AGENT_USER: &str = "system:serviceaccount:jwtgate-system:jwtgate";
const ADMIN_TOKEN: &str = "jwtgate-e2e-admin-token";
const AGENT_TOKEN: &str = "jwtgate-e2e-agent-token";
/// Cold start of 1.20 on 2 cores takes 7–13 s.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Paths of the two binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
}

/// `$JWTGATE_KUBE_APISERVER` / `$JWTGATE_ETCD` (set by `cargo xtask test`),
/// else the build cache `~/.cache/jwtgate/kube/bin/`.
pub fn binaries() -> Option<Binaries> {
    let cache = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/jwtgate/kube/bin"))
        .unwrap_or_default();
    let pick = |var: &str, name: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| cache.join(name))
    };
    let b = Binaries {
        apiserver: pick("JWTGATE_KUBE_APISERVER", "kube-apiserver"),
        etcd: pick("JWTGATE_ETCD", "etcd"),
    };
    (b.apiserver.is_file() && b.etcd.is_file()).then_some(b)
}

/// The binaries, or a skip ([`crate::skip`]: a failure when `CI` is set, a
/// skipped Kubernetes suite must never look like a pass there).
pub fn require_binaries() -> Option<Binaries> {
    if let Some(b) = binaries() {
        return Some(b);
    }
    crate::skip("kube-apiserver/etcd not built; run `cargo xtask build-kube` (or `cargo xtask test`, which does)");
    None
}

/// A running etcd + kube-apiserver.
pub struct ApiServer {
    bins: Binaries,
    dir: PathBuf,
    addr: SocketAddr,
    etcd_url: String,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
}

impl ApiServer {
    /// Start both in `dir` (created) and wait until the API answers.
    pub fn start(bins: Binaries, dir: &Path) -> Result<ApiServer> {
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        write_credentials(&dir)?;
        let client_port = free_loopback_port()?;
        let peer_port = free_loopback_port()?;
        let etcd_url = format!("http://{client_port}");
        let mut etcd = Command::new(&bins.etcd);
        etcd.args(["--data-dir", &dir.join("etcd").to_string_lossy()])
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &format!("http://{peer_port}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{peer_port}"),
            ])
            .args(["--initial-cluster", &format!("default=http://{peer_port}")]);
        let etcd = spawn_logged(etcd, &dir.join("etcd.log"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut server = ApiServer {
            bins,
            dir,
            addr: free_loopback_port()?,
            etcd_url,
            etcd: Some(etcd),
            apiserver: None,
            rt,
            client: None,
        };
        server.start_apiserver()?;
        Ok(server)
    }

    /// Start (or restart after `stop_apiserver`) kube-apiserver on the same
    /// port and etcd, and wait until it serves.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            bail!("kube-apiserver is already running");
        }
        let d = |p: &str| self.dir.join(p).to_string_lossy().into_owned();
        let mut cmd = Command::new(&self.bins.apiserver);
        cmd.args(["--etcd-servers", &self.etcd_url])
            .args(["--secure-port", &self.addr.port().to_string()])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
            ])
            .args(["--cert-dir", &d("certs")])
            .args([
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
            ])
            .args(["--service-account-key-file", &d("sa.pub")])
            .args(["--service-account-signing-key-file", &d("sa.key")])
            .args(["--token-auth-file", &d("tokens.csv")])
            .args(["--authorization-mode", "RBAC"])
            // No controller-manager makes ServiceAccount tokens: without this
            // admission plugin off, Pods would be rejected.
            .args(["--disable-admission-plugins", "ServiceAccount"])
            .arg("--allow-privileged=true")
            .args(["--service-cluster-ip-range", "10.0.0.0/24"]);
        self.apiserver = Some(spawn_logged(cmd, &self.dir.join("apiserver.log"))?);
        self.wait_ready()
    }

    /// Kill kube-apiserver, as a crash would (etcd keeps the state). Its
    /// graceful SIGTERM path waits for seconds and shows nothing more.
    pub fn stop_apiserver(&mut self) -> Result<()> {
        if let Some(mut child) = self.apiserver.take() {
            child.kill()?;
            child.wait()?;
        }
        self.client = None;
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// kubeconfig with the agent's token (RBAC of deploy/).
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.dir.join("agent.kubeconfig")
    }

    /// The last lines of the apiserver's log.
    pub fn log(&self) -> String {
        tail(&self.dir.join("apiserver.log"), 40)
    }

    fn wait_ready(&mut self) -> Result<()> {
        // The serving certificate (with its CA appended) appears once the
        // apiserver has generated it.
        let cert = self.dir.join("certs/apiserver.crt");
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("not started");
        while Instant::now() < deadline {
            if let Some(child) = self.apiserver.as_mut() {
                if let Some(st) = child.try_wait()? {
                    self.apiserver = None;
                    bail!("kube-apiserver exited ({st}):\n{}", self.log());
                }
            }
            if cert.is_file() {
                self.write_kubeconfigs(&cert)?;
                match self.rt.block_on(probe(&self.dir.join("admin.kubeconfig"))) {
                    Ok(client) => {
                        self.client = Some(client);
                        return Ok(());
                    }
                    Err(e) => last = format!("{e:#}"),
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        bail!(
            "kube-apiserver not ready within {READY_TIMEOUT:?} ({last}):\n{}",
            self.log()
        )
    }

    fn write_kubeconfigs(&self, cert: &Path) -> Result<()> {
        use base64_engine::encode;
        let ca = encode(&fs::read(cert)?);
        for (file, user, token) in [
            ("admin.kubeconfig", "admin", ADMIN_TOKEN),
            ("agent.kubeconfig", "jwtgate", AGENT_TOKEN),
        ] {
            let mut y = String::new();
            let _ = write!(
                y,
                "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\n\
                 users:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: {user}}}\n\
                 current-context: e2e\n",
                self.url()
            );
            fs::write(self.dir.join(file), y)?;
        }
        Ok(())
    }

    fn client(&self) -> Result<Client> {
        self.client.clone().context("kube-apiserver is not running")
    }

    /// Run a future on this server's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Run `f` with a client that uses the agent's kubeconfig.
    pub fn as_agent<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        self.rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(self.agent_kubeconfig())?;
            let config = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?;
            Ok(f(Client::try_from(config)?).await)
        })
    }

    /// Create or replace every document of a YAML stream (any kind the
    /// server serves), as the admin.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        let client = self.client()?;
        self.rt.block_on(async {
            for doc in serde_yaml::Deserializer::from_str(yaml) {
                let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
                if value.is_null() {
                    continue;
                }
                let mut obj: DynamicObject = serde_json::from_value(value)?;
                let api = dynamic_api(&client, &obj).await?;
                let name = obj.metadata.name.clone().context("object without a name")?;
                // Create, else replace. Not server-side apply: 1.20 rejects
                // the Istio CRDs' newer schema fields in typed patches,
                // while create/replace prune them.
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        let current = api.get(&name).await?;
                        obj.metadata.resource_version = current.metadata.resource_version;
                        api.replace(&name, &PostParams::default(), &obj)
                            .await
                            .with_context(|| format!("replacing {name}"))?;
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("creating {name}"))),
                }
            }
            Ok(())
        })
    }

    /// Delete an object; a missing one is fine.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Result<()> {
        let client = self.client()?;
        let mut obj = DynamicObject::new(
            name,
            &kube::core::ApiResource {
                group: String::new(),
                version: String::new(),
                api_version: api_version.into(),
                kind: kind.into(),
                plural: String::new(),
            },
        );
        obj.types = Some(kube::core::TypeMeta {
            api_version: api_version.into(),
            kind: kind.into(),
        });
        if !namespace.is_empty() {
            obj.metadata.namespace = Some(namespace.into());
        }
        self.rt.block_on(async {
            let api = dynamic_api(&client, &obj).await?;
            match api
                .delete(
                    name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Set `status.podIP(s)` of a pod (there is no kubelet to do it).
    pub fn set_pod_ip(&self, namespace: &str, name: &str, ip: &str) -> Result<()> {
        let client = self.client()?;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, namespace);
        let patch = serde_json::json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        self.rt.block_on(pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ))?;
        Ok(())
    }

    /// The UID the API server gave the Pod.
    pub fn pod_uid(&self, namespace: &str, name: &str) -> Result<String> {
        let client = self.client()?;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, namespace);
        let pod = self.rt.block_on(pods.get(name))?;
        pod.metadata
            .uid
            .with_context(|| format!("pod {namespace}/{name} has no uid"))
    }

    /// Events (events.k8s.io) about the object `name`.
    pub fn events(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<k8s_openapi::api::events::v1::Event>> {
        let client = self.client()?;
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, namespace);
        let list = self.rt.block_on(events.list(&ListParams::default()))?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect())
    }

    /// `reason: note` of the Events about the object `name`.
    pub fn event_notes(&self, namespace: &str, name: &str) -> Result<Vec<String>> {
        Ok(self
            .events(namespace, name)?
            .into_iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                )
            })
            .collect())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop_apiserver();
        for (child, what) in [(self.etcd.take(), "etcd")] {
            if let Some(child) = child {
                if let Err(e) = stop_child(child, what, Duration::from_secs(10)) {
                    eprintln!("jwtgate-e2e: stopping {what}: {e:#}");
                }
            }
        }
    }
}

async fn probe(kubeconfig: &Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let client = Client::try_from(config)?;
    // Ready when the bootstrap namespaces exist (RBAC bootstrap runs too).
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.get("default").await?;
    Ok(client)
}

async fn dynamic_api(client: &Client, obj: &DynamicObject) -> Result<Api<DynamicObject>> {
    let types = obj
        .types
        .as_ref()
        .context("object without apiVersion/kind")?;
    let (group, version) = match types.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", types.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &types.kind);
    // Right after a (re)start, CRD-backed kinds take a few seconds to be
    // served again: retry discovery for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (ar, caps) = loop {
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok(found) => break found,
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow::Error::new(e).context(format!(
                    "{} {} is not served",
                    types.api_version, types.kind
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    Ok(match (caps.scope, obj.metadata.namespace.as_deref()) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
    })
}

/// Static tokens and the ServiceAccount signing key pair.
fn write_credentials(dir: &Path) -> Result<()> {
    fs::write(
        dir.join("tokens.csv"),
        format!(
            "{ADMIN_TOKEN},admin,1,\"system:masters\"\n\
             {AGENT_TOKEN},{AGENT_USER},2,\"system:serviceaccounts,system:serviceaccounts:jwtgate-system\"\n"
        ),
    )?;
    // ECDSA P-256 (the apiserver accepts RSA or ECDSA keys): made in-process,
    // so no openssl binary is needed.
    let key = rcgen::KeyPair::generate().context("generating the service-account key")?;
    fs::write(dir.join("sa.key"), key.serialize_pem())?;
    fs::write(dir.join("sa.pub"), key.public_key_pem())?;
    Ok(())
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child> {
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    detach_from_terminal(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))
}

/// Standard base64 for kubeconfig `*-data` fields (tiny; no crate needed).
mod base64_engine {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
    #[test]
    fn matches_rfc4648() {
        assert_eq!(encode(b"foob"), "Zm9vYg==");
        assert_eq!(encode(b"fooba"), "Zm9vYmE=");
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
    }
}
