//! JWKS fetch results, counted per `jwksUri` and outcome, and the size of
//! the store of key sets against its bounds.
//!
//! Process-wide rather than in [`super::Registry`]: the fetch loop
//! (`sources::jwks::keep_fresh`) has no registry handle, and one call per
//! result is all it needs to report. Rendered by `Registry::render`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use crate::sources::jwks::{JwksStore, MAX_JWKS_BYTES, MAX_JWKS_KEYS, MAX_JWKS_TOTAL_BYTES};

static FETCHES: Mutex<BTreeMap<(String, &'static str), u64>> = Mutex::new(BTreeMap::new());
static STORE: OnceLock<Arc<JwksStore>> = OnceLock::new();

/// Count one fetch of `uri`: `ok` true when a usable key set was stored.
pub fn record_jwks_fetch(uri: &str, ok: bool) {
    let result = if ok { "success" } else { "failure" };
    if let Ok(mut map) = FETCHES.lock() {
        *map.entry((uri.to_string(), result)).or_default() += 1;
    }
}

/// Stop reporting URIs no policy names any more (their counters would
/// otherwise pile up as policies come and go).
pub fn retain_jwks_uris(uris: &[String]) {
    if let Ok(mut map) = FETCHES.lock() {
        map.retain(|(uri, _), _| uris.contains(uri));
    }
}

/// Report this store's size on `/metrics` (the first call wins).
pub fn set_jwks_store(store: Arc<JwksStore>) {
    let _ = STORE.set(store);
}

pub(super) fn render(out: &mut String) {
    out.push_str("# HELP jwtgate_jwks_fetches_total JWKS fetches by jwksUri and result.\n");
    out.push_str("# TYPE jwtgate_jwks_fetches_total counter\n");
    if let Ok(map) = FETCHES.lock() {
        for ((uri, result), n) in map.iter() {
            let uri = uri.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "jwtgate_jwks_fetches_total{{uri=\"{uri}\",result=\"{result}\"}} {n}"
            );
        }
    }
    let Some(store) = STORE.get() else {
        return;
    };
    let size = store.size();
    let gauges = [
        (
            "jwks_documents",
            "Key sets held (one per jwksUri).",
            size.documents as u64,
        ),
        ("jwks_keys", "Keys held in all key sets.", size.keys as u64),
        (
            "jwks_bytes",
            "Estimated bytes held by all key sets.",
            size.bytes,
        ),
        (
            "jwks_max_bytes",
            "Bound on jwtgate_jwks_bytes.",
            MAX_JWKS_TOTAL_BYTES,
        ),
        (
            "jwks_document_max_bytes",
            "Largest JWKS document accepted.",
            MAX_JWKS_BYTES as u64,
        ),
        (
            "jwks_document_max_keys",
            "Most keys accepted in one document.",
            MAX_JWKS_KEYS as u64,
        ),
        (
            "jwks_timeout_max_seconds",
            "Cap on a rule's JWKS fetch timeout.",
            store.options().max_timeout.as_secs(),
        ),
    ];
    super::gauges(out, &gauges);
}
