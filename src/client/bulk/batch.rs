//! Small files many to a call: one `ReadMany` call brings hundreds of whole
//! files, each with the server's sha256, and they are written as a batch.
//!
//! Fetching a 4 KiB file through `Read` costs a stream, a hand-off to a
//! blocking thread on each side and about twenty system calls on the client
//! (part file, lock, fsync, rename, folder fsync, stats). For thousands of
//! small files that per-file cost is the whole run. Here a batch of files
//! costs one call, and each file costs its bytes and five calls: create the
//! part file, write it, rename it, close it, plus one `syncfs` and one
//! folder sync per folder for the whole batch.
//!
//! The guarantees are the single-file ones: each file is checked against
//! the sha256 the server computed while reading it consistently, lands in
//! `DEST.part` first and becomes `DEST` by a rename only once its data is on
//! disk (`syncfs` before the renames), and nothing is written outside `OUT`.
//! Only fresh destinations take this path; a destination or part file that
//! exists (compare, resume), a file the server calls too large or that
//! changed while read, and every path of a call that failed take the
//! single-file path of [`download`](crate::client::download).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::checksum::{Digest, Hasher};
use crate::client::bulk::confine::prepare_parent;
use crate::client::bulk::item::Item;
use crate::client::download::{self, DownloadOptions, Outcome, Report};
use crate::client::retry::{Cause, changed_while_read};
use crate::client::{Client, ManyResult};
use crate::entry::EntryInfo;
use crate::error::{Error, Result};
use crate::partfile::part_path;
use crate::partfile::rename_noreplace;

/// Largest file fetched in a batch (the server's cap for `ReadMany`).
pub(crate) const BATCH_FILE_BYTES: u64 = 1024 * 1024;
/// Most paths in one `ReadMany` call.
pub(crate) const MAX_BATCH_PATHS: usize = 512;
/// Fewest paths worth a call of their own when splitting work over `-j`.
pub(crate) const MIN_BATCH_PATHS: usize = 16;

/// A finished item, for the batch's caller.
pub(crate) type Finished = (Item, Result<Report>);

/// Splits `items` into those a batch can fetch and the rest. A batchable
/// item is small or of unknown size, has no rate limit, and has nothing at
/// its destination or part file (those need a comparison or a resume).
/// Each destination folder is read once instead of two `lstat`s per file;
/// whatever appears after this look is caught when the batch writes (the
/// part file is created with `O_EXCL`, the rename never replaces a file).
pub(crate) fn split_batchable(
    items: Vec<Item>,
    options: &DownloadOptions,
) -> (Vec<Item>, Vec<Item>) {
    if options.limit_rate.is_some() {
        return (Vec::new(), items);
    }
    let mut folders: HashMap<PathBuf, Option<HashSet<OsString>>> = HashMap::new();
    items.into_iter().partition(|item| {
        let small = item
            .known
            .is_none_or(|known| known.size <= BATCH_FILE_BYTES);
        let (Some(folder), Some(name)) = (item.dest.parent(), item.dest.file_name()) else {
            return false;
        };
        small
            && folders
                .entry(folder.to_path_buf())
                .or_insert_with(|| names_in(folder))
                .as_ref()
                .is_some_and(|names| {
                    let part = part_path(&item.dest);
                    !names.contains(name)
                        && part.file_name().is_some_and(|part| !names.contains(part))
                })
    })
}

/// The names in `folder` (none when it does not exist yet); `None` when it
/// cannot be read, so that its files take the single-file path.
fn names_in(folder: &Path) -> Option<HashSet<OsString>> {
    match std::fs::read_dir(folder) {
        Ok(entries) => entries
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<io::Result<HashSet<OsString>>>()
            .ok(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Some(HashSet::new()),
        Err(_) => None,
    }
}

/// Paths per call for `count` batchable files spread over `jobs` calls at
/// once.
pub(crate) fn batch_size(count: usize, jobs: usize) -> usize {
    count
        .div_ceil(jobs.max(1))
        .clamp(MIN_BATCH_PATHS, MAX_BATCH_PATHS)
}

/// Fetches `items` with one `ReadMany` call and sends each item's result on
/// `finished` as soon as it is known. A call broken by a busy, draining or
/// lost server is made again, after the policy's wait, for the items it had
/// not delivered (those it did are verified and in place); items the server
/// says to fetch alone go through the single-file path.
pub(crate) async fn fetch_batch(
    client: &Client,
    out: &Path,
    items: Vec<Item>,
    options: &DownloadOptions,
    finished: &mpsc::UnboundedSender<Finished>,
) {
    let call = BatchCall {
        client,
        out,
        options,
        finished,
    };
    let mut slots: Vec<Option<Item>> = items.into_iter().map(Some).collect();
    let mut single = Vec::new();
    let mut streak = client.retry_policy().streak();
    loop {
        // The items still unanswered: all of them at first, after a broken
        // call the ones it did not deliver.
        let open: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_some()).collect();
        let Some(&first) = open.first() else {
            break;
        };
        let paths = open
            .iter()
            .filter_map(|&i| slots[i].as_ref().map(|item| item.remote.clone()))
            .collect();
        let subject = match open.len() {
            1 => download::shown(slots[first].as_ref().map_or("", |item| &item.remote)),
            n => format!("{n} files"),
        };
        let answered_before = slots.len() - open.len();
        let failed = read_batch(&call, paths, &open, &mut slots, &mut single).await;
        let Err(err) = failed else {
            break;
        };
        if slots.iter().filter(|slot| slot.is_none()).count() > answered_before {
            streak.progressed();
        }
        if streak.wait(&subject, &err, &*options.notify).await {
            continue;
        }
        if Cause::of(&err).is_some() {
            // Retried for as long as the policy allows: the rest fail with
            // the last reason instead of waiting out a streak each.
            for item in slots.iter_mut().filter_map(Option::take) {
                let _ = finished.send((item, Err(err.clone_message())));
            }
        } else {
            tracing::debug!(%err, "ReadMany failed; fetching the rest one by one");
        }
        break;
    }
    single.extend(slots.into_iter().flatten());
    for item in single {
        let result = item.fetch(client, out, options).await;
        let _ = finished.send((item, result));
    }
}

/// What every `ReadMany` call of one batch shares.
#[derive(Clone, Copy)]
struct BatchCall<'a> {
    client: &'a Client,
    out: &'a Path,
    options: &'a DownloadOptions,
    finished: &'a mpsc::UnboundedSender<Finished>,
}

/// One `ReadMany` call for `paths` (the items at `open` in `slots`): each
/// delivered file is written in its message's batch and sent on
/// `finished`; files the call says to fetch alone go to `single`. An error
/// is the call's (broken or refused); the items it did not answer stay in
/// `slots`.
async fn read_batch(
    call: &BatchCall<'_>,
    paths: Vec<String>,
    open: &[usize],
    slots: &mut [Option<Item>],
    single: &mut Vec<Item>,
) -> Result<()> {
    let BatchCall {
        client,
        out,
        options,
        finished,
    } = *call;
    let mut stream = client.read_many(paths, BATCH_FILE_BYTES).await?;
    let mut writing: Option<tokio::task::JoinHandle<Vec<Landed>>> = None;
    let ended = loop {
        let answers = match stream.next().await {
            Ok(Some(answers)) => answers,
            Ok(None) => break Ok(()),
            Err(err) => break Err(err),
        };
        let mut received = Vec::new();
        for (index, answer) in answers {
            let Some(item) = open
                .get(index)
                .and_then(|&slot| slots.get_mut(slot))
                .and_then(Option::take)
            else {
                tracing::debug!(index, "ReadMany answered an unknown or repeated index");
                continue;
            };
            match answer {
                ManyResult::File {
                    entry,
                    data,
                    sha256,
                } => {
                    options.progress.inc(data.len() as u64);
                    received.push(Received {
                        item,
                        entry,
                        data,
                        sha256,
                    });
                }
                ManyResult::TooLarge(_) => single.push(item),
                ManyResult::Failed(err) if changed_while_read(&err) => {
                    single.push(item);
                }
                ManyResult::Failed(err) => {
                    let _ = finished.send((item, Err(err)));
                }
            }
        }
        if let Some(previous) = writing.take() {
            report(previous.await, single, finished);
        }
        let out = out.to_path_buf();
        writing = Some(tokio::task::spawn_blocking(move || {
            write_files(&out, received)
        }));
    };
    if let Some(previous) = writing.take() {
        report(previous.await, single, finished);
    }
    ended
}

/// Passes on what a writer thread did.
fn report(
    written: std::result::Result<Vec<Landed>, tokio::task::JoinError>,
    single: &mut Vec<Item>,
    finished: &mpsc::UnboundedSender<Finished>,
) {
    match written {
        Ok(written) => {
            for written in written {
                match written {
                    Landed::Done(item, result) => {
                        let _ = finished.send((item, result));
                    }
                    Landed::Elsewhere(item) => single.push(item),
                }
            }
        }
        Err(err) => tracing::error!(%err, "a batch writer thread failed"),
    }
}

/// A whole file from the server, not yet checked.
struct Received {
    item: Item,
    entry: EntryInfo,
    data: Bytes,
    sha256: Digest,
}

/// What became of one received file.
enum Landed {
    /// Landed (or failed for good).
    Done(Item, Result<Report>),
    /// Its part file appeared meanwhile: leave it to the single-file path,
    /// which locks and resumes.
    Elsewhere(Item),
}

/// A part file written and waiting for the batch's sync.
struct Pending {
    item: Item,
    part: PathBuf,
    file: File,
    report: Report,
}

/// Checks and writes one message's files: every part file first, then one
/// `syncfs` for all their data, then the renames, then one sync per folder.
fn write_files(out: &Path, received: Vec<Received>) -> Vec<Landed> {
    let mut written = Vec::with_capacity(received.len());
    let mut pending = Vec::with_capacity(received.len());
    let mut ready_folders: HashSet<PathBuf> = HashSet::new();
    for file in received {
        match write_part(out, &file, &mut ready_folders) {
            Ok(Some((part, handle))) => pending.push(Pending {
                report: Report {
                    bytes: file.data.len() as u64,
                    transferred: file.data.len() as u64,
                    reused: 0,
                    sha256: file.sha256,
                    outcome: Outcome::Downloaded,
                },
                item: file.item,
                part,
                file: handle,
            }),
            Ok(None) => written.push(Landed::Elsewhere(file.item)),
            Err(err) => written.push(Landed::Done(file.item, Err(err))),
        }
    }
    if let Some(first) = pending.first()
        && let Err(errno) = rustix::fs::syncfs(&first.file)
    {
        for pending in pending {
            let _ = std::fs::remove_file(&pending.part);
            let failure = Error::io(&pending.part, io::Error::from(errno));
            written.push(Landed::Done(pending.item, Err(failure)));
        }
        return written;
    }
    let mut renamed_in: HashSet<PathBuf> = HashSet::new();
    for pending in pending {
        drop(pending.file);
        match rename_noreplace(
            rustix::fs::CWD,
            pending.part.as_path(),
            pending.item.dest.as_path(),
        )
        .map_err(io::Error::from)
        {
            Ok(()) => {
                if let Some(folder) = pending.item.dest.parent() {
                    renamed_in.insert(folder.to_path_buf());
                }
                written.push(Landed::Done(pending.item, Ok(pending.report)));
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                // Something appeared at the destination since the plan:
                // the single-file path compares it (or refuses a symlink).
                let _ = std::fs::remove_file(&pending.part);
                written.push(Landed::Elsewhere(pending.item));
            }
            Err(err) => {
                let _ = std::fs::remove_file(&pending.part);
                let failure = Error::io(&pending.item.dest, err);
                written.push(Landed::Done(pending.item, Err(failure)));
            }
        }
    }
    for folder in renamed_in {
        let synced = File::open(&folder).and_then(|folder| folder.sync_all());
        if let Err(err) = synced {
            tracing::warn!(folder = %folder.display(), %err, "cannot sync the folder after renames");
        }
    }
    written
}

/// Verifies one file and writes it to a new part file. `None` when the part
/// file exists (another run, or a leftover to resume).
fn write_part(
    out: &Path,
    file: &Received,
    ready_folders: &mut HashSet<PathBuf>,
) -> Result<Option<(PathBuf, File)>> {
    let mut hasher = Hasher::new();
    hasher.update(&file.data);
    let actual = hasher.finalize();
    if actual != file.sha256 || file.data.len() as u64 != file.entry.size {
        return Err(Error::ChecksumMismatch {
            path: download::shown(&file.item.remote),
            expected: file.sha256,
            actual,
        });
    }
    let dest = &file.item.dest;
    let folder = dest.parent().map(Path::to_path_buf).unwrap_or_default();
    if !ready_folders.contains(&folder) {
        prepare_parent(out, dest)?;
        ready_folders.insert(folder);
    }
    let part = part_path(dest);
    let mut handle = match OpenOptions::new().write(true).create_new(true).open(&part) {
        Ok(handle) => handle,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(err) => return Err(Error::io(&part, err)),
    };
    if let Err(err) = handle.write_all(&file.data) {
        let _ = std::fs::remove_file(&part);
        // A full disk is named by the destination, which stays as it was.
        let named = match err.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => dest.as_path(),
            _ => part.as_path(),
        };
        return Err(Error::io(named, err));
    }
    Ok(Some((part, handle)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::hash_prefix;
    use crate::entry::EntryKind;

    fn received(out: &Path, name: &str, data: &[u8], claimed: Option<&[u8]>) -> Received {
        let sha256 = hash_prefix(claimed.unwrap_or(data), None)
            .expect("hash")
            .finalize();
        Received {
            item: Item {
                remote: format!("/{name}"),
                dest: out.join(name),
                known: None,
            },
            entry: EntryInfo {
                path: name.to_string(),
                kind: EntryKind::File,
                size: data.len() as u64,
                mtime_ns: 0,
                mode: 0o644,
                sha256: None,
            },
            data: Bytes::copy_from_slice(data),
            sha256,
        }
    }

    /// Good files land whole with no part file; a file whose bytes do not
    /// match the server's digest is a checksum mismatch and leaves nothing;
    /// a part file already there sends its file to the single-file path
    /// untouched.
    #[test]
    fn writes_verified_files_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        std::fs::write(out.join("taken.part"), b"resume me").expect("part");
        let written = write_files(
            out,
            vec![
                received(out, "a/good", b"hello", None),
                received(out, "a/bad", b"hello", Some(b"other")),
                received(out, "taken", b"data", None),
                received(out, "empty", b"", None),
            ],
        );
        let mut outcomes = std::collections::BTreeMap::new();
        for written in written {
            match written {
                Landed::Done(item, Ok(report)) => {
                    assert!(item.dest.is_file(), "{}", item.dest.display());
                    assert_eq!(report.outcome, Outcome::Downloaded);
                    outcomes.insert(item.remote, "ok".to_string());
                }
                Landed::Done(item, Err(err)) => {
                    outcomes.insert(item.remote, err.to_string());
                }
                Landed::Elsewhere(item) => {
                    outcomes.insert(item.remote, "elsewhere".to_string());
                }
            }
        }
        assert_eq!(outcomes["/a/good"], "ok");
        assert_eq!(outcomes["/empty"], "ok");
        assert_eq!(outcomes["/taken"], "elsewhere");
        assert!(
            outcomes["/a/bad"].contains("checksum mismatch"),
            "{outcomes:?}"
        );
        assert_eq!(std::fs::read(out.join("a/good")).expect("good"), b"hello");
        assert_eq!(std::fs::read(out.join("empty")).expect("empty"), b"");
        assert!(!out.join("a/bad").exists());
        assert!(!out.join("a/bad.part").exists());
        assert!(!out.join("a/good.part").exists());
        assert!(!out.join("taken").exists());
        assert_eq!(
            std::fs::read(out.join("taken.part")).expect("part"),
            b"resume me"
        );
    }

    /// A destination below a symlinked folder in OUT is refused.
    #[test]
    fn refuses_symlinked_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        std::os::unix::fs::symlink(elsewhere.path(), out.join("link")).expect("symlink");
        let written = write_files(out, vec![received(out, "link/file", b"x", None)]);
        assert!(matches!(written.as_slice(), [Landed::Done(_, Err(_))]));
        assert!(!elsewhere.path().join("file").exists());
        assert!(!elsewhere.path().join("file.part").exists());
    }

    /// A destination that appears between the plan and the rename is never
    /// replaced: the verified file goes to the single-file path (which
    /// compares or refuses), and the file there is left as it was.
    #[test]
    fn never_replaces_a_destination_that_appeared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        std::fs::write(out.join("late"), b"someone else's").expect("late");
        let written = write_files(out, vec![received(out, "late", b"server", None)]);
        assert!(matches!(written.as_slice(), [Landed::Elsewhere(_)]));
        assert_eq!(
            std::fs::read(out.join("late")).expect("late"),
            b"someone else's"
        );
        assert!(!out.join("late.part").exists());
    }

    /// Only small files with nothing at the destination or its part file
    /// are batched; a folder that does not exist yet holds nothing.
    #[test]
    fn splits_by_what_each_folder_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        std::fs::create_dir(out.join("a")).expect("a");
        std::fs::write(out.join("a/there"), b"x").expect("there");
        std::fs::write(out.join("a/resume.part"), b"x").expect("part");
        let item = |name: &str, size: u64| Item {
            remote: format!("/{name}"),
            dest: out.join(name),
            known: Some(crate::client::download::Known { size, sha256: None }),
        };
        let options = DownloadOptions {
            force: false,
            progress: indicatif::ProgressBar::hidden(),
            limit_rate: None,
            notify: std::sync::Arc::new(|_: &str| {}),
            batch: true,
            delta: true,
        };
        let items = vec![
            item("a/new", 10),
            item("a/there", 10),
            item("a/resume", 10),
            item("a/big", BATCH_FILE_BYTES + 1),
            item("b/c/new", 10),
        ];
        let (batched, single) = split_batchable(items.clone(), &options);
        let names = |items: &[Item]| items.iter().map(|i| i.remote.clone()).collect::<Vec<_>>();
        assert_eq!(names(&batched), ["/a/new", "/b/c/new"]);
        assert_eq!(names(&single), ["/a/there", "/a/resume", "/a/big"]);
        let limited = DownloadOptions {
            limit_rate: Some(1024),
            ..options
        };
        let (batched, single) = split_batchable(items, &limited);
        assert!(batched.is_empty() && single.len() == 5);
    }

    #[test]
    fn batch_sizes_spread_over_jobs() {
        assert_eq!(batch_size(10_000, 8), MAX_BATCH_PATHS);
        assert_eq!(batch_size(300, 8), 38);
        assert_eq!(batch_size(3, 8), MIN_BATCH_PATHS);
    }
}
