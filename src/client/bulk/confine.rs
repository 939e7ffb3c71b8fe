//! Confinement to the output folder: the server can never make the client
//! write outside it. Every destination is `OUT` joined with a relative path
//! checked component by component ([`confine`]), and no folder on the way
//! may be a symlink ([`prepare_parent`]).

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `out` joined with the server-supplied relative path `rel`, refusing
/// anything that could land outside `out`: absolute paths, `..`, empty or
/// NUL-bearing names.
pub(crate) fn confine(out: &Path, rel: &str) -> Result<PathBuf> {
    let refuse = |reason: &str| {
        Err(Error::UnsafeDestination {
            path: PathBuf::from(rel),
            reason: format!("{reason}; it would land outside {}", out.display()),
        })
    };
    if rel.is_empty() || rel.contains('\0') {
        return refuse("empty name or NUL byte");
    }
    let mut dest = out.to_path_buf();
    let mut depth = 0;
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(name) => {
                dest.push(name);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir => return refuse("it contains `..`"),
            Component::RootDir | Component::Prefix(_) => return refuse("it is absolute"),
        }
    }
    if depth == 0 {
        return refuse("it names the output folder itself");
    }
    Ok(dest)
}

/// Creates the folders between `out` and `dest`, refusing to go through a
/// symlink (which could point anywhere) or a file.
pub(crate) fn prepare_parent(out: &Path, dest: &Path) -> Result<()> {
    let Ok(rel) = dest.strip_prefix(out) else {
        return Err(Error::UnsafeDestination {
            path: dest.to_path_buf(),
            reason: format!("not inside {}", out.display()),
        });
    };
    let mut current = out.to_path_buf();
    let mut components: Vec<_> = rel.components().collect();
    components.pop(); // the file itself
    for component in components {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Error::UnsafeDestination {
                    path: current,
                    reason: "it is a symlink, which could lead anywhere".into(),
                });
            }
            Ok(_) => {
                return Err(Error::UnsafeDestination {
                    path: current,
                    reason: "it exists and is not a folder".into(),
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::create_dir(&current) {
                    Ok(()) => {}
                    // Another job made it between the look and the mkdir:
                    // fine if it is a real folder, checked like any other.
                    Err(err)
                        if err.kind() == std::io::ErrorKind::AlreadyExists
                            && std::fs::symlink_metadata(&current)
                                .is_ok_and(|meta| meta.is_dir()) => {}
                    Err(err) => return Err(Error::io(&current, err)),
                }
            }
            Err(err) => return Err(Error::io(&current, err)),
        }
    }
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.file_type().is_symlink() => Err(Error::UnsafeDestination {
            path: dest.to_path_buf(),
            reason: "it is a symlink; remove it to download here".into(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server-supplied names cannot climb out of the output folder.
    #[test]
    fn confine_refuses_escapes() {
        let out = Path::new("out");
        assert_eq!(
            confine(out, "a/b.txt").expect("ok"),
            Path::new("out/a/b.txt")
        );
        assert_eq!(confine(out, "./a").expect("ok"), Path::new("out/a"));
        for hostile in ["../x", "a/../../x", "/etc/passwd", "", ".", "a/\0b", "a/.."] {
            assert!(
                confine(out, hostile).is_err(),
                "{hostile:?} must be refused"
            );
        }
    }

    /// Jobs preparing the same new folders at once all succeed: a folder
    /// another job made between the look and the mkdir is fine.
    #[test]
    fn concurrent_jobs_share_new_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().to_path_buf();
        for round in 0..20 {
            let threads: Vec<_> = (0..8)
                .map(|job| {
                    let out = out.clone();
                    std::thread::spawn(move || {
                        prepare_parent(&out, &out.join(format!("r{round}/a/b/f{job}")))
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("join").expect("prepare_parent");
            }
            assert!(out.join(format!("r{round}/a/b")).is_dir());
        }
    }

    /// A symlink inside the output folder is never written through.
    #[test]
    fn symlinked_folders_in_out_are_refused() {
        let out = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(elsewhere.path(), out.path().join("link")).expect("symlink");
        let dest = confine(out.path(), "link/file").expect("confined");
        let err = prepare_parent(out.path(), &dest).expect_err("refused");
        assert!(err.to_string().contains("symlink"), "{err}");
        std::os::unix::fs::symlink("/etc/passwd", out.path().join("f")).expect("symlink");
        let dest = confine(out.path(), "f").expect("confined");
        assert!(prepare_parent(out.path(), &dest).is_err());
        // A normal nested path is created.
        let dest = confine(out.path(), "a/b/c.txt").expect("confined");
        prepare_parent(out.path(), &dest).expect("created");
        assert!(out.path().join("a/b").is_dir());
    }
}
