//! Developer tasks. `cargo xtask <task>`; every task that needs the toolchain
//! or packages calls `setup` first, so a fresh machine needs nothing else.

mod build;
mod demo;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, demo and test jwtgate")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (apt packages, bpf-linker); idempotent.
    Setup,
    /// Build the eBPF object and the agent (which embeds it).
    Build(build::BuildArgs),
    /// Show jwtgate enforcing the ASM/Istio FAQ scenario in network namespaces.
    Demo(demo::DemoArgs),
    /// Run every test: unit tests and the privileged end-to-end tests.
    Test(test::TestArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build(args) => build::run(&args).map(|_| ()),
        Task::Demo(args) => demo::run(&args),
        Task::Test(args) => test::run(&args),
    }
}
