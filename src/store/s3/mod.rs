//! The object-store root: `serve --root s3://BUCKET[/PREFIX]` serves the
//! objects under PREFIX of an S3-compatible store as its tree, through the
//! `object_store` crate's S3 client.
//!
//! - [`client`]: what the parts share: the client, keys, HEADs, the object
//!   version, entries, store errors.
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

pub(crate) mod client;
pub(crate) mod reader;
pub(crate) mod tree;
pub(crate) mod upload;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as KeyPath;
use object_store::{ObjectStore, RetryConfig};
use tokio::runtime::Handle;

use crate::entry::EntryInfo;
use crate::error::{Error, Result};
use crate::store::{Listed, RequestPath, Store, Swept};
use client::{Inner, ObjectVersion, describe, file_entry, folder_entry};
use reader::S3Reader;
use upload::S3Upload;

/// How long start-up waits for the store to answer its first listing.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Retries of one store request (object_store's own, with backoff).
const REQUEST_RETRIES: usize = 3;
/// How long one store request may keep retrying.
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// An S3 bucket, or the part of it under a prefix.
pub(crate) struct S3Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
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
        let client = |max_retries| {
            let retry = RetryConfig {
                max_retries,
                retry_timeout: RETRY_TIMEOUT,
                ..RetryConfig::default()
            };
            AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .build()
                .map_err(|err| {
                    usage(format!(
                        "{err} (see the AWS_* variables in docs/backends/s3.md)"
                    ))
                })
        };
        let s3 = client(REQUEST_RETRIES)?;
        let once = client(0)?;
        let http = reqwest::Client::builder()
            .build()
            .map_err(|err| Error::Serve(format!("{url}: HTTP client: {err}")))?;
        let inner = Inner {
            s3,
            once,
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

    /// The key of the object `path` may name; `None` for the root, which
    /// is always a folder.
    fn file_key(&self, path: &RequestPath) -> Result<Option<KeyPath>> {
        Ok(self
            .inner
            .key_of(path)?
            .filter(|_| !path.display().is_empty()))
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
                return Ok(file_entry(path.display().to_string(), &head.meta));
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
            let info = file_entry(path.display().to_string(), &head.meta);
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
        let Some(key) = self.file_key(path)? else {
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

    fn open_at(&self, path: &RequestPath, offset: u64) -> Result<S3Reader> {
        if let Some(key) = self.file_key(path)?
            && let Some(reader) =
                S3Reader::first_block(Arc::clone(&self.inner), path.clone(), &key, offset)?
        {
            return Ok(reader);
        }
        self.open(path)
    }

    fn open_many(&self, paths: &[RequestPath]) -> Vec<Result<S3Reader>> {
        // Every first GET at once, on the runtime, and one wait for them
        // all: a batch of small objects costs one request's latency, not
        // one each, and the blocking thread wakes once.
        let firsts: Vec<_> = paths
            .iter()
            .map(|path| match self.file_key(path) {
                Ok(Some(key)) => Some(self.inner.runtime.spawn(S3Reader::first_block_async(
                    Arc::clone(&self.inner),
                    path.clone(),
                    key,
                    0,
                ))),
                _ => None,
            })
            .collect();
        let firsts = self.inner.block_on(async {
            let mut done = Vec::with_capacity(firsts.len());
            for first in firsts {
                done.push(match first {
                    Some(task) => task.await.ok(),
                    None => None,
                });
            }
            done
        });
        paths
            .iter()
            .zip(firsts)
            .map(|(path, first)| match first {
                Some(Ok(Some(reader))) => Ok(reader),
                Some(Err(err)) => Err(err),
                // No answer from the GET: as one open would go on.
                Some(Ok(None)) | None => self.open(path),
            })
            .collect()
    }

    fn stage(&self, path: &RequestPath, replace: bool) -> Result<S3Upload> {
        let shown = path.shown();
        let Some(key) = self.file_key(path)? else {
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
