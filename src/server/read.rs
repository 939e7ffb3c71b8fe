//! The chunk reader: one blocking thread per `Read`, feeding a small bounded
//! channel.
//!
//! The thread hashes the prefix before the requested offset, then reads the
//! file in [`CHUNK_BYTES`] chunks with plain `read()`, hashing every byte and
//! sending the requested range. The channel holds at most
//! [`READ_QUEUE_CHUNKS`] chunks, so a slow client stalls the reader instead
//! of making the server buffer the file: a stream holds at most a handful of
//! chunk buffers (the queue, the one being read, the one h2 is writing),
//! and they are reused ([`ChunkPool`]) rather than allocated per chunk.
//! When the client goes away the send fails and the thread stops. At the end the file
//! is checked again (size, mtime, and that the path still names the same
//! inode); any change ends the stream with [`Error::Changed`] instead of a
//! digest over a mix of versions.

use std::fs::File;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::Stream;

use crate::checksum::{self, Digest, Hasher};
use crate::entry::{EntryInfo, EntryKind, FileVersion, ReadEvent, ReadStart};
use crate::error::{Error, Result};
use crate::sandbox::{RequestPath, Root};
use crate::server::calls::CallRecord;
use crate::server::digests::DigestCache;
use crate::server::read_route;

/// Bytes per data message. 1 MiB chunks cost the server 0.70 CPU-s per GiB
/// sent against 0.80 for 256 KiB (fewer hand-offs between the reader thread
/// and the network), and match the HTTP/2 frame size both ends allow.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Files up to this size are read whole when opened, with no reader thread.
pub const SMALL_FILE_BYTES: u64 = CHUNK_BYTES as u64;
/// Chunks queued between the reader thread and the network.
pub const READ_QUEUE_CHUNKS: usize = 2;

/// How the reader lays out each data chunk it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// A chunk is the file's bytes alone, for tonic's codec to encode.
    Bare,
    /// A chunk is a whole gRPC message frame: the `ReadResponse` carrying the
    /// bytes as `data`, encoded around them as they are read, so that the
    /// bytes go from the read buffer to the socket with no copy in between
    /// (see [`crate::server::read_route`]).
    Wire,
}

impl Framing {
    /// The file bytes in a data chunk of `len` bytes laid out this way.
    pub fn payload_len(self, len: usize) -> usize {
        match self {
            Framing::Bare => len,
            Framing::Wire => read_route::data_frame_payload_len(len),
        }
    }

    /// Fills `buf` (empty) with the frame header this framing puts before
    /// `len` data bytes, and makes room for the bytes.
    fn start_chunk(self, len: usize, buf: &mut Vec<u8>) {
        match self {
            Framing::Bare => buf.reserve(len),
            Framing::Wire => {
                buf.reserve(read_route::DATA_FRAME_HEADER_MAX + len);
                read_route::put_data_frame_header(len, buf);
            }
        }
    }
}

/// Chunk buffers of one read, used again once the network is done with
/// them. Filling a fresh 256 KiB buffer costs the kernel 64 page faults and
/// as many zeroed pages, which measured as half the cost of the server's
/// `read()` calls.
#[derive(Debug, Default)]
struct ChunkPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// Buffers a [`ChunkPool`] keeps: enough for the reader's queue and the
/// chunks in flight behind it.
const POOL_BUFFERS: usize = 2 * READ_QUEUE_CHUNKS;

impl ChunkPool {
    /// An empty buffer, used before when one is free.
    fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    /// `buf` as `Bytes` that hand it back to the pool when dropped.
    fn freeze(self: &Arc<ChunkPool>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(PooledBuffer {
            buf,
            pool: Arc::clone(self),
        })
    }
}

/// A buffer on loan from a [`ChunkPool`].
struct PooledBuffer {
    buf: Vec<u8>,
    pool: Arc<ChunkPool>,
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let mut free = self
            .pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if free.len() < POOL_BUFFERS {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            free.push(buf);
        }
    }
}

/// A read ready to go out.
#[derive(Debug)]
pub enum Prepared {
    /// A small file, already read: every event of the stream.
    Whole(Vec<Result<ReadEvent>>),
    /// A larger file, opened: stream it with [`OpenRead::stream`].
    Streaming(OpenRead),
}

/// A small file read whole by [`OpenRead::read_whole`].
#[derive(Debug)]
pub enum WholeRead {
    /// Every byte, consistent with `version`.
    File {
        /// The file as `Stat` would describe it.
        entry: EntryInfo,
        /// The version read.
        version: FileVersion,
        /// Its bytes.
        data: Bytes,
        /// The sha256 of `data`.
        sha256: Digest,
    },
    /// The file is larger than allowed; this is its size.
    TooLarge(u64),
}

/// The events of one read as they become ready, for either handler of
/// `Read`; a failure is the last item. Logs how the read ended.
#[derive(Debug)]
pub struct ReadEvents {
    source: EventSource,
    framing: Framing,
    record: CallRecord,
    path: String,
    started: Instant,
    sent: u64,
    ended: bool,
}

#[derive(Debug)]
enum EventSource {
    /// A small file, read already.
    Whole(std::vec::IntoIter<Result<ReadEvent>>),
    /// A larger file, from its reader thread.
    Streaming(mpsc::Receiver<Result<ReadEvent>>),
}

impl ReadEvents {
    /// The events of a prepared read of `path`. A larger file's reader
    /// thread starts now and holds `permit` until it stops; a small file,
    /// read already, lets it go at once.
    /// Data chunks are laid out as `framing` says; the file bytes sent are
    /// added to `record`.
    pub fn new(
        prepared: Prepared,
        permit: OwnedSemaphorePermit,
        path: String,
        framing: Framing,
        record: CallRecord,
    ) -> ReadEvents {
        let source = match prepared {
            Prepared::Whole(events) => EventSource::Whole(events.into_iter()),
            Prepared::Streaming(open) => EventSource::Streaming(open.stream(permit)),
        };
        ReadEvents {
            source,
            framing,
            record,
            path,
            started: Instant::now(),
            sent: 0,
            ended: false,
        }
    }
}

impl Stream for ReadEvents {
    type Item = Result<ReadEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = match &mut this.source {
            EventSource::Whole(events) => events.next(),
            EventSource::Streaming(events) => std::task::ready!(events.poll_recv(cx)),
        };
        match &next {
            Some(Ok(ReadEvent::Data(data))) => {
                let bytes = this.framing.payload_len(data.len()) as u64;
                this.sent += bytes;
                this.record.add_sent(bytes);
            }
            Some(Ok(ReadEvent::End(_))) => {
                this.ended = true;
                tracing::debug!(path = %this.path, bytes = this.sent, elapsed = ?this.started.elapsed(), "read done");
            }
            Some(Err(err)) => {
                this.ended = true;
                tracing::debug!(path = %this.path, %err, "read failed");
            }
            Some(Ok(ReadEvent::Start(_))) | None => {}
        }
        Poll::Ready(next)
    }
}

impl Drop for ReadEvents {
    fn drop(&mut self) {
        if !self.ended {
            tracing::debug!(path = %self.path, bytes = self.sent, "read ended by the client");
        }
    }
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
    framing: Framing,
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
    /// Data chunks are laid out as `framing` says.
    pub async fn prepare(
        root: Arc<Root>,
        digests: Arc<DigestCache>,
        path: RequestPath,
        offset: u64,
        length: Option<u64>,
        framing: Framing,
    ) -> Result<Prepared> {
        tokio::task::spawn_blocking(move || {
            let mut open = OpenRead::open_blocking(root, digests, path, offset, length)?;
            open.framing = framing;
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

    /// Reads the file at `path` whole when it has at most `max` bytes, with
    /// the same consistency checks as a streamed read. Blocks: call it on a
    /// blocking thread.
    pub fn read_whole(
        root: Arc<Root>,
        digests: Arc<DigestCache>,
        path: RequestPath,
        max: u64,
    ) -> Result<WholeRead> {
        let open = OpenRead::open_blocking(root, digests, path, 0, None)?;
        if open.version.size > max {
            return Ok(WholeRead::TooLarge(open.version.size));
        }
        let mut data = Vec::new();
        let mut sha256 = None;
        open.pump(&mut |event| {
            match event {
                Ok(ReadEvent::Data(chunk)) => data.push(chunk),
                Ok(ReadEvent::End(digest)) => sha256 = Some(digest),
                Ok(ReadEvent::Start(_)) | Err(_) => {}
            }
            true
        })?;
        let Some(sha256) = sha256 else {
            return Err(Error::Changed {
                path: open.path.shown(),
            });
        };
        let data = match data.len() {
            0 => Bytes::new(),
            1 => data.swap_remove(0),
            _ => Bytes::from(data.concat()),
        };
        Ok(WholeRead::File {
            entry: open.entry,
            version: open.version,
            data,
            sha256,
        })
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
                framing: Framing::Bare,
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
        let pool = Arc::new(ChunkPool::default());
        while position < end {
            let want = CHUNK_BYTES.min(usize::try_from(end - position).unwrap_or(CHUNK_BYTES));
            let mut chunk = pool.take();
            self.framing.start_chunk(want, &mut chunk);
            let header = chunk.len();
            (&self.file)
                .take(want as u64)
                .read_to_end(&mut chunk)
                .map_err(io_error)?;
            if chunk.len() - header < want {
                // The file shrank under us.
                return Err(Error::Changed { path: shown });
            }
            position += want as u64;
            if cached.is_none() {
                hasher.update(&chunk[header..]);
            }
            let chunk = pool.freeze(chunk);
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
        if self
            .root
            .still_names(&self.path, (self.version.device, self.version.inode))
        {
            Ok(())
        } else {
            Err(changed())
        }
    }
}
