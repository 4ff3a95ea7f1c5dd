//! Kubernetes mode against a real kube-apiserver: the agent runs `--kube`
//! with the RBAC of deploy/, pods are network namespaces mirrored by Pod
//! objects on this node. Policies and pods change through the API; the
//! answers follow within seconds (usually well under one).

use anyhow::Result;
use jwtgate_e2e::faq::{demo_jwt, BODY_403};
use jwtgate_e2e::kube_bed::{proxied, KubeBed};
use jwtgate_e2e::PodSpec;

const NS: &str = "foo";
const PORT: u16 = 9080;

fn deny_path(name: &str, app: &str, path: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  action: DENY\n  rules:\n  - to:\n    - operation: {{paths: [\"{path}\"]}}\n"
    )
}

fn web(name: &str) -> PodSpec {
    PodSpec::new(name)
        .namespace(NS)
        .labels(&[("app", name)])
        .port(PORT)
}

#[test]
fn kube_policy_created_changed_deleted() -> Result<()> {
    let Some(mut bed) = KubeBed::build("kube-policy")? else {
        return Ok(());
    };
    let pod = bed.add_pod(web("web"))?;
    bed.start_agent()?;

    // No policy selects the pod: it is not steered at all.
    let r = bed.get(&pod, "/admin", None)?;
    assert_eq!(r.status, 200);
    assert!(!proxied(&r), "an unselected pod must not be steered");

    // Created → enforced.
    bed.api.apply(&deny_path("no-admin", "web", "/admin"))?;
    let took = bed.eventually(&pod, "/admin", None, "policy created", |r| {
        r.status == 403 && r.text() == BODY_403
    })?;
    eprintln!("policy created → enforced in {took:?}");
    let r = bed.get(&pod, "/", None)?;
    assert_eq!(r.status, 200);
    assert!(proxied(&r), "selected pod goes through the verifier");

    // Changed → new answer.
    bed.api.apply(&deny_path("no-admin", "web", "/other"))?;
    let took = bed.eventually(&pod, "/admin", None, "policy changed", |r| r.status == 200)?;
    eprintln!("policy changed → new answer in {took:?}");
    assert_eq!(bed.get(&pod, "/other", None)?.status, 403);

    // JWT through the same engine: the FAQ's RequestAuthentication with an
    // inline JWKS and "require a token" on everything.
    let jwks = std::fs::read_to_string(jwtgate_e2e::testdata("istio-samples/jwks.json"))?;
    bed.api.apply(&format!(
        "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  jwtRules:\n  - issuer: testing@secure.istio.io\n    jwks: {}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: need-jwt, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  action: DENY\n  rules:\n  - from:\n    - source: {{notRequestPrincipals: [\"*\"]}}\n",
        serde_json::Value::String(jwks)
    ))?;
    bed.eventually(&pod, "/x", None, "token required", |r| r.status == 403)?;
    let token = demo_jwt();
    assert_eq!(bed.get(&pod, "/x", Some(&token))?.status, 200);
    assert_eq!(bed.get(&pod, "/x", Some("a.b.c"))?.status, 401);

    // A policy that cannot be enforced as written is reported as an Event.
    bed.api.apply(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ext-authz, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  action: CUSTOM\n  provider: {{name: ext}}\n  rules:\n  - to:\n    - operation: {{paths: [\"/ext\"]}}\n"
    ))?;
    let start = std::time::Instant::now();
    let notes = loop {
        let notes = bed.api.event_notes(NS, "ext-authz")?;
        if !notes.is_empty() || start.elapsed() > jwtgate_e2e::kube_bed::CHANGE_TIMEOUT {
            break notes;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        notes.iter().any(|n| n.contains("CUSTOM")),
        "no Event naming CUSTOM for ext-authz: {notes:?}\n{}",
        bed.node.agent_log()
    );

    // Deleted → back to open: nothing selects the pod, steering is gone.
    for name in ["no-admin", "need-jwt", "ext-authz"] {
        bed.api
            .delete("security.istio.io/v1", "AuthorizationPolicy", NS, name)?;
    }
    bed.api
        .delete("security.istio.io/v1", "RequestAuthentication", NS, "jwt")?;
    bed.eventually(&pod, "/other", None, "policies deleted", |r| {
        r.status == 200 && !proxied(r)
    })?;
    Ok(())
}

/// What folder mode does, with the real agent on the wire (the whole table
/// is `source_parity.rs`): a dry-run policy is not enforced, and an update
/// that Istio would refuse leaves the last good version in force — it used
/// to drop the policy in this mode.
#[test]
fn kube_dry_run_and_a_broken_update_behave_as_in_folder_mode() -> Result<()> {
    let Some(mut bed) = KubeBed::build("kube-lastgood")? else {
        return Ok(());
    };
    let pod = bed.add_pod(web("web"))?;
    let dry_run = |value: &str| {
        deny_path("dry", "web", "/admin").replace(
            &format!("namespace: {NS}}}"),
            &format!("namespace: {NS}, annotations: {{istio.io/dry-run: '{value}'}}}}"),
        )
    };
    bed.api.apply(&dry_run("true"))?;
    bed.api.apply(&deny_path("no-other", "web", "/other"))?;
    // Ready = the first full sync is in force.
    bed.start_agent()?;
    assert_eq!(bed.get(&pod, "/other", None)?.status, 403);
    let r = bed.get(&pod, "/admin", None)?;
    assert_eq!(r.status, 200, "a dry-run DENY must not be enforced");
    assert!(proxied(&r), "the pod is steered (no-other selects it)");

    // A CIDR Istio refuses: this version is reported and ignored.
    let broken = deny_path("no-other", "web", "/else").replace(
        "  - to:\n",
        "  - from: [{source: {ipBlocks: ['10.0.0.0/33']}}]\n    to:\n",
    );
    bed.api.apply(&broken)?;
    let start = std::time::Instant::now();
    let notes = loop {
        let notes = bed.api.event_notes(NS, "no-other")?;
        if notes
            .iter()
            .any(|n| n.contains("last good version stays in force"))
            || start.elapsed() > jwtgate_e2e::kube_bed::CHANGE_TIMEOUT
        {
            break notes;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        notes
            .iter()
            .any(|n| n.contains("ipBlocks") && n.contains("last good version stays in force")),
        "no InvalidPolicy Event keeping the last good version: {notes:?}\n{}",
        bed.node.agent_log()
    );
    assert_eq!(
        bed.get(&pod, "/other", None)?.status,
        403,
        "last good version"
    );
    assert_eq!(bed.get(&pod, "/else", None)?.status, 200);

    // Dry-run switched off: enforced. A valid update replaces the kept one.
    bed.api.apply(&dry_run("false"))?;
    bed.eventually(&pod, "/admin", None, "dry-run off", |r| r.status == 403)?;
    bed.api.apply(&deny_path("no-other", "web", "/else"))?;
    bed.eventually(&pod, "/other", None, "fixed update", |r| r.status == 200)?;
    assert_eq!(bed.get(&pod, "/else", None)?.status, 403);
    Ok(())
}

#[test]
fn kube_unfetchable_jwks_uri_is_reported_as_an_event() -> Result<()> {
    let Some(mut bed) = KubeBed::build("kube-jwks-event")? else {
        return Ok(());
    };
    let pod = bed.add_pod(web("web"))?;
    // A loopback port nobody listens on: every fetch is refused.
    let uri = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://127.0.0.1:{}/jwks", l.local_addr()?.port())
    };
    bed.api.apply(&format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: bad-jwks, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  jwtRules:\n  - issuer: testing@secure.istio.io\n    jwksUri: {uri}\n"
    ))?;
    bed.start_agent()?;

    // Enforced as Istio does without keys: tokens of that issuer get 401,
    // requests without one pass.
    let r = bed.get(&pod, "/", Some(&demo_jwt()))?;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(bed.get(&pod, "/", None)?.status, 200);

    let jwks_events = |bed: &KubeBed| -> Result<Vec<_>> {
        Ok(bed
            .api
            .events(NS, "bad-jwks")?
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("JwksFetchFailed"))
            .collect())
    };
    let start = std::time::Instant::now();
    let events = loop {
        let events = jwks_events(&bed)?;
        if !events.is_empty() || start.elapsed() > jwtgate_e2e::kube_bed::CHANGE_TIMEOUT {
            break events;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let note = events
        .first()
        .and_then(|e| e.note.clone())
        .unwrap_or_default();
    assert!(
        note.contains(&uri) && note.contains("refused") && note.contains("no key set"),
        "no JwksFetchFailed Event naming {uri} for bad-jwks: {:?}\n{}",
        bed.api.event_notes(NS, "bad-jwks")?,
        bed.node.agent_log()
    );
    eprintln!("JwksFetchFailed after {:?}: {note}", start.elapsed());

    // The fetch loop keeps retrying (1 s, 2 s, 4 s, …); the Event is not
    // repeated (a repeat would show as a series on the one Event).
    std::thread::sleep(std::time::Duration::from_secs(4));
    let events = jwks_events(&bed)?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].series.is_none(),
        "Event repeated: {:?}",
        events[0]
    );
    assert!(
        bed.node.agent_log().matches("JWKS fetch failed").count() >= 2,
        "the agent did not retry\n{}",
        bed.node.agent_log()
    );
    Ok(())
}

#[test]
fn kube_pod_deleted_or_relabelled_leaves_nothing_behind() -> Result<()> {
    let Some(mut bed) = KubeBed::build("kube-pod")? else {
        return Ok(());
    };
    let a = bed.add_pod(web("web"))?;
    let b = bed.add_pod(web("other"))?;
    bed.api.apply(&deny_path("no-admin-web", "web", "/admin"))?;
    bed.api
        .apply(&deny_path("no-admin-other", "other", "/admin"))?;
    bed.start_agent()?;
    assert_eq!(bed.get(&a, "/admin", None)?.status, 403);
    assert_eq!(bed.get(&b, "/admin", None)?.status, 403);
    let links = bed.node.pin_root().join("links");
    assert_eq!(
        std::fs::read_dir(&links)?.count(),
        2,
        "one pin dir per enrolled pod"
    );

    // Relabelled out of its policy's selector → unsteered.
    bed.apply_pod(&b, &[("app".into(), "unselected".into())])?;
    bed.eventually(&b, "/admin", None, "pod relabelled", |r| {
        r.status == 200 && !proxied(r)
    })?;

    // Deleted → steering gone (the netns still exists here, so a request
    // reaches the app directly), and its pins and metrics with it.
    bed.delete_pod(&a)?;
    bed.eventually(&a, "/admin", None, "pod deleted", |r| {
        r.status == 200 && !proxied(r)
    })?;
    let left: Vec<_> = std::fs::read_dir(&links)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "pins left behind: {left:?}");
    let metrics = bed.node.agent().expect("agent running").metrics()?;
    assert!(!metrics.contains("workload=\"foo/web\""), "{metrics}");
    Ok(())
}

#[test]
fn kube_apiserver_restart_keeps_enforcement() -> Result<()> {
    let Some(mut bed) = KubeBed::build("kube-restart")? else {
        return Ok(());
    };
    let pod = bed.add_pod(web("web"))?;
    bed.api.apply(&deny_path("no-admin", "web", "/admin"))?;
    bed.start_agent()?;
    assert_eq!(bed.get(&pod, "/admin", None)?.status, 403);

    // API server gone: the last good state stays enforced, the agent stays
    // up and ready (liveness never depends on the API server).
    bed.api.stop_apiserver()?;
    for _ in 0..10 {
        assert_eq!(bed.get(&pod, "/admin", None)?.status, 403);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let agent = bed.node.agent().expect("agent running");
    assert!(agent.metrics()?.contains("jwtgate_ready 1"));

    // Back: the watchers resume (backoff ≤ 30 s, relist on 410) and follow
    // changes again.
    bed.api.start_apiserver()?;
    assert_eq!(bed.get(&pod, "/admin", None)?.status, 403);
    bed.api.apply(&deny_path("no-admin", "web", "/other"))?;
    let start = std::time::Instant::now();
    loop {
        if bed.get(&pod, "/admin", None)?.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(45),
            "agent did not follow changes after the API server came back\n{}",
            bed.node.agent_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!("recovered after the restart in {:?}", start.elapsed());
    assert_eq!(bed.get(&pod, "/other", None)?.status, 403);
    Ok(())
}

#[test]
fn kube_agent_identity_is_least_privilege() -> Result<()> {
    let Some(bed) = KubeBed::build("kube-rbac")? else {
        return Ok(());
    };
    // The kubeconfig the agent runs with can do what the watchers need, and
    // nothing an admin could.
    let allowed = bed.api.as_agent(|client| async move {
        use k8s_openapi::api::core::v1::{Pod, Secret};
        use kube::api::{ListParams, PostParams};
        use kube::Api;
        let pods: Api<Pod> = Api::all(client.clone());
        let list = pods.list(&ListParams::default().fields("spec.nodeName=n")).await.is_ok();
        let secrets: Api<Secret> = Api::all(client.clone());
        let secrets_denied = matches!(secrets.list(&ListParams::default()).await,
            Err(kube::Error::Api(s)) if s.code == 403);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}}))
        .expect("pod");
        let create_denied = matches!(Api::<Pod>::namespaced(client, "default").create(&PostParams::default(), &pod).await,
            Err(kube::Error::Api(s)) if s.code == 403);
        (list, secrets_denied, create_denied)
    })?;
    assert_eq!(
        allowed,
        (true, true, true),
        "(list pods, secrets denied, pod create denied)"
    );
    Ok(())
}
