//! The "remote" client address of `remoteIpBlocks` / `remote.ip` (§3.4:
//! Envoy's `remote_ip`, the client after X-Forwarded-For).
//!
//! Istio's sidecar inbound listener runs with `use_remote_address: false`
//! and `xff_num_trusted_hops` = `numTrustedProxies` (0 unless the proxy's
//! gateway topology says otherwise). Envoy then takes, from the
//! X-Forwarded-For list as received, the address `trusted_hops` places from
//! the right (0 = the last entry); when the header is absent, has too few
//! entries or that entry is not an IP address, the connection's peer is the
//! remote address. Like Istio, this trusts the header: a client can claim
//! any remote address unless a proxy in front rewrites it, which is why
//! `ipBlocks` (the direct peer) is the field to use for network-level rules.

use std::net::IpAddr;

use crate::jwt::HeaderLine;

/// `numTrustedProxies` of Istio's default gateway topology.
pub const XFF_NUM_TRUSTED_HOPS: usize = 0;

pub fn remote_ip<L: HeaderLine>(headers: &[L], peer: IpAddr, trusted_hops: usize) -> IpAddr {
    let joined: Vec<&str> = headers
        .iter()
        .filter(|l| l.name().eq_ignore_ascii_case("x-forwarded-for"))
        .map(|l| l.value())
        .collect();
    if joined.is_empty() {
        return peer;
    }
    // Several header lines are one comma-separated list (RFC 9110 §5.3).
    let joined = joined.join(",");
    let entries: Vec<&str> = joined.split(',').map(str::trim).collect();
    entries
        .len()
        .checked_sub(trusted_hops + 1)
        .and_then(|i| entries[i].parse::<IpAddr>().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xff_vectors() {
        // Envoy docs "x-forwarded-for" examples 2 and 4 (use_remote_address
        // false), plus the fallbacks.
        let peer: IpAddr = "10.11.12.13".parse().unwrap();
        let xff = "203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5";
        let h = |v: &str| vec![("X-Forwarded-For".to_string(), v.to_string())];
        type Headers = Vec<(String, String)>;
        let cases: &[(Headers, usize, &str)] = &[
            (h(xff), 0, "192.0.2.5"),
            (h(xff), 2, "203.0.113.10"),
            (h(xff), 3, "203.0.113.128"),
            (h(xff), 4, "10.11.12.13"),
            (vec![], 0, "10.11.12.13"),
            (h("not-an-ip"), 0, "10.11.12.13"),
            (h("2001:db8::1"), 0, "2001:db8::1"),
            (
                vec![
                    ("x-forwarded-for".into(), "1.1.1.1".into()),
                    ("x-forwarded-for".into(), "2.2.2.2".into()),
                ],
                0,
                "2.2.2.2",
            ),
        ];
        for (headers, hops, want) in cases {
            assert_eq!(
                remote_ip(headers, peer, *hops).to_string(),
                *want,
                "{headers:?} {hops}"
            );
        }
    }
}
