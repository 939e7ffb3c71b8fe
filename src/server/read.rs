//! The chunk reader: one blocking thread per `Read`, feeding a small bounded
//! channel.
//!
//! The thread hashes the prefix before the requested offset, then reads the
//! file in [`CHUNK_BYTES`] chunks with plain `read()`, hashing every byte and
//! sending the requested range. The channel holds at most
//! [`READ_QUEUE_CHUNKS`] chunks, so a slow client stalls the reader instead
//! of making the server buffer the file: memory per stream is
//! `CHUNK_BYTES * (READ_QUEUE_CHUNKS + 1)` plus the HTTP/2 window. When the
//! client goes away the send fails and the thread stops. At the end the file
//! is checked again (size, mtime, and that the path still names the same
//! inode); any change ends the stream with [`Error::Changed`] instead of a
//! digest over a mix of versions.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::checksum::{self, Digest, Hasher};
use crate::entry::{EntryInfo, EntryKind, FileVersion, ReadEvent, ReadStart};
use crate::error::{Error, Result};
use crate::sandbox::{RequestPath, Root};
use crate::server::digests::DigestCache;

/// Bytes per data message.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Files up to this size are read whole when opened, with no reader thread.
pub const SMALL_FILE_BYTES: u64 = CHUNK_BYTES as u64;
/// Chunks queued between the reader thread and the network.
pub const READ_QUEUE_CHUNKS: usize = 4;

/// A read ready to go out.
#[derive(Debug)]
pub enum Prepared {
    /// A small file, already read: every event of the stream.
    Whole(Vec<Result<ReadEvent>>),
    /// A larger file, opened: stream it with [`OpenRead::stream`].
    Streaming(OpenRead),
}

/// An opened file, checked and ready to stream.
#[derive(Debug)]
pub struct OpenRead {
    root: Arc<Root>,
    digests: Arc<DigestCache>,
    path: RequestPath,
    file: File,
    version: FileVersion,
    entry: EntryInfo,
    offset: u64,
    length: u64,
}

impl OpenRead {
    /// Resolves and opens `path` for a read of `length` bytes (to the end
    /// when `None`) from `offset`. Runs on a blocking thread.
    pub async fn open(
        root: Arc<Root>,
        digests: Arc<DigestCache>,
        path: RequestPath,
        offset: u64,
        length: Option<u64>,
    ) -> Result<OpenRead> {
        tokio::task::spawn_blocking(move || {
            OpenRead::open_blocking(root, digests, path, offset, length)
        })
        .await
        .map_err(|err| Error::io("read", io::Error::other(err)))?
    }

    /// Opens for a read and, when the whole file is at most
    /// [`SMALL_FILE_BYTES`], reads it right away in the same blocking call:
    /// small files then cost one hand-off instead of a reader thread.
    pub async fn prepare(
        root: Arc<Root>,
        digests: Arc<DigestCache>,
        path: RequestPath,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Prepared> {
        tokio::task::spawn_blocking(move || {
            let open = OpenRead::open_blocking(root, digests, path, offset, length)?;
            if open.version.size > SMALL_FILE_BYTES {
                return Ok(Prepared::Streaming(open));
            }
            let mut events = Vec::with_capacity(3);
            let pumped = open.pump(&mut |event| {
                events.push(event);
                true
            });
            match pumped {
                Ok(()) => Ok(Prepared::Whole(events)),
                Err(err) => Err(err),
            }
        })
        .await
        .map_err(|err| Error::io("read", io::Error::other(err)))?
    }

    fn open_blocking(
        root: Arc<Root>,
        digests: Arc<DigestCache>,
        path: RequestPath,
        offset: u64,
        length: Option<u64>,
    ) -> Result<OpenRead> {
        {
            let (file, meta) = root.open_file(&path)?;
            let version = FileVersion::of(&meta);
            if offset > version.size {
                return Err(Error::OffsetPastEnd {
                    path: path.shown(),
                    offset,
                    size: version.size,
                });
            }
            let available = version.size - offset;
            let length = length.map_or(available, |length| length.min(available));
            let entry = EntryInfo {
                path: path.display().to_string(),
                kind: EntryKind::File,
                size: version.size,
                mtime_ns: version.mtime_ns,
                mode: std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
                sha256: None,
            };
            Ok(OpenRead {
                root,
                digests,
                path,
                file,
                version,
                entry,
                offset,
                length,
            })
        }
    }

    /// The version opened.
    pub fn version(&self) -> FileVersion {
        self.version
    }

    /// The file's entry.
    pub fn entry(&self) -> &EntryInfo {
        &self.entry
    }

    /// Starts the reader thread. The permit is held until it stops.
    pub fn stream(self, permit: OwnedSemaphorePermit) -> mpsc::Receiver<Result<ReadEvent>> {
        let (tx, rx) = mpsc::channel(READ_QUEUE_CHUNKS);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Err(err) = self.pump(&mut |event| tx.blocking_send(event).is_ok()) {
                // The client may be gone already; then nobody needs to know.
                let _ = tx.blocking_send(Err(err));
            }
        });
        rx
    }

    /// Reads the whole file and returns its digest (for `Stat`).
    pub async fn digest(self) -> Result<(EntryInfo, FileVersion, Digest)> {
        tokio::task::spawn_blocking(move || {
            if let Some(digest) = self.digests.get(&self.version) {
                return Ok((self.entry, self.version, digest));
            }
            let hashing_started = SystemTime::now();
            let hasher = checksum::hash_prefix(&self.file, Some(self.version.size + 1))
                .map_err(|err| Error::from_server_io(&self.path.shown(), err))?;
            self.check_unchanged(hasher.bytes())?;
            let digest = hasher.finalize();
            self.digests.insert(self.version, digest, hashing_started);
            Ok((self.entry, self.version, digest))
        })
        .await
        .map_err(|err| Error::io("stat", io::Error::other(err)))?
    }

    /// The reader thread's body. `Ok` also when the client went away.
    fn pump(&self, send: &mut dyn FnMut(Result<ReadEvent>) -> bool) -> Result<()> {
        let shown = self.path.shown();
        let io_error = |err| Error::from_server_io(&shown, err);
        let hashing_started = SystemTime::now();
        let cached = self.digests.get(&self.version);

        let mut hasher: Hasher =
            checksum::hash_prefix(&self.file, Some(self.offset)).map_err(io_error)?;
        if hasher.bytes() < self.offset {
            return Err(Error::Changed { path: shown });
        }
        let start = ReadStart {
            entry: self.entry.clone(),
            version: self.version,
            offset: self.offset,
            length: self.length,
            prefix_sha256: (self.offset > 0).then(|| hasher.snapshot()),
        };
        if !send(Ok(ReadEvent::Start(start))) {
            return Ok(());
        }

        let end = self.offset + self.length;
        let mut position = self.offset;
        while position < end {
            let want = CHUNK_BYTES.min(usize::try_from(end - position).unwrap_or(CHUNK_BYTES));
            let chunk = read_chunk(&self.file, want).map_err(io_error)?;
            if chunk.len() < want {
                // The file shrank under us.
                return Err(Error::Changed { path: shown });
            }
            position += chunk.len() as u64;
            if cached.is_none() {
                hasher.update(&chunk);
            }
            if !send(Ok(ReadEvent::Data(chunk))) {
                return Ok(());
            }
        }

        let digest = match cached {
            Some(digest) => {
                self.check_unchanged(self.version.size)?;
                digest
            }
            None => {
                // Bytes past the requested range still count for the
                // whole-file digest; one extra byte shows whether it grew.
                checksum::feed(&self.file, &mut hasher, Some(self.version.size + 1))
                    .map_err(io_error)?;
                self.check_unchanged(hasher.bytes())?;
                let digest = hasher.finalize();
                self.digests.insert(self.version, digest, hashing_started);
                digest
            }
        };
        send(Ok(ReadEvent::End(digest)));
        Ok(())
    }

    /// Fails with [`Error::Changed`] unless the file still has the version
    /// it had when opened, `read` bytes were read, and the path still names
    /// it.
    fn check_unchanged(&self, read: u64) -> Result<()> {
        let changed = || Error::Changed {
            path: self.path.shown(),
        };
        if read != self.version.size {
            return Err(changed());
        }
        let now = self
            .file
            .metadata()
            .map_err(|err| Error::from_server_io(&self.path.shown(), err))?;
        if FileVersion::of(&now) != self.version {
            return Err(changed());
        }
        match self.root.identity(&self.path) {
            Ok(identity) if identity == (self.version.device, self.version.inode) => Ok(()),
            _ => Err(changed()),
        }
    }
}

/// Reads the next `want` bytes (fewer only at the end of the file) into a
/// fresh buffer, without zeroing it first.
fn read_chunk(file: &File, want: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(want);
    file.take(want as u64).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}
