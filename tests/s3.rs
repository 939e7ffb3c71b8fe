//! `serve --root s3://BUCKET` against a real S3-API server on loopback:
//! `s3s-fs` (installed by `.ci/run` under `target/tools/`), started by each
//! test with its own keys over a temp folder. Everything goes through the
//! built binary: sizes at the read-ahead's block boundaries, listings and
//! `get -r` reruns (with the bytes the store sent counted by a relay), a
//! killed client resuming, an object replaced during a slow read, uploads
//! (one PUT, multipart, a wrong digest, a racing creator), tail refused and
//! a store that cannot be reached.
//!
//! Without s3s-fs the tests say so and pass, unless `FETCHD_REQUIRE_S3=1`
//! (as `.ci/run` sets), which makes a missing server a failure.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::relay::{Faults, Relay};
use common::*;
use fetchd::proto::fetchd_client::FetchdClient;
use fetchd::proto::{WriteHeader, WriteRequest, WriteTrailer, write_request};
use sha2::{Digest as _, Sha256};
use tonic::Code;

const ACCESS_KEY: &str = "fetchd-test";
const SECRET_KEY: &str = "fetchd-test-secret";
const BUCKET: &str = "bkt";
const MIB: usize = 1024 * 1024;
/// The reader's block (src/store/s3/reader.rs).
const BLOCK: usize = 4 * MIB;

/// The s3s-fs binary: `FETCHD_S3S_FS`, the copy `.ci/run` installs, or PATH.
fn s3s_fs_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FETCHD_S3S_FS") {
        return Some(PathBuf::from(path));
    }
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/s3s-fs-0.14.1/bin/s3s-fs");
    if installed.is_file() {
        return Some(installed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("s3s-fs"))
            .find(|candidate| candidate.is_file())
    })
}

/// A running s3s-fs over a temp folder with one bucket; killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
    /// The folder s3s-fs stores into (buckets are folders in it).
    data: tempfile::TempDir,
}

impl S3Server {
    /// Starts s3s-fs, or `None` (the test is skipped) when it is not
    /// installed and not required.
    fn start() -> Option<S3Server> {
        let Some(bin) = s3s_fs_bin() else {
            assert!(
                std::env::var("FETCHD_REQUIRE_S3").as_deref() != Ok("1"),
                "s3s-fs is required (FETCHD_REQUIRE_S3=1) but not installed; run .ci/run or \
                 cargo install s3s-fs --version 0.14.1 --features binary --locked"
            );
            eprintln!("skipping: s3s-fs is not installed (see .ci/run)");
            return None;
        };
        let data = tempfile::tempdir().unwrap();
        fs::create_dir(data.path().join(BUCKET)).unwrap();
        let mut child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(data.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn s3s-fs");
        let (tx, rx) = mpsc::channel();
        for lines in [
            lines_of(child.stdout.take().unwrap()),
            lines_of(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in lines {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let deadline = Instant::now() + STEP_TIMEOUT;
        let endpoint = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("s3s-fs printed no `server is running at` line")
            });
            if let Some(at) = line.find("server is running at ") {
                let url = line[at + "server is running at ".len()..].trim();
                break url
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .to_string();
            }
        };
        Some(S3Server {
            child,
            endpoint,
            data,
        })
    }

    /// The bucket's folder: files written here are objects.
    fn bucket(&self) -> PathBuf {
        self.data.path().join(BUCKET)
    }

    /// The endpoint's address, for a relay in front of it.
    fn addr(&self) -> std::net::SocketAddr {
        self.endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("endpoint address")
    }

    /// The AWS environment that points at `endpoint`.
    fn env(endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", endpoint.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// `fetchd serve --root s3://bkt[/PREFIX]` against `endpoint` (this
    /// server, or a relay in front of it).
    fn fetchd(&self, endpoint: &str, prefix: &str, extra: &[&str]) -> ServerProcess {
        let env = S3Server::env(endpoint);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let root = format!("s3://{BUCKET}{prefix}");
        ServerProcess::start_with_env(Path::new(&root), extra, &env)
    }

    /// Every file s3s-fs keeps, hidden ones (its metadata, unfinished
    /// uploads) included, relative to its folder.
    fn stored_files(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut folders = vec![self.data.path().to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in fs::read_dir(&folder).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    folders.push(entry.path());
                } else {
                    let relative = entry.path();
                    let relative = relative.strip_prefix(self.data.path()).unwrap();
                    found.push(relative.display().to_string());
                }
            }
        }
        found.sort();
        found
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_lines(run: &Run) -> Vec<serde_json::Value> {
    run.stdout_str()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect()
}

/// Runs `get -r ARGS --json` again over a tree already in place: every one
/// of the `count` files is skipped, and the store (behind `relay`) sends
/// far less than the `total` bytes the objects hold: no bodies.
fn rerun_skips_without_bodies(
    server: &ServerProcess,
    cwd: &Path,
    args: &[&str],
    relay: &Relay,
    count: usize,
    total: u64,
    heads_allowed: u64,
) {
    let before = relay.bytes_down();
    let gets = relay.requests("GET");
    let heads = relay.requests("HEAD");
    let mut command = vec!["get", "-r"];
    command.extend_from_slice(args);
    command.push("--json");
    let rerun = client(&server.url, cwd, &command);
    rerun.expect_code(0);
    let lines = json_lines(&rerun);
    assert_eq!(lines.len(), count);
    assert!(
        lines.iter().all(|line| line["status"] == "skipped"),
        "{}",
        rerun.describe()
    );
    let sent = relay.bytes_down() - before;
    assert!(
        sent < total / 4,
        "the rerun made the store send {sent} bytes for {total} bytes of objects"
    );
    assert_eq!(relay.requests("GET") - gets, 0, "object GETs of a rerun");
    // Known digests need no request an object: the listing tells the
    // versions. Objects whose digest only their metadata holds (a new
    // server's first look) cost a HEAD each.
    let heads = relay.requests("HEAD") - heads;
    assert!(
        heads <= heads_allowed,
        "the rerun sent {heads} HEADs (at most {heads_allowed})"
    );
}

/// Objects of every awkward size (empty, one byte, either side of a wire
/// chunk and of the read-ahead's block, 64 MiB) come back whole and verified; `stat
/// --sha256` and `ls -r` describe them as a directory root would.
#[test]
fn sizes_at_block_boundaries_round_trip() {
    let Some(s3) = S3Server::start() else { return };
    let chunk = fetchd::CHUNK_BYTES;
    let sizes = [
        0,
        1,
        chunk - 1,
        chunk,
        chunk + 1,
        BLOCK - 1,
        BLOCK,
        BLOCK + 1,
        3 * BLOCK + 7,
        64 * MIB,
    ];
    fs::create_dir_all(s3.bucket().join("sizes")).unwrap();
    let mut expected = Vec::new();
    for (seed, size) in sizes.iter().enumerate() {
        let body = random_bytes(*size, seed as u64 + 1);
        let name = format!("sizes/s{size}.bin");
        fs::write(s3.bucket().join(&name), &body).unwrap();
        expected.push((name, body));
    }
    let server = s3.fetchd(&s3.endpoint, "", &[]);
    let work = tempfile::tempdir().unwrap();

    for (name, body) in &expected {
        let dest = work.path().join("one.bin");
        let _ = fs::remove_file(&dest);
        client(&server.url, work.path(), &["get", name, "-o", "one.bin"]).expect_code(0);
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len(), body.len(), "{name}");
        assert!(got == *body, "{name}: the bytes differ");
        let stat = client(&server.url, work.path(), &["stat", "--sha256", name]);
        stat.expect_code(0);
        assert!(
            stat.stdout_str().contains(&sha256_hex(body)),
            "{name}: {}",
            stat.describe()
        );
    }

    // Byte ranges on the wire: across block edges, at the end, range-only.
    let (name, body) = expected.last().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (offset, length, range_only) in [
        (BLOCK - 3, 10, false),
        (5 * BLOCK + 1, 3 * BLOCK, true),
        (64 * MIB - 100, 1000, true),
    ] {
        let got = runtime.block_on(async {
            use tokio_stream::StreamExt as _;
            let mut rpc = FetchdClient::connect(server.url.clone()).await.unwrap();
            let mut stream = rpc
                .read(fetchd::proto::ReadRequest {
                    path: name.clone(),
                    offset: offset as u64,
                    length: Some(length as u64),
                    range_only,
                })
                .await
                .unwrap()
                .into_inner();
            let mut got = Vec::new();
            while let Some(message) = stream.next().await {
                if let Some(fetchd::proto::read_response::Kind::Data(data)) = message.unwrap().kind
                {
                    got.extend_from_slice(&data);
                }
            }
            got
        });
        let end = (offset + length).min(body.len());
        assert!(got == body[offset..end], "range {offset}+{length}");
    }

    let ls = client(&server.url, work.path(), &["ls", "-r", "--json", "/"]);
    ls.expect_code(0);
    let entries = json_lines(&ls);
    assert_eq!(entries[0]["path"], "sizes");
    assert_eq!(entries[0]["type"], "dir");
    for (name, body) in &expected {
        let entry = entries
            .iter()
            .find(|entry| entry["path"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} not listed: {}", ls.describe()));
        assert_eq!(entry["type"], "file");
        assert_eq!(entry["size"], body.len() as u64);
    }
    client(&server.url, work.path(), &["stat", "nothing/here"])
        .expect_code(1)
        .expect_stderr("nothing/here: not found");
    client(&server.url, work.path(), &["get", "../escape"]).expect_code(1);
    client(&server.url, work.path(), &["get", "sizes", "-o", "x"]).expect_stderr("is a directory");
}

/// A tree of small objects: `get -r` fetches them all; a rerun skips every
/// one without the store sending their bodies again (counted by a relay
/// between fetchd and the store), and a prefix root serves only its part.
#[test]
fn get_r_rerun_reads_no_object_bodies() {
    let Some(s3) = S3Server::start() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let relay = runtime
        .block_on(Relay::start(s3.addr(), Faults::default()))
        .unwrap();
    let count = 120;
    // Half the objects share one size (and, below, one time): objects that
    // differ only by key must never share a digest.
    let body_of = |i: usize| random_bytes(4096 + (i % 2) * i, i as u64 + 7);
    // s3s-fs lists no ETags, so versions go by key, size and time, and a
    // digest is trusted once the time has settled (the racy window):
    // objects written a minute ago, as a real tree's would be.
    let written = std::time::SystemTime::now() - Duration::from_secs(60);
    let mut total = 0;
    for i in 0..count {
        let name = format!("tree/d{}/e{}/f{i}.bin", i % 4, i % 3);
        let body = body_of(i);
        total += body.len() as u64;
        fs::create_dir_all(s3.bucket().join(&name).parent().unwrap()).unwrap();
        fs::write(s3.bucket().join(&name), &body).unwrap();
        fs::File::options()
            .write(true)
            .open(s3.bucket().join(&name))
            .unwrap()
            .set_modified(written)
            .unwrap();
    }
    fs::write(s3.bucket().join("outside.txt"), b"not under the prefix\n").unwrap();
    let server = s3.fetchd(&relay.url(), "/tree", &[]);
    let work = tempfile::tempdir().unwrap();

    let first = client(
        &server.url,
        work.path(),
        &["get", "-r", "/", "-o", "out", "--json"],
    );
    first.expect_code(0);
    let lines = json_lines(&first);
    assert_eq!(lines.len(), count);
    assert!(
        lines.iter().all(|line| line["status"] == "ok"),
        "{}",
        first.describe()
    );
    for i in 0..count {
        let name = format!("d{}/e{}/f{i}.bin", i % 4, i % 3);
        assert_eq!(
            fs::read(work.path().join("out").join(&name)).unwrap(),
            body_of(i),
            "{name}"
        );
    }
    assert!(!work.path().join("out/outside.txt").exists());
    assert!(
        relay.bytes_down() >= total,
        "the first run read the objects"
    );
    // One GET an object, which tells its version too: no HEAD before it.
    assert_eq!(relay.requests("GET"), count as u64, "object GETs");
    assert_eq!(relay.requests("HEAD"), 0, "HEADs of a fresh get -r");

    rerun_skips_without_bodies(
        &server,
        work.path(),
        &["/", "-o", "out"],
        &relay,
        count,
        total,
        0,
    );
}

/// Objects fetchd uploaded keep their sha256 in their metadata: after a
/// server restart, a rerun of `get -r` over them still reads no bodies.
#[test]
fn uploaded_digests_survive_a_restart() {
    let Some(s3) = S3Server::start() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let relay = runtime
        .block_on(Relay::start(s3.addr(), Faults::default()))
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("up");
    let count = 40;
    let mut total = 0;
    for i in 0..count {
        let body = random_bytes(8192 + i, i as u64 + 100);
        total += body.len() as u64;
        fs::create_dir_all(local.join(format!("g{}", i % 3))).unwrap();
        fs::write(local.join(format!("g{}/u{i}.bin", i % 3)), &body).unwrap();
    }
    let mut server = s3.fetchd(&relay.url(), "", &["--allow-upload"]);
    for i in 0..count {
        let name = format!("g{}/u{i}.bin", i % 3);
        client(
            &server.url,
            work.path(),
            &["put", &format!("up/{name}"), &format!("mirror/{name}")],
        )
        .expect_code(0);
    }
    server.kill();
    let server = s3.fetchd(&relay.url(), "", &[]);
    rerun_skips_without_bodies(
        &server,
        work.path(),
        &["mirror", "-o", "up"],
        &relay,
        count,
        total,
        // One a file (its digest is in its metadata), and the folder's.
        count as u64 + 1,
    );
}

/// A client killed mid-get resumes from its part file: the second run
/// receives only about what was missing, and the file is whole.
#[test]
fn a_killed_client_resumes() {
    let Some(s3) = S3Server::start() else { return };
    let body = random_bytes(64 * MIB, 3);
    fs::write(s3.bucket().join("big.bin"), &body).unwrap();
    let server = s3.fetchd(&s3.endpoint, "", &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let relay = runtime
        .block_on(Relay::start(server.addr, Faults::default()))
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let part = work.path().join("big.bin.part");

    let mut slow = fetchd()
        .current_dir(work.path())
        .args([
            "--server",
            &relay.url(),
            "get",
            "big.bin",
            "--limit-rate",
            "16M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let grew = wait_until(STEP_TIMEOUT, || {
        fs::metadata(&part).is_ok_and(|meta| meta.len() >= 16 * MIB as u64)
    });
    let _ = slow.kill();
    let _ = slow.wait();
    assert!(grew, "the part file never reached 16 MiB");
    let kept = fs::metadata(&part).unwrap().len();

    let before = relay.bytes_down();
    client(&relay.url(), work.path(), &["get", "big.bin"]).expect_code(0);
    let received = relay.bytes_down() - before;
    assert!(fs::read(work.path().join("big.bin")).unwrap() == body);
    assert!(!part.exists());
    assert!(
        received < body.len() as u64 - kept / 2,
        "resumed from {kept} but received {received}"
    );
}

/// An object replaced while a slow get reads it is never delivered mixed:
/// the server answers ABORTED, and the file the client ends with is one
/// version whole (the client starts over on the new one).
#[test]
fn an_object_replaced_mid_read_is_never_mixed() {
    let Some(s3) = S3Server::start() else { return };
    let old = random_bytes(64 * MIB, 11);
    let new = random_bytes(64 * MIB, 12);
    let work = tempfile::tempdir().unwrap();
    fs::write(work.path().join("old.bin"), &old).unwrap();
    fs::write(work.path().join("new.bin"), &new).unwrap();
    let server = s3.fetchd(&s3.endpoint, "", &["--allow-upload"]);
    client(&server.url, work.path(), &["put", "old.bin", "obj.bin"]).expect_code(0);

    let part = work.path().join("got.bin.part");
    let slow = fetchd()
        .current_dir(work.path())
        .args(["--server", &server.url, "get", "obj.bin", "-o", "got.bin"])
        .args(["--limit-rate", "8M", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(STEP_TIMEOUT, || fs::metadata(&part)
            .is_ok_and(|meta| meta.len() >= 4 * MIB as u64)),
        "the slow get never got going"
    );
    client(
        &server.url,
        work.path(),
        &["put", "--force", "new.bin", "obj.bin"],
    )
    .expect_code(0);
    let output = slow.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    // Old bytes were in the part file when the object was replaced: only
    // a fresh start on the new version gives the new file whole.
    let got = fs::read(work.path().join("got.bin")).unwrap();
    assert!(
        got == new,
        "the file is not the new version whole: {stderr}"
    );

    // Straight on the wire: a read that began on the old version ends
    // ABORTED once the object is replaced.
    client(
        &server.url,
        work.path(),
        &["put", "--force", "old.bin", "obj.bin"],
    )
    .expect_code(0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        use tokio_stream::StreamExt as _;
        let mut rpc = FetchdClient::connect(server.url.clone()).await.unwrap();
        let mut stream = rpc
            .read(fetchd::proto::ReadRequest {
                path: "obj.bin".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // The first messages are in flight; replace, then drain.
        let _ = stream.next().await;
        let replaced = fetchd()
            .current_dir(work.path())
            .args([
                "--server",
                &server.url,
                "put",
                "--force",
                "new.bin",
                "obj.bin",
            ])
            .status()
            .unwrap();
        assert!(replaced.success());
        loop {
            match stream.next().await {
                Some(Ok(_)) => {}
                Some(Err(status)) => break Some(status),
                None => break None,
            }
        }
    });
    // The server reads up to 16 MiB ahead and the stream's window holds
    // 8 MiB: 64 MiB leaves most of the object to be read after the
    // replacement.
    let status = status.expect("the read of a replaced object must not end cleanly");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
}

fn write_request(kind: write_request::Kind) -> WriteRequest {
    WriteRequest { kind: Some(kind) }
}

/// Uploads: a small file (one PUT) and a multipart one arrive whole; a
/// wrong digest leaves no object and no parts; an existing object is
/// refused without --force.
#[test]
fn uploads_appear_only_when_verified() {
    let Some(s3) = S3Server::start() else { return };
    let server = s3.fetchd(&s3.endpoint, "", &["--allow-upload"]);
    let work = tempfile::tempdir().unwrap();
    let small = random_bytes(1000, 1);
    let large = random_bytes(40 * MIB + 5, 2);
    fs::write(work.path().join("small.bin"), &small).unwrap();
    fs::write(work.path().join("large.bin"), &large).unwrap();

    client(
        &server.url,
        work.path(),
        &["put", "small.bin", "in/small.bin"],
    )
    .expect_code(0);
    client(
        &server.url,
        work.path(),
        &["put", "large.bin", "in/large.bin"],
    )
    .expect_code(0);
    assert!(fs::read(s3.bucket().join("in/small.bin")).unwrap() == small);
    assert!(fs::read(s3.bucket().join("in/large.bin")).unwrap() == large);
    client(
        &server.url,
        work.path(),
        &["put", "small.bin", "in/large.bin"],
    )
    .expect_code(1)
    .expect_stderr("in/large.bin: already exists on the server; use --force to replace it");
    client(
        &server.url,
        work.path(),
        &["put", "--force", "small.bin", "in/large.bin"],
    )
    .expect_code(0);
    assert!(fs::read(s3.bucket().join("in/large.bin")).unwrap() == small);

    let before = s3.stored_files();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (name, body) in [("bad/small.bin", &small), ("bad/large.bin", &large)] {
        let status = runtime.block_on(async {
            let mut rpc = FetchdClient::connect(server.url.clone()).await.unwrap();
            let mut messages = vec![write_request(write_request::Kind::Header(WriteHeader {
                path: name.into(),
                size: Some(body.len() as u64),
                force: false,
                base: None,
            }))];
            for chunk in body.chunks(256 * 1024) {
                messages.push(write_request(write_request::Kind::Data(
                    chunk.to_vec().into(),
                )));
            }
            messages.push(write_request(write_request::Kind::Trailer(WriteTrailer {
                sha256: Sha256::digest(b"something else").to_vec().into(),
            })));
            rpc.write(tokio_stream::iter(messages))
                .await
                .expect_err("a wrong digest")
        });
        assert_eq!(status.code(), Code::DataLoss, "{name}: {status:?}");
    }
    assert!(!s3.bucket().join("bad").exists(), "an object appeared");
    assert_eq!(
        s3.stored_files(),
        before,
        "the failed uploads left something"
    );
    client(&server.url, work.path(), &["stat", "bad/large.bin"]).expect_code(1);
}

/// Two uploaders of one new path: the one that completes first wins, the
/// other is refused when it completes (the store's create-only condition,
/// not a check made before it began), and leaves no parts behind.
#[test]
fn a_racing_creator_is_refused_at_completion() {
    let Some(s3) = S3Server::start() else { return };
    let server = s3.fetchd(&s3.endpoint, "", &["--allow-upload"]);
    let work = tempfile::tempdir().unwrap();
    let large = random_bytes(48 * MIB, 5);
    fs::write(work.path().join("large.bin"), &large).unwrap();
    fs::write(work.path().join("small.bin"), b"first\n").unwrap();

    // The slow uploader's link: 16 MiB/s up.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let faults = Faults {
        rate_up: Some(16 * MIB as u64),
        ..Faults::default()
    };
    let link = runtime.block_on(Relay::start(server.addr, faults)).unwrap();
    let slow = fetchd()
        .current_dir(work.path())
        .args(["--server", &link.url(), "put", "large.bin", "race.bin"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the store holds a part of the slow upload, the other completes.
    let uploading = wait_until(STEP_TIMEOUT, || {
        s3.stored_files().iter().any(|file| file.contains("upload"))
    });
    assert!(
        uploading,
        "no multipart upload seen: {:?}",
        s3.stored_files()
    );
    client(&server.url, work.path(), &["put", "small.bin", "race.bin"]).expect_code(0);
    let output = slow.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("race.bin: already exists on the server"),
        "{stderr}"
    );
    assert_eq!(fs::read(s3.bucket().join("race.bin")).unwrap(), b"first\n");
    let leftovers: Vec<String> = s3
        .stored_files()
        .into_iter()
        .filter(|file| file.contains("upload"))
        .collect();
    assert!(leftovers.is_empty(), "parts left behind: {leftovers:?}");
}

/// `tail` needs a directory root: FAILED_PRECONDITION, exit 1, a message
/// that says so.
#[test]
fn tail_is_refused_with_a_reason() {
    let Some(s3) = S3Server::start() else { return };
    fs::write(s3.bucket().join("app.log"), b"line\n").unwrap();
    let server = s3.fetchd(&s3.endpoint, "", &[]);
    let work = tempfile::tempdir().unwrap();
    client(&server.url, work.path(), &["tail", "app.log"])
        .expect_code(1)
        .expect_stderr("app.log: tail needs a directory root");
}

/// A store that cannot be used is exit 1 before `listening on`, with the
/// reason: nothing listening at the endpoint, or keys it refuses.
#[test]
fn an_unusable_store_stops_serve_at_start() {
    let Some(s3) = S3Server::start() else { return };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let cases = [
        (S3Server::env(&dead), "cannot use the object store"),
        (
            S3Server::env(&s3.endpoint)
                .into_iter()
                .map(|(key, value)| {
                    if key == "AWS_SECRET_ACCESS_KEY" {
                        (key, "wrong".to_string())
                    } else {
                        (key, value)
                    }
                })
                .collect(),
            "cannot use the object store",
        ),
    ];
    for (env, reason) in cases {
        let started = Instant::now();
        let run = run(fetchd()
            .args(["serve", "--listen", "127.0.0.1:0", "--root", "s3://bkt"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str()))));
        run.expect_code(1).expect_stderr(reason);
        assert!(
            !run.stdout_str().contains("listening on"),
            "{}",
            run.describe()
        );
        assert!(
            started.elapsed() < Duration::from_secs(50),
            "{}",
            run.describe()
        );
    }
    let run = run(fetchd().args(["serve", "--root", "s3://"]));
    run.expect_code(2).expect_stderr("no bucket name");
}

/// A store that goes away under a running server: the client retries under
/// --retry-for with a notice that names the store, then exits 1 with the
/// store's reason; nothing is left at DEST.
#[test]
fn a_store_gone_mid_run_is_named() {
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    fs::write(s3.bucket().join("f.bin"), b"data\n").unwrap();
    let server = s3.fetchd(&s3.endpoint, "", &[]);
    let work = tempfile::tempdir().unwrap();
    client(&server.url, work.path(), &["get", "f.bin"]).expect_code(0);
    let _ = s3.child.kill();
    let _ = s3.child.wait();
    let run = client(
        &server.url,
        work.path(),
        &["get", "f.bin", "-o", "again.bin", "--retry-for", "1"],
    );
    run.expect_code(1)
        .expect_stderr("the server's object store failed, retrying")
        .expect_stderr("f.bin: the object store failed");
    assert!(!work.path().join("again.bin").exists());
}
