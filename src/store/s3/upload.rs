//! Uploads to an object store, streamed: nothing is copied to a local file.
//!
//! Bytes gather in a buffer of [`PART_BYTES`]. A file that ends within the
//! first buffer is one PUT at commit, carrying its sha256 in the object's
//! metadata (`x-amz-meta-fetchd-sha256`) so that later listings know it
//! without reading the object. A larger one becomes a multipart upload:
//! each full buffer is a part, [`PARTS_IN_FLIGHT`] sent at once. The
//! object appears only at commit, which the server calls once the whole
//! file's sha256 matched the client's; anything else aborts the upload, so
//! no object and no parts stay behind.
//!
//! Without `--force` the object is created only if there is none:
//! `If-None-Match: *` on the PUT, and on the multipart completion. The
//! latter is a request object_store's client does not send, so it goes out
//! presigned by object_store's signer, with the condition among the signed
//! headers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as KeyPath;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{Attribute, Attributes, MultipartId, ObjectStore, PutMode, PutOptions};
use reqwest::header::{HeaderValue, IF_NONE_MATCH};
use reqwest::{Method, StatusCode};
use tokio::task::JoinHandle;

use crate::checksum::Digest;
use crate::error::{Error, Result};
use crate::store::Staged;
use crate::store::s3::client::{Inner, SHA256_METADATA, describe, store_error};

/// Size of one part (and of the buffer a small file must fit in to be one
/// PUT). At S3's limit of 10,000 parts, objects up to 156 GiB.
pub(crate) const PART_BYTES: usize = 16 * 1024 * 1024;
/// Parts being sent at once (with the buffer, an upload holds at most
/// `(PARTS_IN_FLIGHT + 1) * PART_BYTES`).
pub(crate) const PARTS_IN_FLIGHT: usize = 3;
/// How long a dropped upload waits for its abort to be acknowledged.
const ABORT_WAIT: Duration = Duration::from_secs(10);
/// How long a presigned completion stays valid.
const PRESIGN_VALID: Duration = Duration::from_secs(3600);

/// An upload in progress.
#[derive(Debug)]
pub(crate) struct S3Upload {
    inner: Arc<Inner>,
    key: KeyPath,
    shown: String,
    replace: bool,
    buffer: Vec<u8>,
    multipart: Option<Multipart>,
}

/// The multipart upload a large file became.
#[derive(Debug)]
struct Multipart {
    id: MultipartId,
    /// Parts the store has acknowledged, in order.
    done: Vec<PartId>,
    /// Parts being sent, in order.
    sending: VecDeque<JoinHandle<Result<PartId>>>,
    /// Set once completed (then nothing is aborted).
    completed: bool,
}

impl S3Upload {
    /// An upload of `key`; with `replace`, over an existing object.
    pub(crate) fn new(inner: Arc<Inner>, key: KeyPath, shown: String, replace: bool) -> S3Upload {
        S3Upload {
            inner,
            key,
            shown,
            replace,
            buffer: Vec::new(),
            multipart: None,
        }
    }

    /// Sends the buffer's first `len` bytes as the next part.
    fn send_part(&mut self, len: usize) -> Result<()> {
        let data = Bytes::from(self.buffer.drain(..len).collect::<Vec<u8>>());
        let multipart = match &mut self.multipart {
            Some(multipart) => multipart,
            None => {
                let id = self
                    .inner
                    .block_on(self.inner.s3.create_multipart(&self.key))
                    .map_err(|err| store_error(&self.shown, &err))?;
                self.multipart.insert(Multipart {
                    id,
                    done: Vec::new(),
                    sending: VecDeque::new(),
                    completed: false,
                })
            }
        };
        while multipart.sending.len() >= PARTS_IN_FLIGHT {
            wait_oldest(&self.inner, multipart, &self.shown)?;
        }
        let index = multipart.done.len() + multipart.sending.len();
        let (inner, key, id, shown) = (
            Arc::clone(&self.inner),
            self.key.clone(),
            multipart.id.clone(),
            self.shown.clone(),
        );
        multipart
            .sending
            .push_back(self.inner.runtime.spawn(async move {
                inner
                    .s3
                    .put_part(&key, &id, index, data.into())
                    .await
                    .map_err(|err| store_error(&shown, &err))
            }));
        Ok(())
    }

    /// Completes the multipart upload, create-only unless replacing.
    fn complete(&mut self) -> Result<()> {
        let Some(multipart) = &mut self.multipart else {
            return Ok(());
        };
        while !multipart.sending.is_empty() {
            wait_oldest(&self.inner, multipart, &self.shown)?;
        }
        let parts = multipart.done.clone();
        let result = if self.replace {
            self.inner
                .block_on(
                    self.inner
                        .s3
                        .complete_multipart(&self.key, &multipart.id, parts),
                )
                .map(|_| ())
                .map_err(|err| store_error(&self.shown, &err))
        } else {
            self.inner.block_on(complete_create_only(
                &self.inner,
                &self.key,
                &multipart.id,
                &parts,
                &self.shown,
            ))
        };
        if result.is_ok() {
            multipart.completed = true;
        }
        result
    }
}

/// Waits for the oldest part in flight.
fn wait_oldest(inner: &Inner, multipart: &mut Multipart, shown: &str) -> Result<()> {
    let Some(task) = multipart.sending.pop_front() else {
        return Ok(());
    };
    let part = inner.block_on(task).map_err(|err| Error::Store {
        path: shown.to_string(),
        reason: format!("a part upload failed: {err}"),
    })??;
    multipart.done.push(part);
    Ok(())
}

/// `CompleteMultipartUpload` with `If-None-Match: *`: the store refuses it
/// (412) when an object appeared at the key meanwhile.
async fn complete_create_only(
    inner: &Inner,
    key: &KeyPath,
    id: &MultipartId,
    parts: &[PartId],
    shown: &str,
) -> Result<()> {
    let any = HeaderValue::from_static("*");
    let options = SignedUrlOptions::new()
        .with_query([("uploadId", id.as_str())])
        .with_signed_header(IF_NONE_MATCH, any.clone());
    let url = inner
        .s3
        .signed_url_opts(Method::POST, key, PRESIGN_VALID, &options)
        .await
        .map_err(|err| store_error(shown, &err))?;
    let mut body = String::from("<CompleteMultipartUpload>");
    for (index, part) in parts.iter().enumerate() {
        body.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            index + 1,
            xml_text(&part.content_id)
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    let failed = |reason: String| Error::Store {
        path: shown.to_string(),
        reason,
    };
    let response = inner
        .http
        .post(url)
        .header(IF_NONE_MATCH, any)
        .body(body)
        .send()
        .await
        .map_err(|err| failed(format!("completing the upload: {err}")))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status == StatusCode::PRECONDITION_FAILED || text.contains("<Code>PreconditionFailed") {
        return Err(Error::AlreadyExists {
            path: shown.to_string(),
        });
    }
    // S3 may answer 200 and put the error in the body.
    if !status.is_success() || text.contains("<Error>") {
        let snippet: String = text.chars().take(300).collect();
        return Err(failed(format!(
            "completing the upload: {status}: {snippet}"
        )));
    }
    Ok(())
}

/// `text` escaped for an XML element (ETags carry quotes).
fn xml_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Staged for S3Upload {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(data);
        while self.buffer.len() >= PART_BYTES {
            self.send_part(PART_BYTES)?;
        }
        Ok(())
    }

    fn commit(mut self, sha256: &Digest) -> Result<()> {
        if self.multipart.is_some() {
            if !self.buffer.is_empty() {
                self.send_part(self.buffer.len())?;
            }
            return self.complete();
        }
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(SHA256_METADATA.into()),
            sha256.to_hex().into(),
        );
        let options = PutOptions {
            mode: if self.replace {
                PutMode::Overwrite
            } else {
                PutMode::Create
            },
            attributes,
            ..PutOptions::default()
        };
        let data = Bytes::from(std::mem::take(&mut self.buffer));
        match self
            .inner
            .block_on(self.inner.s3.put_opts(&self.key, data.into(), options))
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(Error::AlreadyExists {
                path: self.shown.clone(),
            }),
            Err(err) => Err(store_error(&self.shown, &err)),
        }
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        let Some(multipart) = self.multipart.take() else {
            return;
        };
        if multipart.completed {
            return;
        }
        // Parts being sent finish first (a request cut mid-body can leave
        // the store a temporary file of its own); then the upload and every
        // part the store holds go. Waited for (bounded), so that the
        // client's error describes a finished cleanup (a store's methods,
        // and so this drop, run on blocking threads).
        let (inner, key, shown) = (
            Arc::clone(&self.inner),
            self.key.clone(),
            self.shown.clone(),
        );
        let (done, wait) = std::sync::mpsc::channel();
        self.inner.runtime.spawn(async move {
            for task in multipart.sending {
                let _ = task.await;
            }
            if let Err(err) = inner.s3.abort_multipart(&key, &multipart.id).await {
                tracing::warn!(
                    path = %shown,
                    error = %describe(&err),
                    "could not abort an unfinished multipart upload; a bucket lifecycle rule \
                     (AbortIncompleteMultipartUpload) removes its parts"
                );
            }
            let _ = done.send(());
        });
        let _ = wait.recv_timeout(ABORT_WAIT);
    }
}
