//! `cargo xtask loadtest`: the end-to-end load benchmark (issue 12 item 1,
//! issue 11 item 7). Not part of `cargo xtask test`: it measures, it does
//! not assert, and it takes minutes.
//!
//! It builds the release agent (with its eBPF object) and the bare hop,
//! builds the FAQ topology in network namespaces with nginx as the pod's
//! application, and drives it with wrk from a client namespace:
//!
//! - throughput (issue 12): (a) direct, (b) bare hop, (c) jwtgate with one
//!   valid token, (d) jwtgate with a new valid token per request; req/s,
//!   p50/p99, proxy CPU per request, ratios against (b);
//! - attacks (issue 11): legitimate traffic idle, under slow-header
//!   connections, under forged-token floods from many sources;
//! - restart (issue 11): legitimate traffic across agent restarts.
//!
//! Every figure is a median of interleaved rounds and every table compares
//! with a baseline measured in the same run. docs/performance.md explains
//! the set-up and keeps the results.

mod bed;
mod faults;
mod perf;
mod report;
mod system;
mod throughput;
mod wrk;

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jwtgate_e2e::interrupt;

use crate::{build, setup};

/// The two Lua scripts wrk runs (plain, with a token file).
pub type Scripts = (PathBuf, PathBuf);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Issue 12: direct, bare hop, jwtgate cache hits and misses.
    Throughput,
    /// Issue 11: legitimate traffic idle, under slow headers, under floods.
    Attacks,
    /// Issue 11: legitimate traffic across agent restarts.
    Restart,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// Which parts to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Phase::Throughput, Phase::Attacks, Phase::Restart])]
    pub phases: Vec<Phase>,
    /// Rounds of every scenario; tables show medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Connection counts of the throughput comparison, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 8])]
    pub conns: Vec<u32>,
    /// wrk threads (never more than connections).
    #[arg(long, default_value_t = 1)]
    pub wrk_threads: u32,
    /// Tokens signed for each cache-miss run; a run that uses them up stops
    /// early and is timed to that point.
    #[arg(long, default_value_t = 20_000)]
    pub miss_tokens: u64,
    /// Worker threads of the bare hop's runtime; 0 is tokio's
    /// current-thread runtime (issue 12's floor).
    #[arg(long, default_value_t = 0)]
    pub hop_threads: usize,
    /// nginx worker processes in the pod.
    #[arg(long, default_value_t = 1)]
    pub app_workers: usize,
    /// Size of the app's response body.
    #[arg(long, default_value_t = 1024)]
    pub body_bytes: usize,
    /// Connections of the legitimate client during attacks and restarts.
    #[arg(long, default_value_t = 8)]
    pub fault_conns: u32,
    /// Slow-header connections held open.
    #[arg(long, default_value_t = 1000)]
    pub slow_conns: usize,
    /// Source addresses the slow-header connections come from.
    #[arg(long, default_value_t = 4)]
    pub slow_sources: usize,
    /// New source addresses per round of the unthrottled forged-token flood.
    #[arg(long, default_value_t = 32)]
    pub flood_sources: usize,
    /// Source addresses of the forged-token flood paced under the ban threshold.
    #[arg(long, default_value_t = 96)]
    pub paced_sources: usize,
    /// Requests per second of each paced source (the agent bans after 100
    /// failures in 10 s by default).
    #[arg(long, default_value_t = 9.0)]
    pub paced_rate: f64,
    /// Seconds of each restart run.
    #[arg(long, default_value_t = 10)]
    pub restart_window: u64,
    /// Seconds into a restart run when the restart begins.
    #[arg(long, default_value_t = 3)]
    pub restart_at: u64,
    /// Also profile the bare hop and the agent with `perf` (Debian's
    /// linux-perf, installed when missing) under (c)'s load.
    #[arg(long)]
    pub perf: bool,
    /// Run the benchmark's processes (wrk, nginx, hop, agent) at this nice
    /// value, e.g. -10 while others use the machine (see docs/performance.md).
    #[arg(long, allow_hyphen_values = true)]
    pub nice: Option<i32>,
    /// Let idle vCPUs poll this many ns before halting, for the run
    /// (cpuidle-haltpoll guests; restored afterwards).
    #[arg(long, value_name = "NS")]
    pub idle_poll_ns: Option<u64>,
    /// A flag for the agent's command line (repeat for several), e.g.
    /// `--agent-arg=--proxy-threads=0` to compare runtime set-ups.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Do not build; use target/release/{jwtgate,jwtgate-barehop} as they are.
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(args: &LoadtestArgs) -> Result<()> {
    if !jwtgate_e2e::is_root() {
        bail!("the load test creates network namespaces and loads eBPF programs: run it as root (sudo -E cargo xtask loadtest)");
    }
    if args.rounds == 0 || args.conns.is_empty() || args.conns.contains(&0) {
        bail!("--rounds and every --conns must be at least 1");
    }
    // Before any thread or child exists: they inherit it.
    if let Some(n) = args.nice {
        system::renice(n)?;
    }
    interrupt::install()?;
    setup::run()?;
    if args.perf {
        setup::install_missing(&[("linux-perf", "`cargo xtask loadtest --perf`")], "")?;
    }
    let (agent_bin, hop_bin) = build_binaries(args)?;
    std::env::set_var("JWTGATE_BIN", &agent_bin);
    interrupt::check()?;

    let mut log = Log::new(&build::target_dir().join("loadtest"))?;
    let _idle_poll = args.idle_poll_ns.map(system::IdlePoll::set).transpose()?;
    let header = header(args);
    log.say(&header);
    let scripts = wrk::write_scripts(log.dir())?;

    let mut bed = bed::LoadBed::build(&bed::BedConfig {
        barehop_bin: hop_bin,
        hop_threads: args.hop_threads,
        app_workers: args.app_workers,
        body_bytes: args.body_bytes,
        agent_args: args.agent_args.clone(),
    })?;
    let result = run_phases(&mut bed, args, &scripts, &mut log);
    let teardown = bed.teardown();
    let sections = result?;
    teardown?;

    let mut report = format!("{header}\n");
    for s in &sections {
        report.push_str(s);
        report.push('\n');
    }
    report.push_str(&format!(
        "load average (1 min) at the end: {:.2}\n",
        system::load_average()
    ));
    std::fs::write(log.dir().join("report.md"), &report)?;
    println!("\n{report}");
    println!("raw figures, logs and the report: {}", log.dir().display());
    Ok(())
}

fn run_phases(
    bed: &mut bed::LoadBed,
    args: &LoadtestArgs,
    scripts: &Scripts,
    log: &mut Log,
) -> Result<Vec<String>> {
    let ready = bed.start_agent()?;
    log.say(&format!(
        "bed ready: pod {} (nginx, {} B responses), agent ready in {:.2} s; direct {}, bare hop {}, jwtgate {}",
        bed.faq.pod.ip,
        args.body_bytes,
        ready.as_secs_f64(),
        bed.direct_addr(),
        bed.hop_addr(),
        bed.jwtgate_addr()
    ));
    let mut sections = Vec::new();
    let duration = Duration::from_secs(args.duration);

    if args.phases.contains(&Phase::Throughput) {
        let cfg = throughput::Config {
            rounds: args.rounds,
            duration,
            conns: args.conns.clone(),
            wrk_threads: args.wrk_threads,
            miss_tokens: args.miss_tokens,
        };
        log.say(&format!(
            "throughput: {} rounds × {} connection counts × 4 routes × {} s",
            cfg.rounds,
            cfg.conns.len(),
            args.duration
        ));
        let samples = throughput::run(bed, &cfg, scripts, log)?;
        sections.push(format!(
            "## Throughput and latency (issue 12)\n\n{}\n{}",
            throughput::tables(&samples, &cfg.conns),
            agent_state(bed)?
        ));
        if args.perf {
            sections.push(profiles(bed, args, scripts, log)?);
        }
    }

    let fault_cfg = faults::Config {
        rounds: args.rounds,
        duration,
        conns: args.fault_conns,
        wrk_threads: args.wrk_threads,
        slow_conns: args.slow_conns,
        slow_sources: args.slow_sources,
        flood_sources: args.flood_sources,
        paced_sources: args.paced_sources,
        paced_rate: args.paced_rate,
        restart_window: Duration::from_secs(args.restart_window),
        restart_at: Duration::from_secs(args.restart_at),
    };
    if args.phases.contains(&Phase::Attacks) {
        log.say(&format!(
            "attacks: {} rounds × 4 conditions × {} s",
            args.rounds, args.duration
        ));
        let samples = faults::run_attacks(bed, &fault_cfg, scripts, log)?;
        sections.push(format!(
            "## Legitimate traffic under attack (issue 11)\n\n{}",
            faults::attack_table(&samples, &fault_cfg)
        ));
    }
    if args.phases.contains(&Phase::Restart) {
        log.say(&format!(
            "restart: {} rounds × 2 modes × {} s",
            args.rounds, args.restart_window
        ));
        let samples = faults::run_restarts(bed, &fault_cfg, log)?;
        sections.push(format!(
            "## Legitimate traffic across agent restarts (issue 11)\n\n{}",
            faults::restart_table(&samples, &fault_cfg)
        ));
    }
    if let Some(pid) = bed.agent_pid() {
        let (rss, peak) = jwtgate_e2e::procstat::rss(pid)?;
        sections.push(format!(
            "Agent memory at the end: RSS {:.1} MiB, peak {:.1} MiB (of the agent running last).\n",
            rss as f64 / 1048576.0,
            peak as f64 / 1048576.0
        ));
    }
    Ok(sections)
}

/// The agent's memory and token cache now, in one line.
fn agent_state(bed: &bed::LoadBed) -> Result<String> {
    let (Some(agent), Some(pid)) = (bed.agent(), bed.agent_pid()) else {
        return Ok(String::new());
    };
    let (rss, peak) = jwtgate_e2e::procstat::rss(pid)?;
    let m = agent.metrics()?;
    Ok(format!(
        "Agent after this phase: RSS {:.1} MiB (peak {:.1} MiB); token cache {} entries, {:.1} MiB by its own estimate (jwtgate_token_cache_bytes).\n",
        rss as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        report::int(metric(&m, "jwtgate_token_cache_entries")),
        metric(&m, "jwtgate_token_cache_bytes") / 1048576.0
    ))
}

/// perf profiles of the bare hop and the agent under the same load.
fn profiles(
    bed: &bed::LoadBed,
    args: &LoadtestArgs,
    scripts: &Scripts,
    log: &mut Log,
) -> Result<String> {
    let spec = |addr: std::net::SocketAddr, conns: u32, token_file: Option<PathBuf>| wrk::WrkSpec {
        netns: bed.faq.client.netns.clone(),
        url: format!("http://{addr}{}", throughput::REQUEST_PATH),
        conns,
        threads: args.wrk_threads,
        duration: Duration::from_secs(args.duration),
        token: token_file.is_none().then(jwtgate_e2e::faq::demo_jwt),
        token_file,
    };
    // One token file more than the (d) runs used: this agent has seen none
    // of its tokens.
    let miss_runs = args.rounds * args.conns.len();
    let miss_file =
        throughput::ensure_token_files(&log.tokens_dir(), args.miss_tokens, miss_runs + 1)?
            .pop()
            .context("no token file")?;
    let (lo, hi) = (
        *args.conns.iter().min().unwrap_or(&1),
        *args.conns.iter().max().unwrap_or(&8),
    );
    let mut runs = Vec::new();
    for c in if lo == hi { vec![hi] } else { vec![lo, hi] } {
        runs.push((
            format!("barehop-c{c}"),
            bed.hop_pid(),
            spec(bed.hop_addr(), c, None),
        ));
        runs.push((
            format!("agent-hit-c{c}"),
            bed.agent_pid(),
            spec(bed.jwtgate_addr(), c, None),
        ));
    }
    runs.push((
        format!("agent-miss-c{hi}"),
        bed.agent_pid(),
        spec(bed.jwtgate_addr(), hi, Some(miss_file)),
    ));
    let mut out = String::from(
        "## perf profiles: the bare hop and the agent under the same load\n\n```text\n",
    );
    for (name, pid, spec) in runs {
        let pid = pid.with_context(|| format!("no process for {name}"))?;
        interrupt::check()?;
        log.say(&format!("perf: sampling {name} (pid {pid})"));
        out.push_str(&perf::profile(log.dir(), &name, pid, &spec, scripts)?);
        out.push('\n');
    }
    out.push_str(&format!(
        "```\n\nFull reports: {}/*.txt (and `perf report -i <name>.data` for call graphs).\n",
        log.dir().display()
    ));
    Ok(out)
}

/// Builds the eBPF object, then the agent and the bare hop in one release
/// build (one cargo invocation, so they share their dependencies' builds).
fn build_binaries(args: &LoadtestArgs) -> Result<(PathBuf, PathBuf)> {
    let release = build::target_dir().join("release");
    let (agent, hop) = (release.join("jwtgate"), release.join("jwtgate-barehop"));
    if !args.no_build {
        let object = build::build_ebpf()?;
        let started = Instant::now();
        eprintln!("loadtest: building the release agent and the bare hop");
        setup::sh(
            build::host_cargo()
                .args([
                    "build",
                    "--release",
                    "-p",
                    "jwtgate",
                    "-p",
                    "jwtgate-barehop",
                ])
                .env("JWTGATE_EBPF_OBJ", &object)
                .current_dir(build::workspace_root()),
        )
        .context("building the release agent and the bare hop")?;
        eprintln!("loadtest: built in {:.1?}", started.elapsed());
    }
    for b in [&agent, &hop] {
        if !b.is_file() {
            bail!("{} missing: run without --no-build", b.display());
        }
    }
    Ok((agent, hop))
}

/// The command, the machine and the parameters, as the report's head.
fn header(args: &LoadtestArgs) -> String {
    let command: Vec<String> = std::env::args().skip_while(|a| a != "loadtest").collect();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "# cargo xtask loadtest\n\n\
         command: cargo xtask {}\n\
         date: {date}\n\
         machine: {}\n\
         load average (1 min) at the start: {:.2}\n\
         runs: {} rounds, {} s each; wrk {} thread(s); nginx {} worker(s), {} B bodies; bare hop {}; nice {}; idle polling {}\n",
        command.join(" "),
        system::describe(),
        system::load_average(),
        args.rounds,
        args.duration,
        args.wrk_threads,
        args.app_workers,
        args.body_bytes,
        if args.hop_threads == 0 {
            "current-thread runtime".to_string()
        } else {
            format!("{} worker threads", args.hop_threads)
        },
        args.nice.map_or("unchanged".into(), |n| n.to_string()),
        args.idle_poll_ns
            .map_or("unchanged".into(), |n| format!("{n} ns")),
    )
}

/// The sum of every sample of `name` (a metric name, or a name with its
/// labels) in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            *series == name || (series.starts_with(name) && series[name.len()..].starts_with('{'))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Progress on stderr and in `log.txt`, raw figures in `raw.tsv`, both in
/// `target/loadtest/<unix time>/`.
pub struct Log {
    dir: PathBuf,
    root: PathBuf,
    text: File,
    raw: File,
}

impl Log {
    fn new(root: &Path) -> Result<Self> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let dir = root.join(stamp.to_string());
        std::fs::create_dir_all(&dir)?;
        Ok(Log {
            text: File::create(dir.join("log.txt"))?,
            raw: File::create(dir.join("raw.tsv"))?,
            dir,
            root: root.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shared by every run: the (d) token files.
    pub fn tokens_dir(&self) -> PathBuf {
        self.root.join("tokens")
    }

    pub fn say(&mut self, line: &str) {
        eprintln!("{line}");
        let _ = writeln!(self.text, "{line}");
    }

    pub fn raw(&mut self, line: &str) {
        let _ = writeln!(self.raw, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn sums_metric_series() {
        let text = "# HELP x\njwtgate_token_cache_hits_total 12\njwtgate_token_cache_hits_total_other 5\n\
                    jwtgate_ebpf_events_total{event=\"drop_src\"} 3\njwtgate_ebpf_events_total{event=\"pass\"} 4\n";
        assert_eq!(metric(text, "jwtgate_token_cache_hits_total"), 12.0);
        assert_eq!(metric(text, "jwtgate_ebpf_events_total"), 7.0);
        assert_eq!(
            metric(text, "jwtgate_ebpf_events_total{event=\"drop_src\"}"),
            3.0
        );
        assert!(metric(text, "missing").abs() < f64::EPSILON);
    }
}
