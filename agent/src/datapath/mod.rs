//! Kernel side of the agent: loads the eBPF object (`steer` sk_lookup and
//! `guard` XDP), pins maps and links under the pin root, enrols workloads and
//! manages the deny lists. This is the only module that uses aya, so the rest
//! of the agent stays independent of the eBPF library version.
//!
//! Layout under the pin root (a bpffs):
//!
//! ```text
//! maps/<MAP_NAME>                 every map of the object, reused across restarts
//! links/<key>/steer               sk_lookup link attached to the workload netns
//! links/<key>/guard-<ifname>      XDP link on each interface inside the netns
//! links/<key>/listener-<id>/      empty directory recording the listener id
//! agents/<generation>/            one per running agent; the highest owns the datapath
//! ```
//!
//! Two agents run side by side during a surge upgrade (the new DaemonSet pod
//! starts before the old one stops). The newer one writes its listeners
//! over the older's in `VERIFIER_SOCKS` as it enrols, so new connections go
//! to it at once while the older finishes what it accepted; from then on
//! only the newer may write steering: an older agent that sees a higher
//! generation under `agents/` stops writing (`superseded`), or a late
//! re-enrolment of its own would steal the listeners back.
//!
//! Everything the kernel needs outlives the agent process (pins), so a
//! restarted agent re-adopts links, finds the listener ids again and only has
//! to put fresh listener sockets into `VERIFIER_SOCKS`.

mod sys;

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, SockHash};
use aya::programs::links::FdLink;
use aya::programs::{SkLookup, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use jwtgate_common::{
    guard_stat, ipv4_mapped, steer_stat, DenyVal, FlowKey, MeshKey, MeshVal, PairKey,
    DENY_MANUAL_MAX, DENY_REASON_MANUAL, LISTENER_KEY_V6, MAP_BYPASS_SRC, MAP_DENY_FLOW,
    MAP_DENY_MANUAL, MAP_DENY_PAIR, MAP_DENY_SRC, MAP_GUARD_STATS, MAP_MESH_PORTS, MAP_STEER_STATS,
    MAP_VERIFIER_SOCKS, MESH_ENTRIES_PER_WORKLOAD_MAX, MESH_F_EXCLUDED, MESH_F_FAIL_OPEN,
    MESH_PORTS_MAX, MESH_PORT_ANY, PROG_GUARD, PROG_STEER, PROTO_TCP,
};

use crate::inbound::PortSelection;

/// The object built by `cargo xtask build` and copied in by `build.rs`; empty
/// when the agent was built without it (plain `cargo build`/`cargo test`).
fn embedded_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jwtgate.bpf.o"))
}

/// Whether this binary carries the eBPF object (tests skip the kernel parts
/// when it does not).
pub fn object_embedded() -> bool {
    !embedded_object().is_empty()
}

/// Sources that reach the application when they come over the pod's own
/// loopback device: the verifier's upstream connections come from 127.0.0.6
/// / ::6 (Istio's inbound passthrough addresses), and steering them again
/// would loop. `steer` ignores them on any other device.
const PASSTHROUGH_SOURCES: [IpAddr; 2] = [
    IpAddr::V4(crate::netns::PASSTHROUGH_V4),
    IpAddr::V6(crate::netns::PASSTHROUGH_V6),
];

/// Reason value stored with bypass entries (informational only).
const BYPASS_REASON_PASSTHROUGH: u32 = 1;

const LISTENER_DIR_PREFIX: &str = "listener-";
const STEER_PIN: &str = "steer";
const GUARD_PIN_PREFIX: &str = "guard-";

/// Loaded programs and handles to the pinned maps.
pub struct Datapath {
    pin_root: PathBuf,
    /// This agent's generation (`agents/<n>`).
    generation: u64,
    ebpf: Ebpf,
    mesh: HashMap<MapData, MeshKey, MeshVal>,
    socks: SockHash<MapData, u32>,
    bypass: LpmTrie<MapData, [u8; 16], u32>,
    steer_stats: PerCpuArray<MapData, u64>,
    guard_stats: PerCpuArray<MapData, u64>,
}

impl Datapath {
    /// Mount bpffs at `pin_root` if it is not one, load the embedded object,
    /// reuse/pin maps under `pin_root/maps`, load the programs, and make
    /// 127.0.0.6/32 and ::6/128 bypass steering when they arrive on loopback.
    pub fn open(pin_root: &Path) -> Result<Datapath> {
        let object = embedded_object();
        if object.is_empty() {
            bail!("agent built without the eBPF object: build with `cargo xtask build`");
        }
        sys::ensure_bpffs(pin_root)?;
        let maps_dir = pin_root.join("maps");
        std::fs::create_dir_all(&maps_dir)
            .with_context(|| format!("creating {}", maps_dir.display()))?;
        std::fs::create_dir_all(pin_root.join("links"))
            .with_context(|| format!("creating {}/links", pin_root.display()))?;

        // Maps are declared `pinned` in the object: aya opens an existing pin
        // under maps_dir (so a restarted agent sees the same entries as the
        // links still attached) or creates and pins the map.
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(object)
            .context("loading the eBPF object (is this root with CAP_BPF/CAP_NET_ADMIN?)")?;

        let steer: &mut SkLookup = program(&mut ebpf, PROG_STEER)?.try_into()?;
        steer
            .load()
            .context("verifier rejected `steer` (sk_lookup)")?;
        let guard: &mut Xdp = program(&mut ebpf, PROG_GUARD)?.try_into()?;
        guard.load().context("verifier rejected `guard` (xdp)")?;

        let mesh = HashMap::try_from(take_map(&mut ebpf, MAP_MESH_PORTS)?)?;
        let socks = SockHash::try_from(take_map(&mut ebpf, MAP_VERIFIER_SOCKS)?)?;
        let bypass = LpmTrie::try_from(take_map(&mut ebpf, MAP_BYPASS_SRC)?)?;
        let steer_stats = PerCpuArray::try_from(take_map(&mut ebpf, MAP_STEER_STATS)?)?;
        let guard_stats = PerCpuArray::try_from(take_map(&mut ebpf, MAP_GUARD_STATS)?)?;

        let generation = claim_generation(&pin_root.join("agents"))?;
        let mut dp = Datapath {
            pin_root: pin_root.to_path_buf(),
            generation,
            ebpf,
            mesh,
            socks,
            bypass,
            steer_stats,
            guard_stats,
        };
        for src in PASSTHROUGH_SOURCES {
            dp.insert_bypass(src, full_prefix(src), BYPASS_REASON_PASSTHROUGH)?;
        }
        Ok(dp)
    }

    fn insert_bypass(&mut self, net: IpAddr, prefix_len: u32, reason: u32) -> Result<()> {
        // IPv4 is stored IPv4-mapped, so its prefix starts after the 96-bit
        // ::ffff:0:0 head.
        let bits = match net {
            IpAddr::V4(_) => 96 + prefix_len,
            IpAddr::V6(_) => prefix_len,
        };
        self.bypass
            .insert(&LpmKey::new(bits, addr16(net)), reason, 0)
            .with_context(|| format!("inserting {net}/{prefix_len} into {MAP_BYPASS_SRC}"))
    }

    /// Enrol one workload, or change an enrolled one in place:
    /// `VERIFIER_SOCKS[id]` (and `[id | LISTENER_KEY_V6]`) = its listeners
    /// (the id is stable across agent restarts), the sk_lookup link on the
    /// netns and XDP on every up non-loopback interface inside it (pinned
    /// under `pin_root/links/<key>/`), then its `MESH_PORTS` entries.
    ///
    /// Make-before-break: the new entries are written before the entries
    /// the workload no longer wants are removed, so a port that stays
    /// steered is steered at every instant. A failure while writing entries
    /// puts back exactly what was there before (nothing half-written, no
    /// entry that nothing owns). Returns the listener id.
    pub fn enrol(
        &mut self,
        key: &str,
        netns: &File,
        steering: &Steering<'_>,
        listeners: Listeners<'_>,
    ) -> Result<u32> {
        self.ensure_owner()?;
        if steering.ips.is_empty() || steering.ports.is_empty() {
            bail!("workload {key}: nothing to enrol (no addresses or no ports)");
        }
        for ip in steering.ips {
            let listener = if ip.is_ipv4() {
                listeners.v4
            } else {
                listeners.v6
            };
            if listener.is_none() {
                bail!("workload {key}: no verifier listener for {ip}'s address family");
            }
        }
        let dir = self.key_dir(key);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

        let wanted_keys = mesh_keys(steering);
        let id = self.listener_id_for(&dir, &wanted_keys)?;
        let entries = self.mesh_entries()?;
        check_capacity(key, id, &wanted_keys, &entries)?;

        // Listeners first: an entry must never point at an id without a
        // socket longer than necessary (that refuses connections).
        for (family_bit, fd) in [(0, listeners.v4), (LISTENER_KEY_V6, listeners.v6)] {
            if let Some(fd) = fd {
                self.socks
                    .insert(id | family_bit, fd.as_raw_fd(), 0)
                    .with_context(|| format!("inserting the listener of {key} into {MAP_VERIFIER_SOCKS} (must be a listening TCP socket)"))?;
            }
        }
        record_listener_id(&dir, id)?;
        // The link before the entries: a link without entries steers
        // nothing, entries without a link neither, both together do.
        self.attach_steer(&dir, netns)
            .with_context(|| format!("attaching sk_lookup for {key}"))?;
        self.attach_guard(&dir, netns)
            .with_context(|| format!("attaching XDP for {key}"))?;

        let flags = if steering.fail_open {
            MESH_F_FAIL_OPEN
        } else {
            0
        };
        let wanted: Vec<(MeshKey, MeshVal)> = wanted_keys
            .iter()
            .map(|(k, excluded)| {
                let flags = flags | if *excluded { MESH_F_EXCLUDED } else { 0 };
                (
                    *k,
                    MeshVal {
                        listener_id: id,
                        flags,
                    },
                )
            })
            .collect();
        let before: std::collections::HashMap<MeshKey, MeshVal> = entries.into_iter().collect();
        let mut written: Vec<(MeshKey, Option<MeshVal>)> = Vec::with_capacity(wanted.len());
        for (k, v) in &wanted {
            if before.get(k) == Some(v) {
                continue;
            }
            if let Err(err) = self.mesh.insert(k, *v, 0) {
                self.restore(&written);
                return Err(err).with_context(|| {
                    format!("inserting {key} into {MAP_MESH_PORTS} (previous entries restored)")
                });
            }
            written.push((*k, before.get(k).copied()));
        }
        // Only now what is no longer wanted.
        let keep: HashSet<MeshKey> = wanted.iter().map(|(k, _)| *k).collect();
        for (k, v) in &before {
            if v.listener_id == id && !keep.contains(k) {
                remove_ignoring_missing(self.mesh.remove(k))?;
            }
        }
        // A family the workload no longer has.
        for (family_bit, fd) in [(0, listeners.v4), (LISTENER_KEY_V6, listeners.v6)] {
            if fd.is_none() {
                remove_ignoring_missing(self.socks.remove(&(id | family_bit)))?;
            }
        }
        Ok(id)
    }

    /// Put `MESH_PORTS` back as it was before `written` (best effort: this
    /// runs on an error path already).
    fn restore(&mut self, written: &[(MeshKey, Option<MeshVal>)]) {
        for (k, previous) in written.iter().rev() {
            let result = match previous {
                Some(v) => self.mesh.insert(k, *v, 0).map_err(anyhow::Error::from),
                None => remove_ignoring_missing(self.mesh.remove(k)),
            };
            if let Err(err) = result {
                tracing::error!("cannot restore {MAP_MESH_PORTS} entry {k:?}: {err:#}");
            }
        }
    }

    /// This agent's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A newer agent runs on this pin root (surge upgrade): the steering is
    /// its to write.
    pub fn superseded(&self) -> bool {
        newest_generation(&self.pin_root.join("agents")) > self.generation
    }

    fn ensure_owner(&self) -> Result<()> {
        if self.superseded() {
            bail!(
                "a newer agent (generation {} > {}) owns the steering now",
                newest_generation(&self.pin_root.join("agents")),
                self.generation
            );
        }
        Ok(())
    }

    /// Remove the map entries and link pins of a workload. Idempotent.
    pub fn unenrol(&mut self, key: &str) -> Result<()> {
        self.ensure_owner()?;
        let dir = self.key_dir(key);
        if !dir.exists() {
            return Ok(());
        }
        if let Some(id) = read_listener_id(&dir)? {
            for (k, v) in self.mesh_entries()? {
                if v.listener_id == id {
                    remove_ignoring_missing(self.mesh.remove(&k))?;
                }
            }
            remove_ignoring_missing(self.socks.remove(&id))?;
            remove_ignoring_missing(self.socks.remove(&(id | LISTENER_KEY_V6)))?;
        }
        // Removing the last reference to a link (its pin) detaches it.
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
        Ok(())
    }

    /// Summed per-CPU counters: `(name, value)` for `STEER_STATS` then
    /// `GUARD_STATS`.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::with_capacity((steer_stat::COUNT + guard_stat::COUNT) as usize);
        for (map, names) in [
            (&self.steer_stats, &steer_stat::NAMES[..]),
            (&self.guard_stats, &guard_stat::NAMES[..]),
        ] {
            for (i, name) in names.iter().enumerate() {
                // A counter array pinned by an older agent may be shorter
                // (counters are only ever appended): report what it has.
                match map.get(&(i as u32), 0) {
                    Ok(per_cpu) => out.push((*name, per_cpu.iter().sum())),
                    Err(MapError::OutOfBounds { .. }) => {}
                    Err(e) => return Err(e).context("reading counters"),
                }
            }
        }
        Ok(out)
    }

    /// Keys of every workload with pins under `links/`, enrolled by this
    /// agent or left by an earlier one (pods deleted while no agent ran).
    /// Directories whose names `escape_key` cannot have produced are not ours
    /// and are skipped.
    pub fn pinned_keys(&self) -> Result<Vec<String>> {
        let links = self.pin_root.join("links");
        let mut keys = Vec::new();
        for entry in
            std::fs::read_dir(&links).with_context(|| format!("reading {}", links.display()))?
        {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            if let Some(key) = entry.file_name().to_str().and_then(unescape_key) {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Directory of a workload's pins.
    fn key_dir(&self, key: &str) -> PathBuf {
        self.pin_root.join("links").join(escape_key(key))
    }

    fn mesh_entries(&self) -> Result<Vec<(MeshKey, MeshVal)>> {
        self.mesh
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading {MAP_MESH_PORTS}"))
    }

    /// The id recorded for this workload, else the id its ports already use
    /// in `MESH_PORTS` (state left by an older agent), else the smallest id
    /// nobody uses.
    fn listener_id_for(&self, dir: &Path, wanted: &[(MeshKey, bool)]) -> Result<u32> {
        if let Some(id) = read_listener_id(dir)? {
            return Ok(id);
        }
        let entries = self.mesh_entries()?;
        if let Some((_, v)) = entries
            .iter()
            .find(|(k, _)| wanted.iter().any(|(w, _)| w == k))
        {
            return Ok(v.listener_id);
        }
        let mut used: BTreeSet<u32> = entries.iter().map(|(_, v)| v.listener_id).collect();
        for entry in std::fs::read_dir(self.pin_root.join("links"))? {
            if let Some(id) = read_listener_id(&entry?.path())? {
                used.insert(id);
            }
        }
        // Ids stay below the bit that marks IPv6 listener keys.
        (1..LISTENER_KEY_V6)
            .find(|id| !used.contains(id))
            .ok_or_else(|| anyhow!("no free listener id"))
    }

    /// Re-adopt the pinned sk_lookup link when it is attached to this very
    /// netns; otherwise attach a new one and atomically replace the pin.
    fn attach_steer(&mut self, dir: &Path, netns: &File) -> Result<()> {
        let pin = dir.join(STEER_PIN);
        let ino = sys::netns_inode(netns)?;
        let prog: &mut SkLookup = program(&mut self.ebpf, PROG_STEER)?.try_into()?;
        if let Some(t) = sys::pinned_link_target(&pin)? {
            if u64::from(t.target) == ino {
                return adopt(&t, prog.info()?.id(), prog.fd()?.as_fd(), &pin);
            }
        }
        let link_id = prog.attach(netns.as_fd())?;
        let link = FdLink::from(prog.take_link(link_id)?);
        pin_replacing(link, &pin)
    }

    /// XDP on every up, non-loopback interface inside the netns, driver
    /// mode first (native on veth), generic (skb) mode as the fallback.
    fn attach_guard(&mut self, dir: &Path, netns: &File) -> Result<()> {
        let prog: &mut Xdp = program(&mut self.ebpf, PROG_GUARD)?.try_into()?;
        let prog_id = prog.info()?.id();
        // Interface names and ifindexes only mean something inside the netns,
        // and the kernel resolves the attach ifindex in the caller's netns.
        let attached: Vec<String> = sys::in_netns(netns, || -> Result<Vec<String>> {
            let mut names = Vec::new();
            for (ifname, ifindex) in sys::up_interfaces()? {
                let pin = dir.join(format!("{GUARD_PIN_PREFIX}{ifname}"));
                names.push(ifname.clone());
                if let Some(t) = sys::pinned_link_target(&pin)? {
                    if t.target == ifindex {
                        adopt(&t, prog_id, prog.fd()?.as_fd(), &pin)?;
                        continue;
                    }
                    // Stale (device gone or recreated): drop it first, an
                    // interface takes only one XDP link.
                    std::fs::remove_file(&pin)?;
                }
                let link_id = match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                    Ok(id) => id,
                    Err(driver_err) => prog
                        .attach_to_if_index(ifindex, XdpMode::Skb)
                        .with_context(|| {
                            format!("XDP on {ifname}: driver mode failed ({driver_err}), skb mode")
                        })?,
                };
                let link = FdLink::try_from(prog.take_link(link_id)?).map_err(|e| {
                    anyhow!(
                        "XDP on {ifname} was attached through netlink and cannot be pinned: {e}"
                    )
                })?;
                pin_replacing(link, &pin)?;
            }
            Ok(names)
        })??;
        // Interfaces that disappeared: their pins only keep defunct links.
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(ifname) = name.strip_prefix(GUARD_PIN_PREFIX) {
                if !attached.iter().any(|n| n == ifname) {
                    std::fs::remove_file(dir.join(&name))?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        // A clean exit gives the generation back (a killed agent leaves it;
        // only the highest number matters).
        let _ = std::fs::remove_dir(
            self.pin_root
                .join("agents")
                .join(self.generation.to_string()),
        );
    }
}

/// Take the next generation: `agents/<max + 1>`, created atomically (mkdir
/// fails if another agent took the same number first: try the next).
fn claim_generation(dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut n = newest_generation(dir) + 1;
    loop {
        match std::fs::create_dir(dir.join(n.to_string())) {
            Ok(()) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("claiming a generation in {}", dir.display()))
            }
        }
    }
}

fn newest_generation(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Keep a pinned link attached where it is; if it runs another instance of
/// the program (an earlier agent's, perhaps older code), switch it to ours
/// atomically, so an upgrade reaches every pod it re-adopts.
fn adopt(link: &sys::LinkTarget, prog_id: u32, prog: BorrowedFd<'_>, pin: &Path) -> Result<()> {
    if link.prog_id != prog_id {
        sys::link_update(link.fd.as_fd(), prog)
            .with_context(|| format!("switching {} to this agent's program", pin.display()))?;
    }
    Ok(())
}

/// Keys are free-form (`ns/name`), so everything but `[A-Za-z0-9-]` is
/// escaped as `_HH` to give a unique, path-safe directory name.
fn escape_key(key: &str) -> String {
    let mut name = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            name.push(b as char);
        } else {
            name.push_str(&format!("_{b:02X}"));
        }
    }
    name
}

/// The key `escape_key` turned into `name`, or `None` when it cannot have
/// produced it (so the key maps back to this very directory).
fn unescape_key(name: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(name.len());
    let mut rest = name.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    let key = String::from_utf8(bytes).ok()?;
    (escape_key(&key) == name).then_some(key)
}

/// Map access without loading programs: for the `jwtgate deny-source` CLI and
/// the proxy's bans. Needs the maps pinned by a running (or earlier) agent.
///
/// Three kinds of ban, three maps (docs/bans.md):
/// - operator bans (`DENY_REASON_MANUAL`) go to `DENY_MANUAL`, a plain hash:
///   nothing evicts them, and a full map refuses a new one with an error;
/// - automatic source-wide bans go to `DENY_SRC` (LRU);
/// - automatic bans scoped to one workload address go to `DENY_PAIR` (LRU).
pub struct DenyList {
    manual: HashMap<MapData, [u8; 16], DenyVal>,
    src: HashMap<MapData, [u8; 16], DenyVal>,
    pair: HashMap<MapData, PairKey, DenyVal>,
    flow: HashMap<MapData, FlowKey, DenyVal>,
}

impl DenyList {
    pub fn open_pinned(pin_root: &Path) -> Result<DenyList> {
        let open = |name: &str| -> Result<Map> {
            let path = pin_root.join("maps").join(name);
            let data = MapData::from_pin(&path).with_context(|| {
                format!(
                    "opening {} (is the agent running with --pin-root {}?)",
                    path.display(),
                    pin_root.display()
                )
            })?;
            Ok(Map::from_map_data(data)?)
        };
        Ok(DenyList {
            manual: HashMap::try_from(open(MAP_DENY_MANUAL)?)?,
            src: HashMap::try_from(open(MAP_DENY_SRC)?)?,
            pair: HashMap::try_from(open(MAP_DENY_PAIR)?)?,
            flow: HashMap::try_from(open(MAP_DENY_FLOW)?)?,
        })
    }

    /// Ban `src` from every workload for `ttl` (`None` = forever): expiry =
    /// `CLOCK_MONOTONIC` now + ttl, the clock the programs compare against.
    /// A `DENY_REASON_MANUAL` ban is an operator's and is never evicted;
    /// any other reason is an automatic ban in the LRU map.
    pub fn deny_source(&mut self, src: IpAddr, ttl: Option<Duration>, reason: u32) -> Result<()> {
        let val = deny_val(ttl, reason)?;
        if reason != DENY_REASON_MANUAL {
            return self
                .src
                .insert(addr16(src), val, 0)
                .with_context(|| format!("inserting {src} into {MAP_DENY_SRC}"));
        }
        match self.manual.insert(addr16(src), val, 0) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                bail!(
                    "{MAP_DENY_MANUAL} is full ({DENY_MANUAL_MAX} bans): lift some with \
                     `jwtgate allow-source` first; no ban was evicted"
                )
            }
            Err(e) => Err(e).with_context(|| format!("inserting {src} into {MAP_DENY_MANUAL}")),
        }
    }

    /// Ban every packet from `src` to the workload address `dst` (any
    /// protocol, any port) for `ttl`; other workloads still see `src`.
    pub fn deny_pair(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        ttl: Option<Duration>,
        reason: u32,
    ) -> Result<()> {
        let val = deny_val(ttl, reason)?;
        self.pair
            .insert(pair_key(src, dst), val, 0)
            .with_context(|| format!("inserting {src}->{dst} into {MAP_DENY_PAIR}"))
    }

    /// Lift every ban of `src`: operator, source-wide and scoped.
    pub fn allow_source(&mut self, src: IpAddr) -> Result<()> {
        let key = addr16(src);
        remove_ignoring_missing(self.manual.remove(&key))?;
        remove_ignoring_missing(self.src.remove(&key))?;
        let pairs: Vec<PairKey> = self
            .pair
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.saddr == key)
            .collect();
        for k in pairs {
            remove_ignoring_missing(self.pair.remove(&k))?;
        }
        Ok(())
    }

    pub fn allow_pair(&mut self, src: IpAddr, dst: IpAddr) -> Result<()> {
        remove_ignoring_missing(self.pair.remove(&pair_key(src, dst)))
    }

    /// Whether `src` has an operator ban (expired or not).
    pub fn has_manual(&self, src: IpAddr) -> Result<bool> {
        match self.manual.get(&addr16(src), 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Operator bans that an agent before `DENY_MANUAL` existed wrote into
    /// the LRU `DENY_SRC` are copied to `DENY_MANUAL`, where nothing can
    /// evict them. Returns how many were copied.
    pub fn adopt_manual_bans(&mut self) -> Result<usize> {
        let legacy: Vec<([u8; 16], DenyVal)> = self
            .src
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, v)| v.reason == DENY_REASON_MANUAL)
            .collect();
        let mut copied = 0;
        for (key, val) in legacy {
            if self.manual.get(&key, 0).is_err() {
                self.manual
                    .insert(key, val, 0)
                    .with_context(|| format!("copying a manual ban into {MAP_DENY_MANUAL}"))?;
                copied += 1;
            }
        }
        Ok(copied)
    }

    /// Ban one TCP flow `src:sport → dst:dport` (e.g. a connection the
    /// verifier wants gone after a 403).
    pub fn deny_flow(
        &mut self,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        ttl: Option<Duration>,
        reason: u32,
    ) -> Result<()> {
        let val = deny_val(ttl, reason)?;
        self.flow
            .insert(flow_key(src, dst), val, 0)
            .with_context(|| format!("inserting {src}->{dst} into {MAP_DENY_FLOW}"))
    }

    pub fn allow_flow(
        &mut self,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
    ) -> Result<()> {
        remove_ignoring_missing(self.flow.remove(&flow_key(src, dst)))
    }
}

fn pair_key(src: IpAddr, dst: IpAddr) -> PairKey {
    PairKey {
        saddr: addr16(src),
        daddr: addr16(dst),
    }
}

fn deny_val(ttl: Option<Duration>, reason: u32) -> Result<DenyVal> {
    Ok(DenyVal {
        expires_ns: match ttl {
            None => 0,
            Some(ttl) => sys::monotonic_deadline(ttl)?,
        },
        reason,
        _pad: 0,
    })
}

fn flow_key(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> FlowKey {
    FlowKey {
        saddr: addr16(src.ip()),
        daddr: addr16(dst.ip()),
        // FlowKey ports are in network order, as the XDP program reads them.
        sport: src.port().to_be(),
        dport: dst.port().to_be(),
        proto: PROTO_TCP,
        _pad: [0; 3],
    }
}

/// 16-byte map form of an address (IPv4-mapped for IPv4).
fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn full_prefix(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mesh_key(ip: IpAddr, port: u16) -> MeshKey {
    MeshKey {
        addr: addr16(ip),
        port,
        proto: PROTO_TCP,
        _pad: 0,
    }
}

/// What a workload's steering needs: addresses (both families), ports,
/// fail-open.
pub struct Steering<'a> {
    pub ips: &'a [IpAddr],
    pub ports: &'a PortSelection,
    pub fail_open: bool,
}

/// The workload's verifier listeners, one per address family it has.
#[derive(Clone, Copy)]
pub struct Listeners<'a> {
    pub v4: Option<BorrowedFd<'a>>,
    pub v6: Option<BorrowedFd<'a>>,
}

/// `MESH_PORTS` keys of a workload, with whether each marks an excluded
/// port: per address, the wildcard plus one entry per excluded port, or one
/// entry per listed port.
fn mesh_keys(steering: &Steering<'_>) -> Vec<(MeshKey, bool)> {
    let mut keys = Vec::new();
    for ip in steering.ips {
        match steering.ports {
            PortSelection::All { exclude } => {
                keys.push((mesh_key(*ip, MESH_PORT_ANY), false));
                keys.extend(exclude.iter().map(|p| (mesh_key(*ip, *p), true)));
            }
            PortSelection::Only(only) => {
                keys.extend(only.iter().map(|p| (mesh_key(*ip, *p), false)));
            }
        }
    }
    keys.sort_by_key(|(k, _)| (k.addr, k.port));
    keys.dedup_by_key(|(k, _)| *k);
    keys
}

/// Refuse, before writing anything, what would exceed the per-workload
/// share or the node's map: the error names the limit, so the Event on the
/// pod says what to change.
fn check_capacity(
    key: &str,
    id: u32,
    wanted: &[(MeshKey, bool)],
    entries: &[(MeshKey, MeshVal)],
) -> Result<()> {
    let per_workload = MESH_ENTRIES_PER_WORKLOAD_MAX as usize;
    if wanted.len() > per_workload {
        bail!(
            "workload {key} needs {} {MAP_MESH_PORTS} entries (addresses × listed or excluded ports), more than the {per_workload} one workload may have: list fewer ports, or steer all ports",
            wanted.len()
        );
    }
    let others = entries.iter().filter(|(_, v)| v.listener_id != id).count();
    let total = MESH_PORTS_MAX as usize;
    if others + wanted.len() > total {
        bail!(
            "{MAP_MESH_PORTS} is full: {others} entries of other workloads + {} for {key} > {total}",
            wanted.len()
        );
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program `{name}` missing from the eBPF object"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map `{name}` missing from the eBPF object"))
}

fn remove_ignoring_missing(r: Result<(), MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Pin `link` at `pin`, replacing whatever is pinned there in one step: pin
/// under a temporary name, then rename over the old pin (bpffs supports
/// rename), so the old link stays active until the new one is in place.
/// (bpffs refuses names containing '.', hence the `tmp-` prefix.)
fn pin_replacing(link: FdLink, pin: &Path) -> Result<()> {
    let file_name = pin
        .file_name()
        .ok_or_else(|| anyhow!("pin path {} has no file name", pin.display()))?;
    let tmp = pin.with_file_name(format!("tmp-{}", file_name.to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    let pinned = link
        .pin(&tmp)
        .with_context(|| format!("pinning link at {}", tmp.display()))?;
    std::fs::rename(&tmp, pin).with_context(|| format!("renaming pin to {}", pin.display()))?;
    // Dropping the handle closes our fd; the pin keeps the link attached.
    drop(pinned);
    Ok(())
}

fn read_listener_id(dir: &Path) -> Result<Option<u32>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let name = entry?.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix(LISTENER_DIR_PREFIX))
            .and_then(|n| n.parse().ok())
        {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Record the id as an empty directory: bpffs holds only pins and
/// directories, and this keeps the id next to the links it belongs to.
fn record_listener_id(dir: &Path, id: u32) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(LISTENER_DIR_PREFIX) && name != format!("{LISTENER_DIR_PREFIX}{id}") {
            std::fs::remove_dir(entry.path())?;
        }
    }
    let path = dir.join(format!("{LISTENER_DIR_PREFIX}{id}"));
    match std::fs::create_dir(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_addresses_are_mapped() {
        assert_eq!(
            addr16("10.1.2.3".parse().unwrap()),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]
        );
        assert_eq!(addr16("::6".parse().unwrap())[15], 6);
    }

    #[test]
    fn flow_ports_are_network_order() {
        let k = flow_key(
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        );
        assert_eq!(k.dport.to_ne_bytes(), 8080u16.to_be_bytes());
    }

    #[test]
    fn key_dirs_map_back_to_their_keys() {
        for key in ["foo/web", "a_b/c.d", "ns/ünï", "-/-", ""] {
            assert_eq!(unescape_key(&escape_key(key)).as_deref(), Some(key));
        }
        assert_eq!(escape_key("foo/web"), "foo_2Fweb");
        // Names escaping cannot produce are not taken for keys.
        for name in ["tmp.x", "foo_2fweb", "foo_2", "foo_G0", "_66oo", "_FF"] {
            assert_eq!(unescape_key(name), None, "{name}");
        }
    }

    #[test]
    fn mesh_keys_per_address_wildcard_and_exclusions() {
        let ips: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let all = PortSelection::All {
            exclude: [22].into(),
        };
        let keys = mesh_keys(&Steering {
            ips: &ips,
            ports: &all,
            fail_open: false,
        });
        let view: Vec<(IpAddr, u16, bool)> = keys
            .iter()
            .map(|(k, excluded)| (addr_of(k), k.port, *excluded))
            .collect();
        assert_eq!(
            view,
            [
                (ips[0], MESH_PORT_ANY, false),
                (ips[0], 22, true),
                (ips[1], MESH_PORT_ANY, false),
                (ips[1], 22, true),
            ]
        );
        let only = PortSelection::Only([80, 443].into());
        let keys = mesh_keys(&Steering {
            ips: &ips[..1],
            ports: &only,
            fail_open: true,
        });
        assert_eq!(keys.len(), 2);
        assert!(keys
            .iter()
            .all(|(k, excluded)| !excluded && k.port != MESH_PORT_ANY));
    }

    fn addr_of(k: &MeshKey) -> IpAddr {
        let v6 = std::net::Ipv6Addr::from(k.addr);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }

    #[test]
    fn capacity_is_checked_per_workload_and_node_wide() {
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let many = PortSelection::Only((1..=300).collect());
        let keys = mesh_keys(&Steering {
            ips: &[ip],
            ports: &many,
            fail_open: false,
        });
        let err = check_capacity("ns/a", 1, &keys, &[]).unwrap_err();
        assert!(err.to_string().contains("more than the 256"), "{err}");

        let one = mesh_keys(&Steering {
            ips: &[ip],
            ports: &PortSelection::all(),
            fail_open: false,
        });
        let val = |id| MeshVal {
            listener_id: id,
            flags: 0,
        };
        let full: Vec<(MeshKey, MeshVal)> = (0..MESH_PORTS_MAX)
            .map(|i| (mesh_key(ip, (i % 60000) as u16 + 1), val(2 + i / 60000)))
            .collect();
        let err = check_capacity("ns/a", 1, &one, &full).unwrap_err();
        assert!(err.to_string().contains("is full"), "{err}");
        // The workload's own entries do not count against it.
        let own: Vec<(MeshKey, MeshVal)> = full.iter().map(|(k, _)| (*k, val(1))).collect();
        check_capacity("ns/a", 1, &one, &own).unwrap();
    }

    #[test]
    fn generations_increase_and_the_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let agents = dir.path().join("agents");
        let a = claim_generation(&agents).unwrap();
        let b = claim_generation(&agents).unwrap();
        assert!(b > a);
        assert_eq!(newest_generation(&agents), b);
        std::fs::remove_dir(agents.join(b.to_string())).unwrap();
        assert_eq!(newest_generation(&agents), a);
        // Foreign entries are ignored.
        std::fs::create_dir(agents.join("tmp-x")).unwrap();
        assert_eq!(claim_generation(&agents).unwrap(), a + 1);
    }

    #[test]
    fn datapath_is_send() {
        fn send<T: Send>() {}
        send::<Datapath>();
        send::<DenyList>();
    }
}
