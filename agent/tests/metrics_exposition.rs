//! The `/metrics` exposition with every family populated: it must pass
//! Prometheus' own linter (`promtool check metrics`, Debian's
//! `prometheus` package), and every query of the Grafana dashboard in
//! `deploy/grafana/` must name a series the agent exports.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use jwtgate::metrics::{
    BanReport, ConnectionReport, InboundEvent, JwksStoreReport, KernelReport, Metrics, Protocol,
    RequestKey, TokenCacheReport,
};

/// Metrics as a busy agent has them: a workload with allowed and denied
/// requests, TCP traffic, every node-wide report non-zero.
fn populated() -> Metrics {
    let metrics = Metrics::new();
    let wl = metrics.add_workload("foo/web");
    for (code, flags, reason) in [
        (200, "-", "allowed_by_policy"),
        (403, "-", "denied_by_policy"),
        (401, "-", "jwt_expired"),
        (503, "UF", "allowed_by_policy"),
        (400, "DPE", "request_refused"),
    ] {
        let key = RequestKey {
            protocol: Protocol::Http,
            code,
            flags,
            reason,
        };
        wl.request(key, Duration::from_micros(700));
    }
    wl.decision(Duration::from_micros(40));
    for event in InboundEvent::ALL {
        wl.event(event);
    }
    let open = wl.connection();
    wl.tcp_bytes(10, 20);
    let fetches = metrics.jwks_fetches();
    fetches.record("https://idp.example/keys", true);
    fetches.record("https://idp.example/keys", false);
    metrics.report(|| {
        Some(TokenCacheReport {
            hits: 5,
            misses: 2,
            negative_hits: 1,
            entries: 2,
            max_entries: 100,
            bytes: 2000,
            max_bytes: 1 << 20,
            verifications: vec![("RS256", 2, 1)],
            ..TokenCacheReport::default()
        })
    });
    metrics.report(|| {
        Some(BanReport {
            workload_bans: 1,
            max_entries: 10,
            max_bytes: 1000,
            ..BanReport::default()
        })
    });
    metrics.report(|| {
        Some(JwksStoreReport {
            documents: 1,
            keys: 2,
            bytes: 900,
            max_bytes: 1 << 25,
            document_max_bytes: 1 << 20,
            document_max_keys: 100,
            timeout_max_seconds: 10,
        })
    });
    metrics.report(|| {
        Some(ConnectionReport {
            open: 1,
            max: 32768,
            sources: 1,
            per_source_max: 1024,
            refused_node: 0,
            refused_source: 3,
            requests_in_progress: 2,
            requests_max: 4096,
            requests_per_source_max: 1024,
            requests_overloaded: 5,
            requests_overloaded_source: 7,
        })
    });
    metrics.report(|| {
        Some(KernelReport(vec![
            ("steer", "steered", 4),
            ("steer", "no_listener_drop", 1),
            ("guard", "drop_src", 6),
            ("guard", "drop_pair", 2),
        ]))
    });
    metrics.set_ready(true);
    metrics.access_log_suppressed.inc();
    // Keep the connection counted as open past this function.
    std::mem::forget(open);
    metrics
}

#[test]
fn exposition_passes_promtool_check_metrics() {
    let Some(promtool) = which("promtool") else {
        jwtgate_e2e::skip(
            "promtool not installed (Debian package `prometheus`; `cargo xtask setup`)",
        );
        return;
    };
    let text = populated().prometheus_text();
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {}\n{report}\n--- exposition:\n{text}",
        out.status
    );
}

#[test]
fn every_dashboard_query_names_an_exported_series() {
    let exported = series_names(&populated().prometheus_text());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/jwtgate.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(queries.len() > 20, "{} queries found", queries.len());
    let mut referenced = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "query without a jwtgate metric: {q}");
        for name in names {
            assert!(
                exported.contains(&name),
                "{name} (in `{q}`) is not exported; exported: {exported:?}"
            );
            referenced.insert(name);
        }
    }
    // The panels the issue asks for are there.
    let titles: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str().map(str::to_lowercase))
        .collect();
    for want in [
        "decisions by reason",
        "token cache hit ratio",
        "decision latency",
        "jwks fetches",
        "xdp drops",
        "connections",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel about {want}: {titles:?}"
        );
    }
    assert!(referenced.contains("jwtgate_requests_total"));
    assert!(referenced.contains("jwtgate_requests_overloaded_total"));
}

/// Every sample and family name in a text exposition.
fn series_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                rest.split(' ').next()
            } else if l.starts_with('#') {
                None
            } else {
                l.split(['{', ' ']).next()
            }
        })
        .map(str::to_string)
        .collect()
}

/// The `expr` of every target and the `query` of every template variable.
fn collect_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(q)) => out.push(q.clone()),
                    ("query", serde_json::Value::String(q)) if q.contains("jwtgate_") => {
                        out.push(q.clone())
                    }
                    _ => collect_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_queries(i, out)),
        _ => {}
    }
}

/// Identifiers in a PromQL expression that start with `jwtgate_`.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(i) = rest.find("jwtgate_") {
        let preceded = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !preceded {
            names.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[test]
fn names_are_found_in_queries_and_expositions() {
    assert_eq!(
        metric_names("sum(rate(jwtgate_a_total{x=\"y\"}[5m])) / my_jwtgate_c + jwtgate_b"),
        ["jwtgate_a_total", "jwtgate_b"]
    );
    let names = series_names("# TYPE jwtgate_x counter\njwtgate_x_total{a=\"b\"} 1\njwtgate_y 2\n");
    assert!(names.contains("jwtgate_x_total") && names.contains("jwtgate_y"));
}
