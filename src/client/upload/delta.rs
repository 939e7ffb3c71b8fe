//! `put --force` as a delta: when REMOTE already holds a version of the
//! file, send only the chunks the server does not have.
//!
//! The server's manifest (its group list) is asked for while the local
//! file is cut and hashed on blocking threads, with the parameters the
//! local size implies (cut again if the header names others: the server
//! chooses them from its own size). Groups of the server's version that
//! the new file lacks have their chunk lists fetched; then every chunk of
//! the new file is either a copy of the server's bytes (a `copy` message)
//! or sent as data. The `Write` is pinned to the version the manifest
//! described, and the server checks the sha256 of the file it assembled
//! against the local one before it renames: a change on either side, or a
//! refusal, hands back to the whole upload.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::checksum::Digest;
use crate::client::download::blocking;
use crate::client::upload::report::{
    UPLOAD_CHUNK_BYTES, UPLOAD_QUEUE_CHUNKS, UploadOptions, Uploaded, checked,
};
use crate::client::{Client, UploadPiece, WriteTarget};
use crate::delta::cut::{self, cut_file};
use crate::delta::plan::{Plan, SourceIndex, Step, missing_groups, plan_whole};
use crate::delta::{Chunked, DELTA_MIN_FILE_BYTES, Params};
use crate::error::{Error, Result};

/// A delta pays when it reuses at least this share of the file (1/32);
/// below it the whole upload is as cheap and reads the file once.
const MIN_REUSED_SHARE: u64 = 32;

/// What a delta attempt came to.
pub(super) enum Attempt {
    /// The server stored the file.
    Done(Uploaded),
    /// No delta (no file at REMOTE, nothing worth reusing, a refusal or a
    /// change meanwhile): upload it whole, with a notice when there is
    /// something to say.
    Whole(Option<String>),
    /// A failure the whole upload would meet too (the connection is lost,
    /// the local file changed): give up with it.
    Failed(Error),
}

/// True when a delta is worth trying: replacing (`--force`), not turned
/// off, and a regular file large enough for chunks.
pub(super) fn worth_trying(options: &UploadOptions, size: Option<u64>) -> bool {
    options.force && options.delta && size.is_some_and(|size| size >= DELTA_MIN_FILE_BYTES)
}

/// The local file, opened, cut and hashed.
struct Local {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    modified: Option<SystemTime>,
    chunked: Chunked,
    sha256: Digest,
}

impl Local {
    /// Fails when the file is not the one that was cut: another size or
    /// modification time.
    fn check_unchanged(&self) -> Result<()> {
        let meta = self
            .file
            .metadata()
            .map_err(|err| Error::io(&self.path, err))?;
        if meta.len() != self.size || meta.modified().ok() != self.modified {
            return Err(Error::Changed {
                path: self.path.display().to_string(),
            });
        }
        Ok(())
    }
}

/// Reads `path` once: cut with `params` on this thread, sha256 on another.
fn cut_and_hash(path: PathBuf, params: Params) -> Result<Local> {
    let file = File::open(&path).map_err(|err| Error::io(&path, err))?;
    let meta = file.metadata().map_err(|err| Error::io(&path, err))?;
    let (chunked, hasher) =
        cut::cut_and_hash(&file, params).map_err(|err| Error::io(&path, err))?;
    if hasher.bytes() != meta.len() {
        return Err(Error::Changed {
            path: path.display().to_string(),
        });
    }
    let local = Local {
        size: meta.len(),
        modified: meta.modified().ok(),
        chunked,
        sha256: hasher.finalize(),
        file: Arc::new(file),
        path,
    };
    local.check_unchanged()?;
    Ok(local)
}

/// Tries to upload `path` (a regular file of `size` bytes) over the file
/// at `remote` as a delta.
pub(super) async fn upload_delta(
    client: &Client,
    path: &Path,
    size: u64,
    remote: &str,
    options: &UploadOptions,
) -> Attempt {
    let guess = Params::for_size(size);
    let early = guess.map(|params| {
        let path = path.to_path_buf();
        tokio::spawn(blocking(move || cut_and_hash(path, params)))
    });
    // Any refusal (no such file, a folder, a server without deltas) is
    // for the whole upload to meet and report.
    let manifest = match client.manifest(remote).await {
        Ok(manifest) => manifest,
        Err(err) => {
            tracing::debug!(%err, "no manifest; uploading whole");
            return Attempt::Whole(None);
        }
    };
    let Some(outline) = manifest.outline.as_ref() else {
        return Attempt::Whole(None);
    };
    let local = match early {
        Some(cut) => cut
            .await
            .map_err(|err| Error::io(path, io::Error::other(err)))
            .and_then(|local| local),
        None => return Attempt::Whole(None),
    };
    let mut local = match local {
        Ok(local) => local,
        Err(err) => return Attempt::Failed(err),
    };
    if guess != Some(outline.params) {
        let (file, params, len) = (Arc::clone(&local.file), outline.params, local.size);
        let shown_path = local.path.clone();
        match blocking(move || {
            cut_file(&file, len, params).map_err(|err| Error::io(shown_path, err))
        })
        .await
        {
            Ok(chunked) => local.chunked = chunked,
            Err(err) => return Attempt::Failed(err),
        }
    }
    let missing = missing_groups(outline, &SourceIndex::new(&local.chunked));
    let lists = if missing.is_empty() {
        HashMap::new()
    } else {
        match client.chunk_lists(remote, &manifest, &missing).await {
            Ok(lists) => lists,
            Err(err) if is_delta_refusal(&err) => return Attempt::Whole(Some(err.to_string())),
            Err(err) => return Attempt::Failed(err),
        }
    };
    let plan = plan_whole(&local.chunked, &SourceIndex::described(outline, &lists));
    if plan.reused < size / MIN_REUSED_SHARE {
        return Attempt::Whole(None);
    }
    options.progress.set_length(size);
    options.progress.set_position(0);
    let target = WriteTarget {
        path: remote.to_string(),
        size: Some(size),
        force: true,
        base: Some(manifest.version),
    };
    let local = Arc::new(local);
    let plan = Arc::new(plan);
    let (to_network, body) = mpsc::channel(UPLOAD_QUEUE_CHUNKS);
    let sender = {
        let (local, plan, progress) = (
            Arc::clone(&local),
            Arc::clone(&plan),
            options.progress.clone(),
        );
        tokio::task::spawn_blocking(move || send_plan(&local, &plan, &to_network, &progress))
    };
    let written = client.write(target, body).await;
    let sent = sender
        .await
        .map_err(|err| Error::io(path, io::Error::other(err)))
        .and_then(|sent| sent);
    match (written, sent) {
        (_, Err(err @ Error::Changed { .. })) => {
            options.progress.abandon();
            Attempt::Failed(err)
        }
        (Ok(written), Ok(())) => match checked(remote, written, local.size, local.sha256) {
            Ok(uploaded) => {
                options.progress.finish_and_clear();
                Attempt::Done(Uploaded {
                    sent: plan.fetched,
                    reused: plan.reused,
                    ..uploaded
                })
            }
            Err(err) => Attempt::Whole(Some(err.to_string())),
        },
        (Err(err), _) if is_delta_refusal(&err) => Attempt::Whole(Some(err.to_string())),
        (Err(err), _) | (Ok(_), Err(err)) => {
            options.progress.abandon();
            Attempt::Failed(err)
        }
    }
}

/// Refusals a whole upload would not meet: the server's file changed
/// (ABORTED), the assembled file did not match (DATA_LOSS: the local file
/// changed between its cut and its send), a manifest broke the rules, a
/// server that does not take copies.
fn is_delta_refusal(err: &Error) -> bool {
    use tonic::Code;
    match err {
        Error::Changed { .. } | Error::Protocol { .. } | Error::ChecksumMismatch { .. } => true,
        Error::Remote { code, .. } => matches!(
            code,
            Code::Aborted | Code::DataLoss | Code::InvalidArgument | Code::OutOfRange
        ),
        _ => false,
    }
}

/// The sender thread: every step of `plan` into the `Write` stream (copies
/// as they are, the rest read from the local file), then the sha256 of the
/// cut, once the file is checked to be the one that was cut. `Ok` also when
/// the call ended early (its answer says why).
fn send_plan(
    local: &Local,
    plan: &Plan,
    to_network: &mpsc::Sender<UploadPiece>,
    progress: &indicatif::ProgressBar,
) -> Result<()> {
    for step in &plan.steps {
        match *step {
            Step::Copy { from, len } => {
                let piece = UploadPiece::Copy {
                    offset: from,
                    length: len,
                };
                if to_network.blocking_send(piece).is_err() {
                    return Ok(());
                }
                progress.inc(len);
            }
            Step::Fetch { offset, len } => {
                let mut done = 0;
                while done < len {
                    let want = (len - done).min(UPLOAD_CHUNK_BYTES as u64) as usize;
                    let mut buf = vec![0u8; want];
                    local
                        .file
                        .read_exact_at(&mut buf, offset + done)
                        .map_err(|err| match err.kind() {
                            io::ErrorKind::UnexpectedEof => Error::Changed {
                                path: local.path.display().to_string(),
                            },
                            _ => Error::io(&local.path, err),
                        })?;
                    if to_network
                        .blocking_send(UploadPiece::Data(Bytes::from(buf)))
                        .is_err()
                    {
                        return Ok(());
                    }
                    done += want as u64;
                    progress.inc(want as u64);
                }
            }
        }
    }
    local.check_unchanged()?;
    let _ = to_network.blocking_send(UploadPiece::End(local.sha256));
    Ok(())
}
