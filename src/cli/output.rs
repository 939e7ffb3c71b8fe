//! How the command line answers: the exit codes, the one line an error is
//! printed as (with the command line's hint), the `--json` object of a
//! failure, and stdout that a closed pipe ends quietly.

use std::io::{self, IsTerminal, Write};

use crate::cli::hint::{Verb, describe};
use crate::error::{Error, Result};

/// Exit status: everything worked (or was already in place).
pub(crate) const EXIT_OK: u8 = 0;
/// Exit status: something failed (not found, refused, unreachable, mismatch).
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit status: bad flags or arguments.
pub(crate) const EXIT_USAGE: u8 = 2;

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
