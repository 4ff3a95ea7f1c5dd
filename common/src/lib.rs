//! Types shared by the eBPF programs (`ebpf/`) and the agent (`agent/`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so both sides
//! agree byte for byte; the `const` assertions at the bottom pin the sizes.
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`)
//! so one layout serves both families.
#![no_std]

/// Names of the maps, as declared in the eBPF object and pinned under
/// `<pin-root>/maps/`.
pub const MAP_MESH_PORTS: &str = "MESH_PORTS";
pub const MAP_VERIFIER_SOCKS: &str = "VERIFIER_SOCKS";
pub const MAP_BYPASS_SRC: &str = "BYPASS_SRC";
pub const MAP_DENY_SRC: &str = "DENY_SRC";
pub const MAP_DENY_FLOW: &str = "DENY_FLOW";
pub const MAP_DENY_PAIR: &str = "DENY_PAIR";
pub const MAP_DENY_MANUAL: &str = "DENY_MANUAL";
pub const MAP_STEER_STATS: &str = "STEER_STATS";
pub const MAP_GUARD_STATS: &str = "GUARD_STATS";

/// Names of the programs in the eBPF object.
pub const PROG_STEER: &str = "steer";
pub const PROG_GUARD: &str = "guard";

/// Map capacities.
pub const MESH_PORTS_MAX: u32 = 16384;
/// Two listeners (IPv4, IPv6) per workload.
pub const VERIFIER_SOCKS_MAX: u32 = 2048;
/// `MESH_PORTS` entries one workload may take (addresses × (wildcard +
/// excluded ports), or addresses × listed ports): one pod with a huge port
/// list must not fill the node's map and leave the next pod unprotected.
pub const MESH_ENTRIES_PER_WORKLOAD_MAX: u32 = 256;
pub const BYPASS_SRC_MAX: u32 = 1024;
pub const DENY_SRC_MAX: u32 = 65536;
pub const DENY_FLOW_MAX: u32 = 65536;
pub const DENY_PAIR_MAX: u32 = 65536;
/// Operator bans live in a plain hash, never an LRU: when it is full a new
/// `deny-source` fails loudly instead of silently evicting an older ban.
pub const DENY_MANUAL_MAX: u32 = 16384;

/// `MeshVal::flags`: when no verifier listener exists for the port, let the
/// connection through to the application instead of refusing it.
pub const MESH_F_FAIL_OPEN: u32 = 1;
/// `MeshVal::flags`: the port is excluded from steering (Istio's
/// `excludeInboundPorts`): connections go straight to the application. Only
/// meaningful on a port-specific entry, which is looked up before the
/// workload's wildcard entry.
pub const MESH_F_EXCLUDED: u32 = 2;

/// `MeshKey::port` of the wildcard entry: every TCP port of the address that
/// has no entry of its own. Port 0 cannot be connected to, so it never
/// collides with a real port.
pub const MESH_PORT_ANY: u16 = 0;

/// Bit set in the `VERIFIER_SOCKS` key of a workload's IPv6 listener: the
/// IPv4 listener is under `listener_id`, the IPv6 one under
/// `listener_id | LISTENER_KEY_V6` (sk_lookup only assigns a socket of the
/// lookup's own family). Listener ids stay below this bit.
pub const LISTENER_KEY_V6: u32 = 1 << 31;

/// Index of the loopback device in every network namespace (the kernel's
/// `LOOPBACK_IFINDEX`).
pub const LOOPBACK_IFINDEX: u32 = 1;

/// IP protocol number of TCP, as in `MeshKey::proto`.
pub const PROTO_TCP: u8 = 6;

/// Key of `MESH_PORTS`: a pod address and one of its ports, or
/// `MESH_PORT_ANY` for all of them.
/// `sk_lookup` cannot tell which network namespace it runs in, so the pod IP
/// (unique on a node) identifies the workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MeshKey {
    /// Pod address, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Port in host byte order, as `bpf_sk_lookup.local_port`.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `MESH_PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshVal {
    /// Key of the workload's listener in `VERIFIER_SOCKS`.
    pub listener_id: u32,
    /// `MESH_F_*` bits.
    pub flags: u32,
}

/// Value of every deny map: `DENY_MANUAL` and `DENY_SRC` (keyed by a 16-byte
/// source address), `DENY_PAIR` and `DENY_FLOW`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyVal {
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`) after which the
    /// entry no longer applies; 0 means forever.
    pub expires_ns: u64,
    /// Why the source was banned (`DENY_REASON_*`).
    pub reason: u32,
    pub _pad: u32,
}

/// A source exceeded the rate of failed token verifications.
pub const DENY_REASON_AUTH_FAILURES: u32 = 1;
/// An operator pushed the entry by hand.
pub const DENY_REASON_MANUAL: u32 = 2;

/// Key of `DENY_PAIR`: every packet from one source to one workload address,
/// whatever the protocol and ports. An automatic ban is scoped this way to
/// the workload that saw the failures, so a shared source (an ingress
/// gateway, a SNATing node) keeps reaching every other workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairKey {
    pub saddr: [u8; 16],
    /// The workload (pod) address the packets are sent to.
    pub daddr: [u8; 16],
}

/// Key of `DENY_FLOW`: one TCP/UDP flow towards a pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Ports in network byte order, as they appear on the wire.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Indices into the per-CPU `STEER_STATS` array.
pub mod steer_stat {
    /// TCP lookups that hit a mesh port.
    pub const MESH_HIT: u32 = 0;
    /// Assigned to the verifier listener.
    pub const STEERED: u32 = 1;
    /// Source in `BYPASS_SRC`: passed to the application.
    pub const BYPASSED: u32 = 2;
    /// No listener, fail-closed: refused.
    pub const NO_LISTENER_DROP: u32 = 3;
    /// No listener, fail-open: passed to the application.
    pub const NO_LISTENER_PASS: u32 = 4;
    /// Source in `DENY_SRC`: refused.
    pub const DENY_SRC_DROP: u32 = 5;
    /// Port excluded by annotation: passed to the application.
    pub const EXCLUDED: u32 = 6;
    pub const COUNT: u32 = 7;
    pub const NAMES: [&str; COUNT as usize] = [
        "mesh_hit",
        "steered",
        "bypassed",
        "no_listener_drop",
        "no_listener_pass",
        "deny_src_drop",
        "excluded",
    ];
}

/// Indices into the per-CPU `GUARD_STATS` array.
pub mod guard_stat {
    pub const PASS: u32 = 0;
    pub const DROP_SRC: u32 = 1;
    pub const DROP_FLOW: u32 = 2;
    /// A deny entry was found but had expired.
    pub const EXPIRED: u32 = 3;
    /// Truncated or unparsable frame (passed on).
    pub const PARSE_ERR: u32 = 4;
    /// A passthrough source (127.0.0.6, ::6) arriving from outside the pod.
    pub const DROP_FORGED_PASSTHROUGH: u32 = 5;
    /// Source banned towards this workload address only (`DENY_PAIR`).
    pub const DROP_PAIR: u32 = 6;
    pub const COUNT: u32 = 7;
    pub const NAMES: [&str; COUNT as usize] = [
        "pass",
        "drop_src",
        "drop_flow",
        "expired",
        "parse_err",
        "drop_forged_passthrough",
        "drop_pair",
    ];
}

/// The 16-byte form of an IPv4 address (`::ffff:a.b.c.d`).
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

const _: () = assert!(core::mem::size_of::<MeshKey>() == 20);
const _: () = assert!(core::mem::size_of::<MeshVal>() == 8);
const _: () = assert!(core::mem::size_of::<DenyVal>() == 16);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<PairKey>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are repr(C), Copy, and have no implicit padding
    // (checked by the size assertions above).
    unsafe impl aya::Pod for super::MeshKey {}
    unsafe impl aya::Pod for super::MeshVal {}
    unsafe impl aya::Pod for super::DenyVal {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::PairKey {}
}
