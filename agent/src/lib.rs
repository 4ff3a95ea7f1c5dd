//! jwtgate: enforces Istio `RequestAuthentication` and `AuthorizationPolicy` on
//! a node without sidecars.
//!
//! Pure core (no I/O): [`policy`], [`jwt`], [`authz`]. Edges that adapt to it:
//! [`sources`] (policy folder, workloads file, JWKS fetching), [`netns`]
//! (network namespaces), [`addrs`] (node, exempt and restricted addresses),
//! [`datapath`] (eBPF programs and maps), [`proxy`]
//! (the verifier in front of each enrolled workload), [`metrics`],
//! and [`app`], which wires them together for `jwtgate agent`.

pub mod access_log;
pub mod addrs;
pub mod app;
pub mod authz;
pub mod check;
pub mod cli;
pub mod cni;
pub mod config;
pub mod datapath;
pub mod enroll;
pub mod explain;
/// Internals the fuzz targets (agent/fuzz) check properties of; compiled only
/// under `--cfg fuzzing`, which cargo-fuzz sets, never into the agent.
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod inbound;
pub mod jwt;
pub mod kube;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod proxy;
pub mod reporting;
pub mod sources;
pub mod telemetry;
