//! Receiving one `Read` stream: data into a sink until the trailer, paced
//! when asked, and what a failure means for the bytes received so far.

use std::io;
use std::time::{Duration, Instant};

use crate::checksum::Digest;
use crate::client::Client;
use crate::client::assemble::{Assembler, Sink};
use crate::client::download::report::{DownloadOptions, shown};
use crate::client::retry::AfterRead;
use crate::error::{Error, Result};
use crate::read_stream::ReadEvent;

/// A verified attempt.
pub(super) struct Fetched {
    /// The verified whole-file digest.
    pub(super) sha256: Digest,
    /// Bytes received in this attempt.
    pub(super) transferred: u64,
    /// The whole file's size.
    pub(super) size: u64,
}

/// Why an attempt ended without a file.
pub(super) enum Failure {
    /// Start again from byte zero.
    Restart(String),
    /// Give up; the part file holds nothing useful.
    Discard(Error),
    /// Give up; keep the part file for a later resume.
    Keep(Error),
    /// The writer thread stopped; its own error says why.
    WriterStopped,
}

/// Sorts a failed call into restart, discard or keep, as the retry policy
/// judges it ([`AfterRead`]).
pub(super) fn classify(err: Error) -> Failure {
    match AfterRead::of(&err) {
        AfterRead::Restart(reason) => Failure::Restart(reason.into()),
        AfterRead::Discard => Failure::Discard(err),
        AfterRead::Keep => Failure::Keep(err),
    }
}

pub(super) fn protocol(remote: &str, reason: &str) -> Failure {
    Failure::Discard(Error::Protocol {
        path: shown(remote),
        reason: reason.to_string(),
    })
}

/// Where [`receive`] puts data chunks.
pub(super) trait Chunks {
    /// Takes the next chunk; `false` means stop (the writer failed).
    async fn push(&mut self, chunk: bytes::Bytes) -> bool;
}

impl<S: Sink> Chunks for Assembler<S> {
    async fn push(&mut self, chunk: bytes::Bytes) -> bool {
        Assembler::push(self, chunk).await
    }
}

/// The chunks of a small file, kept until its trailer.
#[derive(Default)]
pub(super) struct Gathered(pub(super) Vec<bytes::Bytes>);

impl Chunks for Gathered {
    async fn push(&mut self, chunk: bytes::Bytes) -> bool {
        self.0.push(chunk);
        true
    }
}

/// Receives data events into `assembler` until the trailer; returns the
/// server's whole-file digest.
pub(super) async fn receive(
    client: &Client,
    stream: &mut crate::client::ReadStream,
    assembler: &mut impl Chunks,
    remote: &str,
    length: u64,
    options: &DownloadOptions,
) -> std::result::Result<Digest, Failure> {
    let started = Instant::now();
    let mut received: u64 = 0;
    loop {
        match stream.next().await {
            Ok(Some(ReadEvent::Data(data))) => {
                received += data.len() as u64;
                if received > length {
                    return Err(protocol(remote, "more data than the header announced"));
                }
                let n = data.len() as u64;
                if !assembler.push(data).await {
                    return Err(Failure::WriterStopped);
                }
                options.progress.inc(n);
                if let Some(rate) = options.limit_rate {
                    pace(started, received, rate).await;
                }
            }
            Ok(Some(ReadEvent::End(digest))) => {
                if received != length {
                    return Err(protocol(remote, "less data than the header announced"));
                }
                // Read on to the end of the call (the status trailers).
                // Dropping a stream before its trailers makes HTTP/2 reset
                // it, and after 1,024 such resets h2 closes the connection,
                // failing every other transfer on it.
                return match stream.next().await {
                    Ok(None) => Ok(digest),
                    Ok(Some(_)) => Err(protocol(remote, "data after the trailer")),
                    Err(err) => Err(classify(err)),
                };
            }
            Ok(Some(ReadEvent::Start(_))) => return Err(protocol(remote, "a second header")),
            Ok(None) => {
                return Err(Failure::Keep(Error::Unreachable {
                    server: client.target().name(),
                    reason: format!("the stream for {} ended early", shown(remote)),
                }));
            }
            Err(err) => return Err(classify(err)),
        }
    }
}

/// Sleeps until `received` bytes are no faster than `rate` bytes/s.
pub(super) async fn pace(started: Instant, received: u64, rate: u64) {
    let due = Duration::from_secs_f64(received as f64 / rate.max(1) as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
}

/// Runs blocking file work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::io("<blocking task>", io::Error::other(err)))?
}
