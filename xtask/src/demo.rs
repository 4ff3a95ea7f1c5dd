//! `cargo xtask demo`: the ASM/Istio FAQ "skip JWT authentication for specific
//! paths" enforced by jwtgate on a pod in network namespaces, with the FAQ's table
//! of expected answers checked row by row.
//!
//! The topology and the FAQ data come from the end-to-end test bed (`jwtgate-e2e`),
//! so the demo shows exactly what the tests assert.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jwtgate_e2e::faq::{self, FaqBed};
use jwtgate_e2e::interrupt;

#[derive(clap::Args, Debug, Default)]
pub struct DemoArgs {
    /// Leave everything running after the table until Ctrl-C, to try it by hand.
    #[arg(long)]
    pub keep_running: bool,
    /// Agent binary to run (default: $JWTGATE_BIN, else the one `cargo xtask build` made).
    #[arg(long, value_name = "PATH")]
    pub jwtgate_bin: Option<PathBuf>,
    /// Do not build; use the binary that is there.
    #[arg(long)]
    pub no_build: bool,
    /// Only remove leftovers of killed runs (jg-* network namespaces, bpffs mounts) and exit.
    #[arg(long)]
    pub cleanup: bool,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if !jwtgate_e2e::is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root (sudo -E cargo xtask demo)");
    }
    if args.cleanup {
        let removed = jwtgate_e2e::cleanup_leftovers()?;
        println!(
            "removed {} leftover(s){}",
            removed.len(),
            removed
                .iter()
                .map(|r| format!("\n  {r}"))
                .collect::<String>()
        );
        return Ok(());
    }
    interrupt::install()?;
    let mut built = None;
    if !args.no_build {
        let ebpf = crate::build::run(&crate::build::BuildArgs::default())?;
        println!("built: eBPF object {}", ebpf.display());
        // BuildArgs::default() is the debug profile.
        built = Some(crate::build::target_dir().join("debug").join("jwtgate"));
    }
    select_agent_binary(args, built)?;
    interrupt::check()?;

    println!(
        "setting up: node bridge, pod {}/{} (port {} steered, {} not), client, nginx JWKS",
        faq::NAMESPACE,
        faq::POD,
        faq::MESH_PORT,
        faq::PLAIN_PORT
    );
    let mut bed = FaqBed::build("demo")?;
    let result = show(&mut bed, args);
    // Explicit teardown so its errors are reported; Drop would only print them.
    let teardown = bed.node.teardown();
    let mismatches = result?;
    teardown?;
    println!("cleaned up: namespaces, veths, nginx, agent, bpffs");
    if mismatches > 0 {
        bail!(
            "{mismatches} of {} FAQ rows differ from Istio's answers",
            faq::ROWS.len()
        );
    }
    println!("all {} FAQ rows answered as Istio does", faq::ROWS.len());
    Ok(())
}

/// Starts the agent, runs the table; returns the number of rows that differ.
fn show(bed: &mut FaqBed, args: &DemoArgs) -> Result<usize> {
    println!("  pod     {} netns {}", bed.pod.ip, bed.pod.netns.display());
    println!(
        "  client  {} netns {}",
        bed.client.ip,
        bed.client.netns.display()
    );
    println!("  JWKS    {}", bed.jwks_uri);
    println!("  pins    {}", bed.node.pin_root().display());
    println!("policies: RequestAuthentication jwt-example, AuthorizationPolicy test-exclude (DENY notRequestPrincipals ['*'] notPaths ['/productpage'])");
    interrupt::check()?;
    // Every decision in the access log, allowed ones too, for the show.
    bed.node.start_agent(&jwtgate_e2e::agent::AgentOptions {
        extra_args: vec!["--access-log-allowed-sample".into(), "1".into()],
        ..Default::default()
    })?;
    let admin = bed
        .node
        .agent()
        .map(|a| a.metrics_addr().to_string())
        .unwrap_or_default();
    println!("agent ready: metrics on http://{admin}/metrics");
    show_programs();
    interrupt::check()?;

    let results = bed.run_rows();
    println!(
        "\nFAQ requests from the client to {}:\n",
        bed.pod.mesh_addr()
    );
    println!("{}", faq::format_table(&results));
    show_access_log(bed, &admin);
    let mismatches = results.iter().filter(|r| !r.ok()).count();
    if mismatches > 0 {
        println!("agent log (last lines):\n{}", bed.node.agent_log());
    }

    if args.keep_running {
        let token_file = jwtgate_e2e::testdata("istio-samples/demo.jwt");
        println!("running until Ctrl-C. Try:");
        println!(
            "  ip netns exec {} curl -si http://{}/api/v1/products/0",
            netns_name(&bed.client.netns),
            bed.pod.mesh_addr()
        );
        println!(
            "  ip netns exec {} curl -si -H \"Authorization: Bearer $(cat {})\" http://{}/headers",
            netns_name(&bed.client.netns),
            token_file.display(),
            bed.pod.mesh_addr()
        );
        while !interrupt::interrupted() {
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("\nCtrl-C: cleaning up");
    }
    Ok(mismatches)
}

/// The last access-log lines (the agent writes them to stdout, which the
/// test bed keeps in the agent's log) and where to look further.
fn show_access_log(bed: &FaqBed, admin: &str) {
    // Give the log's writer thread a moment to catch up.
    std::thread::sleep(Duration::from_millis(200));
    let log = bed
        .node
        .agent()
        .and_then(|a| std::fs::read_to_string(a.log_path()).ok())
        .unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('[')).collect();
    println!(
        "access log (last {} of {} lines):",
        lines.len().min(5),
        lines.len()
    );
    for l in &lines[lines.len().saturating_sub(5)..] {
        println!("  {l}");
    }
    println!("metrics:  curl -s http://{admin}/metrics | grep jwtgate_requests_total");
    println!("why 403:  jwtgate explain --agent {admin} --workload foo/productpage\n");
}

/// Points the test bed at the agent binary: --jwtgate-bin, $JWTGATE_BIN, the one
/// just built, or the newest of target/{debug,release}/jwtgate.
fn select_agent_binary(args: &DemoArgs, built: Option<PathBuf>) -> Result<()> {
    let chosen = match (&args.jwtgate_bin, std::env::var_os("JWTGATE_BIN"), built) {
        (Some(p), _, _) => p.clone(),
        (None, Some(p), _) => PathBuf::from(p),
        (None, None, Some(p)) => p,
        (None, None, None) => {
            let target = crate::build::target_dir();
            ["debug", "release"]
                .iter()
                .map(|p| target.join(p).join("jwtgate"))
                .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
                .max()
                .map(|(_, p)| p)
                .context("no target/{debug,release}/jwtgate: run `cargo xtask build` or pass --jwtgate-bin")?
        }
    };
    println!("agent binary: {}", chosen.display());
    // Read by jwtgate_e2e::agent::binary(); set before any thread of ours exists.
    std::env::set_var("JWTGATE_BIN", &chosen);
    jwtgate_e2e::agent::binary().map(|_| ())
}

/// The sk_lookup and XDP programs the agent loaded, as `bpftool prog show` lists them.
fn show_programs() {
    println!("inspect while it runs: bpftool prog show; bpftool link show; bpftool map show");
    let Ok(out) = Command::new("bpftool").args(["prog", "show"]).output() else {
        println!("  (bpftool not installed)");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        // One program = a header line ("N: type name ...") plus indented details.
        if l.contains("sk_lookup") || l.contains(": xdp ") {
            println!("  {l}");
            while let Some(d) = lines.peek().filter(|d| d.starts_with(char::is_whitespace)) {
                println!("  {d}");
                lines.next();
            }
        }
    }
}

fn netns_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
