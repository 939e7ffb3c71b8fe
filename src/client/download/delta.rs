//! A download as a delta: when DEST holds an older version of the server's
//! file, fetch only the chunks it lacks.
//!
//! The server's manifest (its group list) is asked for while the local copy
//! is cut on a blocking thread with the parameters the server's size
//! implies (cut again if the header names others). Groups the local copy
//! also has are copied from it; for the rest the chunk lists come, and each
//! chunk is copied or fetched. `DEST.part` is written in file order through
//! the assembler (write and sha256 on their own threads): local bytes read
//! from the copy opened once, fetched bytes from one `ReadRanges` stream
//! pinned to the manifest's version. Only a whole-file sha256 equal to the
//! manifest's lets the part become DEST; anything else hands back to the
//! whole download, which starts the part again from byte 0.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::checksum::{Digest, Hasher};
use crate::client::Client;
use crate::client::assemble::Assembler;
use crate::client::download::receive::{blocking, pace};
use crate::client::download::report::{DownloadOptions, shown};
use crate::client::manifest::{MAX_ITEMS_PER_REQUEST, RemoteManifest};
use crate::delta::cut::cut_file;
use crate::delta::plan::{Plan, SourceIndex, Step, missing_groups, plan};
use crate::delta::{Chunked, DELTA_MIN_FILE_BYTES, Params};
use crate::error::{Error, Result};
use crate::partfile::PartFile;
use crate::read_stream::ReadEvent;

/// Bytes copied from the local copy per read.
const COPY_PIECE_BYTES: usize = 1024 * 1024;

/// A delta pays when it reuses at least this share of the file (1/32);
/// below it the whole download is as cheap and simpler.
const MIN_REUSED_SHARE: u64 = 32;

/// What a delta attempt came to.
pub(super) enum Delta {
    /// The part holds the server's file, verified: commit it.
    Done {
        /// The part file.
        part: PartFile,
        /// Its digest.
        sha256: Digest,
        /// The file's size.
        size: u64,
        /// Bytes fetched.
        fetched: u64,
        /// Bytes copied from the local copy.
        reused: u64,
    },
    /// No delta (nothing worth reusing, a manifest refused, a change
    /// meanwhile): the whole download goes on with this part, emptied.
    Whole(PartFile, Option<String>),
    /// A failure the whole download would meet too (the server refused,
    /// cannot be reached): give up with it, keeping the part empty.
    Failed(PartFile, Error),
    /// The writer thread was lost, and the part file with it.
    Lost(Error),
}

/// True when a delta is worth trying for `dest` against a server file of
/// `size` bytes: a regular file (never a symlink, FIFO or device, which are
/// not sources of chunks) with something in it.
pub(super) fn worth_trying(dest: &Path, size: u64, part: &PartFile) -> bool {
    size >= DELTA_MIN_FILE_BYTES
        && part.is_empty()
        && std::fs::symlink_metadata(dest).is_ok_and(|meta| meta.is_file() && meta.len() > 0)
}

/// Opens the local copy as a source of chunks: not following a symlink,
/// not waiting on a FIFO, and only if it is a regular file.
fn open_source(dest: &Path) -> Result<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(dest)
        .map_err(|err| Error::io(dest, err))?;
    let meta = file.metadata().map_err(|err| Error::io(dest, err))?;
    if !meta.is_file() {
        return Err(Error::io(
            dest,
            io::Error::other("not a regular file; not used as a source of chunks"),
        ));
    }
    Ok((file, meta.len()))
}

/// The local copy, opened and cut.
pub(super) struct Local {
    file: Arc<File>,
    chunked: Chunked,
}

/// A local copy of the server's size, cut on two threads while the
/// server's manifest comes: when some group differs from the manifest's, it
/// is not the server's file, and no sha256 of it is needed to say so.
pub(super) struct Scanned {
    /// The copy, cut with the parameters the size implies.
    pub local: Local,
    /// The server's manifest, whose parameters the cut used.
    pub manifest: RemoteManifest,
}

/// What cutting DEST against the server's manifest said.
pub(super) enum Scan {
    /// Some group of DEST is not the server's: a delta from this cut.
    Differs(Scanned),
    /// Every group matches the manifest's, so DEST is the server's file
    /// unless its sha256 says otherwise (it decides, as always).
    Alike(Scanned),
}

/// Cuts DEST, when a delta would be tried against a server file of its own
/// `size`, while asking for the manifest. `None` when no delta would be
/// tried (a small file, not a regular file, a part file in the way) or the
/// manifest cannot serve one (a server without them, a refusal, a change of
/// size): the plain digest check decides then.
pub(super) async fn scan_local(
    client: &Client,
    remote: &str,
    dest: &Path,
    size: u64,
    part: &Path,
) -> Option<Scan> {
    let params = Params::for_size(size)?;
    let regular =
        std::fs::symlink_metadata(dest).is_ok_and(|meta| meta.is_file() && meta.len() == size);
    if !regular || part.exists() {
        return None;
    }
    let (local, manifest) = tokio::join!(
        cut_local(dest.to_path_buf(), params),
        client.manifest(remote)
    );
    let (local, manifest) = match (local, manifest) {
        (Ok(local), Ok(manifest)) => (local, manifest),
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!(%err, "no delta scan; checking the digest");
            return None;
        }
    };
    let outline = manifest.outline.as_ref()?;
    if outline.params != params || manifest.entry.size != size {
        return None;
    }
    let alike = local.chunked.groups == outline.groups;
    let scanned = Scanned { local, manifest };
    Some(if alike {
        Scan::Alike(scanned)
    } else {
        Scan::Differs(scanned)
    })
}

/// Opens and cuts the local copy (two threads).
fn cut_local(dest: PathBuf, params: Params) -> impl Future<Output = Result<Local>> {
    blocking(move || {
        let (file, len) = open_source(&dest)?;
        let chunked = cut_file(&file, len, params).map_err(|err| Error::io(&dest, err))?;
        Ok(Local {
            file: Arc::new(file),
            chunked,
        })
    })
}

/// Tries to download `remote` into `part` (empty) as a delta against
/// `dest`, whose server file is `size` bytes as last seen; `scanned` is
/// DEST already cut against the manifest (by [`scan_local`]).
pub(super) async fn download_delta(
    client: &Client,
    remote: &str,
    dest: &Path,
    part: PartFile,
    size: u64,
    scanned: Option<Box<Scanned>>,
    options: &DownloadOptions,
) -> Delta {
    let (local, manifest) = match scanned.map(|scanned| *scanned) {
        Some(Scanned { local, manifest }) => (Some(Ok(local)), manifest),
        None => {
            let guess = Params::for_size(size);
            let early = guess.map(|params| tokio::spawn(cut_local(dest.to_path_buf(), params)));
            let manifest = match client.manifest(remote).await {
                Ok(manifest) => manifest,
                Err(err @ Error::Protocol { .. }) => {
                    return Delta::Whole(part, Some(err.to_string()));
                }
                Err(err) => return Delta::Failed(part, err),
            };
            let same = manifest
                .outline
                .as_ref()
                .is_some_and(|outline| guess == Some(outline.params));
            let local = match early {
                Some(cut) if same => Some(
                    cut.await
                        .map_err(|err| Error::io(dest, io::Error::other(err)))
                        .and_then(|local| local),
                ),
                _ => None,
            };
            (local, manifest)
        }
    };
    let Some(outline) = manifest.outline.as_ref() else {
        return Delta::Whole(part, None);
    };
    let local = match local {
        Some(local) => local,
        None => cut_local(dest.to_path_buf(), outline.params).await,
    };
    let local = match local {
        Ok(local) => local,
        Err(err) => return Delta::Whole(part, Some(err.to_string())),
    };
    let index = SourceIndex::new(&local.chunked);
    let missing = missing_groups(outline, &index);
    let lists = if missing.is_empty() {
        HashMap::new()
    } else {
        match client.chunk_lists(remote, &manifest, &missing).await {
            Ok(lists) => lists,
            Err(err @ (Error::Protocol { .. } | Error::Changed { .. })) => {
                return Delta::Whole(part, Some(err.to_string()));
            }
            Err(err) if is_changed(&err) => return Delta::Whole(part, Some(err.to_string())),
            Err(err) => return Delta::Failed(part, err),
        }
    };
    let plan = plan(outline, &index, &lists);
    if plan.reused < manifest.entry.size / MIN_REUSED_SHARE {
        // Nothing worth reusing: an ordinary download, without a notice.
        return Delta::Whole(part, None);
    }
    options.progress_start(manifest.entry.size, 0);
    let (part, result) =
        match assemble(client, remote, &manifest, &plan, local.file, part, options).await {
            Ok(assembled) => assembled,
            Err(err) => return Delta::Lost(err),
        };
    match result {
        Ok(sha256) if sha256 == manifest.sha256 => Delta::Done {
            part,
            sha256,
            size: manifest.entry.size,
            fetched: plan.fetched,
            reused: plan.reused,
        },
        Ok(_) => Delta::Whole(
            part,
            Some("the assembled file does not match the server's sha256".into()),
        ),
        Err(err) if is_changed(&err) || matches!(err, Error::Protocol { .. }) => {
            Delta::Whole(part, Some(err.to_string()))
        }
        Err(err) => Delta::Failed(part, err),
    }
}

fn is_changed(err: &Error) -> bool {
    matches!(err, Error::Changed { .. })
        || matches!(
            err,
            Error::Remote {
                code: tonic::Code::Aborted,
                ..
            }
        )
}

/// Writes the plan's bytes into `part` in file order and returns the part
/// with their sha256, or why not; `Err` when the writer thread was lost
/// (and the part with it).
async fn assemble(
    client: &Client,
    remote: &str,
    manifest: &RemoteManifest,
    plan: &Plan,
    local: Arc<File>,
    part: PartFile,
    options: &DownloadOptions,
) -> Result<(PartFile, Result<Digest>)> {
    let mut assembler = Assembler::start(part, Hasher::new(), manifest.entry.size);
    let pushed = push_steps(
        client,
        remote,
        manifest,
        plan,
        &local,
        &mut assembler,
        options,
    )
    .await;
    let assembled = assembler.finish().await?;
    let result = match (assembled.written, pushed) {
        (Err(err), _) | (Ok(()), Err(err)) => Err(err),
        (Ok(()), Ok(())) => Ok(assembled.hasher.finalize()),
    };
    Ok((assembled.sink, result))
}

/// Feeds the assembler every step's bytes, in order.
async fn push_steps(
    client: &Client,
    remote: &str,
    manifest: &RemoteManifest,
    plan: &Plan,
    local: &Arc<File>,
    assembler: &mut Assembler<PartFile>,
    options: &DownloadOptions,
) -> Result<()> {
    let ranges: Vec<(u64, u64)> = plan.fetches().collect();
    let mut fetched = Fetched::new(client, remote, manifest, ranges);
    let stopped = || Error::io(remote, io::Error::other("the writer stopped"));
    let started = std::time::Instant::now();
    let mut received: u64 = 0;
    for step in &plan.steps {
        match *step {
            Step::Copy { from, len } => {
                let mut done = 0;
                while done < len {
                    let piece = (len - done).min(COPY_PIECE_BYTES as u64) as usize;
                    let file = Arc::clone(local);
                    let at = from + done;
                    let bytes = blocking(move || {
                        let mut buf = vec![0u8; piece];
                        file.read_exact_at(&mut buf, at)
                            .map_err(|err| Error::io("<local copy>", err))?;
                        Ok(Bytes::from(buf))
                    })
                    .await?;
                    if !assembler.push(bytes).await {
                        return Err(stopped());
                    }
                    options.progress.inc(piece as u64);
                    done += piece as u64;
                }
            }
            Step::Fetch { len, .. } => {
                let mut done = 0;
                while done < len {
                    let data = fetched.take(len - done).await?;
                    done += data.len() as u64;
                    received += data.len() as u64;
                    options.progress.inc(data.len() as u64);
                    if let Some(rate) = options.limit_rate {
                        pace(started, received, rate).await;
                    }
                    if !assembler.push(data).await {
                        return Err(stopped());
                    }
                }
            }
        }
    }
    fetched.finish().await
}

/// The fetched ranges as one run of bytes, from `ReadRanges` calls of at
/// most [`MAX_ITEMS_PER_REQUEST`] ranges each, one after another.
struct Fetched<'a> {
    client: &'a Client,
    remote: &'a str,
    manifest: &'a RemoteManifest,
    /// Ranges not yet asked for.
    ranges: std::vec::IntoIter<(u64, u64)>,
    stream: Option<crate::client::ReadStream>,
    /// Bytes the current call still owes, and its running digest.
    owed: u64,
    hasher: Hasher,
    pending: Bytes,
}

impl<'a> Fetched<'a> {
    fn new(
        client: &'a Client,
        remote: &'a str,
        manifest: &'a RemoteManifest,
        ranges: Vec<(u64, u64)>,
    ) -> Fetched<'a> {
        Fetched {
            client,
            remote,
            manifest,
            ranges: ranges.into_iter(),
            stream: None,
            owed: 0,
            hasher: Hasher::new(),
            pending: Bytes::new(),
        }
    }

    fn protocol(&self, reason: &str) -> Error {
        Error::Protocol {
            path: shown(self.remote),
            reason: reason.to_string(),
        }
    }

    /// Up to `most` of the next fetched bytes (at least one).
    async fn take(&mut self, most: u64) -> Result<Bytes> {
        while self.pending.is_empty() {
            self.refill().await?;
        }
        let n = (most as usize).min(self.pending.len());
        Ok(self.pending.split_to(n))
    }

    /// The next data message, starting the next call when one is done.
    async fn refill(&mut self) -> Result<()> {
        if self.stream.is_none() {
            let batch: Vec<(u64, u64)> = self.ranges.by_ref().take(MAX_ITEMS_PER_REQUEST).collect();
            if batch.is_empty() {
                return Err(self.protocol("more bytes wanted than the ranges hold"));
            }
            let mut stream = self
                .client
                .read_ranges(self.remote, self.manifest.version, &batch)
                .await?;
            match stream.next().await? {
                Some(ReadEvent::Start(start)) => {
                    let wanted: u64 = batch.iter().map(|range| range.1).sum();
                    if start.length != wanted || start.version != self.manifest.version {
                        return Err(self.protocol("ranges header does not match the request"));
                    }
                    self.owed = wanted;
                }
                _ => return Err(self.protocol("ranges stream did not start with a header")),
            }
            self.hasher = Hasher::new();
            self.stream = Some(stream);
        }
        let next = match self.stream.as_mut() {
            Some(stream) => stream.next().await?,
            None => return Err(self.protocol("no stream")),
        };
        match next {
            Some(ReadEvent::Data(data)) => {
                if data.len() as u64 > self.owed {
                    return Err(self.protocol("more data than the ranges hold"));
                }
                self.owed -= data.len() as u64;
                self.hasher.update(&data);
                self.pending = data;
                Ok(())
            }
            Some(ReadEvent::End(digest)) => {
                let hasher = std::mem::take(&mut self.hasher);
                if self.owed != 0 || hasher.finalize() != digest {
                    return Err(self.protocol("ranges stream ended short or corrupted"));
                }
                // Read on to the status, so the stream is not reset.
                let after = match self.stream.take() {
                    Some(mut stream) => stream.next().await?,
                    None => None,
                };
                if after.is_some() {
                    return Err(self.protocol("data after the ranges trailer"));
                }
                Ok(())
            }
            Some(ReadEvent::Start(_)) => Err(self.protocol("a second ranges header")),
            None => Err(self.protocol("ranges stream ended early")),
        }
    }

    /// Reads the last call to its end (its trailer and status).
    async fn finish(mut self) -> Result<()> {
        if !self.pending.is_empty() || self.ranges.len() > 0 {
            return Err(self.protocol("fetched bytes left over"));
        }
        while self.stream.is_some() {
            self.refill().await?;
            if self.pending.has_remaining() {
                return Err(self.protocol("fetched bytes left over"));
            }
        }
        Ok(())
    }
}
