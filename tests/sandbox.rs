//! The root is a sandbox: every refusal the contract's sandbox section lists,
//! through the library client (exact status codes) and through the `fetchd`
//! binary (exit code, one-line message, nothing written), plus races that
//! swap symlinks in while requests (stat, read, list, tail) resolve.

mod common;

use std::future::Future;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use fetchd::Client;
use fetchd::ReadEvent;
use fetchd::{EntryInfo, EntryKind};
use fetchd::{TailEvent, TailStart};
use tonic::Code;

/// Content of the file outside the root that every escape aims at.
const SECRET: &[u8] = b"outside secret: must never be served\n";
/// `outside/file`, the twin of an inside `file` in the race tests.
const OUTSIDE_FILE: &[u8] = b"OUTSIDE twin of the inside file\n";
/// `inside/file`.
const INSIDE_FILE: &[u8] = b"inside file\n";
const HELLO: &[u8] = b"hello from inside the root\n";
const PASSWD: &[u8] = b"the root's own etc/passwd, not the machine's\n";
const DEEP: &[u8] = b"deep inside\n";

/// How long one refused request may take (a FIFO must not hang it).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a race test flips symlinks for.
const RACE_DURATION: Duration = Duration::from_secs(2);
/// Most requests one race test makes.
const RACE_MAX_REQUESTS: usize = 3000;

const OUTSIDE_REASON: &str = "permission denied: the path leads outside the served root";

/// A served root beside a folder that must stay unreachable:
///
/// ```text
/// BASE/outside/{secret, file}
/// BASE/root/hello.txt, etc/passwd, nested/deep.txt, inside/file
/// BASE/root/<symlinks, fifo, sock, dev>   (see `tree`)
/// ```
struct Tree {
    /// Removes the whole tree on drop.
    _tmp: tempfile::TempDir,
    /// BASE, canonical.
    base: PathBuf,
    /// BASE/root, canonical.
    root: PathBuf,
    /// BASE/outside, canonical.
    outside: PathBuf,
    /// Whether `root/dev` (a character device) could be made.
    has_device: bool,
}

/// Symlinks in the tree that lead out of the root; all must be refused.
const ESCAPING_LINKS: &[&str] = &[
    "out_rel",
    "out_abs",
    "escape",
    "escape_rel",
    "nested/escape_deep",
    "bad1",
    "dangling_out",
    "outin",
];

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create folders");
    std::fs::write(path, data).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
}

fn link(target: impl AsRef<Path>, at: &Path) {
    symlink(target.as_ref(), at).unwrap_or_else(|err| panic!("symlink {}: {err}", at.display()));
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap_or_else(|err| panic!("mkfifo {}: {err}", path.display()));
}

/// Builds the tree; every symlink kind the contract talks about is in it.
fn tree() -> Tree {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().canonicalize().expect("canonical tempdir");
    let root = base.join("root");
    let outside = base.join("outside");

    write(&outside.join("secret"), SECRET);
    write(&outside.join("file"), OUTSIDE_FILE);
    write(&root.join("hello.txt"), HELLO);
    write(&root.join("etc/passwd"), PASSWD);
    write(&root.join("nested/deep.txt"), DEEP);
    write(&root.join("inside/file"), INSIDE_FILE);

    // Escapes: a file, a folder, relative and absolute, chained, dangling,
    // and one that leaves the root and comes back in.
    link("../outside/secret", &root.join("out_rel"));
    link(outside.join("secret"), &root.join("out_abs"));
    link(&outside, &root.join("escape"));
    link("../outside", &root.join("escape_rel"));
    link("../../outside", &root.join("nested/escape_deep"));
    link("bad2", &root.join("bad1"));
    link("nested/bad3", &root.join("bad2"));
    link("../../outside/secret", &root.join("nested/bad3"));
    link(
        "/nonexistent/fetchd-sandbox-test",
        &root.join("dangling_out"),
    );
    link("../root/hello.txt", &root.join("outin"));

    // Links that stay inside and must work.
    link("hello.txt", &root.join("in_rel"));
    link(root.join("hello.txt"), &root.join("in_abs"));
    link("nested", &root.join("dir_in"));
    link(root.join("nested"), &root.join("dir_in_abs"));
    link("..", &root.join("nested/up"));
    link("chain2", &root.join("chain1"));
    link("nested/chain3", &root.join("chain2"));
    link("../in_abs", &root.join("nested/chain3"));

    // Links that lead nowhere.
    link("loop2", &root.join("loop1"));
    link("loop1", &root.join("loop2"));
    link("self", &root.join("self"));
    link("missing", &root.join("dangling"));

    // Special files.
    mkfifo(&root.join("fifo"));
    link("fifo", &root.join("fifo_link"));
    drop(std::os::unix::net::UnixListener::bind(root.join("sock")).expect("bind a unix socket"));
    let has_device = rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("dev"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o644),
        rustix::fs::makedev(1, 3),
    )
    .is_ok();
    if !has_device {
        eprintln!("note: cannot create a device node here; the device case is skipped");
    }

    Tree {
        _tmp: tmp,
        base,
        root,
        outside,
        has_device,
    }
}

/// One request that must be refused, and how.
struct Refusal {
    path: String,
    code: Code,
    /// What the message must contain to name the path.
    names: String,
    /// What the message must contain to say why.
    reason: &'static str,
}

fn refusal(path: &str, code: Code, names: &str, reason: &'static str) -> Refusal {
    Refusal {
        path: path.to_string(),
        code,
        names: names.to_string(),
        reason,
    }
}

/// Every refusal of the sandbox section, with the code the contract names.
fn refusals(tree: &Tree) -> Vec<Refusal> {
    let denied = Code::PermissionDenied;
    let missing = Code::NotFound;
    let invalid = Code::InvalidArgument;
    let long_path = format!("{}/", "p".repeat(200)).repeat(21); // 4221 bytes
    let long_name = "n".repeat(256);
    let mut cases = vec![
        // `..` past the top, however spelled.
        refusal("../x", denied, "../x", OUTSIDE_REASON),
        refusal("a/../../x", denied, "../x", OUTSIDE_REASON),
        refusal("/..", denied, "..", OUTSIDE_REASON),
        refusal(
            "/../outside/secret",
            denied,
            "../outside/secret",
            OUTSIDE_REASON,
        ),
        refusal(
            "nested/../../outside/secret",
            denied,
            "../outside/secret",
            OUTSIDE_REASON,
        ),
        // `..` below a symlink is physical: nested/up is the root.
        refusal(
            "nested/up/../outside/secret",
            denied,
            "outside/secret",
            OUTSIDE_REASON,
        ),
        // Symlinked files and folders that lead out, at any depth.
        refusal("out_rel", denied, "out_rel", OUTSIDE_REASON),
        refusal("out_abs", denied, "out_abs", OUTSIDE_REASON),
        refusal("escape", denied, "escape", OUTSIDE_REASON),
        refusal("escape/secret", denied, "escape/secret", OUTSIDE_REASON),
        // No oracle for what exists outside.
        refusal("escape/missing", denied, "escape/missing", OUTSIDE_REASON),
        refusal(
            "escape_rel/secret",
            denied,
            "escape_rel/secret",
            OUTSIDE_REASON,
        ),
        refusal(
            "nested/escape_deep/secret",
            denied,
            "nested/escape_deep/secret",
            OUTSIDE_REASON,
        ),
        refusal(
            "dir_in/escape_deep/secret",
            denied,
            "dir_in/escape_deep/secret",
            OUTSIDE_REASON,
        ),
        refusal(
            "dir_in_abs/escape_deep",
            denied,
            "dir_in_abs/escape_deep",
            OUTSIDE_REASON,
        ),
        refusal("bad1", denied, "bad1", OUTSIDE_REASON),
        refusal("dangling_out", denied, "dangling_out", OUTSIDE_REASON),
        // Leaving the root and coming back in is still leaving it.
        refusal("outin", denied, "outin", OUTSIDE_REASON),
        // FIFOs, sockets and devices: refused, never opened.
        refusal("fifo", denied, "fifo", "a fifo is not a regular file"),
        refusal(
            "fifo_link",
            denied,
            "fifo_link",
            "a fifo is not a regular file",
        ),
        refusal("sock", denied, "sock", "a socket is not a regular file"),
        // Plain absence; percent-encoding is not decoded.
        refusal("missing", missing, "missing", "not found"),
        refusal("%2e%2e", missing, "%2e%2e", "not found"),
        refusal("%2e%2e/x", missing, "%2e%2e/x", "not found"),
        refusal("%2e%2e%2fx", missing, "%2e%2e%2fx", "not found"),
        refusal("...", missing, "...", "not found"),
        refusal("..\\x", missing, "..\\x", "not found"),
        refusal("dangling", missing, "dangling", "not found"),
        refusal(
            "nested/missing/deeper",
            missing,
            "nested/missing/deeper",
            "not found",
        ),
        // Longest name and path still accepted (then not found).
        refusal(&"n".repeat(255), missing, &"n".repeat(100), "not found"),
        refusal(
            &format!("{}/", "p".repeat(255)).repeat(16),
            missing,
            "pppp",
            "not found",
        ),
        // Unusable strings.
        refusal("", invalid, "", "invalid path: the path is empty"),
        refusal(
            "a\0b",
            invalid,
            "a\\0b",
            "invalid path: it contains a NUL byte",
        ),
        refusal(
            "/\0",
            invalid,
            "\\0",
            "invalid path: it contains a NUL byte",
        ),
        refusal(
            &long_path,
            invalid,
            "pppp",
            "invalid path: it is longer than 4096 bytes",
        ),
        refusal(
            &long_name,
            invalid,
            "nnnn",
            "invalid path: a name in it is longer than 255",
        ),
        // Symlink loops end the walk.
        refusal(
            "loop1",
            invalid,
            "loop1",
            "too many levels of symbolic links",
        ),
        refusal("self", invalid, "self", "too many levels of symbolic links"),
    ];
    if tree.has_device {
        cases.push(refusal(
            "dev",
            denied,
            "dev",
            "a character device is not a regular file",
        ));
    }
    cases
}

/// Fails the test if `fut` takes longer than [`REFUSAL_TIMEOUT`].
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(REFUSAL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {REFUSAL_TIMEOUT:?}"))
}

/// Reads `path` to its end: the bytes that arrived, and how the stream
/// ended (an error may come after some data).
async fn read_all(client: &Client, path: &str) -> (Vec<u8>, fetchd::Result<()>) {
    let mut data = Vec::new();
    let mut stream = match client.read(path, 0, None).await {
        Ok(stream) => stream,
        Err(err) => return (data, Err(err)),
    };
    loop {
        match stream.next().await {
            Ok(Some(ReadEvent::Data(bytes))) => data.extend_from_slice(&bytes),
            Ok(Some(_)) => {}
            Ok(None) => return (data, Ok(())),
            Err(err) => return (data, Err(err)),
        }
    }
}

/// The whole content of `path`, or the test fails.
async fn read_ok(client: &Client, path: &str) -> Vec<u8> {
    let (data, end) = bounded(path, read_all(client, path)).await;
    end.unwrap_or_else(|err| panic!("read {path:?}: {err}"));
    data
}

/// Every entry `List` gives for `path`.
async fn list_all(client: &Client, path: &str, recursive: bool) -> fetchd::Result<Vec<EntryInfo>> {
    let mut stream = client.list(path, recursive).await?;
    let mut entries = Vec::new();
    while let Some(entry) = stream.next().await? {
        entries.push(entry);
    }
    Ok(entries)
}

/// Asserts that `result` is the refusal `case` describes, with a message
/// that never shows the server's own paths.
fn assert_refusal<T: std::fmt::Debug>(
    verb: &str,
    case: &Refusal,
    tree: &Tree,
    result: fetchd::Result<T>,
) {
    let shown = printable(&case.path);
    let err = match result {
        Ok(value) => panic!("{verb} {shown}: expected {:?}, got {value:?}", case.code),
        Err(err) => err,
    };
    let message = err.to_string();
    assert_eq!(err.code(), case.code, "{verb} {shown}: {message}");
    assert!(
        message.contains(&case.names) && message.contains(case.reason),
        "{verb} {shown}: message {message:?} should name {:?} and say {:?}",
        case.names,
        case.reason
    );
    assert!(
        !message.contains(tree.base.to_str().expect("utf-8 tempdir")),
        "{verb} {shown}: message shows a host path: {message}"
    );
}

/// A path for assertion messages: short, control characters escaped.
fn printable(path: &str) -> String {
    let shown: String = path.chars().flat_map(char::escape_debug).collect();
    if shown.len() > 80 {
        format!("{}... ({} bytes)", &shown[..80], path.len())
    } else {
        format!("{shown:?}")
    }
}

/// Stat, Read and List each refuse every hostile path with the contract's
/// status code and a message naming the path and the reason.
#[tokio::test]
async fn every_refusal_has_the_contract_code_for_every_verb() {
    let tree = tree();
    let server = InProcessServer::serve(&tree.root);
    let client = server.client().await;
    for case in refusals(&tree) {
        let what = printable(&case.path);
        let stat = bounded(&what, client.stat(&case.path, false)).await;
        assert_refusal("stat", &case, &tree, stat);
        let stat = bounded(&what, client.stat(&case.path, true)).await;
        assert_refusal("stat --sha256", &case, &tree, stat);
        let (data, end) = bounded(&what, read_all(&client, &case.path)).await;
        assert!(
            data.is_empty(),
            "read {what}: data arrived before the refusal"
        );
        assert_refusal("read", &case, &tree, end);
        let list = bounded(&what, list_all(&client, &case.path, false)).await;
        assert_refusal("ls", &case, &tree, list);
        let list = bounded(&what, list_all(&client, &case.path, true)).await;
        assert_refusal("ls -r", &case, &tree, list);
    }
    // Nothing above disturbed the server.
    assert_eq!(read_ok(&client, "hello.txt").await, HELLO);
}

/// A leading `/` is the root itself: `/etc/passwd` is ROOT/etc/passwd.
#[tokio::test]
async fn leading_slash_names_the_root() {
    let tree = tree();
    let server = InProcessServer::serve(&tree.root);
    let client = server.client().await;
    for path in [
        "/etc/passwd",
        "etc/passwd",
        "//etc//./passwd",
        "/nested/../etc/passwd",
    ] {
        assert_eq!(read_ok(&client, path).await, PASSWD, "{path}");
        let stat = client.stat(path, false).await.expect(path);
        assert_eq!(stat.entry.size, PASSWD.len() as u64, "{path}");
    }
    for path in ["/", "/.", "nested/..", "nested/up", "dir_in/up"] {
        let stat = client.stat(path, false).await.expect(path);
        assert_eq!(stat.entry.kind, EntryKind::Dir, "{path}");
    }
}

/// Symlinks that stay inside are followed: relative, absolute by the
/// root's real path, to folders, chained, and through `..` inside.
#[tokio::test]
async fn symlinks_inside_the_root_are_followed() {
    let tree = tree();
    let server = InProcessServer::serve(&tree.root);
    let client = server.client().await;
    let cases: &[(&str, &[u8])] = &[
        ("in_rel", HELLO),
        ("in_abs", HELLO),
        ("chain1", HELLO),
        ("dir_in/deep.txt", DEEP),
        ("dir_in_abs/deep.txt", DEEP),
        ("nested/up/hello.txt", HELLO),
        ("nested/up/nested/up/etc/passwd", PASSWD),
        ("dir_in/up/in_abs", HELLO),
        ("/dir_in_abs/../hello.txt", HELLO),
    ];
    for (path, want) in cases {
        assert_eq!(read_ok(&client, path).await, *want, "{path}");
        let stat = client.stat(path, true).await.expect(path);
        assert_eq!(stat.entry.kind, EntryKind::File, "{path}");
        assert_eq!(stat.entry.size, want.len() as u64, "{path}");
    }
    let listed = list_all(&client, "dir_in_abs", false)
        .await
        .expect("ls dir_in_abs");
    let names: Vec<&str> = listed.iter().map(|entry| entry.path.as_str()).collect();
    assert!(names.contains(&"dir_in_abs/deep.txt"), "{names:?}");
}

/// A root given through a symlinked alias accepts absolute symlinks by the
/// alias and by the real path, and still refuses what leads out.
#[tokio::test]
async fn absolute_symlinks_match_the_given_and_the_real_root() {
    let tree = tree();
    let alias = tree.base.join("alias");
    link(&tree.root, &alias);
    link(alias.join("hello.txt"), &tree.root.join("via_alias"));
    link(
        alias.join("../outside/secret"),
        &tree.root.join("alias_escape"),
    );
    let server = InProcessServer::serve(&alias);
    let client = server.client().await;
    assert_eq!(read_ok(&client, "via_alias").await, HELLO);
    assert_eq!(read_ok(&client, "in_abs").await, HELLO);
    let case = refusal(
        "alias_escape",
        Code::PermissionDenied,
        "alias_escape",
        OUTSIDE_REASON,
    );
    assert_refusal(
        "read",
        &case,
        &tree,
        read_all(&client, "alias_escape").await.1,
    );
}

/// A directory is not a file to read: FAILED_PRECONDITION, "is a directory".
#[tokio::test]
async fn reading_a_directory_is_refused() {
    let tree = tree();
    let server = InProcessServer::serve(&tree.root);
    let client = server.client().await;
    for path in ["nested", "dir_in", "dir_in_abs", "/", "nested/up"] {
        let (data, end) = read_all(&client, path).await;
        assert!(data.is_empty());
        let err = end.expect_err(path);
        assert_eq!(err.code(), Code::FailedPrecondition, "{path}: {err}");
        assert!(err.to_string().contains("is a directory"), "{path}: {err}");
    }
}

/// A FIFO never hangs the server: stat, read and list of it (and many reads
/// at once) are refused quickly, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_is_refused_quickly_and_the_server_goes_on() {
    let tree = tree();
    let server = InProcessServer::serve(&tree.root);
    let client = server.client().await;
    let started = Instant::now();
    let reads: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { read_all(&client, "fifo").await })
        })
        .collect();
    for read in reads {
        let (data, end) = bounded("read fifo", read).await.expect("join");
        assert!(data.is_empty());
        assert_eq!(end.expect_err("fifo").code(), Code::PermissionDenied);
    }
    let stat = bounded("stat fifo", client.stat("fifo", true)).await;
    assert_eq!(stat.expect_err("fifo").code(), Code::PermissionDenied);
    let list = bounded("ls fifo", list_all(&client, "fifo", false)).await;
    assert_eq!(list.expect_err("fifo").code(), Code::PermissionDenied);
    assert!(
        started.elapsed() < REFUSAL_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(read_ok(&client, "hello.txt").await, HELLO);
}

/// `ls -r` of the root shows every symlink as a symlink and enters none:
/// nothing behind an escaping folder link is listed; special files are
/// left out.
#[tokio::test]
async fn recursive_listing_reports_symlinks_without_following() {
    let tree = tree();
    let server = InProcessServer::serve(&tree.root);
    let client = server.client().await;
    let entries = list_all(&client, "/", true).await.expect("ls -r /");
    let kind_of = |path: &str| {
        entries
            .iter()
            .find(|entry| entry.path == path)
            .map(|entry| entry.kind)
    };
    let links = ESCAPING_LINKS.iter().chain(&[
        "in_rel",
        "in_abs",
        "dir_in",
        "dir_in_abs",
        "nested/up",
        "chain1",
        "loop1",
        "self",
        "dangling",
        "fifo_link",
    ]);
    for path in links {
        assert_eq!(
            kind_of(path),
            Some(EntryKind::Symlink),
            "{path} in {entries:#?}"
        );
    }
    assert_eq!(kind_of("nested"), Some(EntryKind::Dir));
    assert_eq!(kind_of("nested/deep.txt"), Some(EntryKind::File));
    assert_eq!(kind_of("etc/passwd"), Some(EntryKind::File));
    for special in ["fifo", "sock", "dev"] {
        assert_eq!(kind_of(special), None, "{special} is listed");
    }
    for entry in &entries {
        let inside_a_link = [
            "escape/",
            "escape_rel/",
            "dir_in/",
            "dir_in_abs/",
            "nested/up/",
        ]
        .iter()
        .any(|link| entry.path.starts_with(link));
        assert!(
            !inside_a_link,
            "listing descended into a symlink: {entry:?}"
        );
        assert!(
            !entry.path.contains("secret"),
            "outside entry listed: {entry:?}"
        );
    }
}

/// Asserts that `fetchd get ARGS` in an empty folder fails with exit 1, one
/// stderr line naming `names` and saying `reason`, within the refusal
/// timeout, and leaves the folder empty.
fn assert_get_refused(server: &ServerProcess, args: &[&str], names: &str, reason: &str) {
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut argv = vec!["get"];
    argv.extend_from_slice(args);
    let started = Instant::now();
    let run = client(&server.url, cwd.path(), &argv);
    let took = started.elapsed();
    run.expect_code(1);
    assert!(took < REFUSAL_TIMEOUT, "took {took:?}\n{}", run.describe());
    let lines: Vec<&str> = run.stderr.lines().filter(|line| !line.is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one stderr line\n{}",
        run.describe()
    );
    assert!(
        lines[0].starts_with("fetchd: ") && lines[0].contains(names) && lines[0].contains(reason),
        "stderr should name {names:?} and say {reason:?}\n{}",
        run.describe()
    );
    assert!(!run.stderr.contains("outside secret"), "{}", run.describe());
    let left: Vec<_> = std::fs::read_dir(cwd.path())
        .expect("read cwd")
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect();
    assert!(
        left.is_empty(),
        "files appeared: {left:?}\n{}",
        run.describe()
    );
}

/// `fetchd get` of every hostile path the shell can pass: exit 1, one line
/// naming the path and the reason, no file written, and the server still
/// serves afterwards.
#[test]
fn cli_get_refuses_every_hostile_path() {
    let tree = tree();
    let server = ServerProcess::start(&tree.root, &[]);
    for case in refusals(&tree) {
        if case.path.contains('\0') {
            continue; // argv cannot carry a NUL byte; covered by the library test
        }
        let reason = match case.code {
            Code::PermissionDenied => "permission denied",
            Code::NotFound => "not found",
            _ => case.reason,
        };
        // `get /..` without -o has no file name to write to (a usage error).
        if case.path != "/.." {
            assert_get_refused(&server, &[&case.path], &case.names, reason);
        }
        assert_get_refused(&server, &["-o", "out.bin", &case.path], &case.names, reason);
    }
    assert_get_refused(&server, &["nested"], "nested", "is a directory");
    assert_get_refused(&server, &["dir_in"], "dir_in", "is a directory");
    assert_get_refused(
        &server,
        &["-o", "out", "/nested/up"],
        "nested/up",
        "is a directory",
    );

    let cwd = tempfile::tempdir().expect("tempdir");
    client(&server.url, cwd.path(), &["get", "hello.txt"]).expect_code(0);
    assert_eq!(
        std::fs::read(cwd.path().join("hello.txt")).expect("hello.txt"),
        HELLO
    );
}

/// `fetchd get /etc/passwd` fetches ROOT/etc/passwd, never the machine's.
#[test]
fn cli_get_leading_slash_is_the_root() {
    let tree = tree();
    let server = ServerProcess::start(&tree.root, &[]);
    let cwd = tempfile::tempdir().expect("tempdir");
    client(&server.url, cwd.path(), &["get", "/etc/passwd"]).expect_code(0);
    assert_eq!(
        std::fs::read(cwd.path().join("passwd")).expect("passwd"),
        PASSWD
    );
    client(&server.url, cwd.path(), &["get", "-o", "abs", "in_abs"]).expect_code(0);
    assert_eq!(std::fs::read(cwd.path().join("abs")).expect("abs"), HELLO);
}

/// `fetchd get` of a FIFO returns promptly with a refusal, and the same
/// server then serves a normal file.
#[test]
fn cli_get_fifo_returns_and_server_still_serves() {
    let tree = tree();
    let server = ServerProcess::start(&tree.root, &[]);
    for _ in 0..3 {
        assert_get_refused(&server, &["fifo"], "fifo", "permission denied");
    }
    let cwd = tempfile::tempdir().expect("tempdir");
    client(&server.url, cwd.path(), &["get", "nested/deep.txt"]).expect_code(0);
    assert_eq!(
        std::fs::read(cwd.path().join("deep.txt")).expect("deep.txt"),
        DEEP
    );
}

/// `fetchd ls` of an escaping folder link is refused; `ls -r /` prints
/// symlinks as `l` lines and nothing behind them.
#[test]
fn cli_ls_refuses_escapes_and_shows_links() {
    let tree = tree();
    let server = ServerProcess::start(&tree.root, &[]);
    let cwd = tempfile::tempdir().expect("tempdir");
    for path in [
        "escape",
        "escape_rel",
        "escape/secret",
        "nested/escape_deep",
        "fifo",
        "../",
    ] {
        for args in [vec!["ls", path], vec!["ls", "-r", path]] {
            let run = client(&server.url, cwd.path(), &args);
            run.expect_code(1).expect_stderr("permission denied");
            assert!(run.stdout.is_empty(), "{}", run.describe());
            assert_eq!(
                run.stderr.trim_end().lines().count(),
                1,
                "{}",
                run.describe()
            );
        }
    }
    let run = client(&server.url, cwd.path(), &["ls", "-r", "/"]);
    run.expect_code(0);
    let stdout = run.stdout_str();
    let letter_of = |path: &str| {
        stdout.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.len() == 4 && fields[3] == path).then(|| fields[0].to_string())
        })
    };
    for path in ESCAPING_LINKS
        .iter()
        .chain(&["in_abs", "dir_in", "nested/up"])
    {
        assert_eq!(
            letter_of(path).as_deref(),
            Some("l"),
            "{path}\n{}",
            run.describe()
        );
    }
    assert_eq!(
        letter_of("nested").as_deref(),
        Some("d"),
        "{}",
        run.describe()
    );
    for line in stdout.lines() {
        assert!(
            !line.contains("escape/") && !line.contains("dir_in/") && !line.contains("secret"),
            "listed through a symlink: {line}\n{}",
            run.describe()
        );
    }
}

/// A thread that changes the tree until dropped (also when the test fails,
/// so it never outlives the tree).
struct Meddler {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Meddler {
    /// Runs `step` in a loop until stopped; each call is one change.
    fn start(mut step: impl FnMut() + Send + 'static) -> Meddler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut changes = 0;
            while !stopped.load(Ordering::Relaxed) {
                step();
                changes += 1;
            }
            changes
        });
        Meddler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread; returns how many changes it made.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread.join().expect("the meddling thread failed")
    }
}

impl Drop for Meddler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Flips the symlink `link` through `targets`, each time renaming a freshly
/// made symlink over it (so `link` always exists).
fn flip_symlink(link: PathBuf, targets: Vec<PathBuf>) -> Meddler {
    let staging = link.with_file_name(".flip.tmp");
    let mut next = targets.into_iter().cycle();
    Meddler::start(move || {
        let target = next.next().expect("targets");
        let _ = std::fs::remove_file(&staging);
        symlink(&target, &staging).expect("staging symlink");
        std::fs::rename(&staging, &link).expect("rename over the link");
    })
}

/// Swaps `a` and `b` atomically (renameat2 RENAME_EXCHANGE) again and again.
fn exchange_repeatedly(a: PathBuf, b: PathBuf) -> Meddler {
    Meddler::start(move || {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &a,
            rustix::fs::CWD,
            &b,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .expect("RENAME_EXCHANGE");
    })
}

/// What a race test saw.
#[derive(Debug, Default)]
struct RaceTally {
    /// Requests answered, from inside.
    served_inside: usize,
    /// Requests refused, by code.
    refused: Vec<(Code, usize)>,
}

impl RaceTally {
    fn count_refusal(&mut self, code: Code) {
        match self.refused.iter_mut().find(|(seen, _)| *seen == code) {
            Some((_, count)) => *count += 1,
            None => self.refused.push((code, 1)),
        }
    }
}

/// Reads a tail of `path` until it ends or `deadline`; returns the bytes
/// it delivered and how it ended.
async fn tail_until(
    client: &Client,
    path: &str,
    follow: bool,
    deadline: Instant,
) -> (Vec<u8>, fetchd::Result<()>) {
    let mut data = Vec::new();
    let mut stream = match client.tail(path, TailStart::LastLines(10), follow).await {
        Ok(stream) => stream,
        Err(err) => return (data, Err(err)),
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Err(_) | Ok(Ok(None)) => return (data, Ok(())),
            Ok(Ok(Some(TailEvent::Data { data: bytes, .. }))) => data.extend_from_slice(&bytes),
            Ok(Ok(Some(TailEvent::Notice { .. }))) => {}
            Ok(Err(err)) => return (data, Err(err)),
        }
    }
}

/// Asserts that tail output holds nothing from outside the root.
fn assert_tail_inside(path: &str, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    assert!(
        !text.contains("OUTSIDE") && !text.contains("secret"),
        "tail {path} delivered bytes from outside: {text:?}"
    );
}

/// Reads, stats, lists and tails `path` (whose parent folder is being
/// swapped) while another thread swaps, with a following tail open on it
/// all along; fails on anything from outside.
async fn hammer(
    client: &Client,
    path: &str,
    folder: &str,
    tree: &Tree,
    allowed: &[Code],
) -> RaceTally {
    let outside_inode = std::fs::metadata(tree.outside.join("file"))
        .expect("outside file")
        .ino();
    let mut tally = RaceTally::default();
    let deadline = Instant::now() + RACE_DURATION;
    // A follow tail re-resolves the path on every event in its folder; the
    // swaps make plenty.
    let follower = {
        let client = client.clone();
        let path = path.to_string();
        tokio::spawn(async move { tail_until(&client, &path, true, deadline).await })
    };
    let refused = |err: fetchd::Error, what: &str| {
        assert!(
            allowed.contains(&err.code()),
            "{what}: unexpected refusal {:?}: {err}",
            err.code()
        );
        err.code()
    };
    for round in 0..RACE_MAX_REQUESTS {
        if Instant::now() >= deadline {
            break;
        }
        match round % 4 {
            0 => {
                let (data, end) = bounded(path, read_all(client, path)).await;
                assert!(
                    data.is_empty() || data == INSIDE_FILE,
                    "read {path} returned {:?}",
                    String::from_utf8_lossy(&data)
                );
                match end {
                    Ok(()) => tally.served_inside += 1,
                    Err(err) => tally.count_refusal(refused(err, "read")),
                }
            }
            1 => match bounded(path, client.stat(path, false)).await {
                Ok(stat) => {
                    let version = stat.version.expect("a file has a version");
                    assert_ne!(version.inode, outside_inode, "stat {path} reached outside");
                    assert_eq!(stat.entry.size, INSIDE_FILE.len() as u64);
                    tally.served_inside += 1;
                }
                Err(err) => tally.count_refusal(refused(err, "stat")),
            },
            3 => {
                let (data, end) = bounded(
                    path,
                    tail_until(client, path, false, Instant::now() + REFUSAL_TIMEOUT),
                )
                .await;
                assert_tail_inside(path, &data);
                assert!(
                    data.is_empty() || data == INSIDE_FILE,
                    "tail {path} returned {:?}",
                    String::from_utf8_lossy(&data)
                );
                match end {
                    Ok(()) => tally.served_inside += 1,
                    Err(err) => tally.count_refusal(refused(err, "tail")),
                }
            }
            _ => match bounded(folder, list_all(client, folder, true)).await {
                Ok(entries) => {
                    for entry in &entries {
                        assert!(
                            !entry.path.ends_with("secret"),
                            "ls {folder} listed an outside entry: {entry:?}"
                        );
                    }
                    tally.served_inside += 1;
                }
                Err(err) => tally.count_refusal(refused(err, "ls")),
            },
        }
    }
    let (followed, _) = follower.await.expect("the follow tail task");
    assert_tail_inside(path, &followed);
    tally
}

/// A folder symlink flipped between inside and outside while requests go
/// through it: no request ever reaches the outside file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_flipping_a_folder_symlink_never_escapes() {
    let tree = tree();
    let flip = tree.root.join("flip");
    link("inside", &flip);
    let flipper = flip_symlink(
        flip,
        vec![
            PathBuf::from("inside"),
            tree.outside.clone(),
            tree.root.join("inside"),
            PathBuf::from("../outside"),
        ],
    );
    let server = InProcessServer::serve(&tree.root);
    let client = server.client().await;
    let allowed = [Code::PermissionDenied, Code::Aborted];
    let tally = hammer(&client, "flip/file", "flip", &tree, &allowed).await;
    let flips = flipper.stop();
    eprintln!("{flips} flips; {tally:?}");
    assert!(flips > 10, "the link hardly flipped");
    assert!(
        tally.served_inside > 0,
        "nothing was ever served: {tally:?}"
    );
}

/// A real folder atomically exchanged with a symlink to an outside folder
/// (the kernel-level race a path-string resolver loses): never escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_exchanging_a_folder_with_an_escaping_link_never_escapes() {
    let tree = tree();
    let folder = tree.root.join("swap");
    write(&folder.join("file"), INSIDE_FILE);
    let alternate = tree.root.join(".swap_alt");
    link(&tree.outside, &alternate);
    let swapper = exchange_repeatedly(folder, alternate);
    let server = InProcessServer::serve(&tree.root);
    let client = server.client().await;
    let allowed = [Code::PermissionDenied, Code::Aborted];
    let tally = hammer(&client, "swap/file", "swap", &tree, &allowed).await;
    let swaps = swapper.stop();
    eprintln!("{swaps} swaps; {tally:?}");
    assert!(
        tally.served_inside > 0,
        "nothing was ever served: {tally:?}"
    );
}

/// A regular file atomically exchanged with a symlink to an outside file:
/// never escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_exchanging_a_file_with_an_escaping_link_never_escapes() {
    let tree = tree();
    let file = tree.root.join("inside/swapfile");
    write(&file, INSIDE_FILE);
    let alternate = tree.root.join("inside/.swapfile_alt");
    link(tree.outside.join("file"), &alternate);
    let swapper = exchange_repeatedly(file, alternate);
    let server = InProcessServer::serve(&tree.root);
    let client = server.client().await;
    let allowed = [Code::PermissionDenied, Code::Aborted];
    let tally = hammer(&client, "inside/swapfile", "inside", &tree, &allowed).await;
    let swaps = swapper.stop();
    eprintln!("{swaps} swaps; {tally:?}");
    assert!(
        tally.served_inside > 0,
        "nothing was ever served: {tally:?}"
    );
}
