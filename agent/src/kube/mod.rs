//! Kubernetes mode (`jwtgate agent --kube`) as an input source: reflectors
//! on RequestAuthentication and AuthorizationPolicy (`security.istio.io`, v1
//! or v1beta1), this node's Pods (`spec.nodeName` field selector) and
//! Namespaces, converted into the same inputs local mode produces
//! (`enroll::Inputs`): one `PolicySet`, one workload snapshot. No sockets,
//! netns or eBPF here.
//!
//! Nothing is published before every watcher completed its first list, so
//! readiness means "first full sync"; afterwards each change is published
//! within [`DEBOUNCE`]. While the API server is unreachable the stores, and
//! so the published state, keep their last contents.

pub mod cni;
mod crds;
mod events;
pub mod pods;
pub mod policies;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use tokio::sync::{mpsc, watch as chan, Notify};
use tracing::{debug, info};

use crate::cli::AgentArgs;
use crate::enroll::{Inputs, WorkloadSpec};
use crate::policy::{InForce, PolicyDocument, PolicySet};
use crate::sources::jwks::FetchOutcome;
use crds::PolicyKind;
use events::{PodWarning, PolicyEvents, BAD_PORT_ANNOTATION, NOT_PROTECTED};
use watch::Watched;

/// Changes arriving within this window are applied together.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Connect (lazily: an unreachable API server is retried by the watchers)
/// and start the watchers and the sync task.
pub async fn start(args: &AgentArgs, shutdown: chan::Receiver<bool>) -> anyhow::Result<Inputs> {
    let node = args
        .node_name
        .clone()
        .context("--kube needs --node-name (or NODE_NAME)")?;
    // rustls needs one process-wide provider; ours is aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => Config::infer()
            .await
            .context("no in-cluster config and no kubeconfig")?,
    };
    info!(cluster = %config.cluster_url, node = %node, "Kubernetes mode");
    let client = Client::try_from(config).context("cannot build the Kubernetes client")?;

    let changed = Arc::new(Notify::new());
    let sources = Sources {
        request_authns: PolicyKind::spawn(
            client.clone(),
            "RequestAuthentication",
            changed.clone(),
            shutdown.clone(),
        ),
        authz_policies: PolicyKind::spawn(
            client.clone(),
            "AuthorizationPolicy",
            changed.clone(),
            shutdown.clone(),
        ),
        pods: watch::spawn(
            format!("pods on {node}"),
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            (),
            changed.clone(),
            shutdown.clone(),
        ),
        namespaces: watch::spawn(
            "namespaces".into(),
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            (),
            changed.clone(),
            shutdown.clone(),
        ),
        sandboxes: cni::Sandboxes::default(),
    };
    let (policies_tx, policies_rx) = chan::channel(Arc::new(PolicySet::default()));
    let (enrolled_tx, enrolled_rx) = chan::channel(BTreeMap::new());
    let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(path) = &args.cni.socket {
        let server = cni::CniServer {
            sandboxes: sources.sandboxes.clone(),
            changed: changed.clone(),
            pods: sources.pods.store.clone(),
            namespaces: sources.namespaces.store.clone(),
            policies: policies_rx.clone(),
            root_namespace: args.root_namespace.clone(),
            enrolled: enrolled_rx,
            synced: synced.clone(),
        };
        tokio::spawn(server.serve(path.clone(), shutdown.clone()));
    }
    let (workloads_tx, workloads_rx) = chan::channel(None);
    let (jwks_tx, jwks_rx) = mpsc::unbounded_channel();
    let (enrolment_tx, enrolment_rx) = mpsc::unbounded_channel();
    let events = PolicyEvents::new(client, &node);
    tokio::spawn(sync(
        sources,
        changed,
        Outputs {
            policies: policies_tx,
            workloads: workloads_tx,
            synced,
        },
        events,
        Reports {
            jwks: jwks_rx,
            enrolment: enrolment_rx,
        },
        shutdown,
    ));
    Ok(Inputs {
        policies: policies_rx,
        workloads: workloads_rx,
        jwks_outcomes: Some(jwks_tx),
        enrolment_failures: Some(enrolment_tx),
        enrolled: Some(enrolled_tx),
    })
}

/// Whether DaemonSet `namespace/name` is gone or being deleted.
pub async fn daemonset_removed(
    daemonset: &str,
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<bool> {
    let (namespace, name) = daemonset
        .split_once('/')
        .context("expected namespace/name")?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    };
    let client = Client::try_from(config)?;
    let api: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(client, namespace);
    let ds = tokio::time::timeout(Duration::from_secs(5), api.get_opt(name))
        .await
        .context("the API server did not answer in 5 s")??;
    Ok(ds.is_none_or(|ds| ds.metadata.deletion_timestamp.is_some()))
}

/// The four watched collections, and the sandboxes the CNI plugin
/// registered.
struct Sources {
    request_authns: PolicyKind,
    authz_policies: PolicyKind,
    pods: Watched<Pod>,
    namespaces: Watched<Namespace>,
    sandboxes: cni::Sandboxes,
}

impl Sources {
    fn synced(&self) -> bool {
        self.request_authns.is_synced()
            && self.authz_policies.is_synced()
            && self.pods.is_synced()
            && self.namespaces.is_synced()
    }

    /// The candidate pods, and a warning for each whose port annotation
    /// did not parse.
    fn workloads(&self) -> (Vec<WorkloadSpec>, Vec<PodWarning>) {
        let opted_out: std::collections::HashSet<String> = self
            .namespaces
            .store
            .state()
            .iter()
            .filter(|ns| pods::namespace_opted_out(ns))
            .filter_map(|ns| ns.metadata.name.clone())
            .collect();
        let mut out: Vec<WorkloadSpec> = Vec::new();
        let mut warnings = Vec::new();
        for pod in self.pods.store.state() {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let sandbox = pod
                .metadata
                .uid
                .as_deref()
                .and_then(|uid| self.sandboxes.get(uid));
            match pods::workload(&pod, opted_out.contains(&ns), sandbox.as_ref()) {
                Ok(candidate) => {
                    if let Some(bad) = candidate.bad_annotation {
                        warnings.push(PodWarning {
                            pod: pod_reference(&pod),
                            message: bad.to_string(),
                        });
                    }
                    out.push(candidate.spec);
                }
                Err(why) => {
                    debug!(pod = ?pod.metadata.name, namespace = %ns, ?why, "pod not a candidate")
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        (out, warnings)
    }

    /// `NotProtected` warnings for the pods the engine could not enrol
    /// (`namespace/name` → error).
    fn enrolment_warnings(&self, failures: &BTreeMap<String, String>) -> Vec<PodWarning> {
        self.pods
            .store
            .state()
            .iter()
            .filter_map(|pod| {
                let key = format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.name.as_deref().unwrap_or_default()
                );
                let error = failures.get(&key)?;
                Some(PodWarning {
                    pod: pod_reference(pod),
                    message: format!(
                        "a policy selects this pod but it cannot be enrolled, so its traffic is not verified: {error}"
                    ),
                })
            })
            .collect()
    }
}

fn pod_reference(pod: &Pod) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Where the sync task publishes.
struct Outputs {
    policies: chan::Sender<Arc<PolicySet>>,
    workloads: chan::Sender<Option<Vec<WorkloadSpec>>>,
    /// Set once the first full view went out (the CNI socket waits for it).
    synced: Arc<std::sync::atomic::AtomicBool>,
}

/// What the engine reports back, for Events.
struct Reports {
    jwks: mpsc::UnboundedReceiver<FetchOutcome>,
    enrolment: mpsc::UnboundedReceiver<BTreeMap<String, String>>,
}

/// Rebuild and publish the inputs after changes; unchanged inputs are not
/// re-published. JWKS fetch results become Events on the
/// RequestAuthentications that name the URI; malformed port annotations and
/// failed enrolments become Events on the pods.
async fn sync(
    sources: Sources,
    changed: Arc<Notify>,
    out: Outputs,
    mut events: PolicyEvents,
    mut reports: Reports,
    mut shutdown: chan::Receiver<bool>,
) {
    let mut last_docs: Option<Vec<PolicyDocument>> = None;
    // The last-good-version rule, shared with the folder source.
    let mut in_force = InForce::default();
    let mut last_workloads: Option<Vec<WorkloadSpec>> = None;
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            Some(outcome) = reports.jwks.recv() => {
                events.jwks_outcome(outcome);
                continue;
            }
            Some(failures) = reports.enrolment.recv() => {
                let warnings = sources.enrolment_warnings(&failures);
                events.pod_warnings(NOT_PROTECTED, &warnings);
                continue;
            }
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(DEBOUNCE).await;
        if !sources.synced() {
            continue;
        }
        let mut objects = sources.request_authns.objects();
        objects.extend(sources.authz_policies.objects());
        let docs = policies::documents(&objects);
        if last_docs.as_ref() != Some(&docs) {
            let (set, problems) = policies::parse(&mut in_force, &objects, &docs);
            events.report(&problems);
            // Before the set goes out: the fetch loop only learns of a URI
            // from it, so its results never precede their users.
            events.jwks_users(policies::jwks_users(&set, &objects));
            let (ras, aps) = set.counts();
            info!(
                request_authentications = ras,
                authorization_policies = aps,
                "policies from the API server"
            );
            let _ = out.policies.send(Arc::new(set));
            last_docs = Some(docs);
        }
        // Sandboxes of pods that are gone (their DEL never came) go too.
        let live: std::collections::HashSet<String> = sources
            .pods
            .store
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        sources.sandboxes.retain(|uid| live.contains(uid));
        let (workloads, warnings) = sources.workloads();
        events.pod_warnings(BAD_PORT_ANNOTATION, &warnings);
        if last_workloads.as_ref() != Some(&workloads) {
            info!(candidates = workloads.len(), "pods on this node");
            let _ = out.workloads.send(Some(workloads.clone()));
            last_workloads = Some(workloads);
        }
        out.synced.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
