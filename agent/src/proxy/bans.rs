//! The automatic ban policy (docs/bans.md): count failed token
//! verifications per source and workload, and ask for a kernel (XDP) ban
//! when a source keeps failing, so floods of forged tokens are dropped
//! before they cost any CPU — without letting an attacker turn the ban
//! against legitimate traffic.
//!
//! - A source is never banned when it is one of the node's own addresses
//!   (kubelet probes, SNATed NodePort traffic as pods see it) or lies in an
//!   exempt CIDR (`--ban-exempt`: ingress gateways, load balancers).
//! - A ban is scoped to the workload address that saw the failures
//!   (`DENY_PAIR`): the source still reaches every other workload.
//! - A source banned towards `source_wide_after` distinct workloads within
//!   one ban lifetime is banned from the whole node (`DENY_SRC`).
//!
//! Memory: one fixed-size counter per (source, workload) pair and one short
//! list per banned source, at most `max_tracked` of each, so the bytes are
//! bounded as well (`bytes()`, `max_bytes()` on /metrics). A full table is
//! swept of expired windows at most once a second (never a full scan per
//! request); what still does not fit is not counted (`untracked`).
//!
//! The decision (`decide`) is pure, with the clock as an argument; the
//! proxy calls `record_failure`, which hands the ban to the task that
//! writes the kernel maps (`app.rs`, `apply_bans`) through a bounded
//! channel, so a burst of bans can never grow a queue without limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::addrs::{canonical, Cidr};

/// How often a full table may be swept of expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Room in the channel to the kernel-map writer; bans beyond it in one
/// burst are dropped (and counted), the sources keep being counted and are
/// asked for again in their next window.
pub const BAN_QUEUE: usize = 1024;

/// The ban policy's settings (`cli/bans.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanConfig {
    /// Failures within `window` that trigger a ban; 0 disables banning.
    pub threshold: u32,
    pub window: Duration,
    /// How long a ban lasts.
    pub ttl: Duration,
    /// Scoped bans towards this many distinct workloads (within `ttl`) make
    /// a source-wide ban; 0 never bans source-wide.
    pub source_wide_after: usize,
    /// Most (source, workload) counters, and most banned sources
    /// remembered for escalation.
    pub max_tracked: usize,
    /// Sources never banned (besides the node's own addresses).
    pub exempt: Vec<Cidr>,
}

impl Default for BanConfig {
    fn default() -> Self {
        BanConfig {
            threshold: 100,
            window: Duration::from_secs(10),
            ttl: Duration::from_secs(60),
            source_wide_after: 3,
            max_tracked: 65_536,
            exempt: Vec::new(),
        }
    }
}

/// What a ban covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanScope {
    /// Only packets towards this workload address.
    Workload(IpAddr),
    /// Every packet from the source to any enrolled workload on the node.
    Source,
}

/// One ban for the kernel-map writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanRequest {
    pub source: IpAddr,
    pub scope: BanScope,
    pub ttl: Duration,
}

/// Counters for /metrics (`metrics/bans.rs`).
#[derive(Debug, Default)]
pub struct BanStats {
    pub workload_bans: AtomicU64,
    pub source_bans: AtomicU64,
    /// Failures from the node's own or exempt addresses (never counted).
    pub exempt_failures: AtomicU64,
    /// Failures not counted because the table was full.
    pub untracked_failures: AtomicU64,
    /// Bans dropped because the writer's queue was full.
    pub dropped_bans: AtomicU64,
}

/// A fixed window of failures of one source towards one workload.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Scoped bans of one source that are still in force, for escalation.
#[derive(Debug, Default)]
struct Banned {
    /// (workload address, ban end); at most `source_wide_after` long.
    workloads: Vec<(IpAddr, Instant)>,
}

#[derive(Debug, Default)]
struct State {
    windows: HashMap<(IpAddr, IpAddr), Window>,
    banned: HashMap<IpAddr, Banned>,
    last_sweep: Option<Instant>,
}

struct Inner {
    config: BanConfig,
    state: Mutex<State>,
    /// The node's own addresses, refreshed by the kernel-map writer.
    node: RwLock<Arc<[IpAddr]>>,
    stats: BanStats,
    requests: Option<mpsc::Sender<BanRequest>>,
}

/// Shared by every workload proxy (cheap to clone).
#[derive(Clone)]
pub struct BanTracker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BanTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BanTracker")
            .field("config", &self.inner.config)
            .field("entries", &self.entries())
            .finish()
    }
}

impl BanTracker {
    /// A tracker that sends its bans to `requests` (`None`: decide only).
    pub fn new(config: BanConfig, requests: Option<mpsc::Sender<BanRequest>>) -> BanTracker {
        BanTracker {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                node: RwLock::new(Arc::from(Vec::new())),
                stats: BanStats::default(),
                requests,
            }),
        }
    }

    pub fn config(&self) -> &BanConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> &BanStats {
        &self.inner.stats
    }

    /// Replace the node's own addresses (never banned).
    pub fn set_node_addresses(&self, addrs: Vec<IpAddr>) {
        let addrs: Vec<IpAddr> = addrs.into_iter().map(canonical).collect();
        if let Ok(mut node) = self.inner.node.write() {
            *node = Arc::from(addrs);
        }
    }

    /// Whether `source` must never be banned: the node's own address or an
    /// exempt CIDR.
    pub fn is_exempt(&self, source: IpAddr) -> bool {
        let source = canonical(source);
        let node = self.inner.node.read().map(|n| n.clone()).ok();
        node.is_some_and(|n| n.contains(&source))
            || self.inner.config.exempt.iter().any(|c| c.contains(source))
    }

    /// The proxy's hook: one request from `source` to the workload address
    /// `workload` failed authentication (401). Asks for a ban when the
    /// policy says so.
    pub fn record_failure(&self, source: IpAddr, workload: IpAddr) {
        let Some(ban) = self.decide(source, workload, Instant::now()) else {
            return;
        };
        if let Some(tx) = &self.inner.requests {
            if tx.try_send(ban).is_err() {
                self.inner
                    .stats
                    .dropped_bans
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The policy itself: count one failure at `now` and return the ban it
    /// triggers, if any (once per window and pair at the threshold).
    pub fn decide(&self, source: IpAddr, workload: IpAddr, now: Instant) -> Option<BanRequest> {
        let config = &self.inner.config;
        let stats = &self.inner.stats;
        if config.threshold == 0 {
            return None;
        }
        let (source, workload) = (canonical(source), canonical(workload));
        if self.is_exempt(source) {
            stats.exempt_failures.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut state = self.inner.state.lock().ok()?;
        let key = (source, workload);
        if !state.windows.contains_key(&key) && state.windows.len() >= config.max_tracked {
            self.sweep(&mut state, now);
            if state.windows.len() >= config.max_tracked {
                stats.untracked_failures.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let window = state.windows.entry(key).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now.saturating_duration_since(window.start) >= config.window {
            *window = Window {
                start: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        if window.failures != config.threshold {
            return None;
        }
        let ban = |scope| BanRequest {
            source,
            scope,
            ttl: config.ttl,
        };
        if config.source_wide_after == 0 {
            stats.workload_bans.fetch_add(1, Ordering::Relaxed);
            return Some(ban(BanScope::Workload(workload)));
        }
        if !state.banned.contains_key(&source) && state.banned.len() >= config.max_tracked {
            self.sweep(&mut state, now);
        }
        let room = state.banned.len() < config.max_tracked || state.banned.contains_key(&source);
        let until = now + config.ttl;
        let escalate = room && {
            let banned = state.banned.entry(source).or_default();
            banned
                .workloads
                .retain(|(w, end)| *end > now && *w != workload);
            banned.workloads.push((workload, until));
            banned.workloads.len() >= config.source_wide_after
        };
        if escalate {
            state.banned.remove(&source);
            stats.source_bans.fetch_add(1, Ordering::Relaxed);
            Some(ban(BanScope::Source))
        } else {
            stats.workload_bans.fetch_add(1, Ordering::Relaxed);
            Some(ban(BanScope::Workload(workload)))
        }
    }

    /// Drop expired windows and bans (at most once per `SWEEP_EVERY`), and
    /// give memory back when the tables shrank a lot.
    fn sweep(&self, state: &mut State, now: Instant) {
        if state
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        state.last_sweep = Some(now);
        let window = self.inner.config.window;
        state
            .windows
            .retain(|_, w| now.saturating_duration_since(w.start) < window);
        state.banned.retain(|_, b| {
            b.workloads.retain(|(_, end)| *end > now);
            !b.workloads.is_empty()
        });
        if state.windows.len() < state.windows.capacity() / 4 {
            state.windows.shrink_to_fit();
        }
        if state.banned.len() < state.banned.capacity() / 4 {
            state.banned.shrink_to_fit();
        }
    }

    /// Counters and banned sources held.
    pub fn entries(&self) -> usize {
        self.inner
            .state
            .lock()
            .map(|s| s.windows.len() + s.banned.len())
            .unwrap_or(0)
    }

    /// Bytes the tables hold now: their allocated slots (hashbrown keeps
    /// one control byte per slot) and each banned source's list.
    pub fn bytes(&self) -> u64 {
        let Ok(state) = self.inner.state.lock() else {
            return 0;
        };
        let lists: usize = state
            .banned
            .values()
            .map(|b| b.workloads.capacity() * std::mem::size_of::<(IpAddr, Instant)>())
            .sum();
        (table_bytes::<(IpAddr, IpAddr), Window>(state.windows.capacity())
            + table_bytes::<IpAddr, Banned>(state.banned.capacity())
            + lists) as u64
    }

    /// Bytes the tables can reach at `max_tracked` entries each.
    pub fn max_bytes(&self) -> u64 {
        let config = &self.inner.config;
        let n = config.max_tracked;
        // A table sized for n entries holds at most 2n slots (capacity is
        // 7/8 of a power of two); each list holds at most
        // `source_wide_after` pairs, and its capacity at most twice that.
        let slots = n.saturating_mul(2);
        let list = 2 * config.source_wide_after * std::mem::size_of::<(IpAddr, Instant)>();
        (table_bytes::<(IpAddr, IpAddr), Window>(slots)
            + table_bytes::<IpAddr, Banned>(slots)
            + n.saturating_mul(list)) as u64
    }
}

/// Heap bytes of a hashbrown table with `capacity` usable slots: the
/// buckets (a power of two, capacity = 7/8 of them) of `(K, V)` plus one
/// control byte each.
fn table_bytes<K, V>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity.saturating_mul(8) / 7).next_power_of_two();
    buckets.saturating_mul(std::mem::size_of::<(K, V)>() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
    const W1: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 1));
    const W2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 2));
    const W3: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 3));

    fn tracker(threshold: u32, f: impl FnOnce(&mut BanConfig)) -> BanTracker {
        let mut config = BanConfig {
            threshold,
            ..BanConfig::default()
        };
        f(&mut config);
        BanTracker::new(config, None)
    }

    /// `n` failures at `now`; the bans they triggered.
    fn fail(t: &BanTracker, src: IpAddr, wl: IpAddr, n: u32, now: Instant) -> Vec<BanScope> {
        (0..n)
            .filter_map(|_| t.decide(src, wl, now))
            .map(|b| b.scope)
            .collect()
    }

    #[test]
    fn bans_once_per_window_scoped_to_the_workload() {
        let t = tracker(3, |_| {});
        let now = Instant::now();
        assert_eq!(fail(&t, A, W1, 5, now), [BanScope::Workload(W1)]);
        assert!(fail(&t, B, W1, 2, now).is_empty(), "sources count apart");
        assert!(fail(&t, A, W2, 2, now).is_empty(), "workloads count apart");
        let ban = t.decide(A, W2, now).unwrap();
        assert_eq!(ban.scope, BanScope::Workload(W2));
        assert_eq!((ban.source, ban.ttl), (A, Duration::from_secs(60)));
    }

    #[test]
    fn a_new_window_starts_counting_again() {
        let t = tracker(2, |_| {});
        let start = Instant::now();
        assert!(t.decide(A, W1, start).is_none());
        let later = start + Duration::from_secs(11);
        assert!(t.decide(A, W1, later).is_none(), "the old failure expired");
        assert!(t.decide(A, W1, later).is_some());
    }

    #[test]
    fn several_attacked_workloads_make_a_source_wide_ban() {
        let t = tracker(2, |c| c.source_wide_after = 3);
        let now = Instant::now();
        assert_eq!(fail(&t, A, W1, 2, now), [BanScope::Workload(W1)]);
        assert_eq!(fail(&t, A, W2, 2, now), [BanScope::Workload(W2)]);
        assert_eq!(fail(&t, A, W3, 2, now), [BanScope::Source]);
        // Scoped bans that ended do not count towards escalation.
        let t = tracker(2, |c| c.source_wide_after = 2);
        assert_eq!(fail(&t, A, W1, 2, now), [BanScope::Workload(W1)]);
        let after_ttl = now + Duration::from_secs(61);
        assert_eq!(fail(&t, A, W2, 2, after_ttl), [BanScope::Workload(W2)]);
        // The same workload twice is one workload.
        let t = tracker(2, |c| c.source_wide_after = 2);
        assert_eq!(fail(&t, A, W1, 2, now), [BanScope::Workload(W1)]);
        let next_window = now + Duration::from_secs(11);
        assert_eq!(fail(&t, A, W1, 2, next_window), [BanScope::Workload(W1)]);
        // 0: never source-wide.
        let t = tracker(1, |c| c.source_wide_after = 0);
        for w in [W1, W2, W3] {
            assert_eq!(fail(&t, A, w, 1, now), [BanScope::Workload(w)]);
        }
    }

    #[test]
    fn node_and_exempt_sources_are_never_banned() {
        let t = tracker(1, |c| c.exempt = vec!["10.0.0.0/31".parse().unwrap()]);
        t.set_node_addresses(vec!["192.168.5.5".parse().unwrap()]);
        let now = Instant::now();
        let node: IpAddr = "::ffff:192.168.5.5".parse().unwrap();
        for src in [A, "10.0.0.0".parse().unwrap(), node] {
            assert!(fail(&t, src, W1, 10, now).is_empty(), "{src}");
        }
        assert_eq!(t.stats().exempt_failures.load(Ordering::Relaxed), 30);
        assert_eq!(fail(&t, B, W1, 1, now), [BanScope::Workload(W1)]);
        assert_eq!(t.entries(), 2, "only B is tracked (a window and a ban)");
    }

    #[test]
    fn zero_threshold_disables_bans() {
        let t = tracker(0, |_| {});
        assert!(fail(&t, A, W1, 100, Instant::now()).is_empty());
        assert_eq!(t.entries(), 0);
    }

    #[test]
    fn tables_are_bounded_in_entries_and_bytes() {
        let t = tracker(5, |c| c.max_tracked = 100);
        let now = Instant::now();
        let src = |i: u32| IpAddr::V4((0x0a00_0000 + i).into());
        for i in 0..1000 {
            t.decide(src(i), W1, now);
        }
        assert_eq!(t.entries(), 100);
        assert_eq!(t.stats().untracked_failures.load(Ordering::Relaxed), 900);
        assert!(
            t.bytes() > 0 && t.bytes() <= t.max_bytes(),
            "{} > {}",
            t.bytes(),
            t.max_bytes()
        );
        // Once the windows expired a full table is swept and counts again.
        let later = now + Duration::from_secs(11);
        assert!(t.decide(src(5000), W1, later).is_none());
        assert_eq!(t.entries(), 1);
        // Banned sources are bounded too.
        let t = tracker(1, |c| c.max_tracked = 10);
        for i in 0..50 {
            t.decide(src(i), W1, now);
        }
        assert!(t.entries() <= 20 && t.bytes() <= t.max_bytes());
    }

    #[tokio::test]
    async fn bans_go_to_a_bounded_queue() {
        let (tx, mut rx) = mpsc::channel(1);
        let t = BanTracker::new(
            BanConfig {
                threshold: 1,
                ..BanConfig::default()
            },
            Some(tx),
        );
        t.record_failure(A, W1);
        t.record_failure(B, W1);
        assert_eq!(rx.recv().await.unwrap().source, A);
        assert_eq!(t.stats().dropped_bans.load(Ordering::Relaxed), 1);
    }
}
