//! From a received manifest and a local copy to the steps that rebuild the
//! server's file: which byte ranges to copy from the local copy, which to
//! fetch.
//!
//! Everything from the wire is checked before it is used ([`Outline::new`],
//! [`Outline::check_list`]): lengths within the parameters and summing to
//! the file's size, group lists matching their group hashes. Offsets are
//! sums of checked lengths, never read from the wire, so no step can reach
//! outside either file or overlap another. A manifest that lies about
//! content (hashes of other bytes) can only make the assembled file wrong,
//! which its whole-file sha256 then refuses.

use std::collections::HashMap;

use super::{Chunk, ChunkHash, Chunked, GROUP_MAX_CHUNKS, Group, Params, group_hash};

/// Why a manifest was refused.
pub(crate) type Invalid = String;

/// The first level of a server's manifest, checked: the file's size, the
/// parameters, its groups in order with their offsets.
#[derive(Clone, Debug)]
pub(crate) struct Outline {
    /// The parameters the server cut with.
    pub params: Params,
    /// The groups, in file order.
    pub groups: Vec<Group>,
    /// Where each group starts in the server's file.
    starts: Vec<u64>,
}

impl Outline {
    /// Checks a group list for a file of `size` bytes cut with `params`.
    pub(crate) fn new(params: Params, size: u64, groups: Vec<Group>) -> Result<Outline, Invalid> {
        let mut starts = Vec::with_capacity(groups.len());
        let mut offset: u64 = 0;
        let last = groups.len().checked_sub(1);
        for (index, group) in groups.iter().enumerate() {
            let count = u64::from(group.chunks);
            if group.chunks == 0 || group.chunks > GROUP_MAX_CHUNKS {
                return Err(format!("group {index} holds {count} chunks"));
            }
            // Every chunk but the file's last is at least `min` long; none
            // is longer than `max`.
            let shortest = if Some(index) == last {
                (count - 1) * u64::from(params.min) + 1
            } else {
                count * u64::from(params.min)
            };
            if group.len < shortest || group.len > count * u64::from(params.max) {
                return Err(format!(
                    "group {index}: {} bytes cannot be {count} chunks",
                    group.len
                ));
            }
            starts.push(offset);
            offset = offset
                .checked_add(group.len)
                .ok_or_else(|| "the groups overflow".to_string())?;
        }
        if offset != size {
            return Err(format!(
                "the groups cover {offset} bytes of a {size}-byte file"
            ));
        }
        Ok(Outline {
            params,
            groups,
            starts,
        })
    }

    /// Where group `index` starts in the server's file.
    pub(crate) fn start(&self, index: usize) -> u64 {
        self.starts[index]
    }

    /// Checks the chunk list received for group `index`: as many chunks as
    /// the group said, each within the parameters, summing to its length,
    /// grouped as the rule groups them, and hashing to its hash.
    pub(crate) fn check_list(&self, index: usize, chunks: &[Chunk]) -> Result<(), Invalid> {
        let group = self
            .groups
            .get(index)
            .ok_or_else(|| format!("no group {index}"))?;
        if chunks.len() != group.chunks as usize {
            return Err(format!(
                "group {index}: {} chunks listed, {} announced",
                chunks.len(),
                group.chunks
            ));
        }
        let last_group = index + 1 == self.groups.len();
        let mut total: u64 = 0;
        for (at, chunk) in chunks.iter().enumerate() {
            let last = at + 1 == chunks.len();
            let shortest = if last && last_group {
                1
            } else {
                self.params.min
            };
            if chunk.len < shortest || chunk.len > self.params.max {
                return Err(format!("group {index}: a chunk of {} bytes", chunk.len));
            }
            let ends = chunk.hash.ends_group() || at + 1 == GROUP_MAX_CHUNKS as usize;
            if !last && ends {
                return Err(format!("group {index} goes on past its end"));
            }
            if last && !ends && !last_group {
                return Err(format!("group {index} ends early"));
            }
            total += u64::from(chunk.len);
        }
        if total != group.len {
            return Err(format!(
                "group {index}: chunks of {total} bytes, {} announced",
                group.len
            ));
        }
        if group_hash(chunks) != group.hash {
            return Err(format!(
                "group {index}: the chunk list does not match its hash"
            ));
        }
        Ok(())
    }
}

/// Where a copy that is a source of chunks holds each group and chunk it
/// has: the local copy of a delta download, the server's current version
/// for a delta upload.
#[derive(Debug, Default)]
pub(crate) struct SourceIndex {
    groups: HashMap<(ChunkHash, u64), u64>,
    chunks: HashMap<(ChunkHash, u32), u64>,
}

impl SourceIndex {
    /// Indexes a local copy's chunks (the first place each occurs).
    pub(crate) fn new(local: &Chunked) -> SourceIndex {
        let mut index = SourceIndex::default();
        let mut offset = 0;
        for (group, members) in local.groups.iter().zip(local.group_chunks()) {
            index
                .groups
                .entry((group.hash, group.len))
                .or_insert(offset);
            for chunk in members {
                index
                    .chunks
                    .entry((chunk.hash, chunk.len))
                    .or_insert(offset);
                offset += u64::from(chunk.len);
            }
        }
        index
    }

    /// Indexes a copy known by its (checked) outline and the chunk lists
    /// of some of its groups: every group, and the chunks of those listed.
    pub(crate) fn described(outline: &Outline, lists: &HashMap<u32, Vec<Chunk>>) -> SourceIndex {
        let mut index = SourceIndex::default();
        for (number, group) in outline.groups.iter().enumerate() {
            let start = outline.start(number);
            index.groups.entry((group.hash, group.len)).or_insert(start);
            let Some(chunks) = lists.get(&(number as u32)) else {
                continue;
            };
            let mut offset = start;
            for chunk in chunks {
                index
                    .chunks
                    .entry((chunk.hash, chunk.len))
                    .or_insert(offset);
                offset += u64::from(chunk.len);
            }
        }
        index
    }

    /// The local offset of a group, by hash and length.
    fn group(&self, group: &Group) -> Option<u64> {
        self.groups.get(&(group.hash, group.len)).copied()
    }

    /// The local offset of a chunk, by hash and length.
    fn chunk(&self, chunk: &Chunk) -> Option<u64> {
        self.chunks.get(&(chunk.hash, chunk.len)).copied()
    }
}

/// The groups of `outline` the local copy lacks (by index): their chunk
/// lists are what to ask for next.
pub(crate) fn missing_groups(outline: &Outline, local: &SourceIndex) -> Vec<u32> {
    (0..outline.groups.len())
        .filter(|&index| local.group(&outline.groups[index]).is_none())
        .map(|index| index as u32)
        .collect()
}

/// One step of rebuilding the server's file, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Copy `len` bytes of the local copy from `from`.
    Copy { from: u64, len: u64 },
    /// Fetch `len` bytes of the server's file from `offset`.
    Fetch { offset: u64, len: u64 },
}

/// The steps that rebuild the server's file, and what they cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// In file order; together exactly the server's size.
    pub steps: Vec<Step>,
    /// Bytes copied from the local copy.
    pub reused: u64,
    /// Bytes to fetch.
    pub fetched: u64,
}

impl Plan {
    fn push(&mut self, step: Step) {
        match (self.steps.last_mut(), step) {
            (
                Some(Step::Copy { from, len }),
                Step::Copy {
                    from: next,
                    len: more,
                },
            ) if *from + *len == next => {
                *len += more;
            }
            (
                Some(Step::Fetch { offset, len }),
                Step::Fetch {
                    offset: next,
                    len: more,
                },
            ) if *offset + *len == next => {
                *len += more;
            }
            _ => self.steps.push(step),
        }
        match step {
            Step::Copy { len, .. } => self.reused += len,
            Step::Fetch { len, .. } => self.fetched += len,
        }
    }

    /// The ranges to fetch, in order.
    pub(crate) fn fetches(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.steps.iter().filter_map(|step| match *step {
            Step::Fetch { offset, len } => Some((offset, len)),
            Step::Copy { .. } => None,
        })
    }
}

/// The steps for `outline` given the local copy and the (checked) chunk
/// lists of the missing groups. A missing group without a list is fetched
/// whole.
pub(crate) fn plan(
    outline: &Outline,
    local: &SourceIndex,
    lists: &HashMap<u32, Vec<Chunk>>,
) -> Plan {
    steps(
        outline.groups.iter().enumerate().map(|(index, group)| {
            let chunks = lists.get(&(index as u32)).map(Vec::as_slice);
            (group, outline.start(index), chunks)
        }),
        local,
    )
}

/// The steps that build `target`, a file cut whole (the local file of a
/// delta upload), from `source`: copies of what the source holds, and
/// `Fetch` steps for the rest of `target`'s own bytes.
pub(crate) fn plan_whole(target: &Chunked, source: &SourceIndex) -> Plan {
    let mut start = 0;
    steps(
        target
            .groups
            .iter()
            .zip(target.group_chunks())
            .map(|(group, chunks)| {
                let at = start;
                start += group.len;
                (group, at, Some(chunks))
            }),
        source,
    )
}

/// The steps for groups (each with its start and, when known, its chunks)
/// given a source of chunks.
fn steps<'a>(
    groups: impl Iterator<Item = (&'a Group, u64, Option<&'a [Chunk]>)>,
    source: &SourceIndex,
) -> Plan {
    let mut plan = Plan::default();
    for (group, start, chunks) in groups {
        if let Some(from) = source.group(group) {
            plan.push(Step::Copy {
                from,
                len: group.len,
            });
            continue;
        }
        let Some(chunks) = chunks else {
            plan.push(Step::Fetch {
                offset: start,
                len: group.len,
            });
            continue;
        };
        let mut offset = start;
        for chunk in chunks {
            let len = u64::from(chunk.len);
            match source.chunk(chunk) {
                Some(from) => plan.push(Step::Copy { from, len }),
                None => plan.push(Step::Fetch { offset, len }),
            }
            offset += len;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::cut::cut_all;
    use proptest::prelude::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    /// What a client does: outline, missing lists, plan; then the bytes the
    /// plan assembles.
    /// The file `plan` builds: copies from `source`, fetches from `target`.
    fn follow(plan: &Plan, source: &[u8], target: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(target.len());
        for step in &plan.steps {
            match *step {
                Step::Copy { from, len } => {
                    out.extend_from_slice(&source[from as usize..(from + len) as usize]);
                }
                Step::Fetch { offset, len } => {
                    out.extend_from_slice(&target[offset as usize..(offset + len) as usize]);
                }
            }
        }
        out
    }

    fn rebuild(server: &[u8], local: &[u8], params: Params) -> (Vec<u8>, Plan) {
        let theirs = cut_all(server, params);
        let ours = cut_all(local, params);
        let outline =
            Outline::new(params, server.len() as u64, theirs.groups.clone()).expect("valid");
        let index = SourceIndex::new(&ours);
        let lists: Vec<&[Chunk]> = theirs.group_chunks().collect();
        let mut asked = HashMap::new();
        for group in missing_groups(&outline, &index) {
            let list = lists[group as usize].to_vec();
            outline
                .check_list(group as usize, &list)
                .expect("valid list");
            asked.insert(group, list);
        }
        let plan = plan(&outline, &index, &asked);
        (follow(&plan, local, server), plan)
    }

    /// What a delta upload does: the server's outline, the lists of its
    /// groups the new file lacks, a plan over the new file; then the bytes
    /// the server assembles (copies from its old version, the rest sent).
    fn rebuild_upload(old: &[u8], new: &[u8], params: Params) -> (Vec<u8>, Plan) {
        let theirs = cut_all(old, params);
        let ours = cut_all(new, params);
        let outline = Outline::new(params, old.len() as u64, theirs.groups.clone()).expect("valid");
        let lists: Vec<&[Chunk]> = theirs.group_chunks().collect();
        let asked: HashMap<u32, Vec<Chunk>> = missing_groups(&outline, &SourceIndex::new(&ours))
            .into_iter()
            .map(|group| (group, lists[group as usize].to_vec()))
            .collect();
        let plan = plan_whole(&ours, &SourceIndex::described(&outline, &asked));
        (follow(&plan, old, new), plan)
    }

    #[test]
    fn an_upload_sends_only_the_edits() {
        let params = Params::with_avg(8192);
        let old = noise(8 << 20, 21);
        let mut new = old.clone();
        new.splice(3 << 20..3 << 20, noise(100_000, 22));
        new.drain(6 << 20..(6 << 20) + 50_000);
        let (out, plan) = rebuild_upload(&old, &new, params);
        assert!(out == new);
        assert_eq!(plan.reused + plan.fetched, new.len() as u64);
        assert!(plan.fetched >= 100_000, "{plan:?}");
        assert!(
            plan.fetched <= 100_000 + 4 * u64::from(params.max),
            "{plan:?}"
        );
    }

    #[test]
    fn scattered_overwrites_fetch_little() {
        let params = Params::with_avg(8192);
        let local = noise(8 << 20, 11);
        let mut server = local.clone();
        let mut rng = fastrand::Rng::with_seed(12);
        for _ in 0..10 {
            let at = rng.usize(..server.len() - 4096);
            server[at..at + 4096].copy_from_slice(&noise(4096, rng.u64(..)));
        }
        let (out, plan) = rebuild(&server, &local, params);
        assert!(out == server);
        assert_eq!(plan.reused + plan.fetched, server.len() as u64);
        // Each edit costs the chunks around it: at most 3 max-size chunks.
        assert!(plan.fetched <= 10 * 3 * u64::from(params.max), "{plan:?}");
        assert!(plan.fetched >= 10 * 4096 / 2);
    }

    #[test]
    fn unrelated_content_is_fetched_whole_in_one_range() {
        let params = Params::with_avg(8192);
        let (out, plan) = rebuild(&noise(2 << 20, 1), &noise(2 << 20, 2), params);
        assert_eq!(out, noise(2 << 20, 1));
        assert_eq!(plan.reused, 0);
        assert_eq!(
            plan.steps,
            vec![Step::Fetch {
                offset: 0,
                len: 2 << 20
            }]
        );
    }

    #[test]
    fn an_identical_copy_is_one_local_copy() {
        let params = Params::with_avg(8192);
        let data = noise(3 << 20, 5);
        let (out, plan) = rebuild(&data, &data, params);
        assert!(out == data);
        assert_eq!(
            plan.steps,
            vec![Step::Copy {
                from: 0,
                len: 3 << 20
            }]
        );
    }

    fn outline_of(data: &[u8], params: Params) -> (Chunked, Outline) {
        let chunked = cut_all(data, params);
        let outline = Outline::new(params, data.len() as u64, chunked.groups.clone()).expect("ok");
        (chunked, outline)
    }

    #[test]
    fn hostile_outlines_are_refused() {
        let params = Params::with_avg(8192);
        let data = noise(2 << 20, 7);
        let (chunked, _) = outline_of(&data, params);
        let size = data.len() as u64;
        // Not covering the file, or covering more of it.
        assert!(Outline::new(params, size + 1, chunked.groups.clone()).is_err());
        assert!(Outline::new(params, size - 1, chunked.groups.clone()).is_err());
        // A group too long for its chunk count (a huge chunk).
        let mut huge = chunked.groups.clone();
        let extra = u64::from(params.max) * u64::from(huge[0].chunks);
        huge[0].len += extra;
        assert!(Outline::new(params, size + extra, huge).is_err());
        // Empty or overfull groups; lengths that overflow.
        let mut empty = chunked.groups.clone();
        empty[0].chunks = 0;
        assert!(Outline::new(params, size, empty).is_err());
        let overflow = vec![
            Group {
                len: u64::MAX,
                chunks: GROUP_MAX_CHUNKS,
                hash: ChunkHash([0; 16]),
            },
            Group {
                len: 2,
                chunks: 1,
                hash: ChunkHash([0; 16]),
            },
        ];
        assert!(Outline::new(Params::with_avg(4 << 20), 1, overflow).is_err());
    }

    #[test]
    fn hostile_chunk_lists_are_refused() {
        let params = Params::with_avg(8192);
        let data = noise(2 << 20, 8);
        let (chunked, outline) = outline_of(&data, params);
        let list: Vec<Chunk> = chunked.group_chunks().next().expect("a group").to_vec();
        outline.check_list(0, &list).expect("the real list");
        // One chunk fewer, a length moved between chunks (same sum), a
        // chunk longer than max, another hash: each refused.
        assert!(outline.check_list(0, &list[1..]).is_err());
        let mut moved = list.clone();
        moved[0].len += 1;
        moved[1].len -= 1;
        assert!(outline.check_list(0, &moved).is_err());
        let mut long = list.clone();
        long[0].len = params.max + 1;
        assert!(outline.check_list(0, &long).is_err());
        let mut other = list.clone();
        other[0].hash.0[5] ^= 1;
        assert!(outline.check_list(0, &other).is_err());
        assert!(outline.check_list(outline.groups.len(), &list).is_err());
    }

    #[derive(Clone, Debug)]
    enum Edit {
        Overwrite { at: usize, len: usize, seed: u64 },
        Insert { at: usize, len: usize, seed: u64 },
        Delete { at: usize, len: usize },
        Append { len: usize, seed: u64 },
        Truncate { keep: usize },
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), 1usize..20_000, any::<u64>())
                .prop_map(|(at, len, seed)| Edit::Overwrite { at, len, seed }),
            (any::<usize>(), 1usize..40_000, any::<u64>())
                .prop_map(|(at, len, seed)| Edit::Insert { at, len, seed }),
            (any::<usize>(), 1usize..40_000).prop_map(|(at, len)| Edit::Delete { at, len }),
            (1usize..30_000, any::<u64>()).prop_map(|(len, seed)| Edit::Append { len, seed }),
            any::<usize>().prop_map(|keep| Edit::Truncate { keep }),
        ]
    }

    fn apply(data: &mut Vec<u8>, edit: &Edit) {
        let n = data.len();
        match *edit {
            Edit::Overwrite { at, len, seed } if n > 0 => {
                let at = at % n;
                let len = len.min(n - at);
                data[at..at + len].copy_from_slice(&noise(len, seed));
            }
            Edit::Insert { at, len, seed } => {
                let at = at % (n + 1);
                data.splice(at..at, noise(len, seed));
            }
            Edit::Delete { at, len } if n > 0 => {
                let at = at % n;
                data.drain(at..(at + len).min(n));
            }
            Edit::Append { len, seed } => data.extend(noise(len, seed)),
            Edit::Truncate { keep } => data.truncate(keep % (n + 1)),
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_edit_script_rebuilds_the_servers_file(
            len in 0usize..600_000,
            seed in any::<u64>(),
            edits in proptest::collection::vec(edit(), 0..8),
        ) {
            let params = Params::with_avg(2048);
            let local = noise(len, seed);
            let mut server = local.clone();
            for edit in &edits {
                apply(&mut server, edit);
            }
            let (out, plan) = rebuild(&server, &local, params);
            prop_assert!(out == server, "rebuilt file differs");
            let (uploaded, sent) = rebuild_upload(&local, &server, params);
            prop_assert!(uploaded == server, "uploaded file differs");
            prop_assert_eq!(sent.reused + sent.fetched, server.len() as u64);
            prop_assert_eq!(plan.reused + plan.fetched, server.len() as u64);
            for step in &plan.steps {
                if let Step::Copy { from, len } = *step {
                    prop_assert!(from + len <= local.len() as u64);
                }
            }
        }
    }
}
