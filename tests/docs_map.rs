//! The "Map of the code" in `docs/design.md` names every file under `src/`,
//! and nothing that is not there: a file added, moved or removed without
//! the map fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// The files the map lists: `- `src/x.rs`` at the top, and nested lists
/// below a folder entry (`- `src/cli/`` then `  - `get.rs``).
fn mapped_files(design: &str) -> BTreeSet<String> {
    let map = design
        .split("## Map of the code")
        .nth(1)
        .expect("docs/design.md has a Map of the code");
    let map = map.split("\n### ").next().unwrap_or(map);
    let mut folders: Vec<(usize, String)> = Vec::new();
    let mut files = BTreeSet::new();
    for line in map.lines() {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix("- `") else {
            continue;
        };
        let Some((name, _)) = rest.split_once('`') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        folders.retain(|(depth, _)| *depth < indent);
        let full = match folders.last() {
            Some((_, folder)) => format!("{folder}{name}"),
            None => name.to_string(),
        };
        if full.ends_with('/') {
            folders.push((indent, full));
        } else if full.starts_with("src/") {
            files.insert(full);
        }
    }
    files
}

fn source_files(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path
                .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .expect("inside the crate");
            out.insert(relative.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn the_map_matches_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let design = std::fs::read_to_string(root.join("docs/design.md")).expect("docs/design.md");
    let mapped = mapped_files(&design);
    let mut present = BTreeSet::new();
    source_files(&root.join("src"), &mut present);
    let missing: Vec<_> = present.difference(&mapped).collect();
    let stale: Vec<_> = mapped.difference(&present).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/design.md's map is out of date: not in the map {missing:?}; no such file {stale:?}"
    );
}
