//! `fetchd tail`: print the last lines of a file on the server, then follow
//! it like `tail -F`.
//!
//! Bytes go to stdout exactly as the server sends them, one `write(2)` per
//! message as it arrives (unbuffered, on the runtime's only thread: no hop
//! between the socket and the pipe); notices go to stderr. SIGINT and
//! SIGTERM end it with status 0, also while a write is blocked on a reader
//! that stopped reading; so does a reader that closes the pipe.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::args::{ClientArgs, CompressArg};
use crate::cli::output::EXIT_OK;
use crate::client::Client;
use crate::client::follow::{Followed, Follower};
use crate::error::{Error, Result};
use crate::tail_stream::{TailCursor, TailNotice};

/// Arguments of `fetchd tail`.
#[derive(Debug, Args)]
#[command(after_help = "\
Follows the file by name, like tail -F: truncation (also copytruncate) restarts at
the new start, a rotated file (rename and create, delete and create) is read to its
end before the new one, and a missing file is waited for. Bytes go to stdout exactly
as written; notices go to stderr. A lost connection, a busy server or a restart is
retried with backoff for as long as it follows (with --no-follow: for --retry-for)
and resumes after the last byte printed: nothing lost, nothing twice.
Exit status: 0 on Ctrl-C, SIGTERM or --no-follow done; 1 when the file cannot be
tailed (refused, not found with --no-follow, server unreachable at the start).")]
pub struct TailArgs {
    /// Path of the file on the server (relative to its root).
    #[arg(value_name = "LOGFILE")]
    pub path: String,

    /// Print the last N lines first (0: only what is written from now on).
    #[arg(short = 'n', long = "lines", default_value_t = 10, value_name = "N")]
    pub lines: u32,

    /// Print the last N lines and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,

    /// Ask the server to compress the log's bytes on the wire (logs are
    /// text and shrink several times).
    #[arg(long, value_enum, default_value_t = CompressArg::None, value_name = "ALGO")]
    pub compress: CompressArg,

    /// Options of the client verbs (also accepted before the verb).
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `fetchd tail` until Ctrl-C / SIGTERM (or, with `--no-follow`, the
/// end of the data).
pub(crate) async fn run(args: TailArgs, client_args: ClientArgs) -> Result<u8> {
    // Handlers first: a signal that comes early still ends with status 0.
    let signal_error = |err| Error::io("<signals>", err);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;

    let options = client_args.options_with(args.compress);
    let client = Client::connect(&client_args.target("tail")?, &options).await?;
    let mut follower = Follower::new(client, &args.path, args.lines, !args.no_follow);
    let mut stdout = TailOut::open()?;
    let mut notices = Notices::new(&args.path);

    loop {
        let followed = tokio::select! {
            _ = interrupt.recv() => return Ok(EXIT_OK),
            _ = terminate.recv() => return Ok(EXIT_OK),
            followed = follower.next() => followed?,
        };
        match followed {
            Some(Followed::Data(data)) => match stdout.write(&data) {
                Ok(()) => {}
                // The reader went away (`| head`): done, as tail does.
                Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(EXIT_OK),
                Err(err) => return Err(Error::io("<stdout>", err)),
            },
            Some(other) => notices.show(&other),
            None => return Ok(EXIT_OK),
        }
    }
}

/// The notices on stderr, one line each.
#[derive(Debug)]
struct Notices<'a> {
    path: &'a str,
    /// A `Gone` was shown and nothing has appeared since.
    gone: bool,
}

impl<'a> Notices<'a> {
    fn new(path: &'a str) -> Notices<'a> {
        Notices { path, gone: false }
    }

    fn show(&mut self, followed: &Followed) {
        let path = self.path;
        let line = match followed {
            Followed::Data(_) => return,
            Followed::Notice(notice, cursor) => match notice {
                TailNotice::Gone if self.gone => return,
                TailNotice::Gone => {
                    self.gone = true;
                    if cursor.file.is_none() {
                        format!("{path}: not found; waiting for it to appear")
                    } else {
                        format!("{path}: file removed or renamed; waiting for it to reappear")
                    }
                }
                TailNotice::Appeared => {
                    self.gone = false;
                    format!("{path}: file appeared; following it")
                }
                TailNotice::Truncated => {
                    format!("{path}: file truncated; following from its new start")
                }
                TailNotice::Rotated => {
                    self.gone = false;
                    format!("{path}: file rotated; following the new file from its start")
                }
                TailNotice::ResumeLost => format!(
                    "{path}: the file this tail was reading is gone; \
                     anything written to it after byte {} could not be shown",
                    cursor.offset
                ),
                TailNotice::Stopping => "the server is shutting down; reconnecting".to_string(),
                TailNotice::Opened => return,
            },
            Followed::Retrying {
                notice,
                reason: Some(reason),
            } => format!("{notice} ({reason})"),
            Followed::Retrying {
                notice,
                reason: None,
            } => notice.clone(),
            Followed::Resumed(cursor) => resumed(path, cursor),
        };
        eprintln!("fetchd: {line}");
    }
}

fn resumed(path: &str, cursor: &TailCursor) -> String {
    format!("reconnected; {path} resumes at byte {}", cursor.offset)
}

/// Stdout without a buffer: each chunk is written whole as it comes.
///
/// The write blocks the (single-threaded) runtime while the pipe is full;
/// nothing else needs it then, and flow control holds the server back. A
/// SIGINT or SIGTERM that arrives during a write ends the process at once
/// with status 0 (tokio's handlers only run between writes).
#[derive(Debug)]
struct TailOut {
    out: File,
    writing: Arc<AtomicBool>,
}

impl TailOut {
    fn open() -> Result<TailOut> {
        let out = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|err| Error::io("<stdout>", err))?;
        let writing = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_conditional_shutdown(
                signal,
                i32::from(EXIT_OK),
                Arc::clone(&writing),
            )
            .map_err(|err| Error::io("<signals>", err))?;
        }
        Ok(TailOut {
            out: File::from(out),
            writing,
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.writing.store(true, Ordering::SeqCst);
        let written = self.out.write_all(data);
        self.writing.store(false, Ordering::SeqCst);
        written
    }
}
