//! The upload writer: per `Write`, a writer thread and a hasher thread, each
//! fed every chunk through a small bounded channel; the writer fills a
//! hidden temporary file beside the target.
//!
//! [`Upload::begin`] resolves the target in the sandbox (creating missing
//! folders inside the root), refuses an existing file unless `force`, and
//! creates `.NAME.fetchd-upload-XXXXXXXXXXXXXXXX` (16 random hex digits) in
//! the target's folder, so the final rename is atomic. The network loop
//! checks sizes as chunks arrive ([`Upload::push`]): past the declared size
//! or past the server's limit it fails at once. The writer thread appends
//! every chunk while the hasher thread hashes it (the two overlap on two
//! cores; with hashing on the writer thread, and on the client's reader
//! thread, a 1 GiB upload took about 1.8 times as long); at the end
//! ([`Upload::finish`]) the digest is compared, and only then does the
//! writer sync the file, rename it onto the target and sync the folder.
//! Without `force` the rename is `renameat2(RENAME_NOREPLACE)` (or, where
//! the filesystem lacks it, `link` + `unlink`), so a file created at the
//! target while the upload ran is never replaced.
//!
//! Whatever ends an upload early — a mismatch, a limit, a client that goes
//! away, a dropped [`Upload`] — removes the temporary file ([`TempFile`]'s
//! `Drop`). Temporary files a crash left behind are removed by
//! [`sweep_leftovers`] when a server that accepts uploads starts. A live
//! upload holds an exclusive `flock` on its temporary file, and the sweep
//! skips locked files, so a second server on the same root does not remove
//! the first one's uploads in flight.

use std::fs::File;
use std::hash::{BuildHasher, Hasher as _};
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};
use rustix::io::Errno;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::checksum::{Digest, Hasher};
use crate::entry::EntryKind;
use crate::error::{Error, Result};
use crate::sandbox::{MAX_NAME_BYTES, RequestPath, Root};

/// Chunks queued between the network loop and each of the writer and hasher
/// threads: memory per upload is about this many chunks plus the HTTP/2
/// stream window.
pub const WRITE_QUEUE_CHUNKS: usize = 4;
/// Default for `--max-upload-size`: 16 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 16 << 30;
/// What marks a temporary upload file: `.NAME` + this + 16 hex digits.
pub const TEMP_MARKER: &str = ".fetchd-upload-";
/// Hex digits of randomness at the end of a temporary file's name.
const TEMP_RANDOM_DIGITS: usize = 16;
/// Most entries [`sweep_leftovers`] looks at.
pub const MAX_SWEEP_ENTRIES: usize = 1_000_000;
/// Names tried before creating a temporary file gives up.
const TEMP_ATTEMPTS: usize = 16;

/// What a client asked to store.
#[derive(Clone, Debug)]
pub struct UploadSpec {
    /// The target, relative to the root.
    pub path: RequestPath,
    /// The size the client declared; `None` when it does not know it.
    pub size: Option<u64>,
    /// Replace an existing file.
    pub force: bool,
}

/// A file stored by a finished upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The target as the request named it (normalised).
    pub path: String,
    /// Bytes written.
    pub bytes: u64,
    /// sha256 of what was written.
    pub sha256: Digest,
}

/// What the network loop hands the writer thread.
#[derive(Debug)]
enum Piece {
    /// The next bytes.
    Data(Bytes),
    /// Every byte is written and the digest matched: sync and place.
    Place,
}

/// An upload in progress. Dropping it before [`finish`](Self::finish)
/// succeeds removes the temporary file (the writer thread does, once it
/// sees the channel closed); [`abort`](Self::abort) does the same and waits
/// for it.
#[derive(Debug)]
pub struct Upload {
    shown: String,
    declared: Option<u64>,
    limit: u64,
    received: u64,
    /// `None` once the writer was told to stop.
    to_writer: Option<mpsc::Sender<Piece>>,
    /// `None` once the writer thread was joined.
    writer: Option<JoinHandle<Result<()>>>,
    /// `None` once the hasher was told the end.
    to_hasher: Option<mpsc::Sender<Bytes>>,
    /// `None` once the hasher thread was joined.
    hasher: Option<JoinHandle<Hasher>>,
}

impl Upload {
    /// Checks the declared size against `limit`, resolves the target
    /// (creating missing folders inside the root), refuses an existing file
    /// unless `force`, creates the temporary file and starts the writer
    /// thread.
    pub async fn begin(root: Arc<Root>, spec: UploadSpec, limit: u64) -> Result<Upload> {
        let shown = spec.path.shown();
        if spec.size.is_some_and(|size| size > limit) {
            return Err(Error::TooLarge { path: shown, limit });
        }
        let temp = {
            let spec = spec.clone();
            blocking(move || {
                let shown = spec.path.shown();
                let destination = root.destination(&spec.path)?;
                if destination.existing.is_some() && !spec.force {
                    return Err(Error::AlreadyExists { path: shown });
                }
                TempFile::create(destination.folder, destination.name, shown)
            })
            .await?
        };
        tracing::debug!(path = %shown, temp = %temp.name, size = ?spec.size, "upload started");
        let (to_writer, pieces) = mpsc::channel(WRITE_QUEUE_CHUNKS);
        let force = spec.force;
        let writer = tokio::task::spawn_blocking(move || write_pieces(temp, pieces, force));
        let (to_hasher, mut chunks) = mpsc::channel::<Bytes>(WRITE_QUEUE_CHUNKS);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut hasher = Hasher::new();
            while let Some(chunk) = chunks.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });
        Ok(Upload {
            shown,
            declared: spec.size,
            limit,
            received: 0,
            to_writer: Some(to_writer),
            writer: Some(writer),
            to_hasher: Some(to_hasher),
            hasher: Some(hasher),
        })
    }

    /// Queues the next chunk. Fails at once when the bytes so far pass the
    /// declared size or the server's limit, or when the writer failed.
    pub async fn push(&mut self, data: Bytes) -> Result<()> {
        self.received += data.len() as u64;
        if let Some(declared) = self.declared
            && self.received > declared
        {
            return Err(Error::SizeMismatch {
                path: self.shown.clone(),
                declared,
                received: self.received,
            });
        }
        if self.received > self.limit {
            return Err(Error::TooLarge {
                path: self.shown.clone(),
                limit: self.limit,
            });
        }
        let hashed = match &self.to_hasher {
            Some(to_hasher) => to_hasher.send(data.clone()).await.is_ok(),
            None => false,
        };
        if !hashed {
            return Err(Error::io(
                &self.shown,
                io::Error::other("the hasher thread stopped"),
            ));
        }
        self.send(Piece::Data(data)).await
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Ends the upload with the client's digest: checks size and digest,
    /// syncs, renames into place and syncs the folder. After an error, call
    /// [`abort`](Self::abort) (or drop the upload).
    pub async fn finish(&mut self, expected: Digest) -> Result<Stored> {
        if let Some(declared) = self.declared
            && self.received != declared
        {
            return Err(Error::SizeMismatch {
                path: self.shown.clone(),
                declared,
                received: self.received,
            });
        }
        self.to_hasher = None;
        let hasher = match self.hasher.take() {
            Some(hasher) => hasher
                .await
                .map_err(|err| thread_failed(&self.shown, "hasher", err))?,
            None => return Err(Error::io(&self.shown, io::Error::other("already finished"))),
        };
        let actual = hasher.finalize();
        if actual != expected {
            return Err(Error::ChecksumMismatch {
                path: self.shown.clone(),
                expected,
                actual,
            });
        }
        self.send(Piece::Place).await?;
        self.join_writer().await?;
        Ok(Stored {
            path: self.shown.clone(),
            bytes: self.received,
            sha256: actual,
        })
    }

    /// Stops the upload and waits until its temporary file is removed, so
    /// that an error answered to the client describes a finished cleanup.
    pub async fn abort(mut self) {
        self.to_writer = None;
        self.to_hasher = None;
        let _ = self.join_writer().await;
    }

    /// Hands `piece` to the writer; if it stopped, its error.
    async fn send(&mut self, piece: Piece) -> Result<()> {
        let sent = match &self.to_writer {
            Some(to_writer) => to_writer.send(piece).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        Err(match self.join_writer().await {
            Err(err) => err,
            Ok(()) => Error::io(&self.shown, io::Error::other("the writer stopped early")),
        })
    }

    /// Waits for the writer thread's result (once; later calls fail).
    async fn join_writer(&mut self) -> Result<()> {
        let Some(writer) = self.writer.take() else {
            return Err(Error::io(
                &self.shown,
                io::Error::other("the writer already ended"),
            ));
        };
        match writer.await {
            Ok(result) => result,
            Err(err) => Err(thread_failed(&self.shown, "writer", err)),
        }
    }
}

fn thread_failed(shown: &str, which: &str, err: tokio::task::JoinError) -> Error {
    Error::io(
        shown,
        io::Error::other(format!("the {which} thread failed: {err}")),
    )
}

/// The writer thread: append every chunk; when told to, sync and place.
/// Returning early drops `temp`, which removes the file.
fn write_pieces(mut temp: TempFile, mut pieces: mpsc::Receiver<Piece>, force: bool) -> Result<()> {
    loop {
        match pieces.blocking_recv() {
            Some(Piece::Data(data)) => temp.append(&data)?,
            Some(Piece::Place) => return temp.place(force),
            // The network loop gave up (client gone, a limit, a bad
            // message); it reports why. Nothing may stay behind.
            None => {
                return Err(Error::InvalidRequest {
                    path: temp.shown.clone(),
                    reason: "the upload ended before its sha256".into(),
                });
            }
        }
    }
}

/// `.NAME.fetchd-upload-XXXXXXXXXXXXXXXX` beside the target, removed on
/// drop unless it was placed.
#[derive(Debug)]
struct TempFile {
    folder: Dir,
    /// The temporary file's name in `folder`.
    name: String,
    /// The target's name in `folder`.
    target: String,
    /// The target as the request named it, for messages.
    shown: String,
    file: File,
    placed: bool,
}

impl TempFile {
    /// Creates a new, exclusively locked temporary file for `target` in
    /// `folder`.
    fn create(folder: Dir, target: String, shown: String) -> Result<TempFile> {
        let mut options = OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .follow(FollowSymlinks::No);
        let mut last = None;
        for _ in 0..TEMP_ATTEMPTS {
            let name = temp_name(&target, random_u64());
            match folder.open_with(&name, &options) {
                Ok(file) => {
                    let temp = TempFile {
                        folder,
                        name,
                        target,
                        shown,
                        file: file.into_std(),
                        placed: false,
                    };
                    // Tells a start-up sweep of another server on this
                    // root that the file is in use (see `sweep_leftovers`).
                    if let Err(err) = temp.file.try_lock() {
                        tracing::debug!(temp = %temp.name, ?err, "cannot lock the upload file");
                    }
                    return Ok(temp);
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last = Some(err),
                Err(err) => return Err(Error::from_server_io(&shown, err)),
            }
        }
        Err(Error::from_server_io(
            &shown,
            last.unwrap_or_else(|| io::Error::other("no free temporary name")),
        ))
    }

    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|err| Error::from_server_io(&self.shown, err))
    }

    /// Syncs the data, renames the file onto the target (replacing it only
    /// with `force`) and syncs the folder.
    fn place(mut self, force: bool) -> Result<()> {
        let io_error = |err: io::Error| Error::from_server_io(&self.shown, err);
        self.file.sync_all().map_err(io_error)?;
        let renamed = if force {
            rustix::fs::renameat(&self.folder, &self.name, &self.folder, &self.target)
        } else {
            crate::partfile::rename_noreplace(
                &self.folder,
                self.name.as_str(),
                self.target.as_str(),
            )
        };
        match renamed {
            Ok(()) => self.placed = true,
            Err(Errno::EXIST) if !force => {
                return Err(Error::AlreadyExists {
                    path: self.shown.clone(),
                });
            }
            Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST) => {
                return Err(Error::TargetIsDirectory {
                    path: self.shown.clone(),
                });
            }
            Err(errno) => return Err(io_error(errno.into())),
        }
        sync_folder(&self.folder).map_err(|errno| io_error(errno.into()))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.placed
            && let Err(err) = self.folder.remove_file(&self.name)
        {
            tracing::warn!(path = %self.shown, temp = %self.name, %err, "cannot remove an unfinished upload");
        }
    }
}

/// Syncs `folder`, making a rename in it durable. The handle itself may be
/// an `O_PATH` descriptor, which cannot be synced: `.` is opened from it.
fn sync_folder(folder: &Dir) -> rustix::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let opened = rustix::fs::openat(
        folder,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::fsync(&opened)
}

/// The temporary name for `target`: `.` + target (cut to fit) + marker +
/// 16 hex digits, at most [`MAX_NAME_BYTES`] long.
fn temp_name(target: &str, random: u64) -> String {
    let room = MAX_NAME_BYTES - 1 - TEMP_MARKER.len() - TEMP_RANDOM_DIGITS;
    let mut cut = target.len().min(room);
    while !target.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}{TEMP_MARKER}{random:016x}", &target[..cut])
}

/// True for a name [`temp_name`] makes.
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((target, random)) = rest.rsplit_once(TEMP_MARKER) else {
        return false;
    };
    !target.is_empty()
        && random.len() == TEMP_RANDOM_DIGITS
        && random
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// 64 random bits, from the standard library's randomly keyed hasher (no
/// secret is needed: names only have to differ, and `O_EXCL` catches the
/// rare clash).
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// What a start-up sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Temporary upload files removed.
    pub removed: usize,
    /// Entries looked at.
    pub visited: usize,
    /// True when the walk stopped at [`MAX_SWEEP_ENTRIES`].
    pub truncated: bool,
}

/// Removes temporary upload files that a crash left anywhere below the
/// root: a walk of at most [`MAX_SWEEP_ENTRIES`] entries (symlinked folders
/// are not entered). Files another live server holds locked are kept.
pub fn sweep_leftovers(root: &Root) -> Result<Swept> {
    let mut swept = Swept::default();
    let top = RequestPath::parse("/")?;
    root.walk(&top, true, &mut |listed| {
        swept.visited += 1;
        if listed.info.kind == EntryKind::File
            && is_temp_name(listed.name)
            && remove_if_unlocked(listed.folder, listed.name)
        {
            swept.removed += 1;
            tracing::info!(path = %listed.info.path, "removed an unfinished upload left by an earlier run");
        }
        if swept.visited >= MAX_SWEEP_ENTRIES {
            swept.truncated = true;
            return false;
        }
        true
    })?;
    Ok(swept)
}

/// Removes `name` from `folder` unless someone holds a lock on it.
fn remove_if_unlocked(folder: &Dir, name: &str) -> bool {
    let mut options = OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    let Ok(file) = folder.open_with(name, &options) else {
        return false;
    };
    let file = file.into_std();
    if file.try_lock().is_err() {
        return false;
    }
    let removed = folder.remove_file(name).is_ok();
    drop(file);
    removed
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::io("<upload>", io::Error::other(err)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Temporary names are hidden, keep the target's name, fit NAME_MAX and
    /// are recognised by the sweep; other names are not.
    #[test]
    fn temp_names_round_trip() {
        let name = temp_name("report.pdf", 0xabc);
        assert_eq!(name, ".report.pdf.fetchd-upload-0000000000000abc");
        assert!(is_temp_name(&name));
        let long = "é".repeat(200);
        let name = temp_name(&long, u64::MAX);
        assert!(name.len() <= MAX_NAME_BYTES, "{}", name.len());
        assert!(is_temp_name(&name));
        for other in [
            "report.pdf",
            ".report.pdf",
            ".fetchd-upload-0000000000000abc",
            ".x.fetchd-upload-0000000000000ab",
            ".x.fetchd-upload-0000000000000ABC",
            "x.fetchd-upload-0000000000000abc",
        ] {
            assert!(!is_temp_name(other), "{other}");
        }
    }

    /// Random parts differ from call to call.
    #[test]
    fn random_parts_differ() {
        let a = random_u64();
        let b = random_u64();
        assert_ne!(a, b);
    }

    fn root_in(dir: &std::path::Path) -> Arc<Root> {
        Arc::new(Root::open(dir).expect("root"))
    }

    fn digest_of(data: &[u8]) -> Digest {
        let mut hasher = Hasher::new();
        hasher.update(data);
        hasher.finalize()
    }

    fn spec(path: &str, size: Option<u64>, force: bool) -> UploadSpec {
        UploadSpec {
            path: RequestPath::parse(path).expect("path"),
            size,
            force,
        }
    }

    fn names_in(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        names.sort();
        names
    }

    /// A whole upload lands at the target, in a created folder, with no
    /// temporary file left.
    #[tokio::test]
    async fn upload_places_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = root_in(dir.path());
        let data = b"hello upload".to_vec();
        let mut upload = Upload::begin(root, spec("a/b/c.txt", Some(12), false), 100)
            .await
            .expect("begin");
        upload
            .push(Bytes::from(data[..5].to_vec()))
            .await
            .expect("push");
        upload
            .push(Bytes::from(data[5..].to_vec()))
            .await
            .expect("push");
        let stored = upload.finish(digest_of(&data)).await.expect("finish");
        assert_eq!(stored.path, "a/b/c.txt");
        assert_eq!(stored.bytes, 12);
        assert_eq!(
            std::fs::read(dir.path().join("a/b/c.txt")).expect("read"),
            data
        );
        assert_eq!(names_in(&dir.path().join("a/b")), ["c.txt"]);
    }

    /// A wrong digest, a short upload and an aborted upload all leave
    /// nothing behind.
    #[tokio::test]
    async fn failures_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = root_in(dir.path());

        let mut upload = Upload::begin(Arc::clone(&root), spec("x", Some(3), false), 100)
            .await
            .expect("begin");
        upload.push(Bytes::from_static(b"abc")).await.expect("push");
        let err = upload
            .finish(digest_of(b"abd"))
            .await
            .expect_err("mismatch");
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
        upload.abort().await;
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );

        let mut upload = Upload::begin(Arc::clone(&root), spec("x", Some(4), false), 100)
            .await
            .expect("begin");
        upload.push(Bytes::from_static(b"abc")).await.expect("push");
        let err = upload.finish(digest_of(b"abc")).await.expect_err("short");
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        upload.abort().await;
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );

        let mut upload = Upload::begin(Arc::clone(&root), spec("x", None, false), 100)
            .await
            .expect("begin");
        upload.push(Bytes::from_static(b"abc")).await.expect("push");
        assert_eq!(names_in(dir.path()).len(), 1, "the temporary file");
        upload.abort().await;
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );
    }

    /// Limits: a declared size over the limit fails before anything is
    /// created; bytes past the declared size or the limit fail at once.
    #[tokio::test]
    async fn limits_fail_early() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = root_in(dir.path());
        let err = Upload::begin(Arc::clone(&root), spec("big/x", Some(11), false), 10)
            .await
            .expect_err("too large");
        assert!(matches!(err, Error::TooLarge { limit: 10, .. }), "{err}");
        assert!(names_in(dir.path()).is_empty(), "nothing created");

        let mut upload = Upload::begin(Arc::clone(&root), spec("x", Some(2), false), 10)
            .await
            .expect("begin");
        let err = upload
            .push(Bytes::from_static(b"abc"))
            .await
            .expect_err("more than declared");
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");

        let mut upload = Upload::begin(Arc::clone(&root), spec("y", None, false), 4)
            .await
            .expect("begin");
        upload.push(Bytes::from_static(b"abc")).await.expect("push");
        let err = upload
            .push(Bytes::from_static(b"de"))
            .await
            .expect_err("over the limit");
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    }

    /// Without force an existing target is refused at the start, and a
    /// target created while the upload ran is not replaced at the end.
    #[tokio::test]
    async fn no_clobber() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = root_in(dir.path());
        std::fs::write(dir.path().join("old"), b"old").expect("write");
        let err = Upload::begin(Arc::clone(&root), spec("old", Some(1), false), 10)
            .await
            .expect_err("exists");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");

        let mut upload = Upload::begin(Arc::clone(&root), spec("new", Some(1), false), 10)
            .await
            .expect("begin");
        upload.push(Bytes::from_static(b"n")).await.expect("push");
        std::fs::write(dir.path().join("new"), b"meanwhile").expect("write");
        let err = upload
            .finish(digest_of(b"n"))
            .await
            .expect_err("created meanwhile");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("new")).expect("read"),
            b"meanwhile"
        );
        assert_eq!(names_in(dir.path()), ["new", "old"]);
    }

    /// The sweep removes unlocked temporary files anywhere below the root and
    /// keeps locked ones and everything else.
    #[test]
    fn sweep_removes_leftovers_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        let left = temp_name("f", 1);
        let held = temp_name("g", 2);
        std::fs::write(dir.path().join("a/b").join(&left), b"x").expect("write");
        std::fs::write(dir.path().join(&held), b"x").expect("write");
        std::fs::write(dir.path().join("a/keep.fetchd-upload-x"), b"x").expect("write");
        let lock = File::open(dir.path().join(&held)).expect("open");
        lock.try_lock().expect("lock");
        let root = Root::open(dir.path()).expect("root");
        let swept = sweep_leftovers(&root).expect("sweep");
        assert_eq!(swept.removed, 1);
        assert!(!swept.truncated);
        assert!(!dir.path().join("a/b").join(&left).exists());
        assert!(dir.path().join(&held).exists());
        assert!(dir.path().join("a/keep.fetchd-upload-x").exists());
    }
}
