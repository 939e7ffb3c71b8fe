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
use crate::store::s3::client::{Head, Inner, ObjectVersion, file_entry, store_error};
use crate::store::{Reader, RequestPath};

/// Bytes one ranged GET asks for.
pub(crate) const BLOCK_BYTES: u64 = 4 * 1024 * 1024;
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
            return Err(Error::Store {
                path: shown,
                reason: "the store gave no ETag, which fetchd needs to tell versions apart".into(),
            });
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

    /// The version a listing saw: its metadata read now, and
    /// [`Error::Changed`] if the object is another version by then.
    pub(crate) fn pinned(
        inner: Arc<Inner>,
        path: RequestPath,
        listed: &ObjectMeta,
    ) -> Result<S3Reader> {
        let shown = path.shown();
        match inner.head(&listed.location, &shown)? {
            Some(head) if head.meta.e_tag.is_some() && head.meta.e_tag == listed.e_tag => {
                S3Reader::from_head(inner, path, &head)
            }
            // A listing without ETags: the same size and time.
            Some(head)
                if listed.e_tag.is_none()
                    && head.meta.size == listed.size
                    && head.meta.last_modified == listed.last_modified =>
            {
                S3Reader::from_head(inner, path, &head)
            }
            _ => Err(Error::Changed { path: shown }),
        }
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
