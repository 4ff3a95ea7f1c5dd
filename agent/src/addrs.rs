//! Addresses the agent must treat specially: the node's own, CIDRs from the
//! command line, and the ranges a tenant-supplied `jwksUri` must not reach.
//! Shared by the ban policy (`proxy/bans.rs`: never ban the node or an
//! exempt CIDR) and JWKS fetching (`sources/jwks.rs`: never fetch from the
//! node's loopback, link-local or metadata addresses).
//!
//! Every check first folds an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
//! to its IPv4 form, so one rule covers both spellings.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address block, `10.0.0.0/8` or `fd00::/8`; a bare address is a /32
/// or /128. Host bits are ignored (`10.1.2.3/8` is `10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn new(net: IpAddr, len: u8) -> Option<Cidr> {
        let net = canonical(net);
        (len <= max_len(net)).then_some(Cidr { net, len })
    }

    /// Whether `ip` lies in the block (IPv4-mapped addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.len),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.len),
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address or CIDR (10.0.0.0/8, fd00::/8)");
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => {
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (ip, Some(len.parse::<u8>().map_err(|_| bad())?))
            }
            None => (s, None),
        };
        let ip: IpAddr = ip.trim().parse().map_err(|_| bad())?;
        // A mapped address given with a /96+ length keeps its meaning.
        let len = match (ip, len) {
            (IpAddr::V6(v6), Some(len)) if v6.to_ipv4_mapped().is_some() && len >= 96 => {
                Some(len - 96)
            }
            (_, len) => len,
        };
        let ip = canonical(ip);
        Cidr::new(ip, len.unwrap_or(max_len(ip))).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; everything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn max_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let (whole, rest) = ((len / 8) as usize, len % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

/// Why a `jwksUri` may not be fetched from this address by default, or
/// `None` when it is an ordinary unicast address that is not the node's.
///
/// The agent fetches from the node's own network (hostNetwork), where no
/// NetworkPolicy applies: a tenant who may write a RequestAuthentication
/// must not be able to make it read cloud metadata (credentials), a
/// service bound to the node's loopback, or anything else only the node
/// itself can reach.
pub fn restricted_for_fetch(ip: IpAddr, node: &[IpAddr]) -> Option<&'static str> {
    let ip = canonical(ip);
    let own = |ip: IpAddr| {
        node.iter()
            .any(|n| canonical(*n) == ip)
            .then_some("one of the node's own addresses")
    };
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4).or_else(|| own(ip)),
        IpAddr::V6(v6) => {
            // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address, so
            // that address decides.
            if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                let v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
                return restricted_v4(v4).or_else(|| own(IpAddr::V4(v4)));
            }
            restricted_v6(v6).or_else(|| own(ip))
        }
    }
}

/// Cloud metadata endpoints outside the link-local range.
const METADATA_V4: [Ipv4Addr; 1] = [
    // Alibaba Cloud ECS metadata service.
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: [Ipv6Addr; 1] = [
    // AWS EC2 instance metadata over IPv6 (fd00:ec2::254).
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254),
];

fn restricted_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address (cloud metadata lives there)")
    } else if METADATA_V4.contains(&ip) {
        Some("a cloud metadata address")
    } else if ip.octets()[0] == 0 {
        Some("an unspecified (0.0.0.0/8) address")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("not a unicast address")
    } else {
        None
    }
}

fn restricted_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("the unspecified address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address (cloud metadata lives there)")
    } else if METADATA_V6.contains(&ip) {
        Some("a cloud metadata address")
    } else if ip.is_multicast() {
        Some("not a unicast address")
    } else {
        None
    }
}

/// Every address configured on the agent's own network namespace — with
/// `hostNetwork`, the node's: its interfaces, the CNI bridge's gateway
/// address (the source of kubelet probes and of SNATed NodePort traffic as
/// pods see it), loopback. Read fresh on each call; a failure to list
/// yields an empty list and the caller's other checks still apply.
pub fn node_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let Some(addr) = ifa.address else {
            continue;
        };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match_both_spellings() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.2.3/8");
        assert!(c.contains(ip("10.200.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")), "mapped IPv4 matches");
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let host: Cidr = "192.168.1.7".parse().unwrap();
        assert!(host.contains(ip("192.168.1.7")) && !host.contains(ip("192.168.1.8")));
        let mapped: Cidr = "::ffff:172.16.0.0/108".parse().unwrap();
        assert!(mapped.contains(ip("172.16.9.9")) && !mapped.contains(ip("172.32.0.1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let odd: Cidr = "10.0.0.0/9".parse().unwrap();
        assert!(odd.contains(ip("10.127.255.255")) && !odd.contains(ip("10.128.0.0")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "fd00::/129",
            "x",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fetch_restrictions_cover_metadata_loopback_and_the_node() {
        let node = [ip("10.0.0.5"), ip("2001:db8::5")];
        let refused = [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "100.100.100.200",
            "fd00:ec2::254",
            "fe80::1",
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "10.0.0.5",
            "::ffff:10.0.0.5",
            "2001:db8::5",
        ];
        for a in refused {
            assert!(restricted_for_fetch(ip(a), &node).is_some(), "{a}");
        }
        for a in [
            "10.0.0.6",
            "8.8.8.8",
            "2001:db8::6",
            "fd00:ec2::253",
            "100.100.100.201",
        ] {
            assert_eq!(restricted_for_fetch(ip(a), &node), None, "{a}");
        }
    }

    #[test]
    fn node_addresses_include_loopback() {
        let addrs = node_addresses().unwrap();
        assert!(addrs.contains(&ip("127.0.0.1")), "{addrs:?}");
    }
}
