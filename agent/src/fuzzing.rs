//! Entry points into private steps of the pure core, for the properties the
//! fuzz targets in `agent/fuzz` check (docs/fuzzing.md). Only compiled under
//! `--cfg fuzzing`: nothing here is API.

use serde_json::{Map, Value};

use crate::authz::{InvalidPath, PathNormalization};

/// The strict duplicate-key JSON parser the token segments go through.
pub fn strict_json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    crate::jwt::json::parse_object(bytes)
}

/// The normalizer's fast-path test (path without query).
pub fn path_already_normal(path: &str, mode: PathNormalization) -> bool {
    crate::authz::path::already_normal(path, mode)
}

/// The normalizer's full rewrite (path without query), which the fast path
/// must agree with.
pub fn path_rewrite(path: &str, mode: PathNormalization) -> Result<String, InvalidPath> {
    crate::authz::path::rewrite(path, mode)
}
