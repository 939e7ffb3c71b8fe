//! The upload writer: per `Write`, a writer thread and a hasher thread, each
//! fed every chunk through a small bounded channel; the writer appends to a
//! new version the store staged (for a local root, a hidden temporary file
//! beside the target: [`crate::store::local::staging`]).
//!
//! [`Upload::begin`] asks the store to stage the target (which refuses an
//! existing file unless `force`). The network loop checks sizes as chunks
//! arrive ([`Upload::push`]): past the declared size or past the server's
//! limit it fails at once. The writer thread appends every chunk while the
//! hasher thread hashes it (the two overlap on two cores; with hashing on
//! the writer thread, and on the client's reader thread, a 1 GiB upload took
//! about 1.8 times as long); at the end ([`Upload::finish`]) the digest is
//! compared, and only then does the writer commit the staged version
//! (durable and atomic; without `force`, never over a file that appeared
//! meanwhile).
//!
//! Whatever ends an upload early — a mismatch, a limit, a client that goes
//! away, a dropped [`Upload`] — drops the staged version, which leaves
//! nothing behind.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::checksum::{Digest, Hasher};
use crate::entry::FileVersion;
use crate::error::{Error, Result};
use crate::store::{Reader, RequestPath, Staged, Store, Version};

/// Chunks queued between the network loop and each of the writer and hasher
/// threads: memory per upload is about this many chunks plus the HTTP/2
/// stream window.
pub(crate) const WRITE_QUEUE_CHUNKS: usize = 4;
/// Default for `--max-upload-size`: 16 GiB.
pub(crate) const DEFAULT_MAX_UPLOAD_BYTES: u64 = 16 << 30;
/// Bytes of the base read per piece of a copy (a delta upload).
const COPY_PIECE_BYTES: usize = 1024 * 1024;
/// What a client asked to store.
#[derive(Clone, Debug)]
pub(crate) struct UploadSpec {
    /// The target, relative to the root.
    pub path: RequestPath,
    /// The size the client declared; `None` when it does not know it.
    pub size: Option<u64>,
    /// Replace an existing file.
    pub force: bool,
}

/// A file stored by a finished upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The target as the request named it (normalised).
    pub path: String,
    /// Bytes written.
    pub bytes: u64,
    /// sha256 of what was written.
    pub sha256: Digest,
}

/// What the network loop hands the writer thread.
#[derive(Debug)]
enum ToWriter {
    /// The next bytes.
    Data(Bytes),
    /// Every byte is written and the digest (this one) matched: sync and
    /// place.
    Place(Digest),
}

/// An upload in progress. Dropping it before [`finish`](Self::finish)
/// succeeds removes the temporary file (the writer thread does, once it
/// sees the channel closed); [`abort`](Self::abort) does the same and waits
/// for it.
#[derive(Debug)]
pub(crate) struct Upload {
    shown: String,
    declared: Option<u64>,
    limit: u64,
    received: u64,
    /// `None` once the writer was told to stop.
    to_writer: Option<mpsc::Sender<ToWriter>>,
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
    pub(crate) async fn begin<S: Store>(
        store: Arc<S>,
        spec: UploadSpec,
        limit: u64,
    ) -> Result<Upload> {
        let shown = spec.path.shown();
        if spec.size.is_some_and(|size| size > limit) {
            return Err(Error::TooLarge { path: shown, limit });
        }
        let staged = {
            let spec = spec.clone();
            blocking(move || store.stage(&spec.path, spec.force)).await?
        };
        tracing::debug!(path = %shown, size = ?spec.size, "upload started");
        let (to_writer, pieces) = mpsc::channel(WRITE_QUEUE_CHUNKS);
        let writer = {
            let shown = shown.clone();
            tokio::task::spawn_blocking(move || write_pieces(staged, pieces, &shown))
        };
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
    pub(crate) async fn push(&mut self, data: Bytes) -> Result<()> {
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
        self.send(ToWriter::Data(data)).await
    }

    /// Bytes received so far.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Ends the upload with the client's digest: checks size and digest,
    /// syncs, renames into place and syncs the folder. After an error, call
    /// [`abort`](Self::abort) (or drop the upload).
    pub(crate) async fn finish(&mut self, expected: Digest) -> Result<Stored> {
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
        self.send(ToWriter::Place(actual)).await?;
        self.join_writer().await?;
        Ok(Stored {
            path: self.shown.clone(),
            bytes: self.received,
            sha256: actual,
        })
    }

    /// Stops the upload and waits until its temporary file is removed, so
    /// that an error answered to the client describes a finished cleanup.
    pub(crate) async fn abort(mut self) {
        self.to_writer = None;
        self.to_hasher = None;
        let _ = self.join_writer().await;
    }

    /// Hands `piece` to the writer; if it stopped, its error.
    async fn send(&mut self, piece: ToWriter) -> Result<()> {
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

/// The base of a delta upload: the version of the target that `copy`
/// messages read from, opened before the new version is staged and pinned
/// until the trailer.
#[derive(Debug)]
pub(crate) struct Base<R: Reader> {
    /// `None` only while a read is on a blocking thread.
    reader: Option<R>,
    shown: String,
    size: u64,
}

impl<R: Reader> Base<R> {
    /// Opens `path` and checks it is still `pinned` (the version its
    /// manifest described): [`Error::Changed`] when not. Blocks.
    pub(crate) fn open<S: Store<Reader = R>>(
        store: &S,
        path: &RequestPath,
        pinned: FileVersion,
    ) -> Result<Base<R>> {
        let reader = store.open(path)?;
        if reader.version().describe() != pinned {
            return Err(Error::Changed { path: path.shown() });
        }
        Ok(Base {
            size: reader.entry().size,
            reader: Some(reader),
            shown: path.shown(),
        })
    }

    /// Appends `length` bytes of the base from `offset` to `upload`, read
    /// in pieces off the async threads. An empty range or one past the
    /// base's end is refused; a base that comes up short has changed.
    pub(crate) async fn copy_into(
        &mut self,
        offset: u64,
        length: u64,
        upload: &mut Upload,
    ) -> Result<()> {
        if length == 0 {
            return Err(Error::InvalidRequest {
                path: self.shown.clone(),
                reason: "an empty copy".into(),
            });
        }
        let end = offset.saturating_add(length);
        if end > self.size {
            return Err(Error::OffsetPastEnd {
                path: self.shown.clone(),
                offset: end,
                size: self.size,
            });
        }
        let mut position = offset;
        while position < end {
            let want = usize::try_from(end - position)
                .unwrap_or(COPY_PIECE_BYTES)
                .min(COPY_PIECE_BYTES);
            let buf = self
                .on_reader(move |reader| {
                    let mut buf = Vec::with_capacity(want);
                    reader.read_into(position, want, &mut buf).map(|_| buf)
                })
                .await?;
            if buf.len() < want {
                return Err(Error::Changed {
                    path: self.shown.clone(),
                });
            }
            position += want as u64;
            upload.push(Bytes::from(buf)).await?;
        }
        Ok(())
    }

    /// Checks the base is still the file at its path, so that the copies
    /// never mixed two versions.
    pub(crate) async fn check_current(&mut self) -> Result<()> {
        if self.on_reader(|reader| reader.is_current()).await? {
            Ok(())
        } else {
            Err(Error::Changed {
                path: self.shown.clone(),
            })
        }
    }

    /// Runs `work` on the base's reader on a blocking thread.
    async fn on_reader<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut R) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let Some(mut reader) = self.reader.take() else {
            return Err(self.lost());
        };
        let (reader, done) = tokio::task::spawn_blocking(move || {
            let done = work(&mut reader);
            (reader, done)
        })
        .await
        .map_err(|err| thread_failed(&self.shown, "base reader", err))?;
        self.reader = Some(reader);
        done
    }

    fn lost(&self) -> Error {
        Error::io(
            &self.shown,
            io::Error::other("the base was lost by a failed copy"),
        )
    }
}

fn thread_failed(shown: &str, which: &str, err: tokio::task::JoinError) -> Error {
    Error::io(
        shown,
        io::Error::other(format!("the {which} thread failed: {err}")),
    )
}

/// The writer thread: append every chunk; when told to, commit. Returning
/// early drops `staged`, which leaves nothing behind.
fn write_pieces(
    mut staged: impl Staged,
    mut pieces: mpsc::Receiver<ToWriter>,
    shown: &str,
) -> Result<()> {
    loop {
        match pieces.blocking_recv() {
            Some(ToWriter::Data(data)) => staged.append(&data)?,
            Some(ToWriter::Place(sha256)) => return staged.commit(&sha256),
            // The network loop gave up (client gone, a limit, a bad
            // message); it reports why. Nothing may stay behind.
            None => {
                return Err(Error::InvalidRequest {
                    path: shown.to_string(),
                    reason: "the upload ended before its sha256".into(),
                });
            }
        }
    }
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
    use crate::store::local::LocalStore;

    fn root_in(dir: &std::path::Path) -> Arc<LocalStore> {
        Arc::new(LocalStore::open(dir).expect("root"))
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
}
