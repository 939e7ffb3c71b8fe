//! Request paths: what a client names, parsed and normalised before any
//! store looks at it. A path is `/`-separated and relative to the root; `..`
//! is kept as a part (a store resolves it, and refuses it above the root).

use crate::error::{Error, Result};

/// Longest request path accepted, in bytes (Linux `PATH_MAX`).
pub(crate) const MAX_PATH_BYTES: usize = 4096;
/// Longest single name accepted, in bytes (Linux `NAME_MAX`).
pub(crate) const MAX_NAME_BYTES: usize = 255;

/// A parsed request path: `/`-separated, relative to the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestPath {
    parts: Vec<Part>,
    display: String,
}

/// One part of a [`RequestPath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// `..`: the folder above.
    Parent,
    /// A name in the folder reached so far.
    Name(String),
}

impl RequestPath {
    /// Parses a path as a client sent it. A leading `/` is the root itself;
    /// empty strings, NUL bytes and over-long paths or names are refused.
    pub(crate) fn parse(raw: &str) -> Result<RequestPath> {
        let invalid = |reason| Error::InvalidPath {
            path: printable(raw),
            reason,
        };
        if raw.is_empty() {
            return Err(invalid("the path is empty (use / for the root)"));
        }
        if raw.contains('\0') {
            return Err(invalid("it contains a NUL byte"));
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(invalid("it is longer than 4096 bytes"));
        }
        let mut parts = Vec::new();
        for name in raw.split('/') {
            match name {
                "" | "." => {}
                ".." => parts.push(Part::Parent),
                name if name.len() > MAX_NAME_BYTES => {
                    return Err(invalid("a name in it is longer than 255 bytes"));
                }
                name => parts.push(Part::Name(name.to_string())),
            }
        }
        let display = lexical_display(&parts);
        Ok(RequestPath { parts, display })
    }

    /// The path as messages and listings show it: normalised, no leading
    /// `/`, empty for the root.
    pub(crate) fn display(&self) -> &str {
        &self.display
    }

    /// The path relative to the root when it is plain names only (no `..`,
    /// not the root itself): what a single kernel walk may resolve.
    pub(crate) fn plain(&self) -> Option<&str> {
        let plain =
            !self.parts.is_empty() && self.parts.iter().all(|part| matches!(part, Part::Name(_)));
        plain.then_some(self.display.as_str())
    }

    /// True when the path's own `..` names climb above where it starts
    /// (`../x`, `a/../../x`): it aims outside the root whatever exists.
    pub(crate) fn climbs_out(&self) -> bool {
        self.display == ".." || self.display.starts_with("../")
    }

    /// The parts, in order, as parsed (`.` and empty names dropped).
    pub(crate) fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The folder part and the last name, when the path ends in a name.
    pub(crate) fn split_last(&self) -> Option<(RequestPath, &str)> {
        let (Part::Name(name), rest) = self.parts.split_last()? else {
            return None;
        };
        let parent = RequestPath {
            parts: rest.to_vec(),
            display: lexical_display(rest),
        };
        Some((parent, name))
    }

    /// The path for error messages: like [`display`](Self::display), but `/`
    /// for the root.
    pub(crate) fn shown(&self) -> String {
        if self.display.is_empty() {
            "/".to_string()
        } else {
            self.display.clone()
        }
    }
}

/// `a/./b/../c` -> `a/c`; a leading `..` stays (and will be refused).
fn lexical_display(parts: &[Part]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for part in parts {
        match part {
            Part::Parent => {
                if matches!(names.last(), Some(last) if *last != "..") {
                    names.pop();
                } else {
                    names.push("..");
                }
            }
            Part::Name(name) => names.push(name),
        }
    }
    names.join("/")
}

/// A path string safe to print: control characters escaped.
fn printable(raw: &str) -> String {
    const SHOWN_BYTES: usize = 120;
    let mut shown: String = raw.chars().flat_map(char::escape_debug).collect();
    if shown.len() > SHOWN_BYTES {
        let mut cut = SHOWN_BYTES;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push_str("...");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths parse the way the contract describes them.
    #[test]
    fn parse_and_display() {
        let cases = [
            ("/", ""),
            ("/etc/passwd", "etc/passwd"),
            ("a//b/./c/", "a/b/c"),
            ("a/../b", "b"),
            ("../x", "../x"),
        ];
        for (raw, shown) in cases {
            let path = RequestPath::parse(raw).expect(raw);
            assert_eq!(path.display(), shown, "{raw}");
        }
    }

    /// Empty, NUL and over-long paths are invalid arguments.
    #[test]
    fn parse_refuses_bad_strings() {
        let long_name = "n".repeat(MAX_NAME_BYTES + 1);
        let long_path = "a/".repeat(MAX_PATH_BYTES);
        for raw in ["", "a\0b", long_name.as_str(), long_path.as_str()] {
            let err = RequestPath::parse(raw).expect_err("must be refused");
            assert!(matches!(err, Error::InvalidPath { .. }), "{err}");
        }
    }

    /// Printed paths escape control characters and stay short.
    #[test]
    fn printable_escapes_and_truncates() {
        assert_eq!(printable("a\0b\n"), "a\\0b\\n");
        assert!(printable(&"x".repeat(1000)).len() < 200);
    }
}
