//! Property tests of the path resolver itself (no network): over random
//! request paths built from hostile pieces, nothing outside the root is ever
//! resolved, opened or read, and where the kernel's own confined lookup
//! (`openat2(RESOLVE_BENEATH)`) finds an object, the resolver finds the same.

use std::cell::Cell;
use std::collections::HashSet;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::store::local::root::Root;
use crate::store::path::{MAX_NAME_BYTES, MAX_PATH_BYTES, RequestPath};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;

/// Content of every file outside the root.
const SECRET: &[u8] = b"outside secret";
/// Every file inside the root starts with this.
const INSIDE_PREFIX: &[u8] = b"inside:";
/// Cases per property: enough to cover the component mix in a few seconds.
const CASES: u32 = 512;

/// The pieces random paths are built from: every kind of hop the tree has.
const COMPONENTS: &[&str] = &[
    "..", ".", "", "a", "b", "file", "in_link", "out_link", "abs_in", "abs_out", "up", "far",
    "file_in", "file_out", "loop", "root", "outside", "missing",
];

/// A root and an outside folder full of look-alikes.
struct Fixture {
    /// Removes the tree on drop.
    _tmp: tempfile::TempDir,
    /// The canonical root.
    root_path: PathBuf,
    root: Root,
    /// The kernel's handle on the root, for `openat2`.
    root_fd: OwnedFd,
    /// (device, inode) of everything really inside the root, the root too.
    inside: HashSet<(u64, u64)>,
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create folders");
    std::fs::write(path, data).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
}

fn link(target: impl AsRef<Path>, at: &Path) {
    symlink(target.as_ref(), at).unwrap_or_else(|err| panic!("symlink {}: {err}", at.display()));
}

/// ```text
/// BASE/outside/{file, a/file, a/b/file, b/file}, in_link -> a   (all SECRET)
/// BASE/root/{file, a/file, a/b/file, b/file}                     ("inside:...")
/// root/in_link -> a            root/a/in_link -> b            (inside, relative)
/// root/abs_in -> ROOT/a        root/a/abs_in -> ROOT/b        (inside, absolute)
/// root/a/up -> ..              root/a/b/up -> ../..           (inside, upwards)
/// root/file_in -> a/file       root/b/file_in -> ../a/b/file  (inside files)
/// root/out_link -> ../outside  root/a/out_link -> ../../outside/a
/// root/abs_out -> OUTSIDE      root/a/abs_out -> OUTSIDE/a/file
/// root/a/far -> ../..          root/b/far -> ../../outside/b/file
/// root/file_out -> ../outside/file   root/loop -> loop
/// ```
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().canonicalize().expect("canonical tempdir");
    let root = base.join("root");
    let outside = base.join("outside");
    for file in ["file", "a/file", "a/b/file", "b/file"] {
        write(&outside.join(file), SECRET);
        write(&root.join(file), format!("inside:{file}").as_bytes());
    }
    link("a", &outside.join("in_link"));

    link("a", &root.join("in_link"));
    link("b", &root.join("a/in_link"));
    link(root.join("a"), &root.join("abs_in"));
    link(root.join("b"), &root.join("a/abs_in"));
    link("..", &root.join("a/up"));
    link("../..", &root.join("a/b/up"));
    link("a/file", &root.join("file_in"));
    link("../a/b/file", &root.join("b/file_in"));

    link("../outside", &root.join("out_link"));
    link("../../outside/a", &root.join("a/out_link"));
    link(&outside, &root.join("abs_out"));
    link(outside.join("a/file"), &root.join("a/abs_out"));
    link("../..", &root.join("a/far"));
    link("../../outside/b/file", &root.join("b/far"));
    link("../outside/file", &root.join("file_out"));
    link("loop", &root.join("loop"));

    let mut inside = HashSet::new();
    let mut folders = vec![root.clone()];
    while let Some(folder) = folders.pop() {
        let meta = std::fs::symlink_metadata(&folder).expect("lstat");
        inside.insert((meta.dev(), meta.ino()));
        for entry in std::fs::read_dir(&folder).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            if meta.is_dir() {
                folders.push(path);
            } else {
                inside.insert((meta.dev(), meta.ino()));
            }
        }
    }
    let root_fd = rustix::fs::open(
        root.as_path(),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .expect("open the root");
    Fixture {
        _tmp: tmp,
        root: Root::open(&root).expect("Root::open"),
        root_path: root,
        root_fd,
        inside,
    }
}

/// Random request paths: 0 to 8 components, `/`-joined, maybe a leading `/`.
fn component_paths() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(prop::sample::select(COMPONENTS), 0..8),
    )
        .prop_map(|(leading_slash, parts)| {
            let joined = parts.join("/");
            if leading_slash {
                format!("/{joined}")
            } else {
                joined
            }
        })
}

/// Components mixed with arbitrary printable junk.
fn mixed_paths() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        3 => prop::sample::select(COMPONENTS).prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ];
    prop::collection::vec(part, 0..6).prop_map(|parts| parts.join("/"))
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

/// True when the request's own `..` climbs above its start.
fn climbs_out(path: &RequestPath) -> bool {
    path.display() == ".." || path.display().starts_with("../")
}

/// Errors a static tree may give: refusals, never an internal failure.
fn expected_refusal(raw: &str, verb: &str, err: &Error) -> Result<(), TestCaseError> {
    let allowed = [
        Code::PermissionDenied,
        Code::NotFound,
        Code::InvalidArgument,
        Code::FailedPrecondition,
    ];
    prop_assert!(
        allowed.contains(&err.code()),
        "{verb} {raw:?}: unexpected {:?}: {err}",
        err.code()
    );
    Ok(())
}

/// What the kernel's confined lookup finds for `path`, if anything.
fn kernel_beneath(fixture: &Fixture, raw: &str) -> Option<(u64, u64)> {
    let relative = raw.trim_start_matches('/');
    let relative = if relative.is_empty() { "." } else { relative };
    let fd = rustix::fs::openat2(
        fixture.root_fd.as_fd(),
        relative,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        rustix::fs::ResolveFlags::BENEATH,
    )
    .ok()?;
    let stat = rustix::fs::fstat(&fd).ok()?;
    Some((stat.st_dev, stat.st_ino))
}

/// The property: whatever `raw` is, every verb either refuses it or works
/// on an object that really is inside the root. `Ok(true)` when the kernel
/// found the object too, and the resolver found the same.
fn check(fixture: &Fixture, raw: &str) -> Result<bool, TestCaseError> {
    let path = match RequestPath::parse(raw) {
        Ok(path) => path,
        Err(err) => {
            prop_assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "parse {:?}: {}",
                raw,
                err
            );
            return Ok(false);
        }
    };

    match fixture.root.open_file(&path) {
        Ok((mut file, meta)) => {
            let fd_link = format!("/proc/self/fd/{}", file.as_raw_fd());
            let real = std::fs::read_link(&fd_link).expect("readlink /proc/self/fd");
            prop_assert!(
                real.starts_with(&fixture.root_path),
                "open {raw:?} opened {}",
                real.display()
            );
            prop_assert!(
                fixture.inside.contains(&(meta.dev(), meta.ino())),
                "open {raw:?} opened an object not inside the root"
            );
            let mut data = Vec::new();
            file.read_to_end(&mut data).expect("read");
            prop_assert!(data != SECRET, "open {raw:?} read the outside secret");
            prop_assert!(
                data.starts_with(INSIDE_PREFIX),
                "open {raw:?} read {data:?}"
            );
        }
        Err(err) => expected_refusal(raw, "open", &err)?,
    }

    let identity = fixture.root.identity(&path);
    match &identity {
        Ok(identity) => prop_assert!(
            fixture.inside.contains(identity),
            "locate {raw:?} reached an object not inside the root"
        ),
        Err(err) => expected_refusal(raw, "locate", err)?,
    }

    match fixture.root.stat(&path) {
        Ok(_) => prop_assert!(identity.is_ok(), "stat {raw:?} worked where locate failed"),
        Err(err) => expected_refusal(raw, "stat", &err)?,
    }

    let mut listed = Vec::new();
    let walked = fixture.root.walk(&path, true, &mut |entry| {
        listed.push(entry.info.path);
        listed.len() < 1000
    });
    match walked {
        Ok(()) => {
            prop_assert!(identity.is_ok(), "ls {raw:?} worked where locate failed");
            prop_assert!(listed.len() < 100, "ls -r {raw:?} listed {listed:?}");
        }
        Err(err) => expected_refusal(raw, "ls", &err)?,
    }

    // Completeness: what the kernel finds beneath the root (relative
    // symlinks only; it refuses absolute ones), the resolver finds too.
    if !climbs_out(&path)
        && let Some(kernel) = kernel_beneath(fixture, raw)
    {
        prop_assert_eq!(
            identity.as_ref().ok(),
            Some(&kernel),
            "{:?}: the kernel finds an object beneath the root, the resolver does not",
            raw
        );
        return Ok(true);
    }
    Ok(false)
}

/// Random paths of `..`, `.`, names and inside/outside symlinks never
/// resolve, open or list anything outside the root, and resolve whatever
/// the kernel resolves beneath it.
#[test]
fn component_paths_never_leave_the_root() {
    let fixture = fixture();
    let resolved = Cell::new(0usize);
    let kernel_resolved = Cell::new(0usize);
    runner()
        .run(&component_paths(), |raw| {
            if RequestPath::parse(&raw).is_ok_and(|path| fixture.root.identity(&path).is_ok()) {
                resolved.set(resolved.get() + 1);
            }
            if check(&fixture, &raw)? {
                kernel_resolved.set(kernel_resolved.get() + 1);
            }
            Ok(())
        })
        .unwrap_or_else(|err| panic!("{err}"));
    // The property is not vacuous: plenty of paths resolve, and the kernel
    // comparison runs.
    let (resolved, kernel_resolved) = (resolved.get(), kernel_resolved.get());
    eprintln!("{resolved} paths resolved; {kernel_resolved} compared with the kernel");
    assert!(resolved > CASES as usize / 32, "only {resolved} resolved");
    assert!(
        kernel_resolved > CASES as usize / 64,
        "only {kernel_resolved} compared with the kernel"
    );
}

/// Arbitrary strings, alone and mixed with path pieces, never panic and
/// never reach outside the root.
#[test]
fn arbitrary_strings_never_panic_or_escape() {
    let fixture = fixture();
    runner()
        .run(&"\\PC*", |raw| check(&fixture, &raw).map(drop))
        .unwrap_or_else(|err| panic!("{err}"));
    runner()
        .run(&mixed_paths(), |raw| check(&fixture, &raw).map(drop))
        .unwrap_or_else(|err| panic!("{err}"));
}

/// Parsing refuses exactly the unusable strings: empty, NUL, a path over
/// 4096 bytes or a name over 255.
#[test]
fn parse_refuses_exactly_the_unusable_strings() {
    let strings = prop_oneof![
        "\\PC*",
        "[a/.\\x00]{0,12}",
        (250usize..260, 1usize..4).prop_map(|(len, count)| vec!["x".repeat(len); count].join("/")),
        (4090usize..4100).prop_map(|len| "a/".repeat(len / 2 + 1)[..len].to_string()),
    ];
    runner()
        .run(&strings, |raw| {
            let unusable = raw.is_empty()
                || raw.contains('\0')
                || raw.len() > MAX_PATH_BYTES
                || raw.split('/').any(|name| name.len() > MAX_NAME_BYTES);
            match RequestPath::parse(&raw) {
                Ok(_) => prop_assert!(!unusable, "accepted {} bytes", raw.len()),
                Err(err) => {
                    prop_assert!(unusable, "refused {raw:?}: {err}");
                    prop_assert_eq!(err.code(), Code::InvalidArgument);
                }
            }
            Ok(())
        })
        .unwrap_or_else(|err| panic!("{err}"));
}
