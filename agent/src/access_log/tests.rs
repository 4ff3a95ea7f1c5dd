use std::time::Duration;

use super::*;

fn denial(workload: &str, n: u16) -> Entry {
    Entry {
        start_time: rfc3339(std::time::SystemTime::now()),
        workload: workload.to_string(),
        decision: "denied",
        protocol: "HTTP/1.1",
        method: Some("GET".into()),
        authority: None,
        path: Some(format!("/{n}")),
        response_code: 401,
        response_flags: "-",
        response_code_details: "jwt_authn_access_denied{Jwt_is_expired}".into(),
        reason: "jwt_authn: Jwt is expired".into(),
        policy: None,
        rule: None,
        principal: None,
        duration_ms: 0,
        bytes_received: None,
        bytes_sent: Some(14),
        downstream_remote_address: "10.0.0.1:1".parse().unwrap(),
        downstream_local_address: "10.0.0.2:80".parse().unwrap(),
        user_agent: None,
        x_forwarded_for: None,
    }
}

#[test]
fn allowed_requests_are_sampled_evenly_at_the_given_fraction() {
    for (rate, want) in [(0.0, 0), (0.25, 25), (0.5, 50), (1.0, 100)] {
        let log = AccessLog::without_output(AccessLogConfig {
            allowed_sample: rate,
            ..AccessLogConfig::default()
        });
        let logged = (0..100).filter(|_| log.wants_allowed()).count();
        assert_eq!(logged, want, "rate {rate}");
    }
}

#[test]
fn the_ring_keeps_the_last_denials_per_workload() {
    let log = AccessLog::without_output(AccessLogConfig {
        recent_denials: 3,
        ..AccessLogConfig::default()
    });
    for n in 0..5 {
        log.denied(denial(if n % 2 == 0 { "foo/a" } else { "foo/b" }, n));
    }
    let all: Vec<_> = log
        .recent_denials(None)
        .into_iter()
        .map(|e| e.path.unwrap())
        .collect();
    assert_eq!(all, ["/2", "/3", "/4"]);
    let a: Vec<_> = log
        .recent_denials(Some("foo/a"))
        .into_iter()
        .map(|e| e.path.unwrap())
        .collect();
    assert_eq!(a, ["/2", "/4"]);
}

#[test]
fn lines_over_the_rate_are_counted_not_written() {
    let suppressed = Counter::default();
    let (tx, rx) = sync_channel(100);
    let log = AccessLog::with_sink(
        AccessLogConfig {
            max_rate: 5,
            json: true,
            ..AccessLogConfig::default()
        },
        suppressed.clone(),
        Some(tx),
    );
    for n in 0..8 {
        log.denied(denial("foo/a", n));
    }
    let written: Vec<String> = rx.try_iter().collect();
    assert_eq!(written.len(), 5);
    assert_eq!(suppressed.get(), 3);
    let first: serde_json::Value = serde_json::from_str(&written[0]).unwrap();
    assert_eq!(first["workload"], "foo/a");
    // The ring is not rate limited.
    assert_eq!(log.recent_denials(None).len(), 8);
}

#[test]
fn the_bucket_refills_at_its_rate() {
    let mut bucket = Bucket::new(10);
    let t0 = Instant::now();
    assert!((0..10).all(|_| bucket.take(t0)));
    assert!(!bucket.take(t0));
    assert!(bucket.take(t0 + Duration::from_millis(100)));
    assert!(!bucket.take(t0 + Duration::from_millis(100)));
    let mut unlimited = Bucket::new(0);
    assert!((0..10_000).all(|_| unlimited.take(t0)));
}
