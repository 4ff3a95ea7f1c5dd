//! `Node`: a real one-node Kubernetes 1.20 cluster on this machine — etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, containerd (runc,
//! bridge CNI), the kubelet and kube-proxy — for tests that need what only a
//! real node does: a DaemonSet scheduled and run by a kubelet with its
//! securityContext and probes, real pods with CNI addresses, ClusterIPs.
//!
//! Kept apart from the host, the way a kind node container would be:
//!
//! - **Network**: every daemon runs in a network namespace of its own
//!   (`jg-node-<pid>-<n>`) with an interface of its own carrying the node
//!   address and the default route (a bridge without ports, in place of a
//!   dummy interface), and the pods' bridge. It has no link to the host's
//!   network at all, so nothing can leave the machine (nor reach the host);
//!   kube-proxy's and the kubelet's iptables rules, `ip_forward` and the
//!   bridge live and die with it. The tests reach the cluster from threads
//!   inside it ([`Node::run`]).
//! - **Mounts**: the daemons share a private mount namespace
//!   ([`host::MountNs`]) with their own `/run`, `/var/lib`, `/var/log`, a
//!   bpffs at `/sys/fs/bpf` and masked kernel-wide sysctls.
//! - **Processes**: all in one cgroup tree ([`host::Cgroups`], also the
//!   kubelet's `cgroupRoot`), killed as a whole on teardown.
//! - **Sysctls**: the kubelet's kernel-wide ones are recorded and restored
//!   ([`host::Sysctls`]), besides being masked.
//!
//! Teardown runs from `Drop` too, so a failing test leaves nothing; a run
//! killed outright is cleaned up by the next [`Node::start`] (leftovers of
//! dead pids only).

pub mod config;
pub mod host;
mod inputs;
pub mod runc_caps;

pub use inputs::{
    binaries, binaries_in, require_test_inputs, test_inputs, NodeBinaries, NodeSetup, TestInputs,
};

use std::fs::{self, File};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::NetNs;
use crate::process::tail;

/// The node's name (its own API server, so it needs no uniqueness).
pub const NODE_NAME: &str = "jwtgate-node";
const NODE_USER: &str = "system:node:jwtgate-node";
/// The node address, on its own interface inside the node's namespace.
pub const NODE_IP: &str = "10.250.0.1";
const NODE_IF: &str = "jgnode0";
pub const POD_CIDR: &str = "10.244.0.0/24";
pub const SERVICE_CIDR: &str = "10.96.0.0/24";
/// The `kubernetes` Service: the first address of [`SERVICE_CIDR`].
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
pub const CLUSTER_DNS_DOMAIN: &str = "cluster.local";
/// The sandbox image, built from the same source tree (`cargo xtask node`).
pub const PAUSE_IMAGE: &str = "localhost/jwtgate-e2e/pause:3.4";
/// The test pods' image (`jwtgate-testpod`), imported by the tests that use it.
pub const TESTPOD_IMAGE: &str = "localhost/jwtgate-e2e/testpod:e2e";

/// Bring-up steps, each bounded.
const API_TIMEOUT: Duration = Duration::from_secs(120);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(180);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How long the bring-up took, step by step.
#[derive(Debug, Clone, Default)]
pub struct BringUp {
    pub api_ready: Duration,
    pub runtime_ready: Duration,
    pub node_ready: Duration,
}

/// A running one-node cluster. See the module docs.
pub struct Node {
    name: String,
    setup: NodeSetup,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    sysctls: host::Sysctls,
    cgroups: Option<host::Cgroups>,
    netns: Option<NetNs>,
    netns_file: Option<File>,
    mnt: Option<host::MountNs>,
    procs: Option<File>,
    daemons: Vec<(String, Child)>,
    pub bring_up: BringUp,
    torn_down: bool,
}

impl Node {
    /// Builds and starts everything; returns once the node is Ready and the
    /// `default` ServiceAccount exists (pods can be created).
    pub fn start(setup: NodeSetup) -> Result<Node> {
        let started = Instant::now();
        let removed = host::remove_stale("jg-node-")?;
        if !removed.is_empty() {
            eprintln!("jwtgate-e2e: removed leftovers of killed node runs: {removed:?}");
        }
        let name = format!(
            "jg-node-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}."))
            .tempdir()
            .context("creating the node's directory")?;
        let path = dir.path().canonicalize()?;
        let mut node = Node {
            name: name.clone(),
            setup,
            dir: Some(dir),
            path,
            sysctls: host::Sysctls::record()?,
            cgroups: None,
            netns: None,
            netns_file: None,
            mnt: None,
            procs: None,
            daemons: Vec::new(),
            bring_up: BringUp::default(),
            torn_down: false,
        };
        // From here on, an error drops `node`, which tears down what exists.
        node.build_host()?;
        node.start_control_plane()?;
        node.bring_up.api_ready = started.elapsed();
        node.start_runtime()?;
        node.bring_up.runtime_ready = started.elapsed();
        node.start_kubelet()?;
        node.bring_up.node_ready = started.elapsed();
        Ok(node)
    }

    /// The namespace, mounts, cgroups and configuration files.
    fn build_host(&mut self) -> Result<()> {
        let cgroups = host::Cgroups::create(&self.name)?;
        self.procs = Some(cgroups.node_procs()?);
        self.cgroups = Some(cgroups);

        let ns = NetNs::create(&self.name)?;
        // The node's own interface: a bridge without ports, standing in for
        // a dummy interface (this kernel has no dummy driver and cannot load
        // modules). Its address is local; what is routed to it is dropped.
        ns.ip(&["link", "add", NODE_IF, "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", NODE_IF])?;
        ns.ip(&["link", "set", NODE_IF, "up"])?;
        // Anything not on the node goes to that bridge, which drops it: Service
        // ClusterIPs get a route (so kube-proxy's DNAT in OUTPUT can see
        // them), and nothing has a way out.
        ns.ip(&["route", "add", "default", "dev", NODE_IF])?;
        self.netns_file = Some(File::open(ns.path())?);
        self.netns = Some(ns);
        // Pods on the bridge reach ClusterIPs on the same bridge only when
        // bridged packets pass iptables (per namespace since Linux 5.3).
        self.run(|| {
            fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")
                .context("bridge-nf-call-iptables in the node namespace")
        })??;

        let mnt = host::MountNs::create()?;
        mnt.prepare(&self.path.join("sysctl-masks"))?;
        self.mnt = Some(mnt);

        config::write_credentials(&self.path, NODE_USER)?;
        let runtime = config::RuntimePaths {
            root: self.path.join("containerd"),
            runc: self.setup.runc_wrapper.clone(),
            cni_conf_dir: self.path.join("cni/net.d"),
            cni_bin_dir: self.setup.bins.cni_bin_dir.clone(),
            sandbox_image: PAUSE_IMAGE.into(),
        };
        fs::create_dir_all(&runtime.cni_conf_dir)?;
        fs::write(
            runtime.cni_conf_dir.join("10-jwtgate-node.conflist"),
            config::cni_conflist(&self.path.join("cni/ipam"), &self.setup.cni_chain),
        )?;
        fs::write(
            self.path.join("containerd.toml"),
            config::containerd_toml(&runtime),
        )?;
        let root = self.cgroups.as_ref().expect("set above").root();
        fs::write(self.path.join("kubelet.yaml"), config::kubelet_yaml(&root))?;
        fs::create_dir_all(self.path.join("logs"))?;
        Ok(())
    }

    fn start_control_plane(&mut self) -> Result<()> {
        let dir = self.path.clone();
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let etcd = [
            "--data-dir".into(),
            p("etcd"),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=default=http://127.0.0.1:2380".into(),
        ];
        self.spawn_daemon("etcd", &self.setup.bins.kube("etcd"), &etcd)?;
        self.wait_port("etcd", "127.0.0.1:2379".parse()?, API_TIMEOUT)?;

        let apiserver = vec![
            "--etcd-servers=http://127.0.0.1:2379".to_string(),
            "--bind-address=0.0.0.0".into(),
            "--secure-port=6443".into(),
            format!("--advertise-address={NODE_IP}"),
            format!("--tls-cert-file={}", p("pki/apiserver.crt")),
            format!("--tls-private-key-file={}", p("pki/apiserver.key")),
            format!("--service-account-key-file={}", p("pki/sa.pub")),
            format!("--service-account-signing-key-file={}", p("pki/sa.key")),
            format!("--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DNS_DOMAIN}"),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--profiling=false".into(),
        ];
        self.spawn_daemon(
            "kube-apiserver",
            &self.setup.bins.kube("kube-apiserver"),
            &apiserver,
        )?;
        self.wait_for("kube-apiserver /readyz", API_TIMEOUT, |n| {
            n.kubectl(&["get", "--raw", "/readyz"]).map(|_| ())
        })?;

        let kcm = vec![
            format!("--kubeconfig={}", p("controller-manager.kubeconfig")),
            "--leader-elect=false".to_string(),
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", p("pki/sa.key")),
            format!("--root-ca-file={}", p("pki/ca.crt")),
            "--bind-address=127.0.0.1".into(),
            "--port=0".into(),
            "--profiling=false".into(),
        ];
        self.spawn_daemon(
            "kube-controller-manager",
            &self.setup.bins.kube("kube-controller-manager"),
            &kcm,
        )?;
        let scheduler = vec![
            format!("--kubeconfig={}", p("scheduler.kubeconfig")),
            "--leader-elect=false".to_string(),
            "--bind-address=127.0.0.1".into(),
            "--port=0".into(),
            "--profiling=false".into(),
        ];
        self.spawn_daemon(
            "kube-scheduler",
            &self.setup.bins.kube("kube-scheduler"),
            &scheduler,
        )
    }

    fn start_runtime(&mut self) -> Result<()> {
        let config = self.path.join("containerd.toml");
        let args = [
            "--config".to_string(),
            config.to_string_lossy().into_owned(),
        ];
        self.spawn_daemon("containerd", &self.setup.bins.containerd.clone(), &args)?;
        self.wait_for("containerd", API_TIMEOUT, |n| {
            n.ctr(&["version"]).map(|_| ())
        })?;
        let pause = self.setup.pause_archive.clone();
        self.import_image(&pause)
    }

    fn start_kubelet(&mut self) -> Result<()> {
        let dir = self.path.clone();
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let kubelet = vec![
            format!("--config={}", p("kubelet.yaml")),
            format!("--kubeconfig={}", p("kubelet.kubeconfig")),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            "--container-runtime=remote".into(),
            "--container-runtime-endpoint=unix:///run/containerd/containerd.sock".into(),
            format!("--cert-dir={}", p("kubelet-pki")),
            "--v=1".into(),
        ];
        self.spawn_daemon("kubelet", &self.setup.bins.kube("kubelet"), &kubelet)?;
        let proxy = vec![
            format!("--kubeconfig={}", p("proxy.kubeconfig")),
            format!("--hostname-override={NODE_NAME}"),
            "--proxy-mode=iptables".into(),
            format!("--cluster-cidr={POD_CIDR}"),
            // Leave the kernel-wide conntrack table size and timeouts alone.
            "--conntrack-max-per-core=0".into(),
            "--conntrack-min=0".into(),
            "--conntrack-tcp-timeout-established=0s".into(),
            "--conntrack-tcp-timeout-close-wait=0s".into(),
            "--oom-score-adj=0".into(),
            "--metrics-bind-address=127.0.0.1:10249".into(),
            "--healthz-bind-address=127.0.0.1:10256".into(),
            "--profiling=false".into(),
        ];
        self.spawn_daemon("kube-proxy", &self.setup.bins.kube("kube-proxy"), &proxy)?;
        self.wait_for("the Node object", NODE_READY_TIMEOUT, |n| {
            n.kubectl(&["get", "node", NODE_NAME]).map(|_| ())
        })?;
        self.wait_for("node Ready", NODE_READY_TIMEOUT, |n| {
            let cond = n.kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            if cond.trim() == "True" {
                Ok(())
            } else {
                bail!("Ready={cond}")
            }
        })?;
        // Pods are rejected until the controller-manager made the namespace's
        // ServiceAccount.
        self.wait_for("ServiceAccount default/default", NODE_READY_TIMEOUT, |n| {
            n.kubectl(&["get", "serviceaccount", "default"]).map(|_| ())
        })
    }

    /// Starts a daemon inside the node (namespaces, cgroup), logging to
    /// `logs/<name>.log`.
    fn spawn_daemon(&mut self, name: &str, program: &Path, args: &[String]) -> Result<()> {
        let log_path = self.path.join("logs").join(format!("{name}.log"));
        let log = File::create(&log_path)?;
        let mut cmd = self.command(program);
        cmd.args(args)
            .env("JWTGATE_RUNC", &self.setup.bins.runc)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let procs = self.procs.as_ref().context("no cgroup")?.as_raw_fd();
        // SAFETY: one write(2) after fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        crate::process::detach_from_terminal(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        self.daemons.push((name.to_string(), child));
        Ok(())
    }

    /// A command that runs inside the node's network and mount namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        let net = self.netns_file.as_ref().map(|f| f.as_raw_fd());
        let mnt = self.mnt.as_ref().map(|m| m.file().as_raw_fd());
        // SAFETY: raw setns(2) calls after fork.
        unsafe {
            cmd.pre_exec(move || {
                for (fd, kind) in [(net, libc::CLONE_NEWNET), (mnt, libc::CLONE_NEWNS)] {
                    if let Some(fd) = fd {
                        if libc::setns(fd, kind) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// `kubectl` as cluster admin; stdout, or an error with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with_input(args, None)
    }

    /// `kubectl` with `input` on stdin (`apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let mut cmd = self.command(self.setup.bins.kube("kubectl"));
        cmd.arg(format!(
            "--kubeconfig={}",
            self.admin_kubeconfig().display()
        ))
        .args(args);
        output(cmd, input).with_context(|| format!("kubectl {}", args.join(" ")))
    }

    /// `kubectl ... -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let out = self.kubectl(&full)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl {}: not JSON", args.join(" ")))
    }

    /// `ctr` against the node's containerd, in the CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(&self.setup.bins.ctr);
        cmd.args([
            "--address",
            "/run/containerd/containerd.sock",
            "-n",
            "k8s.io",
        ])
        .args(args);
        output(cmd, None).with_context(|| format!("ctr {}", args.join(" ")))
    }

    /// `ctr images import` of a docker or OCI archive: how images reach this
    /// node (the namespace has no way to a registry).
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        let a = archive.to_str().context("archive path is not UTF-8")?;
        self.ctr(&["images", "import", a]).map(|_| ())
    }

    /// Runs `f` on a thread inside the node's network namespace (the pods'
    /// and Services' addresses are reachable only from there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = self.netns.as_ref().context("no node netns")?;
        ns.run(f)
    }

    /// The network namespace's path, for `crate::http` calls.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(crate::netns::NETNS_DIR).join(&self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's directory (configuration, state, `logs/`).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.path.join("admin.kubeconfig")
    }

    /// The last `n` lines of a daemon's log (`kubelet`, `containerd`, ...).
    pub fn log(&self, daemon: &str, n: usize) -> String {
        tail(&self.path.join("logs").join(format!("{daemon}.log")), n)
    }

    /// Polls `check` until it succeeds; fails early when a daemon died.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Node) -> Result<()>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match check(self) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            self.check_daemons()?;
            if Instant::now() > deadline {
                return Err(err.context(format!(
                    "{what}: not within {timeout:?}\n{}",
                    self.logs_summary()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Fails when a daemon exited, with its log.
    pub fn check_daemons(&mut self) -> Result<()> {
        for (name, child) in self.daemons.iter_mut() {
            if let Some(st) = child.try_wait()? {
                let log = tail(&self.path.join("logs").join(format!("{name}.log")), 30);
                bail!("{name} exited ({st}):\n{log}");
            }
        }
        Ok(())
    }

    fn wait_port(&mut self, what: &str, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let ns = self.netns_path();
        self.wait_for(what, timeout, |_| {
            match crate::http::probe(Some(&ns), addr, Duration::from_secs(1)) {
                crate::Outcome::Connected => Ok(()),
                o => bail!("{addr}: {o}"),
            }
        })
    }

    fn logs_summary(&self) -> String {
        self.daemons
            .iter()
            .map(|(n, _)| format!("--- {n} (last lines)\n{}", self.log(n, 8)))
            .collect()
    }

    /// Stops everything and puts the host back: every process of the node
    /// (SIGKILL through its cgroups), the mount and network namespaces, the
    /// cgroups, the directory; the kubelet's sysctls are restored if anything
    /// changed them. Idempotent; also run by `Drop`.
    pub fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        // Our own children first, so they are reaped, not left as zombies.
        for (_, child) in self.daemons.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.daemons.clear();
        self.procs = None;
        if let Some(mut cg) = self.cgroups.take() {
            if let Err(e) = cg.remove() {
                errors.push(format!("{e:#}"));
            }
        }
        // Last process of the mount namespace: its mounts (tmpfs, bpffs, the
        // pods' netns files) go with it.
        if let Some(mut m) = self.mnt.take() {
            m.release();
        }
        self.netns_file = None;
        if let Some(mut ns) = self.netns.take() {
            if let Err(e) = ns.remove() {
                errors.push(format!("removing netns {}: {e:#}", self.name));
            }
        }
        match self.sysctls.restore() {
            Ok(changed) if !changed.is_empty() => {
                eprintln!(
                    "jwtgate-e2e: node {}: restored sysctls {changed:?}",
                    self.name
                )
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
        if std::env::var_os("JWTGATE_KEEP_NODE_DIR").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("jwtgate-e2e: node directory kept: {}", d.keep().display());
            }
        } else if let Some(d) = self.dir.take() {
            if let Err(e) = d.close() {
                errors.push(format!("removing {}: {e}", self.path.display()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("tearing down node {}: {}", self.name, errors.join("; "))
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("jwtgate-e2e: {e:#}");
        }
    }
}

/// Runs `cmd` (with `input` on stdin) and returns stdout; fails with stderr.
fn output(mut cmd: Command, input: Option<&str>) -> Result<String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
