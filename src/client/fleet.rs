//! Several servers at once: connecting to all of them concurrently, a
//! bounded number in flight, so that a fleet starts in about one round trip
//! rather than one server after another. Each connection is then an
//! ordinary single-server [`Client`]; the verbs schedule work onto them.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::Client;
use crate::client::options::ConnectOptions;
use crate::client::target::Target;
use crate::error::{Error, Result};

/// Connections being made at once when a fleet starts.
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
