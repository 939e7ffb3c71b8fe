//! `fetchd put`: upload one file, verified and atomic.

use std::path::Path;

use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cli::args::ClientArgs;
use crate::cli::hint::{Verb, describe};
use crate::cli::output::{EXIT_FAILURE, EXIT_OK, Output, json_error, report, stderr_is_terminal};
use crate::client::retry::Cause;
use crate::client::upload::{self, Source, UploadOptions, Uploaded};
use crate::client::{Client, Target, fleet};
use crate::error::{Error, Result};

/// Arguments of `fetchd put`.
#[derive(Debug, Args)]
#[command(after_help = "\
Streams LOCAL to REMOTE below the server's root; REMOTE ending in / means
REMOTE/BASENAME-of-LOCAL. Missing folders on the way are created (inside the root
only). The server writes a hidden temporary file beside REMOTE, checks the size and
the sha256 sent at the end, syncs it and renames it into place: a broken or
mismatched upload leaves nothing at REMOTE. With --force over an existing REMOTE of
1 MiB or more, only the chunks the server's version lacks are sent (--whole-file
sends all): the server builds the new file from its old one and the bytes sent, and
the same size and sha256 checks decide. LOCAL - reads stdin (as does a pipe or
FIFO): the size is then unknown up front and only the server's limit applies.
A busy, restarting or dropped server is retried for --retry-for seconds, sending a
regular file again from byte 0 (stdin and pipes are sent once).
Needs `fetchd serve --allow-upload`. Exit status: 0 stored, 1 failed, 2 usage.")]
pub struct PutArgs {
    /// The local file to upload; - reads standard input.
    #[arg(value_name = "LOCAL")]
    pub local: String,

    /// Where it goes on the server (relative to its root); a trailing /
    /// keeps LOCAL's file name.
    #[arg(value_name = "REMOTE")]
    pub remote: String,

    /// Replace REMOTE if it exists (otherwise: already exists, exit 1).
    /// When REMOTE holds an older version, only the chunks it lacks are
    /// sent (a delta transfer).
    #[arg(long)]
    pub force: bool,

    /// With --force, send every byte even when REMOTE holds an older
    /// version (no delta transfer).
    #[arg(long)]
    pub whole_file: bool,

    /// No progress display.
    #[arg(short, long)]
    pub quiet: bool,

    /// One JSON object on stdout when the upload is done.
    #[arg(long)]
    pub json: bool,

    /// Options of the client verbs (also accepted before the verb).
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The remote path for `local`: `remote` itself, or with a trailing `/`,
/// `remote` + LOCAL's file name.
pub(crate) fn remote_path(local: &str, remote: &str) -> Result<String> {
    if !remote.ends_with('/') {
        return Ok(remote.to_string());
    }
    if local == "-" {
        return Err(Error::Usage(format!(
            "{remote}: names a folder; with - (stdin) give the file name too, e.g. {remote}upload.bin"
        )));
    }
    match Path::new(local).file_name().and_then(|name| name.to_str()) {
        Some(name) => Ok(format!("{remote}{name}")),
        None => Err(Error::Usage(format!(
            "{local}: has no file name to use below {remote}; name the file in REMOTE"
        ))),
    }
}

/// Runs `fetchd put`.
pub(crate) async fn run(args: PutArgs, client_args: ClientArgs) -> Result<u8> {
    let remote = remote_path(&args.local, &args.remote)?;
    let source = Source::from_arg(&args.local);
    let targets = client_args.targets()?;
    if targets.len() > 1 {
        return run_fleet(args, &client_args, &targets, remote, source).await;
    }
    let result = async {
        let opened = open(&source).await?;
        let progress = progress_bar(&args, opened.size().is_some());
        progress.set_message(remote.clone());
        let quiet = args.quiet || args.json;
        let notify_bar = progress.clone();
        let options = UploadOptions {
            force: args.force,
            delta: !args.whole_file,
            progress,
            notify: Arc::new(move |line: &str| {
                if !quiet {
                    notify_bar.suspend(|| eprintln!("fetchd: {line}"));
                }
            }),
        };
        let client = Client::connect(&targets[0], &client_args.options()).await?;
        upload::upload_retrying(&client, opened, &remote, &options).await
    }
    .await;
    if args.json {
        let mut out = Output::default();
        out.line(&json_line(&remote, &source.shown(), &result).to_string())?;
        out.flush()?;
    } else if !args.quiet
        && let Ok(uploaded) = &result
        && uploaded.reused > 0
    {
        eprintln!("fetchd: {remote}: {}", reuse_line(uploaded));
    }
    match result {
        Ok(_) => Ok(EXIT_OK),
        Err(err) if matches!(err, Error::Usage(_)) => Err(err),
        Err(err) => {
            report(Verb::Put, &err);
            Ok(EXIT_FAILURE)
        }
    }
}

/// `put` to several servers at once: the file is read and hashed once and
/// sent to every server; a server that was busy, draining or dropped is then
/// sent the file again on its own, under the retry policy (a regular file
/// only: stdin cannot be read twice). Each server's outcome is reported
/// (`--json`: one object per server, with `"server"`); exit 1 if any failed.
async fn run_fleet(
    args: PutArgs,
    client_args: &ClientArgs,
    targets: &[Target],
    remote: String,
    source: Source,
) -> Result<u8> {
    let opened = open(&source).await?;
    let progress = progress_bar(&args, opened.size().is_some());
    progress.set_message(remote.clone());
    let options = UploadOptions {
        force: args.force,
        delta: !args.whole_file,
        progress,
        notify: Arc::new(|_: &str| {}),
    };
    let connected = fleet::connect_all(
        targets,
        &client_args.options(),
        client_args.max_connecting(),
    )
    .await;
    let mut results: Vec<Option<Result<Uploaded>>> = Vec::new();
    let mut clients = Vec::new();
    for connection in connected {
        match connection {
            Ok(client) => {
                results.push(None);
                clients.push(client);
            }
            Err(err) => results.push(Some(Err(err))),
        }
    }
    let size_known = opened.size().is_some();
    let mut uploaded = upload::upload_to_all(&clients, opened, &remote, &options).await;
    // A server that was busy, draining or dropped gets the file again on
    // its own, under the retry policy, when the source can be read again.
    if matches!(source, Source::File(_)) && size_known {
        let mut again = tokio::task::JoinSet::new();
        for (index, result) in uploaded.iter().enumerate() {
            let Err(err) = result else { continue };
            if Cause::of(err).is_none() {
                continue;
            }
            if !args.quiet && !args.json {
                eprintln!(
                    "fetchd: {}: {err}; sending it to this server again",
                    clients[index].target().label()
                );
            }
            let (client, source, remote, options) = (
                clients[index].clone(),
                source.clone(),
                remote.clone(),
                options.clone(),
            );
            again.spawn(async move {
                let result = match open(&source).await {
                    Ok(opened) => upload::upload_retrying(&client, opened, &remote, &options).await,
                    Err(err) => Err(err),
                };
                (index, result)
            });
        }
        while let Some(joined) = again.join_next().await {
            if let Ok((index, result)) = joined {
                uploaded[index] = result;
            }
        }
    }
    let mut uploaded = uploaded.into_iter();
    let results: Vec<Result<Uploaded>> = results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                uploaded.next().unwrap_or_else(|| {
                    Err(Error::io("<upload>", std::io::Error::other("no result")))
                })
            })
        })
        .collect();
    let mut out = Output::default();
    let mut failed = false;
    for (target, result) in targets.iter().zip(&results) {
        if args.json {
            let mut line = json_line(&remote, &source.shown(), result);
            line["server"] = serde_json::Value::from(target.label());
            out.line(&line.to_string())?;
        }
        if let Err(err) = result {
            failed = true;
            if !args.json {
                eprintln!("fetchd: {}: {}", target.label(), describe(Verb::Put, err));
            }
        }
    }
    out.flush()?;
    Ok(if failed { EXIT_FAILURE } else { EXIT_OK })
}

/// Opens the source off the async thread: opening a FIFO waits for its
/// writer.
async fn open(source: &Source) -> Result<upload::Opened> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || upload::open(&source))
        .await
        .map_err(|err| Error::io("<open>", std::io::Error::other(err)))?
}

/// A progress bar on stderr when it is a terminal and the user wants one;
/// without a known size (stdin), a byte count and rate instead of a bar.
fn progress_bar(args: &PutArgs, size_known: bool) -> ProgressBar {
    if args.quiet || args.json || !stderr_is_terminal() {
        return ProgressBar::hidden();
    }
    let template = if size_known {
        "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
    } else {
        "{msg} {spinner} {bytes} {binary_bytes_per_sec}"
    };
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// `reused 98.7 % of 1.0 GiB (13.3 MiB sent)`: what a delta upload saved.
fn reuse_line(uploaded: &Uploaded) -> String {
    let share = 100.0 * uploaded.reused as f64 / uploaded.bytes.max(1) as f64;
    format!(
        "reused {share:.1} % of {} ({} sent)",
        crate::client::bulk::human_bytes(uploaded.bytes),
        crate::client::bulk::human_bytes(uploaded.sent)
    )
}

/// The `--json` object: like `get`'s, with `source` (the local path, `-`
/// for stdin) where `get` has `dest`.
pub(crate) fn json_line(
    remote: &str,
    source: &str,
    result: &Result<Uploaded>,
) -> serde_json::Value {
    let path = remote.trim_start_matches('/');
    match result {
        Ok(uploaded) => json!({
            "path": uploaded.path,
            "source": source,
            "bytes": uploaded.bytes,
            "sent": uploaded.sent,
            "reused": uploaded.reused,
            "sha256": uploaded.sha256.to_hex(),
            "status": "ok",
        }),
        Err(err) => json_error(Verb::Put, path, ("source", source), err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trailing / keeps LOCAL's name; stdin needs a file name.
    #[test]
    fn remote_paths() {
        assert_eq!(remote_path("a/b.txt", "x/y.txt").expect("ok"), "x/y.txt");
        assert_eq!(remote_path("a/b.txt", "x/").expect("ok"), "x/b.txt");
        assert_eq!(remote_path("b.txt", "/").expect("ok"), "/b.txt");
        assert!(remote_path("-", "x/").is_err());
        assert_eq!(remote_path("-", "x/y").expect("ok"), "x/y");
    }

    /// Errors in JSON lose the path prefix, like get's.
    #[test]
    fn json_errors_drop_the_path() {
        let err = Error::AlreadyExists { path: "x/y".into() };
        let line = json_line("/x/y", "local.bin", &Err(err));
        assert_eq!(line["path"], "x/y");
        assert_eq!(line["source"], "local.bin");
        assert_eq!(line["status"], "error");
        assert_eq!(
            line["error"],
            "already exists on the server; use --force to replace it"
        );
        assert!(line["bytes"].is_null());
    }
}
