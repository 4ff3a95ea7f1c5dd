//! Caps on open downstream connections, node-wide and per source address,
//! checked at accept before any other work: one client opening connections
//! without end must neither exhaust the agent's descriptors (every proxied
//! connection holds two) nor crowd out the other clients of the node. A
//! connection over a cap is reset at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The caps and what is open now.
#[derive(Debug)]
pub struct ConnectionLimits {
    node_max: usize,
    per_source_max: usize,
    open: AtomicUsize,
    /// Sources with at least one open connection (so at most `node_max`
    /// entries: the table cannot outgrow the cap).
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// Connections refused because the node (resp. the source) was at its cap.
    pub refused_node: AtomicU64,
    pub refused_source: AtomicU64,
    /// Requests (HTTP/1 requests, HTTP/2 streams) in progress, node-wide.
    requests: Arc<tokio::sync::Semaphore>,
    requests_max: usize,
    /// Requests answered 503 because `requests_max` were in progress.
    pub refused_requests: AtomicU64,
}

/// An admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    source: IpAddr,
}

impl ConnectionLimits {
    pub fn new(
        node_max: usize,
        per_source_max: usize,
        requests_max: usize,
    ) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            node_max,
            per_source_max,
            open: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
            refused_node: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
            requests: Arc::new(tokio::sync::Semaphore::new(requests_max)),
            requests_max,
            refused_requests: AtomicU64::new(0),
        })
    }

    /// A place for one more request in progress, or `None` at the cap.
    pub fn start_request(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.requests.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.refused_requests.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    pub fn requests_max(&self) -> usize {
        self.requests_max
    }

    pub fn requests_in_progress(&self) -> usize {
        self.requests_max - self.requests.available_permits()
    }

    /// A place for one more connection from `source`, or `None` when the
    /// node or the source is at its cap.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Admitted> {
        let mut per_source = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.node_max {
            self.refused_node.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let count = per_source.entry(source).or_insert(0);
        if *count >= self.per_source_max {
            self.refused_source.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *count += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            limits: self.clone(),
            source,
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn sources(&self) -> usize {
        self.per_source.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn node_max(&self) -> usize {
        self.node_max
    }

    pub fn per_source_max(&self) -> usize {
        self.per_source_max
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_source = self
            .limits
            .per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                per_source.remove(&self.source);
            }
        }
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_source_and_per_node_and_gives_places_back() {
        let limits = ConnectionLimits::new(3, 2, 10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "source cap");
        let _b1 = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "node cap");
        assert_eq!(limits.refused_source.load(Ordering::Relaxed), 1);
        assert_eq!(limits.refused_node.load(Ordering::Relaxed), 1);
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _b2 = limits.admit(b).unwrap();
        assert_eq!(limits.sources(), 2);
    }

    #[test]
    fn requests_in_progress_are_capped() {
        let limits = ConnectionLimits::new(10, 10, 2);
        let a = limits.start_request().unwrap();
        let _b = limits.start_request().unwrap();
        assert!(limits.start_request().is_none());
        assert_eq!(limits.refused_requests.load(Ordering::Relaxed), 1);
        drop(a);
        assert_eq!(limits.requests_in_progress(), 1);
        assert!(limits.start_request().is_some());
    }

    #[test]
    fn the_source_table_empties() {
        let limits = ConnectionLimits::new(10, 10, 10);
        let places: Vec<_> = (0..5)
            .map(|i| limits.admit(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(limits.sources(), 5);
        drop(places);
        assert_eq!(limits.sources(), 0);
        assert_eq!(limits.open(), 0);
    }
}
