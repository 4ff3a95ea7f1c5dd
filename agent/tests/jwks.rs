//! JWKS lifecycle against real local servers (loopback only): http and https
//! (rustls with a CA made at test time), the rule's timeout and its cap,
//! 404, rotation with the token cache, the rate-limited re-fetch on an
//! unknown kid, refused restricted addresses, bounds on keys and bytes, and
//! concurrent fetching.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use jwtgate::authz::JwksLookup;
use jwtgate::jwt::{verify_token_cached, CacheConfig, JwtError, Keys, TokenCache, TokenLocation};
use jwtgate::policy::{JwksSource, JwtRule};
use jwtgate::sources::jwks::{JwksOptions, JwksStore};

const NOW: u64 = 1_700_000_000;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Options that let a jwksUri reach loopback, where the test servers are
/// (refused by default, like every node-local address).
fn loopback() -> JwksOptions {
    JwksOptions {
        allow: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
        ..JwksOptions::default()
    }
}

/// What the test server answers.
#[derive(Clone)]
enum Answer {
    Json(String),
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
}

/// A one-request-per-connection HTTP(S) server on 127.0.0.1.
struct Server {
    port: u16,
    answer: Arc<Mutex<Answer>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(answer: Answer, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = Arc::new(Mutex::new(answer));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (a, h, tls) = (a.clone(), h.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve(s, &a, &h).await;
                            }
                        }
                        None => serve(tcp, &a, &h).await,
                    }
                });
            }
        });
        Server {
            port,
            answer,
            hits,
            task,
        }
    }

    fn uri(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/jwks", self.port)
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    answer: &Mutex<Answer>,
    hits: &AtomicUsize,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let answer = answer.lock().unwrap().clone();
    let (status, body) = match answer {
        Answer::Json(b) => (200, b),
        Answer::Status(code) => (code, "nope".to_string()),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
    };
    let resp = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// An EC P-256 signing key published as `kid`.
struct Signer {
    kid: String,
    key: EcdsaKeyPair,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        Signer {
            kid: kid.into(),
            key: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        }
    }

    fn jwk(&self) -> String {
        let p = self.key.public_key().as_ref();
        format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"{}","x":"{}","y":"{}"}}"#,
            self.kid,
            URL_SAFE_NO_PAD.encode(&p[1..33]),
            URL_SAFE_NO_PAD.encode(&p[33..])
        )
    }

    fn token(&self) -> String {
        let header = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, self.kid);
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(r#"{"iss":"idp","sub":"alice"}"#)
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

fn jwks(signers: &[&Signer]) -> String {
    let keys: Vec<String> = signers.iter().map(|s| s.jwk()).collect();
    format!(r#"{{"keys":[{}]}}"#, keys.join(","))
}

fn rule(uri: &str, timeout: Duration) -> Arc<JwtRule> {
    Arc::new(JwtRule {
        origin: "ns/ra".into(),
        issuer: "idp".into(),
        audiences: vec![],
        jwks: JwksSource::Uri(uri.into()),
        locations: TokenLocation::defaults(),
        output_payload_to_header: None,
        forward_original_token: false,
        output_claim_to_headers: vec![],
        timeout,
        space_delimited_claims: vec!["scope".into(), "permission".into()],
    })
}

/// Verify `token` with the store's current keys for `uri`, through the cache.
fn verify(store: &JwksStore, uri: &str, token: &str, cache: &TokenCache) -> Result<(), JwtError> {
    let keys = store.jwks(uri).map_or(Keys::Unavailable, Keys::Set);
    verify_token_cached(&rule(uri, TIMEOUT), token, &keys, NOW, Some(cache)).map(|_| ())
}

#[tokio::test]
async fn jwt_rule_timeout_bounds_the_fetch_and_keeps_the_last_good_set() {
    let a = Signer::new("a");
    let server = Server::start(Answer::Json(jwks(&[&a])), None).await;
    let store = JwksStore::new(loopback(), None).unwrap();
    let uri = server.uri("http");
    assert_eq!(store.refresh(&uri, TIMEOUT).await.unwrap(), 1);
    server.set(Answer::Hang);
    let started = Instant::now();
    let err = store
        .refresh(&uri, Duration::from_millis(300))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(format!("{err:#}").contains("no answer within"), "{err:#}");
    assert_eq!(store.jwks(&uri).map(|s| s.len()), Some(1));
}

#[tokio::test]
async fn jwks_404_and_bad_documents_keep_the_last_good_set() {
    let a = Signer::new("a");
    let server = Server::start(Answer::Json(jwks(&[&a])), None).await;
    let store = JwksStore::new(loopback(), None).unwrap();
    let uri = server.uri("http");
    store.refresh(&uri, TIMEOUT).await.unwrap();
    let generation = store.jwks(&uri).unwrap().generation();
    for (answer, says) in [
        (Answer::Status(404), "404"),
        (Answer::Json("{}".into()), "[keys]"),
        (Answer::Json(r#"{"keys":[]}"#.into()), "valid public key"),
    ] {
        server.set(answer);
        let err = store.refresh(&uri, TIMEOUT).await.unwrap_err();
        assert!(format!("{err:#}").contains(says), "{err:#}");
        assert_eq!(store.jwks(&uri).unwrap().generation(), generation);
    }
    // Never fetched: no keys at all (tokens are rejected, §2.7).
    let store = JwksStore::new(loopback(), None).unwrap();
    server.set(Answer::Status(404));
    store.refresh(&uri, TIMEOUT).await.unwrap_err();
    assert!(!store.contains(&uri));
}

#[tokio::test]
async fn rotation_drops_cached_tokens_of_removed_keys() {
    let (a, b) = (Signer::new("a"), Signer::new("b"));
    let server = Server::start(Answer::Json(jwks(&[&a])), None).await;
    let cache = Arc::new(TokenCache::new(CacheConfig::default()));
    let store = JwksStore::new(loopback(), Some(cache.clone())).unwrap();
    let uri = server.uri("http");
    store.refresh(&uri, TIMEOUT).await.unwrap();
    let (ta, tb) = (a.token(), b.token());
    assert_eq!(verify(&store, &uri, &ta, &cache), Ok(()));
    assert_eq!(cache.len(), 1);
    // The same document again keeps the set (and the cache entry).
    let generation = store.jwks(&uri).unwrap().generation();
    store.refresh(&uri, TIMEOUT).await.unwrap();
    assert_eq!(store.jwks(&uri).unwrap().generation(), generation);
    assert_eq!(cache.len(), 1);
    // Rotation: a is gone, b is new.
    server.set(Answer::Json(jwks(&[&b])));
    store.refresh(&uri, TIMEOUT).await.unwrap();
    assert_eq!(
        cache.len(),
        0,
        "the token verified by key a must be dropped"
    );
    assert_eq!(
        verify(&store, &uri, &ta, &cache),
        Err(JwtError::KidAlgMismatch)
    );
    assert_eq!(verify(&store, &uri, &tb, &cache), Ok(()));
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_is_rate_limited() {
    let (a, b, c) = (Signer::new("a"), Signer::new("b"), Signer::new("c"));
    let server = Server::start(Answer::Json(jwks(&[&a])), None).await;
    let cache = TokenCache::new(CacheConfig::default());
    let store = JwksStore::new(loopback(), None).unwrap();
    let uri = server.uri("http");
    let rules = [rule(&uri, TIMEOUT)];
    store.refresh(&uri, TIMEOUT).await.unwrap();
    assert_eq!(server.hits(), 1);

    // The IdP rotates b in; a token signed by b arrives before the refresh.
    server.set(Answer::Json(jwks(&[&a, &b])));
    let tb = b.token();
    assert_eq!(
        verify(&store, &uri, &tb, &cache),
        Err(JwtError::KidAlgMismatch)
    );
    assert!(store.refetch_for_rules(&rules).await, "the set changed");
    assert_eq!(server.hits(), 2);
    assert_eq!(verify(&store, &uri, &tb, &cache), Ok(()));

    // Made-up kids right after: no second fetch within the interval.
    server.set(Answer::Json(jwks(&[&a, &b, &c])));
    assert!(!store.refetch_for_rules(&rules).await);
    assert_eq!(server.hits(), 2);
    assert_eq!(
        verify(&store, &uri, &c.token(), &cache),
        Err(JwtError::KidAlgMismatch)
    );

    // Switched off: never fetches.
    let off = JwksStore::new(
        JwksOptions {
            refetch_on_unknown_kid: false,
            ..loopback()
        },
        None,
    )
    .unwrap();
    assert!(!off.refetch_for_rules(&rules).await);
    assert_eq!(server.hits(), 2);

    // An interval of zero lets the next unknown kid through.
    let eager = JwksStore::new(
        JwksOptions {
            refetch_min_interval: Duration::ZERO,
            ..loopback()
        },
        None,
    )
    .unwrap();
    assert!(eager.refetch_for_rules(&rules).await);
    assert_eq!(server.hits(), 3);
    assert_eq!(verify(&eager, &uri, &c.token(), &cache), Ok(()));
}

/// A CA and a server certificate for 127.0.0.1, made now.
fn test_pki() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "jwtgate test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (
        ca_cert.pem(),
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    )
}

#[tokio::test]
async fn https_jwks_uri_needs_a_trusted_ca() {
    let a = Signer::new("a");
    let (ca_pem, acceptor) = test_pki();
    let server = Server::start(Answer::Json(jwks(&[&a])), Some(acceptor)).await;
    let uri = server.uri("https");

    // System roots only: our test CA is unknown, the handshake fails.
    let store = JwksStore::new(loopback(), None).unwrap();
    let err = store.refresh(&uri, TIMEOUT).await.unwrap_err();
    assert!(format!("{err:#}").contains("TLS"), "{err:#}");
    assert!(!store.contains(&uri));

    // --jwks-ca-file with the test CA: fetched over TLS.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let store = JwksStore::new(
        JwksOptions {
            ca_file: Some(ca_file),
            ..loopback()
        },
        None,
    )
    .unwrap();
    assert_eq!(store.refresh(&uri, TIMEOUT).await.unwrap(), 1);
    let cache = TokenCache::new(CacheConfig::default());
    assert_eq!(verify(&store, &uri, &a.token(), &cache), Ok(()));

    // A CA file that is not PEM fails at start-up, naming the flag.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let err = JwksStore::new(
        JwksOptions {
            ca_file: Some(bad),
            ..loopback()
        },
        None,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--jwks-ca-file"), "{err:#}");
}

#[tokio::test]
async fn keep_fresh_reports_every_fetch_outcome() {
    use jwtgate::sources::jwks::{keep_fresh, FetchOutcome};
    use tokio::sync::{mpsc, watch};

    let a = Signer::new("a");
    let server = Server::start(Answer::Json(jwks(&[&a])), None).await;
    let good = server.uri("http");
    // A loopback port nobody listens on: connection refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/jwks", l.local_addr().unwrap().port())
    };
    let store = Arc::new(JwksStore::new(loopback(), None).unwrap());
    let (_uris_tx, uris_rx) =
        watch::channel(vec![(good.clone(), TIMEOUT), (closed.clone(), TIMEOUT)]);
    let (done_tx, _done_rx) = watch::channel(false);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (_stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(keep_fresh(
        store,
        uris_rx,
        Duration::from_millis(100),
        done_tx,
        Some(out_tx),
        stop_rx,
    ));
    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<FetchOutcome>) -> FetchOutcome {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an outcome within 5 s")
            .expect("channel open")
    }
    let first: Vec<FetchOutcome> = vec![next(&mut out_rx).await, next(&mut out_rx).await];
    let (ok, refused) = if first[0].uri == good {
        (&first[0], &first[1])
    } else {
        (&first[1], &first[0])
    };
    assert_eq!(ok.error, None);
    assert_eq!(refused.uri, closed);
    assert!(!refused.kept_last_good);
    assert!(
        refused
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("cannot connect"),
        "{refused:?}"
    );

    // The good URI breaks: its failures say the last good set is kept.
    server.set(Answer::Status(500));
    loop {
        let o = next(&mut out_rx).await;
        if let (true, Some(error)) = (o.uri == good, &o.error) {
            assert!(o.kept_last_good, "{o:?}");
            assert!(error.contains("500"), "{error}");
            break;
        }
    }
    task.abort();
}

#[tokio::test]
async fn restricted_addresses_are_refused_without_a_connection() {
    let a = Signer::new("a");
    let server = Server::start(Answer::Json(jwks(&[&a])), None).await;
    let strict = JwksStore::new(JwksOptions::default(), None).unwrap();
    let by_name = format!("http://localhost:{}/jwks", server.port);
    for (uri, says) in [
        (server.uri("http"), "127.0.0.1 is a loopback address"),
        // A host name is resolved first and its addresses checked.
        (by_name.clone(), "localhost resolves to"),
        // Cloud metadata: refused at once, nothing is sent.
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "link-local",
        ),
        ("http://[fe80::1]:8080/jwks".to_string(), "link-local"),
        ("http://100.100.100.200/jwks".to_string(), "metadata"),
        ("http://0.0.0.0:1/jwks".to_string(), "unspecified"),
    ] {
        let started = Instant::now();
        let err = strict.refresh(&uri, TIMEOUT).await.unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains(says) && err.contains("refused"),
            "{uri}: {err}"
        );
        assert!(err.contains("--jwks-allow-cidr"), "names the flag: {err}");
        assert!(started.elapsed() < TIMEOUT, "{uri} was not refused at once");
        assert!(!strict.contains(&uri));
    }
    assert_eq!(server.hits(), 0, "no request reached the server");

    // The node's own (non-loopback) addresses are refused too.
    let node = jwtgate::addrs::node_addresses().unwrap();
    if let Some(own) = node.iter().find(|ip| !ip.is_loopback()) {
        let host = match own {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let err = strict
            .refresh(&format!("http://{host}:1/jwks"), TIMEOUT)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("node's own"), "{err:#}");
    }

    // --jwks-allow-cidr opens exactly what it names.
    let allowed = JwksStore::new(loopback(), None).unwrap();
    assert_eq!(
        allowed.refresh(&server.uri("http"), TIMEOUT).await.unwrap(),
        1
    );
    assert_eq!(allowed.refresh(&by_name, TIMEOUT).await.unwrap(), 1);
    let err = allowed
        .refresh("http://169.254.169.254/latest/meta-data/", TIMEOUT)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("link-local"), "{err:#}");
}

#[tokio::test]
async fn a_rule_timeout_is_capped() {
    let server = Server::start(Answer::Hang, None).await;
    let store = JwksStore::new(
        JwksOptions {
            max_timeout: Duration::from_millis(300),
            ..loopback()
        },
        None,
    )
    .unwrap();
    let started = Instant::now();
    let err = store
        .refresh(&server.uri("http"), Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("no answer within 300ms"),
        "{err:#}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn oversized_key_sets_are_refused_and_the_store_is_bounded() {
    use jwtgate::sources::jwks::{MAX_JWKS_KEYS, MAX_JWKS_TOTAL_BYTES};
    let signers: Vec<Signer> = (0..=MAX_JWKS_KEYS)
        .map(|i| Signer::new(&format!("k{i}")))
        .collect();
    let server = Server::start(Answer::Json(jwks(&[&signers[0]])), None).await;
    let store = JwksStore::new(loopback(), None).unwrap();
    let uri = server.uri("http");
    store.refresh(&uri, TIMEOUT).await.unwrap();
    let all: Vec<&Signer> = signers.iter().collect();
    server.set(Answer::Json(jwks(&all)));
    let err = store.refresh(&uri, TIMEOUT).await.unwrap_err();
    assert!(format!("{err:#}").contains("more than the 100"), "{err:#}");
    assert_eq!(
        store.jwks(&uri).unwrap().len(),
        1,
        "the last good set stays"
    );

    // Documents just under the 1 MiB fetch cap: the store takes as many as
    // fit in its total, then refuses the next URI and keeps the others.
    let pad = "x".repeat(1000 * 1024);
    let big = format!(r#"{{"pad":"{pad}","keys":[{}]}}"#, signers[0].jwk());
    server.set(Answer::Json(big));
    let store = JwksStore::new(loopback(), None).unwrap();
    let mut refused = None;
    for i in 0..40 {
        let uri = format!("{}?n={i}", server.uri("http"));
        if let Err(err) = store.refresh(&uri, TIMEOUT).await {
            refused = Some((i, format!("{err:#}")));
            break;
        }
    }
    let (n, err) = refused.expect("the store refused a document");
    assert!(err.contains("past"), "{err}");
    let size = store.size();
    assert_eq!(size.documents, n);
    assert!(size.bytes <= MAX_JWKS_TOTAL_BYTES && size.bytes > MAX_JWKS_TOTAL_BYTES / 2);
}

#[tokio::test]
async fn a_slow_uri_delays_no_other_and_readiness_waits_only_for_the_cap() {
    use jwtgate::sources::jwks::keep_fresh;
    use tokio::sync::watch;

    let a = Signer::new("a");
    let hang = Server::start(Answer::Hang, None).await;
    let good = Server::start(Answer::Json(jwks(&[&a])), None).await;
    // `http://127…` sorts before `http://localhost…`: a loop fetching in
    // order would wait for the hanging URI first.
    let slow_uri = hang.uri("http");
    let good_uri = format!("http://localhost:{}/jwks", good.port);
    assert!(slow_uri < good_uri);
    let cap = Duration::from_secs(3);
    let store = Arc::new(
        JwksStore::new(
            JwksOptions {
                max_timeout: cap,
                ..loopback()
            },
            None,
        )
        .unwrap(),
    );
    let (_uris_tx, uris_rx) = watch::channel(vec![
        (slow_uri.clone(), Duration::from_secs(3600)),
        (good_uri.clone(), TIMEOUT),
    ]);
    let (done_tx, mut done_rx) = watch::channel(false);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(keep_fresh(
        store.clone(),
        uris_rx,
        Duration::from_secs(600),
        done_tx,
        None,
        stop_rx,
    ));
    // The good URI's keys arrive while the slow one is still in flight.
    while !store.contains(&good_uri) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "good URI never fetched"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !*done_rx.borrow(),
        "the slow URI's first try cannot have ended yet"
    );
    // Readiness comes once the slow try ends, bounded by the cap, not by
    // the rule's hour.
    tokio::time::timeout(Duration::from_secs(10), done_rx.wait_for(|d| *d))
        .await
        .expect("done within the cap")
        .unwrap();
    assert!(started.elapsed() >= cap - Duration::from_millis(100));
    assert!(!store.contains(&slow_uri));
    task.abort();
}
