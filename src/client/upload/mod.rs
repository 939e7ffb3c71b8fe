//! One local file (or stdin) to the server: `fetchd put`.
//!
//! A blocking thread reads the source in [`UPLOAD_CHUNK_BYTES`] chunks and
//! hands each to the `Write` call through a channel of
//! [`UPLOAD_QUEUE_CHUNKS`], and to a hasher thread through another, so
//! memory stays bounded whatever the file's size, a slow network stalls the
//! reader, and reading and hashing overlap. After the last chunk
//! it sends the sha256 of everything it read; the server compares it with
//! its own before the file is put in place. A regular file declares its
//! size up front (the server refuses one over its limit before any data
//! moves) and must still have that size when read to its end; stdin, a
//! pipe or a FIFO is sent with its size unknown.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use indicatif::ProgressBar;
use tokio::sync::mpsc;

mod delta;
mod report;

pub use report::UPLOAD_CHUNK_BYTES;
pub(crate) use report::{UPLOAD_QUEUE_CHUNKS, UploadOptions, Uploaded, checked};

use crate::checksum::{Digest, Hasher};
use crate::client::download::shown;
use crate::client::{Client, UploadPiece, WriteTarget, Written};
use crate::error::{Error, Result};

/// Where the bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A local path (a regular file; a pipe or FIFO is read as a stream).
    File(PathBuf),
    /// Standard input (`-`).
    Stdin,
}

impl Source {
    /// `-` is stdin, anything else a path.
    pub(crate) fn from_arg(arg: &str) -> Source {
        if arg == "-" {
            Source::Stdin
        } else {
            Source::File(PathBuf::from(arg))
        }
    }

    /// The source as messages show it (`-` for stdin).
    pub(crate) fn shown(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Stdin => "-".to_string(),
        }
    }
}

/// A source opened for reading.
pub(crate) struct Opened {
    reader: Box<dyn Read + Send>,
    /// The size to declare; `None` for a stream.
    size: Option<u64>,
    source: Source,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("size", &self.size)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Opened {
    /// The size that will be declared; `None` for a stream.
    pub(crate) fn size(&self) -> Option<u64> {
        self.size
    }
}

/// Opens `source` (on the calling thread: it may block, e.g. on a FIFO
/// with no writer yet). A directory is refused.
pub(crate) fn open(source: &Source) -> Result<Opened> {
    match source {
        Source::Stdin => Ok(Opened {
            reader: Box::new(io::stdin()),
            size: None,
            source: source.clone(),
        }),
        Source::File(path) => {
            let file = File::open(path).map_err(|err| Error::io(path, err))?;
            let meta = file.metadata().map_err(|err| Error::io(path, err))?;
            if meta.is_dir() {
                return Err(Error::io(
                    path,
                    io::Error::new(
                        io::ErrorKind::IsADirectory,
                        "is a directory; put uploads one file",
                    ),
                ));
            }
            Ok(Opened {
                reader: Box::new(file),
                size: meta.is_file().then_some(meta.len()),
                source: source.clone(),
            })
        }
    }
}

/// Uploads `opened` to `remote`; a busy, draining or lost server is tried
/// again under the client's retry policy when the source can be read again
/// (a regular file, re-opened and sent from byte 0: the server keeps
/// nothing of a broken upload). Stdin, a pipe or a FIFO is sent once.
pub(crate) async fn upload_retrying(
    client: &Client,
    opened: Opened,
    remote: &str,
    options: &UploadOptions,
) -> Result<Uploaded> {
    let mut streak = client.retry_policy().streak();
    let source = opened.source.clone();
    let again = matches!(source, Source::File(_)) && opened.size.is_some();
    let mut opened = Some(opened);
    loop {
        let this = match opened.take() {
            Some(opened) => opened,
            None => {
                let source = source.clone();
                tokio::task::spawn_blocking(move || open(&source))
                    .await
                    .map_err(|err| Error::io("<open>", io::Error::other(err)))??
            }
        };
        let delta = match &this.source {
            Source::File(path) if delta::worth_trying(options, this.size) => {
                let size = this.size.unwrap_or_default();
                Some(delta::upload_delta(client, path, size, remote, options).await)
            }
            _ => None,
        };
        let result = match delta {
            Some(delta::Attempt::Done(uploaded)) => Ok(uploaded),
            Some(delta::Attempt::Failed(err)) => Err(err),
            Some(delta::Attempt::Whole(reason)) => {
                if let Some(reason) = reason {
                    (options.notify)(&format!("{}: {reason}; uploading it whole", shown(remote)));
                }
                upload(client, this, remote, options).await
            }
            None => upload(client, this, remote, options).await,
        };
        match result {
            Err(err) if again && streak.wait(&shown(remote), &err, &*options.notify).await => {}
            done => return done,
        }
    }
}

/// Uploads `opened` to `remote` on every one of `clients` at once, reading
/// and hashing the source once: each chunk goes to every server's stream
/// (the slowest sets the pace). A server that fails drops out and the
/// others go on; the results are in the order of `clients`. No retries:
/// what failed is reported for that server.
pub(crate) async fn upload_to_all(
    clients: &[Client],
    opened: Opened,
    remote: &str,
    options: &UploadOptions,
) -> Vec<Result<Uploaded>> {
    let target = start(&opened, remote, options);
    let mut senders = Vec::new();
    let mut calls = tokio::task::JoinSet::new();
    for (index, client) in clients.iter().enumerate() {
        let (to_network, body) = mpsc::channel(UPLOAD_QUEUE_CHUNKS);
        senders.push(to_network);
        let (client, target) = (client.clone(), target.clone());
        calls.spawn(async move { (index, client.write(target, body).await) });
    }
    let local_failure = Arc::new(Mutex::new(None));
    let reader = {
        let progress = options.progress.clone();
        let local_failure = Arc::clone(&local_failure);
        tokio::task::spawn_blocking(move || match send_source(opened, &senders, &progress) {
            Ok(read) => Some(read),
            Err(err) => {
                if let Ok(mut slot) = local_failure.lock() {
                    *slot = Some(err);
                }
                None
            }
        })
    };
    let mut written: Vec<Option<Result<Written>>> = clients.iter().map(|_| None).collect();
    while let Some(joined) = calls.join_next().await {
        if let Ok((index, result)) = joined {
            written[index] = Some(result);
        }
    }
    let read = reader.await.ok().flatten();
    let local = local_failure.lock().ok().and_then(|mut slot| slot.take());
    options.progress.finish_and_clear();
    written
        .into_iter()
        .map(|result| {
            let written = match result {
                Some(Ok(written)) => written,
                Some(Err(err)) => return Err(local.as_ref().map_or(err, Error::clone_message)),
                None => {
                    return Err(Error::io(
                        "<upload>",
                        io::Error::other("the upload task failed"),
                    ));
                }
            };
            let Some((bytes, sha256)) = read else {
                return Err(local.as_ref().map_or_else(
                    || Error::io("<reader thread>", io::Error::other("the reader failed")),
                    Error::clone_message,
                ));
            };
            checked(remote, written, bytes, sha256)
        })
        .collect()
}

/// The `Write` header for `opened` at `remote`, with the progress bar set
/// to its size.
fn start(opened: &Opened, remote: &str, options: &UploadOptions) -> WriteTarget {
    match opened.size {
        Some(size) => options.progress.set_length(size),
        None => options.progress.unset_length(),
    }
    WriteTarget {
        path: remote.to_string(),
        size: opened.size,
        force: options.force,
        base: None,
    }
}

/// Uploads `opened` to `remote`, once.
pub(crate) async fn upload(
    client: &Client,
    opened: Opened,
    remote: &str,
    options: &UploadOptions,
) -> Result<Uploaded> {
    let target = start(&opened, remote, options);
    options.progress.set_position(0);
    let (to_network, body) = mpsc::channel(UPLOAD_QUEUE_CHUNKS);
    // The reader's own failure, kept where the caller can find it even when
    // the server's answer (to a stream that ended early) comes first.
    let local_failure = Arc::new(Mutex::new(None));
    let reader = {
        let progress = options.progress.clone();
        let local_failure = Arc::clone(&local_failure);
        tokio::task::spawn_blocking(move || {
            let read = send_source(opened, std::slice::from_ref(&to_network), &progress);
            match read {
                Ok(read) => Some(read),
                Err(err) => {
                    if let Ok(mut slot) = local_failure.lock() {
                        *slot = Some(err);
                    }
                    // Dropping `to_network` now ends the body without a
                    // trailer: the server discards what it received.
                    None
                }
            }
        })
    };
    let written = client.write(target, body).await;
    let local = || local_failure.lock().ok().and_then(|mut slot| slot.take());
    let written: Written = match written {
        Ok(written) => written,
        Err(err) => {
            options.progress.abandon();
            return Err(local().unwrap_or(err));
        }
    };
    let read = reader
        .await
        .map_err(|err| Error::io("<reader thread>", io::Error::other(err)))?;
    let Some((bytes, sha256)) = read else {
        options.progress.abandon();
        return Err(local().unwrap_or_else(|| {
            Error::io("<reader thread>", io::Error::other("the reader failed"))
        }));
    };
    options.progress.finish_and_clear();
    checked(remote, written, bytes, sha256)
}

/// The reader thread: read, send every chunk to every server's stream, and
/// hand it to a hasher thread of its own (hashing and reading then overlap
/// on two cores); at the end the digest to every stream still open.
/// Returns the bytes read and their digest. `Ok` also when the network
/// side went away (its error is the one reported then).
fn send_source(
    opened: Opened,
    to_networks: &[mpsc::Sender<UploadPiece>],
    progress: &ProgressBar,
) -> Result<(u64, Digest)> {
    let Opened {
        mut reader,
        size,
        source,
    } = opened;
    let shown = source.shown();
    let (to_hasher, chunks) = std::sync::mpsc::sync_channel::<Bytes>(UPLOAD_QUEUE_CHUNKS);
    let hasher = std::thread::spawn(move || {
        let mut hasher = Hasher::new();
        for chunk in chunks {
            hasher.update(&chunk);
        }
        hasher
    });
    let mut read: u64 = 0;
    let mut gone = false;
    let mut open = vec![true; to_networks.len()];
    loop {
        let chunk = read_chunk(&mut reader, UPLOAD_CHUNK_BYTES)
            .map_err(|err| Error::io(Path::new(&shown), err))?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len() as u64;
        read += n;
        if size.is_some_and(|size| read > size) {
            return Err(changed(&shown));
        }
        if to_hasher.send(chunk.clone()).is_err() {
            break;
        }
        // A stream whose call ended drops out; the others go on.
        for (to_network, open) in to_networks.iter().zip(open.iter_mut()) {
            if *open
                && to_network
                    .blocking_send(UploadPiece::Data(chunk.clone()))
                    .is_err()
            {
                *open = false;
            }
        }
        if !open.iter().any(|open| *open) {
            gone = true;
            break;
        }
        progress.inc(n);
    }
    drop(to_hasher);
    let hasher = hasher.join().map_err(|_| {
        Error::io(
            Path::new(&shown),
            io::Error::other("the hasher thread failed"),
        )
    })?;
    if gone {
        return Ok((hasher.bytes(), hasher.finalize()));
    }
    if hasher.bytes() != read || size.is_some_and(|size| read != size) {
        return Err(changed(&shown));
    }
    let digest = hasher.finalize();
    // A failed send means the call already ended; its answer says why.
    for (to_network, open) in to_networks.iter().zip(&open) {
        if *open {
            let _ = to_network.blocking_send(UploadPiece::End(digest));
        }
    }
    Ok((read, digest))
}

/// The local file grew or shrank between opening and its end.
fn changed(shown: &str) -> Error {
    Error::Changed {
        path: shown.to_string(),
    }
}

/// Reads up to `want` bytes (fewer only at the end of the input) into a
/// fresh buffer, without zeroing it first.
fn read_chunk(reader: &mut dyn Read, want: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(want);
    reader.take(want as u64).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source is read in whole chunks, hashed, and ended with its digest.
    #[test]
    fn reader_sends_chunks_then_digest() {
        let data: Vec<u8> = (0..UPLOAD_CHUNK_BYTES * 2 + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        let opened = Opened {
            reader: Box::new(io::Cursor::new(data.clone())),
            size: Some(data.len() as u64),
            source: Source::Stdin,
        };
        let (tx, mut rx) = mpsc::channel(8);
        let (bytes, digest) =
            send_source(opened, std::slice::from_ref(&tx), &ProgressBar::hidden()).expect("read");
        drop(tx);
        let mut sizes = Vec::new();
        let mut end = None;
        while let Some(piece) = rx.blocking_recv() {
            match piece {
                UploadPiece::Data(chunk) => sizes.push(chunk.len()),
                UploadPiece::End(digest) => end = Some(digest),
                UploadPiece::Copy { .. } => panic!("a whole upload sends no copies"),
            }
        }
        assert_eq!(sizes, [UPLOAD_CHUNK_BYTES, UPLOAD_CHUNK_BYTES, 5]);
        assert_eq!(bytes, data.len() as u64);
        let mut hasher = Hasher::new();
        hasher.update(&data);
        assert_eq!(end, Some(hasher.finalize()));
        assert_eq!(Some(digest), end);
    }

    /// A file that is longer or shorter than it was when opened is not
    /// sent with a digest.
    #[test]
    fn size_changes_are_caught() {
        for (declared, actual) in [(10, 11), (10, 9)] {
            let opened = Opened {
                reader: Box::new(io::Cursor::new(vec![7u8; actual])),
                size: Some(declared),
                source: Source::File(PathBuf::from("f")),
            };
            let (tx, mut rx) = mpsc::channel(8);
            let err = send_source(opened, std::slice::from_ref(&tx), &ProgressBar::hidden())
                .expect_err("changed");
            assert!(matches!(err, Error::Changed { .. }), "{err}");
            drop(tx);
            while let Some(piece) = rx.blocking_recv() {
                assert!(matches!(piece, UploadPiece::Data(_)), "no digest sent");
            }
        }
    }

    /// A directory is refused as a source.
    #[test]
    fn directories_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = open(&Source::File(dir.path().to_path_buf())).expect_err("a directory");
        assert!(err.to_string().contains("is a directory"), "{err}");
    }
}
