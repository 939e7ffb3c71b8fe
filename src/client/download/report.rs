//! What a download is asked to do and what it reports: the options, the
//! outcome, and what a listing already knew about the file.

use std::sync::Arc;

use indicatif::ProgressBar;

use crate::checksum::Digest;

/// Attempts per file when the file changes on the server or a partial copy
/// turns out stale.
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// Callback for notices meant for a human (resuming, restarting).
pub(crate) type Notify = Arc<dyn Fn(&str) + Send + Sync>;

/// How a download behaves.
#[derive(Clone)]
pub(crate) struct DownloadOptions {
    /// Download even when the destination already matches.
    pub force: bool,
    /// Progress display (use [`ProgressBar::hidden`] for none).
    pub progress: ProgressBar,
    /// Receive at most this many bytes per second.
    pub limit_rate: Option<u64>,
    /// Where notices go.
    pub notify: Notify,
    /// The progress bar is shared by a batch: only add bytes to it.
    pub batch: bool,
    /// Fetch only what changed when the destination holds an older copy
    /// (off with `--whole-file`).
    pub delta: bool,
}

impl DownloadOptions {
    pub(crate) fn progress_start(&self, size: u64, offset: u64) {
        if self.batch {
            self.progress.inc(offset);
        } else {
            self.progress.set_length(size);
            self.progress.set_position(offset);
            self.progress.reset_eta();
        }
    }

    pub(crate) fn progress_done(&self) {
        if !self.batch {
            self.progress.finish_and_clear();
        }
    }

    pub(crate) fn progress_abandon(&self) {
        if !self.batch {
            self.progress.abandon();
        }
    }
}

impl std::fmt::Debug for DownloadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadOptions")
            .field("force", &self.force)
            .field("limit_rate", &self.limit_rate)
            .field("delta", &self.delta)
            .finish_non_exhaustive()
    }
}

impl Default for DownloadOptions {
    fn default() -> DownloadOptions {
        DownloadOptions {
            force: false,
            progress: ProgressBar::hidden(),
            limit_rate: None,
            notify: Arc::new(|_| {}),
            batch: false,
            delta: true,
        }
    }
}

/// How a file ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Bytes were transferred and verified.
    Downloaded,
    /// The destination already had the server's size and sha256.
    Skipped,
}

/// The result of one successful download.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    /// Size of the file.
    pub bytes: u64,
    /// Bytes that crossed the network in this run.
    pub transferred: u64,
    /// Bytes taken from the local copy instead (a delta transfer).
    pub reused: u64,
    /// The verified sha256 of the whole file.
    pub sha256: Digest,
    /// Downloaded or skipped.
    pub outcome: Outcome,
}

/// What a listing already told about a remote file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Known {
    /// Its size.
    pub size: u64,
    /// Its sha256, when the listing carried one.
    pub sha256: Option<Digest>,
}

/// The remote path as messages show it: no leading `/`.
pub(crate) fn shown(remote: &str) -> String {
    let trimmed = remote.trim_start_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}
