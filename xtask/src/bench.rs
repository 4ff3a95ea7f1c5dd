//! `cargo xtask bench`: the criterion benchmarks of the agent (release
//! profile), kept out of `cargo xtask test` because they take minutes and
//! measure rather than assert. Numbers and how to read them:
//! docs/performance.md.

use anyhow::{bail, Result};

use crate::build;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BenchArgs {
    /// Only benchmarks whose name contains this string (e.g. `decision`).
    pub filter: Option<String>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    // The benches call the pure modules only: no eBPF object is needed, so
    // the agent's build script embeds its placeholder.
    let status = build::host_cargo()
        .args(["bench", "-p", "jwtgate", "--bench", "jwt", "--"])
        .args(args.filter.iter())
        .current_dir(build::workspace_root())
        .status()?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }
    eprintln!(
        "bench: reports in {}",
        build::target_dir().join("criterion").display()
    );
    Ok(())
}
