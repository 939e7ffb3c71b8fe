//! `fetchd completions SHELL` and `fetchd man [VERB]`: shell completion
//! scripts and roff manual pages, both made from the same clap definition
//! as `--help`, so they never disagree with it.

use std::io::Write;

use clap::Args;
use clap_complete::Shell;

use crate::cli::output::EXIT_OK;
use crate::error::{Error, Result};

/// Arguments of `fetchd completions`.
#[derive(Debug, Args)]
#[command(after_help = "\
Install, for example:
  bash: fetchd completions bash > /etc/bash_completion.d/fetchd
  zsh:  fetchd completions zsh > \"${fpath[1]}/_fetchd\"
  fish: fetchd completions fish > ~/.config/fish/completions/fetchd.fish")]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// Arguments of `fetchd man`.
#[derive(Debug, Args)]
#[command(after_help = "\
View with: fetchd man | man -l -    Install: fetchd man > /usr/local/share/man/man1/fetchd.1")]
pub struct ManArgs {
    /// A verb (serve, get, tail, ...) for its own page, fetchd-VERB(1);
    /// without one, the page of fetchd(1).
    #[arg(value_name = "VERB")]
    pub verb: Option<String>,
}

/// Writes the completion script of `command` (the whole command line) for
/// `args.shell` to stdout.
pub(crate) fn run_completions(args: CompletionsArgs, mut command: clap::Command) -> Result<u8> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "fetchd", &mut out);
    write_stdout(&out)
}

/// Writes a roff manual page of `command` (the whole command line), or of
/// one of its verbs, to stdout.
pub(crate) fn run_man(args: ManArgs, mut command: clap::Command) -> Result<u8> {
    command.build();
    let page = match &args.verb {
        None => command,
        Some(verb) => {
            let Some(sub) = command.find_subcommand(verb) else {
                let verbs: Vec<String> = command
                    .get_subcommands()
                    .map(|sub| sub.get_name().to_string())
                    .collect();
                return Err(Error::Usage(format!(
                    "no verb {verb:?}; one of: {}",
                    verbs.join(", ")
                )));
            };
            let name = format!("fetchd-{}", sub.get_name());
            sub.clone().name(name.clone()).display_name(name)
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .map_err(|err| Error::io("<man page>", err))?;
    write_stdout(&out)
}

/// Writes `bytes` to stdout; a closed pipe is no failure.
fn write_stdout(bytes: &[u8]) -> Result<u8> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(EXIT_OK),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(EXIT_OK),
        Err(err) => Err(Error::io("<stdout>", err)),
    }
}
