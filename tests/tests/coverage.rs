//! Enforcement coverage through the real agent: every way around the
//! verifier that issue "Enforcement coverage" names, each tried as an
//! attacker would, each test named after the bypass it closes.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jwtgate_e2e::faq::{
    demo_jwt, format_table, run_rows, FaqBed, APP_LABEL, BODY_403, MESH_PORT, NAMESPACE, PLAIN_PORT,
};
use jwtgate_e2e::kube_bed::proxied;
use jwtgate_e2e::netns::ip_in;
use jwtgate_e2e::tcp_app::{connect_raw, read_some, TcpEcho};
use jwtgate_e2e::topology::Family;
use jwtgate_e2e::{privileged, AgentOptions, Request};

fn agent_with(bed: &mut FaqBed, args: &[&str]) -> Result<()> {
    bed.node
        .start_agent(&AgentOptions {
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            ..AgentOptions::default()
        })
        .map(|_| ())
}

fn assert_rows(bed: &FaqBed, addr: SocketAddr, what: &str) {
    let results = run_rows(&bed.client, addr);
    assert!(
        results.iter().all(|r| r.ok()),
        "{what} ({addr}):\n{}\n{}",
        format_table(&results),
        bed.node.agent_log()
    );
}

#[test]
fn ipv6_and_dual_stack_pods_answer_like_ipv4() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build_with("cov-dual", |p| p.family(Family::Dual))?;
    bed.start_agent()?;
    assert_rows(&bed, bed.pod.mesh_addr(), "dual-stack pod over IPv4");
    assert_rows(&bed, bed.pod.addr6(MESH_PORT), "dual-stack pod over IPv6");
    // The forward hop over IPv6 comes from ::6 on the pod's loopback.
    let r = bed
        .client
        .get(bed.pod.addr6(MESH_PORT), "/headers", Some(&demo_jwt()))?;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = bed.node.app_seen(&bed.pod);
    let last = seen.last().context("the app saw nothing")?;
    assert_eq!(last.peer.ip(), "::6".parse::<IpAddr>()?, "{last:?}");
    assert_eq!(
        last.local,
        bed.pod.addr6(MESH_PORT),
        "original destination kept"
    );
    drop(bed);

    // IPv6 only: enrolled (the agent became ready) and protected.
    let mut bed = FaqBed::build_with("cov-v6", |p| p.family(Family::V6))?;
    bed.start_agent()?;
    assert_rows(&bed, bed.pod.addr6(MESH_PORT), "IPv6-only pod");
    Ok(())
}

#[test]
fn forged_passthrough_source_from_outside_never_reaches_the_app() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build_with("cov-forged", |p| p.family(Family::Dual))?;
    bed.start_agent()?;
    // The attacker owns ::6 and the pod would even route replies to it.
    ip_in(
        &bed.client.netns,
        &["-6", "addr", "add", "::6/128", "dev", "eth0", "nodad"],
    )?;
    // The agent's ::6 on the pod's lo wins over this route anyway.
    ip_in(
        &bed.pod.netns,
        &[
            "-6",
            "route",
            "add",
            "::6/128",
            "via",
            &bed.client.ip6.to_string(),
        ],
    )?;
    let before = bed.node.app_seen(&bed.pod).len();
    for port in [MESH_PORT, PLAIN_PORT] {
        let dst = bed.pod.addr6(port);
        let src: SocketAddr = "[::6]:0".parse()?;
        let connected = jwtgate_e2e::netns::run_in(&bed.client.netns, move || {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            s.bind(&src.into())?;
            s.connect_timeout(&dst.into(), Duration::from_secs(2))
        })?;
        assert!(
            connected.is_err(),
            "a connection from a forged ::6 to {dst} was established"
        );
    }
    assert_eq!(
        bed.node.app_seen(&bed.pod).len(),
        before,
        "the app saw a forged request"
    );
    let metrics = bed.node.agent().context("agent")?.metrics()?;
    assert!(
        metric_positive(&metrics, "drop_forged_passthrough"),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn undeclared_port_is_steered_and_an_excluded_port_is_not() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build_with("cov-ports", |p| {
        p.all_ports().plain_port(9092).exclude_port(9092)
    })?;
    bed.start_agent()?;
    // 9091 is served by the app but listed nowhere: steered all the same.
    let undeclared = bed.pod.addr(PLAIN_PORT);
    let r = bed.client.get(undeclared, "/api/v1/products/0", None)?;
    assert_eq!(
        (r.status, r.text().trim()),
        (403, BODY_403),
        "{}",
        bed.node.agent_log()
    );
    let r = bed.client.get(undeclared, "/productpage", None)?;
    assert!(r.status == 200 && proxied(&r), "{} {}", r.status, r.text());
    // The excluded port reaches the app directly, as Istio's excludeInboundPorts.
    let r = bed
        .client
        .get(bed.pod.addr(9092), "/api/v1/products/0", None)?;
    assert!(r.status == 200 && !proxied(&r), "{} {}", r.status, r.text());
    Ok(())
}

/// A network-RBAC policy: ALLOW the client's address on `port` (no HTTP
/// field, so it applies to TCP too).
fn allow_client_on(port: u16, client: IpAddr) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: test-exclude, namespace: {NAMESPACE}}}\n\
         spec:\n  selector: {{matchLabels: {{app: {APP_LABEL}}}}}\n  action: ALLOW\n  rules:\n  \
         - from:\n    - source: {{ipBlocks: ['{client}/32']}}\n    to:\n    - operation: {{ports: ['{port}']}}\n"
    )
}

/// Whether the echo app answers `msg` through the verifier.
fn echoes(bed: &FaqBed, port: u16, msg: &[u8]) -> Result<bool> {
    let mut s = connect_raw(&bed.client.netns, bed.pod.addr(port))?;
    s.write_all(msg).ok();
    let (got, _) = read_some(&mut s, msg.len());
    Ok(got == msg)
}

fn eventually(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        // A refused or reset connection just means "not yet".
        if check().unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what}: not within 5 s")
}

#[test]
fn raw_tcp_is_allowed_or_denied_by_istio_network_rbac() -> Result<()> {
    privileged!();
    const ECHO: u16 = 5000;
    const GREETER: u16 = 5001;
    let mut bed = FaqBed::build_with("cov-tcp", |p| p.all_ports())?;
    agent_with(&mut bed, &["--protocol-detection-timeout-ms", "300"])?;
    let echo = TcpEcho::start(&bed.pod.netns, ECHO, None)?;
    let _greeter = TcpEcho::start(&bed.pod.netns, GREETER, Some(b"220 ready\r\n"))?;

    // The FAQ's DENY notRequestPrincipals loses its HTTP-only fields on TCP:
    // it denies every connection. The client's bytes never reach the app.
    assert!(!echoes(&bed, ECHO, b"hello\n")?, "{}", bed.node.agent_log());
    assert_eq!(echo.accepted(), 0, "the app accepted a denied connection");

    // A policy with only TCP fields allows the client on that port.
    bed.node.write_policy(
        "test-exclude.yaml",
        &allow_client_on(ECHO, IpAddr::V4(bed.client.ip)),
    )?;
    eventually("ALLOW on the echo port", || echoes(&bed, ECHO, b"hello\n"))?;
    assert!(echo.accepted() > 0);
    // ... and nowhere else: ALLOW policies exist, none matches port 5001.
    assert!(!echoes(&bed, GREETER, b"x")?);

    // Server-first on an undeclared port: the greeting arrives once the
    // detection gives up waiting (no hang), then the bytes flow.
    bed.node.write_policy(
        "test-exclude.yaml",
        &allow_client_on(GREETER, IpAddr::V4(bed.client.ip)),
    )?;
    eventually("ALLOW on the greeter port", || {
        let mut s = connect_raw(&bed.client.netns, bed.pod.addr(GREETER))?;
        let (got, _) = read_some(&mut s, 11);
        Ok(got == b"220 ready\r\n")
    })?;
    // An HTTP request sent after the detection gave up is closed, never
    // spliced: waiting out the timeout does not dodge the HTTP policies.
    let mut s = connect_raw(&bed.client.netns, bed.pod.addr(GREETER))?;
    let (greeting, _) = read_some(&mut s, 11);
    assert_eq!(greeting, b"220 ready\r\n");
    s.write_all(b"GET /api/v1/products/0 HTTP/1.1\r\nHost: x\r\nx-jwt-payload: forged\r\n\r\n")?;
    let (echoed, closed) = read_some(&mut s, 1);
    assert!(
        echoed.is_empty() && closed,
        "late HTTP was spliced: {echoed:?}"
    );
    // Half a request line before the timeout, the rest after: the part that
    // would complete it is never forwarded.
    let mut s = connect_raw(&bed.client.netns, bed.pod.addr(GREETER))?;
    s.write_all(b"GET /api/v1/products/0 HTT")?;
    let (got, _) = read_some(&mut s, 11 + 26);
    assert_eq!(
        got,
        b"220 ready\r\nGET /api/v1/products/0 HTT".to_vec(),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"P/1.1\r\nHost: x\r\n\r\n")?;
    let (echoed, closed) = read_some(&mut s, 1);
    assert!(
        echoed.is_empty() && closed,
        "the rest of the request line was spliced: {echoed:?}"
    );
    let metrics = bed.node.agent().context("agent")?.metrics()?;
    assert!(metric_positive(&metrics, "late_http_closed"), "{metrics}");
    Ok(())
}

#[test]
fn declared_tcp_port_is_spliced_without_waiting_for_the_client() -> Result<()> {
    privileged!();
    const DB: u16 = 3306;
    let mut bed = FaqBed::build_with("cov-decl", |p| p.all_ports().protocol(DB, "mysql"))?;
    // 0 = wait for ever for an undeclared port (Istio's default): only the
    // declaration can make the server-first greeting arrive.
    agent_with(&mut bed, &["--protocol-detection-timeout-ms", "0"])?;
    let _db = TcpEcho::start(&bed.pod.netns, DB, Some(b"mysql-greeting"))?;
    bed.node.write_policy(
        "test-exclude.yaml",
        &allow_client_on(DB, IpAddr::V4(bed.client.ip)),
    )?;
    eventually("greeting on the declared port", || {
        let mut s = connect_raw(&bed.client.netns, bed.pod.addr(DB))?;
        let (got, _) = read_some(&mut s, 14);
        Ok(got == b"mysql-greeting")
    })?;
    Ok(())
}

#[test]
fn declared_probe_passes_only_from_the_node_with_its_method_and_path() -> Result<()> {
    privileged!();
    const TCP_PROBE: u16 = 5000;
    let mut bed = FaqBed::build_with("cov-probe", |p| {
        p.all_ports()
            .http_probe(MESH_PORT, "/healthz")
            .tcp_probe(TCP_PROBE)
    })?;
    let kubelet = bed.node.add_client("kubelet")?;
    agent_with(&mut bed, &["--probe-sources", &kubelet.ip.to_string()])?;
    let _tcp = TcpEcho::start(&bed.pod.netns, TCP_PROBE, None)?;
    let mesh = bed.pod.mesh_addr();

    let r = kubelet.get(mesh, "/healthz", None)?;
    assert!(
        r.status == 200 && proxied(&r),
        "probe: {} {}\n{}",
        r.status,
        r.text(),
        bed.node.agent_log()
    );
    // Same source, anything else: the policies decide (DENY without token).
    let mut conn = kubelet.connect(mesh).map_err(|o| anyhow::anyhow!("{o}"))?;
    for req in [
        Request::get("/healthz").method("POST"),
        Request::get("/healthz/x"),
        Request::get("/healthz?x=1"),
        Request::get("/admin"),
    ] {
        let r = conn.send(&req)?;
        assert_eq!(r.status, 403, "{req:?}: {}", r.text());
    }
    // Same probe from another source: denied.
    let r = bed.client.get(mesh, "/healthz", None)?;
    assert_eq!(r.status, 403, "{}", r.text());
    // The TCP probe port: the kubelet's connection is spliced, another
    // source's is denied by network RBAC.
    let mut s = connect_raw(&kubelet.netns, bed.pod.addr(TCP_PROBE))?;
    s.write_all(b"ping")?;
    assert_eq!(read_some(&mut s, 4).0, b"ping");
    assert!(!echoes(&bed, TCP_PROBE, b"ping")?);
    Ok(())
}

#[test]
fn in_pod_request_to_the_verifier_listener_is_refused_at_once() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("cov-self")?;
    bed.start_agent()?;
    // The verifier's listener: a loopback port the app does not serve.
    let name = bed
        .pod
        .netns
        .file_name()
        .and_then(|n| n.to_str())
        .context("netns name")?;
    let listening = std::process::Command::new("ip")
        .args(["netns", "exec", name, "ss", "-Hltn"])
        .output()?;
    let listening = String::from_utf8_lossy(&listening.stdout).into_owned();
    let port: u16 = listening
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.strip_prefix("127.0.0.1:"))
        .filter_map(|p| p.parse().ok())
        .next()
        .with_context(|| format!("no verifier listener in {listening}"))?;
    let started = Instant::now();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // The reset can come before connect() even returns.
    if let Ok(mut s) = connect_raw(&bed.pod.netns, addr) {
        let _ = s.write_all(b"GET /api/v1/products/0 HTTP/1.1\r\nHost: x\r\n\r\n");
        let (answer, closed) = read_some(&mut s, 1);
        assert!(
            answer.is_empty() && closed,
            "answered: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let metrics = bed.node.agent().context("agent")?.metrics()?;
    assert!(metric_positive(&metrics, "refused_direct"), "{metrics}");
    // No loop: the agent still answers normally.
    assert_rows(
        &bed,
        bed.pod.mesh_addr(),
        "after the refused self-connection",
    );
    Ok(())
}

/// Some sample of a metric whose line mentions `name` is above zero.
fn metric_positive(metrics: &str, name: &str) -> bool {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(name))
        .any(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
}
