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
//! - `sleep`: the client pod's main process
//!
//! Every long-running mode ends on SIGTERM (as PID 1 of a container it would
//! otherwise ignore it and make each pod deletion wait for its grace period).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jwtgate_e2e::http::{self, Outcome, CONNECT_TIMEOUT};
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
            let _app = EchoApp::start_here(name, &ports)?;
            println!("serving {name} on {ports:?}");
            wait_for_signal();
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
            "usage: jwtgate-testpod serve NAME PORT... | jwks PORT | get ADDR PATH [TOKEN] | sleep"
        ),
    }
    Ok(())
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
