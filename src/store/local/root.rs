//! The root is a sandbox: every request path is resolved beneath it, one
//! component at a time, through directory handles.
//!
//! Resolution never hands a path string to the kernel. It walks from a handle
//! on the root with `openat`-style calls (cap-std, which itself uses
//! `openat2(RESOLVE_BENEATH)` where the kernel has it), opening each folder
//! with `O_NOFOLLOW`. A symlink is read, never traversed by the kernel, and its
//! target is fed back through the same walk; so a symlink swapped in during a
//! request can make the request fail, but never escape. `..` pops a handle
//! off the walk's stack; popping the root itself is [`Error::OutsideRoot`],
//! and so is a request whose own `..` names climb above its start
//! (`a/../../x`), before anything is looked up.
//!
//! Absolute symlink targets are followed when they name a place inside the
//! root by its real path on the host (`ln -s /srv/data/a /srv/data/b`), and
//! refused otherwise.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, FileTypeExt, MetadataExt, OpenOptions, OpenOptionsExt};
use rustix::fs::AtFlags;

use crate::entry::{EntryInfo, EntryKind};
use crate::error::{Error, Result};
use crate::store::path::{Part, RequestPath};

/// The served directory tree.
#[derive(Debug)]
pub(crate) struct Root {
    dir: Dir,
    /// The root's real path, for absolute symlink targets.
    canonical: PathBuf,
    /// The root as it was given (made absolute), for the same.
    given: PathBuf,
    /// False once `openat2` turned out to be missing: plain paths walk too.
    plain_open: AtomicBool,
}

/// Where a request path led: a folder handle and the name inside it.
#[derive(Debug)]
pub(crate) struct Located {
    /// The folder that holds the object; the object itself when `name` is
    /// `None`.
    pub(super) parent: Dir,
    /// The object's name in `parent`, or `None` for a folder reached as a
    /// whole (the root, or a path ending in `..`).
    pub(super) name: Option<String>,
    /// The object's metadata, symlinks followed.
    pub(super) meta: cap_std::fs::Metadata,
}

impl Located {
    /// The name of the regular file this is in its folder; a directory is
    /// [`Error::IsDirectory`] and a FIFO, socket or device
    /// [`Error::NotRegular`] (`shown` names the path in either).
    pub(super) fn file_name(&self, shown: &str) -> Result<&str> {
        let file_type = self.meta.file_type();
        match &self.name {
            Some(name) if file_type.is_file() => Ok(name),
            _ if file_type.is_dir() => Err(Error::IsDirectory { path: shown.into() }),
            _ => Err(Error::NotRegular {
                path: shown.into(),
                kind: special_kind(&self.meta),
            }),
        }
    }
}

/// What [`Root::resolve`] does with a name that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Missing {
    /// Fail with NOT_FOUND (reads).
    Fail,
    /// Create a missing folder; report a missing last name (uploads).
    Create,
}

/// Where a walk ended.
#[derive(Debug)]
pub(super) enum Resolved {
    /// Something is there.
    Found(Located),
    /// The folder exists (or was created) but nothing has the last name.
    Absent {
        /// The folder.
        folder: Dir,
        /// The missing name.
        name: String,
    },
}

/// Most symlinks followed while resolving one path (Linux `MAXSYMLINKS`).
pub(crate) const MAX_SYMLINK_HOPS: usize = 40;

impl Root {
    /// Opens `dir` as the root to serve.
    pub(crate) fn open(dir: &Path) -> io::Result<Root> {
        let canonical = fs::canonicalize(dir)?;
        let given = std::path::absolute(dir)?;
        let handle = Dir::open_ambient_dir(&canonical, ambient_authority())?;
        Ok(Root {
            dir: handle,
            canonical,
            given,
            plain_open: AtomicBool::new(true),
        })
    }

    /// The root's real path on the host (for logs, never for clients).
    pub(crate) fn host_path(&self) -> &Path {
        &self.canonical
    }

    /// Follows `path` beneath the root, symlinks included, to the object it
    /// names.
    pub(crate) fn locate(&self, path: &RequestPath) -> Result<Located> {
        match self.resolve(path, Missing::Fail)? {
            Resolved::Found(located) => Ok(located),
            // `Missing::Fail` reports a missing name as NOT_FOUND instead.
            Resolved::Absent { .. } => Err(Error::NotFound { path: path.shown() }),
        }
    }

    /// The walk behind [`Root::locate`] and [`Root::stage_place`]: from the
    /// root, one name at a time, symlinks read and fed back into the walk.
    pub(super) fn resolve(&self, path: &RequestPath, missing: Missing) -> Result<Resolved> {
        let shown = path.shown();
        let outside = || Error::OutsideRoot {
            path: shown.clone(),
        };
        let os_error = |err: io::Error| Error::from_server_io(&shown, err);
        if path.climbs_out() {
            return Err(outside());
        }

        let mut stack: Vec<Dir> = Vec::new();
        let mut queue: VecDeque<Part> = path.parts().iter().cloned().collect();
        let mut hops = 0;
        loop {
            let current = stack.last().unwrap_or(&self.dir);
            let Some(part) = queue.pop_front() else {
                return Ok(Resolved::Found(Located {
                    meta: current.dir_metadata().map_err(os_error)?,
                    parent: current.try_clone().map_err(os_error)?,
                    name: None,
                }));
            };
            let name = match part {
                Part::Parent => {
                    stack.pop().ok_or_else(outside)?;
                    continue;
                }
                Part::Name(name) => name,
            };
            let meta = match current.symlink_metadata(&name) {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound && missing == Missing::Create => {
                    if queue.is_empty() {
                        return Ok(Resolved::Absent {
                            folder: current.try_clone().map_err(os_error)?,
                            name,
                        });
                    }
                    if queue.contains(&Part::Parent) {
                        // `missing/../x`: the folder would be created only
                        // to be left again; as the kernel would, say so.
                        return Err(os_error(err));
                    }
                    let created = create_folder(current, &name, &shown)?;
                    stack.push(created);
                    continue;
                }
                Err(err) => return Err(os_error(err)),
            };
            if meta.is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(Error::InvalidPath {
                        path: shown,
                        reason: "too many levels of symbolic links",
                    });
                }
                let target = current.read_link_contents(&name).map_err(|err| {
                    // EINVAL: no longer a symlink; replaced since the lstat.
                    if err.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) {
                        Error::Changed {
                            path: shown.clone(),
                        }
                    } else {
                        Error::from_server_io(&shown, err)
                    }
                })?;
                let relative = if target.is_absolute() {
                    stack.clear();
                    self.inside_part(&target).ok_or_else(outside)?
                } else {
                    target
                };
                let mut expanded = parts_of(&relative).ok_or_else(outside)?;
                expanded.extend(queue);
                queue = expanded.into();
                continue;
            }
            if queue.is_empty() {
                return Ok(Resolved::Found(Located {
                    parent: current.try_clone().map_err(os_error)?,
                    name: Some(name),
                    meta,
                }));
            }
            if !meta.is_dir() {
                return Err(Error::NotDirectory { path: shown });
            }
            let next = current
                .open_dir_nofollow(&name)
                .map_err(|err| dir_open_error(&shown, err))?;
            stack.push(next);
        }
    }

    /// The part of an absolute symlink target below the root, if it is
    /// inside.
    fn inside_part(&self, target: &Path) -> Option<PathBuf> {
        [&self.canonical, &self.given]
            .into_iter()
            .find_map(|root| target.strip_prefix(root).ok())
            .map(Path::to_path_buf)
    }

    /// The (device, inode) that `path` names now, symlinks followed.
    pub(crate) fn identity(&self, path: &RequestPath) -> Result<(u64, u64)> {
        let located = self.locate(path)?;
        Ok((located.meta.dev(), located.meta.ino()))
    }

    /// True when `path` still names the object with this (device, inode),
    /// symlinks followed. A path of plain names costs one `lstat` from the
    /// root handle (only compared, never returned, so it needs no sandbox
    /// walk: a match is the object already opened beneath the root); any
    /// other answer is settled by the walk of [`Root::identity`].
    pub(crate) fn still_names(&self, path: &RequestPath, identity: (u64, u64)) -> bool {
        if let Some(relative) = path.plain()
            && let Ok(stat) = rustix::fs::statat(&self.dir, relative, AtFlags::SYMLINK_NOFOLLOW)
            && (stat.st_dev, stat.st_ino) == identity
        {
            return true;
        }
        matches!(self.identity(path), Ok(now) if now == identity)
    }

    /// Metadata of the object `path` names, symlinks followed.
    pub(crate) fn stat(&self, path: &RequestPath) -> Result<EntryInfo> {
        let located = self.locate(path)?;
        entry_info(path.display().to_string(), &located.meta).ok_or_else(|| Error::NotRegular {
            path: path.shown(),
            kind: special_kind(&located.meta),
        })
    }

    /// Opens the regular file `path` names for reading. Folders, FIFOs,
    /// sockets and devices are refused without being opened.
    ///
    /// A path of plain names (no `..`) that leads to a regular file without
    /// any symlink is opened with one kernel walk (see
    /// [`Root::open_plain`]); anything else, and every failure of that walk,
    /// takes the component-by-component walk, which also gives the precise
    /// error.
    pub(crate) fn open_file(&self, path: &RequestPath) -> Result<(fs::File, fs::Metadata)> {
        if let Some(opened) = self.open_plain(path) {
            return Ok(opened);
        }
        let shown = path.shown();
        let located = self.locate(path)?;
        open_checked(&located.parent, located.file_name(&shown)?, &shown)
    }

    /// Opens the regular file a path of plain names leads to with one
    /// `openat2` from the root handle, `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`
    /// and `O_NOFOLLOW`: the kernel refuses any symlink on the way and any
    /// step outside the root, so no symlink is ever traversed. An `lstat`
    /// first keeps folders, FIFOs and devices from being opened at all (as
    /// in the walk, a FIFO swapped in between cannot hang the non-blocking
    /// open, and the descriptor is checked again). `None` when this is not
    /// such a path or anything on the way is unusual: the caller walks.
    fn open_plain(&self, path: &RequestPath) -> Option<(fs::File, fs::Metadata)> {
        use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
        if !self.plain_open.load(Ordering::Relaxed) {
            return None;
        }
        let relative = path.plain()?;
        let stat = rustix::fs::statat(&self.dir, relative, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return None;
        }
        let opened = rustix::fs::openat2(
            &self.dir,
            relative,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        );
        let file = match opened {
            Ok(fd) => fs::File::from(fd),
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                // No openat2 here (old kernel, or a seccomp filter): walk
                // from now on.
                self.plain_open.store(false, Ordering::Relaxed);
                return None;
            }
            Err(_) => return None,
        };
        let meta = file.metadata().ok()?;
        meta.is_file().then_some((file, meta))
    }
}

/// Opens `name` in `parent` for reading, never following a symlink, and
/// checks on the open descriptor that it is a regular file.
pub(super) fn open_checked(
    parent: &Dir,
    name: &str,
    shown: &str,
) -> Result<(fs::File, fs::Metadata)> {
    let mut options = OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    // Non-blocking, so that a FIFO swapped in after the check above
    // cannot hang the open; no controlling terminal from a device.
    options.custom_flags(libc_flags());
    let file = parent
        .open_with(name, &options)
        .map_err(|err| {
            if is_symlink_race(&err) {
                Error::Changed { path: shown.into() }
            } else {
                Error::from_server_io(shown, err)
            }
        })?
        .into_std();
    let meta = file
        .metadata()
        .map_err(|err| Error::from_server_io(shown, err))?;
    if !meta.is_file() {
        return Err(Error::Changed { path: shown.into() });
    }
    Ok((file, meta))
}

/// The entry for `meta`, or `None` for a FIFO, socket or device.
pub(super) fn entry_info(path: String, meta: &cap_std::fs::Metadata) -> Option<EntryInfo> {
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        EntryKind::Symlink
    } else if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File
    } else {
        return None;
    };
    Some(EntryInfo {
        path,
        kind,
        size: meta.size(),
        mtime_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
        mode: meta.mode() & 0o7777,
        sha256: None,
    })
}

/// The word for a special file in error messages.
pub(super) fn special_kind(meta: &cap_std::fs::Metadata) -> &'static str {
    let file_type = meta.file_type();
    if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// The components of a symlink target, or `None` if it has a prefix or
/// root (absolute targets are made relative before this).
fn parts_of(target: &Path) -> Option<Vec<Part>> {
    let mut parts = Vec::new();
    for component in target.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => parts.push(Part::Parent),
            Component::Normal(name) => parts.push(Part::Name(name.to_str()?.to_string())),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts)
}

/// Creates the folder `name` in `parent` (another request may have created
/// it just before: fine) and opens it without following a symlink, so a
/// symlink swapped in under that name fails the request instead of leading
/// anywhere.
fn create_folder(parent: &Dir, name: &str, shown: &str) -> Result<Dir> {
    match parent.create_dir(name) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(Error::from_server_io(shown, err)),
    }
    parent
        .open_dir_nofollow(name)
        .map_err(|err| dir_open_error(shown, err))
}

/// `O_NOFOLLOW` met a symlink: something was swapped in during the request.
fn is_symlink_race(err: &io::Error) -> bool {
    err.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// The error for a folder that could not be opened although the lstat just
/// before saw a folder: `ELOOP` or `ENOTDIR` mean a symlink or file was
/// swapped in since.
pub(super) fn dir_open_error(shown: &str, err: io::Error) -> Error {
    if is_symlink_race(&err) || err.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
    {
        Error::Changed {
            path: shown.to_string(),
        }
    } else {
        Error::from_server_io(shown, err)
    }
}

/// `O_NONBLOCK | O_NOCTTY`.
fn libc_flags() -> i32 {
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    i32::try_from(flags.bits()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-walk open takes plain paths to regular files only: a symlink
    /// anywhere on the way, a folder, a FIFO, a missing file or a path with
    /// `..` make it step aside for the walk, which then decides (an inside
    /// symlink opens, one leading out is refused).
    #[test]
    fn plain_open_only_for_plain_regular_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root_dir = tmp.path().join("root");
        fs::create_dir_all(root_dir.join("a")).expect("mkdir");
        fs::write(root_dir.join("a/f.txt"), b"inside").expect("write");
        fs::write(tmp.path().join("outside"), b"secret").expect("write");
        std::os::unix::fs::symlink("../../outside", root_dir.join("a/link")).expect("symlink");
        std::os::unix::fs::symlink("a", root_dir.join("via")).expect("symlink");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root_dir.join("a/fifo").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        let root = Root::open(&root_dir).expect("root");
        let path = |raw: &str| RequestPath::parse(raw).expect(raw);

        let (mut file, meta) = root.open_plain(&path("a/f.txt")).expect("plain open");
        let mut data = Vec::new();
        io::Read::read_to_end(&mut file, &mut data).expect("read");
        assert_eq!((data.as_slice(), meta.len()), (&b"inside"[..], 6));
        for raw in [
            "a/link",
            "via/f.txt",
            "a",
            "a/fifo",
            "a/missing",
            "a/../a/f.txt",
        ] {
            assert!(
                root.open_plain(&path(raw)).is_none(),
                "{raw} took the shortcut"
            );
        }

        assert!(root.open_file(&path("via/f.txt")).is_ok(), "inside symlink");
        let refused = root.open_file(&path("a/link")).expect_err("leads outside");
        assert!(matches!(refused, Error::OutsideRoot { .. }), "{refused}");
    }

    /// An upload's destination: missing folders are created inside the
    /// root; a folder symlink leading out is refused before anything is
    /// created; the root, `..` endings and folders are not files.
    #[test]
    fn destination_creates_folders_inside_only() {
        let base = tempfile::tempdir().expect("tempdir");
        let root_dir = base.path().join("root");
        let outside = base.path().join("outside");
        fs::create_dir(&root_dir).expect("mkdir");
        fs::create_dir(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, root_dir.join("out")).expect("symlink");
        std::os::unix::fs::symlink("a/b", root_dir.join("in")).expect("symlink");
        let root = Root::open(&root_dir).expect("root");
        let dest = |raw: &str| root.stage_place(&RequestPath::parse(raw).expect("parse"));

        let made = dest("a/b/c.txt").expect("created");
        assert_eq!(made.name, "c.txt");
        assert!(made.existing.is_none());
        assert!(root_dir.join("a/b").is_dir());
        fs::write(root_dir.join("a/b/c.txt"), b"x").expect("write");
        let found = dest("in/c.txt").expect("through an inside symlink");
        assert!(found.existing.is_some_and(|meta| meta.len() == 1));

        for raw in ["out/x", "out/new/deeper/x", "../x"] {
            let err = dest(raw).expect_err(raw);
            assert!(matches!(err, Error::OutsideRoot { .. }), "{raw}: {err}");
        }
        assert_eq!(fs::read_dir(&outside).expect("read").count(), 0);

        for raw in ["/", "a/..", "a/b"] {
            let err = dest(raw).expect_err(raw);
            assert!(
                matches!(err, Error::TargetIsDirectory { .. }),
                "{raw}: {err}"
            );
        }
        let err = dest("gone/../x").expect_err("missing folder then ..");
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(!root_dir.join("gone").exists());
        let err = dest("a/b/c.txt/x").expect_err("a file on the way");
        assert!(matches!(err, Error::NotDirectory { .. }), "{err}");
    }
}
