//! Delta transfer on the server: file versions described as chunks (kept
//! beside their digests, so a file described once is not read again to
//! describe it), and byte ranges read from one pinned version.
//!
//! Describing a file is one pass over it: the reading thread hands each
//! block to a cutting thread (FastCDC and BLAKE3, [`crate::delta::cut`])
//! and, unless the digest is cached already, to a sha256 thread, so the
//! pass runs at the speed of the slower of the two rather than their sum.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::checksum::{Digest, Hasher};
use crate::delta::cut::Cutter;
use crate::delta::{Chunked, Params};
use crate::entry::{EntryInfo, FileVersion};
use crate::error::{Error, Result};
use crate::read_stream::{ReadEvent, ReadStart};
use crate::server::digests::{DigestCache, settled};
use crate::server::read::{CHUNK_BYTES, READ_QUEUE_CHUNKS};
use crate::store::{Reader, RequestPath, Store, Version};

/// Memory the described versions may take, in all (about 1 MiB per GiB of
/// file described).
pub(crate) const MANIFEST_CACHE_BYTES: usize = 128 * 1024 * 1024;
/// Bytes read per block when describing a file.
const SCAN_BLOCK_BYTES: usize = 4 * 1024 * 1024;
/// Blocks in flight between the reading thread and the others.
const SCAN_BLOCKS: usize = 4;
/// Most groups one chunk-list request may name, and most ranges one
/// `ReadRanges` request may hold.
pub(crate) const MAX_ITEMS_PER_REQUEST: usize = 65_536;
/// Groups per `ManifestGroups` message (about 200 KiB).
pub(crate) const GROUPS_PER_MESSAGE: usize = 8192;

/// A version described: its digest and, for a file big enough for a delta,
/// its chunks.
#[derive(Debug)]
pub(crate) struct Described {
    /// The whole file's sha256.
    pub sha256: Digest,
    /// The chunks and groups; `None` below [`crate::delta::DELTA_MIN_FILE_BYTES`].
    pub chunked: Option<Chunked>,
}

/// Described versions, least recently used evicted past a byte budget.
#[derive(Debug)]
pub(crate) struct ManifestCache<V: Version> {
    inner: Mutex<Budgeted<V>>,
}

#[derive(Debug)]
struct Budgeted<V: Version> {
    entries: LruCache<V, Arc<Described>>,
    bytes: usize,
    budget: usize,
}

impl<V: Version> Default for ManifestCache<V> {
    fn default() -> ManifestCache<V> {
        ManifestCache::new(MANIFEST_CACHE_BYTES)
    }
}

fn footprint(described: &Described) -> usize {
    described.chunked.as_ref().map_or(0, Chunked::footprint) + std::mem::size_of::<Described>()
}

impl<V: Version> ManifestCache<V> {
    /// A cache holding at most about `budget` bytes.
    pub(crate) fn new(budget: usize) -> ManifestCache<V> {
        ManifestCache {
            inner: Mutex::new(Budgeted {
                entries: LruCache::unbounded(),
                bytes: 0,
                budget,
            }),
        }
    }

    /// The description of `version`, if kept.
    pub(crate) fn get(&self, version: &V) -> Option<Arc<Described>> {
        self.lock().entries.get(version).cloned()
    }

    /// Keeps `described` for `version`, evicting the least recently used
    /// beyond the budget (a description larger than the whole budget is
    /// not kept).
    pub(crate) fn insert(&self, version: V, described: Arc<Described>) {
        let size = footprint(&described);
        let mut inner = self.lock();
        if size > inner.budget {
            return;
        }
        if let Some(old) = inner.entries.put(version, described) {
            inner.bytes -= footprint(&old);
        }
        inner.bytes += size;
        while inner.bytes > inner.budget {
            match inner.entries.pop_lru() {
                Some((_, old)) => inner.bytes -= footprint(&old),
                None => break,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Budgeted<V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A file opened and described.
#[derive(Debug)]
pub(crate) struct Description {
    /// The file as `Stat` describes it.
    pub entry: EntryInfo,
    /// The version described.
    pub version: FileVersion,
    /// Its digest and chunks.
    pub described: Arc<Described>,
}

/// Opens the file at `path` and describes its current version: from the
/// cache, or in one pass over it (remembered unless the file is too fresh
/// to trust its version). Blocks.
pub(crate) fn describe<S: Store>(
    store: &S,
    digests: &DigestCache<S::Version>,
    manifests: &ManifestCache<S::Version>,
    path: &RequestPath,
) -> Result<Description> {
    let mut reader = store.open(path)?;
    digests.learn_stored(&reader);
    let version = reader.version();
    let entry = reader.entry().clone();
    let changed = || Error::Changed { path: path.shown() };
    let described = match manifests.get(&version) {
        Some(described) => described,
        None => match Params::for_size(entry.size) {
            None => {
                let sha256 = digests.digest_of(&mut reader)?.ok_or_else(changed)?;
                Arc::new(Described {
                    sha256,
                    chunked: None,
                })
            }
            Some(params) => {
                let started = SystemTime::now();
                let known = digests.get(&version);
                let (read, hasher, chunked) = scan(&mut reader, params, known.is_none())?;
                if read != entry.size || !reader.is_current()? {
                    return Err(changed());
                }
                let sha256 = match (known, hasher) {
                    (Some(digest), _) => digest,
                    (None, Some(hasher)) => hasher.finalize(),
                    (None, None) => return Err(changed()),
                };
                let described = Arc::new(Described {
                    sha256,
                    chunked: Some(chunked),
                });
                if settled(&version, started) {
                    digests.insert(version, sha256, started);
                    manifests.insert(version, Arc::clone(&described));
                }
                described
            }
        },
    };
    Ok(Description {
        entry,
        version: version.describe(),
        described,
    })
}

/// Reads `reader` from its first byte to its end (one byte past the size,
/// to notice growth), cutting every block and hashing it when `hash`.
/// Returns the bytes read, the hasher and the chunks.
fn scan<R: Reader>(
    reader: &mut R,
    params: Params,
    hash: bool,
) -> Result<(u64, Option<Hasher>, Chunked)> {
    let size = reader.entry().size;
    std::thread::scope(|scope| {
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Arc<Vec<u8>>>();
        let (cut_tx, cut_rx) = sync_channel::<Arc<Vec<u8>>>(SCAN_BLOCKS);
        let cutter = {
            let free = free_tx.clone();
            scope.spawn(move || {
                let mut cutter = Cutter::new(params);
                for block in cut_rx {
                    cutter.push(&block);
                    let _ = free.send(block);
                }
                cutter.finish()
            })
        };
        let (hash_tx, hasher) = if hash {
            let (tx, rx) = sync_channel::<Arc<Vec<u8>>>(SCAN_BLOCKS);
            let free = free_tx.clone();
            let hasher = scope.spawn(move || {
                let mut hasher = Hasher::new();
                for block in rx {
                    hasher.update(&block);
                    let _ = free.send(block);
                }
                hasher
            });
            (Some(tx), Some(hasher))
        } else {
            (None, None)
        };
        drop(free_tx);
        let read = feed_blocks(reader, size, &cut_tx, hash_tx.as_ref(), &free_rx);
        drop(cut_tx);
        drop(hash_tx);
        let joined = |_| {
            Error::io(
                "<describe thread>",
                std::io::Error::other("a thread failed"),
            )
        };
        let chunked = cutter.join().map_err(joined)?;
        let hasher = match hasher {
            Some(hasher) => Some(hasher.join().map_err(joined)?),
            None => None,
        };
        Ok((read?, hasher, chunked))
    })
}

/// The reading side of [`scan`]: blocks of the file to every consumer,
/// each buffer used again once all of them are done with it.
fn feed_blocks<R: Reader>(
    reader: &mut R,
    size: u64,
    cut: &SyncSender<Arc<Vec<u8>>>,
    hash: Option<&SyncSender<Arc<Vec<u8>>>>,
    free: &Receiver<Arc<Vec<u8>>>,
) -> Result<u64> {
    let gone = || {
        Error::io(
            "<describe thread>",
            std::io::Error::other("a thread stopped"),
        )
    };
    let mut made = 0;
    let mut position: u64 = 0;
    while position <= size {
        let mut block = if made < SCAN_BLOCKS + 1 {
            made += 1;
            Arc::new(Vec::with_capacity(SCAN_BLOCK_BYTES))
        } else {
            // Each block comes back once per consumer; the last to return
            // it leaves it unshared.
            loop {
                let mut back = free.recv().map_err(|_| gone())?;
                if Arc::get_mut(&mut back).is_some() {
                    break back;
                }
            }
        };
        let buf = Arc::get_mut(&mut block).ok_or_else(gone)?;
        buf.clear();
        let want = usize::try_from(size + 1 - position)
            .unwrap_or(SCAN_BLOCK_BYTES)
            .min(SCAN_BLOCK_BYTES);
        let read = reader.read_into(position, want, buf)?;
        if read == 0 {
            break;
        }
        position += read as u64;
        if let Some(hash) = hash {
            hash.send(Arc::clone(&block)).map_err(|_| gone())?;
        }
        cut.send(block).map_err(|_| gone())?;
    }
    Ok(position)
}

/// Checks a `ReadRanges` request's ranges against a file of `size` bytes:
/// none empty, none past the end. Returns the bytes they hold.
pub(crate) fn check_ranges(path: &RequestPath, ranges: &[(u64, u64)], size: u64) -> Result<u64> {
    let invalid = |reason: String| Error::InvalidRequest {
        path: path.shown(),
        reason,
    };
    if ranges.len() > MAX_ITEMS_PER_REQUEST {
        return Err(invalid(format!(
            "{} ranges; at most {MAX_ITEMS_PER_REQUEST} per request",
            ranges.len()
        )));
    }
    let mut total: u64 = 0;
    for &(offset, len) in ranges {
        if len == 0 {
            return Err(invalid("an empty range".into()));
        }
        let end = offset.saturating_add(len);
        if end > size {
            return Err(Error::OffsetPastEnd {
                path: path.shown(),
                offset: end,
                size,
            });
        }
        total += len;
    }
    Ok(total)
}

/// Opens `path` for a `ReadRanges` call pinned to `pinned`, and checks the
/// ranges. Blocks.
pub(crate) fn open_ranges<S: Store>(
    store: &S,
    path: RequestPath,
    pinned: FileVersion,
    ranges: Vec<(u64, u64)>,
) -> Result<RangesRead<S::Reader>> {
    let first = ranges.first().map_or(0, |range| range.0);
    let reader = store.open_at(&path, first)?;
    if reader.version().describe() != pinned {
        return Err(Error::Changed { path: path.shown() });
    }
    let total = check_ranges(&path, &ranges, reader.entry().size)?;
    Ok(RangesRead {
        reader,
        path,
        ranges,
        total,
    })
}

/// A `ReadRanges` call, opened and checked.
#[derive(Debug)]
pub(crate) struct RangesRead<R: Reader> {
    reader: R,
    path: RequestPath,
    ranges: Vec<(u64, u64)>,
    total: u64,
}

impl<R: Reader> RangesRead<R> {
    /// Starts the reading thread: a header, the ranges' bytes in messages of
    /// at most [`CHUNK_BYTES`], a trailer with their sha256, or a last
    /// error. `permit` is held until the thread stops.
    pub(crate) fn stream(
        mut self,
        permit: OwnedSemaphorePermit,
    ) -> mpsc::Receiver<Result<ReadEvent>> {
        let (tx, rx) = mpsc::channel(READ_QUEUE_CHUNKS);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Err(err) = self.pump(&mut |event| tx.blocking_send(event).is_ok()) {
                let _ = tx.blocking_send(Err(err));
            }
        });
        rx
    }

    fn pump(&mut self, send: &mut dyn FnMut(Result<ReadEvent>) -> bool) -> Result<()> {
        let start = ReadStart {
            entry: self.reader.entry().clone(),
            version: self.reader.version().describe(),
            offset: 0,
            length: self.total,
            prefix_sha256: None,
        };
        if !send(Ok(ReadEvent::Start(start))) {
            return Ok(());
        }
        let changed = || Error::Changed {
            path: self.path.shown(),
        };
        let mut hasher = Hasher::new();
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        for &(offset, len) in &self.ranges {
            let mut position = offset;
            let end = offset + len;
            while position < end {
                let room = CHUNK_BYTES - buf.len();
                let want = room.min(usize::try_from(end - position).unwrap_or(room));
                let read = self.reader.read_into(position, want, &mut buf)?;
                if read < want {
                    return Err(changed());
                }
                position += want as u64;
                if buf.len() == CHUNK_BYTES {
                    hasher.update(&buf);
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK_BYTES));
                    if !send(Ok(ReadEvent::Data(Bytes::from(full)))) {
                        return Ok(());
                    }
                }
            }
        }
        if !buf.is_empty() {
            hasher.update(&buf);
            if !send(Ok(ReadEvent::Data(Bytes::from(buf)))) {
                return Ok(());
            }
        }
        if !self.reader.is_current()? {
            return Err(changed());
        }
        send(Ok(ReadEvent::End(hasher.finalize())));
        Ok(())
    }
}

/// Chunk-list requests name at most [`MAX_ITEMS_PER_REQUEST`] groups, each
/// within the list.
pub(crate) fn check_groups(path: &RequestPath, groups: &[u32], count: usize) -> Result<()> {
    let invalid = |reason: String| Error::InvalidRequest {
        path: path.shown(),
        reason,
    };
    if groups.len() > MAX_ITEMS_PER_REQUEST {
        return Err(invalid(format!(
            "{} groups; at most {MAX_ITEMS_PER_REQUEST} per request",
            groups.len()
        )));
    }
    if let Some(&bad) = groups.iter().find(|&&group| group as usize >= count) {
        return Err(invalid(format!(
            "groups: {bad} is past the list of {count} groups"
        )));
    }
    Ok(())
}

/// Entries and bytes the cache holds (for tests).
#[cfg(test)]
pub(crate) fn budget_of<V: Version>(cache: &ManifestCache<V>) -> (usize, usize) {
    let inner = cache.lock();
    (inner.entries.len(), inner.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::cut::cut_all;
    use crate::delta::{Chunk, ChunkHash};

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    struct V(u32);

    impl Version for V {
        fn describe(&self) -> FileVersion {
            FileVersion {
                device: 0,
                inode: u64::from(self.0),
                size: 0,
                mtime_ns: 0,
            }
        }
        fn racy_mtime_ns(&self) -> Option<i64> {
            None
        }
    }

    fn described(chunks: usize) -> Arc<Described> {
        let chunk = Chunk {
            len: 1,
            hash: ChunkHash([0; 16]),
        };
        Arc::new(Described {
            sha256: crate::checksum::hash_prefix(&b""[..], None)
                .expect("in memory")
                .finalize(),
            chunked: Some(Chunked::new(Params::with_avg(8192), vec![chunk; chunks])),
        })
    }

    #[test]
    fn the_manifest_cache_keeps_to_its_budget() {
        let one = footprint(&described(1000));
        let cache = ManifestCache::new(one * 2 + one / 2);
        cache.insert(V(1), described(1000));
        cache.insert(V(2), described(1000));
        assert!(cache.get(&V(1)).is_some());
        cache.insert(V(3), described(1000));
        // V(2) was the least recently used.
        assert!(cache.get(&V(2)).is_none());
        assert!(cache.get(&V(1)).is_some() && cache.get(&V(3)).is_some());
        let (entries, bytes) = budget_of(&cache);
        assert_eq!((entries, bytes), (2, 2 * one));
        // Too big for the whole budget: not kept, nothing evicted.
        cache.insert(V(4), described(10_000));
        assert!(cache.get(&V(4)).is_none());
        assert_eq!(budget_of(&cache).0, 2);
    }

    #[test]
    fn ranges_past_the_end_or_empty_are_refused() {
        let path = RequestPath::parse("f").expect("path");
        assert_eq!(
            check_ranges(&path, &[(0, 10), (20, 5)], 25).expect("fine"),
            15
        );
        assert!(matches!(
            check_ranges(&path, &[(20, 6)], 25),
            Err(Error::OffsetPastEnd { .. })
        ));
        assert!(check_ranges(&path, &[(u64::MAX, 2)], 25).is_err());
        assert!(check_ranges(&path, &[(3, 0)], 25).is_err());
        assert!(check_groups(&path, &[0, 4], 5).is_ok());
        assert!(check_groups(&path, &[5], 5).is_err());
    }

    #[test]
    fn the_scan_cuts_as_a_whole_pass_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = fastrand::Rng::with_seed(4);
        let data: Vec<u8> = (0..(9 << 20) + 123).map(|_| rng.u8(..)).collect();
        std::fs::write(dir.path().join("f"), &data).expect("write");
        let store = crate::store::local::LocalStore::open(dir.path()).expect("store");
        let digests = DigestCache::default();
        let manifests = ManifestCache::default();
        let path = RequestPath::parse("f").expect("path");
        let description = describe(&store, &digests, &manifests, &path).expect("describe");
        let params = Params::for_size(data.len() as u64).expect("big enough");
        assert_eq!(
            description.described.chunked.as_ref().expect("chunks"),
            &cut_all(&data, params)
        );
        let expected = crate::checksum::hash_prefix(&data[..], None)
            .expect("in memory")
            .finalize();
        assert_eq!(description.described.sha256, expected);
    }
}
