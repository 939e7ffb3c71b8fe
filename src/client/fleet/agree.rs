//! Which replicas serve the same file: every replica is asked for the
//! file's size and sha256 at once, and the largest group that agrees on both
//! is the file (a tie goes to the group of the server given first). A
//! replica outside it is left out for that file, with a notice: bytes of two
//! versions are never put together.

use std::collections::HashMap;

use tokio::task::JoinSet;

use crate::checksum::Digest;
use crate::client::download::{Notify, shown};
use crate::client::fleet::replica::Replica;
use crate::entry::{EntryKind, FileVersion};
use crate::error::{Error, Result};

/// One replica that holds the agreed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// Its index in the fleet.
    pub replica: usize,
    /// The version it holds (a read must start on this one).
    pub version: Option<FileVersion>,
}

/// The file the agreeing replicas serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Agreement {
    /// Its size.
    pub size: u64,
    /// Its sha256.
    pub sha256: Digest,
    /// The replicas that hold it, in the order given.
    pub members: Vec<Member>,
}

/// What one replica said about a file: its size, sha256 and version.
pub(crate) type Answer = Result<(u64, Digest, Option<FileVersion>)>;

/// Asks every replica for `remote`'s size and sha256 at once and picks the
/// agreeing group. A replica that fails (down, not found there) or
/// disagrees is left out with a notice naming it; when none answers, the
/// first replica's error is the file's.
pub(crate) async fn agree(
    replicas: &[Replica],
    remote: &str,
    notify: &Notify,
) -> Result<Agreement> {
    let mut asking = JoinSet::new();
    for (index, replica) in replicas.iter().enumerate() {
        let (client, remote) = (replica.client.clone(), remote.to_string());
        asking.spawn(async move {
            let answer = match client.stat(&remote, true).await {
                Ok(stat) if stat.entry.kind == EntryKind::Dir => Err(Error::IsDirectory {
                    path: shown(&remote),
                }),
                Ok(stat) => match stat.sha256 {
                    Some(digest) => Ok((stat.entry.size, digest, stat.version)),
                    None => Err(Error::Protocol {
                        path: shown(&remote),
                        reason: "the server sent no sha256".into(),
                    }),
                },
                Err(err) => Err(err),
            };
            (index, answer)
        });
    }
    let mut answers: Vec<Option<Answer>> = replicas.iter().map(|_| None).collect();
    while let Some(joined) = asking.join_next().await {
        if let Ok((index, answer)) = joined {
            answers[index] = Some(answer);
        }
    }
    let answers = answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| {
                Err(Error::io(
                    remote,
                    std::io::Error::other("asking the server stopped unexpectedly"),
                ))
            })
        })
        .collect();
    choose(replicas, remote, answers, notify)
}

/// The agreeing group among `keys` (one per replica, `None` for one that
/// gave no answer): the largest, a tie going to the group seen first (the
/// one holding the earliest replica). Its key and members' indices.
pub(crate) fn largest_group<K: Copy + Eq + std::hash::Hash>(
    keys: &[Option<K>],
) -> Option<(K, Vec<usize>)> {
    let mut groups: HashMap<K, Vec<usize>> = HashMap::new();
    let mut order = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        if let Some(key) = key {
            groups
                .entry(*key)
                .or_insert_with(|| {
                    order.push(*key);
                    Vec::new()
                })
                .push(index);
        }
    }
    let chosen = order.into_iter().reduce(|best, key| {
        if groups[&key].len() > groups[&best].len() {
            key
        } else {
            best
        }
    })?;
    let members = groups.remove(&chosen).unwrap_or_default();
    Some((chosen, members))
}

/// Picks the agreeing group from each replica's answer (in fleet order),
/// telling `notify` about every replica left out.
pub(crate) fn choose(
    replicas: &[Replica],
    remote: &str,
    answers: Vec<Answer>,
    notify: &Notify,
) -> Result<Agreement> {
    let keys: Vec<Option<(u64, Digest)>> = answers
        .iter()
        .map(|answer| {
            answer
                .as_ref()
                .ok()
                .map(|(size, digest, _)| (*size, *digest))
        })
        .collect();
    let Some((chosen, members)) = largest_group(&keys) else {
        let mut answers = answers;
        return Err(match answers.swap_remove(0) {
            Err(err) => err,
            Ok(_) => Error::Protocol {
                path: shown(remote),
                reason: "no replica answered".into(),
            },
        });
    };
    for (replica, answer) in answers.iter().enumerate() {
        let label = &replicas[replica].label;
        match answer {
            Err(err) => notify(&format!("{label}: {err}; left out for this file")),
            Ok((size, digest, _)) if (*size, *digest) != chosen => {
                notify(&differs(label, remote, *size, digest));
            }
            Ok(_) => {}
        }
    }
    let members = members
        .into_iter()
        .map(|replica| Member {
            replica,
            version: answers[replica].as_ref().ok().and_then(|answer| answer.2),
        })
        .collect();
    Ok(Agreement {
        size: chosen.0,
        sha256: chosen.1,
        members,
    })
}

/// The notice for a replica whose file is not the agreed one.
pub(crate) fn differs(label: &str, remote: &str, size: u64, digest: &Digest) -> String {
    format!(
        "{label}: {}: differs from the other replicas ({size} bytes, sha256 {}...); \
         left out for this file",
        shown(remote),
        &digest.to_hex()[..12],
    )
}
