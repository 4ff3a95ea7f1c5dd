//! Local-mode inputs: the policy folder, the workloads file, and the JWKS
//! documents that policies point at. These modules read and fetch; they
//! evaluate nothing.

pub mod jwks;
pub mod local;
pub mod policy_dir;
pub mod workloads;
