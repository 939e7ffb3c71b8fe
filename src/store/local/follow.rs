//! `Tail`: each stream follows one file by name, like `tail -F`.
//!
//! Each stream has its own descriptor and its own offset, so a slow client
//! never holds back another; what they share is the folder watch
//! ([`super::watches`]) that wakes them. The stream is the follower itself
//! (an `async-fn-stream` generator), polled by the HTTP/2 stream's task: a
//! wake-up reads what was appended with `pread` in [`TAIL_CHUNK_BYTES`]
//! pieces and hands each to HTTP/2 directly, with no task or channel in
//! between (one hop less on the way from the write to the socket). HTTP/2
//! polls it only when the client's flow-control window has room, so a
//! client that stops reading stops its own follower (memory per stream: one
//! message plus HTTP/2's send buffer), never the server. Backlogs are read
//! on the blocking pool; bytes appended since a read that reached the end
//! are read in place (they were just written, so they come from the page
//! cache in microseconds).
//!
//! What the follower notices, and says with a notice of its own:
//! - **Truncation** (`truncate`, copytruncate): the file is shorter than the
//!   offset, or the last bytes sent before the offset are no longer there
//!   (rewritten and grown past the offset before the follower looked). Data
//!   restarts at offset 0 of the same file.
//! - **Rotation** (rename + create, delete + create): the path names another
//!   file. The old descriptor is read to its end first. While the new file
//!   is still empty the follower stays with the old one (a writer may still be
//!   appending to it until it reopens its log), then switches and sends the
//!   new file from 0.
//! - **Gone**: nothing at the path; the follower waits for a file to appear (the
//!   old descriptor is still read if someone writes to it).
//!
//! Every message carries a cursor (file identity and offset); a request with
//! a cursor continues right after it, also across a server restart: if the
//! path names another file by then, the cursor's file is looked for by inode
//! in the same folder (where rotation leaves it) and finished first.
//!
//! The stream ends when the client leaves (HTTP/2 drops it), on an error,
//! or when the server stops (`stopping`): a last `Stopping` notice with the
//! cursor of the last message handed out, then a clean end.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use async_fn_stream::{StreamEmitter, fn_stream};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::checksum::Hasher;
use crate::error::{Error, Result};
use crate::store::local::places::Place;
use crate::store::local::root::Root;
use crate::store::local::watches::{Subscription, TAIL_POLL_INTERVAL, Watches};
use crate::store::{RequestPath, TailEvents, TailSpec};
use crate::tail_stream::{FileId, RecentBytes, TailCursor, TailEvent, TailNotice, TailStart};

/// Most bytes in one data message.
pub(crate) const TAIL_CHUNK_BYTES: usize = 16 * 1024;
/// How many of the last bytes sent are compared again before reading on,
/// to notice a file that was truncated and rewritten past the offset.
pub(crate) const TAIL_FINGERPRINT_BYTES: usize = 32;
/// A stream that reached the end of its file once and is at most this far
/// behind it reads in place rather than on the blocking pool: those bytes
/// were written moments ago and come from the page cache.
pub(crate) const TAIL_INLINE_LAG_BYTES: u64 = 1024 * 1024;
/// Bytes read at a time while looking back for the last lines.
const SCAN_BYTES: usize = 64 * 1024;

/// One item of a tail stream: a message, or the error that ends it.
pub(crate) type TailItem = Result<TailEvent>;

/// Starts following (blocking: call it on the blocking pool). Resolving,
/// opening and finding the start happen before this returns, so a refused
/// or (without follow) missing file is the call's error rather than a
/// message; the returned stream does the rest as it is polled. It ends on
/// `stopping`, on an error, or (without follow) at the end of the data;
/// dropping it (the client left) stops following.
pub(crate) fn start(
    root: Arc<Root>,
    watches: Watches,
    spec: TailSpec,
    stopping: CancellationToken,
) -> Result<TailEvents> {
    let (tailer, first) = Tailer::open(root, watches, spec)?;
    Ok(Box::pin(fn_stream(move |emitter| async move {
        let out = Out {
            emitter,
            stopping,
            delivered: tailer.cursor(),
        };
        tailer.run(first, out).await;
    })))
}

/// Why a stream stops before its end.
enum Stop {
    /// The server is shutting down.
    Stopping,
    /// Something failed; the client gets it as the stream's status.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(err: Error) -> Stop {
        Stop::Failed(err)
    }
}

/// The sending side of a stream.
struct Out {
    emitter: StreamEmitter<TailItem>,
    stopping: CancellationToken,
    /// The cursor of the last message handed out: where a client that
    /// reconnects after `Stopping` continues.
    delivered: TailCursor,
}

impl Out {
    /// Hands `event` to HTTP/2; returns once it was taken (the stream is
    /// polled again only when the client's window has room). Refused once
    /// the server is stopping, so nothing is handed out after the cursor
    /// the `Stopping` notice carries.
    async fn send(&mut self, event: TailEvent) -> Result<(), Stop> {
        if self.stopping.is_cancelled() {
            return Err(Stop::Stopping);
        }
        self.delivered = event.cursor();
        self.emitter.emit(Ok(event)).await;
        Ok(())
    }

    async fn notice(&mut self, notice: TailNotice, cursor: TailCursor) -> Result<(), Stop> {
        self.send(TailEvent::Notice { notice, cursor }).await
    }
}

/// The file a stream reads now.
#[derive(Debug)]
struct Current {
    file: Arc<File>,
    id: FileId,
    offset: u64,
    /// The last bytes before `offset` (at most [`TAIL_FINGERPRINT_BYTES`]).
    recent: Vec<u8>,
    /// Without follow: where to stop.
    end: Option<u64>,
    /// A read reached the end of this file once: what follows was written
    /// while the stream was following.
    live: bool,
    /// The file's size at the last read.
    seen_size: u64,
}

impl Current {
    /// Starts reading `file` at `offset`, remembering the bytes before it.
    fn new(file: File, meta: &std::fs::Metadata, offset: u64) -> io::Result<Current> {
        let back = offset.min(TAIL_FINGERPRINT_BYTES as u64);
        let mut recent = vec![0; back as usize];
        if read_full_at(&file, &mut recent, offset - back)? < recent.len() {
            // Shrank meanwhile; the next read notices the truncation.
            recent.clear();
        }
        Ok(Current {
            file: Arc::new(file),
            id: FileId::of(meta),
            offset,
            recent,
            end: None,
            live: false,
            seen_size: 0,
        })
    }

    /// True when the next bytes were written moments ago and so come from
    /// the page cache: the stream reached the end once, and lags by less
    /// than [`TAIL_INLINE_LAG_BYTES`].
    fn reads_hot(&self) -> bool {
        self.live && self.seen_size.saturating_sub(self.offset) <= TAIL_INLINE_LAG_BYTES
    }

    fn cursor(&self) -> TailCursor {
        TailCursor {
            file: Some(self.id),
            offset: self.offset,
        }
    }

    /// Records that `data` was sent.
    fn advance(&mut self, data: &[u8]) {
        self.offset += data.len() as u64;
        if data.len() >= TAIL_FINGERPRINT_BYTES {
            self.recent.clear();
            self.recent
                .extend_from_slice(&data[data.len() - TAIL_FINGERPRINT_BYTES..]);
        } else {
            self.recent.extend_from_slice(data);
            let extra = self.recent.len().saturating_sub(TAIL_FINGERPRINT_BYTES);
            self.recent.drain(..extra);
        }
    }
}

/// One stream's state.
struct Tailer {
    root: Arc<Root>,
    watches: Watches,
    path: RequestPath,
    shown: String,
    follow: bool,
    /// Events for the file's name; `None` while its folder does not exist.
    subscription: Option<Subscription>,
    current: Option<Current>,
    /// `Gone` was sent and no file has appeared since.
    gone: bool,
    /// The path names a new, still empty file; the old one is still read.
    pending: bool,
}

impl Tailer {
    /// Resolves, subscribes, opens and finds the start (blocking). Returns
    /// the state and the first messages.
    fn open(root: Arc<Root>, watches: Watches, spec: TailSpec) -> Result<(Tailer, Vec<TailEvent>)> {
        let shown = spec.path.shown();
        let follow = spec.follow;
        let place = match root.place(&spec.path) {
            Ok(place) => Some(place),
            Err(Error::NotFound { .. }) if follow => None,
            Err(err) => return Err(err),
        };
        // Subscribe before opening: nothing written in between is missed.
        let subscription = match &place {
            Some(place) if follow => Some(subscribe(&watches, place, &shown)?),
            _ => None,
        };
        let opened = match &place {
            Some(place) if place.file.is_some() => {
                match Root::open_in(&place.folder, &place.name, &shown) {
                    Ok(opened) => Some(opened),
                    Err(Error::NotFound { .. }) => None,
                    Err(err) => return Err(err),
                }
            }
            _ => None,
        };
        if opened.is_none() && !follow {
            return Err(Error::NotFound { path: shown });
        }
        let io_error = |err: io::Error| Error::from_server_io(&shown, err);
        let (mut current, mut first) =
            start_at(spec.start, spec.recent, place.as_ref(), opened, &shown)?;
        let gone = match &mut current {
            Some(current) => {
                if !follow {
                    let size = current.file.metadata().map_err(io_error)?.len();
                    current.end = Some(size.max(current.offset));
                }
                if !matches!(
                    first.last(),
                    Some(TailEvent::Notice {
                        notice: TailNotice::Truncated,
                        ..
                    })
                ) {
                    first.push(TailEvent::Notice {
                        notice: TailNotice::Opened,
                        cursor: current.cursor(),
                    });
                }
                false
            }
            None => {
                first.push(TailEvent::Notice {
                    notice: TailNotice::Gone,
                    cursor: TailCursor::default(),
                });
                true
            }
        };
        let tailer = Tailer {
            root,
            watches,
            path: spec.path,
            shown,
            follow,
            subscription,
            current,
            gone,
            pending: false,
        };
        Ok((tailer, first))
    }

    fn cursor(&self) -> TailCursor {
        self.current
            .as_ref()
            .map(Current::cursor)
            .unwrap_or_default()
    }

    async fn run(mut self, first: Vec<TailEvent>, mut out: Out) {
        let stopped = self.follow_file(first, &mut out).await;
        match stopped {
            Ok(()) => {}
            Err(Stop::Stopping) => {
                // A client that does not read any more never gets it, and
                // the server's drain deadline ends the call.
                let notice = TailEvent::Notice {
                    notice: TailNotice::Stopping,
                    cursor: out.delivered,
                };
                out.emitter.emit(Ok(notice)).await;
            }
            Err(Stop::Failed(err)) => {
                tracing::debug!(path = %self.shown, %err, "tail failed");
                out.emitter.emit(Err(err)).await;
            }
        }
    }

    /// Drops the subscription off the async threads: removing the last
    /// watch of a folder talks to the watcher thread.
    fn release_watch(&mut self) {
        if let Some(subscription) = self.subscription.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(subscription))),
                Err(_) => drop(subscription),
            }
        }
    }

    async fn follow_file(&mut self, first: Vec<TailEvent>, out: &mut Out) -> Result<(), Stop> {
        for event in first {
            out.send(event).await?;
        }
        // Look at the path once after the first drain: a resumed stream may
        // be reading a file that was rotated away before it started.
        let mut check = true;
        loop {
            self.drain(out).await?;
            if !self.follow {
                return Ok(());
            }
            if check && self.check_path(out).await? {
                // Switched files: read the new one, then look again.
                continue;
            }
            let renamed = self.wait(out).await?;
            let polling = self
                .subscription
                .as_ref()
                .is_none_or(Subscription::is_polling);
            check = renamed || polling || self.gone || self.pending;
        }
    }

    /// Waits for an event, the client leaving or the server stopping;
    /// returns whether the name may refer to another file now.
    async fn wait(&mut self, out: &Out) -> Result<bool, Stop> {
        let woken = async {
            match self.subscription.as_mut() {
                Some(subscription) => subscription.wait().await.renamed,
                None => {
                    tokio::time::sleep(TAIL_POLL_INTERVAL).await;
                    true
                }
            }
        };
        tokio::select! {
            () = out.stopping.cancelled() => Err(Stop::Stopping),
            renamed = woken => Ok(renamed),
        }
    }

    /// Sends what the current file has past the offset (up to its end as
    /// seen now), noticing truncation on the way.
    async fn drain(&mut self, out: &mut Out) -> Result<(), Stop> {
        loop {
            let Some(current) = self.current.as_mut() else {
                return Ok(());
            };
            let room = match current.end {
                Some(end) => end.saturating_sub(current.offset),
                None => u64::MAX,
            };
            if room == 0 {
                return Ok(());
            }
            let max = usize::try_from(room)
                .unwrap_or(usize::MAX)
                .min(TAIL_CHUNK_BYTES);
            let read = if current.reads_hot() {
                // Bytes written a moment ago: a few microseconds from the
                // page cache, not worth a trip to the blocking pool (which
                // a thousand streams woken at once would also inflate).
                read_next(&current.file, current.offset, &current.recent, max)
            } else {
                // A backlog (start, resume, a new file) may need the disk.
                let file = Arc::clone(&current.file);
                let (offset, recent) = (current.offset, current.recent.clone());
                tokio::task::spawn_blocking(move || read_next(&file, offset, &recent, max))
                    .await
                    .map_err(|err| join_error(&self.shown, err))?
            }
            .map_err(|err| Error::from_server_io(&self.shown, err))?;
            match read {
                Chunk::Truncated { size } => {
                    current.live = false;
                    current.offset = 0;
                    current.recent.clear();
                    if current.end.is_some() {
                        current.end = Some(size);
                    }
                    let cursor = current.cursor();
                    out.notice(TailNotice::Truncated, cursor).await?;
                }
                Chunk::Data { data, size } if data.is_empty() => {
                    current.live = true;
                    current.seen_size = size;
                    return Ok(());
                }
                Chunk::Data { data, size } => {
                    let short = data.len() < max;
                    current.live |= short;
                    current.seen_size = size;
                    current.advance(&data);
                    let cursor = current.cursor();
                    out.send(TailEvent::Data { data, cursor }).await?;
                    if short {
                        // The end as seen now; later writes wake us again.
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Resolves the path again and acts on what it names now; true when
    /// the stream switched to another file.
    async fn check_path(&mut self, out: &mut Out) -> Result<bool, Stop> {
        let root = Arc::clone(&self.root);
        let path = self.path.clone();
        let placed = tokio::task::spawn_blocking(move || root.place(&path))
            .await
            .map_err(|err| join_error(&self.shown, err))?;
        let place = match placed {
            Ok(place) => place,
            Err(Error::NotFound { .. }) => {
                // The folder itself is gone: poll until it is back.
                self.release_watch();
                self.went_missing(out).await?;
                return Ok(false);
            }
            Err(err) => return Err(Stop::Failed(err)),
        };
        self.ensure_subscribed(&place).await?;
        let Some(meta) = &place.file else {
            self.went_missing(out).await?;
            return Ok(false);
        };
        let id = FileId::of_entry(meta);
        if self
            .current
            .as_ref()
            .is_some_and(|current| current.id == id)
        {
            // Still (or again) the file being read.
            self.pending = false;
            self.narrow();
            if self.gone {
                self.gone = false;
                out.notice(TailNotice::Appeared, self.cursor()).await?;
            }
            return Ok(false);
        }
        if self.current.is_some() && meta.len() == 0 {
            // A rotation has begun: wait for the new file's first byte
            // and keep reading the old one until then.
            self.pending = true;
            self.widen();
            return Ok(false);
        }
        // The old file to its end, then the new one from its start.
        self.drain(out).await?;
        let shown = self.shown.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let (file, meta) = Root::open_in(&place.folder, &place.name, &shown)?;
            let current =
                Current::new(file, &meta, 0).map_err(|err| Error::from_server_io(&shown, err))?;
            Ok::<_, Error>(current)
        })
        .await
        .map_err(|err| join_error(&self.shown, err))?;
        let current = match opened {
            Ok(current) => current,
            // Removed again before it could be opened.
            Err(Error::NotFound { .. }) => {
                self.went_missing(out).await?;
                return Ok(false);
            }
            Err(err) => return Err(Stop::Failed(err)),
        };
        let notice = if self.gone || self.current.is_none() {
            TailNotice::Appeared
        } else {
            TailNotice::Rotated
        };
        let cursor = current.cursor();
        self.current = Some(current);
        self.gone = false;
        self.pending = false;
        self.narrow();
        out.notice(notice, cursor).await?;
        Ok(true)
    }

    /// Nothing at the path: say so once, and wake for anything in the
    /// folder (the old file may still be written to under another name).
    async fn went_missing(&mut self, out: &mut Out) -> Result<(), Stop> {
        self.pending = false;
        self.widen();
        if !self.gone {
            self.gone = true;
            out.notice(TailNotice::Gone, self.cursor()).await?;
        }
        Ok(())
    }

    /// Makes sure the subscription is for the folder and name `place` names
    /// (the folder may have been replaced, or a symlink repointed).
    async fn ensure_subscribed(&mut self, place: &Place) -> Result<(), Stop> {
        if let Some(subscription) = &self.subscription
            && subscription.folder_id() == place.folder_id
            && subscription.name() == place.name.as_str()
        {
            return Ok(());
        }
        let folder = place
            .folder
            .try_clone()
            .map_err(|err| Error::from_server_io(&self.shown, err))?;
        let watches = self.watches.clone();
        let (id, name) = (place.folder_id, place.name.clone());
        let subscription =
            tokio::task::spawn_blocking(move || watches.subscribe(folder, id, &name))
                .await
                .map_err(|err| join_error(&self.shown, err))?;
        self.release_watch();
        self.subscription = Some(subscription);
        if self.gone || self.pending {
            self.widen();
        }
        Ok(())
    }

    fn widen(&mut self) {
        if let Some(subscription) = self.subscription.as_mut() {
            subscription.widen();
        }
    }

    fn narrow(&mut self) {
        if let Some(subscription) = self.subscription.as_mut() {
            subscription.narrow();
        }
    }
}

impl Drop for Tailer {
    /// However the stream ends (its end, an error, the client leaving), the
    /// folder watch is given back.
    fn drop(&mut self) {
        self.release_watch();
    }
}

/// Where a new stream starts, given what the path names now (`opened`):
/// the file to read and its offset, and the notices to send first
/// (blocking).
fn start_at(
    start: TailStart,
    recent: Option<RecentBytes>,
    place: Option<&Place>,
    opened: Option<(File, std::fs::Metadata)>,
    shown: &str,
) -> Result<(Option<Current>, Vec<TailEvent>)> {
    let io_error = |err: io::Error| Error::from_server_io(shown, err);
    let mut first = Vec::new();
    let cursor = match start {
        TailStart::LastLines(lines) => {
            let Some((file, meta)) = opened else {
                return Ok((None, first));
            };
            let offset = last_lines_start(&file, meta.len(), lines).map_err(io_error)?;
            let current = Current::new(file, &meta, offset).map_err(io_error)?;
            return Ok((Some(current), first));
        }
        TailStart::Cursor(cursor) => cursor,
    };
    let (chosen, offset) = match (cursor.file, opened) {
        // No file seen before: whatever is there, from its start.
        (None, opened) => (opened, 0),
        // The same file as before.
        (Some(id), Some(opened)) if FileId::of(&opened.1) == id => (Some(opened), cursor.offset),
        // Another file (or none) at the path: the cursor's file may be in
        // the same folder under its rotated name.
        (Some(id), opened) => {
            let found = match place {
                Some(place) => Root::find_in(&place.folder, id.device, id.inode, shown)?
                    .filter(|(_, meta)| FileId::of(meta) == id),
                None => None,
            };
            match found {
                Some(found) => (Some(found), cursor.offset),
                // Another copy of the file (a replica's, on another host)
                // that holds the bytes the client saw last, where it saw
                // them: the same stream, from the same offset.
                None if opened.as_ref().is_some_and(|(file, meta)| {
                    holds_recent(file, meta.len(), cursor.offset, recent.as_ref())
                }) =>
                {
                    (opened, cursor.offset)
                }
                None => {
                    first.push(TailEvent::Notice {
                        notice: TailNotice::ResumeLost,
                        cursor,
                    });
                    (opened, 0)
                }
            }
        }
    };
    let Some((file, meta)) = chosen else {
        return Ok((None, first));
    };
    if meta.len() < offset {
        // Shorter than the cursor: truncated while nobody watched.
        let current = Current::new(file, &meta, 0).map_err(io_error)?;
        first.push(TailEvent::Notice {
            notice: TailNotice::Truncated,
            cursor: current.cursor(),
        });
        return Ok((Some(current), first));
    }
    let current = Current::new(file, &meta, offset).map_err(io_error)?;
    Ok((Some(current), first))
}

/// True when `file` (of `size` bytes) holds the bytes `recent` describes
/// just before `offset` (blocking; a read error counts as no).
fn holds_recent(file: &File, size: u64, offset: u64, recent: Option<&RecentBytes>) -> bool {
    let Some(recent) = recent else {
        return false;
    };
    let len = u64::from(recent.len);
    if len == 0 || len > offset || offset > size {
        return false;
    }
    let mut buf = vec![0; recent.len as usize];
    match read_full_at(file, &mut buf, offset - len) {
        Ok(read) if read == buf.len() => {
            let mut hasher = Hasher::new();
            hasher.update(&buf);
            hasher.finalize() == recent.sha256
        }
        _ => false,
    }
}

/// Subscribes to `place`'s folder and name (blocking).
fn subscribe(watches: &Watches, place: &Place, shown: &str) -> Result<Subscription> {
    let folder = place
        .folder
        .try_clone()
        .map_err(|err| Error::from_server_io(shown, err))?;
    Ok(watches.subscribe(folder, place.folder_id, &place.name))
}

/// What one read found.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    /// The file is shorter than the offset, or was rewritten before it.
    Truncated {
        /// Its size now.
        size: u64,
    },
    /// The next bytes (empty at the end).
    Data {
        /// The bytes.
        data: Bytes,
        /// The file's size when they were read.
        size: u64,
    },
}

/// Reads up to `max` bytes at `offset`, checking first that the file still
/// holds `recent` just before it (blocking).
fn read_next(file: &File, offset: u64, recent: &[u8], max: usize) -> io::Result<Chunk> {
    let size = file.metadata()?.len();
    if size < offset {
        return Ok(Chunk::Truncated { size });
    }
    let want = usize::try_from(size - offset)
        .unwrap_or(usize::MAX)
        .min(max);
    if want == 0 {
        return Ok(Chunk::Data {
            data: Bytes::new(),
            size,
        });
    }
    let back = recent.len();
    let mut buf = vec![0; back + want];
    let got = read_full_at(file, &mut buf, offset - back as u64)?;
    if got < back || buf[..back] != *recent {
        return Ok(Chunk::Truncated {
            size: file.metadata()?.len(),
        });
    }
    buf.truncate(got);
    Ok(Chunk::Data {
        data: Bytes::from(buf).split_off(back),
        size,
    })
}

/// Reads at `offset` until `buf` is full or the file ends; returns the
/// number of bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Where the last `lines` lines of the first `size` bytes of `file` begin.
/// A final line without a newline counts as a line; 0 lines is the end.
pub(crate) fn last_lines_start(file: &File, size: u64, lines: u32) -> io::Result<u64> {
    if lines == 0 || size == 0 {
        return Ok(size);
    }
    let mut left = lines;
    let mut end = size;
    let mut buf = vec![0; SCAN_BYTES];
    while end > 0 {
        let start = end.saturating_sub(SCAN_BYTES as u64);
        let chunk = &mut buf[..(end - start) as usize];
        if read_full_at(file, chunk, start)? < chunk.len() {
            // Shrank while we looked: start at 0; reading notices the rest.
            return Ok(0);
        }
        for (i, byte) in chunk.iter().enumerate().rev() {
            let at = start + i as u64;
            // A newline ends a line; the one at the very end ends the last.
            if *byte == b'\n' && at + 1 < size {
                left -= 1;
                if left == 0 {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

fn join_error(shown: &str, err: tokio::task::JoinError) -> Error {
    Error::io(shown, io::Error::other(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(data: &[u8]) -> File {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(data).expect("write");
        file
    }

    fn last(data: &[u8], lines: u32) -> Vec<u8> {
        let file = file_with(data);
        let start = last_lines_start(&file, data.len() as u64, lines).expect("scan");
        data[start as usize..].to_vec()
    }

    /// The last N lines, like `tail -n N`, with and without a final newline.
    #[test]
    fn last_lines_like_tail() {
        assert_eq!(last(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last(b"a\nb\nc\n", 1), b"c\n");
        assert_eq!(last(b"a\nb\nc", 1), b"c");
        assert_eq!(last(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last(b"a\nb\nc\n", 9), b"a\nb\nc\n");
        assert_eq!(last(b"a\nb\nc\n", 0), b"");
        assert_eq!(last(b"\n\n\n", 2), b"\n\n");
        assert_eq!(last(b"", 5), b"");
        assert_eq!(last(b"no newline", 1), b"no newline");
    }

    /// Lines longer than the scan block and counts across blocks.
    #[test]
    fn last_lines_across_scan_blocks() {
        let long = vec![b'x'; SCAN_BYTES * 2 + 3];
        let mut data = long.clone();
        data.push(b'\n');
        data.extend_from_slice(b"tail\n");
        assert_eq!(last(&data, 1), b"tail\n");
        let mut both = long;
        both.extend_from_slice(b"\ntail\n");
        assert_eq!(last(&data, 2), both);
        let many: Vec<u8> = (0..50_000)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        assert_eq!(last(&many, 3), b"49997\n49998\n49999\n");
    }

    /// A read notices truncation by size and by rewritten bytes.
    #[test]
    fn read_next_notices_truncation() {
        let file = file_with(b"hello world\n");
        assert_eq!(
            read_next(&file, 6, b"hello ", 100).expect("read"),
            Chunk::Data {
                data: Bytes::from_static(b"world\n"),
                size: 12
            }
        );
        assert_eq!(
            read_next(&file, 20, b"", 100).expect("read"),
            Chunk::Truncated { size: 12 }
        );
        assert_eq!(
            read_next(&file, 6, b"HELLO ", 100).expect("read"),
            Chunk::Truncated { size: 12 }
        );
        assert_eq!(
            read_next(&file, 12, b"\n", 100).expect("read"),
            Chunk::Data {
                data: Bytes::new(),
                size: 12
            }
        );
        assert_eq!(
            read_next(&file, 0, b"", 5).expect("read"),
            Chunk::Data {
                data: Bytes::from_static(b"hello"),
                size: 12
            }
        );
    }
}
