//! The `fetchd` command line: one module per verb, each with its `Args` and
//! a `run`; this module holds the verbs and runs one.
//!
//! - [`args`]: the options every client verb shares.
//! - [`output`]: exit codes, the one line an error is printed as, `--json`
//!   failures, stdout.
//! - [`hint`]: the command line's own hints, added to errors it prints.
//! - [`get`], [`ls`], [`stat`], [`tail`], [`put`], [`serve`],
//!   [`completions`]: the verbs.

pub(crate) mod args;
pub(crate) mod completions;
pub(crate) mod get;
pub(crate) mod hint;
pub(crate) mod ls;
pub(crate) mod output;
pub(crate) mod put;
pub(crate) mod serve;
pub(crate) mod stat;
pub(crate) mod tail;

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::error::{Error, Result};
use args::ClientArgs;
use hint::Verb;
use output::{exit_code, report};
use serve::LogFormat;

/// Verified file and log streaming over gRPC.
#[derive(Debug, Parser)]
#[command(
    name = "fetchd",
    version,
    about,
    after_help = "Exit status: 0 success, 1 failure, 2 usage error."
)]
pub struct Cli {
    /// Options of the client verbs, given before the verb (each client verb
    /// takes them after it too; see [`ClientArgs`]).
    #[command(flatten)]
    pub client: ClientArgs,

    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export one directory tree over gRPC.
    // Boxed: the server's options outweigh every client verb's.
    Serve(Box<serve::ServeArgs>),
    /// Download files, verified by sha256 before they are put in place.
    Get(get::GetArgs),
    /// List a directory on the server.
    Ls(ls::LsArgs),
    /// Show what the server knows about one path.
    Stat(stat::StatArgs),
    /// Print the last lines of a file, then follow it as it grows (tail -F).
    Tail(tail::TailArgs),
    /// Upload a file, verified by sha256 and put in place atomically.
    Put(put::PutArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print a manual page in roff (fetchd man | man -l -).
    Man(completions::ManArgs),
}

/// Sets up logging to stderr for the parsed command line: `RUST_LOG`
/// filters (default `info` for serve, `warn` for the client verbs), and
/// `serve --log-format` picks text or JSON lines.
pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let (default_level, format) = match &cli.command {
        Command::Serve(args) => ("info", args.log_format),
        _ => ("warn", LogFormat::Text),
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let verb = verb_of(&cli.command);
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Get(args) => {
            let client = cli.client.merged(&args.client);
            client_runtime(|| get::run(args, client))
        }
        Command::Ls(args) => {
            let client = cli.client.merged(&args.client);
            client_runtime(|| ls::run(args, client))
        }
        Command::Stat(args) => {
            let client = cli.client.merged(&args.client);
            client_runtime(|| stat::run(args, client))
        }
        Command::Tail(args) => {
            let client = cli.client.merged(&args.client);
            client_runtime(|| tail::run(args, client))
        }
        Command::Put(args) => {
            let client = cli.client.merged(&args.client);
            client_runtime(|| put::run(args, client))
        }
        Command::Completions(args) => completions::run_completions(args, Cli::command()),
        Command::Man(args) => completions::run_man(args, Cli::command()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            report(verb, &err);
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The verb of a parsed command line, for the hints of its errors.
fn verb_of(command: &Command) -> Verb {
    match command {
        Command::Get(args) => Verb::Get {
            recursive: args.recursive,
        },
        Command::Put(_) => Verb::Put,
        Command::Ls(_) => Verb::Ls,
        Command::Stat(_) => Verb::Stat,
        Command::Tail(_) => Verb::Tail,
        Command::Serve(_) | Command::Completions(_) | Command::Man(_) => Verb::Other,
    }
}

/// Runs a client verb on a current-thread runtime (one connection, no
/// cross-thread hand-offs; blocking file work still goes to its own pool).
fn client_runtime<F, Fut>(verb: F) -> Result<u8>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<u8>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::io("<runtime>", err))?;
    runtime.block_on(verb())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The client options of a command line, merged as `run` merges them.
    fn client_of(args: &[&str]) -> ClientArgs {
        let cli = Cli::try_parse_from(args).expect("parses");
        match &cli.command {
            Command::Get(verb) => cli.client.merged(&verb.client),
            Command::Stat(verb) => cli.client.merged(&verb.client),
            other => panic!("{other:?}"),
        }
    }

    /// Before the verb, after it, or both (after wins).
    #[test]
    fn client_options_on_either_side_of_the_verb() {
        let before = client_of(&["fetchd", "--server", "http://a:1", "get", "x"]);
        assert_eq!(before.server, Some(vec!["http://a:1".to_string()]));
        let after = client_of(&["fetchd", "stat", "x", "--server", "http://b:1"]);
        assert_eq!(after.server, Some(vec!["http://b:1".to_string()]));
        let both = client_of(&[
            "fetchd",
            "--server",
            "http://a:1",
            "--retry-for",
            "3",
            "get",
            "x",
            "--server",
            "http://b:1",
            "--token",
            "t",
        ]);
        assert_eq!(both.server, Some(vec!["http://b:1".to_string()]));
        assert_eq!(both.token.as_deref(), Some("t"));
        assert_eq!(both.retry_for, Some(Duration::from_secs(3)));
    }

    /// Several servers: `--server` again and again, a comma list in
    /// FETCHD_SERVER's form, and `--servers-file` after them.
    #[test]
    fn several_servers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("servers");
        std::fs::write(
            &file,
            "# the web tier\nweb-3=http://c:3\n\n  http://d:4  # spare\n",
        )
        .expect("write");
        let args = client_of(&[
            "fetchd",
            "--server",
            "web-1=http://a:1,http://b:2",
            "stat",
            "x",
            "--servers-file",
            file.to_str().expect("utf-8"),
        ]);
        let targets = args.targets().expect("targets");
        let names: Vec<String> = targets.iter().map(|t| t.label().to_string()).collect();
        assert_eq!(names, ["web-1", "b:2", "web-3", "d:4"]);
        let one = client_of(&["fetchd", "get", "x"]);
        assert_eq!(one.targets().expect("default").len(), 1);
    }

    /// `serve` takes none of the client options.
    #[test]
    fn serve_refuses_client_options() {
        for option in [
            "--server",
            "--token",
            "--ca-cert",
            "--client-cert",
            "--client-key",
            "--retry-for",
        ] {
            let err = Cli::try_parse_from(["fetchd", "serve", option, "x"]).expect_err(option);
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{option}"
            );
        }
    }
}
