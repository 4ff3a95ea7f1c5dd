use std::time::Duration;

use super::*;

fn key(code: u16, reason: &'static str) -> RequestKey {
    RequestKey {
        protocol: Protocol::Http,
        code,
        flags: "-",
        reason,
    }
}

#[test]
fn workload_series_carry_istio_labels_and_leave_with_the_workload() {
    let metrics = Metrics::new();
    let wl = metrics.add_workload("foo/app");
    wl.request(key(403, "denied_by_policy"), Duration::from_millis(2));
    wl.request(key(403, "denied_by_policy"), Duration::from_millis(3));
    wl.event(InboundEvent::TcpDenied);
    let _open = wl.connection();
    metrics.set_ready(true);
    let text = metrics.prometheus_text();
    assert!(
        text.contains(
            "jwtgate_requests_total{reporter=\"destination\",destination_workload=\"app\",destination_workload_namespace=\"foo\",request_protocol=\"http\",response_code=\"403\",response_flags=\"-\",reason=\"denied_by_policy\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("# TYPE jwtgate_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("jwtgate_request_duration_seconds_count{reporter=\"destination\",destination_workload=\"app\",destination_workload_namespace=\"foo\",request_protocol=\"http\",response_code=\"403\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("jwtgate_inbound_events_total{destination_workload=\"app\",destination_workload_namespace=\"foo\",event=\"tcp_denied\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("jwtgate_connections_active{destination_workload=\"app\",destination_workload_namespace=\"foo\"} 1"),
        "{text}"
    );
    assert!(text.contains("jwtgate_ready 1"), "{text}");
    metrics.remove_workload("foo/app");
    assert!(!metrics
        .prometheus_text()
        .contains("destination_workload=\"app\""));
}

#[test]
fn openmetrics_names_counters_by_family_and_ends_with_eof() {
    let metrics = Metrics::new();
    metrics
        .add_workload("foo/app")
        .request(key(200, "allowed"), Duration::ZERO);
    let text = metrics.openmetrics();
    assert!(text.contains("# TYPE jwtgate_requests counter"), "{text}");
    assert!(text.contains("jwtgate_requests_total{"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn jwks_fetches_are_counted_and_forgotten_with_their_uri() {
    let metrics = Metrics::new();
    let fetches = metrics.jwks_fetches();
    fetches.record("http://jwks/a", true);
    fetches.record("http://jwks/a", false);
    fetches.record("http://jwks/b", false);
    let text = metrics.prometheus_text();
    assert!(
        text.contains("jwtgate_jwks_fetches_total{uri=\"http://jwks/a\",result=\"failure\"} 1"),
        "{text}"
    );
    fetches.retain(&["http://jwks/b".to_string()]);
    let text = metrics.prometheus_text();
    assert!(!text.contains("http://jwks/a"), "{text}");
    assert_eq!(fetches.count("http://jwks/b", false), 1);
}

#[test]
fn reports_are_read_at_each_scrape() {
    let metrics = Metrics::new();
    let value = Arc::new(std::sync::atomic::AtomicU64::new(7));
    let read = value.clone();
    metrics.report(move || {
        Some(KernelReport(vec![(
            "guard",
            "drop_pair",
            read.load(std::sync::atomic::Ordering::Relaxed),
        )]))
    });
    assert!(metrics
        .prometheus_text()
        .contains("jwtgate_ebpf_events_total{program=\"guard\",event=\"drop_pair\"} 7"));
    value.store(9, std::sync::atomic::Ordering::Relaxed);
    assert!(metrics
        .prometheus_text()
        .contains("jwtgate_ebpf_events_total{program=\"guard\",event=\"drop_pair\"} 9"));
    metrics.report(|| None::<BanReport>);
    assert!(!metrics.prometheus_text().contains("jwtgate_bans_total"));
}
