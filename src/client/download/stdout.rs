//! A download to standard output: the bytes go out as they arrive, the
//! digest is checked at the end (a mismatch is reported, not undone), and a
//! retry continues after the bytes already written.

use std::io;

use crate::checksum::Hasher;
use crate::client::Client;
use crate::client::assemble::{Assembler, StdoutSink};
use crate::client::download::receive::{Failure, classify, protocol, receive};
use crate::client::download::report::{DownloadOptions, MAX_ATTEMPTS, Outcome, Report, shown};
use crate::error::{Error, Result};
use crate::read_stream::ReadEvent;

/// Downloads `remote` to standard output, verifying the digest at the end
/// (the bytes are out by then: a mismatch is reported, not undone). A
/// closed pipe ends the download successfully. A busy, draining or lost
/// server is tried again under the client's retry policy, continuing after
/// the bytes already written once the server's digest of them matches.
pub(crate) async fn download_to_stdout(
    client: &Client,
    remote: &str,
    options: &DownloadOptions,
) -> Result<Report> {
    let mut streak = client.retry_policy().streak();
    let mut sink = StdoutSink::default();
    let mut hasher = Hasher::new();
    let mut restarts = 0;
    loop {
        let before = hasher.bytes();
        let (returned_sink, returned_hasher, result) =
            stdout_attempt(client, remote, sink, hasher, options).await;
        (sink, hasher) = (returned_sink, returned_hasher);
        let failure = match result {
            Ok(size) => return Ok(stdout_report(size, hasher)),
            Err(failure) => failure,
        };
        if hasher.bytes() > before {
            streak.progressed();
        }
        match failure {
            // Nothing is out yet: the file may simply be read again.
            Failure::Restart(reason) if hasher.bytes() == 0 && restarts + 1 < MAX_ATTEMPTS => {
                restarts += 1;
                (options.notify)(&format!("{}: {reason}; starting again", shown(remote)));
            }
            Failure::Restart(reason) => {
                return Err(Error::Changed {
                    path: format!("{} ({reason})", shown(remote)),
                });
            }
            Failure::WriterStopped => {
                return Err(Error::io(
                    "<stdout>",
                    io::Error::other("the writer stopped"),
                ));
            }
            Failure::Discard(err) | Failure::Keep(err) => {
                if !streak.wait(&shown(remote), &err, &*options.notify).await {
                    return Err(err);
                }
            }
        }
    }
}

/// One try of [`download_to_stdout`], continuing after the `hasher.bytes()`
/// bytes already written; hands the sink and the hasher back. It ends well
/// (with the file's size) when every byte is verified or when the reader
/// closed the pipe.
async fn stdout_attempt(
    client: &Client,
    remote: &str,
    sink: StdoutSink,
    hasher: Hasher,
    options: &DownloadOptions,
) -> (StdoutSink, Hasher, std::result::Result<u64, Failure>) {
    let offset = hasher.bytes();
    let mut stream = match client.read(remote, offset, None).await {
        Ok(stream) => stream,
        Err(err) => return (sink, hasher, Err(classify(err))),
    };
    let start = match stream.next().await {
        Ok(Some(ReadEvent::Start(start))) => start,
        Ok(_) => {
            let failure = protocol(remote, "the stream did not start with a header");
            return (sink, hasher, Err(failure));
        }
        Err(err) => return (sink, hasher, Err(classify(err))),
    };
    if offset > 0 && start.prefix_sha256 != Some(hasher.snapshot()) {
        let failure =
            Failure::Restart("the file changed on the server after part of it was written".into());
        return (sink, hasher, Err(failure));
    }
    options.progress_start(start.entry.size, offset);
    let mut assembler = Assembler::start(sink, hasher, start.entry.size);
    let received = receive(
        client,
        &mut stream,
        &mut assembler,
        remote,
        start.length,
        options,
    )
    .await;
    let assembled = match assembler.finish().await {
        Ok(assembled) => assembled,
        Err(_) => {
            // The writer thread is gone and took the sink with it.
            return (
                StdoutSink::default(),
                Hasher::new(),
                Err(Failure::WriterStopped),
            );
        }
    };
    let (sink, hasher) = (assembled.sink, assembled.hasher);
    if let Err(err) = assembled.written {
        return (sink, hasher, Err(Failure::Keep(err)));
    }
    let size = start.entry.size;
    if sink.closed() {
        options.progress_done();
        return (sink, hasher, Ok(size));
    }
    let expected = match received {
        Ok(expected) => expected,
        Err(failure) => return (sink, hasher, Err(failure)),
    };
    options.progress_done();
    let actual = hasher.clone().finalize();
    if actual != expected {
        let failure = Failure::Discard(Error::ChecksumMismatch {
            path: shown(remote),
            expected,
            actual,
        });
        return (sink, hasher, Err(failure));
    }
    (sink, hasher, Ok(size))
}

fn stdout_report(size: u64, hasher: Hasher) -> Report {
    let transferred = hasher.bytes();
    Report {
        bytes: size,
        transferred,
        reused: 0,
        sha256: hasher.finalize(),
        outcome: Outcome::Downloaded,
    }
}
