//! Plain domain types shared by the server and the client: what a path is,
//! and which version of a file was seen.

use std::os::unix::fs::MetadataExt;

use bytes::Bytes;

use crate::checksum::Digest;

/// What kind of filesystem object an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (listings only; resolution follows links).
    Symlink,
}

impl EntryKind {
    /// The one-letter code `fetchd ls` prints: `f`, `d` or `l`.
    pub fn letter(self) -> char {
        match self {
            EntryKind::File => 'f',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
        }
    }

    /// The word `fetchd ls --json` prints: `file`, `dir` or `symlink`.
    pub fn word(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
        }
    }
}

/// One filesystem object below the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    /// Path below the root, `/`-separated, no leading `/`; empty for the root.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Unix permission bits.
    pub mode: u32,
    /// The whole file's sha256, when a listing was asked to carry it.
    pub sha256: Option<Digest>,
}

/// One version of a file: if any field changes, the content may have too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileVersion {
    /// Device of the filesystem holding the file.
    pub device: u64,
    /// Inode on that device.
    pub inode: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

impl FileVersion {
    /// The version described by `meta`.
    pub fn of(meta: &std::fs::Metadata) -> FileVersion {
        FileVersion {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.len(),
            mtime_ns: mtime_ns(meta),
        }
    }
}

/// What a `Read` stream is about to send.
#[derive(Clone, Debug)]
pub struct ReadStart {
    /// The file as `Stat` describes it.
    pub entry: EntryInfo,
    /// The version being read.
    pub version: FileVersion,
    /// First byte sent.
    pub offset: u64,
    /// Bytes that follow.
    pub length: u64,
    /// sha256 of the bytes before `offset`, when `offset > 0`.
    pub prefix_sha256: Option<Digest>,
}

/// One item of a read stream, in order: `Start`, `Data`..., `End`.
#[derive(Clone, Debug)]
pub enum ReadEvent {
    /// The header.
    Start(ReadStart),
    /// The next bytes.
    Data(Bytes),
    /// The sha256 of the whole file.
    End(Digest),
}

/// Modification time of `meta` in nanoseconds since the Unix epoch.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// Formats a nanosecond timestamp as RFC 3339 in UTC, to the second
/// (`2026-11-24T01:02:03Z`).
pub fn format_mtime(mtime_ns: i64) -> String {
    let secs = mtime_ns.div_euclid(1_000_000_000);
    let time = u64::try_from(secs)
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .unwrap_or(std::time::UNIX_EPOCH);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timestamps print as RFC 3339 UTC seconds, as `fetchd ls` promises.
    #[test]
    fn mtime_formats_as_rfc3339_seconds() {
        assert_eq!(format_mtime(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_mtime(1_795_482_123_999_999_999),
            "2026-11-24T01:02:03Z"
        );
    }
}
