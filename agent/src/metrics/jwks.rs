//! JWKS fetch results, counted per `jwksUri` and outcome
//! (`jwtgate_jwks_fetches_total{uri, result}`), for the store that fetches.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

type Labels = [(&'static str, String); 2];

/// A handle on the fetch counters; clones count into the same series.
#[derive(Debug, Clone, Default)]
pub struct JwksFetches {
    family: Family<Labels, Counter>,
    /// URIs with series, so that those no policy names any more can be
    /// dropped (`Family` cannot list its series).
    uris: Arc<Mutex<BTreeSet<String>>>,
}

impl JwksFetches {
    pub(super) fn family(&self) -> Family<Labels, Counter> {
        self.family.clone()
    }

    /// Count one fetch of `uri`: `ok` when a usable key set was stored.
    pub fn record(&self, uri: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.family.get_or_create(&labels(uri, result)).inc();
        if let Ok(mut uris) = self.uris.lock() {
            if !uris.contains(uri) {
                uris.insert(uri.to_string());
            }
        }
    }

    /// The count so far (tests).
    pub fn count(&self, uri: &str, ok: bool) -> u64 {
        let result = if ok { "success" } else { "failure" };
        self.family.get(&labels(uri, result)).map_or(0, |c| c.get())
    }

    /// Stop reporting URIs no policy names any more (their series would
    /// otherwise pile up as policies come and go).
    pub fn retain(&self, keep: &[String]) {
        let Ok(mut uris) = self.uris.lock() else {
            return;
        };
        uris.retain(|uri| {
            let kept = keep.contains(uri);
            if !kept {
                for result in ["success", "failure"] {
                    self.family.remove(&labels(uri, result));
                }
            }
            kept
        });
    }
}

fn labels(uri: &str, result: &'static str) -> Labels {
    [("uri", uri.to_string()), ("result", result.to_string())]
}
