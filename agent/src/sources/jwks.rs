//! Fetching `jwksUri` documents and keeping the last good key set of each.
//!
//! The store is what `authz::evaluate` reads through `JwksLookup`. A URI that
//! never produced a usable key set has no entry, so tokens for it are rejected
//! while token-less requests still reach authorization (Istio's behaviour,
//! `reference/istio-semantics.md` §2.7); a later failure never removes the
//! last good set. Fetches use http or https (rustls: the system's roots plus
//! an optional `--jwks-ca-file`) with the rule's timeout. A token whose `kid`
//! no key matches may trigger one rate-limited re-fetch of the provider's URI
//! before it is rejected (`refetch_for_rules`). When a new set drops keys,
//! the token cache forgets the tokens those keys verified.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::authz::{Decision, JwksLookup};
use crate::jwt::{JwkSet, JwtError, TokenCache};
use crate::policy::{JwksSource, JwtRule};

/// Retry delays for a jwksUri that never answered, doubling up to the cap.
const JWKS_RETRY_MIN: Duration = Duration::from_secs(1);
const JWKS_RETRY_MAX: Duration = Duration::from_secs(60);

/// Largest JWKS document accepted; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How the store fetches; the agent's `--jwks-*` flags.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    /// Extra trust anchors (PEM) for https jwksUri, on top of the system's.
    pub ca_file: Option<PathBuf>,
    /// Re-fetch a provider's jwksUri once before rejecting a token whose
    /// `kid` matches no key (a rotated IdP key).
    pub refetch_on_unknown_kid: bool,
    /// At most one such re-fetch per URI in this interval, so a stream of
    /// tokens with made-up `kid`s cannot make the agent hammer the IdP.
    pub refetch_min_interval: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            ca_file: None,
            refetch_on_unknown_kid: true,
            refetch_min_interval: Duration::from_secs(30),
        }
    }
}

/// Last good key set per `jwksUri`.
#[derive(Default)]
pub struct JwksStore {
    sets: RwLock<HashMap<String, Arc<JwkSet>>>,
    options: JwksOptions,
    cache: Option<Arc<TokenCache>>,
    /// Built on the first https fetch (or by `new`, to fail early).
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    /// Per URI: when the last unknown-kid re-fetch started. The async mutex
    /// makes concurrent requests wait for the one re-fetch in flight.
    refetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl std::fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uris: Vec<String> = self
            .sets
            .read()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("JwksStore")
            .field("uris", &uris)
            .field("options", &self.options)
            .finish()
    }
}

impl JwksLookup for JwksStore {
    fn jwks(&self, uri: &str) -> Option<Arc<JwkSet>> {
        self.sets.read().ok()?.get(uri).cloned()
    }
}

impl JwksStore {
    /// A store that tells `cache` about removed keys. Reads `ca_file` now,
    /// so a bad file fails at start-up rather than at the first fetch.
    pub fn new(options: JwksOptions, cache: Option<Arc<TokenCache>>) -> anyhow::Result<JwksStore> {
        let tls = client_config(options.ca_file.as_ref())?;
        let store = JwksStore {
            options,
            cache,
            ..JwksStore::default()
        };
        let _ = store.tls.set(tls);
        Ok(store)
    }

    /// Store `set` for `uri`. A set with the same keys as the current one
    /// keeps the current one (and its generation, so cached tokens keep
    /// their fast path); keys that disappeared are forgotten by the cache.
    pub fn insert(&self, uri: &str, set: JwkSet) {
        let Ok(mut sets) = self.sets.write() else {
            return;
        };
        let removed = match sets.get(uri) {
            Some(old) if old.same_keys(&set) => return,
            Some(old) => old.removed_in(&set),
            None => Vec::new(),
        };
        sets.insert(uri.to_string(), Arc::new(set));
        drop(sets);
        if let Some(cache) = &self.cache {
            if !removed.is_empty() {
                info!(%uri, removed = removed.len(), "JWKS keys removed; forgetting the tokens they verified");
            }
            cache.forget_keys(&removed);
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
        let body = self.fetch(uri, timeout).await?;
        let set = JwkSet::parse(&body).map_err(|err| anyhow!("{uri}: {err}"))?;
        if set.is_empty() {
            bail!("{uri}: Jwks doesn't have any valid public key");
        }
        let keys = set.len();
        self.insert(uri, set);
        Ok(keys)
    }

    /// GET `uri` over HTTP/1.1 (TLS for https) and return the body of a 200
    /// answer, all within `timeout` (the rule's `timeout`, Istio's 5 s by
    /// default).
    pub async fn fetch(&self, uri: &str, timeout: Duration) -> anyhow::Result<String> {
        tokio::time::timeout(timeout, self.fetch_inner(uri))
            .await
            .map_err(|_| anyhow!("{uri}: no answer within {timeout:?}"))?
    }

    async fn fetch_inner(&self, uri: &str) -> anyhow::Result<String> {
        let parsed: http::Uri = uri.parse().with_context(|| format!("{uri}: not a URI"))?;
        let tls = match parsed.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("{uri}: jwksUri must be an http or https URL"),
        };
        let host = parsed
            .host()
            .ok_or_else(|| anyhow!("{uri}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = parsed.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("{uri}: cannot connect"))?;
        if !tls {
            return get(uri, &parsed, tcp).await;
        }
        let config = match self.tls.get() {
            Some(c) => c.clone(),
            None => {
                let c = client_config(self.options.ca_file.as_ref())?;
                self.tls.get_or_init(|| c).clone()
            }
        };
        let name = ServerName::try_from(host.clone())
            .with_context(|| format!("{uri}: {host} is not a valid TLS server name"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .with_context(|| format!("{uri}: TLS handshake failed"))?;
        get(uri, &parsed, stream).await
    }

    /// The unknown-kid hook: for every jwksUri among `rules`, re-fetch once
    /// (at most once per `refetch_min_interval` per URI). True when the
    /// caller should decide again: some set changed, or another request's
    /// re-fetch finished while this one waited.
    pub async fn refetch_for_rules(&self, rules: &[Arc<JwtRule>]) -> bool {
        if !self.options.refetch_on_unknown_kid {
            return false;
        }
        let mut again = false;
        let mut seen = Vec::new();
        for rule in rules {
            let JwksSource::Uri(uri) = &rule.jwks else {
                continue;
            };
            if seen.contains(&uri) {
                continue;
            }
            seen.push(uri);
            again |= self.refetch(uri, rule.timeout).await;
        }
        again
    }

    async fn refetch(&self, uri: &str, timeout: Duration) -> bool {
        let asked = Instant::now();
        let slot = match self.refetches.lock() {
            Ok(mut map) => map.entry(uri.to_string()).or_default().clone(),
            Err(_) => return false,
        };
        let mut last = slot.lock().await;
        if let Some(started) = *last {
            if started >= asked {
                return true;
            }
            if asked.duration_since(started) < self.options.refetch_min_interval {
                debug!(%uri, "unknown kid: re-fetch rate-limited");
                return false;
            }
        }
        *last = Some(Instant::now());
        let before = self.jwks(uri).map(|s| s.generation());
        match self.refresh(uri, timeout).await {
            Ok(keys) => {
                crate::metrics::record_jwks_fetch(uri, true);
                let changed = self.jwks(uri).map(|s| s.generation()) != before;
                info!(%uri, keys, changed, "JWKS re-fetched for an unknown kid");
                changed
            }
            Err(err) => {
                crate::metrics::record_jwks_fetch(uri, false);
                warn!(%uri, "JWKS re-fetch for an unknown kid failed: {err:#}");
                false
            }
        }
    }
}

/// True when authentication failed because no key matched the token's
/// `kid`/`alg`: the case a key rotation at the IdP produces.
pub fn unknown_kid(decision: &Decision) -> bool {
    decision.status == 401 && decision.body == JwtError::KidAlgMismatch.to_string()
}

/// rustls client settings: the system's trust store plus `ca_file`.
fn client_config(ca_file: Option<&PathBuf>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        debug!("system trust store: {err}");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow!("--jwks-ca-file {}: {e}", path.display()))?;
        if certs.is_empty() {
            bail!(
                "--jwks-ca-file {}: no PEM certificate in it",
                path.display()
            );
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| anyhow!("--jwks-ca-file {}: {e}", path.display()))?;
        }
    } else if added == 0 {
        warn!("no system CA certificates found: https jwksUri will fail (see --jwks-ca-file)");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One GET on an established connection.
async fn get<S>(uri: &str, parsed: &http::Uri, stream: S) -> anyhow::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("{uri}: HTTP handshake failed"))?;
    let conn = tokio::spawn(conn);
    let authority = parsed
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
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
        conn.abort();
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

/// The result of one scheduled fetch of a `jwksUri`, for a source that
/// reports failures to its users (Kubernetes Events). A plain value on a
/// channel keeps this module ignorant of who listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    pub uri: String,
    /// `None`: a usable key set was fetched.
    pub error: Option<String>,
    /// A last good key set is still in use (always true on success).
    pub kept_last_good: bool,
}

/// Fetch every jwksUri the policies name: at once when new, then every
/// `refresh`; failed first fetches are retried with backoff. `done` turns true
/// once every URI has been tried at least once (part of readiness). Each
/// result also goes to `outcomes`, when given.
pub async fn keep_fresh(
    store: Arc<JwksStore>,
    mut uris: watch::Receiver<Vec<(String, Duration)>>,
    refresh: Duration,
    done: watch::Sender<bool>,
    outcomes: Option<mpsc::UnboundedSender<FetchOutcome>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A listener that went away (shutdown) is not the loop's problem.
    let report = |outcome: FetchOutcome| {
        if let Some(tx) = &outcomes {
            let _ = tx.send(outcome);
        }
    };
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
                    crate::metrics::record_jwks_fetch(uri, true);
                    report(FetchOutcome {
                        uri: uri.clone(),
                        error: None,
                        kept_last_good: true,
                    });
                    *entry = (Instant::now() + refresh, JWKS_RETRY_MIN);
                }
                Err(err) => {
                    crate::metrics::record_jwks_fetch(uri, false);
                    let kept = store.contains(uri);
                    warn!(%uri, kept_last_good = kept, "JWKS fetch failed: {err:#}");
                    report(FetchOutcome {
                        uri: uri.clone(),
                        error: Some(format!("{err:#}")),
                        kept_last_good: kept,
                    });
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
