//! What an operator sees of a running agent: `/metrics` that Prometheus'
//! linter accepts and a real Prometheus server scrapes, one access-log line
//! per decision (JSON, never the token), and `jwtgate explain` answering
//! "why 403?" from the agent's admin endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jwtgate_e2e::agent::AgentOptions;
use jwtgate_e2e::faq::{demo_jwt, tampered_jwt, FaqBed};
use jwtgate_e2e::privileged;
use serde_json::Value;

fn start(bed: &mut FaqBed, extra: &[&str]) -> Result<()> {
    let opts = AgentOptions {
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..AgentOptions::default()
    };
    bed.node.start_agent(&opts).map(|_| ())
}

/// A denied (no token on a protected path), a rejected (forged token) and
/// an allowed (demo token) request.
fn traffic(bed: &FaqBed) -> Result<()> {
    let addr = bed.pod.mesh_addr();
    assert_eq!(
        bed.client.get(addr, "/api/v1/products/0", None)?.status,
        403
    );
    assert_eq!(
        bed.client
            .get(addr, "/headers", Some(&tampered_jwt()))?
            .status,
        401
    );
    assert_eq!(
        bed.client.get(addr, "/headers", Some(&demo_jwt()))?.status,
        200
    );
    Ok(())
}

#[test]
fn live_metrics_pass_promtool_and_a_real_prometheus_scrapes_them() -> Result<()> {
    privileged!();
    let (Some(promtool), Some(prometheus)) = (which("promtool"), which("prometheus")) else {
        jwtgate_e2e::skip(
            "promtool/prometheus not installed (Debian `prometheus`; `cargo xtask setup`)",
        );
        return Ok(());
    };
    let mut bed = FaqBed::build("obs-prom")?;
    start(&mut bed, &[])?;
    traffic(&bed)?;
    let agent = bed.node.agent().context("agent")?;

    // The classic text format a plain GET gets, through Prometheus' linter.
    let text = agent.metrics()?;
    let mut lint = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut lint.stdin.take().context("stdin")?, text.as_bytes())?;
    let out = lint.wait_with_output()?;
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}\n{text}"
    );

    // A real Prometheus, which negotiates OpenMetrics, scraping every second.
    let server = Prometheus::start(&prometheus, agent.metrics_addr())?;
    let denied = r#"sum(jwtgate_requests_total{destination_workload="productpage",destination_workload_namespace="foo",response_code="403",reason="denied_by_policy"})"#;
    let got = server.eventually(denied, |v| v >= 1.0)?;
    assert_eq!(got, 1.0);
    server.eventually(
        r#"sum(jwtgate_requests_total{reason="jwt_verification_fail"})"#,
        |v| v >= 1.0,
    )?;
    server.eventually(
        r#"sum(jwtgate_requests_total{reason="allowed_no_policy",response_code="200"})"#,
        |v| v >= 1.0,
    )?;
    server.eventually(r#"up{job="jwtgate"}"#, |v| v == 1.0)?;
    server.eventually(r#"jwtgate_ready"#, |v| v == 1.0)?;
    server.eventually(
        r#"sum(jwtgate_decision_duration_seconds_count{destination_workload="productpage"})"#,
        |v| v >= 3.0,
    )?;
    server.eventually(
        r#"sum(jwtgate_ebpf_events_total{program="steer",event="steered"})"#,
        |v| v >= 3.0,
    )?;
    Ok(())
}

#[test]
fn access_log_has_a_line_per_decision_and_explain_says_why() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("obs-log")?;
    start(
        &mut bed,
        &["--log-format", "json", "--access-log-allowed-sample", "1"],
    )?;
    traffic(&bed)?;
    let agent = bed.node.agent().context("agent")?;
    let lines = eventually_lines(&bed, 3)?;
    let log = bed.node.agent_log_full();
    for token in [demo_jwt(), tampered_jwt()] {
        let signature = token.rsplit('.').next().unwrap_or_default().to_string();
        assert!(!log.contains(&signature), "a token reached the log:\n{log}");
    }
    let find = |code: u64| {
        lines
            .iter()
            .find(|l| l["response_code"] == code)
            .cloned()
            .with_context(|| format!("no {code} line in {lines:#?}"))
    };
    let denied = find(403)?;
    assert_eq!(denied["workload"], "foo/productpage");
    assert_eq!(denied["decision"], "denied");
    assert_eq!(denied["method"], "GET");
    assert_eq!(denied["path"], "/api/v1/products/0");
    assert_eq!(denied["policy"], "foo/test-exclude");
    assert_eq!(denied["rule"], 0);
    assert_eq!(
        denied["response_code_details"],
        "rbac_access_denied_matched_policy[ns[foo]-policy[test-exclude]-rule[0]]"
    );
    assert_eq!(
        denied["downstream_remote_address"]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.ip()),
        Some(bed.client.ip.into())
    );
    let rejected = find(401)?;
    assert_eq!(
        rejected["response_code_details"],
        "jwt_authn_access_denied{Jwt_verification_fails}"
    );
    assert_eq!(rejected["reason"], "jwt_authn: Jwt verification fails");
    let allowed = find(200)?;
    assert_eq!(allowed["decision"], "allowed");
    assert_eq!(allowed["response_code_details"], "via_upstream");
    assert_eq!(
        allowed["principal"],
        "testing@secure.istio.io/testing@secure.istio.io"
    );

    // `jwtgate explain` against the agent's admin endpoint.
    let addr = agent.metrics_addr().to_string();
    let out = bed.node.jwtgate(&[
        "explain",
        "--agent",
        &addr,
        "--workload",
        "foo/productpage",
        "--output",
        "json",
    ])?;
    let explained: Value = serde_json::from_slice(&out.stdout)?;
    let policies = explained["authorization_policies"].to_string();
    assert!(policies.contains("foo/test-exclude"), "{explained:#}");
    assert_eq!(
        explained["jwt_rules"][0]["issuer"],
        "testing@secure.istio.io"
    );
    let denials = explained["recent_denials"].as_array().context("denials")?;
    assert_eq!(denials.len(), 2, "{explained:#}");
    assert!(denials
        .iter()
        .any(|d| d["reason"] == "jwt_authn: Jwt verification fails"));
    let text = bed
        .node
        .jwtgate(&["explain", "--agent", &addr, "--workload", "foo/productpage"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DENY foo/test-exclude"), "{text}");
    assert!(
        text.contains("denied by DENY policy foo/test-exclude rule 0"),
        "{text}"
    );
    Ok(())
}

/// The agent log's JSON access-log lines, once at least `n` are there.
fn eventually_lines(bed: &FaqBed, n: usize) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<Value> =
            std::fs::read_to_string(bed.node.agent().context("agent")?.log_path())?
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v.get("response_code_details").is_some())
                .collect();
        if lines.len() >= n {
            return Ok(lines);
        }
        if Instant::now() > deadline {
            bail!(
                "{} access-log lines, wanted {n}:\n{}",
                lines.len(),
                bed.node.agent_log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Prometheus server on a free loopback port scraping the agent every
/// second, its data in a temporary directory; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &Path, target: SocketAddr) -> Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: jwtgate\n  static_configs:\n  - targets: ['{target}']\n"
            ),
        )?;
        let addr = jwtgate_e2e::jwks_server::free_loopback_port()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        Ok(Prometheus {
            child,
            addr,
            _dir: dir,
        })
    }

    /// The value of an instant query with one result, once `ok` holds.
    fn eventually(&self, query: &str, ok: impl Fn(f64) -> bool) -> Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(40);
        let path = format!("/api/v1/query?query={}", percent_encode(query));
        let mut last = String::new();
        loop {
            if let Ok(r) = jwtgate_e2e::http::get_in(None, self.addr, &path, None) {
                last = r.text();
                let value = r.json().ok().and_then(|v: Value| {
                    v["data"]["result"][0]["value"][1]
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                });
                if let Some(v) = value.filter(|v| ok(*v)) {
                    return Ok(v);
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self._dir.path().join("prometheus.log"))
                    .unwrap_or_default();
                bail!("Prometheus never answered `{query}` as wanted; last answer: {last}\n{log}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
