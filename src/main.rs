//! The `fetchd` binary: parse, set up logging, dispatch, exit.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fetchd::cli::Cli::parse();
    fetchd::cli::init_logging(&cli);
    fetchd::cli::run(cli)
}
