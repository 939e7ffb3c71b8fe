//! The object-store root: `serve --root s3://BUCKET[/PREFIX]` serves the
//! objects under PREFIX of an S3-compatible store as its tree, through the
//! `object_store` crate's S3 client.
//!
//! - [`reader`]: a version of an object read as ranged GETs pinned to its
//!   ETag, several blocks ahead at once.
//! - [`upload`]: uploads streamed to the store (one PUT for a small file, a
//!   multipart upload otherwise), create-only unless the client forces.
//! - [`tree`]: listings turned into folders and files, the way a directory
//!   root shows them.
//!
//! Keys are `/`-separated: a key `a/b/c` is the file `c` in folder `a/b`.
//! A folder exists while some key lies below it. A version is the object's
//! ETag and size: an object replaced while it is read is
//! [`Error::Changed`] (ABORTED), never a mix. A store's methods block; they
//! run on tokio's blocking pool and drive the async client with the
//! runtime's handle.
//!
//! Configuration is the standard AWS environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`), read by
//! [`AmazonS3Builder::from_env`].

pub(crate) mod reader;
pub(crate) mod tree;
pub(crate) mod upload;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as KeyPath;
use object_store::{Attribute, GetOptions, ObjectMeta, ObjectStore, RetryConfig};
use tokio::runtime::Handle;

use crate::checksum::Digest;
use crate::entry::{EntryInfo, EntryKind, FileVersion};
use crate::error::{Error, Result};
use crate::store::{self, Listed, RequestPath, Store, Swept};
use reader::S3Reader;
use upload::S3Upload;

/// The user-metadata key (`x-amz-meta-fetchd-sha256`) under which an object
/// that fetchd uploaded keeps its sha256, in hex.
pub(crate) const SHA256_METADATA: &str = "fetchd-sha256";
/// How long start-up waits for the store to answer its first listing.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Retries of one store request (object_store's own, with backoff).
const REQUEST_RETRIES: usize = 3;
/// How long one store request may keep retrying.
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Mode bits shown for objects (the store has none).
const FILE_MODE: u32 = 0o644;
/// Mode bits shown for folders.
const FOLDER_MODE: u32 = 0o755;

/// An S3 bucket, or the part of it under a prefix.
pub(crate) struct S3Store {
    inner: Arc<Inner>,
}

/// What readers and uploads share with the store.
pub(crate) struct Inner {
    /// The client.
    pub(crate) s3: AmazonS3,
    /// `s3://BUCKET[/PREFIX]`, for the log.
    pub(crate) url: String,
    /// The keys served are below this one (`None`: the whole bucket).
    pub(crate) prefix: Option<KeyPath>,
    /// The runtime that drives the client from blocking threads.
    pub(crate) runtime: Handle,
    /// For the one request object_store's client cannot send: a
    /// create-only multipart completion (presigned, see [`upload`]).
    pub(crate) http: reqwest::Client,
    /// Set once a listing came without ETags: versions are then told apart
    /// by size and time, so that listings and HEADs agree on them.
    pub(crate) untagged_listings: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
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
        match self.block_on(self.s3.get_opts(key, options)) {
            Ok(got) => {
                let stored = got
                    .attributes
                    .get(&Attribute::Metadata(SHA256_METADATA.into()))
                    .and_then(|hex| parse_digest(hex.as_ref()));
                Ok(Some(Head {
                    meta: got.meta,
                    stored,
                }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            // Some stores (file-system backed ones) fail a HEAD of a key
            // that is a folder instead of answering 404: a folder is no
            // object, whatever the status.
            Err(_) if self.has_children(Some(key), shown)? => Ok(None),
            Err(err) => Err(store_error(shown, &err)),
        }
    }

    /// True when some key lies below `key` (it is a folder).
    pub(crate) fn has_children(&self, key: Option<&KeyPath>, shown: &str) -> Result<bool> {
        use tokio_stream::StreamExt as _;
        let mut keys = self.s3.list(key);
        match self.block_on(keys.next()) {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(err)) => Err(store_error(shown, &err)),
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
    /// Told apart by size and time only (the store's listings carry no
    /// ETags): a digest is then trusted only once the time has settled.
    timed: bool,
}

impl ObjectVersion {
    /// The version that `meta` describes.
    pub(crate) fn of(meta: &ObjectMeta, etag: &str) -> ObjectVersion {
        use sha2::Digest as _;
        let hashed = sha2::Sha256::digest(etag.as_bytes());
        let mut short = [0u8; 16];
        short.copy_from_slice(&hashed[..16]);
        ObjectVersion {
            etag: short,
            size: meta.size,
            mtime_ns: mtime_ns(meta),
            timed: false,
        }
    }

    /// The version by size and Last-Modified alone, for a store whose
    /// listings carry no ETags (s3s-fs): what a listing and a HEAD agree on.
    pub(crate) fn timed(meta: &ObjectMeta) -> ObjectVersion {
        ObjectVersion {
            etag: [0; 16],
            size: meta.size,
            mtime_ns: mtime_ns(meta),
            timed: true,
        }
    }
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

impl S3Store {
    /// Connects to `url` (`s3://BUCKET[/PREFIX]`) with the AWS environment's
    /// settings and lists the prefix once, so that a store that cannot be
    /// reached (or refuses the credentials) fails here, with the reason.
    pub(crate) async fn connect(url: &str) -> Result<S3Store> {
        let usage = |reason: String| Error::Usage(format!("--root {url}: {reason}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| usage("an object-store root starts with s3://".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(usage("no bucket name (s3://BUCKET[/PREFIX])".into()));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            None
        } else {
            Some(
                KeyPath::parse(prefix)
                    .map_err(|err| usage(format!("the prefix is not a usable key ({err})")))?,
            )
        };
        // Both object_store's client and ours use rustls; this process uses
        // ring (as tonic does), installed once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let retry = RetryConfig {
            max_retries: REQUEST_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
            ..RetryConfig::default()
        };
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .build()
            .map_err(|err| {
                usage(format!(
                    "{err} (see the AWS_* variables in docs/backends/s3.md)"
                ))
            })?;
        let http = reqwest::Client::builder()
            .build()
            .map_err(|err| Error::Serve(format!("{url}: HTTP client: {err}")))?;
        let inner = Inner {
            s3,
            url: url.to_string(),
            prefix,
            runtime: Handle::current(),
            http,
            untagged_listings: std::sync::atomic::AtomicBool::new(false),
        };
        let probe = inner.s3.list_with_delimiter(inner.prefix.as_ref());
        match tokio::time::timeout(CONNECT_TIMEOUT, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                return Err(Error::Serve(format!(
                    "{url}: cannot use the object store: {}",
                    describe(&err)
                )));
            }
            Err(_) => {
                return Err(Error::Serve(format!(
                    "{url}: the object store did not answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        }
        Ok(S3Store {
            inner: Arc::new(inner),
        })
    }

    /// The entry of the object `head` describes, at `path`.
    fn file_entry(path: String, meta: &ObjectMeta) -> EntryInfo {
        EntryInfo {
            path,
            kind: EntryKind::File,
            size: meta.size,
            mtime_ns: mtime_ns(meta),
            mode: FILE_MODE,
            sha256: None,
        }
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

impl Store for S3Store {
    type Version = ObjectVersion;
    type Reader = S3Reader;
    type Staged = S3Upload;

    fn describe(&self) -> String {
        self.inner.url.clone()
    }

    fn stat(&self, path: &RequestPath) -> Result<EntryInfo> {
        let shown = path.shown();
        let key = self.inner.key_of(path)?;
        if let Some(key) = &key
            && !path.display().is_empty()
        {
            if let Some(head) = self.inner.head(key, &shown)? {
                return Ok(S3Store::file_entry(path.display().to_string(), &head.meta));
            }
            if !self.inner.has_children(Some(key), &shown)? {
                return Err(Error::NotFound { path: shown });
            }
        }
        Ok(folder_entry(path.display().to_string()))
    }

    fn list(
        &self,
        path: &RequestPath,
        recursive: bool,
        emit: &mut dyn FnMut(Listed<'_, S3Reader>) -> bool,
    ) -> Result<()> {
        let shown = path.shown();
        let key = self.inner.key_of(path)?;
        // A folder first: one listing answers it, where a HEAD of a folder's
        // name costs a request (and on some stores an error and retries).
        let key = match tree::walk(&self.inner, path, key.as_ref(), recursive, emit) {
            Err(Error::NotFound { .. }) if !path.display().is_empty() => key,
            walked => return walked,
        };
        if let Some(key) = &key
            && let Some(head) = self.inner.head(key, &shown)?
        {
            let info = S3Store::file_entry(path.display().to_string(), &head.meta);
            let etag = head.meta.e_tag.clone().unwrap_or_default();
            let version = self.inner.version_of(&head.meta, &etag);
            let open = || S3Reader::from_head(Arc::clone(&self.inner), path.clone(), &head);
            emit(Listed {
                info,
                version: Some(version),
                open: &open,
            });
            return Ok(());
        }
        Err(Error::NotFound { path: shown })
    }

    fn open(&self, path: &RequestPath) -> Result<S3Reader> {
        let shown = path.shown();
        let key = self.inner.key_of(path)?;
        let Some(key) = key.filter(|_| !path.display().is_empty()) else {
            return Err(Error::IsDirectory { path: shown });
        };
        match self.inner.head(&key, &shown)? {
            Some(head) => S3Reader::from_head(Arc::clone(&self.inner), path.clone(), &head),
            None if self.inner.has_children(Some(&key), &shown)? => {
                Err(Error::IsDirectory { path: shown })
            }
            None => Err(Error::NotFound { path: shown }),
        }
    }

    fn stage(&self, path: &RequestPath, replace: bool) -> Result<S3Upload> {
        let shown = path.shown();
        let key = self.inner.key_of(path)?;
        let Some(key) = key.filter(|_| !path.display().is_empty()) else {
            return Err(Error::TargetIsDirectory { path: shown });
        };
        if self.inner.has_children(Some(&key), &shown)? {
            return Err(Error::TargetIsDirectory { path: shown });
        }
        if !replace && self.inner.head(&key, &shown)?.is_some() {
            return Err(Error::AlreadyExists { path: shown });
        }
        Ok(S3Upload::new(Arc::clone(&self.inner), key, shown, replace))
    }

    fn sweep(&self) -> Result<Swept> {
        // Uploads that a killed server left unfinished are multipart
        // uploads the store holds, not objects: a bucket lifecycle rule
        // (AbortIncompleteMultipartUpload) removes them; see
        // docs/backends/s3.md.
        Ok(Swept::default())
    }
}

/// Modification time of `meta` in nanoseconds since the Unix epoch.
pub(crate) fn mtime_ns(meta: &ObjectMeta) -> i64 {
    meta.last_modified.timestamp_nanos_opt().unwrap_or(0)
}

/// A 64-digit hex sha256, as the metadata keeps it.
fn parse_digest(hex: &str) -> Option<Digest> {
    let bytes = hex::decode(hex.trim()).ok()?;
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
