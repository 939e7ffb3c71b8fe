//! Plain domain types shared by the server and the client: what a path
//! names (an entry), and which version of a file was seen.

use std::os::unix::fs::MetadataExt;

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

/// Modification time of `meta` in nanoseconds since the Unix epoch.
pub(crate) fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}
