//! The hashing pool: local copies checked against a listing's digests on a
//! few blocking threads while the listing streams in, so that a rerun over
//! an unchanged tree skips its files without a call each.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::checksum::Digest;
use crate::client::bulk::item::Item;
use crate::client::download::{self, Known, Report};

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
pub(crate) struct LocalChecks {
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
    pub(crate) fn submit(&mut self, item: &Item) {
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
    pub(crate) fn void_since(&mut self, place: usize) {
        self.void.push(place..self.queued);
    }

    /// How many checks were queued so far.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Waits for the queued checks and separates the items whose
    /// destination holds the file the listing described (same size and
    /// sha256) from the rest.
    pub(crate) async fn split(mut self, items: Vec<Item>) -> (Vec<(Item, Report)>, Vec<Item>) {
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
        bytes: item.known.map_or(0, |known| known.size),
        transferred: 0,
        reused: 0,
        sha256,
        outcome: download::Outcome::Skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
