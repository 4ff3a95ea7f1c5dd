//! Developer tasks. `cargo xtask <task>`; every task that needs the toolchain
//! or packages calls `setup` first, so a fresh machine needs nothing else.

mod bench;
mod build;
mod container_test;
mod daemonset;
mod demo;
mod fuzz;
mod image;
mod kind;
mod kube;
mod loadtest;
mod node;
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
    /// Run the criterion benchmarks (JWT verification, token cache); not part of `test`.
    Bench(bench::BenchArgs),
    /// End-to-end load benchmark in network namespaces (root): jwtgate against
    /// a bare hop and the app, under attacks, across restarts; not part of `test`.
    Loadtest(loadtest::LoadtestArgs),
    /// Fuzz the parsers (libFuzzer, nightly) N minutes per target; not part of `test`.
    Fuzz(fuzz::FuzzArgs),
    /// Build the agent image (podman, no registry) and save it for `kind load`.
    Image(image::ImageArgs),
    /// Run the image as deploy/'s DaemonSet does and check the FAQ table (root, podman).
    ContainerTest(container_test::ContainerTestArgs),
    /// Build kube-apiserver + etcd (Debian sources) and kubernetes-validate into ~/.cache/jwtgate, once.
    BuildKube,
    /// A real one-node Kubernetes cluster (kubelet, containerd) in namespaces of its own; Ctrl-C removes it.
    Node(node::NodeArgs),
    /// Try jwtgate on a local kind cluster (needs Docker and kind).
    Kind(kind::KindArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build(args) => build::run(&args).map(|_| ()),
        Task::Demo(args) => demo::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Loadtest(args) => loadtest::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Image(args) => image::run(&args),
        Task::ContainerTest(args) => container_test::run(&args),
        Task::Kind(args) => kind::run(&args),
        Task::BuildKube => kube::run(),
        Task::Node(args) => node::run(&args),
    }
}
