//! What the S3 store's parts share: the client and its runtime ([`Inner`]),
//! keys, HEAD requests, the object version, entries, and how a store error
//! is told to the client. The store ([`super`]), its reader, its listings
//! and its uploads all build on this; it imports none of them.

use std::fmt;
use std::future::Future;

use object_store::aws::AmazonS3;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as KeyPath;
use object_store::{Attribute, Attributes, GetOptions, ObjectMeta, ObjectStore};
use tokio::runtime::Handle;

use crate::checksum::Digest;
use crate::entry::{EntryInfo, EntryKind, FileVersion};
use crate::error::{Error, Result};
use crate::store::{self, RequestPath};

/// The user-metadata key (`x-amz-meta-fetchd-sha256`) under which an object
/// that fetchd uploaded keeps its sha256, in hex.
pub(crate) const SHA256_METADATA: &str = "fetchd-sha256";
/// Mode bits shown for objects (the store has none).
const FILE_MODE: u32 = 0o644;
/// Mode bits shown for folders.
const FOLDER_MODE: u32 = 0o755;

/// What readers and uploads share with the store.
pub(crate) struct Inner {
    /// The client.
    pub(crate) s3: AmazonS3,
    /// The same client without retries, for a request whose failure has a
    /// cheaper answer than a retry: some stores (file-system backed ones)
    /// fail a HEAD or GET of a folder's name with 500 instead of 404, and a
    /// one-key listing then tells the folder at once.
    pub(crate) once: AmazonS3,
    /// `s3://BUCKET[/PREFIX]`, for the log.
    pub(crate) url: String,
    /// The keys served are below this one (`None`: the whole bucket).
    pub(crate) prefix: Option<KeyPath>,
    /// The runtime that drives the client from blocking threads.
    pub(crate) runtime: Handle,
    /// For the one request object_store's client cannot send: a
    /// create-only multipart completion (presigned, see [`super::upload`]).
    pub(crate) http: reqwest::Client,
    /// Set once a listing came without ETags: versions are then told apart
    /// by key, size and time, so that listings and HEADs agree on them.
    pub(crate) untagged_listings: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The version of the object `meta` (from a HEAD) describes.
    pub(crate) fn version_of(&self, meta: &ObjectMeta, etag: &str) -> ObjectVersion {
        if self
            .untagged_listings
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            ObjectVersion::timed(meta)
        } else {
            ObjectVersion::of(meta, etag)
        }
    }

    /// Runs `work` on the runtime from a blocking thread.
    pub(crate) fn block_on<F: Future>(&self, work: F) -> F::Output {
        self.runtime.block_on(work)
    }

    /// The key that `path` names (the prefix for the root itself).
    pub(crate) fn key_of(&self, path: &RequestPath) -> Result<Option<KeyPath>> {
        if path.climbs_out() {
            return Err(Error::OutsideRoot { path: path.shown() });
        }
        let relative = path.display();
        if relative.is_empty() {
            return Ok(self.prefix.clone());
        }
        let full = match &self.prefix {
            Some(prefix) => format!("{}/{relative}", prefix.as_ref()),
            None => relative.to_string(),
        };
        KeyPath::parse(&full).map(Some).map_err(|err| {
            tracing::debug!(path = %path.shown(), error = %err, "not a usable object key");
            Error::InvalidPath {
                path: path.shown(),
                reason: "it is not a usable object key",
            }
        })
    }

    /// The object at `key` with its attributes, read by a HEAD request;
    /// `None` when there is none.
    pub(crate) fn head(&self, key: &KeyPath, shown: &str) -> Result<Option<Head>> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let head = |got: object_store::GetResult| Head {
            stored: stored_digest(&got.attributes),
            meta: got.meta,
        };
        match self.block_on(self.once.get_opts(key, options.clone())) {
            Ok(got) => return Ok(Some(head(got))),
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            // A folder is no object, whatever the status.
            Err(_) if self.has_children(Some(key), shown)? => return Ok(None),
            Err(err) => {
                tracing::debug!(path = shown, error = %describe(&err), "HEAD failed; asking again with retries");
            }
        }
        match self.block_on(self.s3.get_opts(key, options)) {
            Ok(got) => Ok(Some(head(got))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(store_error(shown, &err)),
        }
    }

    /// True when some key lies below `key` (it is a folder).
    /// One delimited page of one name: stores that keep keys as files
    /// then look at one level of the folder, not the whole subtree.
    pub(crate) fn has_children(&self, key: Option<&KeyPath>, shown: &str) -> Result<bool> {
        let prefix = key.map(|key| format!("{}{}", key.as_ref(), object_store::path::DELIMITER));
        let options = PaginatedListOptions {
            delimiter: Some(object_store::path::DELIMITER.into()),
            max_keys: Some(1),
            ..PaginatedListOptions::default()
        };
        match self.block_on(self.s3.list_paginated(prefix.as_deref(), options)) {
            Ok(page) => {
                Ok(!page.result.objects.is_empty() || !page.result.common_prefixes.is_empty())
            }
            Err(err) => Err(store_error(shown, &err)),
        }
    }
}

/// An object as a HEAD request describes it.
#[derive(Debug)]
pub(crate) struct Head {
    /// Key, size, time, ETag.
    pub(crate) meta: ObjectMeta,
    /// The sha256 an upload by fetchd left in the object's metadata.
    pub(crate) stored: Option<Digest>,
}

/// One version of an object: its ETag (as a 128-bit hash, so the version
/// stays `Copy`) and size. The ETag names the content exactly, so digests
/// need no racy-time window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ObjectVersion {
    etag: [u8; 16],
    size: u64,
    mtime_ns: i64,
    /// Told apart by key, size and time (the store's listings carry no
    /// ETags; `etag` then holds the key's hash): a digest is then trusted
    /// only once the time has settled.
    timed: bool,
}

impl ObjectVersion {
    /// The version that `meta` describes.
    pub(crate) fn of(meta: &ObjectMeta, etag: &str) -> ObjectVersion {
        ObjectVersion {
            etag: short_hash(&[etag.as_bytes()]),
            size: meta.size,
            mtime_ns: mtime_ns(meta),
            timed: false,
        }
    }

    /// The version by key, size and Last-Modified, for a store whose
    /// listings carry no ETags (s3s-fs): what a listing and a HEAD agree on.
    /// The key is in it because the digest cache is shared by every object:
    /// two objects of one size written in one second are still two.
    pub(crate) fn timed(meta: &ObjectMeta) -> ObjectVersion {
        ObjectVersion {
            etag: short_hash(&[b"key\0", meta.location.as_ref().as_bytes()]),
            size: meta.size,
            mtime_ns: mtime_ns(meta),
            timed: true,
        }
    }
}

/// The first 128 bits of the sha256 of `parts`, one after the other.
fn short_hash(parts: &[&[u8]]) -> [u8; 16] {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let mut short = [0u8; 16];
    short.copy_from_slice(&hasher.finalize()[..16]);
    short
}

impl store::Version for ObjectVersion {
    fn describe(&self) -> FileVersion {
        let (device, inode) = self.etag.split_at(8);
        FileVersion {
            device: u64::from_be_bytes(device.try_into().unwrap_or_default()),
            inode: u64::from_be_bytes(inode.try_into().unwrap_or_default()),
            size: self.size,
            mtime_ns: self.mtime_ns,
        }
    }

    fn racy_mtime_ns(&self) -> Option<i64> {
        self.timed.then_some(self.mtime_ns)
    }
}

/// The entry of the object `head` describes, at `path`.
pub(crate) fn file_entry(path: String, meta: &ObjectMeta) -> EntryInfo {
    EntryInfo {
        path,
        kind: EntryKind::File,
        size: meta.size,
        mtime_ns: mtime_ns(meta),
        mode: FILE_MODE,
        sha256: None,
    }
}

/// A folder's entry (folders have no time of their own in a store).
pub(crate) fn folder_entry(path: String) -> EntryInfo {
    EntryInfo {
        path,
        kind: EntryKind::Dir,
        size: 0,
        mtime_ns: 0,
        mode: FOLDER_MODE,
        sha256: None,
    }
}

/// Modification time of `meta` in nanoseconds since the Unix epoch, in
/// whole seconds: a listing tells milliseconds, a HEAD or GET (an HTTP date)
/// only seconds, and the two must describe one version alike.
pub(crate) fn mtime_ns(meta: &ObjectMeta) -> i64 {
    meta.last_modified.timestamp().saturating_mul(1_000_000_000)
}

/// The sha256 an upload by fetchd left in an object's metadata (64 hex
/// digits), from the attributes of a HEAD or GET answer.
pub(crate) fn stored_digest(attributes: &Attributes) -> Option<Digest> {
    let hex = attributes.get(&Attribute::Metadata(SHA256_METADATA.into()))?;
    let bytes = hex::decode(hex.as_ref().trim()).ok()?;
    Digest::from_slice(&bytes)
}

/// What a store error says, without object_store's nesting noise.
pub(crate) fn describe(err: &object_store::Error) -> String {
    use std::error::Error as _;
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A failed store request as the client sees it.
pub(crate) fn store_error(shown: &str, err: &object_store::Error) -> Error {
    tracing::warn!(path = shown, error = %describe(err), "object store request failed");
    Error::Store {
        path: shown.to_string(),
        reason: describe(err),
    }
}
