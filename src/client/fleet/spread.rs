//! The files of a bulk download spread over the replicas that agree on
//! each of them.
//!
//! The plan comes from one replica's listing (with digests); every other
//! replica lists the same tree once, and each file goes to the replicas
//! whose size and sha256 match the largest group ([`agree`]). Files are
//! dealt out largest first to the agreeing replica with the fewest bytes so
//! far, and each replica runs its share as an ordinary single-server bulk
//! download ([`bulk::fetch_all`]: `-j` transfers at once, small files
//! batched). A file that fails because its replica is down, busy or
//! draining moves at once to another agreeing replica (its `DEST.part` is
//! resumed there, checked by that replica's prefix digest), and the replica
//! gets no more new files; when every agreeing replica has failed it, the
//! first of them tries once more under the full retry policy.
//!
//! [`agree`]: crate::client::fleet::agree

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::checksum::Digest;
use crate::client::bulk::{self, Item, LocalChecks, Summary};
use crate::client::download::{DownloadOptions, Known, Notify, Outcome, Report};
use crate::client::fleet::agree::{differs, largest_group};
use crate::client::fleet::replica::Replica;
use crate::client::retry::{Cause, RetryPolicy};
use crate::entry::EntryKind;
use crate::error::Result;

/// A file of the plan and the replicas (fleet indices) that agree on it.
#[derive(Clone, Debug)]
pub(crate) struct Placed {
    /// The file.
    pub item: Item,
    /// Replicas holding the agreed version, in fleet order.
    pub members: Vec<usize>,
}

/// Agrees on every file of a tree planned from `lead`'s listing of `dir`:
/// the other replicas list `dir` (all at once) and each file keeps the
/// largest group; its `known` becomes that group's size and digest. A
/// replica whose listing fails is left out of the whole tree, with a notice.
pub(crate) async fn agree_tree(
    replicas: &[Replica],
    lead: usize,
    dir: &str,
    items: Vec<Item>,
    notify: &Notify,
) -> Vec<Placed> {
    let mut listing = JoinSet::new();
    for (index, replica) in replicas.iter().enumerate() {
        if index == lead {
            continue;
        }
        let (client, dir) = (replica.client.clone(), dir.to_string());
        listing.spawn(async move {
            let mut found: HashMap<String, (u64, Digest)> = HashMap::new();
            let listed = async {
                let mut entries = client.list_entries(&dir, true, true).await?;
                while let Some(entry) = entries.next().await? {
                    if entry.kind == EntryKind::File
                        && let Some(digest) = entry.sha256
                    {
                        found.insert(entry.path, (entry.size, digest));
                    }
                }
                Ok::<(), crate::error::Error>(())
            }
            .await;
            (index, listed.map(|()| found))
        });
    }
    let mut listings: Vec<Option<HashMap<String, (u64, Digest)>>> =
        replicas.iter().map(|_| None).collect();
    while let Some(joined) = listing.join_next().await {
        match joined {
            Ok((index, Ok(found))) => listings[index] = Some(found),
            Ok((index, Err(err))) => notify(&format!(
                "{}: {err}; left out of this download",
                replicas[index].label
            )),
            Err(err) => tracing::error!(%err, "a listing task failed"),
        }
    }
    items
        .into_iter()
        .map(|item| {
            let path = crate::client::download::shown(&item.remote);
            let Some(lead_key) = item.known.and_then(|k| k.sha256.map(|d| (k.size, d))) else {
                // A symlink in the tree: only the lead said what it is.
                return Placed {
                    item,
                    members: vec![lead],
                };
            };
            let keys: Vec<Option<(u64, Digest)>> = (0..replicas.len())
                .map(|index| match index == lead {
                    true => Some(lead_key),
                    false => listings[index]
                        .as_ref()
                        .and_then(|found| found.get(&path).copied()),
                })
                .collect();
            let Some((chosen, members)) = largest_group(&keys) else {
                return Placed {
                    item,
                    members: vec![lead],
                };
            };
            for (index, key) in keys.iter().enumerate() {
                if let Some((size, digest)) = key
                    && (*size, *digest) != chosen
                {
                    notify(&differs(&replicas[index].label, &path, *size, digest));
                }
            }
            Placed {
                item: Item {
                    known: Some(Known {
                        size: chosen.0,
                        sha256: Some(chosen.1),
                    }),
                    ..item
                },
                members,
            }
        })
        .collect()
}

/// One file's end, from a replica's pass.
struct Ended {
    replica: usize,
    item: Item,
    result: Result<Report>,
    /// It failed because of the replica (down, busy, draining), not the file.
    replica_failed: bool,
}

/// Fetches every placed file from its replicas, `jobs` at a time per
/// replica; calls `done` once per file with the labels of the replicas
/// that delivered its bytes. Files `checks` finds identical locally are
/// reported skipped first.
pub(crate) async fn fetch_spread(
    replicas: &[Replica],
    out: &Path,
    placed: Vec<Placed>,
    checks: LocalChecks,
    jobs: usize,
    options: &DownloadOptions,
    mut done: impl FnMut(&Item, &Result<Report>, &[String]),
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut members: HashMap<PathBuf, Vec<usize>> = placed
        .iter()
        .map(|placed| (placed.item.dest.clone(), placed.members.clone()))
        .collect();
    let items: Vec<Item> = placed.into_iter().map(|placed| placed.item).collect();
    let (identical, items) = if options.force {
        (Vec::new(), items)
    } else {
        checks.split(items).await
    };
    for (item, report) in identical {
        summary.skipped += 1;
        done(&item, &Ok(report), &[]);
    }

    // Deal the files out: largest first, each to the agreeing replica with
    // the least work so far (a file's call counts as 64 KiB of work).
    let mut load = vec![0u64; replicas.len()];
    let mut shares: Vec<Vec<Item>> = replicas.iter().map(|_| Vec::new()).collect();
    let mut items = items;
    items.sort_by_key(|item| std::cmp::Reverse(item.known.map_or(0, |known| known.size)));
    let mut tried: HashMap<PathBuf, HashSet<usize>> = HashMap::new();
    for item in items {
        let candidates = members.get(&item.dest).cloned().unwrap_or_default();
        let Some(&replica) = candidates.iter().min_by_key(|&&index| load[index]) else {
            continue;
        };
        load[replica] += item.known.map_or(0, |known| known.size) + (64 << 10);
        tried.entry(item.dest.clone()).or_default().insert(replica);
        shares[replica].push(item);
    }
    let mut left: usize = shares.iter().map(Vec::len).sum();

    let (ended, mut ends) = mpsc::unbounded_channel::<Ended>();
    let mut passes = JoinSet::new();
    let run_pass = |passes: &mut JoinSet<()>, replica: usize, share: Vec<Item>, patient: bool| {
        let client = match patient {
            true => replicas[replica].client.clone(),
            false => replicas[replica].client.with_retry_policy(RetryPolicy::OFF),
        };
        let (out, options, ended) = (out.to_path_buf(), options.clone(), ended.clone());
        passes.spawn(async move {
            // Local copies were checked above, against the agreed file.
            let options = DownloadOptions {
                force: true,
                ..options
            };
            bulk::fetch_all(
                &client,
                &out,
                share,
                LocalChecks::default(),
                jobs,
                &options,
                |item, result| {
                    let replica_failed = matches!(result, Err(err) if Cause::of(err).is_some());
                    let result = match result {
                        Ok(report) => Ok(report.clone()),
                        Err(err) => Err(err.clone_message()),
                    };
                    let _ = ended.send(Ended {
                        replica,
                        item: item.clone(),
                        result,
                        replica_failed,
                    });
                },
            )
            .await;
        });
    };
    for (replica, share) in shares.into_iter().enumerate() {
        if !share.is_empty() {
            run_pass(&mut passes, replica, share, false);
        }
    }
    let mut down = vec![false; replicas.len()];
    let mut last_chance: HashSet<PathBuf> = HashSet::new();
    while left > 0 {
        let Some(end) = ends.recv().await else {
            break;
        };
        if end.replica_failed && !last_chance.contains(&end.item.dest) {
            if !down[end.replica] {
                down[end.replica] = true;
                (options.notify)(&format!(
                    "{}: not answering; its files go to the other replicas",
                    replicas[end.replica].label
                ));
            }
            let candidates = members.remove(&end.item.dest).unwrap_or_default();
            let seen = tried.entry(end.item.dest.clone()).or_default();
            let next = candidates
                .iter()
                .copied()
                .filter(|index| !down[*index] && !seen.contains(index))
                .min_by_key(|&index| load[index]);
            let dest = end.item.dest.clone();
            match next {
                Some(replica) => {
                    seen.insert(replica);
                    run_pass(&mut passes, replica, vec![end.item], false);
                }
                None => {
                    // Everyone failed it at once: the first agreeing
                    // replica tries once more, patiently.
                    last_chance.insert(dest.clone());
                    let first = candidates.first().copied().unwrap_or(end.replica);
                    run_pass(&mut passes, first, vec![end.item], true);
                }
            }
            members.insert(dest, candidates);
            continue;
        }
        left -= 1;
        match &end.result {
            Ok(report) if report.outcome == Outcome::Skipped => summary.skipped += 1,
            Ok(report) => {
                summary.downloaded += 1;
                summary.transferred += report.transferred;
                summary.reused += report.reused;
            }
            Err(_) => summary.failed += 1,
        }
        let servers = match &end.result {
            Ok(report) if report.outcome == Outcome::Downloaded => {
                vec![replicas[end.replica].label.clone()]
            }
            _ => Vec::new(),
        };
        done(&end.item, &end.result, &servers);
    }
    drop(ended);
    while passes.join_next().await.is_some() {}
    summary.failed += left as u64;
    summary.elapsed = started.elapsed();
    summary
}
