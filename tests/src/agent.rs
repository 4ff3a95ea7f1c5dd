//! The agent under test: the real `jwtgate` binary, configured through files as the
//! DESIGN's local mode takes them (`--policies DIR`, `--workloads FILE`).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{detach_from_terminal, stop_child, tail};

/// How long the agent may take to enrol every workload.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long SIGTERM may take before SIGKILL: above the agent's default drain (10 s).
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// The agent binary: `$JWTGATE_BIN`, else `<workspace>/target/debug/jwtgate`
/// (`$CARGO_TARGET_DIR` respected). Fails with the command that builds it.
pub fn binary() -> Result<PathBuf> {
    let path = match std::env::var_os("JWTGATE_BIN") {
        Some(p) => PathBuf::from(p),
        None => target_dir().join("debug").join("jwtgate"),
    };
    if !path.is_file() {
        bail!(
            "agent binary {} not found: build it with `cargo xtask build` (or `cargo build -p jwtgate`), or point JWTGATE_BIN at it",
            path.display()
        );
    }
    Ok(path)
}

/// `$CARGO_TARGET_DIR` (relative to the workspace) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let ws = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| ws.join(t))
        .unwrap_or_else(|| ws.join("target"))
}

/// Where agent logs are kept after the test bed is gone: `target/jwtgate-e2e-logs/`.
pub fn logs_dir() -> PathBuf {
    target_dir().join("jwtgate-e2e-logs")
}

/// The jwtgate workspace (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// Runs a one-shot `jwtgate` command (e.g. `deny-source`) and fails unless it exits 0.
pub fn jwtgate(args: &[&str]) -> Result<Output> {
    let bin = binary()?;
    let out = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`jwtgate {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// One entry of workloads.yaml.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub labels: Vec<(String, String)>,
    pub netns: PathBuf,
    /// `None`: every port (`ports: all`).
    pub ports: Option<Vec<u16>>,
    pub exclude_ports: Vec<u16>,
    /// Port → protocol name.
    pub protocols: Vec<(u16, String)>,
    /// (port, Some(path)) HTTP probe, (port, None) TCP probe.
    pub probes: Vec<(u16, Option<String>)>,
    pub fail_open: bool,
    pub ips: Vec<IpAddr>,
}

/// Renders the workloads file. Strings are emitted as JSON strings, which YAML reads
/// verbatim, so no value can break the document.
pub fn workloads_yaml(workloads: &[Workload]) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut y = String::from("workloads:\n");
    for w in workloads {
        let labels: Vec<String> = w
            .labels
            .iter()
            .map(|(k, v)| format!("{}: {}", q(k), q(v)))
            .collect();
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ips: Vec<String> = w.ips.iter().map(|ip| q(&ip.to_string())).collect();
        let _ = writeln!(y, "- name: {}", q(&w.name));
        let _ = writeln!(y, "  namespace: {}", q(&w.namespace));
        let _ = writeln!(y, "  labels: {{{}}}", labels.join(", "));
        let _ = writeln!(y, "  netns: {}", q(&w.netns.to_string_lossy()));
        match &w.ports {
            Some(ports) => {
                let _ = writeln!(y, "  ports: [{}]", list(ports));
            }
            None => {
                let _ = writeln!(y, "  ports: all");
            }
        }
        if !w.exclude_ports.is_empty() {
            let _ = writeln!(y, "  excludePorts: [{}]", list(&w.exclude_ports));
        }
        if !w.protocols.is_empty() {
            let protocols: Vec<String> = w
                .protocols
                .iter()
                .map(|(p, n)| format!("{p}: {}", q(n)))
                .collect();
            let _ = writeln!(y, "  protocols: {{{}}}", protocols.join(", "));
        }
        if !w.probes.is_empty() {
            let _ = writeln!(y, "  probes:");
            for (port, path) in &w.probes {
                let _ = match path {
                    Some(path) => writeln!(y, "  - {{port: {port}, path: {}}}", q(path)),
                    None => writeln!(y, "  - {{port: {port}, type: tcp}}"),
                };
            }
        }
        let _ = writeln!(y, "  failOpen: {}", w.fail_open);
        if !ips.is_empty() {
            let _ = writeln!(y, "  ips: [{}]", ips.join(", "));
        }
    }
    y
}

/// `agent --policies … --workloads … --pin-root … --metrics-addr …` and the flags
/// of `opts`, with the paths of `files` as the agent sees them.
pub fn agent_args(files: &AgentFiles, metrics: SocketAddr, opts: &AgentOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "agent".into(),
        "--policies".into(),
        files.policies.clone().into(),
        "--workloads".into(),
        files.workloads.clone().into(),
        "--pin-root".into(),
        files.pin_root.clone().into(),
        "--metrics-addr".into(),
        metrics.to_string().into(),
    ];
    if opts.fail_open {
        args.push("--fail-open".into());
    }
    if let Some(ns) = &opts.root_namespace {
        args.extend(["--root-namespace".into(), ns.into()]);
    }
    if !opts.strict_jwks_addresses {
        args.extend(JWKS_ON_LOOPBACK.map(OsString::from));
    }
    args.extend(opts.extra_args.iter().map(OsString::from));
    args
}

/// The test bed's JWKS server (nginx) listens on the host's loopback, which
/// the agent refuses to fetch from by default: these flags allow it.
pub const JWKS_ON_LOOPBACK: [&str; 2] = ["--jwks-allow-cidr", "127.0.0.0/8"];

/// Flags of `jwtgate agent` beyond the files the test node writes.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `--fail-open` for every workload.
    pub fail_open: bool,
    pub root_namespace: Option<String>,
    pub extra_args: Vec<String>,
    /// Leave out [`JWKS_ON_LOOPBACK`]: the agent's default address checks.
    pub strict_jwks_addresses: bool,
    /// Extra environment, e.g. `RUST_LOG`.
    pub env: Vec<(String, String)>,
}

/// Paths the agent is started with.
#[derive(Debug, Clone)]
pub struct AgentFiles {
    pub policies: PathBuf,
    pub workloads: PathBuf,
    pub pin_root: PathBuf,
    pub log: PathBuf,
}

/// A running agent; stopped on drop.
pub struct Agent {
    child: Option<Child>,
    files: AgentFiles,
    metrics: SocketAddr,
    status: Option<ExitStatus>,
    /// Set once an error already carried the log, so Drop does not print it again.
    log_shown: bool,
}

impl Agent {
    /// Spawns `jwtgate agent` and waits until `/readyz` answers 200.
    pub fn start(files: &AgentFiles, opts: &AgentOptions) -> Result<Self> {
        let bin = binary()?;
        Self::start_with(files, |metrics| {
            let mut cmd = Command::new(&bin);
            cmd.args(agent_args(files, metrics, opts));
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
            // The log goes to a file that failures print: no ANSI colour codes.
            cmd.env("NO_COLOR", "1");
            cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
            Ok(cmd)
        })
    }

    /// Like `start`, but `launch` builds the command (for example `podman run …`
    /// with [`agent_args`] appended) given the metrics address to serve on. The
    /// command's output goes to the log, SIGTERM to it must stop the agent, and
    /// readiness is still `/readyz` on that address, so the agent must share the
    /// host network.
    pub fn start_with(
        files: &AgentFiles,
        launch: impl FnOnce(SocketAddr) -> Result<Command>,
    ) -> Result<Self> {
        let metrics = crate::jwks_server::free_loopback_port()?;
        let log = fs::File::create(&files.log)
            .with_context(|| format!("creating {}", files.log.display()))?;
        let mut cmd = launch(metrics)?;
        detach_from_terminal(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        let mut agent = Agent {
            child: Some(child),
            files: files.clone(),
            metrics,
            status: None,
            log_shown: false,
        };
        if let Err(e) = agent.wait_ready(READY_TIMEOUT) {
            agent.log_shown = true;
            return Err(e);
        }
        Ok(agent)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last 200 lines the agent logged, headed by the log file's path.
    pub fn log(&self) -> String {
        format!(
            "--- {}\n{}",
            self.files.log.display(),
            tail(&self.files.log, 200)
        )
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let r = crate::http::get_in(None, self.metrics, "/metrics", None)?;
        if r.status != 200 {
            bail!("/metrics answered {}", r.status);
        }
        Ok(r.text())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(st) = child.try_wait()? {
                    self.child = None;
                    self.status = Some(st);
                    bail!(
                        "the agent exited before it was ready ({st}); its log:\n{}",
                        self.log()
                    );
                }
            }
            match crate::http::get_in(None, self.metrics, "/readyz", None) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status, r.text().trim()),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready within {timeout:?} (GET http://{}/readyz: {last}); its log:\n{}",
                    self.metrics,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits up to `timeout` for the process to end on its own (stopped from
    /// outside, e.g. `podman stop`), without signalling it. Returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while let Some(child) = self.child.as_mut() {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                self.status = Some(st);
                break;
            }
            if Instant::now() > deadline {
                bail!("the agent process did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.status.context("the agent was never started")
    }

    /// SIGTERM (drain), bounded wait, SIGKILL. Returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(child) = self.child.take() {
            self.status = Some(stop_child(child, "jwtgate agent", STOP_GRACE)?);
        }
        self.status.context("the agent was never started")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        match self.stop() {
            Ok(st) if st.success() || self.log_shown => {}
            Ok(st) => eprintln!(
                "jwtgate-e2e: the agent ended with {st}; its log:\n{}",
                self.log()
            ),
            Err(e) => eprintln!("jwtgate-e2e: stopping the agent: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_yaml_matches_the_contract() {
        let y = workloads_yaml(&[Workload {
            name: "productpage".into(),
            namespace: "foo".into(),
            labels: vec![("app".into(), "productpage".into())],
            netns: "/var/run/netns/jg-x".into(),
            ports: Some(vec![9080, 9081]),
            exclude_ports: vec![],
            protocols: vec![],
            probes: vec![],
            fail_open: false,
            ips: vec!["10.248.1.2".parse().unwrap()],
        }]);
        assert_eq!(
            y,
            "workloads:\n- name: \"productpage\"\n  namespace: \"foo\"\n  labels: {\"app\": \"productpage\"}\n  netns: \"/var/run/netns/jg-x\"\n  ports: [9080, 9081]\n  failOpen: false\n  ips: [\"10.248.1.2\"]\n"
        );
        let y = workloads_yaml(&[Workload {
            name: "db".into(),
            namespace: "foo".into(),
            labels: vec![],
            netns: "/n".into(),
            ports: None,
            exclude_ports: vec![22],
            protocols: vec![(3306, "mysql".into())],
            probes: vec![(8080, Some("/healthz".into())), (3306, None)],
            fail_open: false,
            ips: vec![],
        }]);
        assert!(y.contains("  ports: all\n  excludePorts: [22]\n  protocols: {3306: \"mysql\"}\n  probes:\n  - {port: 8080, path: \"/healthz\"}\n  - {port: 3306, type: tcp}\n"), "{y}");
    }
}
