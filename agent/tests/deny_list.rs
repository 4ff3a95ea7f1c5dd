//! Operator bans are never evicted silently (docs/bans.md), checked on the
//! real kernel maps: `DENY_MANUAL` is a plain hash, so a full map refuses
//! the next `deny-source` with an error and keeps every earlier ban, and a
//! flood of automatic bans — more than `DENY_SRC` and `DENY_PAIR` hold —
//! leaves the operator's bans alone. Operator bans written by an agent
//! from before `DENY_MANUAL` (into the LRU `DENY_SRC`) are adopted.
//!
//! Needs root (CAP_BPF) and an agent built with the eBPF object; otherwise
//! a loud SKIP, or a failure when `CI` is set.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use jwtgate::datapath::{self, Datapath, DenyList};
use jwtgate_common::{
    DenyVal, DENY_MANUAL_MAX, DENY_PAIR_MAX, DENY_REASON_AUTH_FAILURES, DENY_REASON_MANUAL,
    DENY_SRC_MAX, MAP_DENY_SRC,
};

/// A private bpffs, unmounted on drop.
struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    fn path(&self) -> PathBuf {
        self.dir.path().join("jwtgate")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The `i`-th address of a private IPv6 range.
fn addr(block: u16, i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0x6a67,
        block,
        0,
        0,
        0,
        (i >> 16) as u16,
        i as u16,
    ))
}

#[test]
fn operator_bans_are_never_evicted() {
    if !jwtgate_e2e::require_privileges() {
        return;
    }
    if !datapath::object_embedded() {
        assert!(
            std::env::var_os("CI").is_none(),
            "deny-list test cannot run: agent built without the eBPF object (CI is set)"
        );
        eprintln!("\n*** SKIP deny-list test: agent built without the eBPF object ***\n");
        return;
    }
    let bpffs = Bpffs {
        dir: tempfile::tempdir().unwrap(),
    };
    // Loading creates and pins every map under the private bpffs.
    let dp = Datapath::open(&bpffs.path()).expect("Datapath::open");

    // An operator ban from an older agent, in the LRU map.
    let legacy = addr(9, 1);
    {
        let map = aya::maps::MapData::from_pin(bpffs.path().join("maps").join(MAP_DENY_SRC))
            .expect("DENY_SRC pin");
        let mut src: aya::maps::HashMap<_, [u8; 16], DenyVal> =
            aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(map).unwrap()).unwrap();
        let IpAddr::V6(v6) = legacy else {
            unreachable!()
        };
        let val = DenyVal {
            expires_ns: 0,
            reason: DENY_REASON_MANUAL,
            _pad: 0,
        };
        src.insert(v6.octets(), val, 0).unwrap();
    }
    let mut deny = DenyList::open_pinned(&bpffs.path()).expect("DenyList::open_pinned");
    assert_eq!(deny.adopt_manual_bans().unwrap(), 1);
    assert!(deny.has_manual(legacy).unwrap());
    assert_eq!(deny.adopt_manual_bans().unwrap(), 0, "adopted once");

    // Fill the operator map; the next ban is refused, naming the way out.
    for i in 1..DENY_MANUAL_MAX {
        deny.deny_source(addr(1, i), None, DENY_REASON_MANUAL)
            .unwrap_or_else(|e| panic!("operator ban {i}: {e:#}"));
    }
    let err = deny
        .deny_source(addr(1, DENY_MANUAL_MAX), None, DENY_REASON_MANUAL)
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("full") && err.contains("allow-source"),
        "{err}"
    );

    // Automatic bans beyond their maps' capacity recycle automatic entries
    // only.
    let workload = addr(3, 1);
    for i in 0..DENY_SRC_MAX + DENY_SRC_MAX / 4 {
        deny.deny_source(addr(2, i), None, DENY_REASON_AUTH_FAILURES)
            .unwrap();
    }
    for i in 0..DENY_PAIR_MAX + DENY_PAIR_MAX / 4 {
        deny.deny_pair(addr(2, i), workload, None, DENY_REASON_AUTH_FAILURES)
            .unwrap();
    }
    for i in [1, DENY_MANUAL_MAX / 2, DENY_MANUAL_MAX - 1] {
        assert!(
            deny.has_manual(addr(1, i)).unwrap(),
            "operator ban {i} evicted"
        );
    }
    assert!(deny.has_manual(legacy).unwrap());

    // allow-source lifts the operator ban and frees its slot.
    deny.allow_source(addr(1, 1)).unwrap();
    assert!(!deny.has_manual(addr(1, 1)).unwrap());
    deny.deny_source(addr(1, DENY_MANUAL_MAX), None, DENY_REASON_MANUAL)
        .expect("a lifted ban makes room");
    drop(dp);
}
