//! Cutting a file into chunks as its bytes go past, block by block.
//!
//! FastCDC decides a cut from the bytes after the previous one, at most
//! `max` of them, and near the end of the file from how many are left. So a
//! cut is only made once `max` bytes are in hand (or the file has ended):
//! then it is the cut a pass over the whole file would make, whatever the
//! block sizes were. The server's pass (blocks of its reads) and the
//! client's (blocks of another size) agree on every chunk of equal content.
//!
//! Bytes are cut where they arrive; only the tail of a block that a cut
//! could still extend past is copied aside, to be joined with the next one.
//!
//! A file on disk is cut on two threads ([`cut_file`]): one from the start,
//! one from the middle. Where a cut falls depends only on the bytes from the
//! previous cut on, so once the first thread makes a cut the second one
//! also made, the rest of the second thread's chunks are the ones a single
//! pass would make: the two lists are joined there. Two cut sequences meet
//! within a few chunks on any content; should they never meet, the first
//! thread simply cuts on to the end.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use fastcdc::v2020 as cdc;

use super::{Chunk, ChunkHash, Chunked, Params};
use crate::checksum::Hasher;

/// Bytes read per call when cutting a local file.
pub(crate) const CUT_BLOCK_BYTES: usize = 4 * 1024 * 1024;

/// Files shorter than this are cut on one thread: a second one would not
/// pay for starting it.
const PARALLEL_CUT_MIN_BYTES: u64 = 16 * 1024 * 1024;

/// Blocks queued for the hasher thread of [`cut_and_hash`].
const HASH_QUEUE_BLOCKS: usize = 4;

/// FastCDC's masks for one set of parameters (normalisation level 1, the
/// crate's default and what REAPI uses).
#[derive(Clone, Copy, Debug)]
struct Masks {
    small: u64,
    large: u64,
}

impl Masks {
    fn of(params: Params) -> Masks {
        let bits = cdc::logarithm2(params.avg) as usize;
        Masks {
            small: cdc::MASKS[bits + 1],
            large: cdc::MASKS[bits - 1],
        }
    }
}

/// An incremental chunker: [`push`](Cutter::push) the file's bytes in
/// order, [`finish`](Cutter::finish) at its end.
#[derive(Debug)]
pub(crate) struct Cutter {
    params: Params,
    masks: Masks,
    /// Bytes after the last cut that a cut could not yet be made in.
    carry: Vec<u8>,
    chunks: Vec<Chunk>,
}

impl Cutter {
    /// A cutter that has seen nothing.
    pub(crate) fn new(params: Params) -> Cutter {
        Cutter {
            params,
            masks: Masks::of(params),
            carry: Vec::new(),
            chunks: Vec::new(),
        }
    }

    /// The chunk length FastCDC picks at the start of `data`, all of whose
    /// bytes are what follows the previous cut (up to the end of the file
    /// when `data` is shorter than `max`).
    fn next_cut(&self, data: &[u8]) -> usize {
        let Params { min, avg, max } = self.params;
        let (_, len) = cdc::cut(
            data,
            min as usize,
            avg as usize,
            max as usize,
            self.masks.small,
            self.masks.large,
            self.masks.small << 1,
            self.masks.large << 1,
        );
        len
    }

    /// Cuts whole chunks off the front of `data` while `max` bytes remain
    /// (all of them when `at_end`); returns how many bytes were consumed.
    fn cut_run(&mut self, data: &[u8], at_end: bool) -> usize {
        let max = self.params.max as usize;
        let mut start = 0;
        while start < data.len() && (at_end || data.len() - start >= max) {
            let len = self.next_cut(&data[start..]).max(1);
            let end = start + len;
            push_chunk(&mut self.chunks, &data[start..end]);
            start = end;
        }
        start
    }

    /// Takes the next bytes of the file.
    pub(crate) fn push(&mut self, mut data: &[u8]) {
        let max = self.params.max as usize;
        if !self.carry.is_empty() {
            // Join the carried tail with enough of `data` that every cut
            // starting inside the tail is decided, then go on in `data`.
            let take = data.len().min(max);
            self.carry.extend_from_slice(&data[..take]);
            let carried = self.carry.len() - take;
            let mut start = 0;
            while start < carried && self.carry.len() - start >= max {
                let len = self.next_cut(&self.carry[start..]).max(1);
                push_chunk(&mut self.chunks, &self.carry[start..start + len]);
                start += len;
            }
            if start < carried {
                // Fewer than `max` bytes in hand after the last cut: keep
                // carrying them (all of `data` is in the carry by now).
                self.carry.drain(..start);
                return;
            }
            // The last cut ended `start - carried` bytes into `data`.
            self.carry.clear();
            data = &data[start - carried..];
        }
        let used = self.cut_run(data, false);
        self.carry.extend_from_slice(&data[used..]);
    }

    /// Ends the file: cuts what is left and gives back the chunks.
    pub(crate) fn finish(mut self) -> Chunked {
        let carry = std::mem::take(&mut self.carry);
        self.cut_run(&carry, true);
        Chunked::new(self.params, self.chunks)
    }
}

fn push_chunk(chunks: &mut Vec<Chunk>, data: &[u8]) {
    chunks.push(Chunk {
        len: data.len() as u32,
        hash: ChunkHash::of(data),
    });
}

/// Cuts everything `reader` yields.
#[cfg(test)]
pub(crate) fn cut_reader(mut reader: impl Read, params: Params) -> io::Result<Chunked> {
    let mut cutter = Cutter::new(params);
    let mut buf = vec![0u8; CUT_BLOCK_BYTES];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(cutter.finish()),
            Ok(n) => cutter.push(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// Reads `reader` to its end once: cut with `params` on this thread,
/// sha256 on another (the two overlap on two cores), for a copy that may
/// be the server's file already (its digest says) or an older version of
/// it (its chunks say what it shares).
pub(crate) fn cut_and_hash(mut reader: impl Read, params: Params) -> io::Result<(Chunked, Hasher)> {
    let (to_hasher, blocks) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(HASH_QUEUE_BLOCKS);
    let hasher = std::thread::spawn(move || {
        let mut hasher = Hasher::new();
        for block in blocks {
            hasher.update(&block);
        }
        hasher
    });
    let mut cutter = Cutter::new(params);
    let cut = loop {
        let mut block = Vec::with_capacity(CUT_BLOCK_BYTES);
        match (&mut reader)
            .take(CUT_BLOCK_BYTES as u64)
            .read_to_end(&mut block)
        {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(err) => break Err(err),
        }
        cutter.push(&block);
        if to_hasher.send(Arc::new(block)).is_err() {
            break Err(io::Error::other("the hasher thread stopped"));
        }
    };
    drop(to_hasher);
    let hasher = hasher
        .join()
        .map_err(|_| io::Error::other("the hasher thread failed"))?;
    cut.map(|()| (cutter.finish(), hasher))
}

/// Cuts the first `len` bytes of `file` (read by offset, so its cursor does
/// not matter) as one pass over them would, on two threads.
pub(crate) fn cut_file(file: &File, len: u64, params: Params) -> io::Result<Chunked> {
    if len < PARALLEL_CUT_MIN_BYTES {
        return cut_range(file, 0, len, params).map(Cutter::finish);
    }
    cut_split(file, len, params, len / 2)
}

/// [`cut_file`] with the second thread starting at `middle`.
fn cut_split(file: &File, len: u64, params: Params, middle: u64) -> io::Result<Chunked> {
    std::thread::scope(|scope| {
        let second = scope.spawn(|| cut_range(file, middle, len, params).map(Cutter::finish));
        let mut first = cut_range(file, 0, middle, params)?;
        let second = second
            .join()
            .map_err(|_| io::Error::other("the second cutting thread failed"))??;
        // Where each of the second half's chunks starts.
        let mut starts = HashMap::with_capacity(second.chunks.len());
        let mut at = middle;
        for (index, chunk) in second.chunks.iter().enumerate() {
            starts.insert(at, index);
            at += u64::from(chunk.len);
        }
        let mut end: u64 = first.chunks.iter().map(|c| u64::from(c.len)).sum();
        let mut checked = first.chunks.len();
        let mut offset = middle;
        let mut buf = vec![0u8; CUT_BLOCK_BYTES];
        loop {
            for chunk in &first.chunks[checked..] {
                end += u64::from(chunk.len);
                checked += 1;
                if let Some(&index) = starts.get(&end) {
                    let mut chunks = std::mem::take(&mut first.chunks);
                    chunks.truncate(checked);
                    chunks.extend_from_slice(&second.chunks[index..]);
                    return Ok(Chunked::new(params, chunks));
                }
            }
            if offset == len {
                return Ok(first.finish());
            }
            let n = (len - offset).min(CUT_BLOCK_BYTES as u64) as usize;
            file.read_exact_at(&mut buf[..n], offset)?;
            first.push(&buf[..n]);
            offset += n as u64;
        }
    })
}

/// A cutter that has been fed bytes `from..to` of `file`, as if the file
/// started at `from`.
fn cut_range(file: &File, from: u64, to: u64, params: Params) -> io::Result<Cutter> {
    let mut cutter = Cutter::new(params);
    let mut buf = vec![0u8; CUT_BLOCK_BYTES];
    let mut offset = from;
    while offset < to {
        let n = (to - offset).min(CUT_BLOCK_BYTES as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        cutter.push(&buf[..n]);
        offset += n as u64;
    }
    Ok(cutter)
}

/// Cuts `data` in one pass (the reference the incremental cut must equal).
#[cfg(test)]
pub(crate) fn cut_all(data: &[u8], params: Params) -> Chunked {
    let chunks = cdc::FastCDC::new(data, params.min, params.avg, params.max)
        .map(|chunk| Chunk {
            len: chunk.length as u32,
            hash: ChunkHash::of(&data[chunk.offset..chunk.offset + chunk.length]),
        })
        .collect();
    Chunked::new(params, chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    fn cut_in_blocks(data: &[u8], params: Params, blocks: &[usize]) -> Chunked {
        let mut cutter = Cutter::new(params);
        let mut rest = data;
        for &block in blocks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let take = block.clamp(1, rest.len());
            cutter.push(&rest[..take]);
            rest = &rest[take..];
        }
        cutter.finish()
    }

    #[test]
    fn chunks_stay_within_the_parameters_and_cover_the_file() {
        let params = Params::with_avg(8192);
        let data = noise(3 * 1024 * 1024 + 17, 1);
        let chunked = cut_reader(&data[..], params).expect("in memory");
        assert_eq!(chunked.size(), data.len() as u64);
        let (last, rest) = chunked.chunks.split_last().expect("chunks");
        assert!(last.len >= 1 && last.len <= params.max);
        for chunk in rest {
            assert!((params.min..=params.max).contains(&chunk.len), "{chunk:?}");
        }
        let mean = data.len() / chunked.chunks.len();
        assert!((8192..=16384).contains(&mean), "mean chunk {mean}");
        assert_eq!(chunked, cut_all(&data, params));
    }

    #[test]
    fn an_edit_changes_only_the_chunks_around_it() {
        let params = Params::with_avg(8192);
        let old = noise(4 * 1024 * 1024, 2);
        let mut new = old.clone();
        // Insert 1,000 bytes in the middle.
        new.splice(2_000_000..2_000_000, noise(1000, 3));
        let (a, b) = (cut_all(&old, params), cut_all(&new, params));
        let known: std::collections::HashSet<_> = a.chunks.iter().map(|c| c.hash).collect();
        let fresh: u64 = b
            .chunks
            .iter()
            .filter(|c| !known.contains(&c.hash))
            .map(|c| u64::from(c.len))
            .sum();
        assert!(fresh > 1000 && fresh < 4 * u64::from(params.max), "{fresh}");
        let known_groups: std::collections::HashSet<_> = a.groups.iter().map(|g| g.hash).collect();
        let fresh_groups = b
            .groups
            .iter()
            .filter(|g| !known_groups.contains(&g.hash))
            .count();
        assert!(
            (1..=2).contains(&fresh_groups),
            "{fresh_groups} groups differ"
        );
    }

    #[test]
    fn empty_and_tiny_inputs() {
        let params = Params::with_avg(8192);
        assert!(
            cut_reader(&[][..], params)
                .expect("empty")
                .chunks
                .is_empty()
        );
        let one = cut_reader(&[9u8][..], params).expect("one byte");
        assert_eq!(one.chunks.len(), 1);
        assert_eq!(one.groups.len(), 1);
    }

    fn in_file(data: &[u8]) -> File {
        use std::io::Write;
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(data).expect("write");
        file
    }

    #[test]
    fn two_threads_cut_as_one_pass_does() {
        let params = Params::with_avg(8192);
        for (len, seed) in [(PARALLEL_CUT_MIN_BYTES as usize + 12_345, 4), (40 << 20, 5)] {
            let data = noise(len, seed);
            let file = in_file(&data);
            let cut = cut_file(&file, len as u64, params).expect("cut");
            assert_eq!(cut, cut_all(&data, params));
        }
    }

    #[test]
    fn two_threads_whose_cuts_never_meet_still_cut_as_one_pass_does() {
        // One repeated byte cuts at every `max`: a run that starts in the
        // middle meets the first thread's cuts only if the middle falls on
        // one, which this length avoids; the first thread cuts it all.
        let params = Params::with_avg(4096);
        let len = PARALLEL_CUT_MIN_BYTES as usize + 7;
        let data = vec![0x5Au8; len];
        let cut = cut_file(&in_file(&data), len as u64, params).expect("cut");
        assert_eq!(cut, cut_all(&data, params));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn block_sizes_never_change_the_cut(
            len in 0usize..400_000,
            seed in any::<u64>(),
            blocks in proptest::collection::vec(1usize..70_000, 1..6),
            repeat in any::<bool>(),
        ) {
            let params = Params::with_avg(4096);
            // Long runs of one byte make FastCDC cut at max; noise cuts by
            // content: try both.
            let data = if repeat { vec![0xA5u8; len] } else { noise(len, seed) };
            prop_assert_eq!(cut_in_blocks(&data, params, &blocks), cut_all(&data, params));
        }

        #[test]
        fn a_second_thread_from_anywhere_never_changes_the_cut(
            len in 0usize..300_000,
            seed in any::<u64>(),
            middle in any::<prop::sample::Index>(),
            repeat in any::<bool>(),
        ) {
            let params = Params::with_avg(4096);
            let data = if repeat { vec![0xA5u8; len] } else { noise(len, seed) };
            let middle = middle.index(len + 1) as u64;
            let cut = cut_split(&in_file(&data), len as u64, params, middle).expect("cut");
            prop_assert_eq!(cut, cut_all(&data, params));
        }
    }
}
