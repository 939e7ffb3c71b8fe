//! The chunk reader: one blocking thread per `Read`, feeding a small bounded
//! channel. It reads through the [`Store`]'s [`Reader`], so it is the same
//! for every store.
//!
//! The thread hashes the prefix before the requested offset, then reads the
//! file in [`CHUNK_BYTES`] chunks straight into buffers that already hold
//! the chunk's frame header ([`Framing`]), hashing every byte and sending
//! the requested range. The channel holds at most [`READ_QUEUE_CHUNKS`]
//! chunks, so a slow client stalls the reader instead of making the server
//! buffer the file: a stream holds at most a handful of chunk buffers (the
//! queue, the one being read, the one h2 is writing), and they are reused
//! ([`ChunkPool`]) rather than allocated per chunk. When the client goes
//! away the send fails and the thread stops. At the end the store is asked
//! whether the version is still current (for a local root: size, mtime, and
//! that the path still names the same inode); any change ends the stream
//! with [`Error::Changed`] instead of a digest over a mix of versions.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::Stream;

use crate::checksum::{Digest, Hasher};
use crate::entry::{EntryInfo, FileVersion};
use crate::error::{Error, Result};
use crate::read_stream::{ReadEvent, ReadStart};
use crate::server::calls::CallRecord;
use crate::server::digests::DigestCache;
use crate::store::{Reader, RequestPath, Store, Version, hash_range};

/// Bytes per data message. 1 MiB chunks cost the server 0.70 CPU-s per GiB
/// sent against 0.80 for 256 KiB (fewer hand-offs between the reader thread
/// and the network), and match the HTTP/2 frame size both ends allow.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Files up to this size are read whole when opened, with no reader thread.
pub(crate) const SMALL_FILE_BYTES: u64 = CHUNK_BYTES as u64;
/// Chunks queued between the reader thread and the network.
pub(crate) const READ_QUEUE_CHUNKS: usize = 2;

/// How the reader lays out each data chunk it sends: what goes before the
/// file's bytes in the buffer. The reader does not know the wire; the wire
/// edge that wants whole frames gives it their layout
/// ([`crate::wire::READ_DATA_FRAMES`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Framing {
    /// Most bytes `put_header` writes.
    pub header_max: usize,
    /// Appends what goes before `len` data bytes.
    pub put_header: fn(len: usize, buf: &mut Vec<u8>),
    /// The file bytes in a chunk of `len` bytes laid out this way.
    pub payload_len: fn(len: usize) -> usize,
}

impl Framing {
    /// A chunk is the file's bytes alone (for tonic's codec to encode).
    pub(crate) const BARE: Framing = Framing {
        header_max: 0,
        put_header: |_, _| {},
        payload_len: |len| len,
    };

    /// Fills `buf` (empty) with the header this framing puts before `len`
    /// data bytes, and makes room for the bytes.
    fn start_chunk(self, len: usize, buf: &mut Vec<u8>) {
        buf.reserve(self.header_max + len);
        (self.put_header)(len, buf);
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
pub(crate) enum Prepared<S: Store> {
    /// A small file, already read: every event of the stream.
    Whole(Vec<Result<ReadEvent>>),
    /// A larger file, opened: stream it with [`OpenRead::stream`].
    Streaming(OpenRead<S>),
}

/// A small file read whole by [`OpenRead::read_whole`].
#[derive(Debug)]
pub(crate) enum WholeRead {
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
pub(crate) struct ReadEvents {
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
    pub(crate) fn new<S: Store>(
        prepared: Prepared<S>,
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
                let bytes = (this.framing.payload_len)(data.len()) as u64;
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

/// Which bytes of a file a read sends, and what its digests cover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    /// The first byte sent.
    pub offset: u64,
    /// Most bytes sent; `None` to the end.
    pub length: Option<u64>,
    /// The digests cover the bytes sent only: no prefix digest, and the
    /// final digest is over the range (a client fetching ranges from
    /// several servers checks the whole file itself).
    pub range_only: bool,
}

impl Span {
    /// The whole file.
    pub(crate) const WHOLE: Span = Span {
        offset: 0,
        length: None,
        range_only: false,
    };
}

/// What an open is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
    /// The version and the entry (`Stat`); data only for a digest.
    Metadata,
    /// A read that follows at once.
    Read,
}

/// An opened file, checked and ready to stream.
#[derive(Debug)]
pub(crate) struct OpenRead<S: Store> {
    reader: S::Reader,
    digests: Arc<DigestCache<S::Version>>,
    path: RequestPath,
    version: S::Version,
    entry: EntryInfo,
    offset: u64,
    length: u64,
    range_only: bool,
    framing: Framing,
}

impl<S: Store> OpenRead<S> {
    /// Resolves and opens `path` for a read of `span`.
    pub(crate) async fn open(
        store: Arc<S>,
        digests: Arc<DigestCache<S::Version>>,
        path: RequestPath,
        span: Span,
    ) -> Result<OpenRead<S>> {
        tokio::task::spawn_blocking(move || {
            OpenRead::open_blocking(&*store, digests, path, span, Opening::Metadata)
        })
        .await
        .map_err(|err| Error::io("read", io::Error::other(err)))?
    }

    /// Opens for a read and, when the whole file is at most
    /// [`SMALL_FILE_BYTES`], reads it right away in the same blocking call:
    /// small files then cost one hand-off instead of a reader thread.
    /// Data chunks are laid out as `framing` says.
    pub(crate) async fn prepare(
        store: Arc<S>,
        digests: Arc<DigestCache<S::Version>>,
        path: RequestPath,
        span: Span,
        framing: Framing,
    ) -> Result<Prepared<S>> {
        tokio::task::spawn_blocking(move || {
            let mut open = OpenRead::open_blocking(&*store, digests, path, span, Opening::Read)?;
            open.framing = framing;
            if open.entry.size > SMALL_FILE_BYTES {
                return Ok(Prepared::Streaming(open));
            }
            let mut events = Vec::with_capacity(3);
            open.pump(&mut |event| {
                events.push(event);
                true
            })?;
            Ok(Prepared::Whole(events))
        })
        .await
        .map_err(|err| Error::io("read", io::Error::other(err)))?
    }

    /// Reads the file `reader` opened at `path` whole when it has at most
    /// `max` bytes, with the same consistency checks as a streamed read.
    /// Blocks: call it on a blocking thread.
    pub(crate) fn read_whole(
        reader: S::Reader,
        digests: Arc<DigestCache<S::Version>>,
        path: RequestPath,
        max: u64,
    ) -> Result<WholeRead> {
        let mut open = OpenRead::<S>::of_reader(reader, digests, path, Span::WHOLE)?;
        if open.entry.size > max {
            return Ok(WholeRead::TooLarge(open.entry.size));
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
            version: open.version.describe(),
            data,
            sha256,
        })
    }

    fn open_blocking(
        store: &S,
        digests: Arc<DigestCache<S::Version>>,
        path: RequestPath,
        span: Span,
        opening: Opening,
    ) -> Result<OpenRead<S>> {
        let offset = span.offset;
        let reader = match opening {
            Opening::Metadata => store.open(&path)?,
            // A whole-file read hashes from the first byte, whatever it sends.
            Opening::Read => store.open_at(&path, if span.range_only { offset } else { 0 })?,
        };
        OpenRead::of_reader(reader, digests, path, span)
    }

    /// A read of `span` of what `reader` opened at `path`.
    fn of_reader(
        reader: S::Reader,
        digests: Arc<DigestCache<S::Version>>,
        path: RequestPath,
        span: Span,
    ) -> Result<OpenRead<S>> {
        let Span {
            offset,
            length,
            range_only,
        } = span;
        digests.learn_stored(&reader);
        let entry = reader.entry().clone();
        let size = entry.size;
        if offset > size {
            return Err(Error::OffsetPastEnd {
                path: path.shown(),
                offset,
                size,
            });
        }
        let available = size - offset;
        let length = length.map_or(available, |length| length.min(available));
        Ok(OpenRead {
            version: reader.version(),
            reader,
            digests,
            path,
            entry,
            offset,
            length,
            range_only,
            framing: Framing::BARE,
        })
    }

    /// The version opened, as the wire describes it.
    pub(crate) fn version(&self) -> FileVersion {
        self.version.describe()
    }

    /// The file's entry.
    pub(crate) fn entry(&self) -> &EntryInfo {
        &self.entry
    }

    /// Starts the reader thread. The permit is held until it stops.
    pub(crate) fn stream(
        mut self,
        permit: OwnedSemaphorePermit,
    ) -> mpsc::Receiver<Result<ReadEvent>> {
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
    pub(crate) async fn digest(mut self) -> Result<(EntryInfo, FileVersion, Digest)> {
        tokio::task::spawn_blocking(move || {
            let version = self.version.describe();
            if let Some(digest) = self.digests.get(&self.version) {
                return Ok((self.entry, version, digest));
            }
            let hashing_started = SystemTime::now();
            let mut hasher = Hasher::new();
            hash_range(&mut self.reader, &mut hasher, 0, self.entry.size + 1)?;
            self.check_unchanged(hasher.bytes())?;
            let digest = hasher.finalize();
            self.digests.insert(self.version, digest, hashing_started);
            Ok((self.entry, version, digest))
        })
        .await
        .map_err(|err| Error::io("stat", io::Error::other(err)))?
    }

    /// The reader thread's body. `Ok` also when the client went away.
    fn pump(&mut self, send: &mut dyn FnMut(Result<ReadEvent>) -> bool) -> Result<()> {
        let shown = self.path.shown();
        let hashing_started = SystemTime::now();
        // A range-only read hashes what it sends; a whole-file digest the
        // cache knows already needs no hashing at all.
        let cached = if self.range_only {
            None
        } else {
            self.digests.get(&self.version)
        };
        let size = self.entry.size;

        let mut hasher = Hasher::new();
        if !self.range_only {
            hash_range(&mut self.reader, &mut hasher, 0, self.offset)?;
            if hasher.bytes() < self.offset {
                return Err(Error::Changed { path: shown });
            }
        }
        let start = ReadStart {
            entry: self.entry.clone(),
            version: self.version.describe(),
            offset: self.offset,
            length: self.length,
            prefix_sha256: (self.offset > 0 && !self.range_only).then(|| hasher.snapshot()),
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
            let read = self.reader.read_into(position, want, &mut chunk)?;
            if read < want {
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
                self.check_unchanged(size)?;
                digest
            }
            None if self.range_only => {
                self.check_unchanged(size)?;
                hasher.finalize()
            }
            None => {
                // Bytes past the requested range still count for the
                // whole-file digest; one extra byte shows whether it grew.
                hash_range(&mut self.reader, &mut hasher, end, size + 1)?;
                self.check_unchanged(hasher.bytes())?;
                let digest = hasher.finalize();
                self.digests.insert(self.version, digest, hashing_started);
                digest
            }
        };
        send(Ok(ReadEvent::End(digest)));
        Ok(())
    }

    /// Fails with [`Error::Changed`] unless `read` bytes were read and the
    /// store still has the version opened at the path.
    fn check_unchanged(&self, read: u64) -> Result<()> {
        if read == self.entry.size && self.reader.is_current()? {
            Ok(())
        } else {
            Err(Error::Changed {
                path: self.path.shown(),
            })
        }
    }
}
