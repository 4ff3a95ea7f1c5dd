//! One access-log line: Envoy's fields (Istio's JSON access-log keys where
//! Envoy has the field) plus jwtgate's decision, policy, rule and reason.
//! Never a token: no query string (it may carry `access_token` or a
//! `fromParams` token), no header but User-Agent and X-Forwarded-For, the
//! principal as `iss/sub` only.

use std::net::SocketAddr;

use serde::Serialize;

/// Longest path, authority or user agent kept in a line (and in the ring
/// of recent denials): a 60 KiB request target must not make a 60 KiB
/// log line.
pub const MAX_FIELD: usize = 512;

/// What one decision looked like.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// RFC 3339, UTC, milliseconds (Envoy's `%START_TIME%`).
    pub start_time: String,
    /// `namespace/name` of the workload the request was for.
    pub workload: String,
    /// `allowed` or `denied`.
    pub decision: &'static str,
    /// `HTTP/1.1`, `HTTP/2` or `TCP`.
    pub protocol: &'static str,
    pub method: Option<String>,
    pub authority: Option<String>,
    /// The path without its query.
    pub path: Option<String>,
    /// The status the client got (0 for a TCP connection, as Envoy logs it).
    pub response_code: u16,
    pub response_flags: &'static str,
    pub response_code_details: String,
    /// jwtgate's explanation (the text `jwtgate check` prints).
    pub reason: String,
    /// The policy (`namespace/name`) and rule index that decided, if one did.
    pub policy: Option<String>,
    pub rule: Option<usize>,
    /// `iss/sub` of the verified token, if any.
    pub principal: Option<String>,
    pub duration_ms: u64,
    /// Request and response body sizes: from `Content-Length` for HTTP
    /// (absent when a body is streamed without one), counted for TCP.
    pub bytes_received: Option<u64>,
    pub bytes_sent: Option<u64>,
    pub downstream_remote_address: SocketAddr,
    pub downstream_local_address: SocketAddr,
    pub user_agent: Option<String>,
    pub x_forwarded_for: Option<String>,
}

impl Entry {
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Envoy's default text format, reordered a little, plus jwtgate's
    /// fields as `key="value"`.
    pub fn text(&self) -> String {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
        let num = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
        let request = match (&self.method, &self.path) {
            (Some(m), Some(p)) => format!("{m} {p} {}", self.protocol),
            _ => self.protocol.to_string(),
        };
        format!(
            "[{time}] {workload} {request:?} {decision} {code} {flags} {details} {received} {sent} {duration}ms \"{xff}\" \"{ua}\" \"{authority}\" {local} {remote} principal={principal:?} policy={policy:?} rule={rule} reason={reason:?}",
            time = self.start_time,
            workload = self.workload,
            decision = self.decision,
            code = self.response_code,
            flags = self.response_flags,
            details = self.response_code_details,
            received = num(self.bytes_received),
            sent = num(self.bytes_sent),
            duration = self.duration_ms,
            xff = dash(&self.x_forwarded_for),
            ua = dash(&self.user_agent),
            authority = dash(&self.authority),
            local = self.downstream_local_address,
            remote = self.downstream_remote_address,
            principal = dash(&self.principal),
            policy = dash(&self.policy),
            rule = self.rule.map_or_else(|| "-".to_string(), |r| r.to_string()),
            reason = self.reason,
        )
    }
}

/// `s` cut to [`MAX_FIELD`] bytes (on a character boundary).
pub fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_FIELD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The path of a request target, without its query (tokens travel there).
pub fn path_without_query(target: &str) -> String {
    bounded(target.split_once('?').map_or(target, |(p, _)| p))
}

/// `at` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(at: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(at)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            start_time: "2026-12-02T10:00:00.000Z".into(),
            workload: "foo/web".into(),
            decision: "denied",
            protocol: "HTTP/1.1",
            method: Some("GET".into()),
            authority: Some("web.foo".into()),
            path: Some(path_without_query("/admin?access_token=secret.jwt.value")),
            response_code: 403,
            response_flags: "-",
            response_code_details:
                "rbac_access_denied_matched_policy[ns[foo]-policy[deny]-rule[0]]".into(),
            reason: "denied by DENY policy foo/deny rule 0".into(),
            policy: Some("foo/deny".into()),
            rule: Some(0),
            principal: None,
            duration_ms: 1,
            bytes_received: Some(0),
            bytes_sent: Some(19),
            downstream_remote_address: "10.0.0.1:40000".parse().unwrap(),
            downstream_local_address: "10.0.0.2:8000".parse().unwrap(),
            user_agent: Some("curl/8".into()),
            x_forwarded_for: None,
        }
    }

    #[test]
    fn neither_form_carries_the_query() {
        let e = entry();
        for line in [e.json(), e.text()] {
            assert!(!line.contains("secret"), "{line}");
            assert!(line.contains("/admin"), "{line}");
            assert!(line.contains("foo/deny"), "{line}");
        }
        let json: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(json["response_code"], 403);
        assert_eq!(json["rule"], 0);
        assert_eq!(json["downstream_remote_address"], "10.0.0.1:40000");
    }

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_FIELD);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_FIELD);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_time_is_rfc3339_with_milliseconds() {
        let t = rfc3339(std::time::SystemTime::now());
        assert_eq!(t.len(), "2026-12-02T10:00:00.000Z".len(), "{t}");
        assert!(t.ends_with('Z'), "{t}");
    }
}
