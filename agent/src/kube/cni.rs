//! The agent's side of the CNI plugin's socket (`cni::plugin` is the
//! other): at CNI ADD the runtime's namespace for the pod comes in; it is
//! registered as the pod's sandbox (so the pod's workload names that very
//! namespace, and may be enrolled before the API server has even seen the
//! pod's IP), and the reply waits until the engine has enrolled the pod — or
//! says at once that no policy selects it. A selected pod the agent cannot
//! enrol in time gets an error, and the runtime retries the sandbox later
//! instead of starting it unprotected.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector::Store;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::pods;
use crate::cni::protocol::{Reply, Request};
use crate::policy::{PolicySet, WorkloadRef};

/// How long the reply may wait for the pod to show in the pod watch.
const POD_WAIT: Duration = Duration::from_secs(10);
/// How long it may wait for the engine to enrol the pod.
const ENROL_WAIT: Duration = Duration::from_secs(20);

/// A pod's namespace as the runtime handed it over at CNI ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
}

/// Sandboxes by pod UID, shared with the sync task that builds workloads.
#[derive(Debug, Clone, Default)]
pub struct Sandboxes(Arc<Mutex<HashMap<String, Sandbox>>>);

impl Sandboxes {
    pub fn get(&self, uid: &str) -> Option<Sandbox> {
        self.0.lock().ok()?.get(uid).cloned()
    }

    fn insert(&self, uid: String, sandbox: Sandbox) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(uid, sandbox);
        }
    }

    fn remove(&self, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(uid);
        }
    }

    /// Forget the sandboxes of pods that are gone (a DEL that never came).
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|uid, _| live(uid));
        }
    }
}

/// What the socket's handler needs.
#[derive(Clone)]
pub struct CniServer {
    pub sandboxes: Sandboxes,
    /// Wakes the sync task: the workloads changed.
    pub changed: Arc<Notify>,
    pub pods: Store<Pod>,
    pub namespaces: Store<Namespace>,
    pub policies: watch::Receiver<Arc<PolicySet>>,
    pub root_namespace: String,
    /// Enrolled workloads, key → instance (pod UID), from the engine.
    pub enrolled: watch::Receiver<BTreeMap<String, String>>,
    /// The first full sync has been published.
    pub synced: Arc<AtomicBool>,
}

impl CniServer {
    /// Serve `path` until shutdown.
    pub async fn serve(self, path: PathBuf, mut shutdown: watch::Receiver<bool>) {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::remove_file(&path);
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(err) => {
                warn!(path = %path.display(), %err, "cannot serve the CNI socket: new pods cannot be protected from their first packet");
                return;
            }
        };
        info!(path = %path.display(), "serving the CNI plugin's socket");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let server = self.clone();
                        tokio::spawn(async move { server.connection(stream).await });
                    }
                    Err(err) => warn!(%err, "CNI socket accept failed"),
                },
                _ = shutdown.changed() => break,
            }
        }
        // The socket stays: a plugin that finds it but no listener fails
        // the ADD (closed), exactly as when no agent runs at all.
    }

    async fn connection(&self, stream: UnixStream) {
        let (rx, mut tx) = stream.into_split();
        let mut line = String::new();
        if BufReader::new(rx).read_line(&mut line).await.is_err() {
            return;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => self.handle(req).await,
            Err(err) => Reply::error(format!("unreadable request: {err}")),
        };
        let mut out = serde_json::to_string(&reply).unwrap_or_default();
        out.push('\n');
        let _ = tx.write_all(out.as_bytes()).await;
    }

    async fn handle(&self, req: Request) -> Reply {
        let key = format!("{}/{}", req.pod_namespace, req.pod_name);
        match req.command.as_str() {
            "ADD" => {
                let reply = self.add(&req, &key).await;
                info!(pod = %key, netns = %req.netns.display(), protected = reply.protected, error = ?reply.error, "CNI ADD");
                reply
            }
            "DEL" => {
                if !req.pod_uid.is_empty() {
                    self.sandboxes.remove(&req.pod_uid);
                    self.changed.notify_one();
                }
                debug!(pod = %key, "CNI DEL");
                Reply::ok(false, "forgotten")
            }
            other => Reply::error(format!("unknown command {other:?}")),
        }
    }

    async fn add(&self, req: &Request, key: &str) -> Reply {
        if req.netns.as_os_str().is_empty() {
            return Reply::error("no network namespace in the request");
        }
        // The pod as the API server describes it (labels, ports, probes).
        let Some(pod) = self.wait_for_pod(req).await else {
            return Reply::error(format!(
                "pod {key} is not in the agent's view of this node yet (waited {POD_WAIT:?})"
            ));
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.sandboxes.insert(
            uid.clone(),
            Sandbox {
                netns: req.netns.clone(),
                ips: req.ips.clone(),
            },
        );
        self.changed.notify_one();
        let sandbox = self.sandboxes.get(&uid);
        let opted_out = self.namespaces.state().iter().any(|ns| {
            ns.metadata.name.as_deref() == Some(&req.pod_namespace) && pods::namespace_opted_out(ns)
        });
        let candidate = match pods::workload(&pod, opted_out, sandbox.as_ref()) {
            Ok(c) => c,
            Err(skip) => return Reply::ok(false, format!("not steered: {skip:?}")),
        };
        let selected = !self
            .policies
            .borrow()
            .for_workload(
                &WorkloadRef {
                    namespace: candidate.spec.namespace.clone(),
                    labels: candidate.spec.labels.clone(),
                },
                &self.root_namespace,
            )
            .is_empty();
        if !selected {
            return Reply::ok(false, "no policy selects this pod");
        }
        let mut enrolled = self.enrolled.clone();
        let done =
            tokio::time::timeout(ENROL_WAIT, enrolled.wait_for(|m| m.get(key) == Some(&uid))).await;
        match done {
            Ok(Ok(_)) => Reply::ok(true, "enrolled"),
            _ => Reply::error(format!(
                "a policy selects pod {key} but it was not enrolled within {ENROL_WAIT:?}"
            )),
        }
    }

    /// The pod of the request once the watch has it (and the first full
    /// sync is done, so policies are known).
    async fn wait_for_pod(&self, req: &Request) -> Option<std::sync::Arc<Pod>> {
        let deadline = tokio::time::Instant::now() + POD_WAIT;
        loop {
            if self.synced.load(Ordering::SeqCst) {
                let found = self.pods.state().into_iter().find(|p| {
                    p.metadata.namespace.as_deref() == Some(&req.pod_namespace)
                        && p.metadata.name.as_deref() == Some(&req.pod_name)
                        && (req.pod_uid.is_empty()
                            || p.metadata.uid.as_deref() == Some(&req.pod_uid))
                });
                if found.is_some() {
                    return found;
                }
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
