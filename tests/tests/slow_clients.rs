//! Clients that try to hold the agent: heads sent byte by byte, idle
//! keep-alive connections, requests that stall, too many connections from
//! one source or in all. Each test asserts that the offender is cut off and
//! that other clients are served meanwhile. Issue "An agent no client can
//! knock over" items 1 and 2. Timeouts are set small; the bounds asserted
//! are generous (behaviour, not timings).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jwtgate_e2e::faq::{run_rows, FaqBed, MESH_PORT, PLAIN_PORT};
use jwtgate_e2e::raw_client::RawConn;
use jwtgate_e2e::{privileged, AgentOptions, Client};
use support::metric;
use support::ws::{self, Upgrade, WsApp};

fn start_agent(bed: &mut FaqBed, args: &[&str]) -> Result<()> {
    bed.node
        .start_agent(&AgentOptions {
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            ..AgentOptions::default()
        })
        .map(|_| ())
}

fn metrics(bed: &FaqBed) -> Result<String> {
    bed.node.agent().context("no agent")?.metrics()
}

/// Every FAQ row answered as expected from `client`.
fn served(bed: &FaqBed, client: &Client) -> bool {
    run_rows(client, bed.pod.mesh_addr()).iter().all(|r| r.ok())
}

/// Writes `bytes` one at a time, `pause` apart, until done or the peer
/// closes; returns how many were written.
fn trickle(
    mut stream: TcpStream,
    bytes: Vec<u8>,
    pause: Duration,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        for (i, b) in bytes.iter().enumerate() {
            if stream.write_all(&[*b]).is_err() {
                return i;
            }
            std::thread::sleep(pause);
        }
        bytes.len()
    })
}

/// What a cut-off client received before its connection ended.
fn cut_off(conn: &mut RawConn, within: Duration) -> Result<String> {
    let (got, closed) = conn.drain(within);
    let text = String::from_utf8_lossy(&got).into_owned();
    if !closed {
        bail!("still open after {within:?}; received {text:?}");
    }
    Ok(text)
}

const REQUEST_TIMEOUT_408: &str = "HTTP/1.1 408 Request Timeout";

#[test]
fn slow_request_head_gets_408_and_is_closed_while_others_are_served() -> Result<()> {
    privileged!();
    // 9080 declared HTTP (no protocol sniffing), 9091 sniffed.
    let mut bed = FaqBed::build_with("slow-head", |p| p.all_ports().protocol(MESH_PORT, "http"))?;
    start_agent(&mut bed, &["--header-read-timeout-secs", "2"])?;
    let pause = Duration::from_millis(200);
    let slow_header = format!("Host: x\r\nX-Slow: {}\r\n\r\n", "a".repeat(100)).into_bytes();

    // On the sniffed port the request line comes at once (so the connection
    // is HTTP), then the rest of the head trickles for ~20 s.
    let mut sniffed = RawConn::connect(&bed.client.netns, bed.pod.addr(PLAIN_PORT))?;
    sniffed.send(b"GET /productpage HTTP/1.1\r\n")?;
    let w1 = trickle(sniffed.stream().try_clone()?, slow_header.clone(), pause);
    // On the declared port everything trickles, from the first byte.
    let mut declared = RawConn::connect(&bed.client.netns, bed.pod.addr(MESH_PORT))?;
    let whole = [&b"GET /productpage HTTP/1.1\r\n"[..], &slow_header].concat();
    let w2 = trickle(declared.stream().try_clone()?, whole, pause);

    // Meanwhile other requests are answered as usual.
    let started = Instant::now();
    for _ in 0..3 {
        assert!(served(&bed, &bed.client), "{}", bed.node.agent_log());
        std::thread::sleep(Duration::from_millis(300));
    }
    for (name, conn) in [
        ("sniffed port", &mut sniffed),
        ("declared port", &mut declared),
    ] {
        let got = cut_off(conn, Duration::from_secs(15)).with_context(|| name.to_string())?;
        assert!(got.starts_with(REQUEST_TIMEOUT_408), "{name}: {got:?}");
        assert!(got.ends_with("request timeout"), "{name}: {got:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let written = [w1.join().unwrap_or(0), w2.join().unwrap_or(0)];
    assert!(
        written.iter().all(|n| *n < slow_header.len()),
        "a slow head was read to its end: {written:?}"
    );
    let seen = bed.node.app_seen(&bed.pod);
    assert!(
        seen.iter().all(|s| s.header("x-slow").is_none()),
        "{seen:?}"
    );
    let m = metrics(&bed)?;
    assert!(
        metric(
            &m,
            &["jwtgate_inbound_events_total", "event=\"header_timeout\""]
        ) >= Some(2.0),
        "{m}"
    );
    Ok(())
}

/// Only a connection's first request head is read before the connection
/// reaches a proxy worker (`sniff::first_head`); a later head on the same
/// keep-alive connection is timed by the worker's watchdog. Trickled, it is
/// cut with 408 as well.
#[test]
fn slow_second_head_on_a_keep_alive_connection_gets_408() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build_with("slow-second", |p| p.all_ports().protocol(MESH_PORT, "http"))?;
    start_agent(&mut bed, &["--header-read-timeout-secs", "2"])?;
    let mut conn = RawConn::connect(&bed.client.netns, bed.pod.addr(MESH_PORT))?;
    // A first request, answered on the keep-alive connection.
    conn.send(b"GET /productpage HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let first = conn.response(false)?;
    assert!(first.status < 500, "{}", bed.node.agent_log());
    let second = format!(
        "GET /productpage HTTP/1.1\r\nHost: x\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(100)
    )
    .into_bytes();
    let writer = trickle(
        conn.stream().try_clone()?,
        second.clone(),
        Duration::from_millis(200),
    );
    let got = cut_off(&mut conn, Duration::from_secs(10))?;
    assert!(got.starts_with(REQUEST_TIMEOUT_408), "{got:?}");
    let written = writer.join().unwrap_or(0);
    assert!(written < second.len(), "the slow head was read to its end");
    Ok(())
}

/// On a port declared HTTP the agent only needs to tell HTTP/1 from the
/// HTTP/2 preface: a client that sends a few bytes of a request line and
/// stops, or nothing at all, must not hold the connection for ever.
#[test]
fn partial_request_line_and_silence_on_a_declared_port_are_cut_off() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build_with("slow-line", |p| p.protocol(MESH_PORT, "http"))?;
    start_agent(
        &mut bed,
        &[
            "--header-read-timeout-secs",
            "2",
            "--idle-timeout-secs",
            "3",
        ],
    )?;
    let mut partial = RawConn::connect(&bed.client.netns, bed.pod.mesh_addr())?;
    partial.send(b"GE")?;
    let mut silent = RawConn::connect(&bed.client.netns, bed.pod.mesh_addr())?;
    let got = cut_off(&mut partial, Duration::from_secs(15)).context("partial request line")?;
    assert!(got.starts_with(REQUEST_TIMEOUT_408), "{got:?}");
    let got = cut_off(&mut silent, Duration::from_secs(15)).context("silent connection")?;
    assert_eq!(got, "", "a silent connection is closed without an answer");
    assert!(served(&bed, &bed.client));
    Ok(())
}

/// The idle timeout is the agent's (`--idle-timeout-secs`, 1 h by default),
/// not hyper's: hyper's own header-read timeout (30 s once a timer is set)
/// also ran between keep-alive requests and closed connections idle for
/// 30 s. The proxy turns it off; this holds it off. Takes 32 s.
#[test]
fn keep_alive_connection_idle_past_30_seconds_is_still_served() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("slow-idle30")?;
    start_agent(&mut bed, &[])?;
    let mut conn = bed
        .client
        .connect(bed.pod.mesh_addr())
        .map_err(|o| anyhow::anyhow!("{o}"))?;
    assert_eq!(conn.get("/productpage", None)?.status, 200);
    std::thread::sleep(Duration::from_secs(32));
    let r = conn
        .get("/productpage", None)
        .context("the keep-alive connection was closed while idle for 32 s")?;
    assert_eq!(r.status, 200);
    Ok(())
}

#[test]
fn idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("slow-idle")?;
    start_agent(&mut bed, &["--idle-timeout-secs", "2"])?;
    let addr = bed.pod.mesh_addr();
    let mut idle = bed
        .client
        .connect(addr)
        .map_err(|o| anyhow::anyhow!("{o}"))?;
    assert_eq!(idle.get("/productpage", None)?.status, 200);
    let mut busy = bed
        .client
        .connect(addr)
        .map_err(|o| anyhow::anyhow!("{o}"))?;
    // Five requests one second apart: used more often than the idle
    // timeout, the busy connection stays open for longer than it.
    for _ in 0..5 {
        let r = busy
            .get("/productpage", None)
            .context("the busy connection was closed")?;
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_secs(1));
    }
    // The idle one was closed meanwhile: the next request on it fails.
    assert!(
        idle.get("/productpage", None).is_err(),
        "the idle connection is still open"
    );
    let m = metrics(&bed)?;
    assert!(metric(&m, &["event=\"idle_timeout\""]) >= Some(1.0), "{m}");
    Ok(())
}

#[test]
fn request_that_stalls_is_cut_after_the_stream_idle_timeout() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("slow-stream")?;
    start_agent(&mut bed, &["--stream-idle-timeout-secs", "2"])?;
    let mut stalled = RawConn::connect(&bed.client.netns, bed.pod.mesh_addr())?;
    // An allowed request whose body never completes.
    stalled
        .send(b"POST /productpage HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")?;
    assert!(served(&bed, &bed.client), "{}", bed.node.agent_log());
    let got = cut_off(&mut stalled, Duration::from_secs(15))?;
    assert!(
        !got.contains(" 200 "),
        "the stalled request was answered: {got:?}"
    );
    let m = metrics(&bed)?;
    assert!(metric(&m, &["event=\"idle_timeout\""]) >= Some(1.0), "{m}");
    Ok(())
}

/// A connection over a cap is accepted by the kernel and reset by the agent
/// at once: its request gets no answer.
fn refused(bed: &FaqBed, client: &Client) -> Result<bool> {
    let mut conn = match RawConn::connect(&client.netns, bed.pod.mesh_addr()) {
        Ok(conn) => conn,
        // Reset before the connect call even returned.
        Err(e) if format!("{e:#}").contains("reset") => return Ok(true),
        Err(e) => return Err(e),
    };
    let _ = conn.send(b"GET /productpage HTTP/1.1\r\nHost: x\r\n\r\n");
    let (got, closed) = conn.drain(Duration::from_secs(5));
    Ok(closed && got.is_empty())
}

/// `n` connections from `client`, each with one request answered (so the
/// agent has accepted and counted it), kept open.
fn hold(bed: &FaqBed, client: &Client, n: usize) -> Result<Vec<RawConn>> {
    (0..n)
        .map(|_| {
            let mut c = RawConn::connect(&client.netns, bed.pod.mesh_addr())?;
            c.send(b"GET /productpage HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let r = c.response(false)?;
            if r.status != 200 {
                bail!("held connection answered {}", r.status);
            }
            Ok(c)
        })
        .collect()
}

fn eventually(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what}: not within 10 s")
}

#[test]
fn per_source_cap_resets_the_extra_connection_while_other_sources_are_served() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("slow-cap-src")?;
    let other = bed.node.add_client("other")?;
    start_agent(&mut bed, &["--max-connections-per-source", "3"])?;
    let mut held = hold(&bed, &bed.client, 3)?;
    assert!(
        refused(&bed, &bed.client)?,
        "a 4th connection from one source was served"
    );
    assert!(
        served(&bed, &other),
        "another source is not served while one is at its cap"
    );
    let m = metrics(&bed)?;
    assert!(
        metric(&m, &["jwtgate_connections_refused_total", "cap=\"source\""]) >= Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, &["jwtgate_connection_limit", "cap=\"source\""]),
        Some(3.0),
        "{m}"
    );
    // The three held (others may still be closing).
    assert!(
        metric(&m, &["jwtgate_connections_open"]) >= Some(3.0),
        "{m}"
    );
    // A place given back is a place taken again.
    held.pop();
    eventually("a connection after one closed", || {
        Ok(served(&bed, &bed.client))
    })?;
    Ok(())
}

#[test]
fn node_cap_resets_connections_from_every_source() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("slow-cap-node")?;
    let other = bed.node.add_client("other")?;
    start_agent(&mut bed, &["--max-connections", "3"])?;
    let mut held = hold(&bed, &bed.client, 2)?;
    held.extend(hold(&bed, &other, 1)?);
    assert!(
        refused(&bed, &bed.client)?,
        "a connection over the node cap was served"
    );
    assert!(
        refused(&bed, &other)?,
        "a connection over the node cap was served"
    );
    let m = metrics(&bed)?;
    assert!(
        metric(&m, &["jwtgate_connections_refused_total", "cap=\"node\""]) >= Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, &["jwtgate_connection_limit", "cap=\"node\""]),
        Some(3.0),
        "{m}"
    );
    held.clear();
    eventually("connections after the held ones closed", || {
        Ok(served(&bed, &bed.client) && served(&bed, &other))
    })?;
    Ok(())
}

/// A WebSocket stays a downstream connection after its 101: it counts
/// against the caps while it is open, and it is closed when idle.
#[test]
fn upgraded_connections_count_against_the_cap_and_idle_out() -> Result<()> {
    privileged!();
    const WS_PORT: u16 = 8080;
    let mut bed = FaqBed::build_with("slow-ws", |p| p.all_ports())?;
    start_agent(
        &mut bed,
        &[
            "--max-connections-per-source",
            "2",
            "--idle-timeout-secs",
            "2",
            "--stream-idle-timeout-secs",
            "2",
        ],
    )?;
    let rt = support::runtime();
    let _enter = rt.enter();
    let _app = WsApp::start(&bed.pod.netns, WS_PORT)?;
    let addr = bed.pod.addr(WS_PORT);
    let ns = bed.client.netns.clone();
    rt.block_on(async {
        // /productpage needs no token under the FAQ policy.
        let mut open = Vec::new();
        for _ in 0..2 {
            match ws::open(&ns, addr, "/productpage", None).await? {
                Upgrade::Open(mut s) => {
                    assert_eq!(ws::round_trip(&mut s, "hi").await?, "echo: hi");
                    open.push(s);
                }
                Upgrade::Refused(s, b) => bail!("refused: {s} {b}"),
            }
        }
        let third = ws::open(&ns, addr, "/productpage", None).await;
        assert!(
            !matches!(third, Ok(Upgrade::Open(_))),
            "a third WebSocket from a source capped at 2 was opened"
        );
        // Idle past the timeout: the agent closes them.
        tokio::time::sleep(Duration::from_secs(5)).await;
        for mut s in open {
            assert!(
                ws::round_trip(&mut s, "late").await.is_err(),
                "an idle WebSocket stayed open"
            );
        }
        // Their places are free again.
        let mut fresh = None;
        for _ in 0..50 {
            if let Ok(Upgrade::Open(s)) = ws::open(&ns, addr, "/productpage", None).await {
                fresh = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut fresh = fresh.context("no WebSocket after the idle ones were closed")?;
        assert_eq!(ws::round_trip(&mut fresh, "x").await?, "echo: x");
        Ok::<_, anyhow::Error>(())
    })
    .with_context(|| bed.node.agent_log())
}

/// An allowed request whose body never completes: it holds its place among
/// the requests in progress until the client goes.
fn stall(bed: &FaqBed, client: &Client) -> Result<RawConn> {
    let mut c = RawConn::connect(&client.netns, bed.pod.mesh_addr())?;
    c.send(b"POST /productpage HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123")?;
    Ok(c)
}

/// The answer to one more request from `client`.
fn one_more(bed: &FaqBed, client: &Client) -> Result<(u16, String)> {
    let mut c = RawConn::connect(&client.netns, bed.pod.mesh_addr())?;
    c.send(b"GET /productpage HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let r = c.response(false)?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// Requests that never finish hold their places among the requests in
/// progress, per source and node-wide; over either cap a request gets
/// Envoy's overload answer (503 "envoy overloaded") at once, a source at its
/// cap does not stop the others, and the places come back when the stalled
/// requests go.
#[test]
fn requests_over_the_in_flight_caps_get_503_and_places_come_back() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("slow-inflight")?;
    let other = bed.node.add_client("other")?;
    start_agent(
        &mut bed,
        &["--max-requests", "3", "--max-requests-per-source", "2"],
    )?;
    let in_progress = |bed: &FaqBed| -> Result<Option<f64>> {
        Ok(metric(&metrics(bed)?, &["jwtgate_requests_in_progress"]))
    };
    let overloaded = (503, "envoy overloaded".to_string());

    // One source takes its two places: its third request is refused, the
    // other source is served.
    let mut stalled = vec![stall(&bed, &bed.client)?, stall(&bed, &bed.client)?];
    eventually("two stalled requests in progress", || {
        Ok(in_progress(&bed)? == Some(2.0))
    })?;
    assert_eq!(one_more(&bed, &bed.client)?, overloaded, "source cap");
    assert!(served(&bed, &other), "another source is not served");
    // The other source takes the node's last place: now everyone waits.
    stalled.push(stall(&bed, &other)?);
    eventually("three stalled requests in progress", || {
        Ok(in_progress(&bed)? == Some(3.0))
    })?;
    assert_eq!(one_more(&bed, &other)?, overloaded, "node cap");

    let m = metrics(&bed)?;
    for (cap, limit) in [("node", 3.0), ("source", 2.0)] {
        let label = format!("cap=\"{cap}\"");
        assert!(
            metric(&m, &["jwtgate_requests_overloaded_total", &label]) >= Some(1.0),
            "{m}"
        );
        assert_eq!(
            metric(&m, &["jwtgate_requests_limit", &label]),
            Some(limit),
            "{m}"
        );
    }
    // The stalled clients go away: their places are given back.
    stalled.clear();
    eventually("requests served after the stalled ones left", || {
        Ok(served(&bed, &bed.client) && served(&bed, &other))
    })?;
    eventually("no request left in progress", || {
        Ok(in_progress(&bed)? == Some(0.0))
    })?;
    Ok(())
}
