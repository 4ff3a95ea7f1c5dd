//! Zero-downtime restart: a new agent starts next to the running one (what
//! the DaemonSet's surge update does), takes the steering over, then the
//! old one is stopped and drains. Under constant keep-alive load, not one
//! request fails; afterwards the new agent alone serves.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use jwtgate_e2e::faq::{demo_jwt, request_authentication, FaqBed, APP_LABEL, NAMESPACE};
use jwtgate_e2e::{privileged, AgentOptions, Client, Conn, Request};

/// Keep `conn` usable: a response that says `Connection: close` (a draining
/// agent) is followed by a reconnect, as HTTP clients do.
fn reconnect(client: &Client, addr: SocketAddr) -> Result<Conn> {
    client
        .connect(addr)
        .map_err(|o| anyhow::anyhow!("connect: {o}"))
}

#[test]
fn restart_under_constant_load_loses_no_request() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("handover")?;
    bed.start_agent()?;
    let token = demo_jwt();
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU32::new(0), AtomicU32::new(0));
    let errors = std::sync::Mutex::new(Vec::<String>::new());
    let (client, addr) = (bed.client.clone(), bed.pod.mesh_addr());

    std::thread::scope(|s| -> Result<()> {
        for worker in 0..4 {
            let (client, token, stop, ok, failed, errors) =
                (&client, &token, &stop, &ok, &failed, &errors);
            s.spawn(move || {
                let mut conn = reconnect(client, addr).ok();
                while !stop.load(Ordering::Relaxed) {
                    let Some(c) = conn.as_mut() else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("worker {worker}: cannot connect"));
                        conn = reconnect(client, addr).ok();
                        continue;
                    };
                    // Alternate the three answers of the FAQ: all must stay right.
                    let (path, tok, want) = match ok.load(Ordering::Relaxed) % 3 {
                        0 => ("/productpage", None, 200),
                        1 => ("/api/v1/products/0", Some(token.as_str()), 200),
                        _ => ("/api/v1/products/1", None, 403),
                    };
                    match c.send(&Request::get(path).bearer(tok)) {
                        Ok(r) if r.status == want => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if r.closes() {
                                conn = reconnect(client, addr).ok();
                            }
                        }
                        Ok(r) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!(
                                "{path}: {} {}",
                                r.status,
                                r.text()
                            ));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("{path}: {e:#}"));
                            conn = reconnect(client, addr).ok();
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        let before = ok.load(Ordering::Relaxed);
        // The successor starts while the old agent serves, and takes over.
        let successor = bed.node.start_successor(&AgentOptions::default())?;
        std::thread::sleep(Duration::from_millis(500));
        // The old agent is stopped, as the DaemonSet controller does once the
        // new pod is Ready; it drains.
        let status = bed.node.stop_agent()?;
        assert!(status.success(), "old agent: {status}");
        bed.node.replace_agent(successor)?;
        let at_stop = ok.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Relaxed);
        assert!(
            before > 10 && at_stop > before,
            "load too thin: {before} then {at_stop}"
        );
        Ok(())
    })?;

    let (ok, failed) = (ok.into_inner(), failed.into_inner());
    eprintln!("{ok} requests answered right across the hand-over, {failed} failed");
    assert_eq!(
        failed,
        0,
        "{:?}\n{}",
        errors.into_inner().unwrap(),
        bed.node.agent_log()
    );
    // The successor serves alone now, and it did serve.
    let metrics = bed.node.agent().context("successor")?.metrics()?;
    let served: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("jwtgate_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(served > 0, "the successor served nothing:\n{metrics}");
    Ok(())
}

/// A JWKS endpoint on loopback that, once `slow` is set, answers each fetch
/// after `SLOW_JWKS_DELAY`: an identity provider that is slow (or far away)
/// while a successor agent starts.
struct SlowJwks {
    uri: String,
    slow: Arc<AtomicBool>,
}

const SLOW_JWKS_DELAY: Duration = Duration::from_secs(2);

impl SlowJwks {
    fn start(jwks: &std::path::Path) -> Result<SlowJwks> {
        let body = std::fs::read(jwks).with_context(|| format!("reading {}", jwks.display()))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let uri = format!("http://{}/jwks.json", listener.local_addr()?);
        let slow = Arc::new(AtomicBool::new(false));
        let flag = slow.clone();
        // Lives until the test process ends.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (body, slow) = (body.clone(), flag.load(Ordering::Relaxed));
                std::thread::spawn(move || serve_jwks(conn, &body, slow));
            }
        });
        Ok(SlowJwks { uri, slow })
    }
}

fn serve_jwks(mut conn: TcpStream, body: &[u8], slow: bool) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if slow {
        std::thread::sleep(SLOW_JWKS_DELAY);
    }
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(body);
}

/// The hand-over's other half: a client that opens a new connection for
/// every request reaches the successor as soon as it enrols. Had it
/// enrolled before fetching its signing keys, valid tokens would get 401
/// until the fetch completes (seen on the real node with a one-at-a-time
/// update). With the identity provider slow, the successor waits for its
/// keys while the old agent serves, and not one request fails.
#[test]
fn successor_takes_over_only_once_it_has_the_signing_keys() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("handover-keys")?;
    let jwks = SlowJwks::start(&jwtgate_e2e::testdata("istio-samples/jwks.json"))?;
    bed.node.write_policy(
        "jwt-example.yaml",
        &request_authentication(NAMESPACE, APP_LABEL, &jwks.uri),
    )?;
    bed.start_agent()?;
    jwks.slow.store(true, Ordering::Relaxed);
    let token = demo_jwt();
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU32::new(0), AtomicU32::new(0));
    let errors = std::sync::Mutex::new(Vec::<String>::new());
    let (client, addr) = (bed.client.clone(), bed.pod.mesh_addr());
    let successor = std::thread::scope(|s| -> Result<_> {
        for _ in 0..2 {
            let (client, token, stop, ok, failed, errors) =
                (&client, &token, &stop, &ok, &failed, &errors);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // A token is needed here: what a keyless agent would refuse.
                    let req = Request::get("/api/v1/products/0").bearer(Some(token.as_str()));
                    match reconnect(client, addr).and_then(|mut c| c.send(&req)) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.text()));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("{e:#}"));
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        // Returns once the successor is ready, its keys fetched.
        let successor = bed.node.start_successor(&AgentOptions::default());
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        successor
    })?;
    let (ok, failed) = (ok.into_inner(), failed.into_inner());
    eprintln!("{ok} new-connection requests answered right across the take-over, {failed} failed");
    let log = std::fs::read_to_string(successor.log_path()).unwrap_or_default();
    assert_eq!(
        failed,
        0,
        "{:?}\nsuccessor's log:\n{log}",
        errors.into_inner().unwrap()
    );
    assert!(
        log.contains("another agent is serving") && log.contains("signing keys fetched"),
        "the successor did not wait for its keys:\n{log}"
    );
    // The successor took over: it serves new connections now.
    bed.node.stop_agent()?;
    bed.node.replace_agent(successor)?;
    let r =
        reconnect(&client, addr)?.send(&Request::get("/api/v1/products/0").bearer(Some(&token)))?;
    assert_eq!(r.status, 200, "{}", r.text());
    Ok(())
}
