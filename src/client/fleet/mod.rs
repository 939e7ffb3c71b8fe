//! Several servers at once: connecting to all of them concurrently, a
//! bounded number in flight, so that a fleet starts in about one round trip
//! rather than one server after another. Each connection is then an
//! ordinary single-server [`Client`]; the verbs schedule work onto them.
//!
//! `get` from replicas is built here on the single-server download path:
//!
//! - [`agree`]: which replicas hold the same file (size and sha256).
//! - [`stripe`]: one large file as byte ranges from every agreeing replica.
//! - [`spread`]: the files of a bulk download spread over the replicas.
//! - [`replica`]: a connected server of the fleet, and what it delivered.

pub(crate) mod agree;
pub(crate) mod replica;
pub(crate) mod spread;
pub(crate) mod stripe;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use std::path::Path;

use crate::client::Client;
use crate::client::download::{self, DownloadOptions};
use crate::client::options::ConnectOptions;
use crate::client::retry::{Cause, RetryPolicy};
use crate::client::target::Target;
use crate::error::{Error, Result};
pub(crate) use replica::{Delivered, Replica};

/// Connections being made at once when a fleet starts (`--max-connecting`).
pub(crate) const MAX_CONNECTING: usize = 64;

/// Connects to every target, at most `max_in_flight` at a time; the results
/// are in the order of `targets`, a failed connection as its error.
pub(crate) async fn connect_all(
    targets: &[Target],
    options: &ConnectOptions,
    max_in_flight: usize,
) -> Vec<Result<Client>> {
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut running = JoinSet::new();
    for (index, target) in targets.iter().enumerate() {
        let (target, options, slots) = (target.clone(), options.clone(), Arc::clone(&slots));
        running.spawn(async move {
            let _slot = slots.acquire_owned().await;
            (index, Client::connect(&target, &options).await)
        });
    }
    let mut results: Vec<Option<Result<Client>>> = targets.iter().map(|_| None).collect();
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok((index, result)) => results[index] = Some(result),
            Err(err) => tracing::error!(%err, "a connecting task failed"),
        }
    }
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                Err(Error::io(
                    "<connect>",
                    std::io::Error::other("the connection task stopped unexpectedly"),
                ))
            })
        })
        .collect()
}

/// Downloads one file from the replicas that agree on it: striped over all
/// of them when it is large ([`stripe::STRIPE_MIN_BYTES`]), else from the
/// first, moving on to the next when one is down, busy or draining (the
/// last one tried under the full retry policy).
pub(crate) async fn download_one(
    replicas: &[Replica],
    remote: &str,
    dest: &Path,
    options: &DownloadOptions,
) -> crate::error::Result<Delivered> {
    let agreed = agree::agree(replicas, remote, &options.notify).await?;
    if agreed.size >= stripe::STRIPE_MIN_BYTES && agreed.members.len() > 1 {
        return stripe::download_striped(replicas, remote, dest, &agreed, options).await;
    }
    let known = download::Known {
        size: agreed.size,
        sha256: Some(agreed.sha256),
    };
    let last = agreed.members.len() - 1;
    for (place, member) in agreed.members.iter().enumerate() {
        let replica = &replicas[member.replica];
        let client = match place == last {
            true => replica.client.clone(),
            false => replica.client.with_retry_policy(RetryPolicy::OFF),
        };
        match download::download_file(&client, remote, dest, Some(known), options).await {
            Ok(report) => {
                let servers = match report.outcome {
                    download::Outcome::Downloaded => vec![replica.label.clone()],
                    download::Outcome::Skipped => Vec::new(),
                };
                return Ok(Delivered { report, servers });
            }
            Err(err) if place < last && Cause::of(&err).is_some() => {
                (options.notify)(&format!(
                    "{}: {err}; trying {}",
                    replica.label,
                    replicas[agreed.members[place + 1].replica].label
                ));
            }
            Err(err) => return Err(err),
        }
    }
    unreachable!("an agreement has at least one member")
}
