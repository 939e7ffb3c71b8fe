//! The small-file path: a file of at most [`INLINE_FILE_BYTES`] is gathered
//! in memory and written in one blocking call, instead of starting the
//! writer and hasher threads for a chunk or two. [`download_small`] does the
//! whole download so (no part file to resume: read, then create, write,
//! hash, verify and commit); a resumed or unannounced small rest goes
//! through [`append_hashed`] too.

use std::path::Path;

use crate::checksum::Hasher;
use crate::client::Client;
use crate::client::download::receive::{Failure, Gathered, blocking, receive};
use crate::client::download::report::{DownloadOptions, Outcome, Report, shown};
use crate::client::retry::changed_while_read;
use crate::error::{Error, Result};
use crate::partfile::PartFile;
use crate::read_stream::ReadEvent;

/// Files up to this size are gathered in memory and written in one go.
pub(crate) const INLINE_FILE_BYTES: u64 = 1024 * 1024;

/// A small file with no part file to resume: read it whole into memory, then
/// create the part file, write, hash, verify and commit in one blocking
/// call. `None` sends the caller down the general path (the file turned out
/// large, or changed while read).
pub(super) async fn download_small(
    client: &Client,
    remote: &str,
    dest: &Path,
    options: &DownloadOptions,
) -> Option<Result<Report>> {
    let mut stream = match client.read(remote, 0, None).await {
        Ok(stream) => stream,
        Err(err) if changed_while_read(&err) => return None,
        Err(err) => return Some(Err(err)),
    };
    let start = match stream.next().await {
        Ok(Some(ReadEvent::Start(start))) if start.length <= INLINE_FILE_BYTES => start,
        Ok(Some(ReadEvent::Start(_))) => return None,
        Ok(_) => {
            return Some(Err(Error::Protocol {
                path: shown(remote),
                reason: "the stream did not start with a header".into(),
            }));
        }
        Err(err) if changed_while_read(&err) => return None,
        Err(err) => return Some(Err(err)),
    };
    options.progress_start(start.entry.size, 0);
    let mut gathered = Gathered::default();
    let expected = match receive(
        client,
        &mut stream,
        &mut gathered,
        remote,
        start.length,
        options,
    )
    .await
    {
        Ok(expected) => expected,
        Err(Failure::Restart(_)) => return None,
        Err(Failure::Discard(err) | Failure::Keep(err)) => return Some(Err(err)),
        Err(Failure::WriterStopped) => return None,
    };
    let chunks = gathered.0;
    let dest_owned = dest.to_path_buf();
    let path = shown(remote);
    let size = start.entry.size;
    let result = blocking(move || {
        let mut part = PartFile::open(&dest_owned)?;
        part.truncate(0)?;
        let mut hasher = Hasher::new();
        append_hashed(&mut part, &mut hasher, &chunks)?;
        let actual = hasher.finalize();
        if actual != expected {
            part.discard()?;
            return Err(Error::ChecksumMismatch {
                path,
                expected,
                actual,
            });
        }
        part.commit()?;
        Ok(actual)
    })
    .await;
    options.progress_done();
    Some(result.map(|sha256| Report {
        bytes: size,
        transferred: start.length,
        reused: 0,
        sha256,
        outcome: Outcome::Downloaded,
    }))
}

/// Appends `chunks` to `part`, hashing each into `hasher` (blocking).
pub(super) fn append_hashed(
    part: &mut PartFile,
    hasher: &mut Hasher,
    chunks: &[bytes::Bytes],
) -> Result<()> {
    for chunk in chunks {
        hasher.update(chunk);
        part.append(chunk)?;
    }
    Ok(())
}
