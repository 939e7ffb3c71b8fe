//! The options every client verb shares: which servers (`--server`, more
//! than once, `LABEL=URL`; `FETCHD_SERVER`, comma-separated;
//! `--servers-file`), the token, the TLS files, `--retry-for`; accepted
//! before or after the verb (never by `serve`), merged per option; and
//! `--compress` of `get` and `tail`.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, FromArgMatches};

use crate::client::retry::{DEFAULT_RETRY_FOR, RetryPolicy};
use crate::client::{Client, Compression, ConnectOptions, DEFAULT_SERVER, Target};
use crate::error::{Error, Result};

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
    /// Servers to talk to, as given (default [`DEFAULT_SERVER`]).
    pub server: Option<Vec<String>>,
    /// A file naming more servers, one a line.
    pub servers_file: Option<PathBuf>,
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
    /// Connections being made at once to a fleet (default
    /// [`MAX_CONNECTING`](crate::client::fleet::MAX_CONNECTING)).
    pub max_connecting: Option<usize>,
    /// Which of the values above were given on the command line (not taken
    /// from the environment).
    given: Given,
}

/// Which [`ClientArgs`] values came from the command line.
#[derive(Clone, Copy, Debug, Default)]
struct Given {
    server: bool,
    servers_file: bool,
    token: bool,
    ca_cert: bool,
    client_cert: bool,
    client_key: bool,
    retry_for: bool,
    max_connecting: bool,
}

/// The clap definition of [`ClientArgs`]: its options, help and
/// environment variables.
#[derive(Clone, Args)]
struct ClientFlags {
    /// Server to talk to; https:// means TLS. Give it more than once (or
    /// FETCHD_SERVER as a comma-separated list) for several; LABEL=URL
    /// names one (client verbs) [default: http://127.0.0.1:50051].
    #[arg(
        long,
        env = "FETCHD_SERVER",
        value_name = "URL",
        value_delimiter = ',',
        action = ArgAction::Append
    )]
    server: Vec<String>,

    /// A file of servers, one URL (or LABEL=URL) a line; blank lines and
    /// `#` comments are skipped (client verbs).
    #[arg(long, value_name = "FILE")]
    servers_file: Option<PathBuf>,

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

    /// With several servers, make at most N connections at once (the rest
    /// wait for a slot), so a large fleet starts in a few round trips
    /// without a burst of N handshakes (client verbs) [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_connecting: Option<u64>,
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
            server: (!flags.server.is_empty()).then_some(flags.server),
            servers_file: flags.servers_file,
            token: flags.token,
            ca_cert: flags.ca_cert,
            client_cert: flags.client_cert,
            client_key: flags.client_key,
            retry_for: flags.retry_for,
            max_connecting: flags.max_connecting.map(|n| n as usize),
            given: Given {
                server: given("server"),
                servers_file: given("servers_file"),
                token: given("token"),
                ca_cert: given("ca_cert"),
                client_cert: given("client_cert"),
                client_key: given("client_key"),
                retry_for: given("retry_for"),
                max_connecting: given("max_connecting"),
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
            .field("servers_file", &self.servers_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("retry_for", &self.retry_for)
            .field("max_connecting", &self.max_connecting)
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
        let (servers_file, servers_file_given) = pick(
            &self.servers_file,
            self.given.servers_file,
            &verb.servers_file,
            verb.given.servers_file,
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
        let (max_connecting, max_connecting_given) = pick(
            &self.max_connecting,
            self.given.max_connecting,
            &verb.max_connecting,
            verb.given.max_connecting,
        );
        ClientArgs {
            server,
            servers_file,
            token,
            ca_cert,
            client_cert,
            client_key,
            retry_for,
            max_connecting,
            given: Given {
                server: server_given,
                servers_file: servers_file_given,
                token: token_given,
                ca_cert: ca_cert_given,
                client_cert: client_cert_given,
                client_key: client_key_given,
                retry_for: retry_for_given,
                max_connecting: max_connecting_given,
            },
        }
    }

    /// Connects to the first of the servers these options name that can
    /// be reached, in the order given (`ls`, `stat`); with one server,
    /// simply to it.
    pub async fn connect_first(&self) -> Result<Client> {
        let options = self.options();
        let mut last = None;
        for target in self.targets()? {
            match Client::connect(&target, &options).await {
                Ok(client) => return Ok(client),
                Err(err @ (Error::Unreachable { .. } | Error::Tls { .. })) => {
                    tracing::debug!(server = %target.name(), %err, "trying the next server");
                    last = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| Error::Usage("no server to talk to".into())))
    }

    /// The servers these arguments name, in order: every `--server` (or
    /// `FETCHD_SERVER` entry), then the lines of `--servers-file`; the
    /// default server when there are none.
    pub fn targets(&self) -> Result<Vec<Target>> {
        let mut targets = Vec::new();
        for spec in self.server.iter().flatten() {
            if !spec.trim().is_empty() {
                targets.push(Target::parse(spec)?);
            }
        }
        if let Some(file) = &self.servers_file {
            let text = std::fs::read_to_string(file).map_err(|err| Error::io(file, err))?;
            for (number, line) in text.lines().enumerate() {
                let spec = line.split('#').next().unwrap_or("").trim();
                if spec.is_empty() {
                    continue;
                }
                let target = Target::parse(spec).map_err(|err| {
                    Error::Usage(format!("{}:{}: {err}", file.display(), number + 1))
                })?;
                targets.push(target);
            }
        }
        if targets.is_empty() {
            targets.push(Target::parse(DEFAULT_SERVER)?);
        }
        Ok(targets)
    }

    /// Connections made at once to a fleet (`--max-connecting`).
    pub fn max_connecting(&self) -> usize {
        self.max_connecting
            .unwrap_or(crate::client::fleet::MAX_CONNECTING)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A value from the command line beats one from the environment, on
    /// either side of the verb.
    #[test]
    fn the_command_line_beats_the_environment() {
        let env = |server: &str| ClientArgs {
            server: Some(vec![server.to_string()]),
            ..ClientArgs::default()
        };
        let given = |server: &str| ClientArgs {
            server: Some(vec![server.to_string()]),
            given: Given {
                server: true,
                ..Given::default()
            },
            ..ClientArgs::default()
        };
        let server = |top: &ClientArgs, verb: &ClientArgs| {
            top.merged(verb).server.map(|servers| servers.join(","))
        };
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
