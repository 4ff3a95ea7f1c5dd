//! The downstream connection caps (`proxy::ConnectionLimits`): what is open,
//! the caps, and how many connections each cap refused.
//!
//! Process-wide like the token cache: the node has one set of caps, set
//! once by `app.rs`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::proxy::ConnectionLimits;

static LIMITS: OnceLock<Arc<ConnectionLimits>> = OnceLock::new();

/// Report these caps on `/metrics` (the first call wins).
pub fn set_connection_limits(limits: Arc<ConnectionLimits>) {
    let _ = LIMITS.set(limits);
}

pub(super) fn render(out: &mut String) {
    let Some(limits) = LIMITS.get() else {
        return;
    };
    out.push_str("# HELP jwtgate_connections_open Downstream connections open now (HTTP, TCP and upgraded).\n");
    out.push_str("# TYPE jwtgate_connections_open gauge\n");
    let _ = writeln!(out, "jwtgate_connections_open {}", limits.open());
    out.push_str(
        "# HELP jwtgate_connection_sources Source addresses with at least one open connection.\n",
    );
    out.push_str("# TYPE jwtgate_connection_sources gauge\n");
    let _ = writeln!(out, "jwtgate_connection_sources {}", limits.sources());
    out.push_str(
        "# HELP jwtgate_connection_limit The caps: open connections node-wide and per source.\n",
    );
    out.push_str("# TYPE jwtgate_connection_limit gauge\n");
    let _ = writeln!(
        out,
        "jwtgate_connection_limit{{cap=\"node\"}} {}",
        limits.node_max()
    );
    let _ = writeln!(
        out,
        "jwtgate_connection_limit{{cap=\"source\"}} {}",
        limits.per_source_max()
    );
    out.push_str("# HELP jwtgate_requests_in_progress Requests and HTTP/2 streams in progress.\n");
    out.push_str("# TYPE jwtgate_requests_in_progress gauge\n");
    let _ = writeln!(
        out,
        "jwtgate_requests_in_progress {}",
        limits.requests_in_progress()
    );
    out.push_str("# HELP jwtgate_requests_limit The cap on requests in progress, node-wide.\n");
    out.push_str("# TYPE jwtgate_requests_limit gauge\n");
    let _ = writeln!(out, "jwtgate_requests_limit {}", limits.requests_max());
    out.push_str("# HELP jwtgate_requests_overloaded_total Requests answered 503 at the cap.\n");
    out.push_str("# TYPE jwtgate_requests_overloaded_total counter\n");
    let _ = writeln!(
        out,
        "jwtgate_requests_overloaded_total {}",
        limits.refused_requests.load(Ordering::Relaxed)
    );
    out.push_str("# HELP jwtgate_connections_refused_total Connections reset at accept because a cap was reached.\n");
    out.push_str("# TYPE jwtgate_connections_refused_total counter\n");
    for (cap, value) in [
        ("node", &limits.refused_node),
        ("source", &limits.refused_source),
    ] {
        let _ = writeln!(
            out,
            "jwtgate_connections_refused_total{{cap=\"{cap}\"}} {}",
            value.load(Ordering::Relaxed)
        );
    }
}
