//! Kernel side of jwtgate: one object with two programs.
//!
//! * `steer` (`sk_lookup`, one link per enrolled pod netns): assigns new TCP
//!   connections to `<pod IP>:<port>` (every port unless excluded, both
//!   address families) to the verifier listener of that family that the
//!   agent created inside the pod netns.
//! * `guard` (`xdp`, on the pod interfaces inside the pod netns): drops
//!   packets from banned sources, source → workload pairs and flows before
//!   the IP stack sees them.
//!
//! Map layouts live in `jwtgate-common`; every map is pinned by name so a
//! restarted agent (and the `deny-source` CLI) reuses the same maps.
//!
//! The entry points are thin wrappers around `try_*` bodies: the macros want a
//! `fn(ctx) -> u32`, and keeping the logic in ordinary functions returning
//! `Result` lets `?` express "truncated packet ⇒ pass" without nesting.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::{sk_action, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{map, sk_lookup, xdp},
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
    programs::{SkLookupContext, XdpContext},
};
use jwtgate_common::{
    guard_stat, ipv4_mapped, steer_stat, DenyVal, FlowKey, MeshKey, MeshVal, PairKey,
    BYPASS_SRC_MAX, DENY_FLOW_MAX, DENY_MANUAL_MAX, DENY_PAIR_MAX, DENY_SRC_MAX, LISTENER_KEY_V6,
    MESH_F_EXCLUDED, MESH_F_FAIL_OPEN, MESH_PORTS_MAX, MESH_PORT_ANY, PROTO_TCP,
    VERIFIER_SOCKS_MAX,
};

// Map names must equal the `MAP_*` constants in `jwtgate-common`: aya pins a
// map under its symbol name, and the agent finds the pins by those constants.

#[map]
static MESH_PORTS: HashMap<MeshKey, MeshVal> = HashMap::pinned(MESH_PORTS_MAX, 0);

#[map]
static VERIFIER_SOCKS: SockHash<u32> = SockHash::pinned(VERIFIER_SOCKS_MAX, 0);

#[map]
static BYPASS_SRC: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(BYPASS_SRC_MAX, 0);

/// Operator bans (`jwtgate deny-source`): a plain hash, so nothing the agent
/// does can evict them.
#[map]
static DENY_MANUAL: HashMap<[u8; 16], DenyVal> = HashMap::pinned(DENY_MANUAL_MAX, 0);

/// Automatic source-wide bans (a source that failed towards several
/// workloads). LRU: a flood of bans recycles the oldest automatic ones.
#[map]
static DENY_SRC: LruHashMap<[u8; 16], DenyVal> = LruHashMap::pinned(DENY_SRC_MAX, 0);

/// Automatic bans scoped to one source → workload address pair.
#[map]
static DENY_PAIR: LruHashMap<PairKey, DenyVal> = LruHashMap::pinned(DENY_PAIR_MAX, 0);

#[map]
static DENY_FLOW: LruHashMap<FlowKey, DenyVal> = LruHashMap::pinned(DENY_FLOW_MAX, 0);

#[map]
static STEER_STATS: PerCpuArray<u64> = PerCpuArray::pinned(steer_stat::COUNT, 0);

#[map]
static GUARD_STATS: PerCpuArray<u64> = PerCpuArray::pinned(guard_stat::COUNT, 0);

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[inline(always)]
fn count(stats: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = stats.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it, and BPF programs are not
        // preempted by themselves on one CPU, so a plain add is race-free.
        unsafe { *slot += 1 };
    }
}

/// Whether a deny entry still applies. Expiries are `CLOCK_MONOTONIC`
/// nanoseconds written by the agent; 0 means the ban never expires.
#[inline(always)]
fn deny_active(val: &DenyVal) -> bool {
    val.expires_ns == 0 || val.expires_ns > unsafe { bpf_ktime_get_ns() }
}

/// Looks `src` up in `DENY_MANUAL`, then `DENY_SRC`: `Some(true)` active
/// ban, `Some(false)` only expired entries, `None` no entry.
#[inline(always)]
fn src_denied(src: &[u8; 16]) -> Option<bool> {
    // SAFETY: values are copied out at once; an entry being replaced
    // concurrently can at worst yield a stale expiry, which is harmless.
    let manual = unsafe { DENY_MANUAL.get(src) }.copied();
    if let Some(val) = manual {
        if deny_active(&val) {
            return Some(true);
        }
    }
    match unsafe { DENY_SRC.get(src) }.copied() {
        Some(val) => Some(deny_active(&val)),
        None => manual.map(|_| false),
    }
}

/// Looks the pair `src → dst` up in `DENY_PAIR` (same answers as
/// `src_denied`).
#[inline(always)]
fn pair_denied(src: &[u8; 16], dst: &[u8; 16]) -> Option<bool> {
    let key = PairKey {
        saddr: *src,
        daddr: *dst,
    };
    // SAFETY: copied out at once (see `src_denied`).
    let val = unsafe { DENY_PAIR.get(key) }.copied()?;
    Some(deny_active(&val))
}

// ---------------------------------------------------------------------------
// steer (sk_lookup)
// ---------------------------------------------------------------------------

#[sk_lookup]
pub fn steer(ctx: SkLookupContext) -> u32 {
    try_steer(&ctx)
}

#[inline(always)]
fn try_steer(ctx: &SkLookupContext) -> u32 {
    // The verifier rejects pointers into the context as map keys (E12:
    // "R2 type=ctx expected=fp, ..."), so every field we key on is first
    // copied into a stack local with a volatile read, which also stops LLVM
    // from folding the copy back into a ctx pointer.
    let l = ctx.lookup;
    let (family, protocol, local_port) = unsafe {
        (
            core::ptr::read_volatile(&(*l).family),
            core::ptr::read_volatile(&(*l).protocol),
            core::ptr::read_volatile(&(*l).local_port),
        )
    };
    if protocol != PROTO_TCP as u32 {
        return sk_action::SK_PASS;
    }
    let (local, remote, listener_key_bits) = match family {
        // Addresses in the context are in network order; `to_ne_bytes` on a
        // value loaded from memory gives back the bytes as they were stored.
        AF_INET => unsafe {
            (
                ipv4_mapped(core::ptr::read_volatile(&(*l).local_ip4).to_ne_bytes()),
                ipv4_mapped(core::ptr::read_volatile(&(*l).remote_ip4).to_ne_bytes()),
                0,
            )
        },
        AF_INET6 => unsafe {
            (
                ip6_bytes(&core::ptr::read_volatile(&(*l).local_ip6)),
                ip6_bytes(&core::ptr::read_volatile(&(*l).remote_ip6)),
                LISTENER_KEY_V6,
            )
        },
        _ => return sk_action::SK_PASS,
    };

    // The port's own entry first (an explicitly listed or excluded port),
    // then the address's wildcard entry (every other port).
    let mut key = MeshKey {
        addr: local,
        // local_port is host order and at most 65535.
        port: local_port as u16,
        proto: PROTO_TCP,
        _pad: 0,
    };
    // SAFETY: copied out immediately (see `src_denied`).
    let mesh = match unsafe { MESH_PORTS.get(key) }.copied() {
        Some(mesh) => mesh,
        None => {
            key.port = MESH_PORT_ANY;
            match unsafe { MESH_PORTS.get(key) }.copied() {
                Some(mesh) => mesh,
                None => return sk_action::SK_PASS,
            }
        }
    };
    if mesh.flags & MESH_F_EXCLUDED != 0 {
        count(&STEER_STATS, steer_stat::EXCLUDED);
        return sk_action::SK_PASS;
    }
    count(&STEER_STATS, steer_stat::MESH_HIT);

    // The verifier's own upstream connection to the app (source 127.0.0.6 /
    // ::6, Istio's inbound passthrough addresses) must reach the
    // application's listener, or every proxied request would loop back into
    // the verifier. The source address alone would prove nothing, so it
    // counts only because nobody outside the pod can use it:
    // * `guard` drops every packet with a passthrough source on the pod's
    //   interfaces, before the stack sees it (and the kernel drops 127/8
    //   sources from outside as martians anyway);
    // * both addresses live on the pod's own loopback (127/8 by nature, ::6
    //   added at enrolment), so a reply to them never leaves the pod: even
    //   a SYN that got past XDP could never complete a handshake.
    // `ingress_ifindex` cannot say "from inside the pod": for a local
    // destination the kernel reports the device owning that address, for
    // outside and inside senders alike (measured on 6.18).
    if BYPASS_SRC.get(&Key::new(128, remote)).is_some() {
        count(&STEER_STATS, steer_stat::BYPASSED);
        return sk_action::SK_PASS;
    }

    // Second line of defence for bans: XDP drops the SYN silently, but where
    // XDP could not be attached this still refuses the connection (RST).
    if src_denied(&remote) == Some(true) || pair_denied(&remote, &local) == Some(true) {
        count(&STEER_STATS, steer_stat::DENY_SRC_DROP);
        return sk_action::SK_DROP;
    }

    let listener_key = mesh.listener_id | listener_key_bits;
    match VERIFIER_SOCKS.redirect_sk_lookup(ctx, listener_key, 0) {
        Ok(()) => {
            count(&STEER_STATS, steer_stat::STEERED);
            sk_action::SK_PASS
        }
        // No listener: the agent is down or restarting (a sockhash entry
        // disappears with its socket), or the assignment failed.
        Err(_) if mesh.flags & MESH_F_FAIL_OPEN != 0 => {
            count(&STEER_STATS, steer_stat::NO_LISTENER_PASS);
            sk_action::SK_PASS
        }
        Err(_) => {
            // SK_DROP without a selected socket fails the lookup: the client
            // gets an immediate RST ("connection refused"), not a timeout.
            count(&STEER_STATS, steer_stat::NO_LISTENER_DROP);
            sk_action::SK_DROP
        }
    }
}

#[inline(always)]
fn ip6_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// guard (xdp)
// ---------------------------------------------------------------------------

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
// IPv6 extension headers that may sit between the fixed header and TCP/UDP.
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Bound for the extension-header walk; the verifier needs a constant bound
/// and real traffic rarely carries more than two.
const IPV6_MAX_EXT: usize = 4;

/// Frame too short for the header being read.
struct Truncated;

#[xdp]
pub fn guard(ctx: XdpContext) -> u32 {
    match try_guard(&ctx) {
        Ok(action) => action,
        // A frame we cannot parse is not ours to judge: let the stack decide.
        Err(Truncated) => {
            count(&GUARD_STATS, guard_stat::PARSE_ERR);
            xdp_action::XDP_PASS
        }
    }
}

/// Pointer to a `T` at `offset` in the packet, after the bounds check the
/// verifier insists on before any packet access.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Truncated> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Truncated);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, Truncated> {
    // Packet data has no alignment guarantee.
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<T>(ctx, offset)?) })
}

#[inline(always)]
fn try_guard(ctx: &XdpContext) -> Result<u32, Truncated> {
    let mut ethertype = u16::from_be(load::<u16>(ctx, 12)?);
    let mut l3 = ETH_HLEN;
    // Up to two VLAN tags (802.1ad outer + 802.1Q inner); unrolled so the
    // verifier sees straight-line code.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = u16::from_be(load::<u16>(ctx, l3 + 2)?);
        l3 += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = u16::from_be(load::<u16>(ctx, l3 + 2)?);
            l3 += 4;
        }
    }

    let mut flow = FlowKey {
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        proto: 0,
        _pad: [0; 3],
    };
    // Offset of the TCP/UDP header, if this packet has one we can read.
    let l4: Option<usize>;
    match ethertype {
        ETH_P_IP => {
            let vihl = load::<u8>(ctx, l3)?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Err(Truncated);
            }
            flow.proto = load::<u8>(ctx, l3 + 9)?;
            flow.saddr = ipv4_mapped(load::<[u8; 4]>(ctx, l3 + 12)?);
            flow.daddr = ipv4_mapped(load::<[u8; 4]>(ctx, l3 + 16)?);
            // Non-first fragments carry no L4 header (offset field != 0).
            let frag = u16::from_be(load::<u16>(ctx, l3 + 6)?) & 0x1fff;
            l4 = if frag == 0 { Some(l3 + ihl) } else { None };
        }
        ETH_P_IPV6 => {
            flow.saddr = load::<[u8; 16]>(ctx, l3 + 8)?;
            flow.daddr = load::<[u8; 16]>(ctx, l3 + 24)?;
            let mut next = load::<u8>(ctx, l3 + 6)?;
            let mut off = l3 + 40;
            let mut found = None;
            for _ in 0..IPV6_MAX_EXT {
                match next {
                    IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                        let hdr = load::<[u8; 2]>(ctx, off)?;
                        next = hdr[0];
                        off += (hdr[1] as usize + 1) * 8;
                    }
                    IPV6_FRAGMENT => {
                        let hdr = load::<[u8; 4]>(ctx, off)?;
                        next = hdr[0];
                        let frag_off = u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8;
                        off += 8;
                        if frag_off != 0 {
                            // Later fragment: no L4 header here.
                            break;
                        }
                    }
                    _ => {
                        found = Some(off);
                        break;
                    }
                }
            }
            flow.proto = next;
            l4 = found;
        }
        // ARP and everything else is passed untouched.
        _ => return Ok(xdp_action::XDP_PASS),
    }

    // A passthrough source (127.0.0.6, ::6) is only ever used inside the
    // pod, over its loopback: arriving on an interface, it is forged.
    if BYPASS_SRC.get(&Key::new(128, flow.saddr)).is_some() {
        count(&GUARD_STATS, guard_stat::DROP_FORGED_PASSTHROUGH);
        return Ok(xdp_action::XDP_DROP);
    }

    // Source and pair bans first: they need no L4 header and cover every
    // protocol.
    match src_denied(&flow.saddr) {
        Some(true) => {
            count(&GUARD_STATS, guard_stat::DROP_SRC);
            return Ok(xdp_action::XDP_DROP);
        }
        Some(false) => count(&GUARD_STATS, guard_stat::EXPIRED),
        None => {}
    }
    match pair_denied(&flow.saddr, &flow.daddr) {
        Some(true) => {
            count(&GUARD_STATS, guard_stat::DROP_PAIR);
            return Ok(xdp_action::XDP_DROP);
        }
        Some(false) => count(&GUARD_STATS, guard_stat::EXPIRED),
        None => {}
    }

    if let Some(off) = l4 {
        if flow.proto == IPPROTO_TCP || flow.proto == IPPROTO_UDP {
            // Ports stay in network order: FlowKey stores them as on the wire.
            let ports = load::<[u16; 2]>(ctx, off)?;
            flow.sport = ports[0];
            flow.dport = ports[1];
            // SAFETY: copied out at once (see `src_denied`).
            if let Some(val) = unsafe { DENY_FLOW.get(flow) }.copied() {
                if deny_active(&val) {
                    count(&GUARD_STATS, guard_stat::DROP_FLOW);
                    return Ok(xdp_action::XDP_DROP);
                }
                count(&GUARD_STATS, guard_stat::EXPIRED);
            }
        }
    }

    count(&GUARD_STATS, guard_stat::PASS);
    Ok(xdp_action::XDP_PASS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // There is no unwinding or abort in BPF; the verifier proves the programs
    // never get here, so this only satisfies `no_std`.
    loop {}
}

/// GPL-compatible licence string: the kernel refuses GPL-only helpers to
/// programs without one. The userspace code is Apache-2.0.
#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
