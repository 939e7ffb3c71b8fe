//! The assembler: a writer thread that appends arriving chunks to a sink and
//! hashes them, fed through a bounded channel so the network loop never
//! blocks on the disk and the client never buffers more than
//! [`ASSEMBLE_QUEUE_CHUNKS`] chunks.

use std::io::{self, Write};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::checksum::Hasher;
use crate::error::{Error, Result};
use crate::partfile::PartFile;

/// Chunks queued between the network loop and the writer thread.
pub(crate) const ASSEMBLE_QUEUE_CHUNKS: usize = 4;

/// Where assembled bytes go.
pub(crate) trait Sink: Send + 'static {
    /// Appends `data`. `Ok(false)` means the reader is gone (a closed pipe)
    /// and nothing more needs writing.
    fn append(&mut self, data: &[u8]) -> Result<bool>;

    /// Makes room for the sink to grow to `size` bytes, where it can.
    fn reserve(&mut self, _size: u64) {}
}

impl Sink for PartFile {
    fn append(&mut self, data: &[u8]) -> Result<bool> {
        PartFile::append(self, data).map(|()| true)
    }

    fn reserve(&mut self, size: u64) {
        PartFile::reserve(self, size);
    }
}

/// Standard output; a closed pipe ends the download quietly.
#[derive(Debug, Default)]
pub(crate) struct StdoutSink {
    closed: bool,
}

impl StdoutSink {
    /// True when the reader closed the pipe.
    pub(crate) fn closed(&self) -> bool {
        self.closed
    }
}

impl Sink for StdoutSink {
    fn append(&mut self, data: &[u8]) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let mut out = io::stdout().lock();
        match out.write_all(data).and_then(|()| out.flush()) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(false)
            }
            Err(err) => Err(Error::io("<stdout>", err)),
        }
    }
}

/// A running assembler: a writer thread and a hasher thread, each fed every
/// chunk through its own bounded channel, so hashing and writing overlap on
/// two cores while the network loop only receives.
#[derive(Debug)]
pub(crate) struct Assembler<S> {
    to_writer: mpsc::Sender<Bytes>,
    to_hasher: mpsc::Sender<Bytes>,
    writer: JoinHandle<(S, Result<()>)>,
    hasher: JoinHandle<Hasher>,
}

/// What the threads hand back: the sink, the hasher over every byte it was
/// given, and whether every write succeeded.
#[derive(Debug)]
pub(crate) struct Assembled<S> {
    /// The sink, for committing or keeping.
    pub sink: S,
    /// Hash of everything the sink held before plus every chunk pushed.
    pub hasher: Hasher,
    /// The first write error, if any (writing stopped there).
    pub written: Result<()>,
}

impl<S: Sink> Assembler<S> {
    /// Starts writing to `sink`, continuing `hasher` (which has already seen
    /// whatever the sink holds); `size` is what the sink will hold at the
    /// end, reserved first.
    pub(crate) fn start(mut sink: S, mut hasher: Hasher, size: u64) -> Assembler<S> {
        let (to_writer, mut writer_rx) = mpsc::channel::<Bytes>(ASSEMBLE_QUEUE_CHUNKS);
        let (to_hasher, mut hasher_rx) = mpsc::channel::<Bytes>(ASSEMBLE_QUEUE_CHUNKS);
        let writer = tokio::task::spawn_blocking(move || {
            sink.reserve(size);
            while let Some(chunk) = writer_rx.blocking_recv() {
                match sink.append(&chunk) {
                    Ok(true) => {}
                    // The reader is gone: keep draining so the sender is
                    // never stuck, but write nothing more.
                    Ok(false) => while writer_rx.blocking_recv().is_some() {},
                    Err(err) => return (sink, Err(err)),
                }
            }
            (sink, Ok(()))
        });
        let hasher = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = hasher_rx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });
        Assembler {
            to_writer,
            to_hasher,
            writer,
            hasher,
        }
    }

    /// Queues the next chunk. `false` means the writer thread stopped (a
    /// write failed): stop pushing and call [`finish`](Self::finish).
    pub(crate) async fn push(&mut self, chunk: Bytes) -> bool {
        self.to_hasher.send(chunk.clone()).await.is_ok() && self.to_writer.send(chunk).await.is_ok()
    }

    /// Waits for every queued chunk to be written and hashed, and hands back
    /// the sink.
    pub(crate) async fn finish(self) -> Result<Assembled<S>> {
        drop(self.to_writer);
        drop(self.to_hasher);
        let joined = |err| Error::io("<assembler thread>", io::Error::other(err));
        let (sink, written) = self.writer.await.map_err(joined)?;
        let hasher = self.hasher.await.map_err(joined)?;
        Ok(Assembled {
            sink,
            hasher,
            written,
        })
    }
}
