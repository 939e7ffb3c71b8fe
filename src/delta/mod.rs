//! Delta transfer's common ground: how a file version is described as
//! content-defined chunks, shared by the server (which describes its file)
//! and the client (which cuts its own copy the same way and fetches only
//! the chunks it lacks).
//!
//! A file is cut with FastCDC 2020 ([`cut`]) at parameters chosen from its
//! size ([`Params::for_size`]); every chunk gets a 128-bit BLAKE3 hash. The
//! chunks fall into groups where the content says too (a chunk whose hash
//! has its low [`GROUP_BITS`] bits zero ends one), so a manifest can be
//! sent in two levels: the group list first, the chunk lists only of the
//! groups the other side does not already have ([`plan`]).
//!
//! - [`cut`]: the incremental chunker fed blocks of a file in order.
//! - [`plan`]: checking a received manifest, indexing a local copy, and the
//!   steps that rebuild the server's file from both.

pub(crate) mod cut;
pub(crate) mod plan;

use std::fmt;

/// Files smaller than this are never sent as a delta: one chunk's worth of
/// manifest and round trips costs as much as the file.
pub(crate) const DELTA_MIN_FILE_BYTES: u64 = 1024 * 1024;

/// The smallest and largest average chunk [`Params::for_size`] picks.
pub(crate) const AVG_CHUNK_MIN: u32 = 8 * 1024;
/// See [`AVG_CHUNK_MIN`].
pub(crate) const AVG_CHUNK_MAX: u32 = 1024 * 1024;

/// A chunk whose hash has these low bits zero ends its group: 64 chunks per
/// group on average.
pub(crate) const GROUP_BITS: u32 = 6;
/// A group ends after this many chunks whatever their hashes say, so that
/// no group's chunk list grows without bound.
pub(crate) const GROUP_MAX_CHUNKS: u32 = 256;

/// Bytes of a chunk or group hash: BLAKE3 truncated to 128 bits, which keeps
/// a hostile local copy from aiming at a chunk (a second preimage), while
/// the whole-file sha256 decides whether the assembled file is right.
pub(crate) const HASH_BYTES: usize = 16;

/// FastCDC 2020's sizes, as a manifest records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Params {
    /// No chunk is shorter, but the last of a file.
    pub min: u32,
    /// The normalised average the cut aims at (a power of two).
    pub avg: u32,
    /// No chunk is longer.
    pub max: u32,
}

impl Params {
    /// The parameters for a file of `size` bytes, or `None` when it is too
    /// small to be worth a delta.
    ///
    /// rsync's reasoning, adapted: a block of about the square root of the
    /// size balances what the block list costs against what an edit costs.
    /// Here the chunk list only travels for the groups an edit touches, so
    /// the balance sits lower: half the square root, as a power of two,
    /// between [`AVG_CHUNK_MIN`] and [`AVG_CHUNK_MAX`] (1 GiB: 16 KiB).
    /// min = avg / 4 and max = 4 x avg, as REAPI's SplitBlob settled on.
    pub(crate) fn for_size(size: u64) -> Option<Params> {
        if size < DELTA_MIN_FILE_BYTES {
            return None;
        }
        let half_root = (size as f64).sqrt() / 2.0;
        let mut avg = AVG_CHUNK_MIN;
        while avg < AVG_CHUNK_MAX && f64::from(avg) * 2.0 <= half_root {
            avg *= 2;
        }
        Some(Params::with_avg(avg))
    }

    /// min = avg / 4, max = 4 x avg.
    pub(crate) fn with_avg(avg: u32) -> Params {
        Params {
            min: avg / 4,
            avg,
            max: avg * 4,
        }
    }

    /// Checks parameters that came over the wire: within what FastCDC
    /// accepts, ordered, and the average a power of two.
    pub(crate) fn checked(min: u32, avg: u32, max: u32) -> Option<Params> {
        use fastcdc::v2020 as cdc;
        let ok = (cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&min)
            && (cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&avg)
            && (cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && avg.is_power_of_two();
        ok.then_some(Params { min, avg, max })
    }
}

/// A chunk's or a group's hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChunkHash(pub [u8; HASH_BYTES]);

impl ChunkHash {
    /// BLAKE3 of `data`, truncated.
    pub(crate) fn of(data: &[u8]) -> ChunkHash {
        ChunkHash::truncate(blake3::hash(data))
    }

    /// The hash from its raw bytes; `None` for any other length.
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<ChunkHash> {
        bytes.try_into().ok().map(ChunkHash)
    }

    fn truncate(hash: blake3::Hash) -> ChunkHash {
        let mut out = [0u8; HASH_BYTES];
        out.copy_from_slice(&hash.as_bytes()[..HASH_BYTES]);
        ChunkHash(out)
    }

    /// True when a chunk with this hash ends its group.
    fn ends_group(&self) -> bool {
        self.0[0] & ((1 << GROUP_BITS) - 1) == 0
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

/// One chunk of a file: its length and hash (its offset is the sum of the
/// lengths before it, never taken from the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Length in bytes.
    pub len: u32,
    /// BLAKE3 of its bytes, truncated.
    pub hash: ChunkHash,
}

/// A run of consecutive chunks, named by the hash of their chunk list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    /// Bytes the group's chunks cover.
    pub len: u64,
    /// How many chunks it holds.
    pub chunks: u32,
    /// BLAKE3 over its chunks' records, truncated ([`group_hash`]).
    pub hash: ChunkHash,
}

/// The hash of a group's chunk list: each chunk as its length (4 bytes,
/// little-endian) and hash.
pub(crate) fn group_hash(chunks: &[Chunk]) -> ChunkHash {
    let mut hasher = blake3::Hasher::new();
    for chunk in chunks {
        hasher.update(&chunk.len.to_le_bytes());
        hasher.update(&chunk.hash.0);
    }
    ChunkHash::truncate(hasher.finalize())
}

/// Groups `chunks`, in order: each group ends at a chunk whose hash ends a
/// group, after [`GROUP_MAX_CHUNKS`] chunks, or at the end.
pub(crate) fn groups(chunks: &[Chunk]) -> Vec<Group> {
    let mut out = Vec::new();
    let mut start = 0;
    for (index, chunk) in chunks.iter().enumerate() {
        let count = index + 1 - start;
        if chunk.hash.ends_group()
            || count == GROUP_MAX_CHUNKS as usize
            || index + 1 == chunks.len()
        {
            let members = &chunks[start..=index];
            out.push(Group {
                len: members.iter().map(|c| u64::from(c.len)).sum(),
                chunks: members.len() as u32,
                hash: group_hash(members),
            });
            start = index + 1;
        }
    }
    out
}

/// One file version described as chunks: what the server keeps per version
/// and what the client computes for its local copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunked {
    /// The parameters it was cut with.
    pub params: Params,
    /// The chunks in file order.
    pub chunks: Vec<Chunk>,
    /// The groups over them, in order.
    pub groups: Vec<Group>,
}

impl Chunked {
    /// Groups `chunks` cut with `params`.
    pub(crate) fn new(params: Params, chunks: Vec<Chunk>) -> Chunked {
        let groups = groups(&chunks);
        Chunked {
            params,
            chunks,
            groups,
        }
    }

    /// Bytes covered.
    #[cfg(test)]
    pub(crate) fn size(&self) -> u64 {
        self.groups.iter().map(|group| group.len).sum()
    }

    /// The chunks of each group, in order.
    pub(crate) fn group_chunks(&self) -> impl Iterator<Item = &[Chunk]> {
        let mut start = 0;
        self.groups.iter().map(move |group| {
            let members = &self.chunks[start..start + group.chunks as usize];
            start += group.chunks as usize;
            members
        })
    }

    /// What keeping this in memory costs, roughly (for a cache's budget).
    pub(crate) fn footprint(&self) -> usize {
        self.chunks.len() * std::mem::size_of::<Chunk>()
            + self.groups.len() * std::mem::size_of::<Group>()
            + std::mem::size_of::<Chunked>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_grow_with_the_square_root_of_the_size() {
        assert_eq!(Params::for_size(DELTA_MIN_FILE_BYTES - 1), None);
        assert_eq!(
            Params::for_size(DELTA_MIN_FILE_BYTES).expect("1 MiB").avg,
            8 * 1024
        );
        let gib = Params::for_size(1 << 30).expect("1 GiB");
        assert_eq!(gib, Params::with_avg(16 * 1024));
        assert_eq!(gib.min, 4 * 1024);
        assert_eq!(gib.max, 64 * 1024);
        assert_eq!(Params::for_size(u64::MAX).expect("huge").avg, AVG_CHUNK_MAX);
        for size in [1u64 << 20, 1 << 26, 1 << 33, 1 << 40] {
            let params = Params::for_size(size).expect("big enough");
            assert_eq!(
                Params::checked(params.min, params.avg, params.max),
                Some(params)
            );
        }
    }

    #[test]
    fn wire_parameters_outside_fastcdc_limits_are_refused() {
        assert!(Params::checked(16, 64, 256).is_none());
        assert!(Params::checked(4096, 16384, 1 << 30).is_none());
        assert!(Params::checked(8192, 4096, 65536).is_none());
        assert!(Params::checked(4096, 12288, 65536).is_none());
        assert!(Params::checked(4096, 16384, 65536).is_some());
    }

    fn chunk(len: u32, first: u8) -> Chunk {
        let mut hash = [7u8; HASH_BYTES];
        hash[0] = first;
        Chunk {
            len,
            hash: ChunkHash(hash),
        }
    }

    #[test]
    fn groups_end_where_the_chunk_hash_says_and_at_the_end() {
        // 0x40 has its low six bits zero: ends a group; 0x41 does not.
        let chunks = [
            chunk(10, 0x41),
            chunk(20, 0x40),
            chunk(30, 0x41),
            chunk(5, 0x41),
        ];
        let groups = groups(&chunks);
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].len, groups[0].chunks), (30, 2));
        assert_eq!((groups[1].len, groups[1].chunks), (35, 2));
        assert_eq!(groups[0].hash, group_hash(&chunks[..2]));
        assert_ne!(groups[0].hash, groups[1].hash);
        let chunked = Chunked::new(Params::with_avg(8192), chunks.to_vec());
        let lists: Vec<&[Chunk]> = chunked.group_chunks().collect();
        assert_eq!(lists, vec![&chunks[..2], &chunks[2..]]);
        assert_eq!(chunked.size(), 65);
    }

    #[test]
    fn a_group_never_holds_more_than_its_limit() {
        let chunks = vec![chunk(1, 0x41); GROUP_MAX_CHUNKS as usize * 2 + 1];
        let groups = groups(&chunks);
        let counts: Vec<u32> = groups.iter().map(|g| g.chunks).collect();
        assert_eq!(counts, vec![GROUP_MAX_CHUNKS, GROUP_MAX_CHUNKS, 1]);
    }
}
