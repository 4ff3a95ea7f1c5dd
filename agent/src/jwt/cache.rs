//! The per-node verified-token cache (DESIGN.md "JWT verification"): one
//! instance shared by every workload on the node, so a token verified for
//! one request is not verified again for the next, whichever pod it goes to.
//!
//! It only replaces the *signature* check. A hit hands back the parsed token;
//! the caller still runs the issuer, time and audience checks of the rule
//! that asks (`authn::check_claims`), so the rule of one workload never
//! leaks into another's decision. Pure: the clock is an argument.
//!
//! - Key of verified tokens: the token itself (`Box<str>`), which the issue allows besides a
//!   SHA-256 digest. The table's hash (ahash, seeded at random per process)
//!   only chooses the shard and the bucket; an entry is used only when its
//!   stored token equals the presented one, compared in full. Two different
//!   tokens therefore can never share an entry: a hash collision costs one
//!   more comparison, never a wrong hit. A digest key gives that guarantee
//!   only as far as SHA-256 resists collisions, so this is at least as
//!   safe, and the hit path is spared the digest (≈ 0.6 µs for a 1 KB
//!   token; hashing with ahash is several times cheaper). The whole token
//!   is hashed, so no part an attacker chooses escapes the random seed
//!   (flooding one bucket). The key's bytes count in the entry's weight.
//! - Positive entry: the parsed token, the generation of the key set that
//!   verified it and that key's thumbprint. A hit needs the rule's current
//!   key set to be that generation or to still hold the thumbprint; a key
//!   that left its JWKS is also swept out by `forget_keys` on refresh.
//! - Lifetime ≤ the token's `exp` (and ≤ `max_ttl_secs` for tokens without).
//! - Bounded by entries and bytes: an entry weighs what it really holds on
//!   the heap (`cache/weight.rs`: the token, the parsed payload walked
//!   block by block, room for its memoized identity claims, the table's
//!   own slot) but never less than `max_bytes / max_entries`, so a weight
//!   capacity of `max_bytes` caps both at once.
//! - Negative entries for tokens whose signature check failed, for
//!   `negative_ttl_secs`, valid only against the same key-set generation (a
//!   refreshed set gets a fresh verdict). Keyed by the token's SHA-256, not
//!   the token, and holding only the claims the rule checks re-run on a hit
//!   (issuer, times, audiences): a forged token of maximal size (the 60 KiB
//!   header limit) then costs a few hundred bytes, not twice its size. A
//!   digest collision could only make a good token look failed (fail
//!   closed), and SHA-256 makes that out of reach. Bounded by entries and
//!   bytes like the positive table (`negative_max_entries`,
//!   `negative_max_bytes`); a success removes exactly the failure it
//!   replaces.
//!
//! quick_cache provides the sharded, weighted S3-FIFO table: reads take a
//! shard read lock only, and S3-FIFO keeps a flood of one-off tokens from
//! evicting the hot ones, which an LRU would not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_lc_rs::digest;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use super::error::JwtError;
use super::jwks::Thumbprint;
use super::token::{Alg, Jwt};
use super::JwkSet;

/// A table key: the whole token. Looked up by `&str` (`Box<str>: Borrow<str>`,
/// so quick_cache's `Equivalent` compares the full text), which needs no
/// copy of the token on the hit path.
type TokenKey = Box<str>;

/// A negative-table key: SHA-256 of the token.
type Digest = [u8; 32];

mod weight;

/// Sizes and lifetimes; the agent's flags (`cli/jwt.rs`) fill it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most verified tokens kept; 0 turns the positive cache off.
    pub max_entries: usize,
    /// Most bytes (estimated) the verified tokens may take.
    pub max_bytes: u64,
    /// How long a failed signature check is remembered; 0 turns it off.
    pub negative_ttl_secs: u64,
    pub negative_max_entries: usize,
    /// Most bytes the failed tokens may take.
    pub negative_max_bytes: u64,
    /// Lifetime of entries for tokens without `exp`.
    pub max_ttl_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            negative_ttl_secs: 30,
            negative_max_entries: 10_000,
            negative_max_bytes: 16 * 1024 * 1024,
            max_ttl_secs: 3600,
        }
    }
}

/// Counters, read by `/metrics` and the tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub negative_hits: AtomicU64,
    /// Entries pushed out by the size bounds.
    pub evictions: AtomicU64,
    /// Entries dropped because their key left its JWKS or they expired.
    pub invalidations: AtomicU64,
    /// Signature verifications actually run, per algorithm (`Alg::index`):
    /// `[ok, failed]`.
    pub verifications: [[AtomicU64; 2]; 13],
}

impl CacheStats {
    /// `(alg, ok, failed)` for every algorithm.
    pub fn verifications_by_alg(&self) -> Vec<(&'static str, u64, u64)> {
        Alg::ALL
            .iter()
            .map(|a| {
                let [ok, failed] = &self.verifications[a.index()];
                (
                    a.name(),
                    ok.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// What the cache knows about a token for a given key set.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Verified earlier by a key the set still holds.
    Verified(Arc<Jwt>),
    /// Failed the signature check against this very key set.
    Failed(Arc<Jwt>, JwtError),
    Miss,
}

struct Verified {
    jwt: Arc<Jwt>,
    generation: u64,
    key: Thumbprint,
    /// UNIX seconds; the entry is not used at or after this.
    expires_at: u64,
    bytes: u64,
}

struct Failed {
    /// The claims only (`weight::claims_only`).
    jwt: Arc<Jwt>,
    generation: u64,
    error: JwtError,
    expires_at: u64,
    bytes: u64,
}

/// Weight = heap bytes of the value plus the key, but never below
/// `floor`, so that the weight capacity also bounds the number of entries.
#[derive(Clone)]
struct ByteWeighter {
    floor: u64,
}

impl Weighter<TokenKey, Arc<Verified>> for ByteWeighter {
    fn weight(&self, token: &TokenKey, v: &Arc<Verified>) -> u64 {
        (weight::block(token.len()) as u64 + v.bytes).max(self.floor)
    }
}

impl Weighter<Digest, Arc<Failed>> for ByteWeighter {
    fn weight(&self, _: &Digest, v: &Arc<Failed>) -> u64 {
        v.bytes.max(self.floor)
    }
}

/// Counts evictions.
#[derive(Clone)]
struct CountEvictions(Arc<CacheStats>);

impl<K, V> Lifecycle<K, V> for CountEvictions {
    type RequestState = ();
    fn begin_request(&self) {}
    fn on_evict(&self, _: &mut (), _: K, _: V) {
        self.0.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

type Table<K, V> = Cache<K, Arc<V>, ByteWeighter, DefaultHashBuilder, CountEvictions>;

pub struct TokenCache {
    config: CacheConfig,
    positive: Option<Table<TokenKey, Verified>>,
    negative: Option<Table<Digest, Failed>>,
    stats: Arc<CacheStats>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("config", &self.config)
            .field("entries", &self.len())
            .finish()
    }
}

impl TokenCache {
    pub fn new(config: CacheConfig) -> TokenCache {
        let stats = Arc::new(CacheStats::default());
        let lifecycle = CountEvictions(stats.clone());
        let positive = (config.max_entries > 0 && config.max_bytes > 0)
            .then(|| table(config.max_entries, config.max_bytes, &lifecycle));
        let negative = (config.negative_ttl_secs > 0
            && config.negative_max_entries > 0
            && config.negative_max_bytes > 0)
            .then(|| {
                table(
                    config.negative_max_entries,
                    config.negative_max_bytes,
                    &lifecycle,
                )
            });
        TokenCache {
            config,
            positive,
            negative,
            stats,
        }
    }

    pub fn config(&self) -> CacheConfig {
        self.config
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Verified tokens held.
    pub fn len(&self) -> usize {
        self.positive.as_ref().map_or(0, Cache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes held by verified tokens (the tokens included).
    pub fn bytes(&self) -> u64 {
        self.positive.as_ref().map_or(0, Cache::weight)
    }

    pub fn negative_len(&self) -> usize {
        self.negative.as_ref().map_or(0, Cache::len)
    }

    /// Bytes held by failed tokens.
    pub fn negative_bytes(&self) -> u64 {
        self.negative.as_ref().map_or(0, Cache::weight)
    }

    /// What is known about `token` when checked against `keys` at `now`
    /// (UNIX seconds). Counts a hit, a negative hit or a miss.
    pub(crate) fn lookup(&self, token: &str, keys: &JwkSet, now: u64) -> Lookup {
        if let Some(positive) = &self.positive {
            if let Some(e) = positive.get(token) {
                let key_still_served =
                    e.generation == keys.generation() || keys.contains_key(&e.key);
                if now < e.expires_at && key_still_served {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Lookup::Verified(e.jwt.clone());
                }
                // Another rule's set without that key must not drop an entry
                // that is still good for the set that verified it.
                if now >= e.expires_at {
                    positive.remove(token);
                    self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(negative) = &self.negative {
            if let Some(e) = negative.get(&digest_of(token)) {
                if now < e.expires_at && e.generation == keys.generation() {
                    self.stats.negative_hits.fetch_add(1, Ordering::Relaxed);
                    return Lookup::Failed(e.jwt.clone(), e.error);
                }
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        Lookup::Miss
    }

    /// Remember that the key `keys.keys()[key_index]` verified `token`
    /// (parsed: `jwt`).
    pub(crate) fn insert_verified(
        &self,
        token: &str,
        jwt: Arc<Jwt>,
        keys: &JwkSet,
        key_index: usize,
        now: u64,
    ) {
        let Some(positive) = &self.positive else {
            return;
        };
        let Some(key) = keys.keys().get(key_index) else {
            return;
        };
        let cap = now.saturating_add(self.config.max_ttl_secs);
        let expires_at = match jwt.exp {
            Some(exp) if exp != 0 => exp.min(cap),
            _ => cap,
        };
        if expires_at <= now {
            return;
        }
        if let Some(negative) = &self.negative {
            if !negative.is_empty() {
                negative.remove(&digest_of(token));
            }
        }
        let bytes = (std::mem::size_of::<Verified>() + 16 + weight::jwt(&jwt)) as u64
            + weight::TABLE_OVERHEAD;
        positive.insert(
            token.into(),
            Arc::new(Verified {
                jwt,
                generation: keys.generation(),
                key: key.thumbprint,
                expires_at,
                bytes,
            }),
        );
    }

    /// Remember that `token` (parsed: `jwt`) failed the signature check
    /// against `keys`.
    pub(crate) fn insert_failed(
        &self,
        token: &str,
        jwt: Arc<Jwt>,
        keys: &JwkSet,
        error: JwtError,
        now: u64,
    ) {
        let Some(negative) = &self.negative else {
            return;
        };
        let jwt = weight::claims_only(&jwt);
        let bytes = (std::mem::size_of::<Failed>() + 16 + weight::jwt(&jwt)) as u64
            + std::mem::size_of::<Digest>() as u64
            + weight::TABLE_OVERHEAD;
        negative.insert(
            digest_of(token),
            Arc::new(Failed {
                jwt: Arc::new(jwt),
                generation: keys.generation(),
                error,
                expires_at: now.saturating_add(self.config.negative_ttl_secs),
                bytes,
            }),
        );
    }

    /// Count one signature verification that actually ran.
    pub(crate) fn record_verification(&self, alg: Alg, ok: bool) {
        self.stats.verifications[alg.index()][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Drop every entry verified by one of these keys (they left their
    /// JWKS). Called by the JWKS store when a refresh removes keys.
    pub fn forget_keys(&self, removed: &[Thumbprint]) {
        if removed.is_empty() {
            return;
        }
        if let Some(positive) = &self.positive {
            let before = positive.len();
            positive.retain(|_, e| !removed.contains(&e.key));
            let dropped = before.saturating_sub(positive.len()) as u64;
            self.stats
                .invalidations
                .fetch_add(dropped, Ordering::Relaxed);
        }
        // A failure against an older set is ignored anyway (generation), but
        // there is no reason to keep it.
        if let Some(negative) = &self.negative {
            negative.clear();
        }
    }
}

/// A weighted table for at most `max_entries` entries and `max_bytes`.
fn table<K, V>(max_entries: usize, max_bytes: u64, lifecycle: &CountEvictions) -> Table<K, V>
where
    K: Eq + std::hash::Hash + Clone,
    ByteWeighter: Weighter<K, Arc<V>>,
{
    let floor = max_bytes.div_ceil(max_entries as u64).max(1);
    // quick_cache shards by the expected item count; the byte bound may
    // allow fewer items than max_entries (about 1 KiB each), and a shard
    // too small for one entry would reject every insert.
    let expected = max_entries.min((max_bytes / 1024) as usize).max(1);
    Cache::with(
        expected,
        max_bytes,
        ByteWeighter { floor },
        DefaultHashBuilder::default(),
        lifecycle.clone(),
    )
}

fn digest_of(token: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}
