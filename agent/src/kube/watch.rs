//! One list/watch kept running: kube-runtime's `watcher` (paginated list,
//! watch from its resourceVersion, relist on 410 Gone, backoff on errors)
//! feeding a reflector store. The store keeps its last contents while the
//! API server is unreachable and is swapped whole at each relist's
//! `InitDone`, so objects deleted meanwhile disappear without a `Delete`.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

/// A store and whether its first full list has arrived.
pub struct Watched<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    pub synced: Arc<AtomicBool>,
}

impl<K: Resource + 'static> Watched<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }
}

/// Start watching `api` into a new store; `changed` is notified after every
/// change and after every completed (re)list.
pub fn spawn<K>(
    what: String,
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    changed: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) -> Watched<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    let synced = Arc::new(AtomicBool::new(false));
    tokio::spawn(run(
        what,
        api,
        config,
        writer,
        synced.clone(),
        changed,
        shutdown,
    ));
    Watched { store, synced }
}

async fn run<K>(
    what: String,
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    synced: Arc<AtomicBool>,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let stream = watcher::watcher(api, config)
        .default_backoff()
        // managedFields are most of an object's size and never read.
        .modify(|obj| obj.meta_mut().managed_fields = None)
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = shutdown.changed() => return,
        };
        match item {
            Some(Ok(event)) => {
                if failing {
                    info!(watch = %what, "watch recovered");
                    failing = false;
                }
                match event {
                    Event::Init => debug!(watch = %what, "listing"),
                    Event::InitApply(_) => {}
                    Event::InitDone => {
                        if !synced.swap(true, Ordering::SeqCst) {
                            info!(watch = %what, "first list complete");
                        }
                        changed.notify_one();
                    }
                    Event::Apply(_) | Event::Delete(_) => changed.notify_one(),
                }
            }
            // Errors are yielded, not fatal: the watcher retries with
            // backoff and the store keeps its last good contents.
            Some(Err(err)) => {
                if !failing {
                    warn!(watch = %what, "watch failed, retrying with backoff (keeping the last known state): {err}");
                    failing = true;
                } else {
                    debug!(watch = %what, "watch still failing: {err}");
                }
            }
            None => {
                warn!(watch = %what, "watch stream ended");
                return;
            }
        }
    }
}
