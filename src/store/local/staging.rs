//! Uploads staged beside their target: a hidden, exclusively locked
//! temporary file `.NAME.fetchd-upload-XXXXXXXXXXXXXXXX` (16 random hex
//! digits) in the target's folder, so that the commit is one atomic rename.
//!
//! Without replace, the rename is `renameat2(RENAME_NOREPLACE)` (or, where
//! the filesystem lacks it, `link` + `unlink`), so a file created at the
//! target while the upload ran is never replaced. A temporary file that is
//! dropped without a commit is removed ([`TempFile`]'s `Drop`); those a
//! crash left behind are removed by [`sweep_leftovers`] when a server that
//! accepts uploads starts. A live upload holds an exclusive `flock` on its
//! file, and the sweep skips locked files, so a second server on the same
//! root does not remove the first one's uploads in flight.

use std::fs::File;
use std::hash::{BuildHasher, Hasher as _};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};
use rustix::io::Errno;

use crate::checksum::Digest;
use crate::entry::EntryKind;
use crate::error::{Error, Result};
use crate::store::local::root::Root;
use crate::store::path::{MAX_NAME_BYTES, RequestPath};
use crate::store::{Staged, Swept};

/// What marks a temporary upload file: `.NAME` + this + 16 hex digits.
pub(crate) const TEMP_MARKER: &str = ".fetchd-upload-";
/// Hex digits of randomness at the end of a temporary file's name.
const TEMP_RANDOM_DIGITS: usize = 16;
/// Most entries [`sweep_leftovers`] looks at.
pub(crate) const MAX_SWEEP_ENTRIES: usize = 1_000_000;
/// Names tried before creating a temporary file gives up.
const TEMP_ATTEMPTS: usize = 16;

/// `.NAME.fetchd-upload-XXXXXXXXXXXXXXXX` beside the target, removed on
/// drop unless it was placed.
#[derive(Debug)]
pub(crate) struct TempFile {
    folder: Dir,
    /// The temporary file's name in `folder`.
    name: String,
    /// The target's name in `folder`.
    target: String,
    /// The target as the request named it, for messages.
    shown: String,
    file: File,
    /// The commit may replace a file at the target.
    replace: bool,
    placed: bool,
}

impl TempFile {
    /// Creates a new, exclusively locked temporary file for `target` in
    /// `folder`, to be committed replacing a file there only with `replace`.
    pub(crate) fn create(
        folder: Dir,
        target: String,
        shown: String,
        replace: bool,
    ) -> Result<TempFile> {
        let mut options = OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .follow(FollowSymlinks::No);
        let mut last = None;
        for _ in 0..TEMP_ATTEMPTS {
            let name = temp_name(&target, random_u64());
            match folder.open_with(&name, &options) {
                Ok(file) => {
                    let temp = TempFile {
                        folder,
                        name,
                        target,
                        shown,
                        file: file.into_std(),
                        replace,
                        placed: false,
                    };
                    // Tells a start-up sweep of another server on this
                    // root that the file is in use (see `sweep_leftovers`).
                    if let Err(err) = temp.file.try_lock() {
                        tracing::debug!(temp = %temp.name, ?err, "cannot lock the upload file");
                    }
                    return Ok(temp);
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last = Some(err),
                Err(err) => return Err(Error::from_server_io(&shown, err)),
            }
        }
        Err(Error::from_server_io(
            &shown,
            last.unwrap_or_else(|| io::Error::other("no free temporary name")),
        ))
    }
}

impl Staged for TempFile {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|err| Error::from_server_io(&self.shown, err))
    }

    /// Syncs the data, renames the file onto the target (replacing it only
    /// when staged with `replace`) and syncs the folder.
    fn commit(mut self, _sha256: &Digest) -> Result<()> {
        let force = self.replace;
        let io_error = |err: io::Error| Error::from_server_io(&self.shown, err);
        self.file.sync_all().map_err(io_error)?;
        let renamed = if force {
            rustix::fs::renameat(&self.folder, &self.name, &self.folder, &self.target)
        } else {
            crate::partfile::rename_noreplace(
                &self.folder,
                self.name.as_str(),
                self.target.as_str(),
            )
        };
        match renamed {
            Ok(()) => self.placed = true,
            Err(Errno::EXIST) if !force => {
                return Err(Error::AlreadyExists {
                    path: self.shown.clone(),
                });
            }
            Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST) => {
                return Err(Error::TargetIsDirectory {
                    path: self.shown.clone(),
                });
            }
            Err(errno) => return Err(io_error(errno.into())),
        }
        sync_folder(&self.folder).map_err(|errno| io_error(errno.into()))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.placed
            && let Err(err) = self.folder.remove_file(&self.name)
        {
            tracing::warn!(path = %self.shown, temp = %self.name, %err, "cannot remove an unfinished upload");
        }
    }
}

/// Syncs `folder`, making a rename in it durable. The handle itself may be
/// an `O_PATH` descriptor, which cannot be synced: `.` is opened from it.
fn sync_folder(folder: &Dir) -> rustix::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let opened = rustix::fs::openat(
        folder,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::fsync(&opened)
}

/// The temporary name for `target`: `.` + target (cut to fit) + marker +
/// 16 hex digits, at most [`MAX_NAME_BYTES`] long.
fn temp_name(target: &str, random: u64) -> String {
    let room = MAX_NAME_BYTES - 1 - TEMP_MARKER.len() - TEMP_RANDOM_DIGITS;
    let mut cut = target.len().min(room);
    while !target.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}{TEMP_MARKER}{random:016x}", &target[..cut])
}

/// True for a name [`temp_name`] makes.
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((target, random)) = rest.rsplit_once(TEMP_MARKER) else {
        return false;
    };
    !target.is_empty()
        && random.len() == TEMP_RANDOM_DIGITS
        && random
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// 64 random bits, from the standard library's randomly keyed hasher (no
/// secret is needed: names only have to differ, and `O_EXCL` catches the
/// rare clash).
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Removes temporary upload files that a crash left anywhere below the
/// root: a walk of at most [`MAX_SWEEP_ENTRIES`] entries (symlinked folders
/// are not entered). Files another live server holds locked are kept.
pub(crate) fn sweep_leftovers(root: &Root) -> Result<Swept> {
    let mut swept = Swept::default();
    let top = RequestPath::parse("/")?;
    root.walk(&top, true, &mut |listed| {
        swept.visited += 1;
        if listed.info.kind == EntryKind::File
            && is_temp_name(listed.name)
            && remove_if_unlocked(listed.folder, listed.name)
        {
            swept.removed += 1;
            tracing::info!(path = %listed.info.path, "removed an unfinished upload left by an earlier run");
        }
        if swept.visited >= MAX_SWEEP_ENTRIES {
            swept.truncated = true;
            return false;
        }
        true
    })?;
    Ok(swept)
}

/// Removes `name` from `folder` unless someone holds a lock on it.
fn remove_if_unlocked(folder: &Dir, name: &str) -> bool {
    let mut options = OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    let Ok(file) = folder.open_with(name, &options) else {
        return false;
    };
    let file = file.into_std();
    if file.try_lock().is_err() {
        return false;
    }
    let removed = folder.remove_file(name).is_ok();
    drop(file);
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Temporary names are hidden, keep the target's name, fit NAME_MAX and
    /// are recognised by the sweep; other names are not.
    #[test]
    fn temp_names_round_trip() {
        let name = temp_name("report.pdf", 0xabc);
        assert_eq!(name, ".report.pdf.fetchd-upload-0000000000000abc");
        assert!(is_temp_name(&name));
        let long = "é".repeat(200);
        let name = temp_name(&long, u64::MAX);
        assert!(name.len() <= MAX_NAME_BYTES, "{}", name.len());
        assert!(is_temp_name(&name));
        for other in [
            "report.pdf",
            ".report.pdf",
            ".fetchd-upload-0000000000000abc",
            ".x.fetchd-upload-0000000000000ab",
            ".x.fetchd-upload-0000000000000ABC",
            "x.fetchd-upload-0000000000000abc",
        ] {
            assert!(!is_temp_name(other), "{other}");
        }
    }

    /// Random parts differ from call to call.
    #[test]
    fn random_parts_differ() {
        let a = random_u64();
        let b = random_u64();
        assert_ne!(a, b);
    }

    /// The sweep removes unlocked temporary files anywhere below the root and
    /// keeps locked ones and everything else.
    #[test]
    fn sweep_removes_leftovers_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        let left = temp_name("f", 1);
        let held = temp_name("g", 2);
        std::fs::write(dir.path().join("a/b").join(&left), b"x").expect("write");
        std::fs::write(dir.path().join(&held), b"x").expect("write");
        std::fs::write(dir.path().join("a/keep.fetchd-upload-x"), b"x").expect("write");
        let lock = File::open(dir.path().join(&held)).expect("open");
        lock.try_lock().expect("lock");
        let root = Root::open(dir.path()).expect("root");
        let swept = sweep_leftovers(&root).expect("sweep");
        assert_eq!(swept.removed, 1);
        assert!(!swept.truncated);
        assert!(!dir.path().join("a/b").join(&left).exists());
        assert!(dir.path().join(&held).exists());
        assert!(dir.path().join("a/keep.fetchd-upload-x").exists());
    }
}
