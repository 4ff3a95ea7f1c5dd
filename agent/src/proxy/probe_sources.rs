//! Where kubelet probes come from: the node's own addresses (`--probe-sources
//! auto`, refreshed as interfaces change) or a fixed list. Only requests from
//! these addresses can be recognised as a pod's declared probes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

/// A shared, replaceable set of source addresses.
#[derive(Debug, Clone, Default)]
pub struct ProbeSources(Arc<RwLock<BTreeSet<IpAddr>>>);

impl ProbeSources {
    pub fn new(addresses: impl IntoIterator<Item = IpAddr>) -> ProbeSources {
        let sources = ProbeSources::default();
        sources.set(addresses);
        sources
    }

    /// Replace the set (IPv4-mapped addresses are stored as IPv4).
    pub fn set(&self, addresses: impl IntoIterator<Item = IpAddr>) {
        let new: BTreeSet<IpAddr> = addresses.into_iter().map(|ip| ip.to_canonical()).collect();
        if let Ok(mut set) = self.0.write() {
            *set = new;
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0
            .read()
            .is_ok_and(|set| set.contains(&ip.to_canonical()))
    }

    pub fn snapshot(&self) -> Vec<IpAddr> {
        self.0
            .read()
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_addresses_in_either_spelling() {
        let s = ProbeSources::new(["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()]);
        assert!(s.contains("10.0.0.1".parse().unwrap()));
        assert!(s.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(s.contains("fd00::1".parse().unwrap()));
        assert!(!s.contains("10.0.0.2".parse().unwrap()));
        s.set([]);
        assert!(!s.contains("10.0.0.1".parse().unwrap()));
    }
}
