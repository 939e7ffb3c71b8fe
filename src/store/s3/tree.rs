//! Listings of an object store shown as a tree: common prefixes are
//! folders, keys are files, names sorted in each folder, depth first —
//! the order a directory root lists in.
//!
//! One folder is one delimited listing (`ListObjectsV2` with `/`). A
//! recursive listing is one flat listing of everything below (1,000 keys a
//! request, however deep the tree), arranged into folders in memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::path::Path as KeyPath;
use object_store::{ObjectMeta, ObjectStore};
use tokio_stream::StreamExt as _;

use crate::error::{Error, Result};
use crate::store::s3::client::{Inner, ObjectVersion, file_entry, folder_entry, store_error};
use crate::store::s3::reader::S3Reader;
use crate::store::{Listed, RequestPath};

/// A folder met in a flat listing: its files and subfolders by name.
#[derive(Default)]
struct Folder {
    entries: BTreeMap<String, Node>,
}

/// A name in a folder: a file, a folder, or (keys `a` and `a/b` both
/// exist) both.
#[derive(Default)]
struct Node {
    file: Option<ObjectMeta>,
    folder: Option<Folder>,
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
    let root = if recursive {
        let mut root = Folder::default();
        let mut keys = inner.s3.list(key);
        let base = key.map_or(0, |key| key.parts().count());
        while let Some(meta) = inner.block_on(keys.next()) {
            let meta = meta.map_err(|err| store_error(&shown, &err))?;
            let names: Vec<String> = meta
                .location
                .parts()
                .skip(base)
                .map(|part| part.as_ref().to_string())
                .collect();
            root.insert(&names, meta);
        }
        root
    } else {
        let listed = inner
            .block_on(inner.s3.list_with_delimiter(key))
            .map_err(|err| store_error(&shown, &err))?;
        let mut root = Folder::default();
        for prefix in listed.common_prefixes {
            if let Some(name) = prefix.filename() {
                root.entries.entry(name.to_string()).or_default().folder = Some(Folder::default());
            }
        }
        for meta in listed.objects {
            // A key equal to the folder's own (a "folder marker" ending in
            // `/`) is not an entry of it.
            if meta.location.parts().count() == key.map_or(0, |key| key.parts().count()) {
                continue;
            }
            if let Some(name) = meta.location.filename().map(str::to_string) {
                root.entries.entry(name).or_default().file = Some(meta);
            }
        }
        root
    };
    if root.entries.is_empty() && !path.display().is_empty() {
        return Err(Error::NotFound { path: shown });
    }
    emit_folder(inner, path.display(), &root, recursive, emit);
    Ok(())
}

impl Folder {
    /// Files `meta` at `names` below this folder.
    fn insert(&mut self, names: &[String], meta: ObjectMeta) {
        match names {
            [] => {}
            [name] => self.entries.entry(name.clone()).or_default().file = Some(meta),
            [name, rest @ ..] => self
                .entries
                .entry(name.clone())
                .or_default()
                .folder
                .get_or_insert_with(Folder::default)
                .insert(rest, meta),
        }
    }
}

/// Emits the entries of `folder` (at `base`), depth first; `false` once
/// `emit` asked to stop.
fn emit_folder(
    inner: &Arc<Inner>,
    base: &str,
    folder: &Folder,
    recursive: bool,
    emit: &mut dyn FnMut(Listed<'_, S3Reader>) -> bool,
) -> bool {
    for (name, node) in &folder.entries {
        let path = if base.is_empty() {
            name.clone()
        } else {
            format!("{base}/{name}")
        };
        if let Some(meta) = &node.file
            && !emit_file(inner, &path, meta, emit)
        {
            return false;
        }
        // A name that is a file and a folder at once is listed as the file;
        // the keys below it are still listed, under its name.
        if let Some(sub) = &node.folder {
            if node.file.is_none()
                && !emit(Listed {
                    info: folder_entry(path.clone()),
                    version: None,
                    open: &|| Err(Error::IsDirectory { path: path.clone() }),
                })
            {
                return false;
            }
            if recursive && !emit_folder(inner, &path, sub, recursive, emit) {
                return false;
            }
        }
    }
    true
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
