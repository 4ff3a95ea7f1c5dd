//! What a cache entry really costs in memory, so that the cache's byte
//! bound is a bound on the heap and not on some nominal size.
//!
//! An attacker chooses the token, and parsed JSON can take many times the
//! bytes of its text: `"aud":["a","a",…]` costs four bytes of JSON per
//! element but a `String` (24 bytes) plus a heap block (at least 32 bytes
//! in glibc's malloc) once parsed. So every estimate here walks what was
//! really allocated (capacities, not lengths), rounds each block up the
//! way glibc's malloc does, and takes the worst case of a `BTreeMap` node's
//! fill. `agent/tests/cache_memory.rs` checks the estimates against a
//! counting allocator for adversarial shapes.

use std::mem::size_of;

use serde_json::{Map, Value};

use crate::jwt::Jwt;

/// Bytes the table spends per entry beside key and value: quick_cache's
/// slot (key, `Arc`, state) and its index.
pub(super) const TABLE_OVERHEAD: u64 = 64;

/// glibc malloc's block for an `n`-byte request: 8 bytes of header,
/// 16-byte granules, 32 bytes at least; from 128 KiB on, whole pages
/// (mmap).
pub(super) fn block(n: usize) -> usize {
    if n == 0 {
        0
    } else if n >= 128 * 1024 {
        (n + 16).next_multiple_of(4096)
    } else {
        ((n + 8).next_multiple_of(16)).max(32)
    }
}

fn string(s: &str) -> usize {
    block(s.len())
}

/// serde_json's `Map` is a `BTreeMap<String, Value>`: a node (11 slots of
/// key and value, parent link, lengths; an internal node adds 12 child
/// pointers) holds at least 5 entries unless it is the root, so an entry
/// costs at most a fifth of an internal node, and the root one node more.
/// (Were serde_json's `preserve_order` ever enabled, an IndexMap entry
/// costs less than that, so the estimate would still bound it.)
const BTREE_NODE: usize = 11 * (size_of::<String>() + size_of::<Value>()) + 16 + 12 * 8;

/// Heap bytes of a JSON object: nodes, keys and values, recursively.
pub(super) fn map(m: &Map<String, Value>) -> usize {
    if m.is_empty() {
        return 0;
    }
    let node = block(BTREE_NODE);
    let entries: usize = m.iter().map(|(k, v)| node / 5 + string(k) + value(v)).sum();
    node + entries
}

/// Heap bytes under one JSON value (not counting the value itself).
pub(super) fn value(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => block(s.capacity()),
        Value::Array(items) => {
            block(items.capacity() * size_of::<Value>()) + items.iter().map(value).sum::<usize>()
        }
        Value::Object(m) => map(m),
    }
}

/// The most a later split of space-delimited claims (`authn::make_identity`
/// memoizes one per token) can add: a copy of the payload in which every
/// top-level string became a list of its parts. Which claims a rule
/// splits is only known per request, so all of them are assumed.
fn identity_reserve(payload: &Map<String, Value>) -> usize {
    let split: usize = payload
        .values()
        .filter_map(Value::as_str)
        .map(|s| {
            let parts: Vec<&str> = s.split(' ').filter(|p| !p.is_empty()).collect();
            // The list may grow by doubling while collected.
            block(parts.len().next_power_of_two() * size_of::<Value>())
                + parts.iter().map(|p| block(p.len())).sum::<usize>()
        })
        .sum();
    // `Arc<Map>` and the memo's copy of the claim names (a few strings).
    map(payload) + split + block(size_of::<Map<String, Value>>() + 16) + 256
}

/// Heap bytes behind a parsed token: its strings, audience list, payload
/// segment and parsed payload, the signed bytes and signature if still
/// held, and the room its memoized identity claims may take later.
pub(super) fn jwt(j: &Jwt) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, |s| block(s.capacity()));
    block(size_of::<Jwt>() + 16)
        + opt(&j.kid)
        + opt(&j.iss)
        + opt(&j.sub)
        + block(j.aud.capacity() * size_of::<String>())
        + j.aud.iter().map(|a| block(a.capacity())).sum::<usize>()
        + block(j.payload_b64.capacity())
        + map(&j.payload)
        + block(j.signed.capacity())
        + block(j.signature.capacity())
        + if j.payload.is_empty() {
            0
        } else {
            identity_reserve(&j.payload)
        }
}

/// A copy of `j` with only what a failed entry needs to re-run the rule's
/// claim checks (`authn::check_claims`: issuer, times, audiences): the
/// payload, its text and the signature are dropped, so a failed token
/// costs the cache a few hundred bytes, whatever its size.
pub(super) fn claims_only(j: &Jwt) -> Jwt {
    Jwt {
        alg: j.alg,
        kid: j.kid.clone(),
        iss: j.iss.clone(),
        sub: j.sub.clone(),
        iat: j.iat,
        nbf: j.nbf,
        exp: j.exp,
        aud: j.aud.clone(),
        payload_b64: String::new(),
        payload: Map::new(),
        identity_claims: Default::default(),
        signed: String::new(),
        signature: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_like_glibc() {
        assert_eq!(block(0), 0);
        assert_eq!(block(1), 32);
        assert_eq!(block(24), 32);
        assert_eq!(block(25), 48);
        assert_eq!(block(1000), 1008);
        assert_eq!(block(200 * 1024), 200 * 1024 + 4096);
    }

    #[test]
    fn amplified_payloads_weigh_more_than_their_text() {
        let many: Vec<Value> = (0..1000).map(|_| Value::String("a".into())).collect();
        let mut m = Map::new();
        m.insert("aud".into(), Value::Array(many));
        let text = serde_json::to_string(&m).unwrap().len();
        assert!(map(&m) > 10 * text, "{} vs {text}", map(&m));
    }
}
