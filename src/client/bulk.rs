//! Many files in one run: a plan of (remote path, local destination) pairs,
//! fetched `-j` at a time over the client's one HTTP/2 connection, each with
//! the full single-file treatment of [`download`](crate::client::download).
//!
//! The server can never make the client write outside its output folder:
//! every destination is `OUT` joined with a relative path checked component
//! by component ([`confine`]), and no folder on the way may be a symlink.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

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
/// present and identical are skipped without a call each.
pub async fn plan_tree(
    client: &Client,
    dir: &str,
    out: &Path,
    with_digests: bool,
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
            EntryKind::File => items.push(Item {
                remote: entry.path.clone(),
                dest,
                known: Some(Known {
                    size: entry.size,
                    sha256: entry.sha256,
                }),
            }),
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
/// (in completion order) and returns the summary.
pub async fn fetch_all(
    client: &Client,
    out: &Path,
    items: Vec<Item>,
    jobs: usize,
    options: &DownloadOptions,
    mut done: impl FnMut(&Item, &Result<Report>),
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    let (identical, items) = if options.force {
        (Vec::new(), items)
    } else {
        split_identical(items).await
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

/// Separates the items whose destination already holds the file the
/// listing described (same size and sha256) from the rest, hashing the
/// local candidates on a few blocking threads instead of a task each.
async fn split_identical(items: Vec<Item>) -> (Vec<(Item, Report)>, Vec<Item>) {
    let (candidates, mut rest): (Vec<Item>, Vec<Item>) = items
        .into_iter()
        .partition(|item| item.known.is_some_and(|known| known.sha256.is_some()));
    if candidates.is_empty() {
        return (Vec::new(), rest);
    }
    let per_thread = candidates.len().div_ceil(LOCAL_HASH_THREADS);
    let mut threads = JoinSet::new();
    let mut candidates = candidates.into_iter();
    loop {
        let share: Vec<Item> = candidates.by_ref().take(per_thread).collect();
        if share.is_empty() {
            break;
        }
        threads.spawn_blocking(move || {
            share
                .into_iter()
                .map(|item| {
                    let report = identical_report(&item);
                    (item, report)
                })
                .collect::<Vec<_>>()
        });
    }
    let mut identical = Vec::new();
    while let Some(joined) = threads.join_next().await {
        for (item, report) in joined.unwrap_or_default() {
            match report {
                Some(report) => identical.push((item, report)),
                None => rest.push(item),
            }
        }
    }
    (identical, rest)
}

/// A "skipped" report when `item.dest` has the listed size and sha256.
fn identical_report(item: &Item) -> Option<Report> {
    let known = item.known?;
    let expected = known.sha256?;
    let meta = std::fs::symlink_metadata(&item.dest).ok()?;
    if !meta.is_file() || meta.len() != known.size {
        return None;
    }
    let file = std::fs::File::open(&item.dest).ok()?;
    let local = crate::checksum::hash_prefix(file, Some(known.size + 1))
        .ok()?
        .finalize();
    (local == expected).then(|| Report {
        path: item.remote.trim_start_matches('/').to_string(),
        dest: item.dest.clone(),
        bytes: known.size,
        transferred: 0,
        sha256: local,
        outcome: download::Outcome::Skipped,
        resumed_from: 0,
    })
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
}
