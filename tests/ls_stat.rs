//! `fetchd ls` and `fetchd stat` through the real binary.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::time::{Duration, UNIX_EPOCH};

use common::*;

fn sample_tree() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("logs/old")).unwrap();
    fs::create_dir(root.path().join("empty")).unwrap();
    fs::write(root.path().join("logs/app.log"), vec![b'x'; 4096]).unwrap();
    fs::write(root.path().join("logs/old/app.log.1"), b"old\n").unwrap();
    fs::write(root.path().join("top.txt"), b"top\n").unwrap();
    std::os::unix::fs::symlink("logs", root.path().join("link")).unwrap();
    // A fixed mtime, to check the exact formatting.
    let when = UNIX_EPOCH + Duration::from_secs(1_795_482_123);
    fs::File::options()
        .write(true)
        .open(root.path().join("logs/app.log"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    root
}

/// `ls` lines are `TYPE SIZE MTIME PATH`, paths below the root, sorted.
#[test]
fn ls_root_and_folder() {
    let root = sample_tree();
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();

    let run = client(&server.url, cwd.path(), &["ls"]);
    run.expect_code(0);
    let lines: Vec<String> = run.stdout_str().lines().map(String::from).collect();
    let kinds_and_paths: Vec<(String, String)> = lines
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 4, "{line}");
            (fields[0].to_string(), fields[3].to_string())
        })
        .collect();
    assert_eq!(
        kinds_and_paths,
        [
            ("d", "empty"),
            ("l", "link"),
            ("d", "logs"),
            ("f", "top.txt")
        ]
        .map(|(k, p)| (k.to_string(), p.to_string()))
    );

    let run = client(&server.url, cwd.path(), &["ls", "logs"]);
    run.expect_code(0);
    assert!(
        run.stdout_str()
            .lines()
            .any(|line| line == "f 4096 2026-11-24T01:02:03Z logs/app.log"),
        "{}",
        run.describe()
    );

    // A leading / is the root itself.
    let slash = client(&server.url, cwd.path(), &["ls", "/logs"]);
    assert_eq!(slash.stdout, run.stdout);
}

/// `ls -r` walks the tree depth first, lists symlinks as `l` without
/// entering them, and includes empty folders.
#[test]
fn ls_recursive() {
    let root = sample_tree();
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let run = client(&server.url, cwd.path(), &["ls", "-r"]);
    run.expect_code(0);
    let paths: Vec<String> = run
        .stdout_str()
        .lines()
        .map(|line| line.rsplit(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "empty",
            "link",
            "logs",
            "logs/app.log",
            "logs/old",
            "logs/old/app.log.1",
            "top.txt"
        ]
    );
}

/// `ls --json` gives one parseable object per entry with the four fields.
#[test]
fn ls_json() {
    let root = sample_tree();
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let run = client(&server.url, cwd.path(), &["ls", "-r", "--json", "logs"]);
    run.expect_code(0);
    let objects: Vec<serde_json::Value> = run
        .stdout_str()
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(objects.len(), 3);
    assert_eq!(objects[0]["path"], "logs/app.log");
    assert_eq!(objects[0]["type"], "file");
    assert_eq!(objects[0]["size"], 4096);
    assert_eq!(objects[0]["mtime"], "2026-11-24T01:02:03Z");
    assert_eq!(objects[1]["type"], "dir");
    for object in &objects {
        let keys: Vec<&String> = object.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["mtime", "path", "size", "type"]);
    }
}

/// `ls` of a file shows that file; of nothing, exit 1 and `not found`.
#[test]
fn ls_file_and_missing() {
    let root = sample_tree();
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let run = client(&server.url, cwd.path(), &["ls", "top.txt"]);
    run.expect_code(0);
    assert!(run.stdout_str().starts_with("f 4 "), "{}", run.describe());
    assert!(run.stdout_str().trim_end().ends_with(" top.txt"));

    client(&server.url, cwd.path(), &["ls", "nope"])
        .expect_code(1)
        .expect_stderr("nope: not found");
}

/// `stat` reports type, size and (on request) the sha256 the file has.
#[test]
fn stat_text_and_json() {
    let root = sample_tree();
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let run = client(&server.url, cwd.path(), &["stat", "--sha256", "top.txt"]);
    run.expect_code(0);
    let text = run.stdout_str();
    assert!(text.contains("type: file\n"), "{text}");
    assert!(text.contains("size: 4\n"), "{text}");
    assert!(
        text.contains(&format!("sha256: {}\n", sha256_hex(b"top\n"))),
        "{text}"
    );

    let run = client(&server.url, cwd.path(), &["stat", "--json", "logs"]);
    run.expect_code(0);
    let value: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(value["type"], "dir");
    assert_eq!(value["path"], "logs");
    assert!(value["sha256"].is_null());

    client(&server.url, cwd.path(), &["stat", "gone"])
        .expect_code(1)
        .expect_stderr("gone: not found");
}

/// With several servers, `ls` and `stat` ask the first that answers, in
/// the order given: a dead first server is passed over. The servers come
/// from repeated `--server`, from a comma list in `FETCHD_SERVER`, or from
/// `--servers-file` (comments and blank lines skipped).
#[test]
fn ls_and_stat_ask_the_first_server_that_answers() {
    let root = sample_tree();
    let live = ServerProcess::start(root.path(), &[]);
    let mut gone = ServerProcess::start(root.path(), &[]);
    let dead_url = gone.url.clone();
    gone.kill();
    let cwd = tempfile::tempdir().unwrap();

    let run = run_in(
        cwd.path(),
        fetchd().args(["--server", &dead_url, "--server", &live.url, "ls", "logs"]),
    );
    run.expect_code(0);
    assert!(
        run.stdout_str().contains("logs/app.log"),
        "{}",
        run.describe()
    );

    let run = run_in(
        cwd.path(),
        fetchd()
            .env("FETCHD_SERVER", format!("{dead_url},{}", live.url))
            .args(["stat", "top.txt", "--json"]),
    );
    run.expect_code(0);
    let stat: serde_json::Value = serde_json::from_str(run.stdout_str().trim()).unwrap();
    assert_eq!(stat["size"], 4, "{}", run.describe());

    let list = cwd.path().join("servers");
    fs::write(
        &list,
        format!(
            "# the fleet\n\ndown={dead_url}   # SIGKILLed\nup={}\n",
            live.url
        ),
    )
    .unwrap();
    let run = run_in(
        cwd.path(),
        fetchd().args(["ls", "--servers-file", list.to_str().unwrap()]),
    );
    run.expect_code(0);
    assert!(run.stdout_str().contains("top.txt"), "{}", run.describe());

    // Every server dead: the last failure, exit 1.
    let run = run_in(
        cwd.path(),
        fetchd().args(["--server", &dead_url, "--server", &dead_url, "ls"]),
    );
    run.expect_code(1);

    // get treats them as replicas: the dead one is left out, with a
    // notice naming it, and the live one delivers.
    let run = run_in(
        cwd.path(),
        fetchd().args([
            "--server", &dead_url, "--server", &live.url, "get", "top.txt",
        ]),
    );
    run.expect_code(0).expect_stderr("left out");
    assert!(cwd.path().join("top.txt").exists());
}
