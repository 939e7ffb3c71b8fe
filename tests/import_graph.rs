//! No import circles in `src/`: the files form a graph by what they use
//! (`crate::a::b` paths, `use crate::a::{b, c}` groups, `super::x`, and a
//! parent's `x::` into its own child module `x`), and that graph has no
//! cycle. Test modules are left out: they may use whatever they test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of the crate (`cli::get`; the crate root is ``) and its
/// source with comments and test modules removed.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("inside src");
            let mut parts: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read file");
            out.insert(parts.join("::"), product_code(&text));
        }
    }
    out
}

/// `text` without `//` comments and without its test module.
fn product_code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod ").next().unwrap_or(text);
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `::`-separated path that starts at `text` (identifiers only).
fn path_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    text[..end].trim_end_matches(':')
}

/// The paths a `use` group `{a, b::{c, d}}` names, each after `prefix`.
fn group_paths(group: &str, prefix: &str, out: &mut Vec<String>) {
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    for item in items {
        let item = item.trim();
        match item.split_once("::{") {
            Some((head, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or(rest);
                group_paths(inner, &format!("{prefix}{head}::"), out);
            }
            None => out.push(format!("{prefix}{}", path_at(item))),
        }
    }
}

/// Every module path `code` refers to, as written (`client::retry::Cause`).
fn referenced(code: &str, module: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let path = path_at(after);
        if after[path.len()..].starts_with("::{") {
            let group = &after[path.len() + 3..];
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            group_paths(&group[..end], &format!("{path}::"), &mut out);
        } else {
            out.push(path.to_string());
        }
        rest = after;
    }
    let parent = module.rsplit_once("::").map_or("", |(parent, _)| parent);
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let after = &rest[at + "super::".len()..];
        let path = path_at(after);
        out.push(if parent.is_empty() {
            path.to_string()
        } else {
            format!("{parent}::{path}")
        });
        rest = after;
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn module_of<'a>(path: &str, modules: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find_map(|candidate| {
            modules
                .get_key_value(&candidate)
                .map(|(key, _)| key.as_str())
        })
}

#[test]
fn src_has_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (module, code) in &modules {
        let edges = graph.entry(module.as_str()).or_default();
        for path in referenced(code, module) {
            if let Some(target) = module_of(&path, &modules)
                && target != module
            {
                edges.insert(target);
            }
        }
        // A parent naming its own child module by its relative name.
        for line in code.lines() {
            let line = line.trim();
            let declared = line
                .strip_prefix("pub(crate) mod ")
                .or_else(|| line.strip_prefix("pub mod "))
                .or_else(|| line.strip_prefix("mod "));
            let Some(child) = declared.and_then(|rest| rest.strip_suffix(';')) else {
                continue;
            };
            let full = if module.is_empty() {
                child.to_string()
            } else {
                format!("{module}::{child}")
            };
            let used = code.match_indices(&format!("{child}::")).any(|(i, _)| {
                !code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            });
            if used && let Some((key, _)) = modules.get_key_value(&full) {
                edges.insert(key.as_str());
            }
        }
    }

    // Depth-first search; a back edge closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node);
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::Open);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        let cycle = visit(node, &graph, &mut marks, &mut Vec::new());
        assert!(
            cycle.is_none(),
            "an import circle in src/: {}",
            cycle
                .unwrap_or_default()
                .iter()
                .map(|m| if m.is_empty() { "lib" } else { m })
                .collect::<Vec<_>>()
                .join(" -> ")
        );
    }
    assert!(graph.len() > 40, "the walk found {} modules", graph.len());
}
