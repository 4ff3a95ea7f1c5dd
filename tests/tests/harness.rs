//! Self-tests of the test bed, without the agent: if these fail, the end-to-end
//! failures elsewhere say nothing about jwtgate.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use jwtgate_e2e::http::Request;
use jwtgate_e2e::{netns, privileged, PodSpec, TestNode};

#[test]
fn client_reaches_the_echo_app_directly_with_keep_alive() -> Result<()> {
    privileged!();
    let mut node = TestNode::new("harness-app")?;
    let pod = node.add_pod(PodSpec::new("productpage").port(9080).plain_port(9091))?;
    let client = node.add_client("client")?;

    for port in [9080, 9091] {
        let r = client.get(pod.addr(port), "/productpage", None)?;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("x-echo-peer")
                .map(|p| p.split(':').next().unwrap().to_string()),
            Some(client.ip.to_string())
        );
        assert_eq!(r.json()?["app"], "productpage");
    }

    // Several requests on one connection, as the keep-alive scenarios need.
    let mut conn = client
        .connect(pod.addr(9080))
        .map_err(|o| anyhow::anyhow!("{o}"))?;
    let local = conn.local_addr()?;
    for path in ["/api/v1/products/0", "/api/v1/products/1", "/anything/else"] {
        let r = conn.get(path, None)?;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()?["path"], path);
        assert_eq!(
            r.header("x-echo-peer"),
            Some(local.to_string().as_str()),
            "same connection"
        );
    }

    // /headers reports what it received, like httpbin.
    let r = conn.send(
        &Request::get("/headers")
            .bearer(Some("abc"))
            .header("x-test", "1"),
    )?;
    let h = &r.json()?["headers"];
    assert_eq!(h["Authorization"], "Bearer abc");
    assert_eq!(h["X-Test"], "1");

    let seen = node.app_seen(&pod);
    assert_eq!(seen.len(), 6);
    assert!(seen
        .iter()
        .all(|s| s.peer.ip() == std::net::IpAddr::V4(client.ip)));
    Ok(())
}

#[test]
fn pods_share_the_node_bridge() -> Result<()> {
    privileged!();
    let mut node = TestNode::new("harness-bridge")?;
    let a = node.add_pod(PodSpec::new("a").port(8000))?;
    let b = node.add_pod(PodSpec::new("b").port(8000))?;
    let client = node.add_client("client")?;
    assert_ne!(a.ip, b.ip);
    for pod in [&a, &b] {
        let r = client.get(pod.addr(8000), "/", None)?;
        assert_eq!(r.json()?["app"], pod.spec.name.as_str());
    }
    // A port nobody listens on answers RST at once.
    assert_eq!(client.probe(a.addr(8001)), jwtgate_e2e::Outcome::Refused);
    Ok(())
}

#[test]
fn nginx_serves_the_sample_jwks() -> Result<()> {
    privileged!();
    let mut node = TestNode::new("harness-nginx")?;
    let uri = node.start_jwks_server()?;
    ensure!(
        uri.starts_with("http://127.0.0.1:") && uri.ends_with("/get_jwks"),
        "{uri}"
    );
    let addr = node.jwks_server().context("nginx")?.addr();
    let r = jwtgate_e2e::http::get_in(None, addr, "/get_jwks", None)?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let jwks = r.json()?;
    assert_eq!(
        jwks["keys"][0]["kid"],
        "DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ"
    );
    let r = jwtgate_e2e::http::get_in(None, addr, "/other", None)?;
    assert_eq!(r.status, 404);
    Ok(())
}

#[test]
fn teardown_removes_namespaces_and_bpffs() -> Result<()> {
    privileged!();
    let mut node = TestNode::new("harness-drop")?;
    node.add_pod(PodSpec::new("p").port(8000))?;
    node.add_client("c")?;
    let prefix = node.prefix().to_string();
    let dir = node.dir().to_path_buf();
    let pin_root = node.pin_root().to_path_buf();
    // Stand in for the agent, which mounts its own bpffs at the pin root.
    nix::mount::mount(
        Some("bpf"),
        &pin_root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    assert_eq!(
        jwtgate_e2e::topology::mounts_under(&pin_root),
        vec![pin_root.clone()]
    );
    assert_eq!(
        netns::list()
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .count(),
        3
    );

    drop(node);
    assert!(
        netns::list().iter().all(|n| !n.starts_with(&prefix)),
        "{:?}",
        netns::list()
    );
    assert!(jwtgate_e2e::topology::mounts_under(&pin_root).is_empty());
    assert!(!Path::new(&dir).exists(), "temp dir removed");
    Ok(())
}

#[test]
fn cleanup_leftovers_removes_stray_jg_namespaces() -> Result<()> {
    privileged!();
    // Named after a process that has exited, as if it had been killed.
    let mut gone = std::process::Command::new("true").spawn()?;
    gone.wait()?;
    let name = format!("jg-leftover-{}", gone.id());
    let ns = netns::NetNs::create(&name)?;
    std::mem::forget(ns);
    // One of a process that still runs (this one) belongs to a live test.
    let live = netns::NetNs::create(&format!("jg-live-{}", std::process::id()))?;
    let removed = jwtgate_e2e::cleanup_leftovers()?;
    assert!(removed.contains(&format!("netns {name}")), "{removed:?}");
    assert!(!netns::list().contains(&name));
    assert!(
        netns::list().contains(&live.name().to_string()),
        "a live test's namespace was removed"
    );
    Ok(())
}
