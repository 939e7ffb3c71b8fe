//! The client's half of the delta calls: a server's manifest, checked as
//! it arrives ([`crate::delta::plan::Outline`]), chunk lists of chosen
//! groups, and byte ranges pinned to a version.

use std::collections::HashMap;

use tokio_stream::StreamExt;

use crate::checksum::Digest;
use crate::client::{Client, ReadAnswer, ReadStream};
use crate::delta::plan::Outline;
use crate::delta::{Chunk, ChunkHash, Group, HASH_BYTES, Params};
use crate::entry::{EntryInfo, FileVersion};
use crate::error::{Error, Result};
use crate::proto::{self, manifest_response::Kind};

/// Most groups or ranges sent in one request (the server's limit).
pub(crate) const MAX_ITEMS_PER_REQUEST: usize = 65_536;

/// What a server's manifest says about its version of a file.
#[derive(Clone, Debug)]
pub(crate) struct RemoteManifest {
    /// The file, as `Stat` describes it.
    pub entry: EntryInfo,
    /// The version described.
    pub version: FileVersion,
    /// Its sha256.
    pub sha256: Digest,
    /// The checked group list; `None` when the server offers no delta (a
    /// small file).
    pub outline: Option<Outline>,
}

/// `count` hashes from `bytes` (16 each), or `None` if the length is off.
fn hashes(bytes: &[u8], count: usize) -> Option<Vec<ChunkHash>> {
    if bytes.len() != count.checked_mul(HASH_BYTES)? {
        return None;
    }
    Some(
        bytes
            .chunks_exact(HASH_BYTES)
            .filter_map(ChunkHash::from_slice)
            .collect(),
    )
}

impl Client {
    /// The manifest of `path`'s current version: header and group list,
    /// checked. A manifest that breaks the rules is [`Error::Protocol`].
    pub(crate) async fn manifest(&self, path: &str) -> Result<RemoteManifest> {
        let protocol = |reason: String| Error::Protocol {
            path: path.to_string(),
            reason: format!("manifest: {reason}"),
        };
        let mut stream = self
            .data_rpc()
            .manifest(proto::ManifestRequest {
                path: path.to_string(),
                groups: Vec::new(),
                version: None,
            })
            .await
            .map_err(|status| self.status(status))?
            .into_inner();
        let header = match stream.next().await {
            Some(Ok(proto::ManifestResponse {
                kind: Some(Kind::Header(header)),
            })) => header,
            Some(Err(status)) => return Err(self.status(status)),
            _ => return Err(protocol("no header first".into())),
        };
        let entry = header
            .entry
            .ok_or_else(|| protocol("a header without an entry".into()))?;
        let entry = EntryInfo::try_from(entry).map_err(protocol)?;
        let version: FileVersion = header
            .version
            .ok_or_else(|| protocol("a header without a version".into()))?
            .into();
        let sha256 = Digest::from_slice(&header.sha256)
            .ok_or_else(|| protocol("a sha256 that is not 32 bytes".into()))?;
        let params = if header.avg_chunk == 0 {
            None
        } else {
            Some(
                Params::checked(header.min_chunk, header.avg_chunk, header.max_chunk)
                    .ok_or_else(|| protocol("chunk sizes out of bounds".into()))?,
            )
        };
        // Never trust a count for an allocation: grow as groups arrive, and
        // refuse more than the file's size could hold.
        let most = params.map_or(0, |params| entry.size / u64::from(params.min) + 1);
        if u64::from(header.group_count) > most {
            return Err(protocol("more groups than the file can hold".into()));
        }
        let mut groups: Vec<Group> = Vec::new();
        while let Some(message) = stream.next().await {
            let message = message.map_err(|status| self.status(status))?;
            let Some(Kind::Groups(batch)) = message.kind else {
                return Err(protocol(
                    "a message other than groups after the header".into(),
                ));
            };
            let count = batch.lengths.len();
            let hashes = hashes(&batch.hashes, count)
                .filter(|_| batch.chunk_counts.len() == count)
                .ok_or_else(|| protocol("group lists of different lengths".into()))?;
            if groups.len() + count > header.group_count as usize {
                return Err(protocol("more groups than announced".into()));
            }
            groups.extend(
                batch
                    .lengths
                    .iter()
                    .zip(&batch.chunk_counts)
                    .zip(hashes)
                    .map(|((&len, &chunks), hash)| Group { len, chunks, hash }),
            );
        }
        if groups.len() != header.group_count as usize {
            return Err(protocol("fewer groups than announced".into()));
        }
        let outline = match params {
            None if groups.is_empty() => None,
            None => return Err(protocol("groups without chunk sizes".into())),
            Some(params) => Some(Outline::new(params, entry.size, groups).map_err(protocol)?),
        };
        Ok(RemoteManifest {
            entry,
            version,
            sha256,
            outline,
        })
    }

    /// The chunk lists of `groups` of the version `manifest` describes,
    /// each checked against its group.
    pub(crate) async fn chunk_lists(
        &self,
        path: &str,
        manifest: &RemoteManifest,
        groups: &[u32],
    ) -> Result<HashMap<u32, Vec<Chunk>>> {
        let protocol = |reason: String| Error::Protocol {
            path: path.to_string(),
            reason: format!("manifest: {reason}"),
        };
        let outline = manifest
            .outline
            .as_ref()
            .ok_or_else(|| protocol("chunk lists of a file without groups".into()))?;
        let mut lists = HashMap::with_capacity(groups.len());
        for asked in groups.chunks(MAX_ITEMS_PER_REQUEST) {
            let mut stream = self
                .data_rpc()
                .manifest(proto::ManifestRequest {
                    path: path.to_string(),
                    groups: asked.to_vec(),
                    version: Some(manifest.version.into()),
                })
                .await
                .map_err(|status| self.status(status))?
                .into_inner();
            let mut expected = asked.iter();
            while let Some(message) = stream.next().await {
                let message = message.map_err(|status| self.status(status))?;
                let Some(Kind::Chunks(list)) = message.kind else {
                    return Err(protocol("a message other than a chunk list".into()));
                };
                if expected.next() != Some(&list.group) {
                    return Err(protocol("a chunk list that was not asked for".into()));
                }
                let count = list.lengths.len();
                let hashes = hashes(&list.hashes, count)
                    .ok_or_else(|| protocol("chunk lists of different lengths".into()))?;
                let chunks: Vec<Chunk> = list
                    .lengths
                    .iter()
                    .zip(hashes)
                    .map(|(&len, hash)| Chunk { len, hash })
                    .collect();
                outline
                    .check_list(list.group as usize, &chunks)
                    .map_err(protocol)?;
                lists.insert(list.group, chunks);
            }
            if expected.next().is_some() {
                return Err(protocol("fewer chunk lists than asked for".into()));
            }
        }
        Ok(lists)
    }

    /// Starts reading `ranges` (offset, length) of the version `version` of
    /// `path`, answered in order as one stream (see the `ReadRanges` RPC).
    pub(crate) async fn read_ranges(
        &self,
        path: &str,
        version: FileVersion,
        ranges: &[(u64, u64)],
    ) -> Result<ReadStream> {
        let response = self
            .data_rpc()
            .read_ranges(proto::ReadRangesRequest {
                path: path.to_string(),
                version: Some(version.into()),
                offsets: ranges.iter().map(|range| range.0).collect(),
                lengths: ranges.iter().map(|range| range.1).collect(),
            })
            .await
            .map_err(|status| self.status(status))?;
        Ok(ReadStream {
            inner: ReadAnswer::Decoded(response.into_inner()),
            client: self.clone(),
            path: path.to_string(),
        })
    }
}
