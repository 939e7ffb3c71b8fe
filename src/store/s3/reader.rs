//! An object version read as ranged GETs: every GET carries `If-Match` with
//! the ETag the read began with, and its answer's ETag is checked too (a
//! store that ignores the condition is still caught), so a read never
//! mixes two versions of an object: a replaced object is
//! [`Error::Changed`].
//!
//! Reads run [`AHEAD_BLOCKS`] GETs of [`BLOCK_BYTES`] ahead of the reader,
//! so one transfer is not held to one request's latency; the window is
//! restarted wherever a read jumps to.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as KeyPath;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};
use tokio::task::JoinHandle;

use crate::checksum::Digest;
use crate::entry::EntryInfo;
use crate::error::{Error, Result};
use crate::store::s3::client::{
    Head, Inner, ObjectVersion, describe, file_entry, mtime_ns, store_error, stored_digest,
};
use crate::store::{Reader, RequestPath};

/// Bytes one ranged GET asks for.
pub(crate) const BLOCK_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes the first GET of a read asks for, with no HEAD before it: every
/// file a `ReadMany` batch carries (at most 1 MiB) comes whole with the
/// version in one request.
pub(crate) const FIRST_BYTES: u64 = 1024 * 1024;
/// GETs in flight ahead of the reader (so a read holds at most
/// `AHEAD_BLOCKS * BLOCK_BYTES` = 16 MiB).
pub(crate) const AHEAD_BLOCKS: usize = 4;

/// An object version opened for reading.
#[derive(Debug)]
pub(crate) struct S3Reader {
    inner: Arc<Inner>,
    key: KeyPath,
    etag: Arc<str>,
    version: ObjectVersion,
    entry: EntryInfo,
    stored: Option<Digest>,
    ahead: ReadAhead,
}

/// Blocks fetched and being fetched.
#[derive(Debug, Default)]
struct ReadAhead {
    /// The block the reader is in: where it starts, its bytes.
    current: Option<(u64, Bytes)>,
    /// GETs in flight, in order: where each starts, its task.
    pending: VecDeque<(Range<u64>, JoinHandle<Result<Bytes>>)>,
    /// Where the next GET to start begins.
    next: u64,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        for (_, task) in &self.pending {
            task.abort();
        }
    }
}

impl S3Reader {
    /// The version a HEAD request described.
    pub(crate) fn from_head(inner: Arc<Inner>, path: RequestPath, head: &Head) -> Result<S3Reader> {
        let shown = path.shown();
        let Some(etag) = head.meta.e_tag.clone() else {
            return Err(no_etag(shown));
        };
        Ok(S3Reader {
            key: head.meta.location.clone(),
            version: inner.version_of(&head.meta, &etag),
            etag: etag.into(),
            entry: file_entry(path.display().to_string(), &head.meta),
            stored: head.stored,
            ahead: ReadAhead::default(),
            inner,
        })
    }

    /// Opens the object at `key` with one GET of up to [`FIRST_BYTES`] from
    /// `offset`: its version and its first block in one request, where a
    /// HEAD and a GET would be two. `None` when the GET cannot tell (no such
    /// object, a folder's name, a range the object does not have, as for an
    /// empty one): the caller asks with a HEAD.
    pub(crate) fn first_block(
        inner: Arc<Inner>,
        path: RequestPath,
        key: &KeyPath,
        offset: u64,
    ) -> Result<Option<S3Reader>> {
        let runtime = inner.runtime.clone();
        runtime.block_on(S3Reader::first_block_async(
            inner,
            path,
            key.clone(),
            offset,
        ))
    }

    /// [`first_block`](S3Reader::first_block) on the runtime, for opening
    /// several objects at once.
    pub(crate) async fn first_block_async(
        inner: Arc<Inner>,
        path: RequestPath,
        key: KeyPath,
        offset: u64,
    ) -> Result<Option<S3Reader>> {
        let shown = path.shown();
        let asked = offset..offset.saturating_add(FIRST_BYTES);
        let options = GetOptions {
            range: Some(GetRange::Bounded(asked)),
            ..GetOptions::default()
        };
        let got = match inner.once.get_opts(&key, options).await {
            Ok(got) => got,
            Err(err) => {
                tracing::debug!(path = %shown, error = %describe(&err), "a first GET did not tell; asking with a HEAD");
                return Ok(None);
            }
        };
        let Some(etag) = got.meta.e_tag.clone() else {
            return Err(no_etag(shown));
        };
        let range = got.range.clone();
        let meta = got.meta.clone();
        let stored = stored_digest(&got.attributes);
        let data = got.bytes().await.map_err(|err| store_error(&shown, &err))?;
        if data.len() as u64 != range.end - range.start {
            return Err(Error::Changed { path: shown });
        }
        Ok(Some(S3Reader {
            key: meta.location.clone(),
            version: inner.version_of(&meta, &etag),
            etag: etag.into(),
            entry: file_entry(path.display().to_string(), &meta),
            stored,
            ahead: ReadAhead {
                next: range.end,
                current: Some((range.start, data)),
                pending: VecDeque::new(),
            },
            inner,
        }))
    }

    /// The version a listing saw: its metadata read now (by a HEAD, which
    /// tells a digest fetchd stored without a body), and [`Error::Changed`]
    /// if the object is another version by then.
    pub(crate) fn pinned(
        inner: Arc<Inner>,
        path: RequestPath,
        listed: &ObjectMeta,
    ) -> Result<S3Reader> {
        let shown = path.shown();
        let Some(head) = inner.head(&listed.location, &shown)? else {
            return Err(Error::Changed { path: shown });
        };
        let same = match (&listed.e_tag, &head.meta.e_tag) {
            (Some(listed), Some(now)) => listed == now,
            // A listing without ETags: the same size and time.
            (None, Some(_)) => {
                head.meta.size == listed.size && mtime_ns(&head.meta) == mtime_ns(listed)
            }
            (_, None) => false,
        };
        if !same {
            return Err(Error::Changed { path: shown });
        }
        S3Reader::from_head(inner, path, &head)
    }

    /// The block holding `position`, fetched (or waited for) as needed.
    fn block_at(&mut self, position: u64) -> Result<&(u64, Bytes)> {
        let holds = |start: u64, len: usize| (start..start + len as u64).contains(&position);
        if self
            .ahead
            .current
            .as_ref()
            .is_some_and(|(start, data)| holds(*start, data.len()))
        {
            return self
                .ahead
                .current
                .as_ref()
                .ok_or_else(|| unreachable_block(&self.entry));
        }
        // Drop what lies before the position; restart the window when the
        // position is not next in it.
        while let Some((range, task)) = self.ahead.pending.front() {
            if range.end <= position {
                task.abort();
                self.ahead.pending.pop_front();
            } else {
                break;
            }
        }
        if !self
            .ahead
            .pending
            .front()
            .is_some_and(|(range, _)| range.contains(&position))
        {
            for (_, task) in self.ahead.pending.drain(..) {
                task.abort();
            }
            self.ahead.next = position;
        }
        self.top_up();
        let Some((range, task)) = self.ahead.pending.pop_front() else {
            return Err(unreachable_block(&self.entry));
        };
        let data = self.inner.block_on(task).map_err(|err| Error::Store {
            path: self.entry.path.clone(),
            reason: format!("a read task failed: {err}"),
        })??;
        self.ahead.current = Some((range.start, data));
        self.top_up();
        self.ahead
            .current
            .as_ref()
            .ok_or_else(|| unreachable_block(&self.entry))
    }

    /// Starts GETs until [`AHEAD_BLOCKS`] are in flight or the object ends.
    fn top_up(&mut self) {
        let size = self.entry.size;
        while self.ahead.pending.len() < AHEAD_BLOCKS && self.ahead.next < size {
            let range = self.ahead.next..(self.ahead.next + BLOCK_BYTES).min(size);
            self.ahead.next = range.end;
            let task = self.inner.runtime.spawn(fetch(
                Arc::clone(&self.inner),
                self.key.clone(),
                Arc::clone(&self.etag),
                range.clone(),
                self.entry.path.clone(),
            ));
            self.ahead.pending.push_back((range, task));
        }
    }
}

/// One ranged GET of the version `etag`.
async fn fetch(
    inner: Arc<Inner>,
    key: KeyPath,
    etag: Arc<str>,
    range: Range<u64>,
    shown: String,
) -> Result<Bytes> {
    let options = GetOptions {
        if_match: Some(etag.to_string()),
        range: Some(GetRange::Bounded(range.clone())),
        ..GetOptions::default()
    };
    let changed = || Error::Changed {
        path: shown.clone(),
    };
    let got = match inner.s3.get_opts(&key, options).await {
        Ok(got) => got,
        Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
            return Err(changed());
        }
        Err(err) => return Err(store_error(&shown, &err)),
    };
    if got.meta.e_tag.as_deref() != Some(&*etag) || got.range != range {
        return Err(changed());
    }
    let data = got.bytes().await.map_err(|err| store_error(&shown, &err))?;
    if data.len() as u64 != range.end - range.start {
        return Err(changed());
    }
    Ok(data)
}

fn no_etag(shown: String) -> Error {
    Error::Store {
        path: shown,
        reason: "the store gave no ETag, which fetchd needs to tell versions apart".into(),
    }
}

fn unreachable_block(entry: &EntryInfo) -> Error {
    Error::Store {
        path: entry.path.clone(),
        reason: "no block for the read (a bug in fetchd)".into(),
    }
}

impl Reader for S3Reader {
    type Version = ObjectVersion;

    fn version(&self) -> ObjectVersion {
        self.version
    }

    fn entry(&self) -> &EntryInfo {
        &self.entry
    }

    fn read_into(&mut self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<usize> {
        let end = offset.saturating_add(len as u64).min(self.entry.size);
        let mut position = offset;
        while position < end {
            let (start, data) = self.block_at(position)?;
            let from = usize::try_from(position - start).unwrap_or(usize::MAX);
            let to = data
                .len()
                .min(usize::try_from(end - start).unwrap_or(usize::MAX));
            buf.extend_from_slice(&data[from..to]);
            position += (to - from) as u64;
        }
        Ok(usize::try_from(position.saturating_sub(offset)).unwrap_or(0))
    }

    fn is_current(&self) -> Result<bool> {
        // Every byte came from a GET pinned to the version (If-Match, and
        // the answer's ETag checked): what was read is that version whole,
        // and a replacement on the way was an error already.
        Ok(true)
    }

    fn stored_digest(&self) -> Option<Digest> {
        self.stored
    }
}
