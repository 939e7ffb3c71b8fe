//! What an upload is asked to do and what it reports: the options, the
//! result, and the check of the server's answer. Shared by the whole-file
//! upload (`mod.rs`) and the delta (`delta.rs`).

use std::sync::Arc;

use indicatif::ProgressBar;

use crate::checksum::Digest;
use crate::client::Written;
use crate::client::download::Notify;
use crate::error::{Error, Result};

/// Bytes per data message.
pub const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;
/// Chunks queued between the reader thread and the network.
pub(crate) const UPLOAD_QUEUE_CHUNKS: usize = 4;

/// How an upload behaves.
#[derive(Clone)]
pub(crate) struct UploadOptions {
    /// Replace an existing file on the server.
    pub force: bool,
    /// With `force`, send only what the server's file lacks (a delta);
    /// `put --whole-file` turns it off.
    pub delta: bool,
    /// Progress display (use [`ProgressBar::hidden`] for none).
    pub progress: ProgressBar,
    /// Where notices (retrying) go.
    pub notify: Notify,
}

impl std::fmt::Debug for UploadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadOptions")
            .field("force", &self.force)
            .field("delta", &self.delta)
            .finish_non_exhaustive()
    }
}

impl Default for UploadOptions {
    fn default() -> UploadOptions {
        UploadOptions {
            force: false,
            delta: true,
            progress: ProgressBar::hidden(),
            notify: Arc::new(|_| {}),
        }
    }
}

/// The result of a finished upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Uploaded {
    /// The path on the server, as the server names it.
    pub path: String,
    /// Bytes stored.
    pub bytes: u64,
    /// sha256 of the stored file, equal on both sides.
    pub sha256: Digest,
    /// File bytes that crossed the wire (less than `bytes` for a delta).
    pub sent: u64,
    /// Bytes the server copied from its previous version (a delta).
    pub reused: u64,
}

/// The server's answer, when it stored exactly the bytes that were sent.
pub(crate) fn checked(
    remote: &str,
    written: Written,
    bytes: u64,
    sha256: Digest,
) -> Result<Uploaded> {
    if written.bytes != bytes || written.sha256 != sha256 {
        return Err(Error::Protocol {
            path: remote.to_string(),
            reason: format!(
                "the server stored {} bytes with sha256 {}, but {bytes} bytes with sha256 {sha256} were sent",
                written.bytes, written.sha256
            ),
        });
    }
    Ok(Uploaded {
        path: written.path,
        bytes,
        sha256,
        sent: bytes,
        reused: 0,
    })
}
