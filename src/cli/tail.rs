//! `fetchd tail`: print the last lines of a file on the server, then follow
//! it like `tail -F`.
//!
//! Bytes go to stdout exactly as the server sends them, one `write(2)` per
//! message as it arrives (unbuffered, on the runtime's only thread: no hop
//! between the socket and the pipe); notices go to stderr. SIGINT and
//! SIGTERM end it with status 0, also while a write is blocked on a reader
//! that stopped reading; so does a reader that closes the pipe.
//!
//! With several servers it follows the file on all of them at once, one
//! follower (with its own cursor and reconnects) per server, and prints
//! whole lines, each after its server's label: a partial line is held until
//! its newline comes, so lines of two servers never mix, and one write is
//! one or more whole lines.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::args::{ClientArgs, CompressArg};
use crate::cli::output::{EXIT_FAILURE, EXIT_OK};
use crate::client::follow::{Followed, Follower};
use crate::client::{Client, Target, fleet};
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
tailed (refused, not found with --no-follow, server unreachable at the start).
With several servers (--server more than once): whole lines, each after its server's
label (LABEL: ); a server that fails is reported and the others go on; exit 1 only
when the file cannot be tailed on any of them.")]
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

    /// With several servers: print lines without the `LABEL: ` prefix.
    #[arg(long)]
    pub no_prefix: bool,

    /// One JSON object a line: {"server":LABEL,"path":..,"offset":N,"line":".."},
    /// `offset` the byte offset of the line's start in its file (one server
    /// or many).
    #[arg(long)]
    pub json: bool,

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
    let targets = client_args.targets()?;
    if targets.len() > 1 || args.json {
        let fleet = (&targets[..], client_args.max_connecting());
        return run_fleet(args, fleet, &options, (interrupt, terminate)).await;
    }
    let client = Client::connect(&targets[0], &options).await?;
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
            Some(Followed::Data(data, _)) => match stdout.write(&data) {
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

/// The signal streams that end a tail (SIGINT, SIGTERM).
type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

/// `tail` over several servers: a follower task per server, their messages
/// merged into whole, labelled lines.
async fn run_fleet(
    args: TailArgs,
    (targets, max_connecting): (&[Target], usize),
    options: &crate::client::ConnectOptions,
    (mut interrupt, mut terminate): Signals,
) -> Result<u8> {
    let follow = !args.no_follow;
    let colour = !args.no_prefix && io::stdout().is_terminal();
    let mut lines: Vec<Lines> = targets
        .iter()
        .enumerate()
        .map(|(index, target)| match args.json {
            true => Lines::json(target.label(), &args.path),
            false => Lines::new(target.label(), index, !args.no_prefix, colour),
        })
        .collect();
    let mut notices: Vec<Notices<'_>> = targets
        .iter()
        .map(|target| Notices::labelled(&args.path, target.label()))
        .collect();
    let mut stdout = TailOut::open()?;
    let mut failed = 0;
    let clients = fleet::connect_all(targets, options, max_connecting).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Result<Option<Followed>>)>(64);
    let mut running = 0;
    let mut order = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        let client = match client {
            Ok(client) => client,
            Err(err) => {
                eprintln!("fetchd: {}: {err}", targets[index].label());
                failed += 1;
                continue;
            }
        };
        let mut follower = Follower::new(client, &args.path, args.lines, follow);
        if follow {
            let tx = tx.clone();
            running += 1;
            tokio::spawn(async move {
                loop {
                    let next = follower.next().await;
                    let last = !matches!(next, Ok(Some(_)));
                    if tx.send((index, next)).await.is_err() || last {
                        return;
                    }
                }
            });
        } else {
            order.push((index, follower));
        }
    }
    drop(tx);

    // Without follow: each server's last lines, server after server.
    for (index, mut follower) in order {
        loop {
            let next = tokio::select! {
                _ = interrupt.recv() => return Ok(EXIT_OK),
                _ = terminate.recv() => return Ok(EXIT_OK),
                next = follower.next() => next,
            };
            let done = !matches!(next, Ok(Some(_)));
            match show(index, next, &mut lines, &mut notices, &mut stdout)? {
                Shown::Go => {}
                Shown::ReaderGone => return Ok(EXIT_OK),
                Shown::Failed => failed += 1,
            }
            if done {
                break;
            }
        }
    }

    while running > 0 {
        let (index, next) = tokio::select! {
            _ = interrupt.recv() => return Ok(EXIT_OK),
            _ = terminate.recv() => return Ok(EXIT_OK),
            message = rx.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        if !matches!(next, Ok(Some(_))) {
            running -= 1;
        }
        match show(index, next, &mut lines, &mut notices, &mut stdout)? {
            Shown::Go => {}
            Shown::ReaderGone => return Ok(EXIT_OK),
            Shown::Failed => failed += 1,
        }
    }
    if failed == targets.len() {
        Ok(EXIT_FAILURE)
    } else {
        Ok(EXIT_OK)
    }
}

/// What showing one follower's message led to.
enum Shown {
    /// Go on.
    Go,
    /// Stdout's reader went away: done, as `tail` does.
    ReaderGone,
    /// That server's follower failed for good (reported).
    Failed,
}

/// Shows what the follower of server `index` said: its whole lines on
/// stdout, its notices (and its end or failure) on stderr. A failed write
/// to stdout (other than a reader that went away) is the tail's error, as
/// with one server.
fn show(
    index: usize,
    next: Result<Option<Followed>>,
    lines: &mut [Lines],
    notices: &mut [Notices<'_>],
    stdout: &mut TailOut,
) -> Result<Shown> {
    let mut out = Vec::new();
    let shown = match next {
        Ok(Some(Followed::Data(data, end))) => {
            let start = end.offset.saturating_sub(data.len() as u64);
            lines[index].push(&data, start, &mut out);
            Shown::Go
        }
        Ok(Some(other)) => {
            // A partial line of a file that rotated or was truncated will
            // never get its newline: it ends here.
            if matches!(
                other,
                Followed::Notice(TailNotice::Rotated | TailNotice::Truncated, _)
            ) {
                lines[index].finish(&mut out);
            }
            notices[index].show(&other);
            Shown::Go
        }
        Ok(None) => {
            lines[index].finish(&mut out);
            Shown::Go
        }
        Err(err) => {
            lines[index].finish(&mut out);
            eprintln!("fetchd: {}: {err}", lines[index].label);
            Shown::Failed
        }
    };
    if !out.is_empty()
        && let Err(err) = stdout.write(&out)
    {
        if err.kind() == io::ErrorKind::BrokenPipe {
            return Ok(Shown::ReaderGone);
        }
        return Err(Error::io("<stdout>", err));
    }
    Ok(shown)
}

/// Colours of the labels on a terminal (ANSI: green, yellow, blue, magenta,
/// cyan, red), one per server in turn.
const LABEL_COLOURS: [u8; 6] = [32, 33, 34, 35, 36, 31];

/// One server's lines: how it prints them, and the start of a line whose
/// newline has not come yet.
#[derive(Debug)]
struct Lines {
    label: String,
    /// `LABEL: ` (coloured on a terminal), or nothing with `--no-prefix`.
    prefix: Vec<u8>,
    /// `--json`: each line an object naming the server and the path.
    json: Option<String>,
    held: Vec<u8>,
    /// The offset in its file of the first byte of `held` (or of the next
    /// line, when nothing is held).
    start: u64,
}

impl Lines {
    fn new(label: &str, index: usize, prefixed: bool, colour: bool) -> Lines {
        let prefix = match (prefixed, colour) {
            (false, _) => String::new(),
            (true, false) => format!("{label}: "),
            (true, true) => format!(
                "\x1b[{}m{label}\x1b[0m: ",
                LABEL_COLOURS[index % LABEL_COLOURS.len()]
            ),
        };
        Lines {
            label: label.to_string(),
            prefix: prefix.into_bytes(),
            json: None,
            held: Vec::new(),
            start: 0,
        }
    }

    /// Lines as `--json` objects of the server `label` and file `path`.
    fn json(label: &str, path: &str) -> Lines {
        Lines {
            json: Some(path.trim_start_matches('/').to_string()),
            ..Lines::new(label, 0, false, false)
        }
    }

    /// Appends to `out` every line `data` (which starts at offset `start`
    /// of its file) completes; keeps what follows the last newline.
    fn push(&mut self, data: &[u8], start: u64, out: &mut Vec<u8>) {
        if self.held.is_empty() {
            self.start = start;
        }
        let mut rest = data;
        let mut offset = start;
        while let Some(newline) = rest.iter().position(|&byte| byte == b'\n') {
            self.held.extend_from_slice(&rest[..newline]);
            self.emit(out);
            offset += newline as u64 + 1;
            self.start = offset;
            rest = &rest[newline + 1..];
        }
        self.held.extend_from_slice(rest);
    }

    /// Ends a held partial line with a newline of its own.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.held.is_empty() {
            self.emit(out);
        }
    }

    /// Writes the held line (without its newline) to `out`, as text after
    /// the prefix or as a JSON object, and empties it.
    fn emit(&mut self, out: &mut Vec<u8>) {
        match &self.json {
            None => {
                out.extend_from_slice(&self.prefix);
                out.append(&mut self.held);
                out.push(b'\n');
            }
            Some(path) => {
                let object = serde_json::json!({
                    "server": self.label,
                    "path": path,
                    "offset": self.start,
                    "line": String::from_utf8_lossy(&self.held),
                });
                out.extend_from_slice(object.to_string().as_bytes());
                out.push(b'\n');
                self.held.clear();
            }
        }
    }
}

/// The notices on stderr, one line each.
#[derive(Debug)]
struct Notices<'a> {
    path: &'a str,
    /// The server's label, before every notice, when there are several.
    label: Option<&'a str>,
    /// A `Gone` was shown and nothing has appeared since.
    gone: bool,
}

impl<'a> Notices<'a> {
    fn new(path: &'a str) -> Notices<'a> {
        Notices {
            path,
            label: None,
            gone: false,
        }
    }

    fn labelled(path: &'a str, label: &'a str) -> Notices<'a> {
        Notices {
            label: Some(label),
            ..Notices::new(path)
        }
    }

    fn show(&mut self, followed: &Followed) {
        let path = self.path;
        let line = match followed {
            Followed::Data(..) => return,
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
        match self.label {
            Some(label) => eprintln!("fetchd: {label}: {line}"),
            None => eprintln!("fetchd: {line}"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole lines go out after the prefix; a partial line waits for its
    /// newline, or is ended with one of its own.
    #[test]
    fn lines_are_whole_and_prefixed() {
        let mut lines = Lines::new("web-1", 0, true, false);
        let mut out = Vec::new();
        lines.push(b"a\nb", 0, &mut out);
        assert_eq!(out, b"web-1: a\n");
        out.clear();
        lines.push(b"c\n\nd", 3, &mut out);
        assert_eq!(out, b"web-1: bc\nweb-1: \n");
        out.clear();
        lines.finish(&mut out);
        assert_eq!(out, b"web-1: d\n");
        out.clear();
        lines.finish(&mut out);
        assert!(out.is_empty(), "nothing held, nothing added");

        let mut bare = Lines::new("web-1", 0, false, false);
        bare.push(b"x\n", 0, &mut out);
        assert_eq!(out, b"x\n");
        let coloured = Lines::new("db", 1, true, true);
        assert_eq!(coloured.prefix, b"\x1b[33mdb\x1b[0m: ");
    }

    /// `--json`: each line's offset is where it starts in its file, also
    /// across messages and after a held partial line; invalid UTF-8 is
    /// replaced.
    #[test]
    fn json_lines_carry_their_offsets() {
        let mut lines = Lines::json("h1", "/logs/app.log");
        let mut out = Vec::new();
        lines.push(b"ab\ncd", 100, &mut out);
        lines.push(b"e\n\xff\n", 105, &mut out);
        let objects: Vec<serde_json::Value> = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("json"))
            .collect();
        let got: Vec<(u64, &str)> = objects
            .iter()
            .map(|o| {
                (
                    o["offset"].as_u64().expect("offset"),
                    o["line"].as_str().expect("line"),
                )
            })
            .collect();
        assert_eq!(got, [(100, "ab"), (103, "cde"), (107, "\u{fffd}")]);
        assert_eq!(objects[0]["server"], "h1");
        assert_eq!(objects[0]["path"], "logs/app.log");
    }
}
