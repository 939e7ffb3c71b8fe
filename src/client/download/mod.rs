//! One file from the server: to a local file (verified, atomic, resumable,
//! skipped when already identical) or to stdout (verified at the end).
//!
//! A download to a file goes: `Stat` -> skip check -> open `DEST.part` ->
//! `Read` from the part's length -> compare the server's prefix digest with
//! the part's -> assemble (write + hash) -> compare whole-file digests ->
//! commit (sync, rename, sync folder). A stale part (prefix mismatch, or the
//! server's file is now shorter) or a file that changed during the read
//! restarts from zero, at most [`MAX_ATTEMPTS`] times in all.
//!
//! - [`delta`]: a download as a delta against an older DEST: reused
//!   chunks copied, the rest fetched as ranges.
//! - [`report`]: the options and what a download reports.
//! - [`receive`]: one `Read` stream into a sink, and what a failure means.
//! - [`small`]: the small-file path (gathered in memory, one blocking write).
//! - [`stdout`]: a download to standard output.

mod delta;
mod receive;
mod report;
mod small;
mod stdout;

use std::io;
use std::path::Path;

use tonic::Code;

use crate::checksum::{self, Digest, Hasher};
use crate::client::Client;
use crate::client::assemble::Assembler;
use crate::entry::EntryKind;
use crate::error::{Error, Result};
use crate::partfile::PartFile;
use crate::read_stream::ReadEvent;
use delta::Delta;
pub(crate) use receive::blocking;
use receive::{Failure, Fetched, Gathered, classify, protocol, receive};
pub(crate) use report::shown;
pub(crate) use report::{DownloadOptions, Known, MAX_ATTEMPTS, Notify, Outcome, Report};
pub(crate) use small::INLINE_FILE_BYTES;
use small::{append_hashed, download_small};
pub(crate) use stdout::download_to_stdout;

/// Downloads `remote` to the local file `dest`. `known` (from a listing)
/// saves a `Stat` when `dest` already exists; when it does not, the first
/// call is the `Read` itself.
///
/// A busy, draining or lost server is tried again under the client's
/// [retry policy](crate::client::retry): each try continues from the bytes
/// `DEST.part` already holds (the server's prefix digest checks them, the
/// final whole-file check covers everything), and every try that added
/// bytes starts a new streak.
pub(crate) async fn download_file(
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
    let mut server_size = known.map(|known| known.size);
    let mut scanned = None;
    if !options.force {
        match skip_if_identical(client, remote, dest, known, options.delta).await? {
            Local::Identical(report) => return Ok(report),
            Local::Differs { size, cut } => {
                server_size = Some(size);
                scanned = cut;
            }
            Local::Absent => {}
        }
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
    if options.delta
        && let Some(size) = server_size
        && delta::worth_trying(dest, size, &part)
    {
        match delta::download_delta(client, remote, dest, part, size, scanned, options).await {
            Delta::Done {
                part,
                sha256,
                size,
                fetched,
                reused,
            } => {
                blocking(move || part.commit()).await?;
                options.progress_done();
                return Ok(Report {
                    bytes: size,
                    transferred: fetched,
                    reused,
                    sha256,
                    outcome: Outcome::Downloaded,
                });
            }
            Delta::Whole(mut returned, reason) => {
                if let Some(reason) = reason {
                    (options.notify)(&format!(
                        "{}: {reason}; downloading it whole",
                        shown(remote)
                    ));
                }
                part = blocking(move || returned.truncate(0).map(|()| returned)).await?;
            }
            Delta::Failed(returned, err) => {
                // What the delta wrote is a prefix of the server's file: a
                // later try resumes from it.
                options.progress_abandon();
                if returned.is_empty() {
                    blocking(move || returned.discard()).await?;
                }
                return Err(err);
            }
            Delta::Lost(err) => {
                options.progress_abandon();
                return Err(err);
            }
        }
    }
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
                    bytes: size,
                    transferred,
                    reused: 0,
                    sha256: digest,
                    outcome: Outcome::Downloaded,
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
        reason: None,
    })
}

/// What the destination holds against the server's file.
enum Local {
    /// The server's file: nothing to download.
    Identical(Report),
    /// A regular file that differs from the server's file of `size` bytes
    /// (`cut` already when it was read for a delta).
    Differs {
        size: u64,
        cut: Option<Box<delta::Scanned>>,
    },
    /// No regular file.
    Absent,
}

/// Whether `dest` already holds the server's file (then a "skipped"
/// report). With `delta`, a large DEST of the server's size is first cut
/// against the server's manifest: a group that differs says it is not the
/// server's file without a sha256 of it, and the cut serves the delta.
async fn skip_if_identical(
    client: &Client,
    remote: &str,
    dest: &Path,
    known: Option<Known>,
    delta: bool,
) -> Result<Local> {
    let local_size = match std::fs::metadata(dest) {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return Ok(Local::Absent),
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
        return Ok(Local::Differs {
            size: known.size,
            cut: None,
        });
    }
    let part = crate::partfile::part_path(dest);
    let scan = if delta {
        delta::scan_local(client, remote, dest, known.size, &part).await
    } else {
        None
    };
    // A cut that matches every group still needs the sha256 to decide.
    let (expected, cut) = match scan {
        Some(delta::Scan::Differs(scanned)) => {
            return Ok(Local::Differs {
                size: known.size,
                cut: Some(Box::new(scanned)),
            });
        }
        Some(delta::Scan::Alike(scanned)) => {
            (Some(scanned.manifest.sha256), Some(Box::new(scanned)))
        }
        None => (known.sha256, None),
    };
    Ok(
        match matching_local_copy(client, remote, dest, expected).await? {
            Some(digest) => Local::Identical(Report {
                bytes: known.size,
                transferred: 0,
                reused: 0,
                sha256: digest,
                outcome: Outcome::Skipped,
            }),
            None => Local::Differs {
                size: known.size,
                cut,
            },
        },
    )
}

/// The digest of `dest` when it equals the server's file (whose digest is
/// asked for unless already `known`).
pub(crate) async fn matching_local_copy(
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
        let received = receive(
            client,
            &mut stream,
            &mut gathered,
            remote,
            start.length,
            options,
        )
        .await;
        let chunks = gathered.0;
        let written = tokio::task::spawn_blocking(move || {
            let (mut part, mut hasher) = (part, hasher);
            let written = append_hashed(&mut part, &mut hasher, &chunks);
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
        let mut assembler = Assembler::start(part, hasher, start.entry.size);
        let received = receive(
            client,
            &mut stream,
            &mut assembler,
            remote,
            start.length,
            options,
        )
        .await;
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
