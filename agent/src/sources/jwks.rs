//! Fetching `jwksUri` documents and keeping the last good key set of each.
//!
//! The store is what `authz::evaluate` reads through `JwksLookup`. A URI that
//! never produced a usable key set has no entry, so tokens for it are rejected
//! while token-less requests still reach authorization (Istio's behaviour,
//! `reference/istio-semantics.md` §2.7); a later failure never removes the
//! last good set. Fetches use http or https (rustls: the system's roots plus
//! an optional `--jwks-ca-file`) with the rule's timeout, capped by
//! `--jwks-timeout-max-secs`. A token whose `kid` no key matches may trigger
//! one rate-limited re-fetch of the provider's URI before it is rejected
//! (`refetch_for_rules`). When a new set drops keys, the token cache forgets
//! the tokens those keys verified.
//!
//! A `jwksUri` is written by whoever may create a RequestAuthentication, and
//! the agent fetches it from the node's network, where no NetworkPolicy
//! applies. So the host name is resolved first and every address it
//! resolves to is checked (`addrs::restricted_for_fetch`): loopback,
//! link-local (cloud metadata), known metadata addresses and the node's own
//! addresses are refused unless `--jwks-allow-cidr` covers them; the
//! connection then goes to a checked address, never to a second lookup's
//! answer (DNS rebinding). Redirects are not followed. Each URI is fetched
//! by its own task (`keep_fresh`), so a slow or unreachable one delays no
//! other; documents, keys per document and the bytes of all stored sets are
//! bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
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

use crate::addrs::{self, Cidr};
use crate::authz::{self, Decision, JwksLookup, PathNormalization};
use crate::jwt::{JwkSet, TokenCache};
use crate::metrics::JwksFetches;
use crate::policy::{JwksSource, JwtRule, WorkloadPolicy};

/// Retry delays for a jwksUri that never answered, doubling up to the cap.
const JWKS_RETRY_MIN: Duration = Duration::from_secs(1);
const JWKS_RETRY_MAX: Duration = Duration::from_secs(60);

/// Largest JWKS document accepted; real ones are a few KiB.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Most keys accepted in one document; IdPs publish a handful (current and
/// next signing keys). A larger document is refused as a whole.
pub const MAX_JWKS_KEYS: usize = 100;

/// Most bytes all stored key sets may take (`JwksStore::bytes`); a set
/// that would pass it is refused and the URI keeps its last good set.
pub const MAX_JWKS_TOTAL_BYTES: u64 = 32 * 1024 * 1024;

/// Estimated memory of one parsed key beyond its document text: decoded
/// material and the prepared aws-lc-rs key (an RSA key keeps its modulus
/// and Montgomery constants).
const KEY_BYTES: u64 = 4096;

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
    /// Restricted addresses (loopback, link-local, metadata, the node's
    /// own) a jwksUri may resolve to all the same.
    pub allow: Vec<Cidr>,
    /// Upper bound on a rule's `timeout`, so a tenant cannot make one fetch
    /// hold a connection for an hour.
    pub max_timeout: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            ca_file: None,
            refetch_on_unknown_kid: true,
            refetch_min_interval: Duration::from_secs(30),
            allow: Vec::new(),
            max_timeout: Duration::from_secs(10),
        }
    }
}

/// A stored set and the bytes it is counted for.
struct Stored {
    set: Arc<JwkSet>,
    bytes: u64,
}

/// Sizes for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreSize {
    pub documents: usize,
    pub keys: usize,
    pub bytes: u64,
}

/// Last good key set per `jwksUri`.
#[derive(Default)]
pub struct JwksStore {
    sets: RwLock<HashMap<String, Stored>>,
    options: JwksOptions,
    cache: Option<Arc<TokenCache>>,
    /// Built on the first https fetch (or by `new`, to fail early).
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    /// Per URI: when the last unknown-kid re-fetch started. The async mutex
    /// makes concurrent requests wait for the one re-fetch in flight.
    refetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    /// Where fetch results are counted (the agent's metrics; none in `check`).
    fetches: Option<JwksFetches>,
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
        Some(self.sets.read().ok()?.get(uri)?.set.clone())
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

    /// Count every fetch result in `fetches` (`jwtgate_jwks_fetches_total`).
    pub fn count_fetches(&mut self, fetches: JwksFetches) {
        self.fetches = Some(fetches);
    }

    fn record_fetch(&self, uri: &str, ok: bool) {
        if let Some(f) = &self.fetches {
            f.record(uri, ok);
        }
    }

    /// Store `set` (counted for `bytes`) for `uri`. A set with the same
    /// keys as the current one keeps the current one (and its generation,
    /// so cached tokens keep their fast path); keys that disappeared are
    /// forgotten by the cache. Refused when all stored sets would take more
    /// than `MAX_JWKS_TOTAL_BYTES`.
    fn insert(&self, uri: &str, set: JwkSet, bytes: u64) -> anyhow::Result<()> {
        let Ok(mut sets) = self.sets.write() else {
            bail!("{uri}: the JWKS store is unusable (poisoned lock)");
        };
        let others: u64 = sets
            .iter()
            .filter(|(u, _)| u.as_str() != uri)
            .map(|(_, s)| s.bytes)
            .sum();
        if others + bytes > MAX_JWKS_TOTAL_BYTES {
            bail!(
                "{uri}: storing this key set ({bytes} bytes) would take the JWKS store past \
                 {MAX_JWKS_TOTAL_BYTES} bytes; keeping the last good set"
            );
        }
        let removed = match sets.get(uri) {
            Some(old) if old.set.same_keys(&set) => return Ok(()),
            Some(old) => old.set.removed_in(&set),
            None => Vec::new(),
        };
        sets.insert(
            uri.to_string(),
            Stored {
                set: Arc::new(set),
                bytes,
            },
        );
        drop(sets);
        if let Some(cache) = &self.cache {
            if !removed.is_empty() {
                info!(%uri, removed = removed.len(), "JWKS keys removed; forgetting the tokens they verified");
            }
            cache.forget_keys(&removed);
        }
        Ok(())
    }

    /// Forget URIs no policy refers to any more.
    pub fn retain(&self, uris: &[String]) {
        if let Ok(mut sets) = self.sets.write() {
            sets.retain(|uri, _| uris.contains(uri));
        }
        if let Ok(mut refetches) = self.refetches.lock() {
            refetches.retain(|uri, _| uris.contains(uri));
        }
    }

    /// Documents, keys and bytes held.
    pub fn size(&self) -> StoreSize {
        let Ok(sets) = self.sets.read() else {
            return StoreSize::default();
        };
        StoreSize {
            documents: sets.len(),
            keys: sets.values().map(|s| s.set.len()).sum(),
            bytes: sets.values().map(|s| s.bytes).sum(),
        }
    }

    pub fn options(&self) -> &JwksOptions {
        &self.options
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
        if keys > MAX_JWKS_KEYS {
            bail!("{uri}: Jwks has {keys} keys, more than the {MAX_JWKS_KEYS} jwtgate accepts");
        }
        let bytes = (uri.len() + body.len()) as u64 + keys as u64 * KEY_BYTES;
        self.insert(uri, set, bytes)?;
        Ok(keys)
    }

    /// GET `uri` over HTTP/1.1 (TLS for https) and return the body of a 200
    /// answer, all within `timeout` (the rule's `timeout`, Istio's 5 s by
    /// default), itself at most `max_timeout`. Name resolution is part of
    /// it.
    pub async fn fetch(&self, uri: &str, timeout: Duration) -> anyhow::Result<String> {
        let timeout = timeout.min(self.options.max_timeout);
        tokio::time::timeout(timeout, self.fetch_inner(uri))
            .await
            .map_err(|_| anyhow!("{uri}: no answer within {timeout:?}"))?
    }

    /// Refuse the fetch unless every address is ordinary or allowed.
    fn check_addresses(&self, uri: &str, host: &str, addrs: &[SocketAddr]) -> anyhow::Result<()> {
        let node = addrs::node_addresses()
            .with_context(|| format!("{uri}: cannot list the node's addresses to check it"))?;
        for a in addrs {
            let ip = a.ip();
            if self.options.allow.iter().any(|c| c.contains(ip)) {
                continue;
            }
            if let Some(why) = addrs::restricted_for_fetch(ip, &node) {
                let what = match host.parse::<IpAddr>() {
                    Ok(_) => format!("{ip} is {why}"),
                    Err(_) => format!("{host} resolves to {ip}, {why}"),
                };
                bail!(
                    "{uri}: {what}; refused (a jwksUri may not reach it \
                     unless --jwks-allow-cidr covers it)"
                );
            }
        }
        Ok(())
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
        // Resolve once, check every answer, connect only to those: a second
        // lookup could answer differently (DNS rebinding).
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .with_context(|| format!("{uri}: cannot resolve {host}"))?
                .collect(),
        };
        if addrs.is_empty() {
            bail!("{uri}: {host} has no address");
        }
        self.check_addresses(uri, &host, &addrs)?;
        let tcp = connect_any(&addrs)
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
    /// (at most once per `refetch_min_interval` per URI), all at once. True when the
    /// caller should decide again: some set changed, or another request's
    /// re-fetch finished while this one waited.
    pub async fn refetch_for_rules(&self, rules: &[Arc<JwtRule>]) -> bool {
        if !self.options.refetch_on_unknown_kid {
            return false;
        }
        let mut seen = Vec::new();
        let mut fetches = Vec::new();
        for rule in rules {
            let JwksSource::Uri(uri) = &rule.jwks else {
                continue;
            };
            if seen.contains(&uri) {
                continue;
            }
            seen.push(uri);
            fetches.push(self.refetch(uri, rule.timeout));
        }
        // Side by side: a slow provider must not add its wait to another's.
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .any(|changed| changed)
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
                self.record_fetch(uri, true);
                let changed = self.jwks(uri).map(|s| s.generation()) != before;
                info!(%uri, keys, changed, "JWKS re-fetched for an unknown kid");
                changed
            }
            Err(err) => {
                self.record_fetch(uri, false);
                warn!(%uri, "JWKS re-fetch for an unknown kid failed: {err:#}");
                false
            }
        }
    }
}

/// Connect to the first of `addrs` that accepts.
async fn connect_any(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(tcp) => return Ok(tcp),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into()))
}

/// Decide one request; when the token's `kid` matches no key — a key the
/// IdP may just have rotated in — re-fetch the workload's `jwksUri`s once
/// (rate-limited, `refetch_for_rules`) and decide again. The one place
/// where both the proxy and `check` decide.
pub async fn decide(
    store: &JwksStore,
    policy: &WorkloadPolicy,
    request: &authz::Request<'_>,
    now: u64,
    normalization: PathNormalization,
    cache: Option<&TokenCache>,
) -> Decision {
    let decision = authz::evaluate(policy, request, store, now, normalization, cache);
    // Boxed: the refetch is rare, and its future would otherwise be carried
    // inside every request's.
    if decision.reason.is_unknown_kid()
        && Box::pin(store.refetch_for_rules(&policy.jwt_rules)).await
    {
        return authz::evaluate(policy, request, store, now, normalization, cache);
    }
    decision
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
/// `refresh`; failed first fetches are retried with backoff. Each URI has
/// its own task, so one slow or unreachable URI never delays another.
/// `done` turns true once every URI has been tried at least once (part of
/// readiness; each try ends within the capped timeout, so no URI can hold
/// readiness longer than that), and stays true: a URI that fails later, or
/// a new one, never takes readiness away — it keeps its last good set or
/// rejects its tokens. Each result also goes to `outcomes`, when given.
pub async fn keep_fresh(
    store: Arc<JwksStore>,
    mut uris: watch::Receiver<Vec<(String, Duration)>>,
    refresh: Duration,
    done: watch::Sender<bool>,
    outcomes: Option<mpsc::UnboundedSender<FetchOutcome>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // uri -> (timeout it was started with, its task)
    let mut tasks: HashMap<String, (Duration, tokio::task::JoinHandle<()>)> = HashMap::new();
    let (tried_tx, mut tried_rx) = mpsc::unbounded_channel::<String>();
    let mut untried: HashSet<String> = HashSet::new();
    let mut uris_open = true;
    loop {
        let wanted: BTreeMap<String, Duration> = uris.borrow_and_update().iter().cloned().collect();
        tasks.retain(|uri, (timeout, task)| {
            let keep = wanted.get(uri) == Some(timeout);
            if !keep {
                task.abort();
            }
            keep
        });
        let names: Vec<String> = wanted.keys().cloned().collect();
        store.retain(&names);
        if let Some(f) = &store.fetches {
            f.retain(&names);
        }
        for (uri, timeout) in &wanted {
            if tasks.contains_key(uri) {
                continue;
            }
            untried.insert(uri.clone());
            let task = tokio::spawn(fetch_loop(
                store.clone(),
                uri.clone(),
                *timeout,
                refresh,
                tried_tx.clone(),
                outcomes.clone(),
            ));
            tasks.insert(uri.clone(), (*timeout, task));
        }
        untried.retain(|uri| wanted.contains_key(uri));
        if untried.is_empty() && !*done.borrow() {
            let _ = done.send(true);
        }
        tokio::select! {
            Some(uri) = tried_rx.recv() => {
                untried.remove(&uri);
            }
            changed = uris.changed(), if uris_open => {
                // A source that ended keeps its last URIs fetched.
                uris_open = changed.is_ok();
            }
            _ = shutdown.changed() => break,
        }
    }
    for (_, (_, task)) in tasks {
        task.abort();
    }
}

/// One URI's loop: fetch, report, wait; forever (aborted by `keep_fresh`).
async fn fetch_loop(
    store: Arc<JwksStore>,
    uri: String,
    timeout: Duration,
    refresh: Duration,
    tried: mpsc::UnboundedSender<String>,
    outcomes: Option<mpsc::UnboundedSender<FetchOutcome>>,
) {
    // A listener that went away (shutdown) is not the loop's problem.
    let report = |outcome: FetchOutcome| {
        if let Some(tx) = &outcomes {
            let _ = tx.send(outcome);
        }
    };
    let mut retry = JWKS_RETRY_MIN;
    let mut first = true;
    loop {
        let delay = match store.refresh(&uri, timeout).await {
            Ok(keys) => {
                info!(%uri, keys, "JWKS fetched");
                store.record_fetch(&uri, true);
                report(FetchOutcome {
                    uri: uri.clone(),
                    error: None,
                    kept_last_good: true,
                });
                retry = JWKS_RETRY_MIN;
                refresh
            }
            Err(err) => {
                store.record_fetch(&uri, false);
                let kept = store.contains(&uri);
                warn!(%uri, kept_last_good = kept, "JWKS fetch failed: {err:#}");
                report(FetchOutcome {
                    uri: uri.clone(),
                    error: Some(format!("{err:#}")),
                    kept_last_good: kept,
                });
                let delay = if kept {
                    refresh.min(JWKS_RETRY_MAX)
                } else {
                    retry
                };
                retry = (retry * 2).min(JWKS_RETRY_MAX);
                delay
            }
        };
        if first {
            let _ = tried.send(uri.clone());
            first = false;
        }
        tokio::time::sleep(delay).await;
    }
}
