//! The real [`Backend`]: find the workload's network namespace, create the
//! verifier listeners inside it (one per address family it has), steer its
//! ports there (eBPF), run its proxy; change all of that in place when the
//! workload changes; and undo it on `unenrol`.

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::watch;
use tracing::info;

use super::{Backend, NetnsRef, WorkloadSpec};
use crate::datapath::{Datapath, Listeners, Steering};
use crate::metrics::Registry;
use crate::netns::{Finder, Netns};
use crate::policy::WorkloadPolicy;
use crate::proxy::{self, Inbound, Shared, WorkloadStats};

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

/// An enrolled workload: its policy and inbound feeds, its proxy's stop
/// switch, and what an in-place change needs.
pub struct LiveHandle {
    policy: watch::Sender<Arc<WorkloadPolicy>>,
    inbound: watch::Sender<Arc<Inbound>>,
    stop: watch::Sender<bool>,
    workload: Arc<proxy::Workload>,
    /// Duplicates of the listening sockets, to write them into
    /// `VERIFIER_SOCKS` again on an in-place change. Dropped by `stop`, so
    /// a stopping agent's listeners really close (fail-closed at once).
    listeners: Mutex<FamilyListeners>,
}

#[derive(Default)]
struct FamilyListeners {
    v4: Option<OwnedFd>,
    v6: Option<OwnedFd>,
}

impl LiveHandle {
    /// Close the listeners and let open connections finish (SIGTERM path:
    /// the steering stays pinned, fail-closed).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        if let Ok(mut l) = self.listeners.lock() {
            *l = FamilyListeners::default();
        }
    }
}

impl LiveBackend {
    fn open_netns(&self, spec: &WorkloadSpec) -> anyhow::Result<Netns> {
        Ok(match &spec.netns {
            NetnsRef::Path(path) => Netns::open(path)?,
            NetnsRef::Pid(pid) => self.finder.open_pid(*pid)?,
            NetnsRef::Pod { uid, ip } => self.finder.find_pod(uid, *ip)?,
        })
    }

    fn datapath(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Datapath>> {
        self.datapath
            .lock()
            .map_err(|_| anyhow::anyhow!("datapath lock poisoned"))
    }

    /// The addresses to steer: the spec's, else the namespace's own.
    fn addresses(spec: &WorkloadSpec, netns: &Netns) -> anyhow::Result<Vec<IpAddr>> {
        let ips = if spec.ips.is_empty() {
            netns.addresses()?
        } else {
            spec.ips.clone()
        };
        anyhow::ensure!(
            !ips.is_empty(),
            "no address found in {}",
            netns.path().display()
        );
        Ok(ips)
    }

    /// A listener of each family `ips` has that `have` lacks, created in the
    /// namespace; `::6` is put on its loopback first when IPv6 is steered.
    fn new_listeners(
        netns: &Netns,
        ips: &[IpAddr],
        have: &FamilyListeners,
    ) -> anyhow::Result<(Option<std::net::TcpListener>, Option<std::net::TcpListener>)> {
        let v4 = match ips.iter().find(|ip| ip.is_ipv4()) {
            Some(ip) if have.v4.is_none() => Some(
                netns
                    .bind_listener(*ip)
                    .context("cannot create the IPv4 verifier listener")?,
            ),
            _ => None,
        };
        let v6 = match ips.iter().find(|ip| ip.is_ipv6()) {
            Some(ip) if have.v6.is_none() => {
                netns
                    .ensure_v6_passthrough()
                    .context("cannot add the passthrough address ::6 to the pod's loopback")?;
                Some(
                    netns
                        .bind_listener(*ip)
                        .context("cannot create the IPv6 verifier listener")?,
                )
            }
            _ => None,
        };
        Ok((v4, v6))
    }

    /// Write the steering of `spec` with these listeners, make-before-break.
    fn steer(
        &self,
        spec: &WorkloadSpec,
        netns: &Netns,
        ips: &[IpAddr],
        listeners: Listeners<'_>,
    ) -> anyhow::Result<u32> {
        self.datapath()?.enrol(
            &spec.key,
            netns.file(),
            &Steering {
                ips,
                ports: &spec.ports,
                fail_open: spec.fail_open.unwrap_or(self.fail_open),
            },
            listeners,
        )
    }

    /// Hand new listeners to the workload's proxy; keep duplicates.
    fn serve(
        &self,
        workload: &Arc<proxy::Workload>,
        stop: &watch::Sender<bool>,
        new: Vec<std::net::TcpListener>,
        keep: &mut FamilyListeners,
    ) -> anyhow::Result<()> {
        for listener in new {
            let dup = OwnedFd::from(listener.try_clone()?);
            if listener.local_addr()?.is_ipv4() {
                keep.v4 = Some(dup);
            } else {
                keep.v6 = Some(dup);
            }
            tokio::spawn(proxy::serve(
                tokio::net::TcpListener::from_std(listener)?,
                workload.clone(),
                self.shared.clone(),
                stop.subscribe(),
                self.drain.clone(),
            ));
        }
        Ok(())
    }
}

fn inbound(spec: &WorkloadSpec, ips: Vec<IpAddr>) -> Arc<Inbound> {
    Arc::new(Inbound {
        ips,
        protocols: spec.protocols.clone(),
        probes: spec.probes.clone(),
    })
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
        let ips = Self::addresses(spec, &netns)?;
        let (v4, v6) = Self::new_listeners(&netns, &ips, &FamilyListeners::default())?;
        let listener_id = self.steer(
            spec,
            &netns,
            &ips,
            Listeners {
                v4: v4.as_ref().map(AsFd::as_fd),
                v6: v6.as_ref().map(AsFd::as_fd),
            },
        )?;

        let (policy_tx, policy_rx) = watch::channel(policy);
        let (inbound_tx, inbound_rx) = watch::channel(inbound(spec, ips.clone()));
        let (stop_tx, _) = watch::channel(false);
        let stats = Arc::new(WorkloadStats::default());
        self.registry.add_workload(key, stats.clone());
        let workload = Arc::new(proxy::Workload {
            key: key.clone(),
            netns: Arc::new(netns),
            policy: policy_rx,
            inbound: inbound_rx,
            stats,
        });
        let mut listeners = FamilyListeners::default();
        self.serve(
            &workload,
            &stop_tx,
            v4.into_iter().chain(v6).collect(),
            &mut listeners,
        )?;
        let fail_open = spec.fail_open.unwrap_or(self.fail_open);
        info!(wl = %key, ?ips, ports = %spec.ports, listener_id, fail_open, "enrolled");
        Ok(LiveHandle {
            policy: policy_tx,
            inbound: inbound_tx,
            stop: stop_tx,
            workload,
            listeners: Mutex::new(listeners),
        })
    }

    fn update(&mut self, handle: &LiveHandle, policy: Arc<WorkloadPolicy>) {
        let _ = handle.policy.send(policy);
    }

    fn update_spec(
        &mut self,
        handle: &mut LiveHandle,
        spec: &WorkloadSpec,
        policy: Arc<WorkloadPolicy>,
    ) -> anyhow::Result<()> {
        let workload = handle.workload.clone();
        let netns = &workload.netns;
        let ips = Self::addresses(spec, netns)?;
        let mut listeners = handle
            .listeners
            .lock()
            .map_err(|_| anyhow::anyhow!("listener lock poisoned"))?;
        // A family the pod just got (a second pod IP) needs its listener.
        let (v4, v6) = Self::new_listeners(netns, &ips, &listeners)?;
        // The proxy learns the new addresses, protocols and probes first; a
        // connection to an address being removed is refused meanwhile.
        let previous = handle.inbound.borrow().clone();
        let _ = handle.inbound.send(inbound(spec, ips.clone()));
        let steered = self.steer(
            spec,
            netns,
            &ips,
            Listeners {
                v4: v4
                    .as_ref()
                    .map(AsFd::as_fd)
                    .or(listeners.v4.as_ref().map(AsFd::as_fd)),
                v6: v6
                    .as_ref()
                    .map(AsFd::as_fd)
                    .or(listeners.v6.as_ref().map(AsFd::as_fd)),
            },
        );
        if let Err(err) = steered {
            let _ = handle.inbound.send(previous);
            return Err(err);
        }
        let _ = handle.policy.send(policy);
        self.serve(
            &workload,
            &handle.stop,
            v4.into_iter().chain(v6).collect(),
            &mut listeners,
        )?;
        info!(wl = %spec.key, ports = %spec.ports, "steering updated in place");
        Ok(())
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
