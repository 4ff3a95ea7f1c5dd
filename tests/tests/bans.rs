//! The automatic ban policy through the real agent (docs/bans.md): a source
//! that keeps sending forged tokens is dropped in XDP only towards the
//! workload it attacked, node-wide once it attacked several; a shared
//! source (an exempt CIDR, one of the node's own addresses) is never
//! banned however many failures it carries.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jwtgate_e2e::faq::{tampered_jwt, FaqBed, APP_LABEL, BODY_401, MESH_PORT, NAMESPACE};
use jwtgate_e2e::{privileged, AgentOptions, Client, Outcome, PodHandle, PodSpec};

const BAN_AFTER: u32 = 5;

fn ban_flags(source_wide_after: u32, more: &[&str]) -> AgentOptions {
    let mut extra_args: Vec<String> = [
        "--ban-after",
        &BAN_AFTER.to_string(),
        "--ban-window-secs",
        "60",
        "--ban-ttl-secs",
        "120",
        "--ban-source-wide-after",
        &source_wide_after.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    extra_args.extend(more.iter().map(|s| s.to_string()));
    AgentOptions {
        extra_args,
        ..AgentOptions::default()
    }
}

/// Another pod the FAQ policies select (same label), enrolled and guarded.
fn sibling(bed: &mut FaqBed, name: &str) -> Result<PodHandle> {
    bed.node.add_pod(
        PodSpec::new(name)
            .namespace(NAMESPACE)
            .labels(&[("app", APP_LABEL)])
            .port(MESH_PORT),
    )
}

/// `n` requests with a forged token, each on its own connection; every one
/// must be answered 401 (the ban applies to later connections).
fn forge(client: &Client, pod: &PodHandle, n: u32) -> Result<()> {
    let token = tampered_jwt();
    for i in 0..n {
        let r = client
            .get(pod.mesh_addr(), "/productpage", Some(&token))
            .with_context(|| format!("forged request {i} from {} to {}", client.name, pod.ip))?;
        if r.status != 401 || r.text().trim() != BODY_401 {
            bail!("forged request {i}: {} {}", r.status, r.text());
        }
    }
    Ok(())
}

/// Poll (bounded) until `client` → `pod` is dropped: a connect that gets no
/// answer at all (XDP), not a refusal.
fn wait_dropped(bed: &FaqBed, client: &Client, pod: &PodHandle) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.probe(pod.mesh_addr()) {
            Outcome::TimedOut => return Ok(()),
            other if Instant::now() > deadline => bail!(
                "{} → {} still {other} 10 s after the failures\n{}",
                client.name,
                pod.ip,
                bed.node.agent_log()
            ),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn served(client: &Client, pod: &PodHandle) -> Result<()> {
    let r = client
        .get(pod.mesh_addr(), "/productpage", None)
        .with_context(|| format!("{} → {}", client.name, pod.ip))?;
    if r.status != 200 {
        bail!("{} → {}: {} {}", client.name, pod.ip, r.status, r.text());
    }
    Ok(())
}

fn metric(bed: &FaqBed, line_start: &str) -> Result<u64> {
    let text = bed.node.agent().context("agent running")?.metrics()?;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .with_context(|| format!("no {line_start} in /metrics:\n{text}"))
}

#[test]
fn ban_is_scoped_to_the_attacked_workload_then_node_wide() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("ban-scope")?;
    let second = sibling(&mut bed, "productpage-2")?;
    let third = sibling(&mut bed, "productpage-3")?;
    let bystander = bed.node.add_client("bystander")?;
    bed.node.start_agent(&ban_flags(2, &[]))?;
    let (attacker, first) = (bed.client.clone(), bed.pod.clone());

    forge(&attacker, &first, BAN_AFTER)?;
    wait_dropped(&bed, &attacker, &first)?;
    // Scoped: the attacker still reaches the other workloads, and others
    // still reach the attacked one.
    served(&attacker, &second)?;
    served(&attacker, &third)?;
    served(&bystander, &first)?;
    assert_eq!(metric(&bed, "jwtgate_bans_total{scope=\"workload\"}")?, 1);
    assert!(metric(&bed, "jwtgate_ebpf_events_total{event=\"drop_pair\"}")? > 0);

    // A second attacked workload (--ban-source-wide-after 2): node-wide.
    forge(&attacker, &second, BAN_AFTER)?;
    wait_dropped(&bed, &attacker, &third)?;
    assert_eq!(attacker.probe(second.mesh_addr()), Outcome::TimedOut);
    assert_eq!(metric(&bed, "jwtgate_bans_total{scope=\"source\"}")?, 1);
    for pod in [&first, &second, &third] {
        served(&bystander, pod)?;
    }

    // The operator lifts every ban of the source at once.
    let pin_root = bed.node.pin_root().to_string_lossy().into_owned();
    let source = attacker.ip.to_string();
    bed.node
        .jwtgate(&["allow-source", "--pin-root", &pin_root, "--source", &source])?;
    for pod in [&first, &second, &third] {
        served(&attacker, pod)?;
    }
    Ok(())
}

/// An interface in the agent's (host) network namespace carrying one
/// address, so that address is one of "the node's own"; removed on drop.
/// A veth pair left down: it only has to be listed, not to route (and the
/// `dummy` driver is not in every kernel).
struct NodeAddress {
    link: String,
}

impl NodeAddress {
    fn add(ip: std::net::Ipv4Addr) -> Result<NodeAddress> {
        let link = format!("jgd{}", std::process::id() % 1_000_000);
        let ip_cmd = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip").args(args).output()?;
            if !out.status.success() {
                bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let peer = format!("{link}p");
        ip_cmd(&["link", "add", &link, "type", "veth", "peer", "name", &peer])?;
        let node = NodeAddress { link };
        ip_cmd(&["addr", "add", &format!("{ip}/32"), "dev", &node.link])?;
        Ok(node)
    }
}

impl Drop for NodeAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .status();
    }
}

#[test]
fn exempt_and_node_sources_are_never_banned() -> Result<()> {
    privileged!();
    let mut bed = FaqBed::build("ban-exempt")?;
    let gateway = bed.node.add_client("gateway")?;
    let snat = bed.node.add_client("snat")?;
    // The SNAT client's address is also one of the node's own.
    let _node_address = NodeAddress::add(snat.ip)?;
    let exempt = format!("{}/32", gateway.ip);
    // Every ban node-wide at once: the harshest setting.
    bed.node
        .start_agent(&ban_flags(1, &["--ban-exempt", &exempt]))?;
    let pod = bed.pod.clone();

    for shared in [&gateway, &snat] {
        forge(shared, &pod, 4 * BAN_AFTER)?;
        served(shared, &pod)?;
    }
    // The same failures from an ordinary source do get it banned.
    forge(&bed.client, &pod, BAN_AFTER)?;
    wait_dropped(&bed, &bed.client, &pod)?;
    for shared in [&gateway, &snat] {
        served(shared, &pod)?;
    }
    assert_eq!(
        metric(&bed, "jwtgate_ban_exempt_failures_total")?,
        u64::from(8 * BAN_AFTER)
    );
    assert_eq!(metric(&bed, "jwtgate_bans_total{scope=\"source\"}")?, 1);
    Ok(())
}
