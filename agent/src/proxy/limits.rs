//! Caps on open downstream connections, node-wide and per source address,
//! checked at accept before any other work: one client opening connections
//! without end must neither exhaust the agent's descriptors (every proxied
//! connection holds two) nor crowd out the other clients of the node. A
//! connection over a cap is reset at once.
//!
//! Requests in progress (HTTP/1 requests, HTTP/2 streams) are capped the
//! same two ways: node-wide, because each holds buffers and an upstream
//! stream, and per source, because HTTP/2 lets one connection carry a
//! hundred streams and a source hundreds of connections — without the
//! per-source cap one client stalling its streams would take every place
//! on the node and every pod would answer 503.

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
    per_source: Mutex<HashMap<IpAddr, Source>>,
    /// Connections refused because the node (resp. the source) was at its cap.
    pub refused_node: AtomicU64,
    pub refused_source: AtomicU64,
    /// Requests (HTTP/1 requests, HTTP/2 streams) in progress, node-wide.
    requests: Arc<tokio::sync::Semaphore>,
    requests_max: usize,
    requests_per_source_max: usize,
    /// Requests answered 503 because `requests_max` were in progress.
    pub refused_requests: AtomicU64,
    /// Requests answered 503 because their source had
    /// `requests_per_source_max` in progress.
    pub refused_requests_source: AtomicU64,
}

/// One source's open connections and requests in progress.
#[derive(Debug, Default)]
struct Source {
    connections: usize,
    /// Shared with the source's connections, so that counting a request
    /// takes no lock.
    requests: Arc<AtomicUsize>,
}

/// A request in progress; gives its places back when dropped.
#[derive(Debug)]
pub struct RequestPlace {
    _node: tokio::sync::OwnedSemaphorePermit,
    source: Arc<AtomicUsize>,
}

impl Drop for RequestPlace {
    fn drop(&mut self) {
        self.source.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    source: IpAddr,
    /// The source's requests in progress (for `start_request`).
    pub requests: Arc<AtomicUsize>,
}

impl ConnectionLimits {
    pub fn new(
        node_max: usize,
        per_source_max: usize,
        requests_max: usize,
        requests_per_source_max: usize,
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
            requests_per_source_max,
            refused_requests: AtomicU64::new(0),
            refused_requests_source: AtomicU64::new(0),
        })
    }

    /// A place for one more request in progress from the source whose
    /// count is `source` (`Admitted::requests`), or `None` when the source
    /// or the node is at its cap.
    pub fn start_request(&self, source: &Arc<AtomicUsize>) -> Option<RequestPlace> {
        if source.fetch_add(1, Ordering::Relaxed) >= self.requests_per_source_max {
            source.fetch_sub(1, Ordering::Relaxed);
            self.refused_requests_source.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let Ok(node) = self.requests.clone().try_acquire_owned() else {
            source.fetch_sub(1, Ordering::Relaxed);
            self.refused_requests.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        Some(RequestPlace {
            _node: node,
            source: source.clone(),
        })
    }

    pub fn requests_per_source_max(&self) -> usize {
        self.requests_per_source_max
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
        let entry = per_source.entry(source).or_default();
        if entry.connections >= self.per_source_max {
            self.refused_source.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        entry.connections += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            limits: self.clone(),
            source,
            requests: entry.requests.clone(),
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
        if let Some(entry) = per_source.get_mut(&self.source) {
            entry.connections -= 1;
            // A request may outlive its connection for a moment (its
            // response body still in flight): its place holds the counter
            // and gives it back, and a new connection from the source starts
            // a fresh one, so the cap is at most briefly loose, never stuck.
            if entry.connections == 0 {
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
        let limits = ConnectionLimits::new(3, 2, 10, 10);
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
        let limits = ConnectionLimits::new(10, 10, 2, 10);
        let src = limits.admit(IpAddr::from([10, 0, 0, 1])).unwrap();
        let a = limits.start_request(&src.requests).unwrap();
        let _b = limits.start_request(&src.requests).unwrap();
        assert!(limits.start_request(&src.requests).is_none());
        assert_eq!(limits.refused_requests.load(Ordering::Relaxed), 1);
        assert_eq!(src.requests.load(Ordering::Relaxed), 2, "refusal gave back");
        drop(a);
        assert_eq!(limits.requests_in_progress(), 1);
        assert!(limits.start_request(&src.requests).is_some());
    }

    #[test]
    fn one_source_cannot_take_every_request_place() {
        let limits = ConnectionLimits::new(10, 10, 4, 2);
        let a1 = limits.admit(IpAddr::from([10, 0, 0, 1])).unwrap();
        let a2 = limits.admit(IpAddr::from([10, 0, 0, 1])).unwrap();
        let b = limits.admit(IpAddr::from([10, 0, 0, 2])).unwrap();
        // Two connections of one source share its count.
        let held = [
            limits.start_request(&a1.requests).unwrap(),
            limits.start_request(&a2.requests).unwrap(),
        ];
        assert!(limits.start_request(&a2.requests).is_none());
        assert_eq!(limits.refused_requests_source.load(Ordering::Relaxed), 1);
        assert_eq!(limits.requests_in_progress(), 2, "node places untouched");
        // Another source is served.
        let _b1 = limits.start_request(&b.requests).unwrap();
        drop(held);
        assert!(limits.start_request(&a1.requests).is_some());
    }

    #[test]
    fn the_source_table_empties() {
        let limits = ConnectionLimits::new(10, 10, 10, 10);
        let places: Vec<_> = (0..5)
            .map(|i| limits.admit(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(limits.sources(), 5);
        drop(places);
        assert_eq!(limits.sources(), 0);
        assert_eq!(limits.open(), 0);
    }
}
