//! Many files in one run: a plan of (remote path, local destination) pairs,
//! fetched `-j` at a time over the client's one HTTP/2 connection, each with
//! the full single-file treatment of [`download`](crate::client::download).
//!
//! The server can never make the client write outside its output folder:
//! every destination is `OUT` joined with a relative path checked component
//! by component ([`confine`]), and no folder on the way may be a symlink.
//!
//! - [`plan`]: the plan of a `-r` from one recursive listing.
//! - [`confine`]: destinations kept inside the output folder.
//! - [`local`]: the hashing pool that finds local copies already identical.
//! - [`batch`]: small files many to a call (`ReadMany`).
//! - [`item`]: one file of the plan, and its single-file fetch.
//!
//! This module schedules them: `-j` jobs at a time over one connection.

pub(crate) mod batch;
pub(crate) mod confine;
pub(crate) mod item;
pub(crate) mod local;
pub(crate) mod plan;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::client::Client;
use crate::client::download::{self, DownloadOptions, Report};
use crate::error::Result;
pub(crate) use confine::confine;
pub(crate) use item::Item;
pub(crate) use local::LocalChecks;
pub(crate) use plan::plan_tree;

/// Transfers at once when `-j` is not given.
pub(crate) const DEFAULT_JOBS: usize = 8;
/// The most transfers at once: every one is a call on the one connection,
/// and `fetchd serve` refuses calls beyond its `--max-streams-per-connection`
/// (256 by default) instead of queueing them. More would only fail.
pub(crate) const MAX_JOBS: usize = 256;

/// What a batch did, for the summary line.
#[derive(Clone, Debug, Default)]
pub(crate) struct Summary {
    /// Files downloaded.
    pub downloaded: u64,
    /// Files skipped as identical.
    pub skipped: u64,
    /// Files that failed.
    pub failed: u64,
    /// Bytes received over the network.
    pub transferred: u64,
    /// Bytes of changed files taken from their local copies (delta).
    pub reused: u64,
    /// Wall time of the batch.
    pub elapsed: Duration,
}

impl Summary {
    /// `fetchd: 297 files, 12.3 MB in 0.42 s (29.3 MB/s); 0 skipped, 3 failed`
    pub(crate) fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "{} files ({} downloaded, {} skipped, {} failed), {} received in {:.2} s ({}/s)",
            self.downloaded + self.skipped + self.failed,
            self.downloaded,
            self.skipped,
            self.failed,
            human_bytes(self.transferred),
            secs,
            human_bytes((self.transferred as f64 / secs) as u64),
        ) + &if self.reused > 0 {
            format!("; reused {} from local copies", human_bytes(self.reused))
        } else {
            String::new()
        }
    }
}

/// `1.0 GiB`, `512 B`: bytes for a person.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Fetches every item, `jobs` at a time; calls `done` as each one finishes
/// (in completion order) and returns the summary. Items that `checks`
/// found identical locally are reported skipped first.
pub(crate) async fn fetch_all(
    client: &Client,
    out: &Path,
    items: Vec<Item>,
    checks: LocalChecks,
    jobs: usize,
    options: &DownloadOptions,
    mut done: impl FnMut(&Item, &Result<Report>),
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    let (identical, items) = if options.force {
        (Vec::new(), items)
    } else {
        checks.split(items).await
    };
    for (item, report) in identical {
        summary.skipped += 1;
        done(&item, &Ok(report));
    }
    // Small fresh files go many to a call; the rest one call each. Every
    // job holds one of `jobs` slots while it runs.
    let (batched, single) = batch::split_batchable(items, options);
    let jobs = jobs.clamp(1, MAX_JOBS);
    let slots = Arc::new(Semaphore::new(jobs));
    let (finished, mut results) = mpsc::unbounded_channel::<batch::Finished>();
    let mut running = JoinSet::new();
    let per_call = batch::batch_size(batched.len(), jobs);
    let mut batched = batched.into_iter();
    loop {
        let group: Vec<Item> = batched.by_ref().take(per_call).collect();
        if group.is_empty() {
            break;
        }
        let (client, options, out) = (client.clone(), options.clone(), out.to_path_buf());
        let (slots, finished) = (Arc::clone(&slots), finished.clone());
        running.spawn(async move {
            let _slot = slots.acquire_owned().await;
            batch::fetch_batch(&client, &out, group, &options, &finished).await;
        });
    }
    for item in single {
        let (client, options, out) = (client.clone(), options.clone(), out.to_path_buf());
        let (slots, finished) = (Arc::clone(&slots), finished.clone());
        running.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let result = item.fetch(&client, &out, &options).await;
            let _ = finished.send((item, result));
        });
    }
    // The jobs hold the only senders left: the loop ends when all are done.
    drop(finished);
    while let Some((item, result)) = results.recv().await {
        match &result {
            Ok(report) if report.outcome == download::Outcome::Skipped => summary.skipped += 1,
            Ok(report) => {
                summary.downloaded += 1;
                summary.transferred += report.transferred;
                summary.reused += report.reused;
            }
            Err(_) => summary.failed += 1,
        }
        done(&item, &result);
    }
    while let Some(joined) = running.join_next().await {
        if let Err(err) = joined {
            summary.failed += 1;
            tracing::error!(%err, "a download task failed");
        }
    }
    summary.elapsed = started.elapsed();
    summary
}
