//! Fetching `jwksUri` documents and keeping the last good key set of each.
//!
//! The store is what `authz::evaluate` reads through `JwksLookup`. A URI that
//! never produced a usable key set has no entry, so tokens for it are rejected
//! while token-less requests still reach authorization (Istio's behaviour,
//! `reference/istio-semantics.md` §2.7); a later failure never removes the
//! last good set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::authz::JwksLookup;
use crate::jwt::JwkSet;

/// Retry delays for a jwksUri that never answered, doubling up to the cap.
const JWKS_RETRY_MIN: Duration = Duration::from_secs(1);
const JWKS_RETRY_MAX: Duration = Duration::from_secs(60);

/// Largest JWKS document accepted; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Last good key set per `jwksUri`.
#[derive(Debug, Default)]
pub struct JwksStore {
    sets: RwLock<HashMap<String, Arc<JwkSet>>>,
}

impl JwksLookup for JwksStore {
    fn jwks(&self, uri: &str) -> Option<Arc<JwkSet>> {
        self.sets.read().ok()?.get(uri).cloned()
    }
}

impl JwksStore {
    pub fn insert(&self, uri: &str, set: JwkSet) {
        if let Ok(mut sets) = self.sets.write() {
            sets.insert(uri.to_string(), Arc::new(set));
        }
    }

    /// Forget URIs no policy refers to any more.
    pub fn retain(&self, uris: &[String]) {
        if let Ok(mut sets) = self.sets.write() {
            sets.retain(|uri, _| uris.contains(uri));
        }
    }

    pub fn contains(&self, uri: &str) -> bool {
        self.jwks(uri).is_some()
    }

    /// Fetch `uri` and, if it yields a usable key set, store it. On failure
    /// the previous set (if any) stays.
    pub async fn refresh(&self, uri: &str, timeout: Duration) -> anyhow::Result<usize> {
        let body = fetch(uri, timeout).await?;
        let set = JwkSet::parse(&body).map_err(|err| anyhow!("{uri}: {err}"))?;
        if set.is_empty() {
            bail!("{uri}: Jwks doesn't have any valid public key");
        }
        let keys = set.len();
        self.insert(uri, set);
        Ok(keys)
    }
}

/// GET `uri` over HTTP/1.1 and return the body of a 200 answer.
pub async fn fetch(uri: &str, timeout: Duration) -> anyhow::Result<String> {
    tokio::time::timeout(timeout, fetch_inner(uri))
        .await
        .map_err(|_| anyhow!("{uri}: no answer within {timeout:?}"))?
}

async fn fetch_inner(uri: &str) -> anyhow::Result<String> {
    let parsed: http::Uri = uri.parse().with_context(|| format!("{uri}: not a URI"))?;
    match parsed.scheme_str() {
        Some("http") => {}
        Some("https") => bail!("{uri}: https jwksUri is not supported by this build yet"),
        _ => bail!("{uri}: jwksUri must be an http or https URL"),
    }
    let host = parsed
        .host()
        .ok_or_else(|| anyhow!("{uri}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("{uri}: cannot connect"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .with_context(|| format!("{uri}: HTTP handshake failed"))?;
    let conn = tokio::spawn(conn);
    let authority = parsed
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(host);
    let request = http::Request::get(parsed.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("jwtgate/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{uri}: request failed"))?;
    let status = response.status();
    if status != http::StatusCode::OK {
        bail!("{uri}: answered {status}");
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|err| anyhow!("{uri}: reading the body failed: {err}"))?
        .to_bytes();
    conn.abort();
    String::from_utf8(body.to_vec()).map_err(|_| anyhow!("{uri}: body is not UTF-8"))
}

/// Fetch every jwksUri the policies name: at once when new, then every
/// `refresh`; failed first fetches are retried with backoff. `done` turns true
/// once every URI has been tried at least once (part of readiness).
pub async fn keep_fresh(
    store: Arc<JwksStore>,
    mut uris: watch::Receiver<Vec<(String, Duration)>>,
    refresh: Duration,
    done: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    // uri -> (when to fetch next, current retry delay)
    let mut due: HashMap<String, (Instant, Duration)> = HashMap::new();
    loop {
        let wanted: BTreeMap<String, Duration> = uris.borrow_and_update().iter().cloned().collect();
        due.retain(|uri, _| wanted.contains_key(uri));
        store.retain(&wanted.keys().cloned().collect::<Vec<_>>());
        for (uri, timeout) in &wanted {
            let entry = due
                .entry(uri.clone())
                .or_insert((Instant::now(), JWKS_RETRY_MIN));
            if entry.0 > Instant::now() {
                continue;
            }
            match store.refresh(uri, *timeout).await {
                Ok(keys) => {
                    info!(%uri, keys, "JWKS fetched");
                    *entry = (Instant::now() + refresh, JWKS_RETRY_MIN);
                }
                Err(err) => {
                    let kept = store.contains(uri);
                    warn!(%uri, kept_last_good = kept, "JWKS fetch failed: {err:#}");
                    let delay = if kept {
                        refresh.min(JWKS_RETRY_MAX)
                    } else {
                        entry.1
                    };
                    *entry = (Instant::now() + delay, (entry.1 * 2).min(JWKS_RETRY_MAX));
                }
            }
        }
        // Every wanted URI is due at once when it appears, so after one pass
        // each has been tried.
        if !*done.borrow() {
            let _ = done.send(true);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = uris.changed() => {}
            _ = shutdown.changed() => return,
        }
    }
}
