//! Decisions for connections that are not HTTP (§3.11): Istio also turns
//! every AuthorizationPolicy into a network RBAC filter for TCP filter
//! chains, and a connection the proxy classifies as TCP is judged by that
//! filter once, at its start. No jwt_authn (there is no request to carry a
//! token), HTTP-only fields handled as the network filter handles them
//! (`matcher::rule_matches_connection`), DENY before ALLOW; a denial closes
//! the connection, so there is no status or body to send.

use std::net::IpAddr;

use crate::policy::{Action, AuthzPolicy, WorkloadPolicy};

use super::engine::first_matching_rule;
use super::matcher::{rule_matches_connection, Attributes};
use super::{Decision, HeaderEdits};

/// A TCP connection as the network RBAC filter sees it.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

/// Decide one connection: `allowed`, `reason` and `policy` are filled in;
/// `status` is 200 or 403 for logs and counters only.
pub fn evaluate_connection(policy: &WorkloadPolicy, conn: &Connection) -> Decision {
    let attrs = Attributes {
        method: "",
        path: "",
        query: None,
        host: "",
        headers: super::header_view::HeaderView::client(&[]),
        port: conn.destination_port,
        source_ip: conn.source_ip,
        // No X-Forwarded-For on a connection: the peer is the remote.
        remote_ip: conn.source_ip,
        destination_ip: conn.destination_ip,
        identity: None,
    };
    // CUSTOM acts as DENY (no ext_authz provider), as on the HTTP path.
    for (action, name) in [(Action::Custom, "CUSTOM"), (Action::Deny, "DENY")] {
        if let Some((p, i)) = first_match(policy, action, &attrs) {
            return decision(
                false,
                format!("denied by {name} policy {} rule {i} (network RBAC)", p.id()),
                Some(p.id()),
            );
        }
    }
    if let Some((p, i)) = first_match(policy, Action::Audit, &attrs) {
        tracing::info!(policy = %p.id(), rule = i, source = %conn.source_ip, "AUDIT policy matched a connection");
    }
    if !policy.authz.iter().any(|p| p.action == Action::Allow) {
        return decision(true, "no ALLOW policy applies".into(), None);
    }
    match first_match(policy, Action::Allow, &attrs) {
        Some((p, i)) => decision(
            true,
            format!("allowed by ALLOW policy {} rule {i} (network RBAC)", p.id()),
            Some(p.id()),
        ),
        None => decision(
            false,
            "no ALLOW policy matched (network RBAC: rules with HTTP-only fields do not apply to TCP)".into(),
            None,
        ),
    }
}

fn first_match<'p>(
    policy: &'p WorkloadPolicy,
    action: Action,
    attrs: &Attributes,
) -> Option<(&'p AuthzPolicy, usize)> {
    first_matching_rule(policy, action, |r| {
        rule_matches_connection(r, action, attrs)
    })
}

fn decision(allowed: bool, reason: String, policy: Option<String>) -> Decision {
    Decision {
        status: if allowed { 200 } else { 403 },
        allowed,
        body: String::new(),
        reason,
        principal: None,
        policy,
        audit: None,
        www_authenticate: None,
        forward_path: String::new(),
        headers: HeaderEdits::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySet, WorkloadRef};

    /// The policies of `yaml` that select app=db in namespace foo.
    fn policy(yaml: &str) -> WorkloadPolicy {
        let (set, errors) = PolicySet::parse(&[("test".into(), yaml.into())]);
        assert!(errors.is_empty(), "{errors:?}");
        set.for_workload(
            &WorkloadRef {
                namespace: "foo".into(),
                labels: [("app".to_string(), "db".to_string())].into(),
            },
            "istio-system",
        )
    }

    fn conn(src: &str, port: u16) -> Connection {
        Connection {
            source_ip: src.parse().unwrap(),
            destination_ip: "10.0.0.9".parse().unwrap(),
            destination_port: port,
        }
    }

    fn ap(action: &str, rules: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\n\
             spec:\n  action: {action}\n  rules:\n{rules}"
        )
    }

    #[test]
    fn the_faq_deny_without_a_principal_denies_every_connection() {
        // DENY notRequestPrincipals: ['*'] — the HTTP-only field is dropped,
        // leaving a rule that matches every connection.
        let p = policy(&ap(
            "DENY",
            "  - from:\n    - source: {notRequestPrincipals: ['*']}\n    to:\n    - operation: {notPaths: [/productpage]}\n",
        ));
        let d = evaluate_connection(&p, &conn("10.0.0.5", 3306));
        assert!(!d.allowed, "{d:?}");
        assert!(d.reason.contains("DENY"), "{}", d.reason);
    }

    #[test]
    fn allow_rules_with_http_fields_are_dropped() {
        // Only HTTP-only rules: nothing allows TCP (istio tcp/allow-only-http).
        let p = policy(&ap("ALLOW", "  - to:\n    - operation: {methods: [GET]}\n"));
        assert!(!evaluate_connection(&p, &conn("10.0.0.5", 3306)).allowed);
        // A rule on ports and source IPs applies.
        let p = policy(&ap(
            "ALLOW",
            "  - to:\n    - operation: {methods: [GET]}\n  - from:\n    - source: {ipBlocks: [10.0.0.0/24]}\n    to:\n    - operation: {ports: ['3306']}\n",
        ));
        assert!(evaluate_connection(&p, &conn("10.0.0.5", 3306)).allowed);
        assert!(!evaluate_connection(&p, &conn("10.0.1.5", 3306)).allowed);
        assert!(!evaluate_connection(&p, &conn("10.0.0.5", 3307)).allowed);
    }

    #[test]
    fn deny_rules_lose_only_their_http_fields() {
        // DENY {ports: 8080, methods: GET} denies all TCP on 8080.
        let p = policy(&ap(
            "DENY",
            "  - to:\n    - operation: {ports: ['8080'], methods: [GET]}\n",
        ));
        assert!(!evaluate_connection(&p, &conn("10.0.0.5", 8080)).allowed);
        assert!(evaluate_connection(&p, &conn("10.0.0.5", 8081)).allowed);
        // A header condition is dropped too.
        let p = policy(&ap(
            "DENY",
            "  - from:\n    - source: {ipBlocks: [10.0.0.5/32]}\n    when:\n    - {key: 'request.headers[x-a]', values: [b]}\n",
        ));
        assert!(!evaluate_connection(&p, &conn("10.0.0.5", 1)).allowed);
        assert!(evaluate_connection(&p, &conn("10.0.0.6", 1)).allowed);
    }

    #[test]
    fn no_policy_allows() {
        let d = evaluate_connection(&WorkloadPolicy::default(), &conn("10.0.0.5", 1));
        assert!(d.allowed);
    }
}
