//! `jwtgate-testpod`: the one program of the test node's pod images (built
//! into `localhost/jwtgate-e2e/testpod` by `cargo xtask node`), so the real
//! pods run the same echo app and client as the namespace tests.
//!
//! - `serve NAME PORT...`: the echo app (`jwtgate_e2e::app`), httpbin-like
//! - `jwks PORT`: Istio's sample JWKS on every path, like the FAQ's
//!   nginx-proxy `/get_jwks`
//! - `get ADDR PATH [TOKEN]`: one GET on a new connection, as the FAQ's curl;
//!   prints one JSON line, `{"status","body","peer"}`, or `{"outcome"}` when
//!   the connect failed
//! - `load ADDR WORKERS MAX_SECS TOKEN [new]`: constant load
//!   ([`clients::load`]) on keep-alive connections, or a new connection per
//!   request with `new`, until a line (or EOF) on stdin; prints
//!   `{"event":"running"}` once every worker had a right answer, then the
//!   report
//! - `first PATH MAX_SECS ADDR...`: new connections without a token to
//!   addresses a pod may get ([`clients::first_answers`]) until a line on
//!   stdin; prints `{"event":"running"}`, then the report
//! - `sleep`: the client pod's main process
//!
//! `serve` prints, every 200 ms, how many requests came from which peer
//! (`{"seen":N,"peer":"IP"}`): `kubectl logs` then says whether anything
//! but the verifier (127.0.0.6) ever reached the app.
//!
//! Every long-running mode ends on SIGTERM (as PID 1 of a container it would
//! otherwise ignore it and make each pod deletion wait for its grace period).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use jwtgate_e2e::http::{self, Outcome, CONNECT_TIMEOUT};
use jwtgate_e2e::node::clients;
use jwtgate_e2e::{interrupt, EchoApp};

const JWKS: &str = include_str!("../../testdata/istio-samples/jwks.json");

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("serve") => {
            let name = arg(1).context("serve NAME PORT...")?;
            let ports = args[2..]
                .iter()
                .map(|p| p.parse::<u16>().with_context(|| format!("port {p}")))
                .collect::<Result<Vec<_>>>()?;
            interrupt::install()?;
            let app = EchoApp::start_here(name, &ports)?;
            println!("serving {name} on {ports:?}");
            while !interrupt::interrupted() {
                std::thread::sleep(Duration::from_millis(200));
                report_peers(&app);
            }
            report_peers(&app);
        }
        Some("load") => {
            let usage = "load ADDR WORKERS MAX_SECS TOKEN [new]";
            let addr: SocketAddr = arg(1).context(usage)?.parse()?;
            let workers: u32 = arg(2).context(usage)?.parse()?;
            let max = Duration::from_secs(arg(3).context(usage)?.parse()?);
            let token = arg(4).context(usage)?;
            let connections = match arg(5) {
                None => clients::Connections::KeepAlive,
                Some("new") => clients::Connections::New,
                Some(other) => bail!("{usage}: unknown {other:?}"),
            };
            let stop = stop_on_stdin();
            let report = clients::load(addr, workers, connections, token, max, stop, running);
            println!("{}", serde_json::to_string(&report)?);
        }
        Some("first") => {
            let usage = "first PATH MAX_SECS ADDR...";
            let path = arg(1).context(usage)?;
            let max = Duration::from_secs(arg(2).context(usage)?.parse()?);
            let addrs = args[3..]
                .iter()
                .map(|a| a.parse::<SocketAddr>().with_context(|| format!("address {a}")))
                .collect::<Result<Vec<_>>>()?;
            let stop = stop_on_stdin();
            running();
            let report = clients::first_answers(&addrs, path, max, stop);
            println!("{}", serde_json::to_string(&report)?);
        }
        Some("jwks") => {
            let port: u16 = arg(1).context("jwks PORT")?.parse()?;
            interrupt::install()?;
            serve_jwks(port)?;
        }
        Some("get") => {
            let addr: SocketAddr = arg(1).context("get ADDR PATH [TOKEN]")?.parse()?;
            let path = arg(2).context("get ADDR PATH [TOKEN]")?;
            println!("{}", get(addr, path, arg(3)));
        }
        Some("sleep") => {
            interrupt::install()?;
            wait_for_signal();
        }
        _ => bail!(
            "usage: jwtgate-testpod serve NAME PORT... | jwks PORT | get ADDR PATH [TOKEN] | load ADDR WORKERS MAX_SECS TOKEN [new] | first PATH MAX_SECS ADDR... | sleep"
        ),
    }
    Ok(())
}

/// The peers of the requests served since the last call, one JSON line per
/// peer address.
fn report_peers(app: &EchoApp) {
    let mut peers = std::collections::BTreeMap::<String, u64>::new();
    for r in app.take_seen() {
        *peers.entry(r.peer.ip().to_string()).or_default() += 1;
    }
    for (peer, n) in peers {
        println!("{}", serde_json::json!({"seen": n, "peer": peer}));
    }
}

/// Set once a line or EOF arrives on stdin (`kubectl exec -i` forwards it;
/// it forwards no signal).
fn stop_on_stdin() -> &'static AtomicBool {
    static STOP: AtomicBool = AtomicBool::new(false);
    std::thread::spawn(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        STOP.store(true, Ordering::SeqCst);
    });
    &STOP
}

fn running() {
    println!("{}", serde_json::json!({"event": "running"}));
    let _ = std::io::stdout().flush();
}

fn wait_for_signal() {
    while !interrupt::interrupted() {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> serde_json::Value {
    let mut conn = match http::connect(None, addr, CONNECT_TIMEOUT) {
        Ok(c) => c,
        Err(o) => {
            let outcome = match o {
                Outcome::Refused => "refused".to_string(),
                Outcome::TimedOut => "timed out".to_string(),
                other => other.to_string(),
            };
            return serde_json::json!({ "outcome": outcome });
        }
    };
    match conn.get(path, token) {
        Ok(r) => serde_json::json!({
            "status": r.status,
            "body": r.text(),
            "peer": r.header("x-echo-peer"),
        }),
        Err(e) => serde_json::json!({ "outcome": format!("request failed: {e:#}") }),
    }
}

/// A minimal HTTP/1.0-style server: every request gets the JWKS and a close.
fn serve_jwks(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    listener.set_nonblocking(true)?;
    println!("serving the JWKS on port {port}");
    while !interrupt::interrupted() {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                // Read the request head; its content does not matter.
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{JWKS}",
                    JWKS.len()
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(())
}
