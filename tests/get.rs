//! `fetchd get` for one path, end to end through the real binary: bytes,
//! destinations, verification, resume, skip, and what survives failures.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

const CHUNK: usize = fetchd::CHUNK_BYTES;

fn tree_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (name, data) in files {
        let path = root.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    root
}

fn part_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Sizes 0, 1 and around every chunk boundary arrive byte for byte.
#[test]
fn sizes_around_chunk_boundaries() {
    let sizes = [
        0,
        1,
        2,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * CHUNK - 1,
        2 * CHUNK,
        2 * CHUNK + 1,
        5 * CHUNK + 7,
    ];
    let root = tempfile::tempdir().unwrap();
    for (i, size) in sizes.iter().enumerate() {
        fs::write(
            root.path().join(format!("f{size}")),
            random_bytes(*size, i as u64),
        )
        .unwrap();
    }
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    for size in sizes {
        let name = format!("f{size}");
        client(&server.url, cwd.path(), &["get", &name]).expect_code(0);
        let got = fs::read(cwd.path().join(&name)).unwrap();
        let want = fs::read(root.path().join(&name)).unwrap();
        assert_eq!(got.len(), size, "{name}");
        assert!(got == want, "{name}: content differs");
        assert!(!cwd.path().join(format!("{name}.part")).exists());
    }
}

/// A 64 MiB random file arrives intact, and --json reports its sha256.
#[test]
fn large_random_file_with_json() {
    let data = random_bytes(64 << 20, 64);
    let root = tree_with(&[("big.bin", &data)]);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let run = client(&server.url, cwd.path(), &["get", "/big.bin", "--json"]);
    run.expect_code(0);
    let line: serde_json::Value = serde_json::from_slice(&run.stdout).expect("one JSON line");
    assert_eq!(line["path"], "big.bin");
    assert_eq!(line["dest"], "big.bin");
    assert_eq!(line["bytes"], 64 << 20);
    assert_eq!(line["status"], "ok");
    assert_eq!(line["sha256"], sha256_hex(&data));
    assert!(line.get("error").is_none());
    assert!(fs::read(cwd.path().join("big.bin")).unwrap() == data);
}

/// Every -o form: FILE, DIR/ (created), an existing DIR, and - (stdout).
#[test]
fn output_forms() {
    let data = random_bytes(3 * CHUNK + 5, 7);
    let root = tree_with(&[("a/b/file.bin", &data)]);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();

    client(
        &server.url,
        cwd.path(),
        &["get", "a/b/file.bin", "-o", "named.bin"],
    )
    .expect_code(0);
    assert!(fs::read(cwd.path().join("named.bin")).unwrap() == data);

    client(
        &server.url,
        cwd.path(),
        &["get", "a/b/file.bin", "-o", "new/dir/"],
    )
    .expect_code(0);
    assert!(fs::read(cwd.path().join("new/dir/file.bin")).unwrap() == data);

    fs::create_dir(cwd.path().join("existing")).unwrap();
    client(
        &server.url,
        cwd.path(),
        &["get", "a/b/file.bin", "-o", "existing"],
    )
    .expect_code(0);
    assert!(fs::read(cwd.path().join("existing/file.bin")).unwrap() == data);

    let run = client(&server.url, cwd.path(), &["get", "a/b/file.bin", "-o", "-"]);
    run.expect_code(0);
    assert!(run.stdout == data, "stdout carries exactly the file");
    assert!(!cwd.path().join("-").exists());
}

/// Client options are accepted after the verb and from the environment.
#[test]
fn server_option_positions_and_env() {
    let root = tree_with(&[("x.txt", b"x\n")]);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    run_in(
        cwd.path(),
        fetchd().args(["get", "--server", &server.url, "x.txt", "-o", "one"]),
    )
    .expect_code(0);
    run_in(
        cwd.path(),
        fetchd()
            .env("FETCHD_SERVER", &server.url)
            .args(["get", "x.txt", "-o", "two"]),
    )
    .expect_code(0);
    assert_eq!(fs::read(cwd.path().join("one")).unwrap(), b"x\n");
    assert_eq!(fs::read(cwd.path().join("two")).unwrap(), b"x\n");
}

/// Not found and a directory without -r: exit 1, one line naming the
/// path and the reason, nothing written.
#[test]
fn not_found_and_directory() {
    let root = tree_with(&[("dir/inner.txt", b"inner")]);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();

    let run = client(&server.url, cwd.path(), &["get", "missing.txt"]);
    run.expect_code(1).expect_stderr("missing.txt: not found");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.describe());

    let run = client(&server.url, cwd.path(), &["get", "dir"]);
    run.expect_code(1)
        .expect_stderr("dir: is a directory (use -r to fetch a tree)");

    let run = client(&server.url, cwd.path(), &["get", "missing.txt", "--json"]);
    run.expect_code(1);
    let line: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(line["status"], "error");
    assert_eq!(line["error"], "not found");
    assert!(line["sha256"].is_null() && line["bytes"].is_null());

    assert_eq!(
        fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

/// Usage errors exit 2; an unreachable server exits 1 and says so.
#[test]
fn usage_and_unreachable() {
    let cwd = tempfile::tempdir().unwrap();
    run_in(cwd.path(), fetchd().arg("get")).expect_code(2);
    run_in(cwd.path(), fetchd().args(["get", "x", "--bogus"])).expect_code(2);
    // Port 1 on loopback: nothing listens there.
    client("http://127.0.0.1:1", cwd.path(), &["get", "x"])
        .expect_code(1)
        .expect_stderr("cannot reach the server at http://127.0.0.1:1");
}

/// A DEST that already matches is skipped without a transfer; --force
/// fetches it again.
#[test]
fn skip_if_identical_and_force() {
    let data = random_bytes(CHUNK * 2 + 3, 9);
    let root = tree_with(&[("same.bin", &data)]);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    client(&server.url, cwd.path(), &["get", "same.bin"]).expect_code(0);
    let dest = cwd.path().join("same.bin");
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&dest).unwrap());

    let run = client(&server.url, cwd.path(), &["get", "same.bin", "--json"]);
    run.expect_code(0);
    let line: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(line["status"], "skipped");
    assert_eq!(line["sha256"], sha256_hex(&data));
    let after = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&dest).unwrap());
    assert_eq!(inode, after, "a skipped file is not rewritten");

    let run = client(
        &server.url,
        cwd.path(),
        &["get", "same.bin", "--json", "--force"],
    );
    run.expect_code(0);
    let line: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(line["status"], "ok");
    let forced = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&dest).unwrap());
    assert_ne!(inode, forced, "--force replaces the file");

    // Same size, different bytes: not skipped, replaced.
    let mut other = data.clone();
    other[0] ^= 0xff;
    fs::write(&dest, &other).unwrap();
    client(&server.url, cwd.path(), &["get", "same.bin"]).expect_code(0);
    assert!(fs::read(&dest).unwrap() == data);
}

/// A client killed mid-transfer leaves DEST.part; the next run continues
/// from its length instead of starting over, and the result is exact.
#[test]
fn resume_after_client_killed() {
    let data = random_bytes(24 << 20, 11);
    let root = tree_with(&[("resume.bin", &data)]);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let part = cwd.path().join("resume.bin.part");

    let mut slow = fetchd()
        .current_dir(cwd.path())
        .args([
            "--server",
            &server.url,
            "get",
            "resume.bin",
            "--limit-rate",
            "4M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let grew = wait_until(Duration::from_secs(30), || part_len(&part) >= 2 << 20);
    slow.kill().unwrap();
    slow.wait().unwrap();
    assert!(grew, "the part file never reached 2 MiB");
    let kept = part_len(&part);
    assert!(
        kept > 0 && kept < data.len() as u64,
        "part holds {kept} bytes"
    );
    assert!(
        !cwd.path().join("resume.bin").exists(),
        "no DEST before the digest matched"
    );

    let run = client(&server.url, cwd.path(), &["get", "resume.bin"]);
    run.expect_code(0).expect_stderr("resuming at byte");
    let offset: u64 = run
        .stderr
        .split("resuming at byte ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("offset in the notice");
    assert!(
        offset >= kept.min(2 << 20),
        "resumed at {offset}, part had {kept}"
    );
    assert!(fs::read(cwd.path().join("resume.bin")).unwrap() == data);
    assert!(!part.exists());
}

/// A part file whose bytes differ from the server's never yields a wrong
/// DEST: the client notices and starts again.
#[test]
fn corrupted_part_prefix_restarts() {
    let data = random_bytes(3 << 20, 13);
    let root = tree_with(&[("c.bin", &data)]);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let mut bad = data[..1 << 20].to_vec();
    bad[12345] ^= 0x01;
    fs::write(cwd.path().join("c.bin.part"), &bad).unwrap();

    let run = client(&server.url, cwd.path(), &["get", "c.bin"]);
    run.expect_code(0)
        .expect_stderr("does not match the server's file");
    assert!(fs::read(cwd.path().join("c.bin")).unwrap() == data);
    assert!(!cwd.path().join("c.bin.part").exists());
}

/// A part file longer than the server's file is discarded, not trusted.
#[test]
fn part_longer_than_file_restarts() {
    let data = random_bytes(1000, 15);
    let root = tree_with(&[("short.bin", &data)]);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    fs::write(cwd.path().join("short.bin.part"), random_bytes(5000, 16)).unwrap();
    client(&server.url, cwd.path(), &["get", "short.bin"]).expect_code(0);
    assert_eq!(fs::read(cwd.path().join("short.bin")).unwrap(), data);
}

/// A log that grew since the part was written resumes (its prefix still
/// matches) and ends up whole.
#[test]
fn appended_file_resumes() {
    let first = random_bytes(2 << 20, 17);
    let root = tree_with(&[("grow.log", &first)]);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    fs::write(cwd.path().join("grow.log.part"), &first[..1 << 20]).unwrap();
    let mut all = first.clone();
    all.extend_from_slice(&random_bytes(4096, 18));
    fs::write(root.path().join("grow.log"), &all).unwrap();
    let run = client(&server.url, cwd.path(), &["get", "grow.log"]);
    run.expect_code(0).expect_stderr("resuming at byte 1048576");
    assert!(fs::read(cwd.path().join("grow.log")).unwrap() == all);
}

/// A file rewritten on the server during a transfer never yields a DEST
/// mixing the two versions.
#[test]
fn file_rewritten_during_transfer_is_never_mixed() {
    let old = random_bytes(24 << 20, 19);
    let new = random_bytes(24 << 20, 20);
    let root = tree_with(&[("moving.bin", &old)]);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let part = cwd.path().join("moving.bin.part");
    let child = fetchd()
        .current_dir(cwd.path())
        .args([
            "--server",
            &server.url,
            "get",
            "moving.bin",
            "--limit-rate",
            "6M",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || part_len(&part) >= 1 << 20));
    fs::write(root.path().join("moving.bin"), &new).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let dest = cwd.path().join("moving.bin");
    match fs::read(&dest) {
        Ok(got) => {
            assert!(
                got == new || got == old,
                "DEST mixes versions; stderr: {stderr}"
            );
            assert!(output.status.success(), "{stderr}");
        }
        Err(_) => assert_eq!(output.status.code(), Some(1), "{stderr}"),
    }
    assert!(
        stderr.contains("changed"),
        "the change was noticed: {stderr}"
    );
}

/// A server killed mid-transfer (and not back within `--retry-for`) leaves
/// an existing DEST exactly as it was: the retries are notices, the failure
/// is the last line.
#[test]
fn server_killed_leaves_dest_untouched() {
    let data = random_bytes(24 << 20, 21);
    let root = tree_with(&[("victim.bin", &data)]);
    let mut server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let dest = cwd.path().join("victim.bin");
    fs::write(&dest, b"previous content").unwrap();
    let part = cwd.path().join("victim.bin.part");
    let child = fetchd()
        .current_dir(cwd.path())
        .args([
            "--server",
            &server.url,
            "get",
            "victim.bin",
            "--limit-rate",
            "4M",
            "--retry-for",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || part_len(&part) >= 1 << 20));
    server.kill();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(fs::read(&dest).unwrap(), b"previous content");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let (last, retries) = lines.split_last().expect("a reason on stderr");
    assert!(!retries.is_empty(), "{stderr}");
    for line in retries {
        assert!(
            line.starts_with("fetchd: victim.bin: connection lost, retrying in "),
            "{stderr}"
        );
    }
    assert!(last.starts_with("fetchd: "), "{stderr}");
    assert!(!last.contains("retrying"), "{stderr}");
}

/// `-o -` into a reader that stops early is not an error.
#[test]
fn stdout_closed_early_is_success() {
    let data = random_bytes(8 << 20, 23);
    let root = tree_with(&[("pipe.bin", &data)]);
    let server = ServerProcess::start(root.path(), &[]);
    let mut child = fetchd()
        .args(["--server", &server.url, "get", "pipe.bin", "-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 10];
    stdout.read_exact(&mut head).unwrap();
    assert_eq!(&head, &data[..10]);
    drop(stdout);
    let status = wait_with_timeout(&mut child, STEP_TIMEOUT).expect("exits");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status:?}; stderr: {stderr}");
}

/// SIGTERM: the server lets a running transfer finish, refuses new
/// connections, and exits 0.
#[test]
fn sigterm_drains_then_exits_zero() {
    let data = random_bytes(6 << 20, 25);
    let root = tree_with(&[("drain.bin", &data)]);
    let mut server = ServerProcess::start(root.path(), &["--grace", "30"]);
    let cwd = tempfile::tempdir().unwrap();
    let part = cwd.path().join("drain.bin.part");
    let child = fetchd()
        .current_dir(cwd.path())
        .args([
            "--server",
            &server.url,
            "get",
            "drain.bin",
            "--limit-rate",
            "4M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || part_len(&part) >= 1 << 20));
    let status = server.terminate(Duration::from_secs(40));
    assert!(status.success(), "server exit {status:?}");
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(fs::read(cwd.path().join("drain.bin")).unwrap() == data);
    client(&server.url, cwd.path(), &["get", "drain.bin", "-o", "late"]).expect_code(1);
}

/// The server's digest cache: a settled file is served again from the
/// cache, a changed version is hashed afresh, and even a cache made stale
/// behind the server's back (same size and mtime, new bytes) never yields a
/// wrong DEST: the client's own hash catches it.
#[test]
fn digest_cache_never_serves_a_wrong_file() {
    let old_time = std::time::SystemTime::now() - Duration::from_secs(3600);
    let first = random_bytes(CHUNK * 3, 31);
    let root = tree_with(&[("cached.bin", &first)]);
    let source = root.path().join("cached.bin");
    let set_mtime = |when| {
        fs::File::options()
            .write(true)
            .open(&source)
            .unwrap()
            .set_modified(when)
            .unwrap();
    };
    set_mtime(old_time);
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        client(&server.url, cwd.path(), &["get", "cached.bin", "--force"]).expect_code(0);
        assert!(fs::read(cwd.path().join("cached.bin")).unwrap() == first);
    }

    // A new version (new mtime): hashed afresh, delivered exactly.
    let second = random_bytes(CHUNK * 3, 32);
    fs::write(&source, &second).unwrap();
    set_mtime(old_time + Duration::from_secs(1));
    client(
        &server.url,
        cwd.path(),
        &["get", "cached.bin", "-o", "second.bin"],
    )
    .expect_code(0);
    assert!(fs::read(cwd.path().join("second.bin")).unwrap() == second);

    // Same size, same mtime, other bytes: the cached digest is now wrong.
    let third = random_bytes(CHUNK * 3, 33);
    fs::write(&source, &third).unwrap();
    set_mtime(old_time + Duration::from_secs(1));
    fs::write(cwd.path().join("third.bin"), b"keep me").unwrap();
    // (fs::write truncates in place: same inode, so the same version.)
    let run = client(
        &server.url,
        cwd.path(),
        &["get", "cached.bin", "-o", "third.bin"],
    );
    run.expect_code(1).expect_stderr("checksum mismatch");
    assert_eq!(fs::read(cwd.path().join("third.bin")).unwrap(), b"keep me");
    assert!(!cwd.path().join("third.bin.part").exists());
}
