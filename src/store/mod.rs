//! The store seam: what the server needs from the tree it exports.
//!
//! The gRPC service ([`crate::server`]) never touches a file system itself.
//! It asks a [`Store`] to stat, list, open a version of a file for ranged
//! reads, check that the version is still the current one, stage a new
//! version and commit it, sweep what an earlier run left behind, and (where
//! the store can) follow a file as it grows. Everything above this trait —
//! the chunk reader, hashing, the digest cache, limits, the wire — is the
//! same for every store.
//!
//! - [`path`]: request paths, parsed and normalised before a store sees
//!   them.
//! - [`local`]: a local directory tree, confined by the sandbox (`openat2`
//!   one-walk opens, a component-by-component walk otherwise), with inotify
//!   folder watches for `tail`.
//! - [`s3`]: an S3-compatible object store (`--root s3://BUCKET[/PREFIX]`,
//!   cargo feature `s3`, on by default): ranged GETs pinned to the ETag,
//!   streamed multipart uploads.
//!
//! A store's methods block (they do file I/O); the server calls them on
//! tokio's blocking pool. A store that speaks to the network can bridge with
//! its runtime handle there.

pub(crate) mod local;
pub(crate) mod path;
#[cfg(feature = "s3")]
pub(crate) mod s3;

use std::fmt::Debug;
use std::hash::Hash;
use std::pin::Pin;

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use crate::checksum::{Digest, HASH_BUFFER_BYTES, Hasher};
use crate::entry::{EntryInfo, FileVersion};
use crate::error::{Error, Result};
use crate::tail_stream::{RecentBytes, TailEvent, TailStart};
pub(crate) use path::RequestPath;

/// One version of a file, as a store tells versions apart: if it is the
/// same, so is the content. Opaque to the server, which only compares it,
/// keys the digest cache by it and describes it on the wire.
pub(crate) trait Version: Copy + Eq + Hash + Debug + Send + Sync + 'static {
    /// The version as the wire describes it (`FileVersion` in the proto).
    fn describe(&self) -> FileVersion;

    /// The modification time when the version could change without this
    /// value changing (a write within the same timestamp tick as a hash:
    /// git's "racy clean"), so that a digest is only trusted once the file
    /// has settled; `None` when the version names the content exactly.
    fn racy_mtime_ns(&self) -> Option<i64>;
}

/// A version of a file opened for reading: ranged reads of exactly the
/// bytes of that version, and a check that it is still current.
pub(crate) trait Reader: Debug + Send + 'static {
    /// The store's version type.
    type Version: Version;

    /// The version opened.
    fn version(&self) -> Self::Version;

    /// The file as `Stat` describes it (its size is the version's).
    fn entry(&self) -> &EntryInfo;

    /// Appends up to `len` bytes from `offset` to `buf`, after whatever the
    /// caller put there already (a frame header): the bytes go straight
    /// from the store into the buffer that goes out. Fewer than `len` only
    /// at the end of the data; 0 at or past it.
    fn read_into(&mut self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<usize>;

    /// True when the opened version is still what the path names: same
    /// version, and the path still leads to it. A read checks this at its
    /// end, so that a digest never covers a mix of versions.
    fn is_current(&self) -> Result<bool>;

    /// The version's sha256 when the store keeps it beside the data (an
    /// object fetchd uploaded carries it in its metadata), so that it is
    /// known without reading the bytes; `None` otherwise.
    fn stored_digest(&self) -> Option<Digest> {
        None
    }
}

/// A new version being written; [`commit`](Staged::commit) makes it the
/// current one atomically. Dropped without a commit, it leaves nothing.
pub(crate) trait Staged: Debug + Send + 'static {
    /// Appends the next bytes.
    fn append(&mut self, data: &[u8]) -> Result<()>;

    /// Makes the staged bytes the file at the path: durable, atomic, and
    /// replacing an existing file only when the stage asked for it.
    /// `sha256` is the staged bytes' digest, already checked against the
    /// client's; a store may keep it with the new version.
    fn commit(self, sha256: &Digest) -> Result<()>;
}

/// One entry met by [`Store::list`].
pub(crate) struct Listed<'a, R: Reader> {
    /// The entry as listings show it.
    pub info: EntryInfo,
    /// The version the listing saw, for a regular file.
    pub version: Option<R::Version>,
    /// Opens the listed regular file as the listing saw it (for its digest).
    pub open: &'a dyn Fn() -> Result<R>,
}

/// What a sweep of leftovers did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Leftovers of unfinished uploads removed.
    pub removed: usize,
    /// Entries looked at.
    pub visited: usize,
    /// True when the sweep stopped at its entry limit.
    pub truncated: bool,
}

/// What a client asked to follow.
#[derive(Clone, Debug)]
pub(crate) struct TailSpec {
    /// The file, by name.
    pub path: RequestPath,
    /// Where to start.
    pub start: TailStart,
    /// Keep following after the current end.
    pub follow: bool,
    /// With a cursor: the bytes the client received just before it, by
    /// which another copy of the file (a replica's) can take over.
    pub recent: Option<RecentBytes>,
}

/// A followed file's messages; an error is the last item.
pub(crate) type TailEvents = Pin<Box<dyn Stream<Item = Result<TailEvent>> + Send>>;

/// What the server needs from the tree it exports.
pub(crate) trait Store: Debug + Send + Sync + 'static {
    /// How this store tells versions of a file apart.
    type Version: Version;
    /// A file version opened for reading.
    type Reader: Reader<Version = Self::Version>;
    /// A new version being written.
    type Staged: Staged;

    /// What the store serves, for the server's log (never sent to clients).
    fn describe(&self) -> String;

    /// The object `path` names: a file, a folder or (in listings only) a
    /// symlink. FIFOs, sockets and devices are refused.
    fn stat(&self, path: &RequestPath) -> Result<EntryInfo>;

    /// Lists `path`: a file yields its own entry; a folder yields its
    /// entries (with `recursive`, theirs too, depth first, names sorted in
    /// each folder). `emit` returns `false` to stop early.
    fn list(
        &self,
        path: &RequestPath,
        recursive: bool,
        emit: &mut dyn FnMut(Listed<'_, Self::Reader>) -> bool,
    ) -> Result<()>;

    /// Opens the current version of the regular file `path` names.
    fn open(&self, path: &RequestPath) -> Result<Self::Reader>;

    /// Opens `path` as [`open`](Store::open) does, for a read whose first
    /// byte is at `offset`: a store whose first request can carry data (an
    /// object store's GET) starts the read in it.
    fn open_at(&self, path: &RequestPath, offset: u64) -> Result<Self::Reader> {
        let _ = offset;
        self.open(path)
    }

    /// Opens each of `paths` for a whole read, as [`open_at`](Store::open_at)
    /// from 0 does, the results in order: a store whose opens wait on the
    /// network sends them all at once.
    fn open_many(&self, paths: &[RequestPath]) -> Vec<Result<Self::Reader>> {
        paths.iter().map(|path| self.open_at(path, 0)).collect()
    }

    /// Starts a new version of the file at `path`. An existing file is
    /// [`Error::AlreadyExists`] unless `replace`; and without `replace` the
    /// commit refuses one that appeared meanwhile.
    fn stage(&self, path: &RequestPath, replace: bool) -> Result<Self::Staged>;

    /// Removes what unfinished uploads of an earlier run left behind.
    fn sweep(&self) -> Result<Swept>;

    /// Follows the file at `spec.path` as it grows, across truncation and
    /// rotation, until `stopping` (then a last `Stopping` notice). Resolving
    /// and finding the start happen before this returns, so a refused or
    /// (without follow) missing file is this call's error. A store that
    /// cannot follow says so with FAILED_PRECONDITION.
    fn follow(&self, spec: TailSpec, stopping: CancellationToken) -> Result<TailEvents> {
        let _ = stopping;
        Err(Error::CannotFollow {
            path: spec.path.shown(),
        })
    }
}

/// Feeds the bytes of `reader` from `from` until `until` (or its end) into
/// `hasher`. A range of a few bytes (a check that a file did not grow) reads
/// just those.
pub(crate) fn hash_range<R: Reader>(
    reader: &mut R,
    hasher: &mut Hasher,
    from: u64,
    until: u64,
) -> Result<()> {
    let mut position = from;
    let mut buf = Vec::new();
    while position < until {
        let want = HASH_BUFFER_BYTES.min(usize::try_from(until - position).unwrap_or(usize::MAX));
        buf.clear();
        // Room first: a store then reads the range in one call.
        buf.reserve(want);
        let read = reader.read_into(position, want, &mut buf)?;
        if read == 0 {
            break;
        }
        hasher.update(&buf[..read]);
        position += read as u64;
    }
    Ok(())
}
