//! The load test's topology, built with the end-to-end test bed: the FAQ's
//! pod `productpage` (policies, nginx JWKS server, client netns) with nginx
//! as its application instead of the echo app, the bare hop inside the pod,
//! an attacker netns with many addresses, and the agent, which this module
//! starts and restarts itself (the test node holds at most one agent; a
//! surge restart needs two at once).
//!
//! Ports inside the pod: 9080 is steered to jwtgate and then reaches nginx
//! from 127.0.0.6; 9091 is nginx not steered (direct); 9092 is the bare hop,
//! not steered, which forwards to 9080 from 127.0.0.6 as jwtgate does.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jwtgate_e2e::agent::{logs_dir, workloads_yaml, Agent, AgentFiles, AgentOptions};
use jwtgate_e2e::faq::{self, FaqBed};
use jwtgate_e2e::nginx_app::{NginxApp, NginxAppConfig};
use jwtgate_e2e::process::{detach_from_terminal, stop_child, tail};
use jwtgate_e2e::Client;

/// The bare hop's own port in the pod (not steered).
pub const HOP_PORT: u16 = 9092;
/// Secondary addresses of the attacker netns: host numbers from here on, far
/// above the few the test node hands out to its namespaces.
const FIRST_ATTACK_HOST: u8 = 50;
const LAST_ATTACK_HOST: u8 = 249;

/// How the bed is built.
#[derive(Debug, Clone)]
pub struct BedConfig {
    pub barehop_bin: PathBuf,
    /// 0: current-thread runtime.
    pub hop_threads: usize,
    pub app_workers: usize,
    pub body_bytes: usize,
    /// Flags added to every agent's command line.
    pub agent_args: Vec<String>,
}

pub struct LoadBed {
    // Declared (and so dropped) before the node: processes first.
    agent: Option<Agent>,
    hop: Option<Child>,
    app: Option<NginxApp>,
    pub faq: FaqBed,
    pub attacker: Client,
    attack_hosts: Vec<Ipv4Addr>,
    agents_started: u32,
    agent_args: Vec<String>,
    hop_log: PathBuf,
}

impl LoadBed {
    pub fn build(cfg: &BedConfig) -> Result<Self> {
        let mut faq = FaqBed::build_with("load", |spec| spec.own_app())?;
        let attacker = faq.node.add_client("attacker")?;
        let app = NginxApp::start(
            &faq.pod.netns,
            &faq.node.dir().join("app"),
            &NginxAppConfig {
                ports: vec![faq::MESH_PORT, faq::PLAIN_PORT],
                body_bytes: cfg.body_bytes,
                workers: cfg.app_workers,
            },
        )?;
        let attack_hosts = add_attack_addresses(&attacker)?;
        let hop_log = logs_dir().join(format!("{}.barehop.log", faq.node.prefix()));
        std::fs::create_dir_all(logs_dir())?;
        let mut bed = LoadBed {
            agent: None,
            hop: None,
            app: Some(app),
            faq,
            attacker,
            attack_hosts,
            agents_started: 0,
            agent_args: cfg.agent_args.clone(),
            hop_log,
        };
        bed.start_hop(cfg)?;
        std::fs::write(
            bed.files(0).workloads,
            workloads_yaml(&bed.faq.node.workloads()),
        )?;
        Ok(bed)
    }

    /// The secondary addresses of the attacker netns, for flood sources.
    pub fn attack_hosts(&self) -> &[Ipv4Addr] {
        &self.attack_hosts
    }

    pub fn direct_addr(&self) -> SocketAddr {
        self.faq.pod.addr(faq::PLAIN_PORT)
    }
    pub fn hop_addr(&self) -> SocketAddr {
        self.faq.pod.addr(HOP_PORT)
    }
    pub fn jwtgate_addr(&self) -> SocketAddr {
        self.faq.pod.mesh_addr()
    }

    pub fn hop_pid(&self) -> Option<u32> {
        self.hop.as_ref().map(Child::id)
    }
    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(Agent::pid)
    }

    /// The files of the `n`-th agent started: the node's policies,
    /// workloads.yaml and pin root, a log of its own.
    fn files(&self, n: u32) -> AgentFiles {
        let node = &self.faq.node;
        AgentFiles {
            policies: node.policies_dir(),
            workloads: node.dir().join("workloads.yaml"),
            pin_root: node.pin_root().to_path_buf(),
            log: logs_dir().join(format!("{}.agent{n}.log", node.prefix())),
        }
    }

    /// Starts an agent (default flags) and waits until it is ready; returns
    /// it without making it the bed's agent.
    fn spawn_agent(&mut self) -> Result<Agent> {
        let files = self.files(self.agents_started);
        self.agents_started += 1;
        Agent::start(
            &files,
            &AgentOptions {
                extra_args: self.agent_args.clone(),
                ..AgentOptions::default()
            },
        )
    }

    /// Starts the agent; the bed must have none.
    pub fn start_agent(&mut self) -> Result<Duration> {
        if self.agent.is_some() {
            bail!("an agent is already running");
        }
        let started = Instant::now();
        let agent = self.spawn_agent()?;
        self.agent = Some(agent);
        Ok(started.elapsed())
    }

    /// SIGTERM to the agent and wait for it to finish draining.
    pub fn stop_agent(&mut self) -> Result<()> {
        if let Some(mut a) = self.agent.take() {
            let st = a.stop()?;
            if !st.success() {
                bail!("the agent ended with {st}:\n{}", a.log());
            }
        }
        Ok(())
    }

    /// Stop, then start (a DaemonSet's RollingUpdate without surge: the old
    /// pod is gone before the new one starts). Returns (time to stop, time
    /// for the new one to be ready).
    pub fn restart_stop_start(&mut self) -> Result<(Duration, Duration)> {
        let t = Instant::now();
        self.stop_agent()?;
        let stopped = t.elapsed();
        let ready = self.start_agent()?;
        Ok((stopped, ready))
    }

    /// Start a second agent while the first still runs, then stop the first
    /// (a surge upgrade: `maxSurge: 1, maxUnavailable: 0`). Returns (time for
    /// the new one to be ready, time for the old one to stop).
    pub fn restart_surge(&mut self) -> Result<(Duration, Duration)> {
        let t = Instant::now();
        let new = self.spawn_agent()?;
        let ready = t.elapsed();
        let old = self.agent.replace(new);
        let t = Instant::now();
        if let Some(mut old) = old {
            let st = old.stop()?;
            if !st.success() {
                bail!("the old agent ended with {st}:\n{}", old.log());
            }
        }
        Ok((ready, t.elapsed()))
    }

    fn start_hop(&mut self, cfg: &BedConfig) -> Result<()> {
        let ns = netns_name(&self.faq.pod.netns)?;
        let log = std::fs::File::create(&self.hop_log)?;
        let mut cmd = Command::new("ip");
        detach_from_terminal(&mut cmd);
        let child = cmd
            .args(["netns", "exec", &ns])
            .arg(&cfg.barehop_bin)
            .args(["--listen", &format!("0.0.0.0:{HOP_PORT}")])
            .args(["--upstream", &self.jwtgate_addr().to_string()])
            .args(["--threads", &cfg.hop_threads.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", cfg.barehop_bin.display()))?;
        self.hop = Some(child);
        // Ready when a request through it reaches nginx.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = self.faq.client.get(self.hop_addr(), "/", None) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if let Some(st) = self.hop.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("the bare hop exited ({st}):\n{}", tail(&self.hop_log, 20));
            }
            if Instant::now() > deadline {
                bail!(
                    "the bare hop did not forward a request within 10 s:\n{}",
                    tail(&self.hop_log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops every process, then removes the namespaces; reports every error.
    pub fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = self.stop_agent() {
            errors.push(format!("{e:#}"));
        }
        if let Some(hop) = self.hop.take() {
            if let Err(e) = stop_child(hop, "bare hop", Duration::from_secs(5)) {
                errors.push(format!("{e:#}"));
            }
        }
        if let Some(mut app) = self.app.take() {
            if let Err(e) = app.stop() {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = self.faq.node.teardown() {
            errors.push(format!("{e:#}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("cleaning up the load bed:\n  {}", errors.join("\n  "))
        }
    }
}

/// Gives the attacker netns every spare address of the node's /24 (one
/// `ip -batch`), so floods can come from many sources.
fn add_attack_addresses(attacker: &Client) -> Result<Vec<Ipv4Addr>> {
    let [a, b, c, _] = attacker.ip.octets();
    let hosts: Vec<Ipv4Addr> = (FIRST_ATTACK_HOST..=LAST_ATTACK_HOST)
        .map(|h| Ipv4Addr::new(a, b, c, h))
        .collect();
    let batch: String = hosts
        .iter()
        .map(|ip| format!("addr add {ip}/24 dev eth0\n"))
        .collect();
    let ns = netns_name(&attacker.netns)?;
    let mut child = Command::new("ip")
        .args(["-n", &ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("ip's stdin")?;
        stdin.write_all(batch.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "adding the attacker's addresses: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(hosts)
}

pub fn netns_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} is not a named namespace", path.display()))
}
