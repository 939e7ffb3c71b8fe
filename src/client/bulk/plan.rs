//! The plan of a `get -r`: every file below a folder, from one recursive
//! listing, at its confined place below the output folder.

use std::path::Path;

use crate::client::bulk::confine::{confine, prepare_parent};
use crate::client::bulk::item::Item;
use crate::client::bulk::local::LocalChecks;
use crate::client::download::{self, Known};
use crate::client::{Client, ListStream};
use crate::entry::EntryKind;
use crate::error::{Error, Result};

/// The plan for `-r DIR`: every file below `dir` at `out/<path below dir>`,
/// and every folder (empty ones too) created. Returns the files. When
/// `with_digests`, the listing carries each file's sha256, so files already
/// present and identical are skipped without a call each: each such file's
/// local copy goes to `checks` as soon as it is listed.
///
/// A listing broken off by a busy, draining or lost server is made again
/// under the client's retry policy (each retry one notice to `notify`);
/// the checks the broken one queued are voided.
///
/// `listing`: a listing of `dir` (recursive, with digests when
/// `with_digests`) already under way, when there is one: a caller that
/// asked for it together with the `Stat` that told `dir` is a folder saves
/// a round trip. Retries list anew.
pub(crate) async fn plan_tree(
    client: &Client,
    dir: &str,
    out: &Path,
    with_digests: bool,
    checks: &mut LocalChecks,
    notify: &(dyn Fn(&str) + Sync),
    mut opened: Option<Result<ListStream>>,
) -> Result<Vec<Item>> {
    let mut streak = client.retry_policy().streak();
    loop {
        let first = checks.queued();
        let entries = match opened.take() {
            Some(entries) => entries,
            None => client.list_entries(dir, true, with_digests).await,
        };
        match list_tree(entries, dir, out, checks).await {
            Ok(items) => return Ok(items),
            Err(err) => {
                checks.void_since(first);
                if !streak.wait(&download::shown(dir), &err, notify).await {
                    return Err(err);
                }
            }
        }
    }
}

/// [`plan_tree`]'s listing.
async fn list_tree(
    entries: Result<ListStream>,
    dir: &str,
    out: &Path,
    checks: &mut LocalChecks,
) -> Result<Vec<Item>> {
    let base = dir.trim_matches('/');
    let mut entries = entries?;
    let mut items = Vec::new();
    let mut saw_any = false;
    while let Some(entry) = entries.next().await? {
        saw_any = true;
        let rel = if base.is_empty() {
            entry.path.as_str()
        } else if entry.path == base {
            // `-r FILE`: the listing is the file itself.
            entry.path.rsplit('/').next().unwrap_or(&entry.path)
        } else {
            match entry
                .path
                .strip_prefix(base)
                .and_then(|rest| rest.strip_prefix('/'))
            {
                Some(rest) => rest,
                None => {
                    return Err(Error::Protocol {
                        path: entry.path.clone(),
                        reason: format!("listed under {dir} but not below it"),
                    });
                }
            }
        };
        let dest = confine(out, rel)?;
        match entry.kind {
            EntryKind::Dir => {
                prepare_parent(out, &dest.join("x"))?;
            }
            EntryKind::File => {
                let item = Item {
                    remote: entry.path.clone(),
                    dest,
                    known: Some(Known {
                        size: entry.size,
                        sha256: entry.sha256,
                    }),
                };
                checks.submit(&item);
                items.push(item);
            }
            // A symlink inside the tree: fetch what it points to, like
            // `rsync -L`; one pointing outside the root fails on its own.
            EntryKind::Symlink => items.push(Item {
                remote: entry.path.clone(),
                dest,
                known: None,
            }),
        }
    }
    if !saw_any {
        std::fs::create_dir_all(out).map_err(|err| Error::io(out, err))?;
    }
    Ok(items)
}
