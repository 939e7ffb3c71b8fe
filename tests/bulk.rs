//! Bulk downloads: several paths, `-r`, `--from-file`, `-j`, JSON lines,
//! skip-on-rerun and per-file failures, through the real binary.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use common::*;

/// A tree of `small` small files in nested folders, a few large files and
/// an empty folder; returns path -> content.
fn make_tree(root: &Path, small: usize) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..small {
        let path = format!("d{}/s{}/f{i}.txt", i % 7, i % 13);
        files.insert(path, random_bytes(1 + (i * 37) % 4096, i as u64));
    }
    for i in 0..3 {
        files.insert(
            format!("large/big{i}.bin"),
            random_bytes((3 << 20) + i * 1000, 900 + i as u64),
        );
    }
    for (path, data) in &files {
        let full = root.join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, data).unwrap();
    }
    fs::create_dir_all(root.join("empty/inner")).unwrap();
    files
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line:?}: {err}")))
        .collect()
}

/// `get -r / -o OUT` reproduces a 2,000-file tree exactly (empty folders
/// too), one JSON line per file; a rerun skips every file.
#[test]
fn recursive_tree_and_rerun_skips() {
    let root = tempfile::tempdir().unwrap();
    let files = make_tree(root.path(), 2000);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();

    let run = client(
        &server.url,
        cwd.path(),
        &["get", "-r", "/", "-o", "out", "--json", "-j", "16"],
    );
    run.expect_code(0);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), files.len(), "one line per file");
    for line in &lines {
        assert_eq!(line["status"], "ok", "{line}");
        let path = line["path"].as_str().unwrap();
        let data = &files[path];
        assert_eq!(line["bytes"], data.len());
        assert_eq!(line["sha256"], sha256_hex(data));
        assert_eq!(line["dest"], format!("out/{path}"));
    }
    for (path, data) in &files {
        let got = fs::read(cwd.path().join("out").join(path)).unwrap();
        assert!(got == *data, "{path} differs");
    }
    assert!(
        cwd.path().join("out/empty/inner").is_dir(),
        "empty folders are kept"
    );
    run.expect_stderr(&format!(
        "{} files ({} downloaded, 0 skipped, 0 failed)",
        files.len(),
        files.len()
    ));

    let rerun = client(
        &server.url,
        cwd.path(),
        &["get", "-r", "/", "-o", "out", "--json"],
    );
    rerun.expect_code(0);
    let lines = json_lines(&rerun.stdout);
    assert_eq!(lines.len(), files.len());
    assert!(
        lines.iter().all(|line| line["status"] == "skipped"),
        "{}",
        rerun.describe()
    );
}

/// `-r DIR` without -o lands in ./BASENAME-of-DIR, `DIR/a/b` at `BASE/a/b`.
#[test]
fn recursive_default_output_is_basename() {
    let root = tempfile::tempdir().unwrap();
    let files = make_tree(root.path(), 40);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    client(&server.url, cwd.path(), &["get", "-r", "d3"]).expect_code(0);
    for (path, data) in files.iter().filter(|(p, _)| p.starts_with("d3/")) {
        let got = fs::read(cwd.path().join(path)).unwrap();
        assert!(got == *data, "{path}");
    }
    assert!(!cwd.path().join("d0").exists());
}

/// `-r` on a file is a plain `get` of it: ./BASENAME, or BASENAME in an
/// `-o DIR/` that already holds files (the listing that goes out with the
/// `Stat` then asks for digests, and is dropped); the folder's other files
/// stay as they were.
#[test]
fn recursive_get_of_a_file_is_a_plain_get() {
    let root = tempfile::tempdir().unwrap();
    let files = make_tree(root.path(), 20);
    let (path, data) = files.iter().find(|(p, _)| p.starts_with("large/")).unwrap();
    let name = path.rsplit('/').next().unwrap();
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    client(&server.url, cwd.path(), &["get", "-r", path]).expect_code(0);
    assert!(fs::read(cwd.path().join(name)).unwrap() == *data);
    fs::create_dir(cwd.path().join("out")).unwrap();
    fs::write(cwd.path().join("out/other.txt"), b"mine\n").unwrap();
    client(&server.url, cwd.path(), &["get", "-r", path, "-o", "out/"]).expect_code(0);
    assert!(fs::read(cwd.path().join("out").join(name)).unwrap() == *data);
    assert_eq!(
        fs::read(cwd.path().join("out/other.txt")).unwrap(),
        b"mine\n"
    );
    assert!(!cwd.path().join("out/large").exists());
}

/// A list of 300 paths with 3 missing: 297 correct files, 3 error lines
/// (JSON and stderr), exit 1.
#[test]
fn from_file_with_missing_paths() {
    let root = tempfile::tempdir().unwrap();
    let files = make_tree(root.path(), 400);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let mut wanted: Vec<String> = files.keys().take(297).cloned().collect();
    wanted.insert(10, "missing/one.txt".into());
    wanted.insert(100, "missing/two.txt".into());
    wanted.push("/missing/three.txt".into());
    let mut list = String::from("# artifacts to fetch\n\n");
    for path in &wanted {
        list.push_str(path);
        list.push('\n');
    }
    fs::write(cwd.path().join("list.txt"), list).unwrap();

    let run = client(
        &server.url,
        cwd.path(),
        &["get", "--from-file", "list.txt", "-o", "dl", "--json"],
    );
    run.expect_code(1);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 300);
    let errors: Vec<_> = lines.iter().filter(|l| l["status"] == "error").collect();
    assert_eq!(errors.len(), 3, "{}", run.describe());
    for error in &errors {
        assert!(error["path"].as_str().unwrap().starts_with("missing/"));
        assert_eq!(error["error"], "not found");
        assert!(error["bytes"].is_null() && error["sha256"].is_null());
    }
    let stderr_errors = run
        .stderr
        .lines()
        .filter(|l| l.contains("not found"))
        .count();
    assert_eq!(stderr_errors, 3, "{}", run.describe());
    for path in files.keys().take(297) {
        assert!(fs::read(cwd.path().join("dl").join(path)).unwrap() == files[path]);
    }
    assert!(
        !cwd.path().join("dl/missing").exists()
            || fs::read_dir(cwd.path().join("dl/missing")).unwrap().count() == 0
    );
}

/// `--from-file -` reads the list from stdin; several PATHs land at
/// OUT/PATH so equal names never collide.
#[test]
fn from_stdin_and_same_names() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("x")).unwrap();
    fs::create_dir_all(root.path().join("y")).unwrap();
    fs::write(root.path().join("x/app.log"), b"from x\n").unwrap();
    fs::write(root.path().join("y/app.log"), b"from y\n").unwrap();
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();

    let mut child = fetchd()
        .current_dir(cwd.path())
        .args([
            "--server",
            &server.url,
            "get",
            "--from-file",
            "-",
            "-o",
            "logs",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"x/app.log\n  y/app.log  \n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        fs::read(cwd.path().join("logs/x/app.log")).unwrap(),
        b"from x\n"
    );
    assert_eq!(
        fs::read(cwd.path().join("logs/y/app.log")).unwrap(),
        b"from y\n"
    );

    client(&server.url, cwd.path(), &["get", "x/app.log", "y/app.log"]).expect_code(0);
    assert_eq!(fs::read(cwd.path().join("x/app.log")).unwrap(), b"from x\n");
    assert_eq!(fs::read(cwd.path().join("y/app.log")).unwrap(), b"from y\n");
}

/// A symlink inside the output folder is never written through.
#[test]
fn output_symlink_is_refused() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("sub")).unwrap();
    fs::write(root.path().join("sub/file.txt"), b"data").unwrap();
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    fs::create_dir_all(cwd.path().join("out")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), cwd.path().join("out/sub")).unwrap();
    let run = client(&server.url, cwd.path(), &["get", "-r", "/", "-o", "out"]);
    run.expect_code(1).expect_stderr("symlink");
    assert_eq!(
        fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
}

/// Usage errors: -o - with several files, -j 0.
#[test]
fn bulk_usage_errors() {
    let cwd = tempfile::tempdir().unwrap();
    run_in(cwd.path(), fetchd().args(["get", "a", "b", "-o", "-"])).expect_code(2);
    run_in(cwd.path(), fetchd().args(["get", "a", "-j", "0"])).expect_code(2);
}

/// `ReadMany` answers every path once, in request order: whole files with
/// their digest, per-file errors with the codes `Read` gives (the call goes
/// on after them), `too_large` above the asked size, and nothing from
/// outside the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_many_answers_each_path_in_order() {
    use fetchd::ManyResult;
    use tonic::Code;

    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"outside").unwrap();
    fs::create_dir_all(root.path().join("dir")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("escape")).unwrap();
    let small = random_bytes(5000, 1);
    let big = random_bytes(300_000, 2);
    fs::write(root.path().join("dir/small"), &small).unwrap();
    fs::write(root.path().join("big"), &big).unwrap();
    fs::write(root.path().join("empty"), b"").unwrap();

    let server = InProcessServer::serve(root.path());
    let client = server.client().await;
    let paths = [
        "dir/small",
        "missing",
        "dir",
        "../x",
        "escape",
        "big",
        "empty",
        "/dir/small",
    ];
    let mut stream = client
        .read_many(paths.iter().map(|p| p.to_string()).collect(), 100_000)
        .await
        .unwrap();
    let mut answers = Vec::new();
    while let Some(batch) = stream.next().await.unwrap() {
        answers.extend(batch);
    }
    let indexes: Vec<usize> = answers.iter().map(|(index, _)| *index).collect();
    assert_eq!(indexes, (0..paths.len()).collect::<Vec<_>>());

    let file = |index: usize, expected: &[u8]| match &answers[index].1 {
        ManyResult::File {
            entry,
            data,
            sha256,
        } => {
            assert_eq!(data.as_ref(), expected, "{}", paths[index]);
            assert_eq!(entry.size, expected.len() as u64);
            assert_eq!(sha256.to_hex(), sha256_hex(expected));
        }
        other => panic!("{}: {other:?}", paths[index]),
    };
    let failed = |index: usize, code: Code| match &answers[index].1 {
        ManyResult::Failed(err) => assert_eq!(err.code(), code, "{}: {err}", paths[index]),
        other => panic!("{}: {other:?}", paths[index]),
    };
    file(0, &small);
    failed(1, Code::NotFound);
    failed(2, Code::FailedPrecondition);
    failed(3, Code::PermissionDenied);
    failed(4, Code::PermissionDenied);
    assert!(matches!(answers[5].1, ManyResult::TooLarge(300_000)));
    file(6, b"");
    file(7, &small);
}

/// A batch over the binary with the server's small files, a large one and
/// an existing part file: every file arrives whole, the part file is
/// resumed by the single-file path, and no part file is left behind.
#[test]
fn batched_and_single_paths_mix() {
    let root = tempfile::tempdir().unwrap();
    let files = make_tree(root.path(), 300);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let out = cwd.path().join("out");
    fs::create_dir_all(out.join("large")).unwrap();
    let big = &files["large/big0.bin"];
    fs::write(out.join("large/big0.bin.part"), &big[..1 << 20]).unwrap();

    client(
        &server.url,
        cwd.path(),
        &["get", "-r", "/", "-o", "out", "--quiet"],
    )
    .expect_code(0);
    for (path, data) in &files {
        assert_eq!(&fs::read(out.join(path)).unwrap(), data, "{path}");
    }
    let leftovers: Vec<_> = walk(&out)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "part"))
        .collect();
    assert!(leftovers.is_empty(), "part files left: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// `-j` far above 256 is accepted and gets every file: 5,000 small files
/// with `-j 1000` are over 300 batched calls, of which the client runs at
/// most 256 at once (the server's default per-connection call limit).
#[test]
fn jobs_far_above_the_call_limit() {
    let root = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    for i in 0..5000 {
        let path = format!("d{}/f{i}.txt", i % 10);
        let data = format!("file {i}\n").into_bytes();
        fs::create_dir_all(root.path().join(format!("d{}", i % 10))).unwrap();
        fs::write(root.path().join(&path), &data).unwrap();
        files.insert(path, data);
    }
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    client(
        &server.url,
        cwd.path(),
        &["get", "-r", "/", "-o", "out", "--quiet", "-j", "1000"],
    )
    .expect_code(0);
    let out = cwd.path().join("out");
    for (path, data) in &files {
        assert_eq!(&fs::read(out.join(path)).unwrap(), data, "{path}");
    }
}
