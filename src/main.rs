//! The `fetchd` binary: parse, set up logging, dispatch, exit.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fetchd::Cli::parse();
    fetchd::init_logging(&cli);
    fetchd::run_cli(cli)
}
