//! `TestNode`: one machine's worth of pods, clients, JWKS server and agent, built in
//! private network namespaces and torn down in reverse by one `Drop`.
//!
//! Layout: a "node" netns holds a bridge; every pod and client is its own netns with
//! `eth0` (veth) plugged into that bridge and an address in a /24 private to this
//! TestNode. The agent and nginx run in the host netns (the agent reaches pods by
//! their netns paths, nginx is on host loopback).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use nix::mount::{umount2, MntFlags};

use crate::agent::{Agent, AgentFiles, AgentOptions, Workload};
use crate::app::{EchoApp, SeenRequest};
use crate::http::{Conn, Outcome, Response, CONNECT_TIMEOUT};
use crate::jwks_server::JwksServer;
use crate::netns::NetNs;

static COUNTER: AtomicU32 = AtomicU32::new(0);
const BRIDGE: &str = "br0";

/// What a pod looks like to the agent and which ports its app serves.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub labels: Vec<(String, String)>,
    /// Ports listed in workloads.yaml (steered) — the app serves them too.
    pub mesh_ports: Vec<u16>,
    /// Ports the app serves that the agent is not told about.
    pub plain_ports: Vec<u16>,
    pub fail_open: bool,
    /// Address families of the pod.
    pub family: Family,
    /// `ports: all` in workloads.yaml (every port steered) instead of the
    /// mesh port list.
    pub all_ports: bool,
    /// `excludePorts` in workloads.yaml.
    pub exclude_ports: Vec<u16>,
    /// `protocols` in workloads.yaml: port → protocol name.
    pub protocols: Vec<(u16, String)>,
    /// `probes` in workloads.yaml: (port, Some(path)) for HTTP, (port, None)
    /// for TCP.
    pub probes: Vec<(u16, Option<String>)>,
}

/// Which address families a pod has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    V4,
    Dual,
    /// IPv6 only: `PodHandle::ip` is allocated but not configured.
    V6,
}

impl PodSpec {
    /// A pod in namespace `default` with label `app=<name>` and no ports yet.
    pub fn new(name: &str) -> Self {
        PodSpec {
            name: name.into(),
            namespace: "default".into(),
            labels: vec![("app".into(), name.into())],
            mesh_ports: Vec::new(),
            plain_ports: Vec::new(),
            fail_open: false,
            family: Family::V4,
            all_ports: false,
            exclude_ports: Vec::new(),
            protocols: Vec::new(),
            probes: Vec::new(),
        }
    }
    pub fn family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }
    /// Every port steered (`ports: all`); mesh ports are still served.
    pub fn all_ports(mut self) -> Self {
        self.all_ports = true;
        self
    }
    pub fn exclude_port(mut self, p: u16) -> Self {
        self.exclude_ports.push(p);
        self
    }
    pub fn protocol(mut self, port: u16, name: &str) -> Self {
        self.protocols.push((port, name.into()));
        self
    }
    /// An HTTP probe (`GET path` on `port`).
    pub fn http_probe(mut self, port: u16, path: &str) -> Self {
        self.probes.push((port, Some(path.into())));
        self
    }
    pub fn tcp_probe(mut self, port: u16) -> Self {
        self.probes.push((port, None));
        self
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }
    /// Replaces the labels.
    pub fn labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }
    pub fn port(mut self, p: u16) -> Self {
        self.mesh_ports.push(p);
        self
    }
    pub fn plain_port(mut self, p: u16) -> Self {
        self.plain_ports.push(p);
        self
    }
    pub fn fail_open(mut self, on: bool) -> Self {
        self.fail_open = on;
        self
    }
}

/// A pod as tests address it. Cheap to clone; the TestNode owns the resources.
#[derive(Debug, Clone)]
pub struct PodHandle {
    pub spec: PodSpec,
    pub ip: Ipv4Addr,
    /// The IPv6 address of a dual-stack or IPv6-only pod.
    pub ip6: Option<Ipv6Addr>,
    pub netns: PathBuf,
    index: usize,
}

impl PodHandle {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip.into(), port)
    }
    /// The first mesh port.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.addr(*self.spec.mesh_ports.first().expect("pod has no mesh port"))
    }
    /// `[ip6]:port`; panics for an IPv4-only pod.
    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip6.expect("pod has no IPv6 address").into(), port)
    }
    /// The addresses the pod has, as workloads.yaml lists them.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut ips = Vec::new();
        if self.spec.family != Family::V6 {
            ips.push(IpAddr::V4(self.ip));
        }
        ips.extend(self.ip6.map(IpAddr::V6));
        ips
    }
}

/// A client netns. Connections are made from inside it; the returned sockets can be
/// used from any thread.
#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub netns: PathBuf,
}

impl Client {
    pub fn connect(&self, addr: SocketAddr) -> Result<Conn, Outcome> {
        crate::http::connect(Some(&self.netns), addr, CONNECT_TIMEOUT)
    }
    /// Only the outcome of a TCP connect.
    pub fn probe(&self, addr: SocketAddr) -> Outcome {
        crate::http::probe(Some(&self.netns), addr, CONNECT_TIMEOUT)
    }
    /// `GET path` on a new connection, with `Authorization: Bearer` if a token is given.
    pub fn get(&self, addr: SocketAddr, path: &str, token: Option<&str>) -> Result<Response> {
        crate::http::get_in(Some(&self.netns), addr, path, token)
    }
}

struct Pod {
    handle: PodHandle,
    app: EchoApp,
    ns: NetNs,
}

/// The test bed. See the module docs.
pub struct TestNode {
    prefix: String,
    subnet: [u8; 3],
    next_host: u8,
    dir: tempfile::TempDir,
    pin_root: PathBuf,
    node_ns: Option<NetNs>,
    node_ifs: Vec<String>,
    pods: Vec<Pod>,
    clients: Vec<NetNs>,
    jwks: Option<JwksServer>,
    agent: Option<Agent>,
    torn_down: bool,
}

impl TestNode {
    /// A node named `jg-<tag>-<pid>-<n>` with its bridge, temp dir and pin root.
    pub fn new(tag: &str) -> Result<Self> {
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("jg-{tag}-{pid}-{n}");
        // Addresses only exist inside our namespaces, so clashes with the host are
        // harmless; varying the /24 still keeps concurrent runs apart in dumps and in
        // any shared map keyed by pod IP.
        let third = (pid.wrapping_mul(31).wrapping_add(n) % 254 + 1) as u8;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}."))
            .tempdir()
            .context("creating the test node's temp dir")?;
        let pin_root = dir.path().canonicalize()?.join("bpffs");
        fs::create_dir_all(&pin_root)?;
        fs::create_dir_all(dir.path().join("policies"))?;
        let mut node = TestNode {
            prefix: prefix.clone(),
            subnet: [10, 248, third],
            next_host: 1,
            dir,
            pin_root,
            node_ns: None,
            node_ifs: Vec::new(),
            pods: Vec::new(),
            clients: Vec::new(),
            jwks: None,
            agent: None,
            torn_down: false,
        };
        // On error, `node` drops here and undoes what was built so far.
        let ns = NetNs::create(&format!("{prefix}-node"))?;
        ns.ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ])?;
        ns.ip(&["link", "set", BRIDGE, "up"])?;
        node.node_ns = Some(ns);
        Ok(node)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// Private temp dir (policies/, workloads.yaml, nginx/, bpffs/); the agent log is in
    /// `target/jwtgate-e2e-logs/<prefix>.agent.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The agent's `--pin-root`: an empty dir where it mounts its own bpffs.
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// Creates a netns, plugs it into the bridge and gives it the next
    /// addresses of the families asked for (both are allocated either way).
    fn attach(&mut self, name: &str, family: Family) -> Result<(NetNs, Ipv4Addr, Ipv6Addr)> {
        if self.next_host >= 250 {
            bail!("a TestNode has room for 249 namespaces");
        }
        let host = self.next_host;
        self.next_host += 1;
        let [a, b, c] = self.subnet;
        let ip = Ipv4Addr::new(a, b, c, host);
        let ip6 = Ipv6Addr::new(
            0xfd6a,
            u16::from(b),
            u16::from(c),
            0,
            0,
            0,
            0,
            u16::from(host),
        );
        let ns = NetNs::create(&format!("{}-{name}", self.prefix))?;
        let node = self.node_ns.as_ref().context("node netns missing")?;
        let node_if = format!("v{host}");
        node.ip(&[
            "link",
            "add",
            &node_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.node_ifs.push(node_if.clone());
        node.ip(&["link", "set", &node_if, "master", BRIDGE, "up"])?;
        if family != Family::V6 {
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        }
        if family != Family::V4 {
            // No duplicate address detection: the bed's addresses are unique.
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ip6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
        }
        ns.ip(&["link", "set", "eth0", "up"])?;
        if family != Family::V4 {
            wait_for_v6_route(&ns, ip6)?;
        }
        Ok((ns, ip, ip6))
    }

    /// Adds a pod netns with its echo app listening on all its ports.
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<PodHandle> {
        let (ns, ip, ip6) = self.attach(&spec.name, spec.family)?;
        let ports: Vec<u16> = spec
            .mesh_ports
            .iter()
            .chain(&spec.plain_ports)
            .copied()
            .collect();
        let app = EchoApp::start(&ns.path(), &spec.name, &ports)?;
        let handle = PodHandle {
            ip6: (spec.family != Family::V4).then_some(ip6),
            spec,
            ip,
            netns: ns.path(),
            index: self.pods.len(),
        };
        self.pods.push(Pod {
            handle: handle.clone(),
            app,
            ns,
        });
        Ok(handle)
    }

    /// Adds a client netns.
    pub fn add_client(&mut self, name: &str) -> Result<Client> {
        let (ns, ip, ip6) = self.attach(name, Family::Dual)?;
        let c = Client {
            name: name.into(),
            ip,
            ip6,
            netns: ns.path(),
        };
        self.clients.push(ns);
        Ok(c)
    }

    /// Requests the pod's app has received so far.
    pub fn app_seen(&self, pod: &PodHandle) -> Vec<SeenRequest> {
        self.pods[pod.index].app.seen()
    }

    /// Starts nginx serving the Istio sample JWKS; returns its `jwksUri`.
    pub fn start_jwks_server(&mut self) -> Result<String> {
        self.start_jwks_server_with(&crate::testdata("istio-samples/jwks.json"))
    }

    pub fn start_jwks_server_with(&mut self, jwks: &Path) -> Result<String> {
        if let Some(j) = &self.jwks {
            return Ok(j.jwks_uri());
        }
        let j = JwksServer::start(&self.dir.path().join("nginx"), jwks)?;
        let uri = j.jwks_uri();
        self.jwks = Some(j);
        Ok(uri)
    }

    pub fn jwks_server(&self) -> Option<&JwksServer> {
        self.jwks.as_ref()
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// Writes (or replaces) `policies/<file>` — Istio YAML as `kubectl apply` takes it.
    pub fn write_policy(&self, file: &str, yaml: &str) -> Result<()> {
        let path = self.policies_dir().join(file);
        fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))
    }

    /// The workloads file entries for every pod.
    pub fn workloads(&self) -> Vec<Workload> {
        self.pods
            .iter()
            .map(|p| {
                let spec = &p.handle.spec;
                Workload {
                    name: spec.name.clone(),
                    namespace: spec.namespace.clone(),
                    labels: spec.labels.clone(),
                    netns: p.handle.netns.clone(),
                    ports: (!spec.all_ports).then(|| spec.mesh_ports.clone()),
                    exclude_ports: spec.exclude_ports.clone(),
                    protocols: spec.protocols.clone(),
                    probes: spec.probes.clone(),
                    fail_open: spec.fail_open,
                    ips: p.handle.ips(),
                }
            })
            .collect()
    }

    fn agent_files(&self) -> AgentFiles {
        AgentFiles {
            policies: self.policies_dir(),
            workloads: self.dir.path().join("workloads.yaml"),
            pin_root: self.pin_root.clone(),
            // Outside the temp dir, so a failed run's log survives the teardown.
            log: crate::agent::logs_dir().join(format!("{}.agent.log", self.prefix)),
        }
    }

    /// Writes workloads.yaml and starts the agent; returns once `/readyz` is 200.
    pub fn start_agent(&mut self, opts: &AgentOptions) -> Result<&Agent> {
        let files = self.prepare_agent_files()?;
        let agent = Agent::start(&files, opts)?;
        Ok(self.agent.insert(agent))
    }

    /// Like `start_agent`, with the command built by `launch` from the files (host
    /// paths) and the metrics address: see [`Agent::start_with`].
    pub fn start_agent_with(
        &mut self,
        launch: impl FnOnce(&AgentFiles, SocketAddr) -> Result<std::process::Command>,
    ) -> Result<&Agent> {
        let files = self.prepare_agent_files()?;
        let agent = Agent::start_with(&files, |metrics| launch(&files, metrics))?;
        Ok(self.agent.insert(agent))
    }

    /// Writes workloads.yaml for the current pods; returns the agent's files.
    fn prepare_agent_files(&self) -> Result<AgentFiles> {
        if self.agent.is_some() {
            bail!("the agent is already running; stop_agent() first");
        }
        let files = self.agent_files();
        fs::create_dir_all(crate::agent::logs_dir())?;
        fs::write(
            &files.workloads,
            crate::agent::workloads_yaml(&self.workloads()),
        )?;
        Ok(files)
    }

    /// A second agent on the same files and pin root while the first still
    /// runs (a surge upgrade); returns once it is ready. Its log is
    /// `<prefix>.agent2.log`. Hand it over with [`TestNode::replace_agent`].
    pub fn start_successor(&self, opts: &AgentOptions) -> Result<Agent> {
        let mut files = self.agent_files();
        files.log = crate::agent::logs_dir().join(format!("{}.agent2.log", self.prefix));
        Agent::start(&files, opts)
    }

    /// Make `agent` the node's agent (after the previous one stopped).
    pub fn replace_agent(&mut self, agent: Agent) -> Result<()> {
        if self.agent.is_some() {
            bail!("the previous agent is still running; stop_agent() first");
        }
        self.agent = Some(agent);
        Ok(())
    }

    /// Waits (bounded) for an agent stopped from outside to exit; see [`Agent::wait_exit`].
    pub fn wait_agent_exit(&mut self, timeout: std::time::Duration) -> Result<ExitStatus> {
        let mut agent = self.agent.take().context("no agent running")?;
        let status = agent.wait_exit(timeout);
        if status.is_err() {
            // Keep it, so teardown still stops it.
            self.agent = Some(agent);
        }
        status
    }

    /// SIGTERM and wait (bounded); returns the agent's exit status.
    pub fn stop_agent(&mut self) -> Result<ExitStatus> {
        let mut agent = self.agent.take().context("no agent running")?;
        agent.stop()
    }

    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    /// The agent's log so far (also after it stopped).
    pub fn agent_log(&self) -> String {
        let log = self.agent_files().log;
        format!("--- {}\n{}", log.display(), crate::process::tail(&log, 200))
    }

    /// Runs a one-shot `jwtgate` subcommand (e.g. `deny-source`).
    pub fn jwtgate(&self, args: &[&str]) -> Result<Output> {
        crate::agent::jwtgate(args)
    }

    /// Tears everything down in reverse order of creation. Keeps going after errors
    /// and reports them all at the end. Idempotent.
    pub fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors: Vec<String> = Vec::new();
        if let Some(mut a) = self.agent.take() {
            match a.stop() {
                Ok(st) if !st.success() => {
                    eprintln!("jwtgate-e2e: agent ended with {st}; log:\n{}", a.log())
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("stopping the agent: {e:#}")),
            }
        }
        // Apps before namespaces: their sockets keep a namespace alive.
        for p in self.pods.iter_mut() {
            p.app.stop();
        }
        if let Some(mut j) = self.jwks.take() {
            if let Err(e) = j.stop() {
                errors.push(format!("stopping nginx: {e:#}"));
            }
        }
        if let Err(e) = unmount_all_under(&self.pin_root) {
            errors.push(format!(
                "unmounting bpffs at {}: {e:#}",
                self.pin_root.display()
            ));
        }
        if let Some(node) = &self.node_ns {
            for i in self.node_ifs.drain(..).rev() {
                if let Err(e) = node.ip(&["link", "del", &i]) {
                    errors.push(format!("deleting veth {i}: {e:#}"));
                }
            }
        }
        for mut ns in self.clients.drain(..).rev() {
            if let Err(e) = ns.remove() {
                errors.push(format!("removing netns {}: {e:#}", ns.name()));
            }
        }
        for mut p in self.pods.drain(..).rev() {
            if let Err(e) = p.ns.remove() {
                errors.push(format!("removing netns {}: {e:#}", p.ns.name()));
            }
        }
        if let Some(mut ns) = self.node_ns.take() {
            if let Err(e) = ns.remove() {
                errors.push(format!("removing netns {}: {e:#}", ns.name()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("cleaning up {}:\n  {}", self.prefix, errors.join("\n  "))
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            // A panic while unwinding would abort and hide the test's own failure.
            if std::thread::panicking() {
                eprintln!("jwtgate-e2e: {e:#}");
            } else {
                panic!("{e:#}");
            }
        }
    }
}

/// IPv6 routes appear once the veth has carrier; until then a SYN-ACK has
/// no way back. Wait (bounded) for the /64.
fn wait_for_v6_route(ns: &NetNs, ip6: Ipv6Addr) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let routes = ns
            .ip_output(&["-6", "route", "show", "dev", "eth0"])
            .unwrap_or_default();
        let prefix = format!(
            "{:x}:{:x}:{:x}::/64",
            ip6.segments()[0],
            ip6.segments()[1],
            ip6.segments()[2]
        );
        if routes.contains(&prefix) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "no IPv6 route {prefix} in {} after 5 s: {routes}",
                ns.name()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Mount points at or below `root`, deepest first, from /proc/self/mountinfo.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Lazily unmounts everything mounted at or below `root` (the agent's bpffs, perhaps
/// mounted more than once).
pub fn unmount_all_under(root: &Path) -> Result<()> {
    for _ in 0..8 {
        let mounts = mounts_under(root);
        if mounts.is_empty() {
            return Ok(());
        }
        for m in mounts {
            umount2(&m, MntFlags::MNT_DETACH)
                .with_context(|| format!("umount2({})", m.display()))?;
        }
    }
    bail!(
        "{} is still mounted after 8 rounds of umount",
        root.display()
    )
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(super::unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(super::unescape_mountinfo("/sys/fs/bpf"), "/sys/fs/bpf");
    }
}
