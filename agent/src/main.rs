//! `jwtgate` command line: see `jwtgate --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = jwtgate::cli::Cli::parse();
    jwtgate::cli::run(cli)
}
