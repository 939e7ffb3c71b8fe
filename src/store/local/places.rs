//! The sandbox's answers for the verbs that write or follow: where an
//! upload's file goes ([`Root::stage_place`], folders created inside the
//! root only), and where a followed file lives ([`Root::place`]), with the
//! opens a follower makes in that folder later ([`Root::open_in`],
//! [`Root::find_in`]).

use std::fs;
use std::io;

use cap_fs_ext::DirExt;
use cap_std::fs::{Dir, MetadataExt};

use crate::error::{Error, Result};
use crate::store::local::root::{
    Located, Missing, Resolved, Root, dir_open_error, open_checked, special_kind,
};
use crate::store::path::RequestPath;

/// Most folder entries [`Root::find_in`] looks at.
pub(crate) const MAX_FIND_ENTRIES: usize = 100_000;

/// Where a followed path's file lives (`tail`): a handle on the folder that
/// holds it, or would hold it once it is created, and its name there.
#[derive(Debug)]
pub(crate) struct Place {
    /// The folder (after following every symlink on the way).
    pub folder: Dir,
    /// Device and inode of `folder`.
    pub folder_id: (u64, u64),
    /// The file's name in `folder`.
    pub name: String,
    /// The regular file there now (symlinks followed); `None` when nothing
    /// is there.
    pub file: Option<cap_std::fs::Metadata>,
}

/// Where an upload goes: the folder that will hold the file (after every
/// symlink on the way was followed) and the file's name in it.
#[derive(Debug)]
pub(crate) struct StagePlace {
    /// The folder, created if it was missing.
    pub folder: Dir,
    /// The file's name in `folder`.
    pub name: String,
    /// The regular file at that name now; `None` when nothing is there.
    pub existing: Option<cap_std::fs::Metadata>,
}

impl Root {
    /// Resolves `path` for an upload: the folder that will hold the file and
    /// its name there, with the object now at that name, if any. Symlinks
    /// are followed like [`Root::locate`] follows them, also a final one
    /// (the file is written where the link leads, if that is inside the
    /// root). Missing folders on the way are created, one at a time, each
    /// by its name in a folder handle the walk already holds, and opened
    /// without following symlinks; so they are created inside the root only.
    /// A path whose last name is `..`, or the root itself, is
    /// [`Error::TargetIsDirectory`].
    pub(crate) fn stage_place(&self, path: &RequestPath) -> Result<StagePlace> {
        let shown = path.shown();
        match self.resolve(path, Missing::Create)? {
            Resolved::Absent { folder, name } => Ok(StagePlace {
                folder,
                name,
                existing: None,
            }),
            Resolved::Found(Located {
                parent,
                name: Some(name),
                meta,
            }) => {
                let file_type = meta.file_type();
                if file_type.is_dir() {
                    return Err(Error::TargetIsDirectory { path: shown });
                }
                if !file_type.is_file() {
                    return Err(Error::NotRegular {
                        path: shown,
                        kind: special_kind(&meta),
                    });
                }
                Ok(StagePlace {
                    folder: parent,
                    name,
                    existing: Some(meta),
                })
            }
            Resolved::Found(Located { name: None, .. }) => {
                Err(Error::TargetIsDirectory { path: shown })
            }
        }
    }

    /// Resolves `path` for following it: the folder that holds its file (or
    /// would hold it: a missing file is `Place::file == None` as long as its
    /// folder exists) and the file's name there. A missing folder is
    /// [`Error::NotFound`]; a directory, FIFO, socket or device at the path
    /// is refused like [`Root::open_file`] refuses it.
    pub(crate) fn place(&self, path: &RequestPath) -> Result<Place> {
        let shown = path.shown();
        let os_error = |err: io::Error| Error::from_server_io(&shown, err);
        match self.locate(path) {
            Ok(located) => {
                let name = located.file_name(&shown)?.to_string();
                let folder_meta = located.parent.dir_metadata().map_err(os_error)?;
                Ok(Place {
                    folder: located.parent,
                    folder_id: (folder_meta.dev(), folder_meta.ino()),
                    name,
                    file: Some(located.meta),
                })
            }
            Err(Error::NotFound { .. }) => {
                let not_found = || Error::NotFound {
                    path: shown.clone(),
                };
                let Some((parent, name)) = path.split_last() else {
                    return Err(not_found());
                };
                let located = match self.locate(&parent) {
                    Ok(located) => located,
                    Err(Error::NotFound { .. } | Error::NotDirectory { .. }) => {
                        return Err(not_found());
                    }
                    Err(err) => return Err(err),
                };
                if !located.meta.is_dir() {
                    return Err(not_found());
                }
                let folder = match &located.name {
                    None => located.parent,
                    Some(dir_name) => located
                        .parent
                        .open_dir_nofollow(dir_name)
                        .map_err(|err| dir_open_error(&shown, err))?,
                };
                let folder_meta = folder.dir_metadata().map_err(os_error)?;
                Ok(Place {
                    folder,
                    folder_id: (folder_meta.dev(), folder_meta.ino()),
                    name: name.to_string(),
                    file: None,
                })
            }
            Err(err) => Err(err),
        }
    }

    /// Opens the regular file `name` in `folder` (a handle from
    /// [`Root::place`]) for reading. A symlink there now is
    /// [`Error::Changed`] (the place was resolved past symlinks); folders,
    /// FIFOs, sockets and devices are refused without being opened.
    pub(crate) fn open_in(
        folder: &Dir,
        name: &str,
        shown: &str,
    ) -> Result<(fs::File, fs::Metadata)> {
        let meta = folder
            .symlink_metadata(name)
            .map_err(|err| Error::from_server_io(shown, err))?;
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            return Err(Error::Changed { path: shown.into() });
        }
        if file_type.is_dir() {
            return Err(Error::IsDirectory { path: shown.into() });
        }
        if !file_type.is_file() {
            return Err(Error::NotRegular {
                path: shown.into(),
                kind: special_kind(&meta),
            });
        }
        open_checked(folder, name, shown)
    }

    /// Finds and opens the regular file in `folder` with this device and
    /// inode: a log rotated by rename keeps its inode under its new name.
    /// Looks at most [`MAX_FIND_ENTRIES`] entries; `None` when it is not
    /// there.
    pub(crate) fn find_in(
        folder: &Dir,
        device: u64,
        inode: u64,
        shown: &str,
    ) -> Result<Option<(fs::File, fs::Metadata)>> {
        use rustix::fs::DirEntryExt as _;
        use std::os::unix::fs::MetadataExt as _;
        let entries = folder
            .entries()
            .map_err(|err| Error::from_server_io(shown, err))?;
        for entry in entries.take(MAX_FIND_ENTRIES) {
            let Ok(entry) = entry else { continue };
            if entry.ino() != inode {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            match Root::open_in(folder, &name, shown) {
                Ok((file, meta)) if meta.dev() == device && meta.ino() == inode => {
                    return Ok(Some((file, meta)));
                }
                Ok(_) | Err(_) => continue,
            }
        }
        Ok(None)
    }
}
