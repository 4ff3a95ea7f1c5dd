//! Enforcement coverage in Kubernetes mode, against a real kube-apiserver:
//! pod changes never open a window, the pod's namespace is the one its own
//! processes are in (not whichever claims its IP), and a malformed port
//! annotation closes rather than opens.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use jwtgate_e2e::kube_bed::{proxied, KubeBed};
use jwtgate_e2e::netns::NetNs;
use jwtgate_e2e::sandbox::Sandbox;
use jwtgate_e2e::PodSpec;

const NS: &str = "foo";
const PORT: u16 = 9080;

/// Every pod of the namespace, every request without a principal: DENY.
const DENY_ANONYMOUS: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
    metadata: {name: require-jwt, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  \
    - from:\n    - source: {notRequestPrincipals: ['*']}\n";

fn web(name: &str) -> PodSpec {
    PodSpec::new(name)
        .namespace(NS)
        .labels(&[("app", name)])
        .port(PORT)
}

fn labels(app: &str) -> Vec<(String, String)> {
    vec![("app".into(), app.into())]
}

#[test]
fn kube_relabel_loop_under_load_never_lets_an_unauthenticated_request_through() -> Result<()> {
    let Some(mut bed) = KubeBed::build("kube-relabel")? else {
        return Ok(());
    };
    let pod = bed.add_pod(web("web"))?;
    bed.api.apply(DENY_ANONYMOUS)?;
    bed.start_agent()?;
    bed.eventually(&pod, "/", None, "policy enforced", |r| r.status == 403)?;

    let stop = AtomicBool::new(false);
    let (sent, leaked) = (AtomicU32::new(0), AtomicU32::new(0));
    let mut failures: Vec<String> = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        let load = s.spawn(|| {
            let mut odd = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match bed.get(&pod, "/", None) {
                    Ok(r) if r.status == 403 => {}
                    Ok(r) => {
                        leaked.fetch_add(1, Ordering::Relaxed);
                        odd.push(format!("{} {} proxied={}", r.status, r.text(), proxied(&r)));
                    }
                    Err(e) => odd.push(format!("{e:#}")),
                }
            }
            odd
        });
        // Labels and the port annotation change back and forth: each is the
        // same pod, re-enrolled in place.
        for i in 0..16 {
            let app = if i % 2 == 0 { "web-b" } else { "web" };
            let annotations: &[(&str, &str)] = if i % 4 < 2 {
                &[("traffic.sidecar.istio.io/excludeInboundPorts", "9999")]
            } else {
                &[]
            };
            bed.apply_pod_annotated(&pod, &labels(app), annotations)?;
            std::thread::sleep(Duration::from_millis(250));
        }
        stop.store(true, Ordering::Relaxed);
        failures = load.join().expect("load thread");
        Ok(())
    })?;
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("{sent} requests during 16 pod changes");
    assert!(sent > 50, "only {sent} requests");
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "{failures:?}\n{}",
        bed.node.agent_log()
    );
    assert!(
        failures.is_empty(),
        "{failures:?}\n{}",
        bed.node.agent_log()
    );
    // The whole log: a denial per request is logged, the lines asked about
    // are far from its tail.
    let log = bed.node.agent_log_full();
    assert!(
        log.contains("in place"),
        "never re-enrolled in place:\n{}",
        bed.node.agent_log()
    );
    assert!(
        !log.contains("unenrolled"),
        "unenrolled during the loop:\n{}",
        bed.node.agent_log()
    );
    Ok(())
}

#[test]
fn kube_namespace_claiming_a_pod_ip_is_not_taken_for_the_pod() -> Result<()> {
    let Some(mut bed) = KubeBed::build("kube-impostor")? else {
        return Ok(());
    };
    // An impostor namespace claims the pod's IP before the agent starts.
    let pod = bed.add_pod(web("web"))?;
    let impostor = NetNs::create(&format!("{}-impostor", bed.node.prefix()))?;
    impostor.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    impostor.ip(&["addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"])?;
    impostor.ip(&["link", "set", "eth0", "up"])?;
    bed.api.apply(DENY_ANONYMOUS)?;
    bed.start_agent()?;
    // The real pod is steered: anonymous requests are denied.
    bed.eventually(&pod, "/", None, "the real pod is protected", |r| {
        r.status == 403
    })?;

    // Two namespaces that both hold processes of one pod and its IP: the
    // agent refuses to guess, and says so on the pod.
    let twin = bed.node.add_pod(web("twin"))?;
    bed.api.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: twin, namespace: {NS}, labels: {{app: twin}}}}\n\
         spec:\n  nodeName: {}\n  containers: [{{name: app, image: example.invalid/echo}}]\n",
        bed.node_name
    ))?;
    let uid = bed.api.pod_uid(NS, "twin")?;
    let twin_impostor = NetNs::create(&format!("{}-twin2", bed.node.prefix()))?;
    twin_impostor.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    twin_impostor.ip(&["addr", "add", &format!("{}/32", twin.ip), "dev", "eth0"])?;
    twin_impostor.ip(&["link", "set", "eth0", "up"])?;
    let _real = Sandbox::start(&twin.netns, bed.node.prefix(), &uid)?;
    let _fake = Sandbox::start(&twin_impostor.path(), bed.node.prefix(), &uid)?;
    // Only now does the pod get its IP (and become a candidate): with one
    // sandbox up and the other not yet, the agent would rightly enrol the
    // only namespace there is, and the ambiguity would never be seen.
    bed.api.set_pod_ip(NS, "twin", &twin.ip.to_string())?;
    let mut notes = Vec::new();
    let mut reported = false;
    for _ in 0..75 {
        notes = bed
            .api
            .events(NS, "twin")?
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("NotProtected"))
            .filter_map(|e| e.note)
            .collect();
        if notes.iter().any(|n| n.contains("refusing to guess")) {
            reported = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        reported,
        "no NotProtected event about the two sandboxes on twin: {notes:?}\n{}",
        bed.node.agent_log()
    );
    let metrics = bed.node.agent().context("agent")?.metrics()?;
    assert!(
        metrics.contains("jwtgate_ready 0"),
        "ready while a pod is unprotected"
    );
    Ok(())
}

#[test]
fn kube_malformed_port_annotation_steers_every_port_and_is_reported() -> Result<()> {
    let Some(mut bed) = KubeBed::build("kube-badports")? else {
        return Ok(());
    };
    let pod = bed.add_pod(web("web").plain_port(9091))?;
    bed.apply_pod_annotated(
        &pod,
        &labels("web"),
        &[("traffic.sidecar.istio.io/excludeInboundPorts", "9091,ssh")],
    )?;
    bed.api.apply(DENY_ANONYMOUS)?;
    bed.start_agent()?;
    bed.eventually(&pod, "/", None, "policy enforced", |r| r.status == 403)?;
    // 9091 was meant to be excluded, but the value is broken: steered.
    let r = bed.client.get(pod.addr(9091), "/", None)?;
    assert_eq!(r.status, 403, "{}", r.text());
    let mut found = None;
    for _ in 0..50 {
        found = bed
            .api
            .events(NS, "web")?
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("InvalidPortAnnotation"));
        if found.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let event = found.context("no InvalidPortAnnotation event on the pod")?;
    let note = event.note.unwrap_or_default();
    assert!(
        note.contains("\"ssh\"") && note.contains("every port"),
        "{note}"
    );
    Ok(())
}
