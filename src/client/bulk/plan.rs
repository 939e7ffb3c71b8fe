//! The plan of a `get -r`: every file below a folder, from one recursive
//! listing, at its confined place below the output folder.

use std::path::Path;

use crate::client::Client;
use crate::client::bulk::confine::{confine, prepare_parent};
use crate::client::bulk::item::Item;
use crate::client::bulk::local::LocalChecks;
use crate::client::download::{self, Known};
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
pub(crate) async fn plan_tree(
    client: &Client,
    dir: &str,
    out: &Path,
    with_digests: bool,
    checks: &mut LocalChecks,
    notify: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Item>> {
    let mut streak = client.retry_policy().streak();
    loop {
        let first = checks.queued();
        match list_tree(client, dir, out, with_digests, checks).await {
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
    client: &Client,
    dir: &str,
    out: &Path,
    with_digests: bool,
    checks: &mut LocalChecks,
) -> Result<Vec<Item>> {
    let base = dir.trim_matches('/');
    let mut entries = client.list_entries(dir, true, with_digests).await?;
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
