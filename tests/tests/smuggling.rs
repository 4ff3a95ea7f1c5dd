//! The proxy attacked as a request smuggler would: upgrades the application
//! answers (h2c, unknown protocols, a 101 nobody asked for), bytes that the
//! sniffer and the application read differently, pipelined and oddly framed
//! requests, CONNECT, oversized heads, HTTP/2 stream floods. Each test
//! asserts that nothing reaches the application without a decision.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use jwtgate_e2e::faq::{
    demo_jwt, run_rows, tampered_jwt, FaqBed, APP_LABEL, BODY_401, BODY_403, NAMESPACE,
};
use jwtgate_e2e::raw_app::{RawApp, Switch};
use jwtgate_e2e::raw_client::RawConn;
use jwtgate_e2e::{privileged, AgentOptions};

const RAW_PORT: u16 = 7070;
/// What a request for a path the FAQ policy denies without a token looks
/// like on the wire; it must never reach an application.
const SMUGGLED: &[u8] = b"GET /api/v1/products/0 HTTP/1.1\r\nHost: x\r\n\r\n";
const SMUGGLED_PATH: &str = "/api/v1/products/0";

fn bed_with_raw_app(tag: &str, switch: Switch) -> Result<(FaqBed, RawApp)> {
    let mut bed = FaqBed::build_with(tag, |p| p.all_ports())?;
    bed.node.start_agent(&AgentOptions::default())?;
    let app = RawApp::start(&bed.pod.netns, RAW_PORT, switch)?;
    Ok((bed, app))
}

fn raw(bed: &FaqBed) -> Result<RawConn> {
    RawConn::connect(&bed.client.netns, bed.pod.addr(RAW_PORT))
}

/// Nothing the app received, parsed or tunnelled, is the smuggled request.
fn assert_never_reached(app: &RawApp) {
    let heads = app.heads();
    assert!(
        heads.iter().all(|h| !h.line.contains(SMUGGLED_PATH)),
        "the app parsed the smuggled request: {heads:?}"
    );
    let tunnelled = String::from_utf8_lossy(&app.after_switch()).into_owned();
    assert!(
        !tunnelled.contains(SMUGGLED_PATH),
        "the smuggled request was tunnelled to the app: {tunnelled:?}"
    );
}

/// `Upgrade: h2c` would turn the connection into HTTP/2 straight to the
/// app, every later stream unverified. Envoy strips h2c upgrade headers and
/// serves the request as a plain one; so must the agent.
#[test]
fn h2c_upgrade_is_stripped_and_never_opens_a_tunnel() -> Result<()> {
    privileged!();
    let (bed, app) = bed_with_raw_app("smug-h2c", Switch::OnUpgrade)?;
    let mut c = raw(&bed)?;
    c.send(
        b"GET /productpage HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )?;
    let r = c.response(false)?;
    assert_eq!(r.status, 200, "{} {}", r.status, r.text());
    // The connection is still HTTP/1.1 and the next request is decided.
    c.send(SMUGGLED)?;
    let r = c.response(false)?;
    assert_eq!((r.status, r.text().trim()), (403, BODY_403));
    assert_never_reached(&app);
    let heads = app.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    for h in ["upgrade", "http2-settings"] {
        assert_eq!(heads[0].header(h), None, "{h} forwarded: {:?}", heads[0]);
    }
    Ok(())
}

/// Istio's sidecar carries WebSocket upgrades only; Envoy answers any other
/// upgrade 403 (`upgrade_failed`) and closes, because an application that
/// accepted it would get a tunnel no policy looks into.
#[test]
fn upgrade_to_another_protocol_is_refused_like_envoy() -> Result<()> {
    privileged!();
    let (bed, app) = bed_with_raw_app("smug-upg", Switch::OnUpgrade)?;
    let token = demo_jwt();
    let mut c = raw(&bed)?;
    c.send(
        format!(
            "GET /productpage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Connection: Upgrade\r\nUpgrade: tunnel\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let r = c.response(false)?;
    assert_eq!(r.status, 403, "{} {}", r.status, r.text());
    let _ = c.send(SMUGGLED);
    let (_, closed) = c.drain(Duration::from_secs(5));
    assert!(closed, "the connection stays open after a refused upgrade");
    assert!(
        app.heads().is_empty(),
        "the app saw the upgrade: {:?}",
        app.heads()
    );
    assert_never_reached(&app);
    Ok(())
}

/// A WebSocket upgrade the application declines (200, not 101): the bytes
/// the client sent behind it are the next request, decided like any other.
#[test]
fn declined_websocket_upgrade_leaves_the_connection_http() -> Result<()> {
    privileged!();
    let (bed, app) = bed_with_raw_app("smug-decline", Switch::Never)?;
    let mut c = raw(&bed)?;
    let mut bytes = b"GET /productpage HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                      Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    bytes.extend_from_slice(SMUGGLED);
    c.send(&bytes)?;
    let first = c.response(false)?;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = c.response(false)?;
    assert_eq!((second.status, second.text().trim()), (403, BODY_403));
    assert_never_reached(&app);
    assert_eq!(app.heads().len(), 1);
    Ok(())
}

/// An application that answers 101 to a request that asked for no upgrade
/// must not get the client's next bytes as a tunnel.
#[test]
fn unsolicited_101_from_the_app_does_not_open_a_tunnel() -> Result<()> {
    privileged!();
    let (bed, app) = bed_with_raw_app("smug-101", Switch::Always)?;
    let mut c = raw(&bed)?;
    c.send(b"GET /productpage HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let first = c.response(false);
    let _ = c.send(SMUGGLED);
    let (rest, _) = c.drain(Duration::from_secs(3));
    let rest = String::from_utf8_lossy(&rest).into_owned();
    assert!(
        !rest.contains("TUNNELLED"),
        "first: {first:?}, then: {rest:?}"
    );
    assert_never_reached(&app);
    Ok(())
}

/// Request lines that HTTP servers accept but a strict sniffer would take
/// for another protocol: empty lines before them (RFC 9112 §2.2: hyper,
/// nginx and llhttp skip them) and whitespace other than one SP between
/// the words (RFC 9112 §3 lets recipients split on any whitespace; Python's
/// http.server, hence werkzeug, does). Taken for TCP, the request would be
/// spliced past jwt_authn wherever network RBAC allows the connection.
#[test]
fn request_lines_servers_accept_are_never_taken_for_tcp() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build_with("smug-crlf", |p| p.all_ports())?;
    // TCP from the client is allowed (an ALLOW with a source only), and
    // jwt_authn still rejects bad tokens on HTTP.
    bed.node.write_policy(
        "test-exclude.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: test-exclude, namespace: {NAMESPACE}}}\n\
             spec:\n  selector: {{matchLabels: {{app: {APP_LABEL}}}}}\n  action: ALLOW\n  rules:\n  \
             - from:\n    - source: {{ipBlocks: ['{}/32']}}\n",
            IpAddr::V4(bed.client.ip)
        ),
    )?;
    bed.node.start_agent(&AgentOptions::default())?;
    let app = RawApp::start(&bed.pod.netns, RAW_PORT, Switch::Never)?;
    let bad = tampered_jwt();
    for prefix in ["\r\n", "\n", "\r\n\r\n"] {
        let mut c = raw(&bed)?;
        c.send(
            format!(
                "{prefix}GET /productpage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bad}\r\nx-forged: 1\r\n\r\n"
            )
            .as_bytes(),
        )?;
        let r = c
            .response(false)
            .with_context(|| format!("prefix {prefix:?}"))?;
        assert_eq!(
            (r.status, r.text().trim()),
            (401, BODY_401),
            "prefix {prefix:?}"
        );
    }
    // Lenient word splitting: the agent's HTTP server refuses these (400),
    // which is what matters: they are decided, not spliced.
    for line in [
        "GET\t/productpage\tHTTP/1.1",
        "GET  /productpage HTTP/1.1",
        " GET /productpage HTTP/1.1",
        "GET /productpage\x0bHTTP/1.1",
    ] {
        let mut c = raw(&bed)?;
        c.send(format!("{line}\r\nHost: x\r\nAuthorization: Bearer {bad}\r\n\r\n").as_bytes())?;
        let (got, _) = c.drain(Duration::from_secs(3));
        let got = String::from_utf8_lossy(&got).into_owned();
        assert!(
            !got.contains("x-raw-app"),
            "{line:?} was spliced to the app: {got:?}"
        );
    }
    let heads = app.heads();
    assert!(
        heads.is_empty(),
        "a request with a bad token reached the app: {heads:?}"
    );
    Ok(())
}

#[test]
fn pipelined_requests_are_each_decided_in_order() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("smug-pipe")?;
    bed.start_agent()?;
    let token = demo_jwt();
    let mut c = RawConn::connect(&bed.client.netns, bed.pod.mesh_addr())?;
    // Four requests in one write; the third hides a request in its body.
    let body = String::from_utf8_lossy(SMUGGLED).into_owned();
    c.send(
        format!(
            "GET /productpage HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /api/v1/products/0 HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /productpage HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}\
             GET /api/v1/products/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    let statuses: Vec<u16> = (0..4)
        .map(|_| c.response(false).map(|r| r.status))
        .collect::<Result<_>>()?;
    assert_eq!(statuses, [200, 403, 200, 200]);
    let seen: Vec<(String, String)> = bed
        .node
        .app_seen(&bed.pod)
        .into_iter()
        .map(|s| (s.method, s.path))
        .collect();
    let want = [
        ("GET", "/productpage"),
        ("POST", "/productpage"),
        ("GET", "/api/v1/products/1"),
    ]
    .map(|(m, p)| (m.to_string(), p.to_string()));
    assert_eq!(seen, want);
    Ok(())
}

/// The classic framing disagreements (CL.TE, TE.CL, two lengths, an
/// obfuscated Transfer-Encoding): whatever the agent makes of them, the
/// application receives requests framed by the agent, one per decision, and
/// never the request hidden in a body.
#[test]
fn conflicting_framing_never_smuggles_a_request_to_the_app() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("smug-framing")?;
    bed.start_agent()?;
    let hidden = String::from_utf8_lossy(SMUGGLED).into_owned();
    let chunked = format!("0\r\n\r\n{hidden}");
    let attempts = [
        // CL.TE: a front end going by Content-Length forwards it all.
        format!(
            "POST /productpage HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}",
            chunked.len()
        ),
        // TE.CL: a short Content-Length next to chunked.
        format!(
            "POST /productpage HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
            hidden.len()
        ),
        // Two different lengths.
        format!(
            "POST /productpage HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        ),
        // Transfer-Encoding spelled so that some parsers miss it.
        format!(
            "POST /productpage HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        ),
        format!("POST /productpage HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n{chunked}"),
    ];
    for attempt in &attempts {
        let mut c = RawConn::connect(&bed.client.netns, bed.pod.mesh_addr())?;
        c.send(attempt.as_bytes())?;
        // Whatever comes back (answers, then a close): read it all.
        let (got, _) = c.drain(Duration::from_secs(2));
        let got = String::from_utf8_lossy(&got).into_owned();
        assert!(
            !got.contains("\"path\":\"/api/v1/products/0\""),
            "{attempt:?} reached the app as a request: {got}"
        );
    }
    let seen = bed.node.app_seen(&bed.pod);
    assert!(
        seen.iter().all(|s| s.path != SMUGGLED_PATH),
        "a hidden request reached the app: {seen:?}"
    );
    Ok(())
}

/// Headers named in `Connection` are hop-by-hop and removed before
/// forwarding; naming the framing headers or Host there must not change
/// how the application frames the request or which host it sees.
#[test]
fn connection_header_cannot_remove_framing_or_host() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("smug-conn")?;
    bed.start_agent()?;
    let body = String::from_utf8_lossy(SMUGGLED).into_owned();
    let mut c = RawConn::connect(&bed.client.netns, bed.pod.mesh_addr())?;
    c.send(
        format!(
            "POST /productpage HTTP/1.1\r\nHost: shop.example\r\nConnection: content-length, host\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    let r = c.response(false)?;
    assert_eq!(r.status, 200, "{}", r.text());
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    c.send(
        format!(
            "POST /productpage HTTP/1.1\r\nHost: shop.example\r\nConnection: transfer-encoding\r\n\
             Transfer-Encoding: chunked\r\n\r\n{chunked}"
        )
        .as_bytes(),
    )?;
    let r = c.response(false)?;
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(500));
    let seen = bed.node.app_seen(&bed.pod);
    assert!(
        seen.iter().all(|s| s.path != SMUGGLED_PATH),
        "the body was read as a request: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.header("host"), Some("shop.example"), "{s:?}");
    }
    Ok(())
}

#[test]
fn head_denials_have_no_body_and_the_connection_stays_in_step() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("smug-head")?;
    bed.start_agent()?;
    let mut c = RawConn::connect(&bed.client.netns, bed.pod.mesh_addr())?;
    c.send(b"HEAD /api/v1/products/0 HTTP/1.1\r\nHost: x\r\n\r\nGET /productpage HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let head = c.response(true)?;
    assert_eq!(head.status, 403);
    assert_eq!(head.header("content-length"), Some("19"), "{head:?}");
    // Had a body followed the HEAD answer, this would parse it as a status line.
    let next = c.response(false)?;
    assert_eq!(next.status, 200);
    assert!(next.json().is_ok(), "{}", next.text());
    Ok(())
}

/// CONNECT asks the proxy for a tunnel; Istio's sidecar has no CONNECT
/// upgrade on inbound. Whatever the answer, the bytes after it are never a
/// request the application serves undecided.
#[test]
fn connect_never_opens_a_tunnel() -> Result<()> {
    privileged!();
    let (bed, app) = bed_with_raw_app("smug-connect", Switch::Always)?;
    let token = demo_jwt();
    let target = bed.pod.addr(RAW_PORT);
    let mut c = raw(&bed)?;
    c.send(
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let first = c.response(false);
    let _ = c.send(SMUGGLED);
    let (rest, _) = c.drain(Duration::from_secs(3));
    let rest = String::from_utf8_lossy(&rest).into_owned();
    assert!(
        !rest.contains("TUNNELLED"),
        "first: {first:?}, then {rest:?}"
    );
    assert_never_reached(&app);
    Ok(())
}

#[test]
fn oversized_request_head_gets_431_and_reaches_nothing() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("smug-big")?;
    bed.start_agent()?;
    let token = demo_jwt();
    // Envoy's 60 KiB: just over it, and far over it, over HTTP/1.1 and h2.
    for kib in [62, 70, 200] {
        let big = "b".repeat(kib * 1024);
        let mut c = RawConn::connect(&bed.client.netns, bed.pod.mesh_addr())?;
        let _ = c.send(
            format!("GET /productpage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Big: {big}\r\n\r\n")
                .as_bytes(),
        );
        let r = c
            .response(false)
            .with_context(|| format!("{kib} KiB over HTTP/1.1"))?;
        assert_eq!(r.status, 431, "{kib} KiB over HTTP/1.1");
    }
    let rt = support::runtime();
    let (ns, addr) = (bed.client.netns.clone(), bed.pod.mesh_addr());
    for kib in [62, 70] {
        let big = "b".repeat(kib * 1024);
        let token = token.clone();
        let ns = ns.clone();
        let status = rt.block_on(async move {
            let stream = support::connect_in(&ns, addr).await?;
            let (client, conn) = h2::client::handshake(stream).await?;
            tokio::spawn(conn);
            let mut client = client.ready().await?;
            let req = http::Request::get(format!("http://{addr}/productpage"))
                .header("authorization", format!("Bearer {token}"))
                .header("x-big", big)
                .body(())?;
            let (resp, _) = client.send_request(req, true)?;
            // A refused stream (reset) is as good as a 431: nothing forwarded.
            Ok::<_, anyhow::Error>(
                support::step("the h2 answer", resp)
                    .await?
                    .ok()
                    .map(|r| r.status()),
            )
        })?;
        assert!(
            status.is_none_or(|s| s == 431),
            "{kib} KiB over h2 answered {status:?}"
        );
    }
    assert!(bed.node.app_seen(&bed.pod).is_empty());
    assert!(run_rows(&bed.client, bed.pod.mesh_addr())
        .iter()
        .all(|r| r.ok()));
    Ok(())
}

/// HEADERS then RST_STREAM, thousands of times on one connection (the
/// "rapid reset" attack): the agent either ends that connection or decides
/// each stream, and keeps serving everyone else meanwhile.
#[test]
fn h2_rapid_reset_flood_does_not_stop_the_agent_serving_others() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("smug-reset")?;
    bed.start_agent()?;
    let addr: SocketAddr = bed.pod.mesh_addr();
    let rt = support::runtime();
    let ns = bed.client.netns.clone();
    let flood = rt.spawn(async move {
        let stream = support::connect_in(&ns, addr).await?;
        let (mut client, conn) = h2::client::handshake(stream).await?;
        tokio::spawn(conn);
        let mut sent = 0usize;
        for _ in 0..10_000 {
            let req = http::Request::get(format!("http://{addr}/api/v1/products/0"))
                .body(())
                .expect("a request");
            match support::step("a stream slot", client.ready()).await? {
                Ok(c) => client = c,
                Err(_) => break,
            }
            match client.send_request(req, true) {
                // Dropping the response future resets the stream.
                Ok((resp, _)) => drop(resp),
                Err(_) => break,
            }
            sent += 1;
        }
        Ok::<_, anyhow::Error>(sent)
    });
    // Served while the flood runs, and after it.
    for _ in 0..3 {
        assert!(
            run_rows(&bed.client, bed.pod.mesh_addr())
                .iter()
                .all(|r| r.ok()),
            "{}",
            bed.node.agent_log()
        );
    }
    let sent = rt.block_on(flood)??;
    eprintln!("rapid reset: {sent} streams sent before the connection ended or the loop finished");
    assert!(run_rows(&bed.client, bed.pod.mesh_addr())
        .iter()
        .all(|r| r.ok()));
    bed.node
        .agent()
        .context("agent")?
        .metrics()
        .context("the agent stopped answering")?;
    Ok(())
}
