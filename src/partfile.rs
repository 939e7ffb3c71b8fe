//! `DEST.part`: where a download is assembled before it becomes `DEST`.
//!
//! The part file lives beside its destination, so that the final rename is
//! atomic. It is locked while in use, so two runs cannot write one part file
//! at once. It is kept when a transfer is interrupted (the next run resumes
//! from its length) and only becomes `DEST` through [`PartFile::commit`],
//! which syncs the data, renames it over `DEST` and syncs the folder.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Suffix of a part file's name.
pub(crate) const PART_SUFFIX: &str = ".part";

/// Bytes appended between two background flushes of a part file.
const FLUSH_EVERY_BYTES: u64 = 64 * 1024 * 1024;

/// A locked, open `DEST.part`.
#[derive(Debug)]
pub(crate) struct PartFile {
    file: File,
    path: PathBuf,
    dest: PathBuf,
    len: u64,
    /// Bytes appended since the last background flush was asked for.
    unflushed: u64,
    flusher: Option<Flusher>,
}

/// A thread that writes a part file's data out (`fdatasync`) while more is
/// appended, so that the sync before the rename has little left to do
/// (1 GiB: 0.25 s of waiting at the end here, README, Performance).
#[derive(Debug)]
struct Flusher {
    wake: std::sync::mpsc::SyncSender<()>,
    /// Set when a background flush failed: the error belongs to the file
    /// description both share, so the final sync might not see it again.
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Flusher {
    fn start(file: &File) -> Option<Flusher> {
        let file = file.try_clone().ok()?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&failed);
        std::thread::Builder::new()
            .name("part-flush".into())
            .spawn(move || {
                for () in woken {
                    if file.sync_data().is_err() {
                        flag.store(true, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
            })
            .ok()?;
        Some(Flusher { wake, failed })
    }

    fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The part file path for `dest`: same folder, `.part` appended.
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(OsString::from).unwrap_or_default();
    name.push(PART_SUFFIX);
    dest.with_file_name(name)
}

impl PartFile {
    /// Opens (or creates) the part file of `dest`, keeping what it holds.
    /// Fails if another process holds it.
    pub(crate) fn open(dest: &Path) -> Result<PartFile> {
        let path = part_path(dest);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| Error::io(&path, err))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    dest: dest.to_path_buf(),
                    lock: path,
                });
            }
            Err(fs::TryLockError::Error(err)) => return Err(Error::io(&path, err)),
        }
        let meta = file.metadata().map_err(|err| Error::io(&path, err))?;
        if !meta.is_file() {
            return Err(Error::Usage(format!(
                "{}: exists and is not a regular file; remove it",
                path.display()
            )));
        }
        let mut file = file;
        file.seek(SeekFrom::End(0))
            .map_err(|err| Error::io(&path, err))?;
        Ok(PartFile {
            len: meta.len(),
            file,
            path,
            dest: dest.to_path_buf(),
            unflushed: 0,
            flusher: None,
        })
    }

    /// Bytes already in the part file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// True when the part file holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Drops everything after the first `len` bytes.
    pub(crate) fn truncate(&mut self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .and_then(|()| self.file.seek(SeekFrom::Start(len)))
            .map_err(|err| Error::io(&self.path, err))?;
        self.len = len;
        Ok(())
    }

    /// Reserves disk blocks for the part to grow to `size` bytes, leaving
    /// its length alone (`FALLOC_FL_KEEP_SIZE`, so a resume still sees only
    /// what was written). Appends into reserved blocks skip ext4's delayed
    /// allocation: writing 1 GiB took 0.12 s instead of 0.19-0.49 s here
    /// (README, Performance). Where the file system cannot, nothing
    /// changes; where the disk is too full, the partial reservation is
    /// given back and the writes meet the full disk as before.
    pub(crate) fn reserve(&self, size: u64) {
        let Some(more) = size.checked_sub(self.len).filter(|&more| more > 0) else {
            return;
        };
        let flags = rustix::fs::FallocateFlags::KEEP_SIZE;
        if let Err(err) = rustix::fs::fallocate(&self.file, flags, self.len, more) {
            tracing::debug!(path = %self.path.display(), %err, "no space reserved for the part file");
            // Blocks past the end are freed by truncating to the length.
            let _ = self.file.set_len(self.len);
        }
    }

    /// A reader over the bytes already present, for hashing them.
    pub(crate) fn reader(&self) -> Result<File> {
        File::open(&self.path).map_err(|err| Error::io(&self.path, err))
    }

    /// Appends `data` at the end.
    pub(crate) fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|err| self.write_error(err))?;
        self.len += data.len() as u64;
        self.flush_behind(data.len() as u64);
        Ok(())
    }

    /// Asks the flusher thread to write out what was appended, once every
    /// [`FLUSH_EVERY_BYTES`].
    fn flush_behind(&mut self, appended: u64) {
        self.unflushed += appended;
        if self.unflushed < FLUSH_EVERY_BYTES {
            return;
        }
        self.unflushed = 0;
        if self.flusher.is_none() {
            self.flusher = Flusher::start(&self.file);
        }
        if let Some(flusher) = &self.flusher {
            // A flush already waiting covers these bytes too.
            let _ = flusher.wake.try_send(());
        }
    }

    /// Writes `data` at `offset`, leaving the cursor where it was (one file
    /// assembled from ranges that arrive out of order). The part's length
    /// becomes the end of the furthest write, so bytes below it may be
    /// holes until every range is in: a caller that stops early truncates
    /// to what it knows is whole.
    pub(crate) fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(data, offset)
            .map_err(|err| self.write_error(err))?;
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    /// Syncs the data, renames the part file onto the destination and syncs
    /// the folder, so the destination is whole even after a crash.
    pub(crate) fn commit(mut self) -> Result<()> {
        if let Some(flusher) = self.flusher.take()
            && flusher.failed()
        {
            return Err(self.write_error(io::Error::other("writing the data out to disk failed")));
        }
        self.file.sync_all().map_err(|err| self.write_error(err))?;
        fs::rename(&self.path, &self.dest).map_err(|err| Error::io(&self.dest, err))?;
        sync_parent(&self.dest).map_err(|err| Error::io(&self.dest, err))
    }

    /// A failed write or sync: a full disk is named by the destination (the
    /// file the user asked for, which stays as it was), anything else by
    /// the part file it happened to.
    fn write_error(&self, err: io::Error) -> Error {
        match err.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Error::io(&self.dest, err),
            _ => Error::io(&self.path, err),
        }
    }

    /// Removes the part file (its content is known to be useless).
    pub(crate) fn discard(self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::io(&self.path, err)),
        }
    }
}

/// Syncs the folder holding `path`, making a rename in it durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Renames `from` onto `to`, both relative to `dir` (`rustix::fs::CWD` for
/// plain paths), unless `to` exists: then `EEXIST`, and nothing moves.
/// File systems without `RENAME_NOREPLACE` get `link` + `unlink`, which
/// refuses an existing `to` just the same. Used wherever a verified file is
/// put in place without ever replacing one that appeared meanwhile (the
/// batch writer, uploads without `--force`).
pub(crate) fn rename_noreplace<
    Fd: AsFd,
    P: rustix::path::Arg + Copy,
    Q: rustix::path::Arg + Copy,
>(
    dir: Fd,
    from: P,
    to: Q,
) -> rustix::io::Result<()> {
    use rustix::fs::{AtFlags, RenameFlags};
    use rustix::io::Errno;
    let dir = dir.as_fd();
    match rustix::fs::renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => {
            rustix::fs::linkat(dir, from, dir, to, AtFlags::empty())?;
            rustix::fs::unlinkat(dir, from, AtFlags::empty())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part file sits beside its destination with `.part` appended.
    #[test]
    fn part_path_is_beside_dest() {
        assert_eq!(
            part_path(Path::new("out/a.tar.gz")),
            Path::new("out/a.tar.gz.part")
        );
        assert_eq!(part_path(Path::new("x")), Path::new("x.part"));
    }

    /// Data appended survives reopening; commit replaces the destination.
    #[test]
    fn append_reopen_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file");
        fs::write(&dest, b"old").expect("write");
        {
            let mut part = PartFile::open(&dest).expect("open");
            assert!(part.is_empty());
            part.append(b"hello ").expect("append");
        }
        let mut part = PartFile::open(&dest).expect("reopen");
        assert_eq!(part.len(), 6);
        part.append(b"world").expect("append");
        assert_eq!(fs::read(&dest).expect("read"), b"old", "dest untouched");
        part.commit().expect("commit");
        assert_eq!(fs::read(&dest).expect("read"), b"hello world");
        assert!(!part_path(&dest).exists());
    }

    /// A second writer on the same part file is refused while the first
    /// holds it.
    #[test]
    fn part_file_is_exclusive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file");
        let _first = PartFile::open(&dest).expect("open");
        let second = PartFile::open(&dest).expect_err("must be locked");
        assert!(second.to_string().contains("another fetchd"), "{second}");
    }

    /// Space reserved ahead keeps the part's length (what a resume trusts)
    /// and is given to the appends; a long file flushed behind its writes
    /// comes out whole.
    #[test]
    fn reserved_and_flushed_behind_a_part_file_stays_exact() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file");
        let mut part = PartFile::open(&dest).expect("open");
        part.append(b"head").expect("append");
        let total = 2 * FLUSH_EVERY_BYTES + 4 + 1000;
        part.reserve(total);
        let meta = fs::metadata(part.path()).expect("stat");
        assert_eq!(
            (part.len(), meta.len()),
            (4, 4),
            "the length is what was written"
        );
        assert!(meta.blocks() * 512 >= total, "blocks reserved past the end");
        drop(part);
        let mut part = PartFile::open(&dest).expect("reopen");
        assert_eq!(part.len(), 4, "a resume sees only what was written");
        let block: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        for _ in 0..2 * FLUSH_EVERY_BYTES / block.len() as u64 {
            part.append(&block).expect("append");
        }
        part.append(&[7u8; 1000]).expect("append");
        part.commit().expect("commit");
        let meta = fs::metadata(&dest).expect("stat");
        assert_eq!(meta.len(), total);
        assert!(
            meta.blocks() * 512 >= total,
            "the reserved blocks hold the data"
        );
        let data = fs::read(&dest).expect("read");
        assert_eq!(&data[..4], b"head");
        assert_eq!(&data[4..4 + block.len()], &block[..]);
        assert_eq!(&data[data.len() - 1000..], &[7u8; 1000][..]);
    }
}
