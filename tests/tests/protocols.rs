//! Every HTTP shape a mesh carries, through the real agent with real
//! clients and servers: WebSocket (tokio-tungstenite), h2c and gRPC
//! (tonic, curl --http2-prior-knowledge). Each test asserts the answer and
//! what the application received. Issue "Envoy-exact requests" items 3-4.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jwtgate_e2e::faq::{
    demo_jwt, tampered_jwt, FaqBed, APP_LABEL, BODY_401, BODY_403, NAMESPACE, ROWS,
};
use jwtgate_e2e::{privileged, AgentOptions};
use support::grpc::{self, GrpcApp, Msg};
use support::h2_app::H2App;
use support::ws::{self, Upgrade, WsApp};
use tonic::Code;

const WS_PORT: u16 = 8080;
const GRPC_PORT: u16 = 50051;

fn start_agent(bed: &mut FaqBed, args: &[&str]) -> Result<()> {
    bed.node
        .start_agent(&AgentOptions {
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            ..AgentOptions::default()
        })
        .map(|_| ())
}

#[test]
fn websocket_upgrade_is_authorized_then_piped_both_ways() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build_with("proto-ws", |p| p.all_ports())?;
    start_agent(&mut bed, &[])?;
    let rt = support::runtime();
    let _enter = rt.enter();
    let app = WsApp::start(&bed.pod.netns, WS_PORT)?;
    let addr = bed.pod.addr(WS_PORT);
    let client = bed.client.netns.clone();
    rt.block_on(async {
        // Allowed (valid token): 101, then messages both ways.
        let Upgrade::Open(mut socket) = ws::open(&client, addr, "/ws", Some(&demo_jwt())).await?
        else {
            bail!("the allowed upgrade was refused\n{}", bed.node.agent_log());
        };
        for i in 0..5 {
            let text = format!("message {i}");
            assert_eq!(
                ws::round_trip(&mut socket, &text).await?,
                format!("echo: {text}")
            );
        }
        // Denied upgrades get the ordinary local replies.
        match ws::open(&client, addr, "/ws", None).await? {
            Upgrade::Refused(status, body) => assert_eq!((status, body.trim()), (403, BODY_403)),
            Upgrade::Open(_) => bail!("an upgrade without a token was let through"),
        }
        match ws::open(&client, addr, "/ws", Some(&tampered_jwt())).await? {
            Upgrade::Refused(status, body) => assert_eq!((status, body.trim()), (401, BODY_401)),
            Upgrade::Open(_) => bail!("an upgrade with a bad token was let through"),
        }
        // The FAQ's exception holds for upgrades too: /productpage needs no token.
        let Upgrade::Open(mut open) = ws::open(&client, addr, "/productpage", None).await? else {
            bail!("the upgrade on the excepted path was refused");
        };
        assert_eq!(ws::round_trip(&mut open, "x").await?, "echo: x");
        // The first socket is still a working pipe.
        assert_eq!(ws::round_trip(&mut socket, "again").await?, "echo: again");
        Ok(())
    })?;
    let seen = app.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/ws", "/productpage"],
        "only the allowed upgrades reach the app"
    );
    let first = &seen[0];
    assert_eq!(first.header("upgrade"), Some("websocket"), "{first:?}");
    assert!(
        first
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{first:?}"
    );
    assert!(first.header("sec-websocket-key").is_some(), "{first:?}");
    assert_eq!(
        first.header("authorization"),
        None,
        "the token is not forwarded"
    );
    assert_eq!(
        first.header("x-forwarded-for"),
        Some(bed.client.ip.to_string().as_str())
    );
    Ok(())
}

/// The policy files of the gRPC tests: the FAQ's two, plus a DENY on one
/// method's path.
fn deny_admin_method() -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-admin, namespace: {NAMESPACE}}}\n\
         spec:\n  selector: {{matchLabels: {{app: {APP_LABEL}}}}}\n  action: DENY\n  rules:\n  \
         - to:\n    - operation: {{paths: ['/jwtgate.test.Echo/Admin']}}\n"
    )
}

#[test]
fn grpc_calls_are_authorized_per_call_with_grpc_local_replies() -> Result<()> {
    privileged!();
    // Port 50051 declared `grpc`, as a Service port name would.
    let mut bed = FaqBed::build_with("proto-grpc", |p| p.all_ports().protocol(GRPC_PORT, "grpc"))?;
    bed.node
        .write_policy("deny-admin.yaml", &deny_admin_method())?;
    start_agent(&mut bed, &[])?;
    let rt = support::runtime();
    let _enter = rt.enter();
    let app = GrpcApp::start(&bed.pod.netns, GRPC_PORT)?;
    let addr = bed.pod.addr(GRPC_PORT);
    let token = demo_jwt();
    let client_ns = bed.client.netns.clone();
    rt.block_on(async {
        let mut client = grpc::client(&client_ns, addr).await?;
        let t = Some(token.as_str());
        // Unary, server streaming, client streaming: allowed with the token.
        let said = support::step("Say", client.say(grpc::with_token(Msg::new("hi", 1), t)))
            .await?
            .context("Say with a token")?;
        assert_eq!(said.into_inner().text, "said: hi");
        let mut counted =
            support::step("Count", client.count(grpc::with_token(Msg::new("0", 5), t)))
                .await?
                .context("Count with a token")?
                .into_inner();
        let mut got = Vec::new();
        while let Some(m) = support::step("a streamed message", counted.message()).await?? {
            got.push(m.n);
        }
        assert_eq!(got, [1, 2, 3, 4, 5]);
        let parts = tokio_stream::iter(["a", "b", "c"].map(|s| Msg::new(s, 0)));
        let joined = support::step("Join", client.join(grpc::with_token(parts, t)))
            .await?
            .context("Join with a token")?
            .into_inner();
        assert_eq!((joined.text.as_str(), joined.n), ("a+b+c", 3));

        // Denied calls: Envoy's gRPC local reply, status from the HTTP one.
        let denied = |r: Result<tonic::Response<Msg>, tonic::Status>| match r {
            Ok(_) => (Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().to_string()),
        };
        let r = support::step("Say without a token", client.say(Msg::new("x", 0))).await?;
        assert_eq!(denied(r), (Code::PermissionDenied, BODY_403.to_string()));
        let bad = tampered_jwt();
        let r = support::step(
            "Say with a bad token",
            client.say(grpc::with_token(Msg::new("x", 0), Some(&bad))),
        )
        .await?;
        assert_eq!(denied(r), (Code::Unauthenticated, BODY_401.to_string()));
        let r = support::step("Count without a token", client.count(Msg::new("0", 3))).await?;
        let code = r.err().map(|s| s.code());
        assert_eq!(code, Some(Code::PermissionDenied));
        // A DENY on `/jwtgate.test.Echo/Admin`: that method only.
        let r = support::step("Admin", client.admin(grpc::with_token(Msg::new("x", 0), t))).await?;
        assert_eq!(denied(r), (Code::PermissionDenied, BODY_403.to_string()));
        let r = support::step(
            "Say again",
            client.say(grpc::with_token(Msg::new("y", 0), t)),
        )
        .await?;
        assert_eq!(denied(r).0, Code::Ok);
        Ok::<_, anyhow::Error>(())
    })?;
    let seen = app.seen();
    let methods: Vec<&str> = seen.iter().map(|c| c.method).collect();
    assert_eq!(
        methods,
        ["Say", "Count", "Join", "Say"],
        "only allowed calls reach the app"
    );
    for call in &seen {
        assert_eq!(call.authorization, None, "token forwarded: {call:?}");
        assert_eq!(
            call.forwarded_for.as_deref(),
            Some(bed.client.ip.to_string().as_str())
        );
        assert_eq!(
            call.peer
                .map(|p| p.ip().to_canonical().to_string())
                .as_deref(),
            Some("127.0.0.6"),
            "{call:?}"
        );
    }

    // On the wire, the denial is HTTP 200 with grpc-status / grpc-message
    // headers (trailers-only), as Envoy's gRPC local reply.
    let url = format!("http://{addr}/jwtgate.test.Echo/Say");
    let r = curl_h2(
        &bed.client.netns,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            &url,
        ],
    )?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("grpc-status"), Some("7"), "{r:?}");
    assert_eq!(r.header("grpc-message"), Some(BODY_403), "{r:?}");
    let r = curl_h2(
        &bed.client.netns,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "-H",
            &format!("authorization: Bearer {}", tampered_jwt()),
            &url,
        ],
    )?;
    assert_eq!(
        (r.status, r.header("grpc-status")),
        (200, Some("16")),
        "{r:?}"
    );
    assert_eq!(r.header("grpc-message"), Some(BODY_401), "{r:?}");
    Ok(())
}

#[test]
fn h2c_prior_knowledge_gets_the_same_answers_as_http1() -> Result<()> {
    privileged!();
    const PORT: u16 = 8081;
    let mut bed = FaqBed::build_with("proto-h2c", |p| p.all_ports())?;
    start_agent(&mut bed, &[])?;
    let rt = support::runtime();
    let _enter = rt.enter();
    // An application that speaks both (the agent forwards h2c as h2c).
    let app = H2App::start(&bed.pod.netns, PORT)?;
    let addr = bed.pod.addr(PORT);
    for row in ROWS {
        let url = format!("http://{addr}{}", row.path);
        let auth = row
            .token
            .value()
            .map(|t| format!("authorization: Bearer {t}"));
        let mut args = vec![url.as_str()];
        if let Some(a) = &auth {
            args.extend(["-H", a.as_str()]);
        }
        let h2 = curl(&bed.client.netns, "--http2-prior-knowledge", &args)?;
        let h1 = curl(&bed.client.netns, "--http1.1", &args)?;
        assert_eq!((h2.version.as_str(), h1.version.as_str()), ("2", "1.1"));
        assert_eq!(
            h2.status,
            row.status,
            "{row:?}: {h2:?}\n{}",
            bed.node.agent_log()
        );
        assert_eq!(h1.status, h2.status, "{row:?}");
        if let Some(body) = row.body {
            assert_eq!((h2.body.trim(), h1.body.trim()), (body, body), "{row:?}");
        }
        if row.status == 401 {
            assert_eq!(h2.header("www-authenticate"), h1.header("www-authenticate"));
            assert!(h2.header("www-authenticate").is_some(), "{h2:?}");
        }
    }
    // HEAD: the headers of the denial, no body.
    let url = format!("http://{addr}/api/v1/products/0");
    let r = curl(&bed.client.netns, "--http2-prior-knowledge", &["-I", &url])?;
    assert_eq!((r.status, r.body.as_str()), (403, ""), "{r:?}");
    // The app got each allowed request twice (h2 then HTTP/1.1), in the
    // protocol the client spoke, from 127.0.0.6, without the token.
    let seen = app.seen();
    let allowed = ROWS.iter().filter(|r| r.status == 200).count();
    assert_eq!(seen.len(), 2 * allowed, "{seen:?}");
    let versions: Vec<http::Version> = seen.iter().map(|s| s.version).collect();
    assert!(
        versions
            .chunks(2)
            .all(|v| v == [http::Version::HTTP_2, http::Version::HTTP_11]),
        "{versions:?}"
    );
    for s in &seen {
        assert!(s.headers.get("authorization").is_none(), "{s:?}");
        assert_eq!(s.peer.ip().to_canonical().to_string(), "127.0.0.6");
        assert_eq!(
            s.headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok()),
            Some(bed.client.ip.to_string().as_str())
        );
    }
    Ok(())
}

/// A response as curl printed it (`-i`).
#[derive(Debug)]
struct CurlResponse {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl CurlResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `curl --http2-prior-knowledge -i ARGS` from the client namespace.
fn curl_h2(netns: &Path, args: &[&str]) -> Result<CurlResponse> {
    curl(netns, "--http2-prior-knowledge", args)
}

/// `curl -i <protocol> ARGS` from the client namespace.
fn curl(netns: &Path, protocol: &str, args: &[&str]) -> Result<CurlResponse> {
    let name = netns
        .file_name()
        .and_then(|n| n.to_str())
        .context("netns name")?;
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            name,
            "curl",
            "-sS",
            "--max-time",
            "10",
            protocol,
            "-i",
        ])
        .args(args)
        .output()
        .context("running curl (package curl)")?;
    if !out.status.success() {
        bail!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts
        .next()
        .unwrap_or("")
        .trim_start_matches("HTTP/")
        .to_string();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("curl printed no status: {text:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(CurlResponse {
        version,
        status,
        headers,
        body: body.to_string(),
    })
}

/// A gRPC channel stays usable while it is idle and the client pings it
/// (keep-alive, as gRPC clients do), and a long stream is not cut while
/// other calls on the same connection come and go: the header-read timeout
/// is about request heads, not about an HTTP/2 connection between streams.
#[test]
fn h2_connection_survives_pings_and_concurrent_streams_past_the_header_timeout() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build_with("proto-h2idle", |p| {
        p.all_ports().protocol(GRPC_PORT, "grpc")
    })?;
    start_agent(&mut bed, &["--header-read-timeout-secs", "1"])?;
    let rt = support::runtime();
    let _enter = rt.enter();
    let _app = GrpcApp::start(&bed.pod.netns, GRPC_PORT)?;
    let addr = bed.pod.addr(GRPC_PORT);
    let token = demo_jwt();
    let client_ns = bed.client.netns.clone();
    rt.block_on(async {
        let stream = support::connect_in(&client_ns, addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Duration::from_millis(300))
                .keep_alive_while_idle(true)
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await?;
        let conn = tokio::spawn(conn);
        let say = |n: u32| {
            let body = grpc_frame(&Msg::new("ping", n));
            http::Request::post(format!("http://{addr}/jwtgate.test.Echo/Say"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .expect("a request")
        };
        for n in 0..3 {
            let resp = support::step(
                "a call on the pinged connection",
                sender.send_request(say(n)),
            )
            .await?
            .with_context(|| format!("call {n} after {}s idle with pings", n * 3))?;
            assert_eq!(resp.status(), 200);
            let body = http_body_util::BodyExt::collect(resp.into_body()).await?;
            let trailers = body.trailers().cloned().unwrap_or_default();
            assert_eq!(
                trailers.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..])
            );
            // Idle (but pinged) well past the header-read timeout.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        assert!(
            !conn.is_finished(),
            "the agent closed a pinged idle connection"
        );
        Ok::<_, anyhow::Error>(())
    })?;

    // A 4-second server stream while unary calls on the same channel
    // finish: every streamed message arrives.
    rt.block_on(async {
        let mut client = grpc::client(&client_ns, addr).await?;
        let t = Some(token.as_str());
        let mut long = client
            .count(grpc::with_token(Msg::new("500", 8), t))
            .await
            .context("starting the stream")?
            .into_inner();
        let mut unary = client.clone();
        let t2 = token.clone();
        let side = tokio::spawn(async move {
            for i in 0..3 {
                tokio::time::sleep(Duration::from_millis(700)).await;
                unary
                    .say(grpc::with_token(Msg::new("side", i), Some(&t2)))
                    .await?;
            }
            Ok::<_, tonic::Status>(())
        });
        let mut got = Vec::new();
        while let Some(m) = support::step("a streamed message", long.message())
            .await?
            .context("the stream broke")?
        {
            got.push(m.n);
        }
        assert_eq!(got, (1..=8).collect::<Vec<_>>());
        side.await?.context("a unary call beside the stream")?;
        Ok::<_, anyhow::Error>(())
    })
    .with_context(|| bed.node.agent_log())?;
    Ok(())
}

/// A gRPC message frame: no compression, 4-byte length, the encoded message.
fn grpc_frame(msg: &Msg) -> Vec<u8> {
    use prost::Message as _;
    let payload = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}
