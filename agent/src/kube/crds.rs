//! Watching an Istio policy kind whose CRD may be missing or may serve only
//! `v1beta1`: find the served version (v1 preferred), wait while the CRD is
//! absent (no policies of that kind, which is Istio's meaning too), then
//! keep one watcher on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::policies::PolicyObject;
use super::watch::{spawn, Watched};

pub const GROUP: &str = "security.istio.io";
/// Preferred first.
const VERSIONS: [&str; 2] = ["v1", "v1beta1"];
/// How often a missing CRD (or a failing discovery) is looked for again.
const REDISCOVER: Duration = Duration::from_secs(5);

/// The watcher of a kind, with the resource (version) it reads through;
/// empty until discovery found the CRD.
type Slot = Arc<Mutex<Option<(ApiResource, Watched<DynamicObject>)>>>;

/// One policy kind, watched once its CRD is served.
#[derive(Clone)]
pub struct PolicyKind {
    kind: &'static str,
    absent: Arc<AtomicBool>,
    watched: Slot,
}

impl PolicyKind {
    /// Start discovery (and then the watcher) for `kind`.
    pub fn spawn(
        client: Client,
        kind: &'static str,
        changed: Arc<Notify>,
        shutdown: watch::Receiver<bool>,
    ) -> PolicyKind {
        let pk = PolicyKind {
            kind,
            absent: Arc::new(AtomicBool::new(false)),
            watched: Arc::new(Mutex::new(None)),
        };
        tokio::spawn(pk.clone().discover(client, changed, shutdown));
        pk
    }

    /// Known: the CRD is absent, or the first list completed.
    pub fn is_synced(&self) -> bool {
        self.absent.load(Ordering::SeqCst)
            || self
                .watched
                .lock()
                .map(|w| w.as_ref().is_some_and(|(_, w)| w.is_synced()))
                .unwrap_or(false)
    }

    pub fn objects(&self) -> Vec<PolicyObject> {
        let Ok(guard) = self.watched.lock() else {
            return Vec::new();
        };
        let Some((resource, watched)) = guard.as_ref() else {
            return Vec::new();
        };
        watched
            .store
            .state()
            .into_iter()
            .map(|obj| PolicyObject {
                resource: resource.clone(),
                object: (*obj).clone(),
            })
            .collect()
    }

    async fn discover(
        self,
        client: Client,
        changed: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut reported_absent = false;
        loop {
            match served_version(&client, self.kind).await {
                Ok(Some(resource)) => {
                    info!(kind = self.kind, version = %resource.version, "watching policies");
                    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
                    let watched = spawn(
                        format!("{}.{}", self.kind, resource.api_version),
                        api,
                        kube::runtime::watcher::Config::default(),
                        resource.clone(),
                        changed.clone(),
                        shutdown.clone(),
                    );
                    if let Ok(mut slot) = self.watched.lock() {
                        *slot = Some((resource, watched));
                    }
                    self.absent.store(false, Ordering::SeqCst);
                    return;
                }
                Ok(None) => {
                    if !reported_absent {
                        warn!(kind = self.kind, "CRD {GROUP} not installed (or neither v1 nor v1beta1 served); no policies of this kind until it is");
                        reported_absent = true;
                    }
                    self.absent.store(true, Ordering::SeqCst);
                    changed.notify_one();
                }
                Err(err) => {
                    warn!(kind = self.kind, "discovery failed, retrying: {err}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(REDISCOVER) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The ApiResource of `kind` in the first served version, `None` when the
/// group or kind is not served.
async fn served_version(client: &Client, kind: &str) -> Result<Option<ApiResource>, kube::Error> {
    for version in VERSIONS {
        let gvk = GroupVersionKind::gvk(GROUP, version, kind);
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok((resource, _)) => return Ok(Some(resource)),
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(kube::Error::Discovery(_)) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(None)
}
