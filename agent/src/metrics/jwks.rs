//! JWKS fetch results, counted per `jwksUri` and outcome.
//!
//! Process-wide rather than in [`super::Registry`]: the fetch loop
//! (`sources::jwks::keep_fresh`) has no registry handle, and one call per
//! result is all it needs to report. Rendered by `Registry::render`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

static FETCHES: Mutex<BTreeMap<(String, &'static str), u64>> = Mutex::new(BTreeMap::new());

/// Count one fetch of `uri`: `ok` true when a usable key set was stored.
pub fn record_jwks_fetch(uri: &str, ok: bool) {
    let result = if ok { "success" } else { "failure" };
    if let Ok(mut map) = FETCHES.lock() {
        *map.entry((uri.to_string(), result)).or_default() += 1;
    }
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
}
