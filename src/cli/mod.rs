//! The `fetchd` command line: one module per verb, each with its `Args` and
//! a `run`; this module holds the options every client verb shares, the exit
//! codes and the one way an error is printed (with the command line's hint,
//! [`hint`]).

pub(crate) mod completions;
pub(crate) mod get;
pub(crate) mod hint;
pub(crate) mod ls;
pub(crate) mod put;
pub(crate) mod serve;
pub(crate) mod stat;
pub(crate) mod tail;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};

use crate::client::retry::{DEFAULT_RETRY_FOR, RetryPolicy};
use crate::client::{Client, Compression, ConnectOptions, DEFAULT_SERVER, Target};
use crate::error::{Error, Result};

pub(crate) use hint::{Verb, describe};

/// Exit status: everything worked (or was already in place).
pub(crate) const EXIT_OK: u8 = 0;
/// Exit status: something failed (not found, refused, unreachable, mismatch).
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit status: bad flags or arguments.
pub(crate) const EXIT_USAGE: u8 = 2;

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

/// Options shared by every client verb; accepted before or after the verb.
///
/// They are not clap `global` arguments, which would reach every verb and
/// so show up in (and be accepted by) `serve` too. Instead the top level
/// and each client verb flatten their own copy, and [`ClientArgs::merged`]
/// joins the two: a value given after the verb wins over one given before
/// it, and either wins over the environment. Each copy remembers which of
/// its values came from the command line, since both copies read the same
/// environment variables.
#[derive(Clone, Default)]
pub struct ClientArgs {
    /// Server to talk to (default [`DEFAULT_SERVER`]).
    pub server: Option<String>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for https:// servers.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// How long to keep retrying (default [`DEFAULT_RETRY_FOR`]).
    pub retry_for: Option<Duration>,
    /// Which of the values above were given on the command line (not taken
    /// from the environment).
    given: Given,
}

/// Which [`ClientArgs`] values came from the command line.
#[derive(Clone, Copy, Debug, Default)]
struct Given {
    server: bool,
    token: bool,
    ca_cert: bool,
    client_cert: bool,
    client_key: bool,
    retry_for: bool,
}

/// The clap definition of [`ClientArgs`]: its options, help and
/// environment variables.
#[derive(Clone, Args)]
struct ClientFlags {
    /// Server to talk to; https:// means TLS (client verbs)
    /// [default: http://127.0.0.1:50051].
    #[arg(long, env = "FETCHD_SERVER", value_name = "URL")]
    server: Option<String>,

    /// Bearer token sent with every call (client verbs).
    #[arg(long, env = "FETCHD_TOKEN", hide_env_values = true, value_name = "T")]
    token: Option<String>,

    /// CA certificate (PEM) to trust for https:// servers, instead of the
    /// system's roots (client verbs).
    #[arg(long, value_name = "F")]
    ca_cert: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS; needs --client-key (client
    /// verbs).
    #[arg(long, value_name = "F")]
    client_cert: Option<PathBuf>,

    /// Private key (PEM) of --client-cert (client verbs).
    #[arg(long, value_name = "F")]
    client_key: Option<PathBuf>,

    /// Keep retrying a busy, restarting or dropped server for up to this
    /// many seconds from the first failure of a streak, with capped
    /// exponential backoff; 0 turns retries off. A server that refuses the
    /// first connection fails at once; `tail` reconnects for as long as it
    /// follows (client verbs) [default: 30].
    #[arg(long, env = "FETCHD_RETRY_FOR", value_name = "SECS", value_parser = parse_retry_for)]
    retry_for: Option<Duration>,
}

impl Args for ClientArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        ClientFlags::augment_args(command)
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        ClientFlags::augment_args_for_update(command)
    }
}

impl FromArgMatches for ClientArgs {
    fn from_arg_matches(matches: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        let flags = ClientFlags::from_arg_matches(matches)?;
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        Ok(ClientArgs {
            server: flags.server,
            token: flags.token,
            ca_cert: flags.ca_cert,
            client_cert: flags.client_cert,
            client_key: flags.client_key,
            retry_for: flags.retry_for,
            given: Given {
                server: given("server"),
                token: given("token"),
                ca_cert: given("ca_cert"),
                client_cert: given("client_cert"),
                client_key: given("client_key"),
                retry_for: given("retry_for"),
            },
        })
    }

    fn update_from_arg_matches(
        &mut self,
        matches: &ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        *self = self.merged(&ClientArgs::from_arg_matches(matches)?);
        Ok(())
    }
}

/// One value of [`ClientArgs::merged`]: the later one when it was given on
/// the command line, else the earlier one when it was, else whichever came
/// from the environment (both read the same variable).
fn pick<T: Clone>(
    earlier: &Option<T>,
    earlier_given: bool,
    later: &Option<T>,
    later_given: bool,
) -> (Option<T>, bool) {
    if later_given {
        (later.clone(), true)
    } else if earlier_given {
        (earlier.clone(), true)
    } else {
        (later.clone().or_else(|| earlier.clone()), false)
    }
}

/// `--retry-for`: a number of seconds, 0 or more, fractions allowed.
fn parse_retry_for(text: &str) -> std::result::Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(seconds) if (0.0..=1e9).contains(&seconds) => Ok(Duration::from_secs_f64(seconds)),
        _ => Err(format!(
            "{text:?} is not a number of seconds (0 turns retries off)"
        )),
    }
}

impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never printed, not even in debug output.
        f.debug_struct("ClientArgs")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("retry_for", &self.retry_for)
            .finish()
    }
}

impl ClientArgs {
    /// These options (given before the verb) joined with `verb`'s (given
    /// after it): per option, the command line after the verb, then the
    /// command line before it, then the environment.
    pub fn merged(&self, verb: &ClientArgs) -> ClientArgs {
        let (server, server_given) = pick(
            &self.server,
            self.given.server,
            &verb.server,
            verb.given.server,
        );
        let (token, token_given) =
            pick(&self.token, self.given.token, &verb.token, verb.given.token);
        let (ca_cert, ca_cert_given) = pick(
            &self.ca_cert,
            self.given.ca_cert,
            &verb.ca_cert,
            verb.given.ca_cert,
        );
        let (client_cert, client_cert_given) = pick(
            &self.client_cert,
            self.given.client_cert,
            &verb.client_cert,
            verb.given.client_cert,
        );
        let (client_key, client_key_given) = pick(
            &self.client_key,
            self.given.client_key,
            &verb.client_key,
            verb.given.client_key,
        );
        let (retry_for, retry_for_given) = pick(
            &self.retry_for,
            self.given.retry_for,
            &verb.retry_for,
            verb.given.retry_for,
        );
        ClientArgs {
            server,
            token,
            ca_cert,
            client_cert,
            client_key,
            retry_for,
            given: Given {
                server: server_given,
                token: token_given,
                ca_cert: ca_cert_given,
                client_cert: client_cert_given,
                client_key: client_key_given,
                retry_for: retry_for_given,
            },
        }
    }

    /// Connects to the server these options name.
    pub async fn connect(&self) -> Result<Client> {
        Client::connect(&self.target()?, &self.options()).await
    }

    /// The server these arguments name (`--server`, else the default).
    pub fn target(&self) -> Result<Target> {
        Target::parse(self.server.as_deref().unwrap_or(DEFAULT_SERVER))
    }

    /// How to connect, as these arguments say.
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            token: self.token.clone(),
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            compression: None,
            retry: RetryPolicy {
                retry_for: self.retry_for.unwrap_or(DEFAULT_RETRY_FOR),
            },
        }
    }

    /// The connection options, asking for file data compressed as
    /// `compress` says.
    pub fn options_with(&self, compress: CompressArg) -> ConnectOptions {
        ConnectOptions {
            compression: compress.compression(),
            ..self.options()
        }
    }
}

/// `--compress` of `get` and `tail`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressArg {
    /// Plain bytes (the default): best for data that does not compress and
    /// for fast links.
    #[default]
    None,
    /// gzip: understood by every gRPC implementation.
    Gzip,
    /// zstd: several times faster than gzip, at a similar ratio.
    Zstd,
}

impl CompressArg {
    /// The compression asked for, if any.
    pub fn compression(self) -> Option<Compression> {
        match self {
            CompressArg::None => None,
            CompressArg::Gzip => Some(Compression::Gzip),
            CompressArg::Zstd => Some(Compression::Zstd),
        }
    }
}

/// `serve --log-format`: how log events are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message and the
    /// event's fields at the top level), for log shippers.
    Json,
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
    let verb = Verb::of(&cli.command);
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
        Command::Completions(args) => completions::run_completions(args),
        Command::Man(args) => completions::run_man(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            report(verb, &err);
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The exit code an error ends the process with.
pub(crate) fn exit_code(err: &Error) -> u8 {
    match err {
        Error::Usage(_) => EXIT_USAGE,
        _ => EXIT_FAILURE,
    }
}

/// Prints an error as the one line the contract promises, with the
/// command line's hint for `verb` ([`describe`]).
pub(crate) fn report(verb: Verb, err: &Error) {
    eprintln!("fetchd: {}", describe(verb, err));
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

/// The `--json` object of a file that failed (`get`, `put`): the remote
/// `path`, the local side under its key (`dest` or `source`), null bytes and
/// sha256, status `error`, and the error without the path it starts with
/// (the object names the paths already).
///
/// `error` is the text of the stderr line, hint included ([`describe`]):
/// one wording for people and scripts, as it was before the server's
/// messages lost their command-line hints.
pub(crate) fn json_error(
    verb: Verb,
    path: &str,
    (key, local): (&str, &str),
    err: &Error,
) -> serde_json::Value {
    let message = describe(verb, err);
    let reason = message
        .strip_prefix(&format!("{path}: "))
        .or_else(|| message.strip_prefix(&format!("{local}: ")))
        .unwrap_or(&message);
    let mut object = serde_json::json!({
        "path": path,
        "bytes": null,
        "sha256": null,
        "status": "error",
        "error": reason,
    });
    object[key] = serde_json::Value::from(local);
    object
}

/// True when progress may be drawn on stderr.
pub(crate) fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// Writes lines to stdout; a closed pipe (`| head`) stops quietly.
#[derive(Debug)]
pub(crate) struct Output {
    out: io::BufWriter<io::Stdout>,
    closed: bool,
}

impl Default for Output {
    fn default() -> Output {
        Output {
            out: io::BufWriter::new(io::stdout()),
            closed: false,
        }
    }
}

impl Output {
    /// Writes one line; returns `false` once the reader has gone.
    pub(crate) fn line(&mut self, line: &str) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        match writeln!(self.out, "{line}") {
            Ok(()) => Ok(true),
            Err(err) => self.fail(err),
        }
    }

    /// Flushes what is buffered (e.g. after each JSON line).
    pub(crate) fn flush(&mut self) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        match self.out.flush() {
            Ok(()) => Ok(true),
            Err(err) => self.fail(err),
        }
    }

    fn fail(&mut self, err: io::Error) -> Result<bool> {
        if err.kind() == io::ErrorKind::BrokenPipe {
            self.closed = true;
            Ok(false)
        } else {
            Err(Error::io("<stdout>", err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(before.server.as_deref(), Some("http://a:1"));
        let after = client_of(&["fetchd", "stat", "x", "--server", "http://b:1"]);
        assert_eq!(after.server.as_deref(), Some("http://b:1"));
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
        assert_eq!(both.server.as_deref(), Some("http://b:1"));
        assert_eq!(both.token.as_deref(), Some("t"));
        assert_eq!(both.retry_for, Some(Duration::from_secs(3)));
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

    /// A value from the command line beats one from the environment, on
    /// either side of the verb.
    #[test]
    fn the_command_line_beats_the_environment() {
        let env = |server: &str| ClientArgs {
            server: Some(server.into()),
            ..ClientArgs::default()
        };
        let given = |server: &str| ClientArgs {
            server: Some(server.into()),
            given: Given {
                server: true,
                ..Given::default()
            },
            ..ClientArgs::default()
        };
        let server = |top: &ClientArgs, verb: &ClientArgs| top.merged(verb).server;
        assert_eq!(server(&given("top"), &env("env")).as_deref(), Some("top"));
        assert_eq!(server(&env("env"), &given("verb")).as_deref(), Some("verb"));
        assert_eq!(
            server(&given("top"), &given("verb")).as_deref(),
            Some("verb")
        );
        assert_eq!(server(&env("env"), &env("env")).as_deref(), Some("env"));
        assert_eq!(server(&ClientArgs::default(), &ClientArgs::default()), None);
    }
}
