//! Counting failed token verifications per source, to ban floods of forged
//! tokens in the kernel (XDP) instead of verifying each one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bound on tracked sources, so a spoofed-address flood cannot grow
/// the table without limit; the oldest windows are dropped first.
const MAX_TRACKED: usize = 65_536;

/// Fixed-window failure counter per source address.
#[derive(Debug)]
pub struct BanTracker {
    threshold: u32,
    window: Duration,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl BanTracker {
    /// `threshold` failures within `window` trigger a ban; 0 disables.
    pub fn new(threshold: u32, window: Duration) -> BanTracker {
        BanTracker {
            threshold,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Record one failure; true exactly once per window when the source
    /// reaches the threshold.
    pub fn record_failure(&self, source: IpAddr) -> bool {
        self.record_failure_at(source, Instant::now())
    }

    fn record_failure_at(&self, source: IpAddr, now: Instant) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let Ok(mut windows) = self.windows.lock() else {
            return false;
        };
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&source) {
            let window = self.window;
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
            if windows.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = windows.entry(source).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 == self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn bans_once_at_the_threshold_per_source() {
        let t = BanTracker::new(3, Duration::from_secs(10));
        let now = Instant::now();
        let hits: Vec<bool> = (0..5).map(|_| t.record_failure_at(A, now)).collect();
        assert_eq!(hits, [false, false, true, false, false]);
        assert!(
            !t.record_failure_at(B, now),
            "other sources are counted apart"
        );
    }

    #[test]
    fn a_new_window_starts_counting_again() {
        let t = BanTracker::new(2, Duration::from_secs(10));
        let start = Instant::now();
        assert!(!t.record_failure_at(A, start));
        let later = start + Duration::from_secs(11);
        assert!(!t.record_failure_at(A, later), "the old failure expired");
        assert!(t.record_failure_at(A, later));
    }

    #[test]
    fn zero_threshold_disables_bans() {
        let t = BanTracker::new(0, Duration::from_secs(10));
        assert!((0..100).all(|_| !t.record_failure(A)));
    }
}
