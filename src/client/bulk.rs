//! Many files in one run: a plan of (remote path, local destination) pairs,
//! fetched `-j` at a time over the client's one HTTP/2 connection, each with
//! the full single-file treatment of [`download`](crate::client::download).
//!
//! The server can never make the client write outside its output folder:
//! every destination is `OUT` joined with a relative path checked component
//! by component ([`confine`]), and no folder on the way may be a symlink.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::checksum::Digest;
use crate::client::download::{self, DownloadOptions, Known, Report};
use crate::client::{Client, batch};
use crate::entry::EntryKind;
use crate::error::{Error, Result};

/// Transfers at once when `-j` is not given.
pub const DEFAULT_JOBS: usize = 8;
/// The most transfers at once: every one is a call on the one connection,
/// and `fetchd serve` refuses calls beyond its `--max-streams-per-connection`
/// (256 by default) instead of queueing them. More would only fail.
pub const MAX_JOBS: usize = 256;

/// One file to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The path on the server.
    pub remote: String,
    /// Where it goes.
    pub dest: PathBuf,
    /// Size (and digest) from a listing, when there was one.
    pub known: Option<Known>,
}

/// What a batch did, for the summary line.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Files downloaded.
    pub downloaded: u64,
    /// Files skipped as identical.
    pub skipped: u64,
    /// Files that failed.
    pub failed: u64,
    /// Bytes received over the network.
    pub transferred: u64,
    /// Wall time of the batch.
    pub elapsed: Duration,
}

impl Summary {
    /// `fetchd: 297 files, 12.3 MB in 0.42 s (29.3 MB/s); 0 skipped, 3 failed`
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "{} files ({} downloaded, {} skipped, {} failed), {} received in {:.2} s ({}/s)",
            self.downloaded + self.skipped + self.failed,
            self.downloaded,
            self.skipped,
            self.failed,
            human_bytes(self.transferred),
            secs,
            human_bytes((self.transferred as f64 / secs) as u64),
        )
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `out` joined with the server-supplied relative path `rel`, refusing
/// anything that could land outside `out`: absolute paths, `..`, empty or
/// NUL-bearing names.
pub fn confine(out: &Path, rel: &str) -> Result<PathBuf> {
    let refuse = |reason: &str| {
        Err(Error::UnsafeDestination {
            path: PathBuf::from(rel),
            reason: format!("{reason}; it would land outside {}", out.display()),
        })
    };
    if rel.is_empty() || rel.contains('\0') {
        return refuse("empty name or NUL byte");
    }
    let mut dest = out.to_path_buf();
    let mut depth = 0;
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(name) => {
                dest.push(name);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir => return refuse("it contains `..`"),
            Component::RootDir | Component::Prefix(_) => return refuse("it is absolute"),
        }
    }
    if depth == 0 {
        return refuse("it names the output folder itself");
    }
    Ok(dest)
}

/// Creates the folders between `out` and `dest`, refusing to go through a
/// symlink (which could point anywhere) or a file.
pub fn prepare_parent(out: &Path, dest: &Path) -> Result<()> {
    let Ok(rel) = dest.strip_prefix(out) else {
        return Err(Error::UnsafeDestination {
            path: dest.to_path_buf(),
            reason: format!("not inside {}", out.display()),
        });
    };
    let mut current = out.to_path_buf();
    let mut components: Vec<_> = rel.components().collect();
    components.pop(); // the file itself
    for component in components {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Error::UnsafeDestination {
                    path: current,
                    reason: "it is a symlink, which could lead anywhere".into(),
                });
            }
            Ok(_) => {
                return Err(Error::UnsafeDestination {
                    path: current,
                    reason: "it exists and is not a folder".into(),
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::create_dir(&current) {
                    Ok(()) => {}
                    // Another job made it between the look and the mkdir:
                    // fine if it is a real folder, checked like any other.
                    Err(err)
                        if err.kind() == std::io::ErrorKind::AlreadyExists
                            && std::fs::symlink_metadata(&current)
                                .is_ok_and(|meta| meta.is_dir()) => {}
                    Err(err) => return Err(Error::io(&current, err)),
                }
            }
            Err(err) => return Err(Error::io(&current, err)),
        }
    }
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.file_type().is_symlink() => Err(Error::UnsafeDestination {
            path: dest.to_path_buf(),
            reason: "it is a symlink; remove it to download here".into(),
        }),
        _ => Ok(()),
    }
}

/// The plan for `-r DIR`: every file below `dir` at `out/<path below dir>`,
/// and every folder (empty ones too) created. Returns the files. When
/// `with_digests`, the listing carries each file's sha256, so files already
/// present and identical are skipped without a call each: each such file's
/// local copy goes to `checks` as soon as it is listed.
///
/// A listing broken off by a busy, draining or lost server is made again
/// under the client's retry policy (each retry one notice to `notify`);
/// the checks the broken one queued are voided.
pub async fn plan_tree(
    client: &Client,
    dir: &str,
    out: &Path,
    with_digests: bool,
    checks: &mut LocalChecks,
    notify: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Item>> {
    let mut streak = client.retry_policy().streak();
    loop {
        let first = checks.queued();
        match list_tree(client, dir, out, with_digests, checks).await {
            Ok(items) => return Ok(items),
            Err(err) => {
                checks.void_since(first);
                if !streak.wait(&download::shown(dir), &err, notify).await {
                    return Err(err);
                }
            }
        }
    }
}

/// [`plan_tree`]'s listing.
async fn list_tree(
    client: &Client,
    dir: &str,
    out: &Path,
    with_digests: bool,
    checks: &mut LocalChecks,
) -> Result<Vec<Item>> {
    let base = dir.trim_matches('/');
    let mut entries = client.list_entries(dir, true, with_digests).await?;
    let mut items = Vec::new();
    let mut saw_any = false;
    while let Some(entry) = entries.next().await? {
        saw_any = true;
        let rel = if base.is_empty() {
            entry.path.as_str()
        } else if entry.path == base {
            // `-r FILE`: the listing is the file itself.
            entry.path.rsplit('/').next().unwrap_or(&entry.path)
        } else {
            match entry
                .path
                .strip_prefix(base)
                .and_then(|rest| rest.strip_prefix('/'))
            {
                Some(rest) => rest,
                None => {
                    return Err(Error::Protocol {
                        path: entry.path.clone(),
                        reason: format!("listed under {dir} but not below it"),
                    });
                }
            }
        };
        let dest = confine(out, rel)?;
        match entry.kind {
            EntryKind::Dir => {
                prepare_parent(out, &dest.join("x"))?;
            }
            EntryKind::File => {
                let item = Item {
                    remote: entry.path.clone(),
                    dest,
                    known: Some(Known {
                        size: entry.size,
                        sha256: entry.sha256,
                    }),
                };
                checks.submit(&item);
                items.push(item);
            }
            // A symlink inside the tree: fetch what it points to, like
            // `rsync -L`; one pointing outside the root fails on its own.
            EntryKind::Symlink => items.push(Item {
                remote: entry.path.clone(),
                dest,
                known: None,
            }),
        }
    }
    if !saw_any {
        std::fs::create_dir_all(out).map_err(|err| Error::io(out, err))?;
    }
    Ok(items)
}

/// Fetches every item, `jobs` at a time; calls `done` as each one finishes
/// (in completion order) and returns the summary. Items that `checks`
/// found identical locally are reported skipped first.
pub async fn fetch_all(
    client: &Client,
    out: &Path,
    items: Vec<Item>,
    checks: LocalChecks,
    jobs: usize,
    options: &DownloadOptions,
    mut done: impl FnMut(&Item, &Result<Report>),
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    let (identical, items) = if options.force {
        (Vec::new(), items)
    } else {
        checks.split(items).await
    };
    for (item, report) in identical {
        summary.skipped += 1;
        done(&item, &Ok(report));
    }
    // Small fresh files go many to a call; the rest one call each. Every
    // job holds one of `jobs` slots while it runs.
    let (batched, single) = batch::split_batchable(items, options);
    let jobs = jobs.clamp(1, MAX_JOBS);
    let slots = Arc::new(Semaphore::new(jobs));
    let (finished, mut results) = mpsc::unbounded_channel::<batch::Finished>();
    let mut running = JoinSet::new();
    let per_call = batch::batch_size(batched.len(), jobs);
    let mut batched = batched.into_iter();
    loop {
        let group: Vec<Item> = batched.by_ref().take(per_call).collect();
        if group.is_empty() {
            break;
        }
        let (client, options, out) = (client.clone(), options.clone(), out.to_path_buf());
        let (slots, finished) = (Arc::clone(&slots), finished.clone());
        running.spawn(async move {
            let _slot = slots.acquire_owned().await;
            batch::fetch_batch(&client, &out, group, &options, &finished).await;
        });
    }
    for item in single {
        let (client, options, out) = (client.clone(), options.clone(), out.to_path_buf());
        let (slots, finished) = (Arc::clone(&slots), finished.clone());
        running.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let result = fetch_one(&client, &out, &item, &options).await;
            let _ = finished.send((item, result));
        });
    }
    // The jobs hold the only senders left: the loop ends when all are done.
    drop(finished);
    while let Some((item, result)) = results.recv().await {
        match &result {
            Ok(report) if report.outcome == download::Outcome::Skipped => summary.skipped += 1,
            Ok(report) => {
                summary.downloaded += 1;
                summary.transferred += report.transferred;
            }
            Err(_) => summary.failed += 1,
        }
        done(&item, &result);
    }
    while let Some(joined) = running.join_next().await {
        if let Err(err) = joined {
            summary.failed += 1;
            tracing::error!(%err, "a download task failed");
        }
    }
    summary.elapsed = started.elapsed();
    summary
}

/// One item through the single-file path, its folders made first.
pub async fn fetch_one(
    client: &Client,
    out: &Path,
    item: &Item,
    options: &DownloadOptions,
) -> Result<Report> {
    prepare_parent(out, &item.dest)?;
    download::download_file(client, &item.remote, &item.dest, item.known, options).await
}

/// Threads that hash local copies when sorting out identical files.
const LOCAL_HASH_THREADS: usize = 2;

/// A check queued for a [`LocalChecks`] thread: its place in the queue, a
/// destination and what the listing said it should hold.
type Check = (usize, PathBuf, Known);

/// What a check found: its place in the queue, the destination and its
/// digest, for each destination that matched.
type Found = Vec<(usize, PathBuf, Digest)>;

/// Checks of local copies against the digests of a listing, on a few
/// blocking threads that start with the first file listed: a rerun over an
/// unchanged tree hashes its local files while the listing still streams
/// in, not after it.
#[derive(Debug, Default)]
pub struct LocalChecks {
    queue: Option<std::sync::mpsc::Sender<Check>>,
    queued: usize,
    /// Places of checks whose items did not make it into the plan.
    void: Vec<std::ops::Range<usize>>,
    threads: Vec<tokio::task::JoinHandle<Found>>,
}

impl LocalChecks {
    /// Queues a check of `item`'s destination, when the listing gave the
    /// file's digest. Items are later matched to their checks by order:
    /// submit every item that has a digest, in the order of the plan.
    pub fn submit(&mut self, item: &Item) {
        let Some(known) = item.known.filter(|known| known.sha256.is_some()) else {
            return;
        };
        let queue = self.queue.get_or_insert_with(|| {
            let (queue, checks) = std::sync::mpsc::channel::<Check>();
            let checks = Arc::new(Mutex::new(checks));
            self.threads = (0..LOCAL_HASH_THREADS)
                .map(|_| {
                    let checks = Arc::clone(&checks);
                    tokio::task::spawn_blocking(move || {
                        let mut found = Vec::new();
                        loop {
                            let next = checks.lock().unwrap_or_else(PoisonError::into_inner).recv();
                            let Ok((place, dest, known)) = next else {
                                break;
                            };
                            if let Some(digest) = local_match(&dest, known) {
                                found.push((place, dest, digest));
                            }
                        }
                        found
                    })
                })
                .collect();
            queue
        });
        // The threads only stop once the queue is dropped.
        let _ = queue.send((self.queued, item.dest.clone(), known));
        self.queued += 1;
    }

    /// Forgets the checks queued since `place` (what [`queued`](Self::queued)
    /// said before): their items are not in the plan after all.
    fn void_since(&mut self, place: usize) {
        self.void.push(place..self.queued);
    }

    /// How many checks were queued so far.
    fn queued(&self) -> usize {
        self.queued
    }

    /// Waits for the queued checks and separates the items whose
    /// destination holds the file the listing described (same size and
    /// sha256) from the rest.
    async fn split(mut self, items: Vec<Item>) -> (Vec<(Item, Report)>, Vec<Item>) {
        drop(self.queue.take());
        let mut matched: Vec<Option<(PathBuf, Digest)>> = vec![None; self.queued];
        for thread in self.threads {
            // A thread that panicked found nothing: its files are fetched.
            for (place, dest, digest) in thread.await.unwrap_or_default() {
                matched[place] = Some((dest, digest));
            }
        }
        let mut places = matched
            .into_iter()
            .enumerate()
            .filter(|(place, _)| !self.void.iter().any(|void| void.contains(place)))
            .map(|(_, found)| found);
        let mut same = Vec::new();
        let mut rest = Vec::new();
        for item in items {
            let Some(listed) = item.known.and_then(|known| known.sha256) else {
                rest.push(item);
                continue;
            };
            match places.next().flatten() {
                // The destination too, in case the plan was not submitted
                // in order: a mismatch only costs a download.
                Some((dest, local)) if local == listed && dest == item.dest => {
                    let report = skipped_report(&item, local);
                    same.push((item, report));
                }
                _ => rest.push(item),
            }
        }
        (same, rest)
    }
}

/// The local digest of `dest` when it is a regular file with the listed
/// size and sha256. One path walk: the open refuses a symlink and does not
/// wait on a FIFO, and the type and size come from the open file.
fn local_match(dest: &Path, known: Known) -> Option<Digest> {
    use rustix::fs::{Mode, OFlags};
    let expected = known.sha256?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = std::fs::File::from(rustix::fs::open(dest, flags, Mode::empty()).ok()?);
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() != known.size {
        return None;
    }
    let local = crate::checksum::hash_prefix(file, Some(known.size + 1))
        .ok()?
        .finalize();
    (local == expected).then_some(local)
}

/// The report of a file skipped because its local copy is identical.
fn skipped_report(item: &Item, sha256: Digest) -> Report {
    Report {
        path: item.remote.trim_start_matches('/').to_string(),
        dest: item.dest.clone(),
        bytes: item.known.map_or(0, |known| known.size),
        transferred: 0,
        sha256,
        outcome: download::Outcome::Skipped,
        resumed_from: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server-supplied names cannot climb out of the output folder.
    #[test]
    fn confine_refuses_escapes() {
        let out = Path::new("out");
        assert_eq!(
            confine(out, "a/b.txt").expect("ok"),
            Path::new("out/a/b.txt")
        );
        assert_eq!(confine(out, "./a").expect("ok"), Path::new("out/a"));
        for hostile in ["../x", "a/../../x", "/etc/passwd", "", ".", "a/\0b", "a/.."] {
            assert!(
                confine(out, hostile).is_err(),
                "{hostile:?} must be refused"
            );
        }
    }

    /// Jobs preparing the same new folders at once all succeed: a folder
    /// another job made between the look and the mkdir is fine.
    #[test]
    fn concurrent_jobs_share_new_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().to_path_buf();
        for round in 0..20 {
            let threads: Vec<_> = (0..8)
                .map(|job| {
                    let out = out.clone();
                    std::thread::spawn(move || {
                        prepare_parent(&out, &out.join(format!("r{round}/a/b/f{job}")))
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("join").expect("prepare_parent");
            }
            assert!(out.join(format!("r{round}/a/b")).is_dir());
        }
    }

    /// A symlink inside the output folder is never written through.
    #[test]
    fn symlinked_folders_in_out_are_refused() {
        let out = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(elsewhere.path(), out.path().join("link")).expect("symlink");
        let dest = confine(out.path(), "link/file").expect("confined");
        let err = prepare_parent(out.path(), &dest).expect_err("refused");
        assert!(err.to_string().contains("symlink"), "{err}");
        std::os::unix::fs::symlink("/etc/passwd", out.path().join("f")).expect("symlink");
        let dest = confine(out.path(), "f").expect("confined");
        assert!(prepare_parent(out.path(), &dest).is_err());
        // A normal nested path is created.
        let dest = confine(out.path(), "a/b/c.txt").expect("confined");
        prepare_parent(out.path(), &dest).expect("created");
        assert!(out.path().join("a/b").is_dir());
    }

    fn digest(bytes: &[u8]) -> Digest {
        let mut hasher = crate::checksum::Hasher::new();
        hasher.update(bytes);
        hasher.finalize()
    }

    /// Only a regular file with the listed size and digest counts as
    /// identical (and a FIFO does not hang the check); checks of a plan that failed are not matched to the
    /// items planned after it.
    #[tokio::test]
    async fn local_checks_skip_only_identical_files() {
        let out = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(out.path().join(name), bytes).expect("write");
        };
        write("same", b"listed bytes");
        write("changed", b"listed bytez");
        write("longer", b"listed bytes!");
        std::os::unix::fs::symlink(out.path().join("same"), out.path().join("link"))
            .expect("symlink");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            out.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        let item = |name: &str| Item {
            remote: format!("/{name}"),
            dest: out.path().join(name),
            known: Some(Known {
                size: 12,
                sha256: Some(digest(b"listed bytes")),
            }),
        };
        let mut checks = LocalChecks::default();
        // A plan that failed after queueing two checks.
        let first = checks.queued();
        checks.submit(&item("same"));
        checks.submit(&item("changed"));
        checks.void_since(first);
        let unlisted = Item {
            known: None,
            ..item("same")
        };
        let items = vec![
            item("changed"),
            unlisted,
            item("same"),
            item("longer"),
            item("link"),
            item("fifo"),
            item("missing"),
        ];
        for item in &items {
            checks.submit(item);
        }
        let (same, rest) = checks.split(items).await;
        let same: Vec<_> = same
            .iter()
            .map(|(item, report)| (&item.remote, report))
            .collect();
        assert_eq!(same.len(), 1, "{same:?}");
        assert_eq!(same[0].0, "/same");
        assert_eq!(same[0].1.outcome, download::Outcome::Skipped);
        assert_eq!(same[0].1.sha256, digest(b"listed bytes"));
        let rest: Vec<_> = rest.iter().map(|item| item.remote.as_str()).collect();
        assert_eq!(
            rest,
            ["/changed", "/same", "/longer", "/link", "/fifo", "/missing"]
        );
    }
}
