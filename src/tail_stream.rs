//! Plain domain types of a tail stream, shared by the server and the client:
//! which file a position is in, the position itself, and what a stream says.

use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use bytes::Bytes;

use crate::checksum::{Digest, Hasher};

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

/// Most bytes a [`RecentBytes`] fingerprint covers.
pub(crate) const RECENT_BYTES: usize = 4096;

/// The last bytes (at most [`RECENT_BYTES`]) a follower received before its
/// cursor, as a fingerprint sent when it resumes: a server whose file at the
/// path is another copy (a replica on another host, where device and inode
/// differ) resumes at the cursor's offset when it holds the same bytes just
/// before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecentBytes {
    /// How many bytes, ending at the cursor's offset.
    pub(crate) len: u32,
    /// Their sha256.
    pub(crate) sha256: Digest,
}

/// What a follower keeps to make [`RecentBytes`]: the last bytes received
/// of the file its cursor is in, ending at the cursor.
#[derive(Clone, Debug, Default)]
pub(crate) struct RecentWindow {
    file: Option<FileId>,
    end: u64,
    bytes: Vec<u8>,
}

impl RecentWindow {
    /// Takes in the next message of a stream: data that continues the
    /// window extends it; anything that moves the cursor elsewhere (another
    /// file, a truncation) starts it again.
    pub(crate) fn observe(&mut self, event: &TailEvent) {
        match event {
            TailEvent::Data { data, cursor } => {
                let start = cursor.offset.saturating_sub(data.len() as u64);
                if cursor.file != self.file || start != self.end {
                    self.bytes.clear();
                }
                self.bytes.extend_from_slice(data);
                if self.bytes.len() > RECENT_BYTES {
                    self.bytes.drain(..self.bytes.len() - RECENT_BYTES);
                }
                self.file = cursor.file;
                self.end = cursor.offset;
            }
            // The same offset in another file is a resume onto a copy
            // that held these bytes: they stay. Any other move (rotation
            // and truncation restart at 0) starts the window again.
            TailEvent::Notice { cursor, .. } => {
                if cursor.offset != self.end {
                    self.bytes.clear();
                }
                self.file = cursor.file;
                self.end = cursor.offset;
            }
        }
    }

    /// The fingerprint of the window, when it holds bytes.
    pub(crate) fn fingerprint(&self) -> Option<RecentBytes> {
        if self.bytes.is_empty() {
            return None;
        }
        let mut hasher = Hasher::new();
        hasher.update(&self.bytes);
        Some(RecentBytes {
            len: u32::try_from(self.bytes.len()).unwrap_or(u32::MAX),
            sha256: hasher.finalize(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(inode: u64) -> Option<FileId> {
        Some(FileId {
            device: 1,
            inode,
            birth_ns: 0,
        })
    }

    fn data(bytes: &[u8], inode: u64, end: u64) -> TailEvent {
        TailEvent::Data {
            data: Bytes::copy_from_slice(bytes),
            cursor: TailCursor {
                file: file(inode),
                offset: end,
            },
        }
    }

    fn notice(notice: TailNotice, inode: u64, offset: u64) -> TailEvent {
        TailEvent::Notice {
            notice,
            cursor: TailCursor {
                file: file(inode),
                offset,
            },
        }
    }

    fn sha(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_slice(&sha2::Sha256::digest(bytes)).expect("32 bytes")
    }

    /// The window is the last bytes before the cursor: it grows with
    /// continuing data up to its limit, survives a resume onto a copy at
    /// the same offset, and starts again after a move elsewhere.
    #[test]
    fn the_window_ends_at_the_cursor() {
        let mut window = RecentWindow::default();
        assert_eq!(window.fingerprint(), None);
        window.observe(&notice(TailNotice::Opened, 7, 100));
        window.observe(&data(b"abc", 7, 103));
        window.observe(&data(b"def", 7, 106));
        let got = window.fingerprint().expect("bytes");
        assert_eq!((got.len, got.sha256), (6, sha(b"abcdef")));

        // A resume on another file at the same offset keeps the bytes.
        window.observe(&notice(TailNotice::Opened, 9, 106));
        window.observe(&data(b"g", 9, 107));
        assert_eq!(window.fingerprint().expect("bytes").sha256, sha(b"abcdefg"));

        // A rotation restarts at 0 of the new file.
        window.observe(&notice(TailNotice::Rotated, 10, 0));
        assert_eq!(window.fingerprint(), None);
        window.observe(&data(b"xy", 10, 2));
        assert_eq!(window.fingerprint().expect("bytes").sha256, sha(b"xy"));

        // Data that does not continue the window replaces it.
        window.observe(&data(b"zz", 10, 50));
        assert_eq!(window.fingerprint().expect("bytes").sha256, sha(b"zz"));

        let big = vec![b'q'; RECENT_BYTES + 10];
        window.observe(&data(&big, 10, 50 + big.len() as u64));
        let got = window.fingerprint().expect("bytes");
        assert_eq!(got.len as usize, RECENT_BYTES);
        assert_eq!(got.sha256, sha(&big[10..]));
    }
}
