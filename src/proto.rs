//! The generated `fetchd.v1` protocol: messages, client and server stubs.
//!
//! Only `server::service` and `client` use these types; everything between
//! works on the plain types of [`crate::entry`].

#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

tonic::include_proto!("fetchd.v1");

/// The encoded `FileDescriptorSet` of `fetchd.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fetchd_descriptor");

/// Conversions between the wire messages and the domain types.
mod convert {
    use super::{Entry, EntryType, FileVersion as WireVersion, ReadHeader, ReadTrailer};
    use crate::checksum::Digest;
    use crate::entry::{EntryInfo, EntryKind, FileVersion};
    use crate::read_stream::ReadStart;
    use crate::tail_stream::{FileId, TailCursor};

    impl From<EntryKind> for EntryType {
        fn from(kind: EntryKind) -> EntryType {
            match kind {
                EntryKind::File => EntryType::File,
                EntryKind::Dir => EntryType::Dir,
                EntryKind::Symlink => EntryType::Symlink,
            }
        }
    }

    impl From<EntryInfo> for Entry {
        fn from(info: EntryInfo) -> Entry {
            Entry {
                path: info.path,
                r#type: EntryType::from(info.kind).into(),
                size: info.size,
                mtime_ns: info.mtime_ns,
                mode: info.mode,
                sha256: info
                    .sha256
                    .map(|digest| bytes::Bytes::copy_from_slice(digest.as_bytes()))
                    .unwrap_or_default(),
            }
        }
    }

    impl TryFrom<Entry> for EntryInfo {
        type Error = String;

        fn try_from(entry: Entry) -> Result<EntryInfo, String> {
            let kind = match EntryType::try_from(entry.r#type) {
                Ok(EntryType::File) => EntryKind::File,
                Ok(EntryType::Dir) => EntryKind::Dir,
                Ok(EntryType::Symlink) => EntryKind::Symlink,
                _ => return Err(format!("unknown entry type {}", entry.r#type)),
            };
            let sha256 = match entry.sha256.len() {
                0 => None,
                _ => Some(
                    Digest::from_slice(&entry.sha256)
                        .ok_or_else(|| format!("{}: bad sha256 length", entry.path))?,
                ),
            };
            Ok(EntryInfo {
                path: entry.path,
                kind,
                size: entry.size,
                mtime_ns: entry.mtime_ns,
                mode: entry.mode,
                sha256,
            })
        }
    }

    impl From<TailCursor> for super::TailCursor {
        fn from(cursor: TailCursor) -> super::TailCursor {
            super::TailCursor {
                file: cursor.file.map(|file| super::FileIdentity {
                    device: file.device,
                    inode: file.inode,
                    birth_ns: file.birth_ns,
                }),
                offset: cursor.offset,
                recent_sha256: bytes::Bytes::new(),
                recent_len: 0,
            }
        }
    }

    impl From<super::TailCursor> for TailCursor {
        fn from(cursor: super::TailCursor) -> TailCursor {
            TailCursor {
                file: cursor.file.map(|file| FileId {
                    device: file.device,
                    inode: file.inode,
                    birth_ns: file.birth_ns,
                }),
                offset: cursor.offset,
            }
        }
    }

    impl From<FileVersion> for WireVersion {
        fn from(version: FileVersion) -> WireVersion {
            WireVersion {
                device: version.device,
                inode: version.inode,
                size: version.size,
                mtime_ns: version.mtime_ns,
            }
        }
    }

    impl From<WireVersion> for FileVersion {
        fn from(version: WireVersion) -> FileVersion {
            FileVersion {
                device: version.device,
                inode: version.inode,
                size: version.size,
                mtime_ns: version.mtime_ns,
            }
        }
    }

    impl From<ReadStart> for ReadHeader {
        fn from(start: ReadStart) -> ReadHeader {
            ReadHeader {
                entry: Some(start.entry.into()),
                version: Some(start.version.into()),
                offset: start.offset,
                length: start.length,
                prefix_sha256: start
                    .prefix_sha256
                    .map(|digest| bytes::Bytes::copy_from_slice(digest.as_bytes()))
                    .unwrap_or_default(),
            }
        }
    }

    impl From<Digest> for ReadTrailer {
        fn from(digest: Digest) -> ReadTrailer {
            ReadTrailer {
                sha256: bytes::Bytes::copy_from_slice(digest.as_bytes()),
            }
        }
    }
}
