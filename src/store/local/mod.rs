//! The local store: a directory tree on this host, confined by the sandbox.
//!
//! - [`root`]: the sandbox itself: every request path resolved beneath the
//!   root through directory handles, never by a path string.
//! - [`listing`]: walking a folder's entries for `ls` and `get -r`.
//! - [`places`]: where an upload goes and where a followed file lives.
//! - [`staging`]: uploads staged as hidden temporary files beside their
//!   target, committed by an atomic rename; the start-up sweep of
//!   leftovers.
//! - [`follow`]: following a file by name (`tail -F`), one follower per
//!   stream.
//! - [`watches`]: the inotify folder watches the followers share.
//!
//! A version is the file's [`FileVersion`] (device, inode, size, mtime), read
//! from the open descriptor; reads are plain `read()` calls on that
//! descriptor into the caller's buffer.

pub(crate) mod follow;
pub(crate) mod listing;
pub(crate) mod places;
pub(crate) mod root;
#[cfg(test)]
mod root_props;
pub(crate) mod staging;
pub(crate) mod watches;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::entry::{EntryInfo, EntryKind, FileVersion};
use crate::error::{Error, Result};
use crate::store::{self, Listed, RequestPath, Store, Swept, TailEvents, TailSpec};
use root::Root;
use staging::TempFile;
use watches::Watches;

/// A directory tree on this host.
#[derive(Debug)]
pub(crate) struct LocalStore {
    root: Arc<Root>,
    watches: Watches,
}

impl LocalStore {
    /// Opens `dir` as the tree to serve.
    pub(crate) fn open(dir: &Path) -> io::Result<LocalStore> {
        Ok(LocalStore {
            root: Arc::new(Root::open(dir)?),
            watches: Watches::default(),
        })
    }
}

impl store::Version for FileVersion {
    fn describe(&self) -> FileVersion {
        *self
    }

    fn racy_mtime_ns(&self) -> Option<i64> {
        Some(self.mtime_ns)
    }
}

impl Store for LocalStore {
    type Version = FileVersion;
    type Reader = LocalReader;
    type Staged = TempFile;

    fn describe(&self) -> String {
        self.root.host_path().display().to_string()
    }

    fn stat(&self, path: &RequestPath) -> Result<EntryInfo> {
        self.root.stat(path)
    }

    fn list(
        &self,
        path: &RequestPath,
        recursive: bool,
        emit: &mut dyn FnMut(Listed<'_, LocalReader>) -> bool,
    ) -> Result<()> {
        self.root.walk(path, recursive, &mut |listed| {
            let open = || {
                let (file, meta) = listed.open()?;
                let path = RequestPath::parse(&listed.info.path)?;
                Ok(LocalReader::new(Arc::clone(&self.root), path, file, &meta))
            };
            let version = (listed.info.kind == EntryKind::File).then(|| listed.version());
            emit(Listed {
                info: listed.info.clone(),
                version,
                open: &open,
            })
        })
    }

    fn open(&self, path: &RequestPath) -> Result<LocalReader> {
        let (file, meta) = self.root.open_file(path)?;
        Ok(LocalReader::new(
            Arc::clone(&self.root),
            path.clone(),
            file,
            &meta,
        ))
    }

    fn stage(&self, path: &RequestPath, replace: bool) -> Result<TempFile> {
        let shown = path.shown();
        let place = self.root.stage_place(path)?;
        if place.existing.is_some() && !replace {
            return Err(Error::AlreadyExists { path: shown });
        }
        TempFile::create(place.folder, place.name, shown, replace)
    }

    fn sweep(&self) -> Result<Swept> {
        staging::sweep_leftovers(&self.root)
    }

    fn follow(&self, spec: TailSpec, stopping: CancellationToken) -> Result<TailEvents> {
        follow::start(Arc::clone(&self.root), self.watches.clone(), spec, stopping)
    }
}

/// A regular file opened beneath the root, read through its descriptor.
#[derive(Debug)]
pub(crate) struct LocalReader {
    root: Arc<Root>,
    path: RequestPath,
    file: File,
    version: FileVersion,
    entry: EntryInfo,
    /// Where the descriptor's offset is.
    position: u64,
}

impl LocalReader {
    fn new(root: Arc<Root>, path: RequestPath, file: File, meta: &std::fs::Metadata) -> Self {
        let version = FileVersion::of(meta);
        let entry = EntryInfo {
            path: path.display().to_string(),
            kind: EntryKind::File,
            size: version.size,
            mtime_ns: version.mtime_ns,
            mode: meta.mode() & 0o7777,
            sha256: None,
        };
        LocalReader {
            root,
            path,
            file,
            version,
            entry,
            position: 0,
        }
    }
}

impl store::Reader for LocalReader {
    type Version = FileVersion;

    fn version(&self) -> FileVersion {
        self.version
    }

    fn entry(&self) -> &EntryInfo {
        &self.entry
    }

    fn read_into(&mut self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<usize> {
        let io_error = |err| Error::from_server_io(&self.path.shown(), err);
        if offset != self.position {
            self.file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
            self.position = offset;
        }
        // `read_to_end` reads into the buffer's spare room without zeroing
        // it first (a pooled buffer has the room already).
        let read = (&self.file)
            .take(len as u64)
            .read_to_end(buf)
            .map_err(io_error)?;
        self.position += read as u64;
        Ok(read)
    }

    fn is_current(&self) -> Result<bool> {
        let now = self
            .file
            .metadata()
            .map_err(|err| Error::from_server_io(&self.path.shown(), err))?;
        Ok(FileVersion::of(&now) == self.version
            && self
                .root
                .still_names(&self.path, (self.version.device, self.version.inode)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Reader as _;

    /// Ranged reads land after what the buffer holds, from any offset, in
    /// any order; the version stays current until the file changes, and a
    /// file renamed away from its path is no longer current.
    #[test]
    fn ranged_reads_and_currency() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"0123456789").expect("write");
        let store = LocalStore::open(dir.path()).expect("store");
        let path = RequestPath::parse("f").expect("path");
        let mut reader = store.open(&path).expect("open");
        assert_eq!(reader.entry().size, 10);

        let mut buf = b"HDR".to_vec();
        assert_eq!(reader.read_into(6, 3, &mut buf).expect("read"), 3);
        assert_eq!(buf, b"HDR678");
        buf.clear();
        assert_eq!(reader.read_into(0, 4, &mut buf).expect("read"), 4);
        assert_eq!(buf, b"0123");
        buf.clear();
        assert_eq!(reader.read_into(8, 5, &mut buf).expect("read"), 2);
        assert_eq!(reader.read_into(10, 5, &mut buf).expect("read"), 0);
        assert_eq!(buf, b"89");
        assert!(reader.is_current().expect("current"));

        std::fs::rename(dir.path().join("f"), dir.path().join("g")).expect("rename");
        std::fs::write(dir.path().join("f"), b"0123456789").expect("write");
        assert!(
            !reader.is_current().expect("checked"),
            "another file at the path"
        );
    }
}
