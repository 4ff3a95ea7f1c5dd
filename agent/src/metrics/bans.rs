//! The automatic ban policy's counters and the size of its tables
//! (`proxy::BanTracker`), set once by `app.rs` like the token cache.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use crate::proxy::BanTracker;

static TRACKER: OnceLock<BanTracker> = OnceLock::new();

/// Report this tracker on `/metrics` (the first call wins).
pub fn set_ban_tracker(tracker: BanTracker) {
    let _ = TRACKER.set(tracker);
}

pub(super) fn render(out: &mut String) {
    let Some(t) = TRACKER.get() else {
        return;
    };
    let s = t.stats();
    out.push_str("# HELP jwtgate_bans_total Automatic bans asked for, by scope.\n");
    out.push_str("# TYPE jwtgate_bans_total counter\n");
    for (scope, n) in [("workload", &s.workload_bans), ("source", &s.source_bans)] {
        let _ = writeln!(
            out,
            "jwtgate_bans_total{{scope=\"{scope}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    for (name, help, n) in [
        (
            "ban_exempt_failures_total",
            "Token failures from the node's own or --ban-exempt addresses (never banned).",
            &s.exempt_failures,
        ),
        (
            "ban_untracked_failures_total",
            "Token failures not counted because the ban tracker was full.",
            &s.untracked_failures,
        ),
        (
            "ban_dropped_total",
            "Bans dropped because the kernel-map writer's queue was full.",
            &s.dropped_bans,
        ),
    ] {
        let _ = writeln!(out, "# HELP jwtgate_{name} {help}");
        let _ = writeln!(out, "# TYPE jwtgate_{name} counter");
        let _ = writeln!(out, "jwtgate_{name} {}", n.load(Ordering::Relaxed));
    }
    let max_entries = 2 * t.config().max_tracked as u64;
    super::gauges(
        out,
        &[
            (
                "ban_tracker_entries",
                "Failure counters and banned sources held.",
                t.entries() as u64,
            ),
            (
                "ban_tracker_max_entries",
                "Bound on jwtgate_ban_tracker_entries.",
                max_entries,
            ),
            (
                "ban_tracker_bytes",
                "Bytes held by the ban tracker's tables.",
                t.bytes(),
            ),
            (
                "ban_tracker_max_bytes",
                "Bound on jwtgate_ban_tracker_bytes.",
                t.max_bytes(),
            ),
        ],
    );
}
