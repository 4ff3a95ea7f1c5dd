//! Shared by the fuzz targets: an allocation counter (the "no input
//! allocates beyond its bound" property) and fixed key sets, tokens and
//! policies. docs/fuzzing.md lists the targets and what each asserts.

pub mod alloc;
pub mod fixtures;
pub mod pick;
pub mod request;
