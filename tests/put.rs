//! `fetchd put` and the `Write` RPC, end to end: through the real binary
//! (exit codes, messages, what lands on disk) and through the generated
//! client (exact status codes, messages the CLI never sends: a wrong digest,
//! more bytes than declared, a stream left open).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use fetchd::is_temp_name;
use fetchd::proto::fetchd_client::FetchdClient;
use fetchd::proto::{WriteHeader, WriteRequest, WriteResponse, WriteTrailer, write_request};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Status};

const CHUNK: usize = fetchd::UPLOAD_CHUNK_BYTES;

/// Every temporary upload file below `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if is_temp_name(&entry.file_name().to_string_lossy()) {
                found.push(path);
            }
        }
    }
    found
}

/// Names directly in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A served root and a client working folder beside it, plus a folder
/// outside the root that nothing may reach.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cwd: PathBuf,
    outside: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(tmp.path()).unwrap();
        let (root, cwd, outside) = (base.join("root"), base.join("cwd"), base.join("outside"));
        for dir in [&root, &cwd, &outside] {
            fs::create_dir(dir).unwrap();
        }
        Setup {
            _tmp: tmp,
            root,
            cwd,
            outside,
        }
    }

    /// Writes `data` to `cwd/name` and returns the name.
    fn local(&self, name: &str, data: &[u8]) -> String {
        fs::write(self.cwd.join(name), data).unwrap();
        name.to_string()
    }
}

/// `fetchd serve --allow-upload EXTRA...` on `root`.
fn upload_server(root: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--allow-upload"];
    args.extend_from_slice(extra);
    ServerProcess::start(root, &args)
}

/// An in-process server on `root` that accepts uploads up to `max` bytes.
fn in_process(root: &Path, max: u64) -> InProcessServer {
    let mut config = fetchd::ServerConfig::new(root);
    config.grace = Duration::from_secs(2);
    config.allow_upload = true;
    config.max_upload_bytes = max;
    InProcessServer::start(config)
}

async fn rpc(url: &str) -> FetchdClient<Channel> {
    FetchdClient::connect(url.to_string()).await.unwrap()
}

fn header(path: &str, size: Option<u64>, force: bool) -> WriteRequest {
    WriteRequest {
        kind: Some(write_request::Kind::Header(WriteHeader {
            path: path.to_string(),
            size,
            force,
            base: None,
        })),
    }
}

fn data(bytes: &[u8]) -> WriteRequest {
    WriteRequest {
        kind: Some(write_request::Kind::Data(bytes.to_vec().into())),
    }
}

fn trailer(sha256: &[u8]) -> WriteRequest {
    WriteRequest {
        kind: Some(write_request::Kind::Trailer(WriteTrailer {
            sha256: sha256.to_vec().into(),
        })),
    }
}

/// A `Write` call whose messages the test sends one at a time: the sender,
/// and the call's answer (which may come before the sender is closed).
type OpenWrite = (
    mpsc::Sender<WriteRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<WriteResponse>, Status>>,
);

fn open_write(client: &FetchdClient<Channel>) -> OpenWrite {
    let (tx, rx) = mpsc::channel(64);
    let mut client = client.clone();
    let call = tokio::spawn(async move {
        client
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    (tx, call)
}

/// Sends `messages` as one `Write` call and returns its answer.
async fn write_all(
    client: &FetchdClient<Channel>,
    messages: Vec<WriteRequest>,
) -> Result<WriteResponse, Status> {
    let (tx, call) = open_write(client);
    for message in messages {
        if tx.send(message).await.is_err() {
            break;
        }
    }
    drop(tx);
    call.await.unwrap().map(tonic::Response::into_inner)
}

/// Waits (bounded) for an open call's answer.
async fn answer(
    call: tokio::task::JoinHandle<Result<tonic::Response<WriteResponse>, Status>>,
) -> Result<WriteResponse, Status> {
    tokio::time::timeout(STEP_TIMEOUT, call)
        .await
        .expect("the server answered in time")
        .unwrap()
        .map(tonic::Response::into_inner)
}

/// Sizes 0, 1, around the chunk size and 64 MiB arrive byte for byte, in
/// folders created on the way, with no temporary file left and nothing on
/// stderr (not a terminal: no progress bar).
#[test]
fn round_trip_sizes() {
    let setup = Setup::new();
    let server = upload_server(&setup.root, &[]);
    let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 64 << 20];
    for (i, size) in sizes.into_iter().enumerate() {
        let content = random_bytes(size, 600 + i as u64);
        let local = setup.local(&format!("f{size}"), &content);
        let remote = format!("new/dir {i}/f{size}.bin");
        let run = client(&server.url, &setup.cwd, &["put", &local, &remote, "--json"]);
        run.expect_code(0);
        assert!(run.stderr.is_empty(), "{}", run.describe());
        let line: serde_json::Value = serde_json::from_slice(&run.stdout).expect("one JSON line");
        assert_eq!(line["path"], remote.as_str());
        assert_eq!(line["source"], local.as_str());
        assert_eq!(line["bytes"], size);
        assert_eq!(line["sha256"], sha256_hex(&content));
        assert_eq!(line["status"], "ok");
        assert!(line.get("error").is_none());
        let stored = fs::read(setup.root.join(&remote)).unwrap();
        assert_eq!(stored.len(), size);
        assert!(stored == content, "{remote}: content differs");
    }
    assert_eq!(temp_files(&setup.root), Vec::<PathBuf>::new());
}

/// LOCAL `-` streams stdin with its size unknown; REMOTE ending in `/`
/// keeps LOCAL's name; a leading `/` is the root.
#[test]
fn stdin_and_remote_forms() {
    let setup = Setup::new();
    let server = upload_server(&setup.root, &[]);
    let content = random_bytes(3 * CHUNK + 11, 9);
    let mut child = fetchd()
        .args([
            "--server",
            &server.url,
            "put",
            "-",
            "from-stdin.bin",
            "--json",
        ])
        .current_dir(&setup.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&content).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["source"], "-");
    assert_eq!(line["sha256"], sha256_hex(&content));
    assert!(fs::read(setup.root.join("from-stdin.bin")).unwrap() == content);

    let local = setup.local("named.txt", b"named\n");
    client(&server.url, &setup.cwd, &["put", &local, "docs/"]).expect_code(0);
    assert_eq!(
        fs::read(setup.root.join("docs/named.txt")).unwrap(),
        b"named\n"
    );
    client(&server.url, &setup.cwd, &["put", &local, "/etc/passwd"]).expect_code(0);
    assert_eq!(fs::read(setup.root.join("etc/passwd")).unwrap(), b"named\n");
}

/// Without `--allow-upload`: PERMISSION_DENIED, a message that says what to
/// do (the CLI's hint; the server's own message names no flag), exit 1, and
/// nothing written.
#[test]
fn refused_without_allow_upload() {
    let setup = Setup::new();
    let server = ServerProcess::start(&setup.root, &[]);
    let local = setup.local("f.txt", b"data\n");
    let run = client(&server.url, &setup.cwd, &["put", &local, "a/f.txt"]);
    run.expect_code(1)
        .expect_stderr("a/f.txt: permission denied")
        .expect_stderr("--allow-upload");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.describe());
    assert!(names(&setup.root).is_empty(), "nothing written");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        let client = rpc(&server.url).await;
        write_all(
            &client,
            vec![
                header("x", Some(1), false),
                data(b"x"),
                trailer(&Sha256::digest(b"x")),
            ],
        )
        .await
        .expect_err("refused")
    });
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "x: permission denied: this server does not accept uploads"
    );
    assert!(names(&setup.root).is_empty(), "nothing written");
}

/// Paths that lead outside the root are refused and nothing is written
/// outside: `..`, a symlinked folder pointing outside (also with missing
/// folders below it), a final symlink pointing outside; an absolute-looking
/// path lands inside the root; a symlink that stays inside is followed.
#[test]
fn confined_to_the_root() {
    let setup = Setup::new();
    symlink(&setup.outside, setup.root.join("out-link")).unwrap();
    symlink("../outside", setup.root.join("out-rel")).unwrap();
    symlink(setup.outside.join("created"), setup.root.join("out-file")).unwrap();
    fs::create_dir(setup.root.join("sub")).unwrap();
    symlink("sub", setup.root.join("in-link")).unwrap();
    let server = upload_server(&setup.root, &[]);
    let local = setup.local("f.txt", b"payload\n");

    for remote in [
        "../x",
        "a/../../x",
        "out-link/x",
        "out-link/new/deeper/x",
        "out-rel/x",
        "out-file",
    ] {
        let run = client(&server.url, &setup.cwd, &["put", &local, remote]);
        run.expect_code(1)
            .expect_stderr("permission denied: the path leads outside the served root");
    }
    assert!(names(&setup.outside).is_empty(), "nothing written outside");
    assert!(
        !setup.root.join("a").exists(),
        "no folder made for a refused path"
    );

    let absolute = setup.outside.join("abs.txt");
    client(
        &server.url,
        &setup.cwd,
        &["put", &local, absolute.to_str().unwrap()],
    )
    .expect_code(0);
    assert!(
        !absolute.exists(),
        "an absolute path names a place in the root"
    );
    let inside = setup.root.join(absolute.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside).unwrap(), b"payload\n");

    client(&server.url, &setup.cwd, &["put", &local, "in-link/y.txt"]).expect_code(0);
    assert_eq!(
        fs::read(setup.root.join("sub/y.txt")).unwrap(),
        b"payload\n"
    );
    assert!(names(&setup.outside).is_empty());
}

/// A target that is a folder is FAILED_PRECONDITION (`is a directory`); a
/// file where a folder is needed on the way, `not a directory`.
#[test]
fn folders_in_the_way() {
    let setup = Setup::new();
    fs::create_dir(setup.root.join("dir")).unwrap();
    fs::write(setup.root.join("file"), b"f").unwrap();
    let server = upload_server(&setup.root, &[]);
    let local = setup.local("f.txt", b"payload\n");
    client(&server.url, &setup.cwd, &["put", &local, "dir", "--force"])
        .expect_code(1)
        .expect_stderr("dir: is a directory");
    client(&server.url, &setup.cwd, &["put", &local, "file/x"])
        .expect_code(1)
        .expect_stderr("not a directory");
    assert_eq!(names(&setup.root), ["dir", "file"]);
    assert!(names(&setup.root.join("dir")).is_empty());
}

/// An existing target: ALREADY_EXISTS (exit 1, says --force), untouched;
/// with --force it is replaced.
#[test]
fn already_exists_then_force() {
    let setup = Setup::new();
    fs::create_dir(setup.root.join("d")).unwrap();
    fs::write(setup.root.join("d/t.txt"), b"old\n").unwrap();
    let server = upload_server(&setup.root, &[]);
    let local = setup.local("new.txt", b"new content\n");

    let run = client(
        &server.url,
        &setup.cwd,
        &["put", &local, "d/t.txt", "--json"],
    );
    run.expect_code(1)
        .expect_stderr("d/t.txt: already exists on the server; use --force to replace it");
    let line: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(line["status"], "error");
    assert_eq!(
        line["error"],
        "already exists on the server; use --force to replace it"
    );
    assert_eq!(fs::read(setup.root.join("d/t.txt")).unwrap(), b"old\n");

    client(
        &server.url,
        &setup.cwd,
        &["put", &local, "d/t.txt", "--force"],
    )
    .expect_code(0);
    assert_eq!(
        fs::read(setup.root.join("d/t.txt")).unwrap(),
        b"new content\n"
    );
    assert_eq!(names(&setup.root.join("d")), ["t.txt"]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        let client = rpc(&server.url).await;
        write_all(&client, vec![header("d/t.txt", Some(0), false)])
            .await
            .expect_err("exists")
    });
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
}

/// A wrong digest is DATA_LOSS; so are fewer bytes than declared; nothing
/// is at the target and no temporary file is left.
#[tokio::test]
async fn mismatches_are_data_loss() {
    let setup = Setup::new();
    let server = in_process(&setup.root, 1 << 30);
    let client = rpc(&server.url).await;
    let body = random_bytes(2 * CHUNK + 3, 5);

    let status = write_all(
        &client,
        vec![
            header("bad/digest.bin", Some(body.len() as u64), false),
            data(&body[..CHUNK]),
            data(&body[CHUNK..]),
            trailer(&Sha256::digest(b"something else")),
        ],
    )
    .await
    .expect_err("wrong digest");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains("checksum mismatch"), "{status:?}");

    let status = write_all(
        &client,
        vec![
            header("bad/short.bin", Some(body.len() as u64 + 1), false),
            data(&body),
            trailer(&Sha256::digest(&body)),
        ],
    )
    .await
    .expect_err("short");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");

    let status = write_all(
        &client,
        vec![header("bad/no-trailer.bin", None, false), data(&body)],
    )
    .await
    .expect_err("no trailer");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let status = write_all(&client, vec![data(b"no header")])
        .await
        .expect_err("no header");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    assert!(names(&setup.root.join("bad")).is_empty());
    assert_eq!(temp_files(&setup.root), Vec::<PathBuf>::new());

    // The same connection still works.
    let done = write_all(
        &client,
        vec![
            header("bad/good.bin", Some(body.len() as u64), false),
            data(&body),
            trailer(&Sha256::digest(&body)),
        ],
    )
    .await
    .unwrap();
    assert_eq!(done.bytes, body.len() as u64);
    assert_eq!(done.path, "bad/good.bin");
    assert_eq!(done.sha256.as_ref(), Sha256::digest(&body).as_slice());
}

/// Size limits act early: a declared size over `--max-upload-size` is
/// refused before any data (CLI: exit 1, the limit named); bytes past the
/// limit, or past the declared size, fail while the client's stream is still
/// open, not at its end.
#[tokio::test]
async fn size_limits_fail_early() {
    const LIMIT: u64 = 1 << 20;
    let setup = Setup::new();
    let server = in_process(&setup.root, LIMIT);
    let client = rpc(&server.url).await;

    let status = write_all(
        &client,
        vec![header("declared.bin", Some(LIMIT + 1), false)],
    )
    .await
    .expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limit of 1048576 bytes"),
        "{status:?}"
    );

    // Unknown size: the limit is checked as bytes arrive. The stream stays
    // open; the answer must come anyway.
    let (tx, call) = open_write(&client);
    tx.send(header("streamed.bin", None, false)).await.unwrap();
    let chunk = vec![1u8; CHUNK];
    for _ in 0..LIMIT as usize / CHUNK {
        tx.send(data(&chunk)).await.unwrap();
    }
    tx.send(data(b"one byte too many")).await.unwrap();
    let status = answer(call).await.expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    drop(tx);

    // More bytes than declared: at once, with the stream still open.
    let (tx, call) = open_write(&client);
    tx.send(header("more.bin", Some(10), false)).await.unwrap();
    tx.send(data(b"0123456789A")).await.unwrap();
    let status = answer(call).await.expect_err("more than declared");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    drop(tx);

    assert!(names(&setup.root).is_empty(), "{:?}", names(&setup.root));
}

/// Through the binary: a local file over the server's limit is refused
/// with RESOURCE_EXHAUSTED's message, exit 1, nothing written.
#[test]
fn size_limit_through_the_cli() {
    let setup = Setup::new();
    let server = upload_server(&setup.root, &["--max-upload-size", "1M"]);
    let local = setup.local("big.bin", &random_bytes((1 << 20) + 1, 3));
    client(&server.url, &setup.cwd, &["put", &local, "big.bin"])
        .expect_code(1)
        .expect_stderr("big.bin: the upload is larger than this server's limit of 1048576 bytes");
    let exact = setup.local("exact.bin", &random_bytes(1 << 20, 4));
    client(&server.url, &setup.cwd, &["put", &exact, "exact.bin"]).expect_code(0);
    assert_eq!(names(&setup.root), ["exact.bin"]);
}

/// A client killed in the middle of an upload (its stdin still open, by
/// PID) leaves nothing at the target, and the server removes the temporary
/// file.
#[test]
fn client_killed_mid_upload() {
    let setup = Setup::new();
    let server = upload_server(&setup.root, &[]);
    let mut child = fetchd()
        .args(["--server", &server.url, "put", "-", "slow/target.bin"])
        .current_dir(&setup.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&random_bytes(4 * CHUNK, 8)).unwrap();
    stdin.flush().unwrap();
    // The server has the temporary file and some of the bytes.
    let started = wait_until(STEP_TIMEOUT, || {
        temp_files(&setup.root)
            .iter()
            .any(|temp| fs::metadata(temp).is_ok_and(|meta| meta.len() > 0))
    });
    assert!(started, "no temporary file with data appeared");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let cleaned = wait_until(STEP_TIMEOUT, || temp_files(&setup.root).is_empty());
    assert!(
        cleaned,
        "temporary file left: {:?}",
        temp_files(&setup.root)
    );
    assert!(!setup.root.join("slow/target.bin").exists());
}

/// Two uploads to one target at once, in lockstep through the RPC: without
/// force the first to finish wins whole and the other gets ALREADY_EXISTS;
/// with force both succeed and the last rename wins, whole.
#[tokio::test]
async fn concurrent_uploads_in_lockstep() {
    let setup = Setup::new();
    let server = in_process(&setup.root, 1 << 30);
    let client = rpc(&server.url).await;
    let first = random_bytes(3 * CHUNK, 1);
    let second = random_bytes(3 * CHUNK + 1, 2);

    for force in [false, true] {
        let target = format!("race-{force}.bin");
        let (tx_a, call_a) = open_write(&client);
        let (tx_b, call_b) = open_write(&client);
        for (tx, body) in [(&tx_a, &first), (&tx_b, &second)] {
            tx.send(header(&target, Some(body.len() as u64), force))
                .await
                .unwrap();
            tx.send(data(&body[..CHUNK])).await.unwrap();
        }
        for (tx, body) in [(&tx_a, &first), (&tx_b, &second)] {
            tx.send(data(&body[CHUNK..])).await.unwrap();
        }
        tx_a.send(trailer(&Sha256::digest(&first))).await.unwrap();
        drop(tx_a);
        let a = answer(call_a).await.expect("the first to finish wins");
        assert_eq!(a.bytes, first.len() as u64);
        let _ = tx_b.send(trailer(&Sha256::digest(&second))).await;
        drop(tx_b);
        let b = answer(call_b).await;
        let stored = fs::read(setup.root.join(&target)).unwrap();
        if force {
            b.expect("with force both succeed");
            assert!(stored == second, "the last rename wins, whole");
        } else {
            let status = b.expect_err("without force the second fails");
            assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
            assert!(stored == first, "the first stays, whole");
        }
    }
    assert_eq!(temp_files(&setup.root), Vec::<PathBuf>::new());
}

/// Four `fetchd put` processes to one target at once: without --force
/// exactly one succeeds and the others say `already exists`; with --force
/// all succeed. Either way the target is one of the sources, whole.
#[test]
fn concurrent_cli_uploads() {
    let setup = Setup::new();
    let server = upload_server(&setup.root, &[]);
    let sources: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let content = random_bytes(4 << 20, 100 + i);
            (setup.local(&format!("src{i}"), &content), content)
        })
        .collect();
    for force in [false, true] {
        let target = format!("shared-{force}.bin");
        let children: Vec<_> = sources
            .iter()
            .map(|(local, _)| {
                let mut cmd = fetchd();
                cmd.args(["--server", &server.url, "put", local, &target])
                    .current_dir(&setup.cwd)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                if force {
                    cmd.arg("--force");
                }
                cmd.spawn().unwrap()
            })
            .collect();
        let outcomes: Vec<_> = children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .collect();
        let ok = outcomes.iter().filter(|o| o.status.success()).count();
        if force {
            assert_eq!(ok, 4, "{outcomes:?}");
        } else {
            assert_eq!(ok, 1, "{outcomes:?}");
            for failed in outcomes.iter().filter(|o| !o.status.success()) {
                assert_eq!(failed.status.code(), Some(1));
                let stderr = String::from_utf8_lossy(&failed.stderr);
                assert!(stderr.contains("already exists"), "{stderr}");
            }
        }
        let stored = fs::read(setup.root.join(&target)).unwrap();
        assert!(
            sources.iter().any(|(_, content)| *content == stored),
            "the target is not one whole source"
        );
    }
    assert_eq!(temp_files(&setup.root), Vec::<PathBuf>::new());
}

/// A server killed during an upload leaves its temporary file; the next
/// start with --allow-upload removes it (and leftovers anywhere below the
/// root) before serving. A start without --allow-upload writes nothing.
#[test]
fn crash_leftovers_are_swept_at_start() {
    let setup = Setup::new();
    fs::create_dir_all(setup.root.join("deep/er")).unwrap();
    let planted = setup
        .root
        .join("deep/er/.old.bin.fetchd-upload-0123456789abcdef");
    fs::write(&planted, b"left by a crash").unwrap();
    let lookalike = setup.root.join("deep/keep.fetchd-upload-notmine");
    fs::write(&lookalike, b"not ours").unwrap();

    let mut server = upload_server(&setup.root, &[]);
    let mut child = fetchd()
        .args(["--server", &server.url, "put", "-", "crash/target.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&random_bytes(2 * CHUNK, 9)).unwrap();
    stdin.flush().unwrap();
    assert!(
        wait_until(STEP_TIMEOUT, || !temp_files(&setup.root.join("crash"))
            .is_empty()),
        "no temporary file appeared"
    );
    assert!(!planted.exists(), "swept at the first start already");
    server.kill();
    drop(stdin);
    let _ = child.wait();
    assert_eq!(
        temp_files(&setup.root.join("crash")).len(),
        1,
        "the crash left it"
    );
    fs::write(&planted, b"left by a crash").unwrap();

    let read_only = ServerProcess::start(&setup.root, &[]);
    client(&read_only.url, &setup.cwd, &["ls", "-r"]).expect_code(0);
    assert_eq!(
        temp_files(&setup.root).len(),
        2,
        "no sweep without --allow-upload"
    );
    drop(read_only);

    let server = upload_server(&setup.root, &[]);
    // The sweep ends before the first call is served.
    client(&server.url, &setup.cwd, &["ls", "-r"]).expect_code(0);
    assert_eq!(temp_files(&setup.root), Vec::<PathBuf>::new());
    assert!(lookalike.exists(), "only names fetchd makes are removed");
    assert!(!setup.root.join("crash/target.bin").exists());
}

/// Usage errors exit 2: a missing REMOTE, stdin into a folder path.
#[test]
fn usage_errors() {
    let setup = Setup::new();
    let run = run_in(&setup.cwd, fetchd().args(["put", "only-local"]));
    run.expect_code(2);
    let run = run_in(
        &setup.cwd,
        fetchd().args(["--server", "127.0.0.1:1", "put", "-", "dir/"]),
    );
    run.expect_code(2).expect_stderr("give the file name");
    let run = client("127.0.0.1:1", &setup.cwd, &["put", "missing.bin", "x"]);
    run.expect_code(1).expect_stderr("missing.bin:");
}
