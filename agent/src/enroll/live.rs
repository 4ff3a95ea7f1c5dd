//! The real [`Backend`]: find the workload's network namespace, create the
//! verifier listener inside it, steer its mesh ports there (eBPF), run its
//! proxy task; and undo all of it on `unenrol`.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Backend, NetnsRef, WorkloadSpec};
use crate::datapath::Datapath;
use crate::metrics::Registry;
use crate::netns::{Finder, Netns};
use crate::policy::WorkloadPolicy;
use crate::proxy::{self, Shared, WorkloadStats};

/// Everything enrolment touches.
pub struct LiveBackend {
    pub datapath: Arc<Mutex<Datapath>>,
    pub shared: Arc<Shared>,
    pub registry: Arc<Registry>,
    /// One clone per open connection; the agent waits for them on SIGTERM.
    pub drain: Arc<()>,
    /// `--fail-open`, for workloads that do not say.
    pub fail_open: bool,
    pub finder: Finder,
}

/// An enrolled workload: its policy feed and its proxy's stop switch.
pub struct LiveHandle {
    policy: watch::Sender<Arc<WorkloadPolicy>>,
    stop: watch::Sender<bool>,
}

impl LiveHandle {
    /// Close the listener and let open connections finish (SIGTERM path:
    /// the steering stays pinned, fail-closed).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl LiveBackend {
    fn open_netns(&self, spec: &WorkloadSpec) -> anyhow::Result<Netns> {
        Ok(match &spec.netns {
            NetnsRef::Path(path) => Netns::open(path)?,
            NetnsRef::Pid(pid) => self.finder.open_pid(*pid)?,
            NetnsRef::OwnerOf(ip) => self
                .finder
                .find_by_ip(*ip)?
                .with_context(|| format!("no network namespace on this host has {ip} (yet)"))?,
        })
    }

    fn datapath(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Datapath>> {
        self.datapath
            .lock()
            .map_err(|_| anyhow::anyhow!("datapath lock poisoned"))
    }
}

impl Backend for LiveBackend {
    type Handle = LiveHandle;

    fn enrol(
        &mut self,
        spec: &WorkloadSpec,
        policy: Arc<WorkloadPolicy>,
    ) -> anyhow::Result<LiveHandle> {
        let key = &spec.key;
        let netns = self.open_netns(spec)?;
        let ips = if spec.ips.is_empty() {
            netns.addresses()?
        } else {
            spec.ips.clone()
        };
        // The forward hop bypasses steering by its source 127.0.0.6; IPv6 has
        // no such bypass yet, so IPv6 addresses are not steered (they would loop).
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = ips.into_iter().partition(IpAddr::is_ipv4);
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
        let fail_open = spec.fail_open.unwrap_or(self.fail_open);
        let listener_id = self.datapath()?.enrol(
            key,
            netns.file(),
            &v4,
            &spec.ports,
            listener.as_fd(),
            fail_open,
        )?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (policy_tx, policy_rx) = watch::channel(policy);
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = Arc::new(WorkloadStats::default());
        self.registry.add_workload(key, stats.clone());
        let workload = Arc::new(proxy::Workload {
            key: key.clone(),
            netns: Arc::new(netns),
            policy: policy_rx,
            stats,
        });
        info!(wl = %key, ips = ?v4, ports = ?spec.ports, listener_id, fail_open, "enrolled");
        tokio::spawn(proxy::serve(
            listener,
            workload,
            self.shared.clone(),
            stop_rx,
            self.drain.clone(),
        ));
        Ok(LiveHandle {
            policy: policy_tx,
            stop: stop_tx,
        })
    }

    fn update(&mut self, handle: &LiveHandle, policy: Arc<WorkloadPolicy>) {
        let _ = handle.policy.send(policy);
    }

    fn unenrol(&mut self, key: &str, handle: LiveHandle) -> anyhow::Result<()> {
        // Steering first, so no new connection is handed to a closing
        // listener; then the proxy (its open connections finish).
        let result = self.datapath()?.unenrol(key);
        handle.stop();
        self.registry.remove_workload(key);
        result
    }

    fn pinned(&mut self) -> anyhow::Result<Vec<String>> {
        self.datapath()?.pinned_keys()
    }

    fn remove_pinned(&mut self, key: &str) -> anyhow::Result<()> {
        self.datapath()?.unenrol(key)
    }
}
