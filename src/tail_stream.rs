//! Plain domain types of a tail stream, shared by the server and the client:
//! which file a position is in, the position itself, and what a stream says.

use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use bytes::Bytes;

/// Which file: device, inode and birth time. Device and inode name a file
/// while it exists; the birth time tells a new file apart from a deleted one
/// whose inode number was given out again (0 where the filesystem does not
/// record it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device of the filesystem holding the file.
    pub device: u64,
    /// Inode on that device.
    pub inode: u64,
    /// Birth time, nanoseconds since the Unix epoch; 0 when unknown.
    pub birth_ns: i64,
}

impl FileId {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            device: meta.dev(),
            inode: meta.ino(),
            birth_ns: meta.created().map(nanos_since_epoch).unwrap_or(0),
        }
    }

    /// The identity of the file `meta` (from a directory handle) describes.
    pub fn of_entry(meta: &cap_std::fs::Metadata) -> FileId {
        use cap_std::fs::MetadataExt as _;
        FileId {
            device: meta.dev(),
            inode: meta.ino(),
            birth_ns: meta
                .created()
                .map(|time| nanos_since_epoch(time.into_std()))
                .unwrap_or(0),
        }
    }
}

/// Nanoseconds since the Unix epoch (negative before it), saturating.
fn nanos_since_epoch(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// A position in a followed file: the next byte to send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailCursor {
    /// The file `offset` is in; `None` before any file was seen.
    pub file: Option<FileId>,
    /// Offset just after the last byte sent from `file`.
    pub offset: u64,
}

impl TailCursor {
    /// The start of `file`.
    pub fn start_of(file: FileId) -> TailCursor {
        TailCursor {
            file: Some(file),
            offset: 0,
        }
    }
}

/// Where a tail starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailStart {
    /// The last N lines of the file as it is now; 0 means at its end.
    LastLines(u32),
    /// Just after the last message of an earlier stream.
    Cursor(TailCursor),
}

/// What happened to a followed file (see `TailEventKind` in the .proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailNotice {
    /// Following `cursor.file` from `cursor.offset`.
    Opened,
    /// The file shrank or was rewritten: data restarts at its offset 0.
    Truncated,
    /// The path names another file now; the old one was read to its end.
    Rotated,
    /// Nothing at the path; waiting for a file to appear.
    Gone,
    /// After `Gone`, a file is at the path again.
    Appeared,
    /// The file of the request's cursor cannot be found any more.
    ResumeLost,
    /// The server is shutting down; reconnect with the cursor.
    Stopping,
}

/// One message of a tail stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailEvent {
    /// Bytes of the file, exactly as written, and the position after them.
    Data {
        /// The bytes.
        data: Bytes,
        /// The file they are from and the offset after them.
        cursor: TailCursor,
    },
    /// Something happened; data continues at `cursor`.
    Notice {
        /// What happened.
        notice: TailNotice,
        /// Where data continues.
        cursor: TailCursor,
    },
}

impl TailEvent {
    /// The position after this message.
    pub fn cursor(&self) -> TailCursor {
        match self {
            TailEvent::Data { cursor, .. } | TailEvent::Notice { cursor, .. } => *cursor,
        }
    }
}
