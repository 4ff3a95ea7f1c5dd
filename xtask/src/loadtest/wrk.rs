//! Running wrk (Debian's `wrk`, HTTP/1.1 keep-alive, C event loop) from a
//! client network namespace and reading its figures.
//!
//! wrk prints a human summary; a Lua `done()` hook prints the same numbers
//! on one line we parse instead. With a token file, a second hook sends each
//! request with the next token of the file (the cache-miss path): every
//! token is used once, and a thread that runs out stops early and records
//! how long it ran, so its rate is requests over that time rather than over
//! the whole `-d`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The line `done()` prints, and every field it has.
const MARK: &str = "JWTGATE_LOADTEST";

/// Reports wrk's figures on one line. `setup` numbers the threads so a
/// token file can be shared out between them.
const REPORT_LUA: &str = r#"
-- cargo xtask loadtest: wrk's figures on one machine-readable line.
local threads = {}
local n_threads = 0

function setup(thread)
   thread:set("id", n_threads)
   n_threads = n_threads + 1
   table.insert(threads, thread)
end

function done(summary, latency, requests)
   local span = 0
   local all_spans = true
   for _, t in ipairs(threads) do
      local s = t:get("span_us")
      if s == nil then
         all_spans = false
      elseif s > span then
         span = s
      end
   end
   if not all_spans then span = 0 end
   local e = summary.errors
   io.write(string.format(
      "JWTGATE_LOADTEST requests=%d duration_us=%d span_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50=%d p90=%d p99=%d p999=%d max=%d\n",
      summary.requests, summary.duration, span, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max))
end
"#;

/// Sends every request with the next token of `args[1]` (this thread's
/// share: lines whose index modulo `args[2]` is the thread's id).
const TOKENS_LUA: &str = r#"
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } jg_timespec;
int clock_gettime(int clk, jg_timespec *tp);
]]
local function now_us()
   local ts = ffi.new("jg_timespec")
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local tokens = {}
local next_token = 1
local started = nil
local last = nil

function init(args)
   local n = tonumber(args[2])
   local i = 0
   for line in io.lines(args[1]) do
      if i % n == id then tokens[#tokens + 1] = line end
      i = i + 1
   end
end

function request()
   if started == nil then started = now_us() end
   if next_token > #tokens then
      -- Out of tokens: stop this thread. The requests already handed to
      -- wrk (at most one per connection) reuse the last token.
      if span_us == nil then
         span_us = math.floor(now_us() - started)
         wrk.thread:stop()
      end
      return last
   end
   wrk.headers["Authorization"] = "Bearer " .. tokens[next_token]
   next_token = next_token + 1
   last = wrk.format()
   return last
end
"#;

/// One wrk run.
#[derive(Debug, Clone)]
pub struct WrkSpec {
    /// The client network namespace (a path under /var/run/netns).
    pub netns: PathBuf,
    pub url: String,
    pub conns: u32,
    pub threads: u32,
    pub duration: Duration,
    /// `Authorization: Bearer` on every request.
    pub token: Option<String>,
    /// A new token per request, from this file (one per line).
    pub token_file: Option<PathBuf>,
}

/// wrk's error counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WrkErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Responses that were not 2xx/3xx.
    pub status: u64,
    pub timeout: u64,
}

impl WrkErrors {
    /// Requests that were sent and did not get a good answer.
    pub fn failed_requests(&self) -> u64 {
        self.read + self.write + self.status + self.timeout
    }
    pub fn total(&self) -> u64 {
        self.connect + self.failed_requests()
    }
}

/// What one run measured. Latencies in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkResult {
    pub requests: u64,
    /// The time the requests were sent in: the whole run, or until a
    /// token file ran out.
    pub elapsed: Duration,
    /// True when a token file ran out before the end of the run.
    pub stopped_early: bool,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub errors: WrkErrors,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Writes the Lua scripts into `dir`; returns (plain, with tokens).
pub fn write_scripts(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let plain = dir.join("report.lua");
    let tokens = dir.join("tokens.lua");
    std::fs::write(&plain, REPORT_LUA)?;
    std::fs::write(&tokens, format!("{REPORT_LUA}\n{TOKENS_LUA}"))?;
    Ok((plain, tokens))
}

/// A wrk process started by [`spawn`].
pub struct RunningWrk {
    child: Child,
    what: String,
}

/// Starts wrk in the spec's namespace with the script from [`write_scripts`].
pub fn spawn(spec: &WrkSpec, scripts: &(PathBuf, PathBuf)) -> Result<RunningWrk> {
    let ns = spec
        .netns
        .file_name()
        .and_then(|n| n.to_str())
        .context("client netns has no name")?;
    let secs = spec.duration.as_secs().max(1);
    let threads = spec.threads.clamp(1, spec.conns.max(1));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "wrk"])
        .args(["-t", &threads.to_string(), "-c", &spec.conns.to_string()])
        .args(["-d", &format!("{secs}s"), "--timeout", "2s"]);
    let script = if spec.token_file.is_some() {
        &scripts.1
    } else {
        &scripts.0
    };
    cmd.arg("-s").arg(script);
    if let Some(t) = &spec.token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    cmd.arg(&spec.url);
    if let Some(f) = &spec.token_file {
        cmd.arg("--").arg(f).arg(threads.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().context("starting wrk (Debian package `wrk`)")?;
    Ok(RunningWrk {
        child,
        what: format!("wrk -c{} {}", spec.conns, spec.url),
    })
}

impl RunningWrk {
    /// Waits for wrk to end and parses its figures.
    pub fn wait(self) -> Result<WrkResult> {
        let out = self.child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{} failed ({}):\n{stdout}{}",
                self.what,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse(&stdout).with_context(|| format!("{}: unexpected output:\n{stdout}", self.what))
    }
}

/// Runs wrk to the end.
pub fn run(spec: &WrkSpec, scripts: &(PathBuf, PathBuf)) -> Result<WrkResult> {
    spawn(spec, scripts)?.wait()
}

fn parse(stdout: &str) -> Result<WrkResult> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(MARK))
        .context("no result line from the Lua done() hook")?;
    let field = |name: &str| -> Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name}="))?
            .parse()
            .with_context(|| format!("{name} is not a number"))
    };
    let span = field("span_us")?;
    let duration = field("duration_us")?;
    let stopped_early = span > 0 && span < duration;
    Ok(WrkResult {
        requests: field("requests")?,
        elapsed: Duration::from_micros(if stopped_early { span } else { duration }),
        stopped_early,
        p50: field("p50")? as f64,
        p90: field("p90")? as f64,
        p99: field("p99")? as f64,
        p999: field("p999")? as f64,
        max: field("max")? as f64,
        errors: WrkErrors {
            connect: field("connect")?,
            read: field("read")?,
            write: field("write")?,
            status: field("status")?,
            timeout: field("timeout")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_done_line() {
        let out = "Running 5s test @ http://x\n  1 threads and 8 connections\nJWTGATE_LOADTEST requests=1000 duration_us=5000000 span_us=0 connect=1 read=2 write=3 status=4 timeout=5 p50=100 p90=150 p99=300 p999=900 max=1200\n";
        let r = parse(out).unwrap();
        assert_eq!(r.requests, 1000);
        assert!(!r.stopped_early);
        assert_eq!(r.elapsed, Duration::from_secs(5));
        assert!((r.rps() - 200.0).abs() < 1e-9);
        assert_eq!(r.p99, 300.0);
        assert_eq!(r.errors.failed_requests(), 2 + 3 + 4 + 5);
        assert_eq!(r.errors.total(), 15);
    }

    #[test]
    fn an_early_stop_counts_only_its_span() {
        let out = "JWTGATE_LOADTEST requests=500 duration_us=5000000 span_us=1000000 connect=0 read=0 write=0 status=0 timeout=0 p50=1 p90=1 p99=1 p999=1 max=1\n";
        let r = parse(out).unwrap();
        assert!(r.stopped_early);
        assert!((r.rps() - 500.0).abs() < 1e-9);
    }

    #[test]
    fn no_result_line_is_an_error() {
        assert!(parse("Running 5s test\n").is_err());
    }
}
