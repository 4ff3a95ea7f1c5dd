//! `jwtgate agent`: wiring. Loads inputs, opens the datapath, enrols each
//! workload (listener in its netns + steering), runs one proxy per workload,
//! keeps policies and key sets fresh, and drains on SIGTERM.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::cli::AgentArgs;
use crate::datapath::{Datapath, DenyList};
use crate::metrics::Registry;
use crate::netns::Netns;
use crate::policy::{PolicySet, WorkloadPolicy, WorkloadRef};
use crate::proxy::{self, BanTracker, Shared, WorkloadStats};
use crate::sources::jwks::JwksStore;
use crate::sources::policy_dir::PolicyDir;
use crate::sources::workloads::{self, Workload};

/// How often the policy folder is checked for changes.
const POLICY_POLL: Duration = Duration::from_secs(1);
/// Retry delay for workloads that could not be enrolled.
const ENROL_RETRY: Duration = Duration::from_secs(2);

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    info!(config = ?args, "starting jwtgate agent");
    let workloads = workloads::load(&args.workloads)?;
    let mut policy_dir = PolicyDir::new(&args.policies);
    let loaded = policy_dir.load()?;
    for err in &loaded.errors {
        warn!("policy: {err}");
    }
    let (ras, aps) = loaded.set.counts();
    info!(
        request_authentications = ras,
        authorization_policies = aps,
        "policies loaded"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("jwtgate")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(args, workloads, policy_dir, loaded.set))
}

/// A workload and the channel that feeds its proxy the current policy.
struct Enrolled {
    workload: Workload,
    policy: watch::Sender<Arc<WorkloadPolicy>>,
}

async fn run_async(
    args: AgentArgs,
    workloads: Vec<Workload>,
    policy_dir: PolicyDir,
    policies: PolicySet,
) -> anyhow::Result<()> {
    let registry = Arc::new(Registry::default());
    let metrics_listener = crate::metrics::bind(args.metrics_addr).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(crate::metrics::serve(
        metrics_listener,
        registry.clone(),
        shutdown_rx.clone(),
    ));

    let datapath = Datapath::open(&args.pin_root).with_context(|| {
        format!(
            "cannot set up the eBPF datapath under {}",
            args.pin_root.display()
        )
    })?;
    let datapath = Arc::new(Mutex::new(datapath));
    {
        let datapath = datapath.clone();
        registry.set_kernel_counters(Box::new(move || {
            datapath
                .lock()
                .ok()
                .and_then(|dp| dp.counters().ok())
                .unwrap_or_default()
        }));
    }
    let (ban_tx, ban_rx) = mpsc::unbounded_channel();
    tokio::spawn(apply_bans(
        DenyList::open_pinned(&args.pin_root)?,
        ban_rx,
        Duration::from_secs(args.ban_ttl_secs),
    ));

    let jwks = Arc::new(JwksStore::default());
    let shared = Arc::new(Shared {
        jwks: jwks.clone(),
        normalization: args.path_normalization.into(),
        bans: BanTracker::new(args.ban_after, Duration::from_secs(args.ban_window_secs)),
        ban_requests: ban_tx,
    });

    let (jwks_uris_tx, jwks_uris_rx) = watch::channel(policies.jwks_uris());
    let (jwks_done_tx, mut jwks_done_rx) = watch::channel(false);
    tokio::spawn(crate::sources::jwks::keep_fresh(
        jwks,
        jwks_uris_rx,
        Duration::from_secs(args.jwks_refresh_secs),
        jwks_done_tx,
        shutdown_rx.clone(),
    ));

    let drain = Arc::new(());
    let mut enrolled: Vec<Enrolled> = Vec::new();
    let mut pending: Vec<Workload> = workloads;
    let mut policies = policies;
    let mut policy_dir = policy_dir;
    let mut retry = tokio::time::interval(ENROL_RETRY);
    let mut poll = tokio::time::interval(POLICY_POLL);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;

    loop {
        tokio::select! {
            _ = retry.tick(), if !pending.is_empty() => {
                let mut still = Vec::new();
                for wl in pending.drain(..) {
                    match enrol(&wl, &args, &datapath, &policies, &shared, &registry, &shutdown_rx, &drain) {
                        Ok(tx) => enrolled.push(Enrolled { workload: wl, policy: tx }),
                        Err(err) => {
                            error!(wl = %wl.key(), "cannot enrol workload (retrying): {err:#}");
                            still.push(wl);
                        }
                    }
                }
                pending = still;
            }
            _ = poll.tick() => {
                if policy_dir.changed() {
                    match policy_dir.load() {
                        Ok(loaded) => {
                            for err in &loaded.errors {
                                warn!("policy: {err}");
                            }
                            policies = loaded.set;
                            let (ras, aps) = policies.counts();
                            info!(request_authentications = ras, authorization_policies = aps, "policies reloaded");
                            for e in &enrolled {
                                let _ = e.policy.send(Arc::new(resolve(&policies, &e.workload, &args.root_namespace)));
                            }
                            let _ = jwks_uris_tx.send(policies.jwks_uris());
                        }
                        Err(err) => warn!("policy folder unreadable, keeping the current policies: {err:#}"),
                    }
                }
            }
            _ = jwks_done_rx.changed() => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        let ready = pending.is_empty() && *jwks_done_rx.borrow();
        if ready != registry.is_ready() {
            registry.set_ready(ready);
            if ready {
                info!(workloads = enrolled.len(), "ready");
            }
        }
    }

    info!("shutting down: closing listeners, draining open connections");
    registry.set_ready(false);
    let _ = shutdown_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    while Arc::strong_count(&drain) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = Arc::strong_count(&drain) - 1;
    if open > 0 {
        warn!(
            open,
            "drain deadline reached; closing remaining connections"
        );
    }
    info!("stopped; steering stays pinned and the mesh ports refuse connections until an agent returns");
    Ok(())
}

fn resolve(policies: &PolicySet, wl: &Workload, root_namespace: &str) -> WorkloadPolicy {
    policies.for_workload(
        &WorkloadRef {
            namespace: wl.namespace.clone(),
            labels: wl.labels.clone(),
        },
        root_namespace,
    )
}

/// Enrol one workload: listener in its namespace, steering, proxy task.
#[allow(clippy::too_many_arguments)]
fn enrol(
    wl: &Workload,
    args: &AgentArgs,
    datapath: &Mutex<Datapath>,
    policies: &PolicySet,
    shared: &Arc<Shared>,
    registry: &Registry,
    shutdown: &watch::Receiver<bool>,
    drain: &Arc<()>,
) -> anyhow::Result<watch::Sender<Arc<WorkloadPolicy>>> {
    let key = wl.key();
    let netns = match (&wl.netns, wl.pid) {
        (Some(path), _) => Netns::open(path)?,
        (None, Some(pid)) => Netns::open_pid(pid)?,
        (None, None) => anyhow::bail!("no netns or pid"),
    };
    let mut ips = if wl.ips.is_empty() {
        netns.addresses()?
    } else {
        wl.ips.clone()
    };
    // The forward hop bypasses steering by its source 127.0.0.6; IPv6 has no
    // such bypass yet, so IPv6 addresses are not steered (they would loop).
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = ips.drain(..).partition(IpAddr::is_ipv4);
    if !v6.is_empty() {
        warn!(wl = %key, ?v6, "IPv6 addresses are not steered yet");
    }
    anyhow::ensure!(
        !v4.is_empty(),
        "no IPv4 address found in {}",
        netns.path().display()
    );
    let listener = netns
        .bind_listener()
        .context("cannot create the verifier listener")?;
    let fail_open = wl.fail_open.unwrap_or(args.fail_open);
    let listener_id = datapath
        .lock()
        .map_err(|_| anyhow::anyhow!("datapath lock poisoned"))?
        .enrol(
            &key,
            netns.file(),
            &v4,
            &wl.ports,
            listener.as_fd(),
            fail_open,
        )?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (tx, rx) = watch::channel(Arc::new(resolve(policies, wl, &args.root_namespace)));
    let stats = Arc::new(WorkloadStats::default());
    registry.add_workload(&key, stats.clone());
    let workload = Arc::new(proxy::Workload {
        key: key.clone(),
        netns: Arc::new(netns),
        policy: rx,
        stats,
    });
    info!(wl = %key, ips = ?v4, ports = ?wl.ports, listener_id, fail_open, "enrolled");
    tokio::spawn(proxy::serve(
        listener,
        workload,
        shared.clone(),
        shutdown.clone(),
        drain.clone(),
    ));
    Ok(tx)
}

/// Write ban requests from the proxies into the kernel's deny list.
async fn apply_bans(
    mut deny: DenyList,
    mut requests: mpsc::UnboundedReceiver<IpAddr>,
    ttl: Duration,
) {
    while let Some(source) = requests.recv().await {
        match deny.deny_source(source, Some(ttl), jwtgate_common::DENY_REASON_AUTH_FAILURES) {
            Ok(()) => info!(%source, ?ttl, "source banned after repeated token failures"),
            Err(err) => warn!(%source, "cannot ban source: {err:#}"),
        }
    }
}
