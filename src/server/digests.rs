//! Whole-file digests remembered by file version, so that serving an
//! unchanged file again costs no hashing on the server.
//!
//! The key is the store's [`Version`] (for a local root: device, inode, size,
//! mtime). A digest is only remembered when the file's mtime was at least
//! [`RACY_WINDOW`] old when hashing started (for versions that carry one): a file written within the same timestamp tick as
//! the hash could change again without its version changing (git's "racy
//! clean" problem), so such files are hashed every time until they settle.
//! The client verifies every byte against the digest either way; a stale
//! entry would show up as a checksum mismatch, never as a wrong file.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::checksum::Digest;
use crate::entry::EntryInfo;
use crate::error::Result;
use crate::store::{Reader, Version};

/// Digests remembered at most (about 100 bytes each).
pub(crate) const DIGEST_CACHE_ENTRIES: usize = 65_536;
/// A file modified less than this long before hashing began is not cached.
pub(crate) const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A bounded, least-recently-used map from file version to digest.
#[derive(Debug)]
pub(crate) struct DigestCache<V: Version> {
    entries: Mutex<LruCache<V, Digest>>,
}

impl<V: Version> Default for DigestCache<V> {
    fn default() -> DigestCache<V> {
        DigestCache::new(DIGEST_CACHE_ENTRIES)
    }
}

impl<V: Version> DigestCache<V> {
    /// A cache holding at most `capacity` digests.
    pub(crate) fn new(capacity: usize) -> DigestCache<V> {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        DigestCache {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The digest of `version`, if known.
    pub(crate) fn get(&self, version: &V) -> Option<Digest> {
        self.lock().get(version).copied()
    }

    /// Remembers `digest` for `version`, hashed from `hashing_started` on,
    /// unless the file was modified too recently to trust its version.
    pub(crate) fn insert(&self, version: V, digest: Digest, hashing_started: SystemTime) {
        if settled(&version, hashing_started) {
            self.lock().put(version, digest);
        }
    }

    /// Remembers the digest the store keeps with the opened version, if it
    /// keeps one ([`Reader::stored_digest`]): such a digest names that
    /// version's bytes exactly, so the racy window does not apply.
    pub(crate) fn learn_stored<R: Reader<Version = V>>(&self, reader: &R) {
        if let Some(digest) = reader.stored_digest() {
            self.lock().put(reader.version(), digest);
        }
    }

    /// The digest of the opened file: remembered, kept by the store, or
    /// hashed now (and remembered). `None` when the file changed while it
    /// was hashed.
    pub(crate) fn digest_of<R: Reader<Version = V>>(
        &self,
        reader: &mut R,
    ) -> Result<Option<Digest>> {
        let version = reader.version();
        self.learn_stored(reader);
        if let Some(digest) = self.get(&version) {
            return Ok(Some(digest));
        }
        let hashing_started = SystemTime::now();
        let size = reader.entry().size;
        let mut hasher = crate::checksum::Hasher::new();
        crate::store::hash_range(reader, &mut hasher, 0, size + 1)?;
        if hasher.bytes() != size || !reader.is_current()? {
            return Ok(None);
        }
        let digest = hasher.finalize();
        self.insert(version, digest, hashing_started);
        Ok(Some(digest))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<V, Digest>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // for our use (get/put are single operations), so keep going.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// True when what was read of `version` from `hashing_started` on can be
/// trusted to name it: its mtime was at least [`RACY_WINDOW`] old by then
/// (or the version names the content exactly).
pub(crate) fn settled<V: Version>(version: &V, hashing_started: SystemTime) -> bool {
    let started_ns = hashing_started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
        });
    let settled_ns = started_ns.saturating_sub(RACY_WINDOW.as_nanos() as i64);
    version
        .racy_mtime_ns()
        .is_none_or(|mtime_ns| mtime_ns < settled_ns)
}

/// Digests looked up for a listing a few at once, the entries given back in
/// listing order: a file whose digest is not cached is hashed on a blocking
/// thread of its own while the listing goes on (an object store's GETs
/// then overlap instead of queueing behind one another).
pub(crate) struct InOrder {
    runtime: Handle,
    queue: VecDeque<(EntryInfo, Option<JoinHandle<Option<Digest>>>)>,
    hashing: usize,
}

impl InOrder {
    /// Files hashed at once, at most.
    pub(crate) const HASHING_AT_ONCE: usize = 4;

    /// An empty queue whose hashing runs on `runtime`'s blocking pool.
    pub(crate) fn new(runtime: Handle) -> InOrder {
        InOrder {
            runtime,
            queue: VecDeque::new(),
            hashing: 0,
        }
    }

    /// Queues an entry that needs nothing more.
    pub(crate) fn ready(&mut self, info: EntryInfo) {
        self.queue.push_back((info, None));
    }

    /// Queues the file `info` with its digest from the cache or from what
    /// the store keeps, or else hashed from `reader` in the background.
    pub(crate) fn digest<V: Version, R: Reader<Version = V>>(
        &mut self,
        mut info: EntryInfo,
        mut reader: R,
        digests: &Arc<DigestCache<V>>,
    ) {
        digests.learn_stored(&reader);
        if let Some(known) = digests.get(&reader.version()) {
            info.sha256 = Some(known);
            return self.ready(info);
        }
        let digests = Arc::clone(digests);
        let task = self
            .runtime
            .spawn_blocking(move || digests.digest_of(&mut reader).ok().flatten());
        self.hashing += 1;
        self.queue.push_back((info, Some(task)));
    }

    /// The next entry in listing order once it is complete: at once if it
    /// is, after waiting for it when `finish` or when
    /// [`HASHING_AT_ONCE`](InOrder::HASHING_AT_ONCE) files are being hashed
    /// already, else `None`. Blocks: call it on a blocking thread.
    pub(crate) fn next(&mut self, finish: bool) -> Option<EntryInfo> {
        let waiting = match self.queue.front()? {
            (_, Some(task)) => !task.is_finished(),
            (_, None) => false,
        };
        if waiting && !finish && self.hashing < InOrder::HASHING_AT_ONCE {
            return None;
        }
        let (mut info, task) = self.queue.pop_front()?;
        if let Some(task) = task {
            self.hashing -= 1;
            // A file that cannot be hashed (or changed while it was) is
            // listed without a digest; the client asks for it alone.
            info.sha256 = self.runtime.block_on(task).ok().flatten();
        }
        Some(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Hasher;
    use crate::entry::FileVersion;

    fn version(mtime_ns: i64) -> FileVersion {
        FileVersion {
            device: 1,
            inode: 2,
            size: 3,
            mtime_ns,
        }
    }

    /// Settled files are remembered; freshly written ones are not.
    #[test]
    fn racy_files_are_not_cached() {
        let cache = DigestCache::<FileVersion>::new(4);
        let digest = Hasher::new().finalize();
        let now = SystemTime::now();
        let now_ns = now.duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i64;
        let old = version(now_ns - 10_000_000_000);
        let fresh = version(now_ns - 100_000_000);
        cache.insert(old, digest, now);
        cache.insert(fresh, digest, now);
        assert_eq!(cache.get(&old), Some(digest));
        assert_eq!(cache.get(&fresh), None);
    }

    /// A reader of `data` that, with a gate, waits on it before its first
    /// read (a file still being hashed while later ones are done).
    #[derive(Debug)]
    struct Held {
        data: Vec<u8>,
        entry: EntryInfo,
        gate: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl Reader for Held {
        type Version = FileVersion;

        fn version(&self) -> FileVersion {
            FileVersion {
                size: self.entry.size,
                ..version(self.data[0].into())
            }
        }

        fn entry(&self) -> &EntryInfo {
            &self.entry
        }

        fn read_into(&mut self, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<usize> {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            let start = usize::try_from(offset)
                .expect("offset fits")
                .min(self.data.len());
            let end = (start + len).min(self.data.len());
            buf.extend_from_slice(&self.data[start..end]);
            Ok(end - start)
        }

        fn is_current(&self) -> Result<bool> {
            Ok(true)
        }
    }

    fn entry(path: &str, kind: crate::entry::EntryKind, size: usize) -> EntryInfo {
        EntryInfo {
            path: path.into(),
            kind,
            size: size as u64,
            mtime_ns: 1,
            mode: 0o644,
            sha256: None,
        }
    }

    fn sha256(data: &[u8]) -> Digest {
        let mut hasher = Hasher::new();
        hasher.update(data);
        hasher.finalize()
    }

    /// Entries come back in listing order with their digests, though a
    /// later file finished hashing first; nothing waits while hashing is
    /// under way unless asked to finish.
    #[test]
    fn listing_digests_come_back_in_order() {
        use crate::entry::EntryKind;
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let digests = Arc::new(DigestCache::<FileVersion>::new(16));
        let mut entries = InOrder::new(runtime.handle().clone());
        let (release, gate) = std::sync::mpsc::channel();
        let slow = b"slow file".to_vec();
        let quick = b"quick file".to_vec();
        let held = |data: &Vec<u8>, name, gate| Held {
            entry: entry(name, EntryKind::File, data.len()),
            data: data.clone(),
            gate,
        };
        entries.digest(
            entry("slow", EntryKind::File, slow.len()),
            held(&slow, "slow", Some(gate)),
            &digests,
        );
        entries.ready(entry("dir", EntryKind::Dir, 0));
        entries.digest(
            entry("quick", EntryKind::File, quick.len()),
            held(&quick, "quick", None),
            &digests,
        );
        assert!(
            entries.next(false).is_none(),
            "the first file is still hashing"
        );
        release.send(()).expect("the hashing task waits");
        let listed: Vec<EntryInfo> = std::iter::from_fn(|| entries.next(true)).collect();
        let names: Vec<&str> = listed.iter().map(|info| info.path.as_str()).collect();
        assert_eq!(names, ["slow", "dir", "quick"]);
        assert_eq!(listed[0].sha256, Some(sha256(&slow)));
        assert_eq!(listed[1].sha256, None);
        assert_eq!(listed[2].sha256, Some(sha256(&quick)));
    }

    /// The cache holds at most its capacity, dropping the least used.
    #[test]
    fn capacity_is_bounded() {
        let cache = DigestCache::<FileVersion>::new(2);
        let digest = Hasher::new().finalize();
        let now = SystemTime::now();
        for mtime in 1..=3 {
            cache.insert(version(mtime), digest, now);
        }
        assert_eq!(cache.get(&version(1)), None);
        assert!(cache.get(&version(2)).is_some() && cache.get(&version(3)).is_some());
    }
}
