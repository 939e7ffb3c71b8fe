//! Listings of an object store shown as a tree: common prefixes are
//! folders, keys are files, names sorted in each folder, depth first —
//! the order a directory root lists in.
//!
//! One folder is one delimited listing (`ListObjectsV2` with `/`, 1,000
//! names a page). A recursive listing lists each folder so, up to
//! [`LISTS_AT_ONCE`] folders at a time, as rclone does by default: a
//! folder's subfolders are listed as soon as it is, ahead of the entries
//! being emitted, so the walk costs about one request's latency per
//! [`LISTS_AT_ONCE`] folders. One flat listing of everything below would be
//! fewer requests for a deep tree of sparse folders, but its pages come one
//! after the other, and stores that keep keys as files (s3s-fs, MinIO in
//! file mode) walk the whole subtree again for every page of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::path::Path as KeyPath;
use object_store::{ObjectMeta, ObjectStore};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::store::s3::client::{
    Inner, ObjectVersion, describe, file_entry, folder_entry, store_error,
};
use crate::store::s3::reader::S3Reader;
use crate::store::{Listed, RequestPath};

/// Folder listings in flight at once in a recursive listing.
pub(crate) const LISTS_AT_ONCE: usize = 16;

/// One folder's listing: its names, sorted.
#[derive(Default)]
struct Folder {
    entries: BTreeMap<String, Node>,
}

/// A name in a folder: a file, a folder, or (keys `a` and `a/b` both
/// exist) both.
#[derive(Default)]
struct Node {
    file: Option<ObjectMeta>,
    /// A subfolder; in a recursive walk, its listing on the way.
    folder: Option<Option<Pending>>,
}

/// A subfolder's listing, from the task that lists it.
type Pending = oneshot::Receiver<Result<Folder>>;

/// What the listing tasks of one recursive walk share.
struct Walk {
    inner: Arc<Inner>,
    /// Bounds the listings in flight.
    permits: Semaphore,
    /// Cancelled when the walk ends (finished, failed, or stopped by its
    /// caller), so that listings not yet sent are not.
    done: CancellationToken,
}

/// Lists the folder `path` (key `key`; `None` for the bucket's root).
pub(crate) fn walk(
    inner: &Arc<Inner>,
    path: &RequestPath,
    key: Option<&KeyPath>,
    recursive: bool,
    emit: &mut dyn FnMut(Listed<'_, S3Reader>) -> bool,
) -> Result<()> {
    let shown = path.shown();
    let done = CancellationToken::new();
    let _stop = done.clone().drop_guard();
    let walk = Arc::new(Walk {
        inner: Arc::clone(inner),
        permits: Semaphore::new(LISTS_AT_ONCE),
        done,
    });
    let root = inner
        .block_on(list_folder(&walk, key.cloned(), recursive))
        .map_err(|err| store_error(&shown, &err))?;
    if root.entries.is_empty() && !path.display().is_empty() {
        return Err(Error::NotFound { path: shown });
    }
    emit_folder(inner, path.display(), root, emit).map(|_| ())
}

/// Lists the folder `key` (one delimited listing, however many pages);
/// with `recursive`, starts the listings of its subfolders too.
async fn list_folder(
    walk: &Arc<Walk>,
    key: Option<KeyPath>,
    recursive: bool,
) -> object_store::Result<Folder> {
    let listed = {
        let _permit = walk.permits.acquire().await;
        walk.inner.s3.list_with_delimiter(key.as_ref()).await?
    };
    let depth = key.as_ref().map_or(0, |key| key.parts().count());
    let mut folder = Folder::default();
    for prefix in listed.common_prefixes {
        let Some(name) = prefix.filename().map(str::to_string) else {
            continue;
        };
        let pending = recursive.then(|| list_later(walk, prefix));
        folder.entries.entry(name).or_default().folder = Some(pending);
    }
    for meta in listed.objects {
        // A key equal to the folder's own (a "folder marker" ending in
        // `/`) is not an entry of it.
        if meta.location.parts().count() == depth {
            continue;
        }
        if let Some(name) = meta.location.filename().map(str::to_string) {
            folder.entries.entry(name).or_default().file = Some(meta);
        }
    }
    Ok(folder)
}

/// Starts listing the folder `key` (and, as it is listed, its subfolders)
/// in a task of its own.
fn list_later(walk: &Arc<Walk>, key: KeyPath) -> Pending {
    let (tx, rx) = oneshot::channel();
    let walk = Arc::clone(walk);
    walk.inner.runtime.clone().spawn(async move {
        let shown = key.to_string();
        let listed = tokio::select! {
            () = walk.done.cancelled() => return,
            listed = list_folder(&walk, Some(key), true) => listed,
        };
        let _ = tx.send(listed.map_err(|err| {
            tracing::debug!(key = %shown, error = %describe(&err), "a folder listing failed");
            store_error(&shown, &err)
        }));
    });
    rx
}

/// Emits the entries of `folder` (at `base`), depth first, waiting for
/// each subfolder's listing as the walk reaches it; `false` once `emit`
/// asked to stop.
fn emit_folder(
    inner: &Arc<Inner>,
    base: &str,
    folder: Folder,
    emit: &mut dyn FnMut(Listed<'_, S3Reader>) -> bool,
) -> Result<bool> {
    for (name, node) in folder.entries {
        let path = if base.is_empty() {
            name
        } else {
            format!("{base}/{name}")
        };
        if let Some(meta) = &node.file
            && !emit_file(inner, &path, meta, emit)
        {
            return Ok(false);
        }
        let Some(sub) = node.folder else { continue };
        // A name that is a file and a folder at once is listed as the file;
        // the keys below it are still listed, under its name.
        if node.file.is_none()
            && !emit(Listed {
                info: folder_entry(path.clone()),
                version: None,
                open: &|| Err(Error::IsDirectory { path: path.clone() }),
            })
        {
            return Ok(false);
        }
        if let Some(pending) = sub {
            let listed = inner.block_on(pending).map_err(|_| Error::Store {
                path: path.clone(),
                reason: "a folder listing stopped before it answered".into(),
            })??;
            if !emit_folder(inner, &path, listed, emit)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn emit_file(
    inner: &Arc<Inner>,
    path: &str,
    meta: &ObjectMeta,
    emit: &mut dyn FnMut(Listed<'_, S3Reader>) -> bool,
) -> bool {
    let info = file_entry(path.to_string(), meta);
    let version = match meta.e_tag.as_deref() {
        Some(etag) => ObjectVersion::of(meta, etag),
        None => {
            inner
                .untagged_listings
                .store(true, std::sync::atomic::Ordering::Relaxed);
            ObjectVersion::timed(meta)
        }
    };
    // Opening (for a digest) reads the object's metadata, pinned to the
    // ETag the listing saw: a digest fetchd stored costs no body read.
    let open = || {
        let request = RequestPath::parse(path)?;
        S3Reader::pinned(Arc::clone(inner), request, meta)
    };
    emit(Listed {
        info,
        version: Some(version),
        open: &open,
    })
}
