//! Issue 12's comparison: the same requests (a) straight to the app, (b)
//! through the bare hop, (c) through jwtgate with one valid token (cache
//! hits), (d) through jwtgate with a new valid token each (cache misses);
//! at each connection count, interleaved, repeated, medians.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use jwtgate_e2e::faq;
use jwtgate_e2e::interrupt;
use jwtgate_e2e::procstat;
use jwtgate_e2e::tokens::Signer;

use super::bed::LoadBed;
use super::report::{int, median, num, ratio, signed, Table};
use super::wrk::{self, WrkResult, WrkSpec};
use super::{metric, Log, Scripts};

/// The request every path gets: a path the FAQ's DENY policy guards, so
/// jwtgate must verify the token for it to pass.
pub const REQUEST_PATH: &str = "/api/v1/products/0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    Hop,
    Hit,
    Miss,
}

impl Route {
    const ALL: [Route; 4] = [Route::Direct, Route::Hop, Route::Hit, Route::Miss];

    pub fn label(self) -> &'static str {
        match self {
            Route::Direct => "(a) direct to the app",
            Route::Hop => "(b) bare hyper hop (floor)",
            Route::Hit => "(c) jwtgate, one valid token (cache hits)",
            Route::Miss => "(d) jwtgate, new valid token per request",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Hop => "hop",
            Route::Hit => "hit",
            Route::Miss => "miss",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub rounds: usize,
    pub duration: Duration,
    pub conns: Vec<u32>,
    pub wrk_threads: u32,
    /// Tokens per (d) run; a run that uses them all stops early.
    pub miss_tokens: u64,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub route: Route,
    pub conns: u32,
    pub wrk: WrkResult,
    /// CPU time of the proxy process (hop or agent) during the run.
    pub proxy_cpu: Option<Duration>,
    /// Context switches of the proxy's threads during the run.
    pub switches: Option<u64>,
    /// Token cache (hits, misses) during the run, for jwtgate's routes.
    pub cache: Option<(f64, f64)>,
}

impl Sample {
    fn switches_per_request(&self) -> f64 {
        match self.switches {
            Some(n) if self.wrk.requests > 0 => n as f64 / self.wrk.requests as f64,
            _ => f64::NAN,
        }
    }

    fn cpu_us_per_request(&self) -> f64 {
        match self.proxy_cpu {
            Some(cpu) if self.wrk.requests > 0 => {
                cpu.as_secs_f64() * 1e6 / self.wrk.requests as f64
            }
            _ => f64::NAN,
        }
    }
}

pub fn run(bed: &LoadBed, cfg: &Config, scripts: &Scripts, log: &mut Log) -> Result<Vec<Sample>> {
    let token = faq::demo_jwt();
    let n_miss_runs = cfg.rounds * cfg.conns.len();
    let token_files = ensure_token_files(&log.tokens_dir(), cfg.miss_tokens, n_miss_runs)?;
    let mut token_files = token_files.into_iter();

    log.say(&format!(
        "throughput: warming up (2 s per route at {} connections)",
        cfg.conns.iter().max().unwrap_or(&1)
    ));
    for route in [Route::Direct, Route::Hop, Route::Hit] {
        let spec = spec_for(
            bed,
            cfg,
            route,
            *cfg.conns.iter().max().unwrap_or(&1),
            &token,
            None,
        );
        wrk::run(
            &WrkSpec {
                duration: Duration::from_secs(2),
                ..spec
            },
            scripts,
        )?;
    }

    let mut samples = Vec::new();
    for round in 0..cfg.rounds {
        for &conns in &cfg.conns {
            // Rotate the order each round so no route always runs first
            // (or right after the same neighbour).
            let mut order = Route::ALL;
            order.rotate_left(round % Route::ALL.len());
            for route in order {
                interrupt::check()?;
                let file = match route {
                    Route::Miss => Some(token_files.next().context("token files run out")?),
                    _ => None,
                };
                let spec = spec_for(bed, cfg, route, conns, &token, file);
                let s = measure(bed, route, conns, &spec, scripts)?;
                log.say(&format!(
                    "  round {}/{} {:>2} conns {:<6} {:>9} req/s  p50 {:>6} µs  p99 {:>7} µs  cpu {:>6} µs/req{}{}",
                    round + 1,
                    cfg.rounds,
                    conns,
                    route.key(),
                    int(s.wrk.rps()),
                    num(s.wrk.p50),
                    num(s.wrk.p99),
                    num(s.cpu_us_per_request()),
                    if s.wrk.errors.total() > 0 {
                        format!("  ERRORS {:?}", s.wrk.errors)
                    } else {
                        String::new()
                    },
                    if s.wrk.stopped_early {
                        format!("  (tokens used up after {:.1} s)", s.wrk.elapsed.as_secs_f64())
                    } else {
                        String::new()
                    }
                ));
                log.raw(&format!(
                    "throughput\t{round}\t{}\t{conns}\t{:.0}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{}\t{}",
                    route.key(),
                    s.wrk.rps(),
                    s.wrk.p50,
                    s.wrk.p90,
                    s.wrk.p99,
                    s.wrk.p999,
                    s.wrk.max,
                    s.cpu_us_per_request(),
                    s.wrk.errors.total(),
                    s.cache.map_or("-".into(), |(h, m)| format!("{h}/{m}"))
                ));
                samples.push(s);
            }
        }
    }
    Ok(samples)
}

fn spec_for(
    bed: &LoadBed,
    cfg: &Config,
    route: Route,
    conns: u32,
    token: &str,
    token_file: Option<PathBuf>,
) -> WrkSpec {
    let addr = match route {
        Route::Direct => bed.direct_addr(),
        Route::Hop => bed.hop_addr(),
        Route::Hit | Route::Miss => bed.jwtgate_addr(),
    };
    WrkSpec {
        netns: bed.faq.client.netns.clone(),
        url: format!("http://{addr}{REQUEST_PATH}"),
        conns,
        threads: cfg.wrk_threads,
        duration: cfg.duration,
        // Every route gets the same request, token included.
        token: (route != Route::Miss).then(|| token.to_owned()),
        token_file,
    }
}

fn measure(
    bed: &LoadBed,
    route: Route,
    conns: u32,
    spec: &WrkSpec,
    scripts: &Scripts,
) -> Result<Sample> {
    let pid = match route {
        Route::Direct => None,
        Route::Hop => bed.hop_pid(),
        Route::Hit | Route::Miss => bed.agent_pid(),
    };
    let agent = bed
        .agent()
        .filter(|_| matches!(route, Route::Hit | Route::Miss));
    let cache_before = agent.map(cache_counters).transpose()?;
    let cpu_before = pid.map(procstat::cpu_time).transpose()?;
    let switches_before = pid.map(procstat::context_switches).transpose()?;
    let wrk = wrk::run(spec, scripts)?;
    let cpu_after = pid.map(procstat::cpu_time).transpose()?;
    let switches_after = pid.map(procstat::context_switches).transpose()?;
    let cache_after = agent.map(cache_counters).transpose()?;
    Ok(Sample {
        route,
        conns,
        wrk,
        proxy_cpu: cpu_before.zip(cpu_after).map(|(b, a)| a.saturating_sub(b)),
        switches: switches_before
            .zip(switches_after)
            .map(|(b, a)| a.saturating_sub(b)),
        cache: cache_before
            .zip(cache_after)
            .map(|((h0, m0), (h1, m1))| (h1 - h0, m1 - m0)),
    })
}

fn cache_counters(agent: &jwtgate_e2e::Agent) -> Result<(f64, f64)> {
    let text = agent.metrics()?;
    Ok((
        metric(&text, "jwtgate_token_cache_hits_total"),
        metric(&text, "jwtgate_token_cache_misses_total"),
    ))
}

/// The token files of the (d) runs, `per_run` tokens each, all different.
/// Kept under target/loadtest/tokens and reused by later invocations: each
/// invocation starts a new agent with an empty cache.
pub fn ensure_token_files(dir: &Path, per_run: u64, runs: usize) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files: Vec<PathBuf> = (0..runs)
        .map(|k| dir.join(format!("rs256-{per_run}-{k}.txt")))
        .collect();
    let missing: Vec<usize> = (0..runs).filter(|&k| !files[k].is_file()).collect();
    if missing.is_empty() {
        return Ok(files);
    }
    let signer = Signer::istio_sample()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for k in missing {
        interrupt::check()?;
        let started = std::time::Instant::now();
        let tokens = signer.load_tokens(k as u64 * per_run, per_run, threads)?;
        let tmp = files[k].with_extension("tmp");
        std::fs::write(&tmp, tokens.join("\n") + "\n")?;
        std::fs::rename(&tmp, &files[k])?;
        eprintln!(
            "loadtest: signed {per_run} RS256 tokens for (d) run {} in {:.1?} -> {}",
            k + 1,
            started.elapsed(),
            files[k].display()
        );
    }
    Ok(files)
}

/// The table: one row per route and connection count, with ratios against
/// the bare hop at the same connection count; then issue 12's targets.
pub fn tables(samples: &[Sample], conns: &[u32]) -> String {
    let stat = |route: Route, c: u32, f: &dyn Fn(&Sample) -> f64| -> f64 {
        median(
            samples
                .iter()
                .filter(|s| s.route == route && s.conns == c)
                .map(f),
        )
    };
    let rps = |s: &Sample| s.wrk.rps();
    let p50 = |s: &Sample| s.wrk.p50;
    let p99 = |s: &Sample| s.wrk.p99;
    let cpu = |s: &Sample| s.cpu_us_per_request();
    let switches = |s: &Sample| s.switches_per_request();
    let errors = |r: Route, c: u32| -> u64 {
        samples
            .iter()
            .filter(|s| s.route == r && s.conns == c)
            .map(|s| s.wrk.errors.total())
            .sum()
    };

    let mut t = Table::new(&[
        "path",
        "conns",
        "req/s",
        "p50 µs",
        "p99 µs",
        "CPU µs/req",
        "ctx sw/req",
        "req/s ÷ (b)",
        "CPU ÷ (b)",
        "p99 ÷ (b)",
        "p50 − (a) µs",
        "errors",
    ]);
    for &c in conns {
        for route in Route::ALL {
            let is_direct = route == Route::Direct;
            t.row(vec![
                route.label().into(),
                c.to_string(),
                int(stat(route, c, &rps)),
                num(stat(route, c, &p50)),
                num(stat(route, c, &p99)),
                num(stat(route, c, &cpu)),
                format!("{:.2}", stat(route, c, &switches)).replace("NaN", "—"),
                ratio(stat(route, c, &rps) / stat(Route::Hop, c, &rps)),
                if is_direct {
                    "—".into()
                } else {
                    ratio(stat(route, c, &cpu) / stat(Route::Hop, c, &cpu))
                },
                ratio(stat(route, c, &p99) / stat(Route::Hop, c, &p99)),
                if is_direct {
                    "—".into()
                } else {
                    signed(stat(route, c, &p50) - stat(Route::Direct, c, &p50))
                },
                errors(route, c).to_string(),
            ]);
        }
    }
    let mut out = t.render();

    // Cache behaviour, so a reader can check (c) hit and (d) missed.
    let cache = |route: Route| -> (f64, f64) {
        samples
            .iter()
            .filter(|s| s.route == route)
            .filter_map(|s| s.cache)
            .fold((0.0, 0.0), |(h, m), (dh, dm)| (h + dh, m + dm))
    };
    for route in [Route::Hit, Route::Miss] {
        let (h, m) = cache(route);
        out.push_str(&format!(
            "\n{}: token cache {} hits, {} misses over all its runs",
            route.label(),
            int(h),
            int(m)
        ));
    }
    out.push('\n');

    // Issue 12, item 2.
    let (lo, hi) = (
        *conns.iter().min().unwrap_or(&1),
        *conns.iter().max().unwrap_or(&1),
    );
    let mut g = Table::new(&[
        "issue 12 target (jwtgate = (c))",
        "measured",
        "target",
        "met",
    ]);
    let mut goal = |name: String, value: f64, shown: String, target: &str, ok: bool| {
        let met = if value.is_nan() {
            "—"
        } else if ok {
            "yes"
        } else {
            "no"
        };
        g.row(vec![name, shown, target.into(), met.into()]);
    };
    let x = stat(Route::Hit, hi, &rps) / stat(Route::Hop, hi, &rps);
    goal(
        format!("throughput at {hi} conns vs (b)"),
        x,
        ratio(x),
        "≥ 0.90×",
        x >= 0.9,
    );
    let x = stat(Route::Hit, hi, &cpu) / stat(Route::Hop, hi, &cpu);
    goal(
        format!("CPU per request at {hi} conns vs (b)"),
        x,
        ratio(x),
        "≤ 1.10×",
        x <= 1.1,
    );
    let x = stat(Route::Hit, hi, &p99) / stat(Route::Hop, hi, &p99);
    goal(
        format!("p99 at {hi} conns vs (b)"),
        x,
        ratio(x),
        "≤ 1.30×",
        x <= 1.3,
    );
    let x = stat(Route::Hit, lo, &p50) - stat(Route::Direct, lo, &p50);
    goal(
        format!("added p50 at {lo} conn(s) over (a)"),
        x,
        format!("{} µs", signed(x)),
        "≤ +25 µs",
        x <= 25.0,
    );
    out.push('\n');
    out.push_str(&g.render());
    out
}
