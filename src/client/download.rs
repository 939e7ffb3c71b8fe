//! One file from the server: to a local file (verified, atomic, resumable,
//! skipped when already identical) or to stdout (verified at the end).
//!
//! A download to a file goes: `Stat` -> skip check -> open `DEST.part` ->
//! `Read` from the part's length -> compare the server's prefix digest with
//! the part's -> assemble (write + hash) -> compare whole-file digests ->
//! commit (sync, rename, sync folder). A stale part (prefix mismatch, or the
//! server's file is now shorter) or a file that changed during the read
//! restarts from zero, at most [`MAX_ATTEMPTS`] times in all.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tonic::Code;

use crate::checksum::{self, Digest, Hasher};
use crate::client::Client;
use crate::client::assemble::{Assembler, Sink, StdoutSink};
use crate::client::retry::{AfterRead, changed_while_read};
use crate::entry::EntryKind;
use crate::error::{Error, Result};
use crate::partfile::PartFile;
use crate::read_stream::ReadEvent;

/// Attempts per file when the file changes on the server or a partial copy
/// turns out stale.
pub const MAX_ATTEMPTS: u32 = 3;

/// Callback for notices meant for a human (resuming, restarting).
pub type Notify = Arc<dyn Fn(&str) + Send + Sync>;

/// How a download behaves.
#[derive(Clone)]
pub struct DownloadOptions {
    /// Download even when the destination already matches.
    pub force: bool,
    /// Progress display (use [`ProgressBar::hidden`] for none).
    pub progress: ProgressBar,
    /// Receive at most this many bytes per second.
    pub limit_rate: Option<u64>,
    /// Where notices go.
    pub notify: Notify,
    /// The progress bar is shared by a batch: only add bytes to it.
    pub batch: bool,
}

impl DownloadOptions {
    fn progress_start(&self, size: u64, offset: u64) {
        if self.batch {
            self.progress.inc(offset);
        } else {
            self.progress.set_length(size);
            self.progress.set_position(offset);
            self.progress.reset_eta();
        }
    }

    fn progress_done(&self) {
        if !self.batch {
            self.progress.finish_and_clear();
        }
    }

    fn progress_abandon(&self) {
        if !self.batch {
            self.progress.abandon();
        }
    }
}

impl std::fmt::Debug for DownloadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadOptions")
            .field("force", &self.force)
            .field("limit_rate", &self.limit_rate)
            .finish_non_exhaustive()
    }
}

impl Default for DownloadOptions {
    fn default() -> DownloadOptions {
        DownloadOptions {
            force: false,
            progress: ProgressBar::hidden(),
            limit_rate: None,
            notify: Arc::new(|_| {}),
            batch: false,
        }
    }
}

/// How a file ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Bytes were transferred and verified.
    Downloaded,
    /// The destination already had the server's size and sha256.
    Skipped,
}

/// The result of one successful download.
#[derive(Clone, Debug)]
pub struct Report {
    /// The remote path as requested.
    pub path: String,
    /// Where it went (`-` for stdout).
    pub dest: PathBuf,
    /// Size of the file.
    pub bytes: u64,
    /// Bytes that crossed the network in this run.
    pub transferred: u64,
    /// The verified sha256 of the whole file.
    pub sha256: Digest,
    /// Downloaded or skipped.
    pub outcome: Outcome,
    /// Offset the final attempt started from (non-zero: resumed).
    pub resumed_from: u64,
}

/// A verified attempt.
struct Fetched {
    sha256: Digest,
    transferred: u64,
    size: u64,
}

/// Why an attempt ended without a file.
enum Failure {
    /// Start again from byte zero.
    Restart(String),
    /// Give up; the part file holds nothing useful.
    Discard(Error),
    /// Give up; keep the part file for a later resume.
    Keep(Error),
    /// The writer thread stopped; its own error says why.
    WriterStopped,
}

/// What a listing already told about a remote file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// Its size.
    pub size: u64,
    /// Its sha256, when the listing carried one.
    pub sha256: Option<Digest>,
}

/// Downloads `remote` to the local file `dest`. `known` (from a listing)
/// saves a `Stat` when `dest` already exists; when it does not, the first
/// call is the `Read` itself.
///
/// A busy, draining or lost server is tried again under the client's
/// [retry policy](crate::client::retry): each try continues from the bytes
/// `DEST.part` already holds (the server's prefix digest checks them, the
/// final whole-file check covers everything), and every try that added
/// bytes starts a new streak.
pub async fn download_file(
    client: &Client,
    remote: &str,
    dest: &Path,
    known: Option<Known>,
    options: &DownloadOptions,
) -> Result<Report> {
    let mut streak = client.retry_policy().streak();
    let part = crate::partfile::part_path(dest);
    let part_len = || std::fs::metadata(&part).map_or(0, |meta| meta.len());
    let mut retried = false;
    loop {
        let before = part_len();
        match download_once(client, remote, dest, known, options, retried).await {
            Err(err) => {
                if part_len() > before {
                    streak.progressed();
                }
                if !streak.wait(&shown(remote), &err, &*options.notify).await {
                    return Err(err);
                }
                retried = true;
            }
            done => return done,
        }
    }
}

/// One try of [`download_file`]; `retried` says an earlier try failed (its
/// notice said so: no second one about resuming).
async fn download_once(
    client: &Client,
    remote: &str,
    dest: &Path,
    known: Option<Known>,
    options: &DownloadOptions,
    retried: bool,
) -> Result<Report> {
    if dest.is_dir() {
        return Err(Error::Usage(format!(
            "{}: is a directory; name a file with -o",
            dest.display()
        )));
    }
    if !options.force
        && let Some(report) = skip_if_identical(client, remote, dest, known).await?
    {
        return Ok(report);
    }
    if known.is_some_and(|known| known.size <= INLINE_FILE_BYTES)
        && !crate::partfile::part_path(dest).exists()
        && let Some(done) = download_small(client, remote, dest, options).await
    {
        return done;
    }

    let dest_owned = dest.to_path_buf();
    let mut part = match blocking(move || PartFile::open(&dest_owned)).await {
        Ok(part) => part,
        Err(local) => {
            // Report what is wrong on the server first (not found, a
            // folder, refused), which says more than a local failure.
            let stat = client.stat(remote, false).await?;
            if stat.entry.kind == EntryKind::Dir {
                return Err(Error::IsDirectory {
                    path: shown(remote),
                });
            }
            return Err(local);
        }
    };
    let mut last_reason = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let offset = part.len();
        if offset > 0 && attempt == 1 && !retried {
            (options.notify)(&format!(
                "{}: resuming at byte {offset} from {}",
                shown(remote),
                part.path().display()
            ));
        }
        let (returned, result) = fetch_into_part(client, remote, part, options).await;
        let Some(returned) = returned else {
            options.progress_abandon();
            return Err(match result {
                Err(Failure::Keep(err) | Failure::Discard(err)) => err,
                _ => Error::io(dest, io::Error::other("the writer thread failed")),
            });
        };
        part = returned;
        match result {
            Ok(Fetched {
                sha256: digest,
                transferred,
                size,
            }) => {
                let committed = blocking(move || part.commit()).await;
                committed?;
                options.progress_done();
                return Ok(Report {
                    path: shown(remote),
                    dest: dest.to_path_buf(),
                    bytes: size,
                    transferred,
                    sha256: digest,
                    outcome: Outcome::Downloaded,
                    resumed_from: offset,
                });
            }
            Err(Failure::Restart(reason)) => {
                (options.notify)(&format!(
                    "{}: {reason}; starting again from byte 0",
                    shown(remote)
                ));
                last_reason = reason;
                part = blocking(move || part.truncate(0).map(|()| part)).await?;
            }
            Err(Failure::Discard(err)) => {
                options.progress_abandon();
                blocking(move || part.discard()).await?;
                return Err(err);
            }
            Err(Failure::Keep(err)) => {
                options.progress_abandon();
                if part.is_empty() {
                    // Nothing to resume: leave no empty part file behind.
                    blocking(move || part.discard()).await?;
                }
                return Err(err);
            }
            Err(Failure::WriterStopped) => {
                options.progress_abandon();
                return Err(Error::io(dest, io::Error::other("the writer stopped")));
            }
        }
    }
    options.progress_abandon();
    let _ = blocking(move || part.discard()).await;
    Err(Error::Remote {
        code: Code::Aborted,
        message: format!(
            "{}: gave up after {MAX_ATTEMPTS} attempts ({last_reason}); try again later",
            shown(remote)
        ),
    })
}

/// A "skipped" report when `dest` already holds the server's file.
async fn skip_if_identical(
    client: &Client,
    remote: &str,
    dest: &Path,
    known: Option<Known>,
) -> Result<Option<Report>> {
    let local_size = match std::fs::metadata(dest) {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return Ok(None),
    };
    let known = match known {
        Some(known) => known,
        None => {
            let stat = client.stat(remote, false).await?;
            if stat.entry.kind == EntryKind::Dir {
                return Err(Error::IsDirectory {
                    path: shown(remote),
                });
            }
            Known {
                size: stat.entry.size,
                sha256: None,
            }
        }
    };
    if known.size != local_size {
        return Ok(None);
    }
    Ok(matching_local_copy(client, remote, dest, known.sha256)
        .await?
        .map(|digest| Report {
            path: shown(remote),
            dest: dest.to_path_buf(),
            bytes: known.size,
            transferred: 0,
            sha256: digest,
            outcome: Outcome::Skipped,
            resumed_from: 0,
        }))
}

/// A small file with no part file to resume: read it whole into memory, then
/// create the part file, write, hash, verify and commit in one blocking
/// call. `None` sends the caller down the general path (the file turned out
/// large, or changed while read).
async fn download_small(
    client: &Client,
    remote: &str,
    dest: &Path,
    options: &DownloadOptions,
) -> Option<Result<Report>> {
    let mut stream = match client.read(remote, 0, None).await {
        Ok(stream) => stream,
        Err(err) if changed_while_read(&err) => return None,
        Err(err) => return Some(Err(err)),
    };
    let start = match stream.next().await {
        Ok(Some(ReadEvent::Start(start))) if start.length <= INLINE_FILE_BYTES => start,
        Ok(Some(ReadEvent::Start(_))) => return None,
        Ok(_) => {
            return Some(Err(Error::Protocol {
                path: shown(remote),
                reason: "the stream did not start with a header".into(),
            }));
        }
        Err(err) if changed_while_read(&err) => return None,
        Err(err) => return Some(Err(err)),
    };
    options.progress_start(start.entry.size, 0);
    let mut gathered = Gathered::default();
    let expected = match receive(&mut stream, &mut gathered, remote, start.length, options).await {
        Ok(expected) => expected,
        Err(Failure::Restart(_)) => return None,
        Err(Failure::Discard(err) | Failure::Keep(err)) => return Some(Err(err)),
        Err(Failure::WriterStopped) => return None,
    };
    let chunks = gathered.0;
    let dest_owned = dest.to_path_buf();
    let path = shown(remote);
    let size = start.entry.size;
    let result = blocking(move || {
        let mut part = PartFile::open(&dest_owned)?;
        part.truncate(0)?;
        let mut hasher = Hasher::new();
        for chunk in &chunks {
            hasher.update(chunk);
            part.append(chunk)?;
        }
        let actual = hasher.finalize();
        if actual != expected {
            part.discard()?;
            return Err(Error::ChecksumMismatch {
                path,
                expected,
                actual,
            });
        }
        part.commit()?;
        Ok(actual)
    })
    .await;
    options.progress_done();
    Some(result.map(|sha256| Report {
        path: shown(remote),
        dest: dest.to_path_buf(),
        bytes: size,
        transferred: start.length,
        sha256,
        outcome: Outcome::Downloaded,
        resumed_from: 0,
    }))
}

/// The digest of `dest` when it equals the server's file (whose digest is
/// asked for unless already `known`).
async fn matching_local_copy(
    client: &Client,
    remote: &str,
    dest: &Path,
    known: Option<Digest>,
) -> Result<Option<Digest>> {
    let local_path = dest.to_path_buf();
    let local = blocking(move || {
        let file = std::fs::File::open(&local_path).map_err(|err| Error::io(&local_path, err))?;
        checksum::hash_prefix(file, None)
            .map(Hasher::finalize)
            .map_err(|err| Error::io(&local_path, err))
    });
    let remote_digest = async {
        match known {
            Some(digest) => Ok(Some(digest)),
            None => client.stat(remote, true).await.map(|stat| stat.sha256),
        }
    };
    let (local, remote) = tokio::join!(local, remote_digest);
    Ok(match (local, remote?) {
        (Ok(local), Some(remote)) if local == remote => Some(local),
        _ => None,
    })
}

/// One attempt: fills `part` from its current length and verifies it.
/// Always hands the part file back.
async fn fetch_into_part(
    client: &Client,
    remote: &str,
    part: PartFile,
    options: &DownloadOptions,
) -> (Option<PartFile>, std::result::Result<Fetched, Failure>) {
    let offset = part.len();
    // Hash what the part already holds while the server hashes its prefix.
    let local_prefix = async {
        if offset == 0 {
            return Ok(Hasher::new());
        }
        let reader = part.reader()?;
        let path = part.path().to_path_buf();
        blocking(move || {
            checksum::hash_prefix(reader, Some(offset)).map_err(|err| Error::io(&path, err))
        })
        .await
    };
    let (local_prefix, stream) = tokio::join!(local_prefix, client.read(remote, offset, None));
    let mut stream = match stream {
        Ok(stream) => stream,
        Err(err) => return (Some(part), Err(classify(err))),
    };
    let hasher = match local_prefix {
        Ok(hasher) => hasher,
        Err(err) => return (Some(part), Err(Failure::Keep(err))),
    };

    let start = match stream.next().await {
        Ok(Some(ReadEvent::Start(start))) => start,
        Ok(_) => {
            return (
                Some(part),
                Err(protocol(remote, "the stream did not start with a header")),
            );
        }
        Err(err) => return (Some(part), Err(classify(err))),
    };
    if offset > 0 && start.prefix_sha256 != Some(hasher.snapshot()) {
        return (
            Some(part),
            Err(Failure::Restart(
                "the partial download does not match the server's file".into(),
            )),
        );
    }
    options.progress_start(start.entry.size, offset);

    let (part, hasher, received) = if start.length <= INLINE_FILE_BYTES {
        // A small file: gather it here and write it in one blocking call,
        // instead of starting writer and hasher threads for a few chunks.
        let mut gathered = Gathered::default();
        let received = receive(&mut stream, &mut gathered, remote, start.length, options).await;
        let chunks = gathered.0;
        let written = tokio::task::spawn_blocking(move || {
            let (mut part, mut hasher) = (part, hasher);
            let mut written = Ok(());
            for chunk in &chunks {
                if written.is_err() {
                    break;
                }
                hasher.update(chunk);
                written = part.append(chunk);
            }
            (part, hasher, written)
        })
        .await;
        match written {
            Ok((part, hasher, Ok(()))) => (part, hasher, received),
            Ok((part, _, Err(err))) => return (Some(part), Err(Failure::Keep(err))),
            Err(err) => {
                return (
                    None,
                    Err(Failure::Keep(Error::io(remote, io::Error::other(err)))),
                );
            }
        }
    } else {
        let mut assembler = Assembler::start(part, hasher);
        let received = receive(&mut stream, &mut assembler, remote, start.length, options).await;
        let assembled = match assembler.finish().await {
            Ok(assembled) => assembled,
            Err(err) => return (None, Err(Failure::Keep(err))),
        };
        if let Err(err) = assembled.written {
            return (Some(assembled.sink), Err(Failure::Keep(err)));
        }
        (assembled.sink, assembled.hasher, received)
    };
    let expected = match received {
        Ok(expected) => expected,
        Err(failure) => return (Some(part), Err(failure)),
    };
    let actual = hasher.finalize();
    if actual != expected {
        return (
            Some(part),
            Err(Failure::Discard(Error::ChecksumMismatch {
                path: shown(remote),
                expected,
                actual,
            })),
        );
    }
    (
        Some(part),
        Ok(Fetched {
            sha256: actual,
            transferred: start.length,
            size: start.entry.size,
        }),
    )
}

/// Files up to this size are gathered in memory and written in one go.
pub const INLINE_FILE_BYTES: u64 = 1024 * 1024;

/// Where [`receive`] puts data chunks.
trait Chunks {
    /// Takes the next chunk; `false` means stop (the writer failed).
    async fn push(&mut self, chunk: bytes::Bytes) -> bool;
}

impl<S: Sink> Chunks for Assembler<S> {
    async fn push(&mut self, chunk: bytes::Bytes) -> bool {
        Assembler::push(self, chunk).await
    }
}

/// The chunks of a small file, kept until its trailer.
#[derive(Default)]
struct Gathered(Vec<bytes::Bytes>);

impl Chunks for Gathered {
    async fn push(&mut self, chunk: bytes::Bytes) -> bool {
        self.0.push(chunk);
        true
    }
}

/// Receives data events into `assembler` until the trailer; returns the
/// server's whole-file digest.
async fn receive(
    stream: &mut crate::client::ReadStream,
    assembler: &mut impl Chunks,
    remote: &str,
    length: u64,
    options: &DownloadOptions,
) -> std::result::Result<Digest, Failure> {
    let started = Instant::now();
    let mut received: u64 = 0;
    loop {
        match stream.next().await {
            Ok(Some(ReadEvent::Data(data))) => {
                received += data.len() as u64;
                if received > length {
                    return Err(protocol(remote, "more data than the header announced"));
                }
                let n = data.len() as u64;
                if !assembler.push(data).await {
                    return Err(Failure::WriterStopped);
                }
                options.progress.inc(n);
                if let Some(rate) = options.limit_rate {
                    pace(started, received, rate).await;
                }
            }
            Ok(Some(ReadEvent::End(digest))) => {
                if received != length {
                    return Err(protocol(remote, "less data than the header announced"));
                }
                // Read on to the end of the call (the status trailers).
                // Dropping a stream before its trailers makes HTTP/2 reset
                // it, and after 1,024 such resets h2 closes the connection,
                // failing every other transfer on it.
                return match stream.next().await {
                    Ok(None) => Ok(digest),
                    Ok(Some(_)) => Err(protocol(remote, "data after the trailer")),
                    Err(err) => Err(classify(err)),
                };
            }
            Ok(Some(ReadEvent::Start(_))) => return Err(protocol(remote, "a second header")),
            Ok(None) => {
                return Err(Failure::Keep(Error::Unreachable {
                    server: String::from("the server"),
                    reason: format!("the stream for {} ended early", shown(remote)),
                }));
            }
            Err(err) => return Err(classify(err)),
        }
    }
}

/// Downloads `remote` to standard output, verifying the digest at the end
/// (the bytes are out by then: a mismatch is reported, not undone). A
/// closed pipe ends the download successfully. A busy, draining or lost
/// server is tried again under the client's retry policy, continuing after
/// the bytes already written once the server's digest of them matches.
pub async fn download_to_stdout(
    client: &Client,
    remote: &str,
    options: &DownloadOptions,
) -> Result<Report> {
    let mut streak = client.retry_policy().streak();
    let mut sink = StdoutSink::default();
    let mut hasher = Hasher::new();
    let mut restarts = 0;
    loop {
        let before = hasher.bytes();
        let (returned_sink, returned_hasher, result) =
            stdout_attempt(client, remote, sink, hasher, options).await;
        (sink, hasher) = (returned_sink, returned_hasher);
        let failure = match result {
            Ok(size) => return Ok(stdout_report(remote, size, hasher)),
            Err(failure) => failure,
        };
        if hasher.bytes() > before {
            streak.progressed();
        }
        match failure {
            // Nothing is out yet: the file may simply be read again.
            Failure::Restart(reason) if hasher.bytes() == 0 && restarts + 1 < MAX_ATTEMPTS => {
                restarts += 1;
                (options.notify)(&format!("{}: {reason}; starting again", shown(remote)));
            }
            Failure::Restart(reason) => {
                return Err(Error::Changed {
                    path: format!("{} ({reason})", shown(remote)),
                });
            }
            Failure::WriterStopped => {
                return Err(Error::io(
                    "<stdout>",
                    io::Error::other("the writer stopped"),
                ));
            }
            Failure::Discard(err) | Failure::Keep(err) => {
                if !streak.wait(&shown(remote), &err, &*options.notify).await {
                    return Err(err);
                }
            }
        }
    }
}

/// One try of [`download_to_stdout`], continuing after the `hasher.bytes()`
/// bytes already written; hands the sink and the hasher back. It ends well
/// (with the file's size) when every byte is verified or when the reader
/// closed the pipe.
async fn stdout_attempt(
    client: &Client,
    remote: &str,
    sink: StdoutSink,
    hasher: Hasher,
    options: &DownloadOptions,
) -> (StdoutSink, Hasher, std::result::Result<u64, Failure>) {
    let offset = hasher.bytes();
    let mut stream = match client.read(remote, offset, None).await {
        Ok(stream) => stream,
        Err(err) => return (sink, hasher, Err(classify(err))),
    };
    let start = match stream.next().await {
        Ok(Some(ReadEvent::Start(start))) => start,
        Ok(_) => {
            let failure = protocol(remote, "the stream did not start with a header");
            return (sink, hasher, Err(failure));
        }
        Err(err) => return (sink, hasher, Err(classify(err))),
    };
    if offset > 0 && start.prefix_sha256 != Some(hasher.snapshot()) {
        let failure =
            Failure::Restart("the file changed on the server after part of it was written".into());
        return (sink, hasher, Err(failure));
    }
    options.progress_start(start.entry.size, offset);
    let mut assembler = Assembler::start(sink, hasher);
    let received = receive(&mut stream, &mut assembler, remote, start.length, options).await;
    let assembled = match assembler.finish().await {
        Ok(assembled) => assembled,
        Err(_) => {
            // The writer thread is gone and took the sink with it.
            return (
                StdoutSink::default(),
                Hasher::new(),
                Err(Failure::WriterStopped),
            );
        }
    };
    let (sink, hasher) = (assembled.sink, assembled.hasher);
    if let Err(err) = assembled.written {
        return (sink, hasher, Err(Failure::Keep(err)));
    }
    let size = start.entry.size;
    if sink.closed() {
        options.progress_done();
        return (sink, hasher, Ok(size));
    }
    let expected = match received {
        Ok(expected) => expected,
        Err(failure) => return (sink, hasher, Err(failure)),
    };
    options.progress_done();
    let actual = hasher.clone().finalize();
    if actual != expected {
        let failure = Failure::Discard(Error::ChecksumMismatch {
            path: shown(remote),
            expected,
            actual,
        });
        return (sink, hasher, Err(failure));
    }
    (sink, hasher, Ok(size))
}

fn stdout_report(remote: &str, size: u64, hasher: Hasher) -> Report {
    let transferred = hasher.bytes();
    Report {
        path: shown(remote),
        dest: PathBuf::from("-"),
        bytes: size,
        transferred,
        sha256: hasher.finalize(),
        outcome: Outcome::Downloaded,
        resumed_from: 0,
    }
}

/// Sleeps until `received` bytes are no faster than `rate` bytes/s.
async fn pace(started: Instant, received: u64, rate: u64) {
    let due = Duration::from_secs_f64(received as f64 / rate.max(1) as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
}

/// Sorts a failed call into restart, discard or keep, as the retry policy
/// judges it ([`AfterRead`]).
fn classify(err: Error) -> Failure {
    match AfterRead::of(&err) {
        AfterRead::Restart(reason) => Failure::Restart(reason.into()),
        AfterRead::Discard => Failure::Discard(err),
        AfterRead::Keep => Failure::Keep(err),
    }
}

fn protocol(remote: &str, reason: &str) -> Failure {
    Failure::Discard(Error::Protocol {
        path: shown(remote),
        reason: reason.to_string(),
    })
}

/// The remote path as messages show it: no leading `/`.
pub(crate) fn shown(remote: &str) -> String {
    let trimmed = remote.trim_start_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::io("<blocking task>", io::Error::other(err)))?
}
