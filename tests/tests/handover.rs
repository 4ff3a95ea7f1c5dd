//! Zero-downtime restart: a new agent starts next to the running one (what
//! the DaemonSet's surge update does), takes the steering over, then the
//! old one is stopped and drains. Under constant keep-alive load, not one
//! request fails; afterwards the new agent alone serves.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use jwtgate_e2e::faq::{demo_jwt, FaqBed};
use jwtgate_e2e::{privileged, AgentOptions, Client, Conn, Request};
use std::net::SocketAddr;

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
