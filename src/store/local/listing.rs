//! Listings: a path's entries walked through folder handles, names sorted,
//! symlinks reported and never followed, special files left out.

use std::fs;
use std::io;

use cap_fs_ext::DirExt;
use cap_std::fs::{Dir, MetadataExt};

use crate::entry::{EntryInfo, EntryKind};
use crate::error::{Error, Result};
use crate::store::local::root::{Root, dir_open_error, entry_info, open_checked, special_kind};
use crate::store::path::RequestPath;

/// Deepest folder level a recursive listing descends to.
pub(crate) const MAX_LIST_DEPTH: usize = 256;

impl Root {
    /// Walks `path`: a file yields its own entry; a folder yields its
    /// entries (and, with `recursive`, theirs, depth first, names sorted in
    /// each folder). `emit` returns `false` to stop early. Symlinks are
    /// reported, not followed; FIFOs, sockets and devices are left out.
    pub(crate) fn walk(
        &self,
        path: &RequestPath,
        recursive: bool,
        emit: &mut dyn FnMut(WalkEntry<'_>) -> bool,
    ) -> Result<()> {
        let shown = path.shown();
        let located = self.locate(path)?;
        if !located.meta.is_dir()
            && let Some(name) = &located.name
        {
            let info = entry_info(path.display().to_string(), &located.meta).ok_or_else(|| {
                Error::NotRegular {
                    path: shown,
                    kind: special_kind(&located.meta),
                }
            })?;
            emit(WalkEntry {
                info,
                folder: &located.parent,
                name,
                identity: (located.meta.dev(), located.meta.ino()),
            });
            return Ok(());
        }
        let dir = match &located.name {
            None => located.parent,
            Some(name) => located
                .parent
                .open_dir_nofollow(name)
                .map_err(|err| dir_open_error(&shown, err))?,
        };
        walk_dir(&dir, path.display(), recursive, 0, emit)
            .map(|_| ())
            .map_err(|err| Error::from_server_io(&shown, err))
    }
}

/// One entry met by [`Root::walk`], with the folder handle that holds it.
#[derive(Debug)]
pub(crate) struct WalkEntry<'a> {
    /// The entry as listings show it.
    pub info: EntryInfo,
    /// The folder that holds it.
    pub folder: &'a Dir,
    /// Its name in that folder.
    pub name: &'a str,
    /// Its device and inode, as the listing saw them.
    pub identity: (u64, u64),
}

impl WalkEntry<'_> {
    /// The file version the listing saw (for a regular file).
    pub(crate) fn version(&self) -> crate::entry::FileVersion {
        crate::entry::FileVersion {
            device: self.identity.0,
            inode: self.identity.1,
            size: self.info.size,
            mtime_ns: self.info.mtime_ns,
        }
    }
}

impl WalkEntry<'_> {
    /// Opens a listed regular file for reading (never following a symlink,
    /// checked on the open descriptor).
    pub(crate) fn open(&self) -> Result<(fs::File, fs::Metadata)> {
        open_checked(self.folder, self.name, &self.info.path)
    }
}

/// Lists one folder; returns `false` when `emit` asked to stop.
fn walk_dir(
    dir: &Dir,
    base: &str,
    recursive: bool,
    depth: usize,
    emit: &mut dyn FnMut(WalkEntry<'_>) -> bool,
) -> io::Result<bool> {
    let mut names = Vec::new();
    for entry in dir.entries()? {
        let name = entry?.file_name();
        match name.into_string() {
            Ok(name) => names.push(name),
            Err(name) => tracing::warn!(?name, folder = base, "skipping a name that is not UTF-8"),
        }
    }
    names.sort_unstable();
    for name in names {
        let path = if base.is_empty() {
            name.clone()
        } else {
            format!("{base}/{name}")
        };
        let meta = match dir.symlink_metadata(&name) {
            Ok(meta) => meta,
            // Removed while listing: not an error, just gone.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let Some(info) = entry_info(path.clone(), &meta) else {
            continue;
        };
        let is_dir = info.kind == EntryKind::Dir;
        if !emit(WalkEntry {
            info,
            folder: dir,
            name: &name,
            identity: (meta.dev(), meta.ino()),
        }) {
            return Ok(false);
        }
        if recursive && is_dir {
            if depth + 1 >= MAX_LIST_DEPTH {
                tracing::warn!(folder = path, "listing stops at the depth limit");
                continue;
            }
            match dir.open_dir_nofollow(&name) {
                Ok(child) => {
                    if !walk_dir(&child, &path, recursive, depth + 1, emit)? {
                        return Ok(false);
                    }
                }
                Err(err) => tracing::warn!(folder = path, %err, "skipping a folder"),
            }
        }
    }
    Ok(true)
}
