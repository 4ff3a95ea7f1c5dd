//! `jwtgate` command line: see `jwtgate --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Run by a container runtime as the CNI plugin (the copy named
    // `jwtgate-cni` in the CNI bin dir).
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(jwtgate::cni::PLUGIN_NAME.as_ref()) {
        return jwtgate::cni::plugin::main();
    }
    let cli = jwtgate::cli::Cli::parse();
    jwtgate::cli::run(cli)
}

/// mimalloc rather than glibc's malloc: the proxy allocates per request, and
/// glibc's allocator was 4-7 % of the agent's CPU under load
/// (docs/performance.md, "What changed").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
