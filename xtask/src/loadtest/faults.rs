//! Issue 11, item 7: legitimate traffic through jwtgate (one valid token,
//! cache hits) while the agent is idle otherwise, under 1 000 slow-header
//! connections, under forged-token floods from many sources, and across
//! agent restarts; with the agent's CPU and memory.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use jwtgate_e2e::attack::{FloodConfig, SlowHeaders, TokenFlood};
use jwtgate_e2e::faq;
use jwtgate_e2e::interrupt;
use jwtgate_e2e::procstat;
use jwtgate_e2e::steady_load::{SteadyLoad, SteadyReport};

use super::bed::LoadBed;
use super::report::{int, median, num, ratio, Table};
use super::throughput::REQUEST_PATH;
use super::wrk::{self, WrkResult, WrkSpec};
use super::{metric, Log, Scripts};

/// How long slow-header connections are held before legitimate traffic is
/// measured: 2 s short of the agent's default header-read timeout.
const SLOW_HEADERS_LEAD: Duration = Duration::from_secs(8);

#[derive(Debug, Clone)]
pub struct Config {
    pub rounds: usize,
    pub duration: Duration,
    /// Connections of the legitimate client.
    pub conns: u32,
    pub wrk_threads: u32,
    pub slow_conns: usize,
    pub slow_sources: usize,
    /// Fresh sources per round for the unthrottled flood.
    pub flood_sources: usize,
    /// Sources of the flood paced under the ban threshold, and their rate.
    pub paced_sources: usize,
    pub paced_rate: f64,
    /// Length of a restart run and when in it the restart happens.
    pub restart_window: Duration,
    pub restart_at: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Idle,
    SlowHeaders,
    PacedFlood,
    Flood,
}

impl Condition {
    const ALL: [Condition; 4] = [
        Condition::Idle,
        Condition::SlowHeaders,
        Condition::PacedFlood,
        Condition::Flood,
    ];
    fn key(self) -> &'static str {
        match self {
            Condition::Idle => "idle",
            Condition::SlowHeaders => "slow-headers",
            Condition::PacedFlood => "paced-flood",
            Condition::Flood => "flood",
        }
    }
}

/// One legitimate-traffic run under one condition.
#[derive(Debug, Clone)]
pub struct Sample {
    condition: Condition,
    wrk: WrkResult,
    /// Agent CPU time over the run, as a share of one CPU.
    agent_cpu_share: f64,
    rss: u64,
    /// What the attack got, in words.
    attack: String,
}

/// The source addresses each attack uses, from the attacker's secondary
/// addresses: slow headers and the paced flood reuse theirs every round
/// (neither is ever banned); the unthrottled flood gets fresh ones each
/// round, since the agent bans them for a minute.
struct Sources {
    slow: Vec<IpAddr>,
    paced: Vec<IpAddr>,
    flood: Vec<Vec<IpAddr>>,
}

fn allot(hosts: &[Ipv4Addr], cfg: &Config) -> Result<Sources> {
    let fixed = cfg.slow_sources + cfg.paced_sources;
    let per_round = cfg.flood_sources;
    if fixed + per_round * cfg.rounds > hosts.len() {
        bail!(
            "{} attacker addresses cannot give {} slow-header + {} paced-flood sources and {} flood sources × {} rounds; lower --flood-sources or --paced-sources",
            hosts.len(),
            cfg.slow_sources,
            cfg.paced_sources,
            per_round,
            cfg.rounds
        );
    }
    let ip = |h: &Ipv4Addr| IpAddr::V4(*h);
    Ok(Sources {
        slow: hosts[..cfg.slow_sources].iter().map(ip).collect(),
        paced: hosts[cfg.slow_sources..fixed].iter().map(ip).collect(),
        flood: (0..cfg.rounds)
            .map(|r| {
                hosts[fixed + r * per_round..fixed + (r + 1) * per_round]
                    .iter()
                    .map(ip)
                    .collect()
            })
            .collect(),
    })
}

fn legit_spec(bed: &LoadBed, cfg: &Config, duration: Duration) -> WrkSpec {
    WrkSpec {
        netns: bed.faq.client.netns.clone(),
        url: format!("http://{}{REQUEST_PATH}", bed.jwtgate_addr()),
        conns: cfg.conns,
        threads: cfg.wrk_threads,
        duration,
        token: Some(faq::demo_jwt()),
        token_file: None,
    }
}

/// The runs under attack, interleaved with idle runs.
pub fn run_attacks(
    bed: &LoadBed,
    cfg: &Config,
    scripts: &Scripts,
    log: &mut Log,
) -> Result<Vec<Sample>> {
    let sources = allot(bed.attack_hosts(), cfg)?;
    let nofile = procstat::raise_nofile_limit()?;
    if (nofile as usize) < cfg.slow_conns + 256 {
        bail!(
            "RLIMIT_NOFILE is {nofile}: too low for {} slow connections",
            cfg.slow_conns
        );
    }
    let mut next_token = 0u64;
    let mut samples = Vec::new();
    for round in 0..cfg.rounds {
        let mut order = Condition::ALL;
        order.rotate_left(round % Condition::ALL.len());
        for condition in order {
            interrupt::check()?;
            let s = one(
                bed,
                cfg,
                scripts,
                condition,
                round,
                &sources,
                &mut next_token,
            )?;
            log.say(&format!(
                "  round {}/{} {:<12} {:>8} req/s  p50 {:>6} µs  p99 {:>7} µs  errors {}  agent cpu {:>4}%  rss {} MiB  {}",
                round + 1,
                cfg.rounds,
                condition.key(),
                int(s.wrk.rps()),
                num(s.wrk.p50),
                num(s.wrk.p99),
                s.wrk.errors.total(),
                num(s.agent_cpu_share * 100.0),
                num(s.rss as f64 / 1048576.0),
                s.attack
            ));
            log.raw(&format!(
                "attack\t{round}\t{}\t{:.0}\t{}\t{}\t{}\t{:.3}\t{}\t{}",
                condition.key(),
                s.wrk.rps(),
                s.wrk.p50,
                s.wrk.p99,
                s.wrk.errors.total(),
                s.agent_cpu_share,
                s.rss,
                s.attack
            ));
            samples.push(s);
        }
    }
    Ok(samples)
}

fn one(
    bed: &LoadBed,
    cfg: &Config,
    scripts: &Scripts,
    condition: Condition,
    round: usize,
    sources: &Sources,
    next_token: &mut u64,
) -> Result<Sample> {
    let target = bed.jwtgate_addr();
    let metrics_before = bed
        .agent()
        .map(|a| a.metrics())
        .transpose()?
        .unwrap_or_default();
    let mut slow = None;
    let mut flood = None;
    match condition {
        Condition::Idle => {}
        Condition::SlowHeaders => {
            let started = Instant::now();
            let s = SlowHeaders::start(
                &bed.attacker.netns,
                sources.slow.clone(),
                target,
                cfg.slow_conns,
            )?;
            if !s.wait_open(cfg.slow_conns as u64, Duration::from_secs(20)) {
                bail!(
                    "only {} of {} slow-header connections opened",
                    s.stats().open.load(std::sync::atomic::Ordering::Relaxed),
                    cfg.slow_conns
                );
            }
            // The agent cuts a head that is not complete 10 s (its default
            // --header-read-timeout-secs) after its first byte, and the
            // attacker reconnects at once: start measuring shortly before
            // that wave, so the window holds the cut and the reconnects.
            std::thread::sleep(SLOW_HEADERS_LEAD.saturating_sub(started.elapsed()));
            slow = Some(s);
        }
        Condition::PacedFlood | Condition::Flood => {
            let (srcs, rate) = match condition {
                Condition::PacedFlood => (sources.paced.clone(), Some(cfg.paced_rate)),
                _ => (sources.flood[round].clone(), None),
            };
            flood = Some(TokenFlood::start(
                &bed.attacker.netns,
                FloodConfig {
                    sources: srcs,
                    target,
                    path: REQUEST_PATH.into(),
                    per_source_rate: rate,
                    first_token: *next_token,
                },
            )?);
            *next_token += 10_000_000;
            // Let it get going before legitimate traffic is measured.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let pid = bed.agent_pid();
    let cpu0 = pid.map(procstat::cpu_time).transpose()?;
    let t0 = Instant::now();
    let result = wrk::run(&legit_spec(bed, cfg, cfg.duration), scripts);
    let wall = t0.elapsed();
    let cpu1 = pid.map(procstat::cpu_time).transpose()?;
    let rss = pid
        .map(procstat::rss)
        .transpose()?
        .map_or(0, |(now, _)| now);
    let attack = match condition {
        Condition::Idle => "—".to_string(),
        Condition::SlowHeaders => {
            let s = slow.take().expect("started above");
            let st = s.stats();
            let text = format!(
                "{} slow connections held open; {} cut by the agent ({} with 408)",
                st.open.load(std::sync::atomic::Ordering::Relaxed),
                st.cut.load(std::sync::atomic::Ordering::Relaxed),
                st.got_408.load(std::sync::atomic::Ordering::Relaxed)
            );
            s.stop()?;
            text
        }
        Condition::PacedFlood | Condition::Flood => {
            let f = flood.take().expect("started above");
            let st = f.stats();
            let get =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let metrics_after = bed
                .agent()
                .map(|a| a.metrics())
                .transpose()?
                .unwrap_or_default();
            // Banned sources are dropped by XDP on the pod's interface, and
            // refused by sk_lookup for what gets past it.
            let dropped = |m: &str| {
                metric(m, "jwtgate_ebpf_events_total{event=\"drop_src\"}")
                    + metric(m, "jwtgate_ebpf_events_total{event=\"deny_src_drop\"}")
            };
            let bans = dropped(&metrics_after) - dropped(&metrics_before);
            let n_sources = match condition {
                Condition::PacedFlood => sources.paced.len(),
                _ => sources.flood[round].len(),
            };
            let text = format!(
                "{} sources{}: {} forged requests, {} answered 401, {} other answers, {} connects failed, {} unanswered; {} packets dropped by source bans (from any banned source, earlier floods' included)",
                n_sources,
                match condition {
                    Condition::PacedFlood => format!(" × {} req/s", cfg.paced_rate),
                    _ => String::new(),
                },
                int(get(&st.sent) as f64),
                int(get(&st.rejected) as f64),
                get(&st.other_status),
                int(get(&st.connect_failures) as f64),
                int(get(&st.io_errors) as f64),
                int(bans),
            );
            f.stop()?;
            text
        }
    };
    let wrk = result?;
    // Give the agent a moment to see the attack's sockets close.
    std::thread::sleep(Duration::from_millis(500));
    Ok(Sample {
        condition,
        wrk,
        agent_cpu_share: cpu0.zip(cpu1).map_or(f64::NAN, |(a, b)| {
            b.saturating_sub(a).as_secs_f64() / wall.as_secs_f64()
        }),
        rss,
        attack,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
    StopStart,
    Surge,
}

impl RestartMode {
    pub const ALL: [RestartMode; 2] = [RestartMode::StopStart, RestartMode::Surge];
    fn label(self) -> &'static str {
        match self {
            RestartMode::StopStart => "restart: SIGTERM, then start the new agent",
            RestartMode::Surge => "surge: start the new agent, then SIGTERM the old",
        }
    }
    fn key(self) -> &'static str {
        match self {
            RestartMode::StopStart => "stop-start",
            RestartMode::Surge => "surge",
        }
    }
}

/// One run of legitimate traffic with an agent restart in the middle.
#[derive(Debug, Clone)]
pub struct RestartSample {
    mode: RestartMode,
    load: SteadyReport,
    /// (first step, second step) of the restart, as `bed.restart_*` report them.
    steps: (Duration, Duration),
}

/// Counted by [`SteadyLoad`] rather than wrk: see `steady_load.rs` for why.
pub fn run_restarts(bed: &mut LoadBed, cfg: &Config, log: &mut Log) -> Result<Vec<RestartSample>> {
    let token = faq::demo_jwt();
    let mut samples = Vec::new();
    for round in 0..cfg.rounds {
        for mode in RestartMode::ALL {
            interrupt::check()?;
            let load = SteadyLoad::start(
                &bed.faq.client.netns,
                bed.jwtgate_addr(),
                REQUEST_PATH,
                &token,
                cfg.conns as usize,
            )?;
            std::thread::sleep(cfg.restart_at);
            let steps = match mode {
                RestartMode::StopStart => bed.restart_stop_start(),
                RestartMode::Surge => bed.restart_surge(),
            };
            std::thread::sleep(cfg.restart_window.saturating_sub(cfg.restart_at));
            let load = load.stop()?;
            let steps = steps?;
            let outage = load.failures_between.map_or("none".to_string(), |(a, b)| {
                format!("{:.2}–{:.2} s", a.as_secs_f64(), b.as_secs_f64())
            });
            log.say(&format!(
                "  round {}/{} {:<10} {:>8} ok  failed {} (refused {}, broken {}, status {}) failures {outage}  p99 {} µs  ({:.2} s / {:.2} s)",
                round + 1,
                cfg.rounds,
                mode.key(),
                int(load.ok as f64),
                load.failed(),
                load.refused,
                load.broken,
                load.bad_status,
                num(load.percentile(99.0)),
                steps.0.as_secs_f64(),
                steps.1.as_secs_f64()
            ));
            log.raw(&format!(
                "restart\t{round}\t{}\t{}\t{}\t{}\t{}\t{}\t{outage}\t{:.3}\t{:.3}",
                mode.key(),
                load.ok,
                load.refused,
                load.broken,
                load.bad_status,
                load.percentile(99.0),
                steps.0.as_secs_f64(),
                steps.1.as_secs_f64()
            ));
            samples.push(RestartSample { mode, load, steps });
            // Let the new agent settle before the next restart.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Ok(samples)
}

pub fn attack_table(samples: &[Sample], cfg: &Config) -> String {
    let of = |c: Condition| samples.iter().filter(move |s| s.condition == c);
    let idle_p99 = median(of(Condition::Idle).map(|s| s.wrk.p99));
    let mut t = Table::new(&[
        "legitimate traffic (jwtgate, cache hits)",
        "req/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99 ÷ idle",
        "errors",
        "agent CPU",
        "agent RSS MiB",
        "target met",
    ]);
    for c in Condition::ALL {
        let p99 = median(of(c).map(|s| s.wrk.p99));
        let errors: u64 = of(c).map(|s| s.wrk.errors.total()).sum();
        let label = match c {
            Condition::Idle => format!("idle ({} conns)", cfg.conns),
            Condition::SlowHeaders => format!("under {} slow-header connections", cfg.slow_conns),
            Condition::PacedFlood => format!(
                "under forged tokens, {} sources × {} req/s (under the ban threshold)",
                cfg.paced_sources, cfg.paced_rate
            ),
            Condition::Flood => format!(
                "under a forged-token flood, {} new sources per round, unthrottled",
                cfg.flood_sources
            ),
        };
        let met = match c {
            Condition::Idle => "—".to_string(),
            _ => {
                if p99 <= 2.0 * idle_p99 && errors == 0 {
                    "yes".into()
                } else {
                    "no".into()
                }
            }
        };
        t.row(vec![
            label,
            int(median(of(c).map(|s| s.wrk.rps()))),
            num(median(of(c).map(|s| s.wrk.p50))),
            num(median(of(c).map(|s| s.wrk.p90))),
            num(p99),
            if c == Condition::Idle {
                "1.00×".into()
            } else {
                ratio(p99 / idle_p99)
            },
            errors.to_string(),
            format!(
                "{} %",
                num(median(of(c).map(|s| s.agent_cpu_share * 100.0)))
            ),
            num(median(of(c).map(|s| s.rss as f64 / 1048576.0))),
            met,
        ]);
    }
    let mut out = t.render();
    out.push_str("\nTarget (issue 11): under each attack legitimate p99 ≤ 2× idle and 0 errors.\nWhat the attacks got (last round):\n");
    for c in [
        Condition::SlowHeaders,
        Condition::PacedFlood,
        Condition::Flood,
    ] {
        if let Some(s) = of(c).next_back() {
            let _ = writeln!(out, "- {}: {}", c.key(), s.attack);
        }
    }
    out
}

pub fn restart_table(samples: &[RestartSample], cfg: &Config) -> String {
    let mut t = Table::new(&[
        "across an agent restart",
        "runs",
        "good requests",
        "failed requests",
        "refused / broken / bad status",
        "failures within (median)",
        "p99 µs",
        "step 1 s",
        "step 2 s",
        "0 failed",
    ]);
    for mode in RestartMode::ALL {
        let runs: Vec<&RestartSample> = samples.iter().filter(|s| s.mode == mode).collect();
        let sum =
            |f: &dyn Fn(&SteadyReport) -> u64| -> u64 { runs.iter().map(|s| f(&s.load)).sum() };
        let failed = sum(&|r| r.failed());
        let window = median(runs.iter().map(|s| {
            s.load
                .failures_between
                .map_or(0.0, |(a, b)| (b - a).as_secs_f64() * 1000.0)
        }));
        t.row(vec![
            mode.label().into(),
            runs.len().to_string(),
            int(sum(&|r| r.ok) as f64),
            int(failed as f64),
            format!(
                "{} / {} / {}",
                sum(&|r| r.refused),
                sum(&|r| r.broken),
                sum(&|r| r.bad_status)
            ),
            format!("{} ms", num(window)),
            num(median(runs.iter().map(|s| s.load.percentile(99.0)))),
            format!(
                "{:.2}",
                median(runs.iter().map(|s| s.steps.0.as_secs_f64()))
            ),
            format!(
                "{:.2}",
                median(runs.iter().map(|s| s.steps.1.as_secs_f64()))
            ),
            if failed == 0 { "yes" } else { "no" }.into(),
        ]);
    }
    let mut out = t.render();
    let _ = writeln!(
        out,
        "\nEach run: {} client threads with keep-alive connections for {} s, the restart {} s in; a failed request is retried after 10 ms. \
         \"refused\": the connect failed (no agent holds the pod's port: fail-closed); \"broken\": the connection closed or reset under a request sent; \
         \"failures within\": first to last failure. Steps: stop-start = (old agent stopped after its drain, new agent ready); surge = (new agent ready, old agent stopped).",
        cfg.conns,
        cfg.restart_window.as_secs(),
        cfg.restart_at.as_secs()
    );
    out
}
