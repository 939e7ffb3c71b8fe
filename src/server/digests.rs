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

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;

use crate::checksum::Digest;
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
        let started_ns = hashing_started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
            });
        let settled_ns = started_ns.saturating_sub(RACY_WINDOW.as_nanos() as i64);
        if version
            .racy_mtime_ns()
            .is_none_or(|mtime_ns| mtime_ns < settled_ns)
        {
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
