//! `jwtgate agent`: wiring. Opens the datapath and the metrics endpoint,
//! starts one input source — the local files (`--policies`, `--workloads`)
//! or the Kubernetes API (`--kube`) — and from there on both modes share
//! every code path: one policy store (a `watch` channel of `PolicySet`), one
//! enrolment state machine (`enroll::Enroller`), one proxy per enrolled
//! workload, JWKS kept fresh, drain on SIGTERM.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::Signal;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::access_log::AccessLog;
use crate::config::{AgentConfig, ProbeSourcesConfig};
use crate::datapath::{Datapath, DenyList};
use crate::enroll::{Enroller, Inputs, LiveBackend};
use crate::explain::Directory;
use crate::jwt::TokenCache;
use crate::metrics::{KernelReport, Metrics};
use crate::netns::Finder;
use crate::policy::PolicySet;
use crate::proxy::{
    BanRequest, BanScope, BanTracker, ConnectionLimits, ProbeSources, Shared, Workers, BAN_QUEUE,
};
use crate::sources::jwks::JwksStore;

/// A hand-over from an agent that is still serving. That agent serves until
/// this one enrols (each enrolment moves the pod's new connections here):
/// enrolling before the signing keys are here would answer valid tokens 401
/// in between. So wait for the source's first complete view, then (at most
/// `bound`) for the keys of every jwksUri its policies name. On a first
/// start nobody serves, and waiting would only leave pods unprotected
/// longer, so this is for hand-overs only.
struct HandOver<'a> {
    uris: &'a watch::Sender<Vec<(String, Duration)>>,
    jwks: &'a JwksStore,
    bound: Duration,
}

impl HandOver<'_> {
    /// False when a signal came meanwhile (the agent stops instead).
    async fn await_keys(
        &self,
        inputs: &mut Inputs,
        policies: &mut Arc<PolicySet>,
        (sigterm, sigint): (&mut Signal, &mut Signal),
    ) -> bool {
        info!("another agent is serving: taking over once the policies, the workloads and their signing keys are here");
        while inputs.workloads.borrow().is_none() {
            tokio::select! {
                changed = inputs.workloads.changed() => if changed.is_err() { break },
                _ = sigterm.recv() => return false,
                _ = sigint.recv() => return false,
            }
        }
        let deadline = tokio::time::Instant::now() + self.bound;
        loop {
            if inputs.policies.has_changed().unwrap_or(false) {
                *policies = inputs.policies.borrow_and_update().clone();
                let _ = self.uris.send(policies.jwks_uris());
            }
            let missing: Vec<String> = policies
                .jwks_uris()
                .into_iter()
                .map(|(uri, _)| uri)
                .filter(|uri| !self.jwks.contains(uri))
                .collect();
            if missing.is_empty() {
                info!("signing keys fetched: taking over");
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    ?missing,
                    "signing keys not fetched within {:?}: taking over anyway", self.bound
                );
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = sigterm.recv() => return false,
                _ = sigint.recv() => return false,
            }
        }
    }
}

/// Added to the longest JWKS fetch a hand-over waits for.
const HANDOVER_KEYS_MARGIN: Duration = Duration::from_secs(2);

/// Retry delay for workloads that could not be enrolled.
const ENROL_RETRY: Duration = Duration::from_secs(2);

/// How often the ban policy re-reads the node's own addresses.
const NODE_ADDRESSES_REFRESH: Duration = Duration::from_secs(30);

pub fn run(config: AgentConfig) -> anyhow::Result<()> {
    info!(config = ?config, "starting jwtgate agent");
    raise_open_files_limit();
    // Local mode reads its files before anything else, so a bad path fails
    // at once with the file named.
    let local = if config.kube {
        None
    } else {
        let (policies, workloads) = match (&config.policies, &config.workloads) {
            (Some(p), Some(w)) => (p, w),
            _ => anyhow::bail!("give --policies and --workloads, or --kube"),
        };
        Some(crate::sources::local::Local::load(policies, workloads)?)
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("jwtgate")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let inputs = match local {
            Some(local) => local.start(shutdown_rx.clone()),
            None => {
                install_cni(&config)?;
                crate::kube::start(&config, shutdown_rx.clone()).await?
            }
        };
        let cni = config.cni.clone();
        let kubeconfig = config.kubeconfig.clone();
        let stopped = run_engine(config, inputs, shutdown_tx, shutdown_rx).await?;
        // A newer agent needs the plugin whatever happened to our DaemonSet.
        if let (Some(daemonset), Some(conf_dir), false) =
            (&cni.uninstall_with, &cni.conf_dir, stopped.superseded)
        {
            uninstall_cni_if_removed(daemonset, conf_dir, kubeconfig.as_deref()).await;
        }
        Ok(())
    })
}

/// Everything after the source: identical for local and Kubernetes mode.
async fn run_engine(
    config: AgentConfig,
    mut inputs: Inputs,
    shutdown_tx: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
) -> anyhow::Result<Stopped> {
    let registry = Arc::new(Metrics::new());
    let metrics_listener = crate::metrics::bind(config.metrics_addr).await?;
    tokio::spawn(crate::metrics::serve(
        metrics_listener,
        registry.clone(),
        shutdown_rx.clone(),
    ));
    if let Some(path) = &config.health_socket {
        tokio::spawn(crate::metrics::serve_unix(
            path.clone(),
            registry.clone(),
            shutdown_rx.clone(),
        ));
    }

    let datapath = Datapath::open(&config.pin_root).with_context(|| {
        format!(
            "cannot set up the eBPF datapath under {}",
            config.pin_root.display()
        )
    })?;
    let datapath = Arc::new(Mutex::new(datapath));
    {
        let datapath = datapath.clone();
        registry.report(move || {
            datapath
                .lock()
                .ok()
                .and_then(|dp| dp.counters().ok())
                .map(KernelReport)
        });
    }
    let (ban_tx, ban_rx) = mpsc::channel(BAN_QUEUE);
    let bans = BanTracker::new(config.bans.clone(), Some(ban_tx));
    let mut deny = DenyList::open_pinned(&config.pin_root)?;
    match deny.adopt_manual_bans() {
        Ok(0) => {}
        Ok(n) => info!(
            n,
            "kept operator bans of an earlier agent where nothing evicts them"
        ),
        Err(err) => warn!("cannot copy earlier operator bans: {err:#}"),
    }
    tokio::spawn(apply_bans(deny, bans.clone(), ban_rx, shutdown_rx.clone()));

    // One verified-token cache for every workload on the node; the JWKS
    // store tells it which keys left their sets.
    let token_cache = Arc::new(TokenCache::new(config.token_cache));
    let mut jwks = JwksStore::new(config.jwks.clone(), Some(token_cache.clone()))?;
    jwks.count_fetches(registry.jwks_fetches());
    let jwks = Arc::new(jwks);
    let limits = ConnectionLimits::new(
        connection_cap(config.max_connections),
        config.max_connections_per_source,
        config.max_requests,
        config.max_requests_per_source,
    );
    crate::reporting::register(
        &registry,
        token_cache.clone(),
        bans.clone(),
        jwks.clone(),
        limits.clone(),
    );
    let access_log = Arc::new(AccessLog::stdout(
        config.access_log.clone(),
        registry.access_log_suppressed.clone(),
    ));
    let probe_sources = match &config.probe_sources {
        ProbeSourcesConfig::List(list) => ProbeSources::new(list.iter().copied()),
        ProbeSourcesConfig::Auto => {
            let sources = ProbeSources::default();
            tokio::spawn(follow_node_addresses(sources.clone(), shutdown_rx.clone()));
            sources
        }
    };
    let shared = Arc::new(Shared {
        jwks: jwks.clone(),
        token_cache,
        normalization: config.path_normalization,
        bans,
        sniff_timeout: config.protocol_detection_timeout,
        probe_sources,
        timeouts: config.timeouts,
        accept_http_10: config.accept_http10,
        limits,
        access_log: access_log.clone(),
        workers: Workers::start(
            config
                .proxy_threads
                .unwrap_or_else(Workers::default_threads),
        )?,
    });
    info!(
        threads = shared.workers.threads(),
        "proxied connections are served on their own threads (--proxy-threads)"
    );

    let mut policies = inputs.policies.borrow_and_update().clone();
    let (jwks_uris_tx, jwks_uris_rx) = watch::channel(policies.jwks_uris());
    let (jwks_done_tx, mut jwks_done_rx) = watch::channel(false);
    tokio::spawn(crate::sources::jwks::keep_fresh(
        jwks.clone(),
        jwks_uris_rx,
        config.jwks_refresh,
        jwks_done_tx,
        inputs.jwks_outcomes.take(),
        shutdown_rx.clone(),
    ));

    let directory = Arc::new(Directory::default());
    {
        let (directory, access_log) = (directory.clone(), access_log.clone());
        registry.set_debug_handler(Arc::new(move |path: &str, query: &str| {
            crate::explain::debug_answer(&directory, &access_log, path, query)
        }));
    }
    let drain = Arc::new(());
    let mut backend = LiveBackend {
        datapath: datapath.clone(),
        shared,
        metrics: registry.clone(),
        directory,
        drain: drain.clone(),
        fail_open: config.fail_open,
        finder: Finder {
            proc_root: config.host_proc.clone(),
        },
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let others_serving = datapath
        .lock()
        .map(|dp| dp.others_serving())
        .unwrap_or(false);
    let mut stopping = false;
    if others_serving {
        let signals = (&mut sigterm, &mut sigint);
        let handover = HandOver {
            uris: &jwks_uris_tx,
            jwks: &jwks,
            bound: config.jwks.max_timeout + HANDOVER_KEYS_MARGIN,
        };
        stopping = !handover
            .await_keys(&mut inputs, &mut policies, signals)
            .await;
    }
    let mut enroller = Enroller::new(&config.root_namespace);
    enroller.set_policies(policies);
    if let Some(wls) = inputs.workloads.borrow_and_update().clone() {
        enroller.set_workloads(wls);
    }

    let mut retry = tokio::time::interval(ENROL_RETRY);
    // A source that ends keeps its last state in force (no busy loop on a
    // closed channel).
    let (mut policies_open, mut workloads_open) = (true, true);

    let mut reported_failures = std::collections::BTreeMap::new();
    loop {
        if stopping {
            break;
        }
        enroller.reconcile(&mut backend);
        if let Some(tx) = &inputs.enrolled {
            let now = enroller.enrolled_instances();
            tx.send_if_modified(|m| {
                let changed = *m != now;
                *m = now;
                changed
            });
        }
        if let Some(tx) = &inputs.enrolment_failures {
            if enroller.pending() != &reported_failures {
                reported_failures = enroller.pending().clone();
                let _ = tx.send(reported_failures.clone());
            }
        }
        let ready = enroller.is_ready() && *jwks_done_rx.borrow();
        if ready != registry.is_ready() {
            registry.set_ready(ready);
            if ready {
                info!(workloads = enroller.enrolled_keys().len(), "ready");
            }
        }
        let (mut new_policies, mut new_workloads) = (false, false);
        tokio::select! {
            _ = retry.tick(), if enroller.has_pending() => {}
            changed = inputs.policies.changed(), if policies_open => match changed {
                Ok(()) => new_policies = true,
                Err(_) => {
                    warn!("policy source ended; keeping the last policies");
                    policies_open = false;
                }
            },
            changed = inputs.workloads.changed(), if workloads_open => match changed {
                Ok(()) => new_workloads = true,
                Err(_) => {
                    warn!("workload source ended; keeping the last workloads");
                    workloads_open = false;
                }
            },
            _ = jwks_done_rx.changed() => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        // Take both inputs whenever either moved: a source publishes policies
        // before the workload snapshot they select from, and reconciling a
        // snapshot against the previous policies would unsteer — on start,
        // sweep the pins of — pods that are about to be selected.
        new_policies |= inputs.policies.has_changed().unwrap_or(false);
        new_workloads |= inputs.workloads.has_changed().unwrap_or(false);
        if new_policies {
            let policies = inputs.policies.borrow_and_update().clone();
            let _ = jwks_uris_tx.send(policies.jwks_uris());
            enroller.set_policies(policies);
        }
        if new_workloads {
            if let Some(wls) = inputs.workloads.borrow_and_update().clone() {
                enroller.set_workloads(wls);
            }
        }
    }

    info!("shutting down: closing listeners, draining open connections");
    registry.set_ready(false);
    let _ = shutdown_tx.send(true);
    for handle in enroller.handles() {
        handle.stop();
    }
    let deadline = Instant::now() + config.drain;
    while Arc::strong_count(&drain) > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two references are not connections: ours and the backend's.
    let open = Arc::strong_count(&drain).saturating_sub(2);
    if open > 0 {
        warn!(
            open,
            "drain deadline reached; closing remaining connections"
        );
    }
    let superseded = datapath.lock().map(|dp| dp.superseded()).unwrap_or(false);
    if superseded {
        info!("stopped; a newer agent holds the steering");
    } else {
        info!("stopped; steering stays pinned and the mesh ports refuse connections until an agent returns");
    }
    Ok(Stopped { superseded })
}

/// How the engine ended.
struct Stopped {
    /// A newer agent took the node over (surge upgrade).
    superseded: bool,
}

/// Write the ban policy's requests into the kernel's deny maps, and keep
/// the policy's view of the node's own addresses fresh. A source is checked
/// against the node's addresses once more, read at that moment, right
/// before it is written: an address added since the last refresh is still
/// never banned.
async fn apply_bans(
    mut deny: DenyList,
    tracker: BanTracker,
    mut requests: mpsc::Receiver<BanRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut refresh = tokio::time::interval(NODE_ADDRESSES_REFRESH);
    loop {
        let ban = tokio::select! {
            ban = requests.recv() => match ban {
                Some(ban) => ban,
                None => return,
            },
            _ = refresh.tick() => {
                match crate::addrs::node_addresses() {
                    Ok(addrs) => tracker.set_node_addresses(addrs),
                    Err(err) => warn!("cannot list the node's addresses: {err}"),
                }
                continue;
            }
            _ = shutdown.changed() => return,
        };
        let node = crate::addrs::node_addresses().unwrap_or_default();
        let source = crate::addrs::canonical(ban.source);
        if node.iter().any(|a| crate::addrs::canonical(*a) == source) {
            tracker.set_node_addresses(node);
            warn!(%source, "not banning one of the node's own addresses");
            continue;
        }
        let reason = jwtgate_common::DENY_REASON_AUTH_FAILURES;
        let ttl = ban.ttl;
        let written = match ban.scope {
            BanScope::Workload(workload) => deny
                .deny_pair(source, workload, Some(ttl), reason)
                .map(|()| format!("towards {workload}")),
            BanScope::Source => deny
                .deny_source(source, Some(ttl), reason)
                .map(|()| "from every workload on the node".to_string()),
        };
        match written {
            Ok(scope) => {
                info!(%source, ?ttl, "source banned {scope} after repeated token failures")
            }
            Err(err) => warn!(%source, "cannot ban source: {err:#}"),
        }
    }
}

/// Every connection is a descriptor, and the default soft limit (often
/// 1024) would refuse connections — and stop the enrolment of new pods,
/// which needs descriptors too — long before memory or CPU run out. The
/// hard limit is what the operator allows; take all of it.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(
                from = soft,
                to = hard,
                "raised the open files limit (RLIMIT_NOFILE) to the hard limit"
            ),
            Err(err) => warn!(
                soft,
                hard, "cannot raise the open files limit (RLIMIT_NOFILE): {err}"
            ),
        },
        Ok((soft, _)) => info!(
            limit = soft,
            "open files limit (RLIMIT_NOFILE) already at the hard limit"
        ),
        Err(err) => warn!("cannot read the open files limit (RLIMIT_NOFILE): {err}"),
    }
}

/// Descriptors kept out of the connections' reach: enrolment (namespace
/// files, listeners, netlink and bpf fds), JWKS fetches, the API client.
const RESERVED_FDS: u64 = 1024;

/// `--max-connections`, lowered if the open files limit could not hold it:
/// every proxied connection takes two descriptors, and running out of them
/// must never stop the enrolment of new pods.
fn connection_cap(wanted: usize) -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let fits = (limit.saturating_sub(RESERVED_FDS) / 2) as usize;
    if wanted > fits {
        warn!(
            wanted,
            allowed = fits,
            open_files_limit = limit,
            "--max-connections lowered to what the open files limit holds (2 descriptors a connection, {RESERVED_FDS} kept for enrolment)"
        );
        return fits.max(1);
    }
    wanted
}

/// `--probe-sources auto`: the node's addresses (the agent runs in the
/// node's network namespace), re-read every 10 s so an address added later
/// (DHCP, a CNI bridge coming up) is recognised.
async fn follow_node_addresses(sources: ProbeSources, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match crate::netns::own_addresses() {
            Ok(addresses) => {
                if addresses != sources.snapshot() {
                    info!(?addresses, "kubelet probe sources (this node's addresses)");
                    sources.set(addresses);
                }
            }
            Err(err) => warn!("cannot list this node's addresses for probe sources: {err}"),
        }
    }
}

/// `--cni-bin-dir` / `--cni-conf-dir`: put the plugin in the node's chain
/// before the first pod can be created against this agent.
fn install_cni(config: &AgentConfig) -> anyhow::Result<()> {
    let (Some(bin), Some(conf), Some(socket)) = (
        &config.cni.bin_dir,
        &config.cni.conf_dir,
        &config.cni.socket,
    ) else {
        return Ok(());
    };
    let list =
        crate::cni::install::install(bin, conf, socket).context("cannot install the CNI plugin")?;
    info!(conflist = %list.display(), bin = %bin.display(), "CNI plugin installed: new pods are enrolled before they start");
    Ok(())
}

/// Exiting because the DaemonSet is being deleted (not restarted or
/// upgraded): take the plugin out, so new pods start without the agent.
async fn uninstall_cni_if_removed(
    daemonset: &str,
    conf_dir: &std::path::Path,
    kubeconfig: Option<&std::path::Path>,
) {
    match crate::kube::daemonset_removed(daemonset, kubeconfig).await {
        Ok(true) => match crate::cni::install::uninstall(conf_dir) {
            Ok(_) => info!(%daemonset, "DaemonSet removed: CNI plugin taken out of the chain"),
            Err(err) => warn!("cannot take the CNI plugin out: {err:#}"),
        },
        Ok(false) => {
            info!(%daemonset, "DaemonSet still there (restart or upgrade): CNI plugin kept")
        }
        // Unknown: keep it (fail closed; `jwtgate cni-uninstall` by hand).
        Err(err) => {
            warn!("cannot tell whether the DaemonSet is being removed, CNI plugin kept: {err:#}")
        }
    }
}
