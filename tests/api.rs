//! The API as a client in another language sees it (issue 15, item 6): the
//! messages a server sends name no command-line flag, the request message
//! limit is a whole-message limit, `Read` chunks stay within 1 MiB; and the
//! command line around it: `serve --help` shows only serve's options, the
//! client options work before and after the verb, and the CLI adds its own
//! hints when it prints an error.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use fetchd::proto::fetchd_client::FetchdClient;
use fetchd::proto::{
    CopyRange, FileVersion, ReadRequest, StatRequest, WriteHeader, WriteRequest, WriteTrailer,
    read_response, write_request,
};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Status};

const TOKEN: &str = "api-test-token";

/// The client options, as they appear in `--help`.
const CLIENT_OPTIONS: [&str; 6] = [
    "--server",
    "--token",
    "--ca-cert",
    "--client-cert",
    "--client-key",
    "--retry-for",
];

/// The words of a help text or man page that are exactly `option` (so
/// `--token-file` is not `--token`).
fn mentions(text: &str, option: &str) -> bool {
    // Man pages spell `-` as `\-` and set options in `\fB...\fR`.
    let text = text
        .replace("\\-", "-")
        .replace("\\fB", " ")
        .replace("\\fR", " ")
        .replace("\\fI", " ");
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .any(|word| word == option)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `fetchd serve --help` (and its man page) shows serve's options only;
/// `fetchd --help`, `fetchd get --help` and `fetchd man get` show the client
/// options; `serve` refuses them.
#[test]
fn serve_help_has_no_client_options() {
    let cwd = tempfile::tempdir().unwrap();
    let serve = run_in(cwd.path(), fetchd().args(["serve", "--help"]));
    serve.expect_code(0);
    let serve_man = run_in(cwd.path(), fetchd().args(["man", "serve"]));
    serve_man.expect_code(0);
    for option in CLIENT_OPTIONS {
        assert!(
            !mentions(&serve.stdout_str(), option),
            "{option}\n{}",
            serve.describe()
        );
        assert!(!mentions(&serve_man.stdout_str(), option), "{option}");
    }
    assert!(mentions(&serve.stdout_str(), "--token-file"));
    assert!(mentions(&serve.stdout_str(), "--max-request-bytes"));

    for args in [
        &["--help"][..],
        &["get", "--help"],
        &["put", "--help"],
        &["man", "get"],
    ] {
        let run = run_in(cwd.path(), fetchd().args(args));
        run.expect_code(0);
        for option in CLIENT_OPTIONS {
            assert!(
                mentions(&run.stdout_str(), option),
                "{args:?} {option}\n{}",
                run.describe()
            );
        }
    }
    let get = run_in(cwd.path(), fetchd().args(["get", "--help"]));
    assert!(
        get.stdout_str().contains("FETCHD_SERVER"),
        "{}",
        get.describe()
    );

    for option in ["--server", "--token", "--ca-cert"] {
        run_in(cwd.path(), fetchd().args(["serve", option, "x"]))
            .expect_code(2)
            .expect_stderr(&format!("unexpected argument '{option}'"));
    }
}

/// The client options work before the verb and after it; after it wins,
/// and either wins over the environment.
#[test]
fn client_options_before_and_after_the_verb() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("f.txt"), b"f\n").unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens");
    fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let server = ServerProcess::start(root.path(), &["--token-file", s(&tokens)]);
    let cwd = tempfile::tempdir().unwrap();
    // Nothing listens there: a client that picks it fails at once.
    let nowhere = "http://127.0.0.1:1";
    let url = server.url.as_str();
    let stat = |cmd: &mut std::process::Command| {
        let run = run_in(cwd.path(), cmd);
        run.expect_code(0);
        assert!(
            run.stdout_str().contains("path: f.txt"),
            "{}",
            run.describe()
        );
    };
    stat(fetchd().args(["--server", url, "--token", TOKEN, "stat", "f.txt"]));
    stat(fetchd().args(["stat", "f.txt", "--server", url, "--token", TOKEN]));
    stat(fetchd().args(["--server", url, "stat", "f.txt", "--token", TOKEN]));
    stat(fetchd().args([
        "--server", nowhere, "stat", "f.txt", "--server", url, "--token", TOKEN,
    ]));
    stat(
        fetchd()
            .env("FETCHD_SERVER", nowhere)
            .env("FETCHD_TOKEN", "wrong")
            .args(["--server", url, "--token", TOKEN, "stat", "f.txt"]),
    );
    stat(
        fetchd()
            .env("FETCHD_SERVER", nowhere)
            .args(["stat", "f.txt", "--server", url, "--token", TOKEN]),
    );
    stat(
        fetchd()
            .env("FETCHD_SERVER", url)
            .env("FETCHD_TOKEN", TOKEN)
            .args(["stat", "f.txt"]),
    );
    let get = run_in(
        cwd.path(),
        fetchd().env("FETCHD_TOKEN", TOKEN).args([
            "--retry-for",
            "0",
            "get",
            "f.txt",
            "-o",
            "-",
            "--server",
            url,
        ]),
    );
    get.expect_code(0);
    assert_eq!(get.stdout_str(), "f\n");
}

/// What a `fetchd` user sees: the server's neutral message and the command
/// line's hint, on stderr and in `--json` alike.
#[test]
fn the_cli_adds_its_hints() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("dir")).unwrap();
    fs::write(root.path().join("dir/inner.txt"), b"inner\n").unwrap();
    fs::write(root.path().join("f.txt"), b"old\n").unwrap();
    let cwd = tempfile::tempdir().unwrap();
    fs::write(cwd.path().join("new.txt"), b"new\n").unwrap();

    let uploads = ServerProcess::start(root.path(), &["--allow-upload"]);
    let run = client(&uploads.url, cwd.path(), &["get", "dir"]);
    run.expect_code(1)
        .expect_stderr("fetchd: dir: is a directory (use -r to fetch a tree)");
    let run = client(&uploads.url, cwd.path(), &["get", "dir", "--json"]);
    run.expect_code(1);
    let line: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(line["error"], "is a directory (use -r to fetch a tree)");
    client(&uploads.url, cwd.path(), &["get", "-r", "dir"]).expect_code(0);

    let run = client(&uploads.url, cwd.path(), &["put", "new.txt", "f.txt"]);
    run.expect_code(1)
        .expect_stderr("fetchd: f.txt: already exists on the server; use --force to replace it");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.describe());
    client(
        &uploads.url,
        cwd.path(),
        &["put", "new.txt", "f.txt", "--force"],
    )
    .expect_code(0);

    let read_only = ServerProcess::start(root.path(), &[]);
    let run = client(&read_only.url, cwd.path(), &["put", "new.txt", "g.txt"]);
    run.expect_code(1).expect_stderr(
        "fetchd: g.txt: permission denied: this server does not accept uploads \
         (put needs a server started with `fetchd serve --allow-upload`)",
    );

    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens");
    fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let guarded = ServerProcess::start(root.path(), &["--token-file", s(&tokens)]);
    for args in [
        &["stat", "f.txt"][..],
        &["ls"],
        &["get", "f.txt", "-o", "-"],
    ] {
        client(&guarded.url, cwd.path(), args)
            .expect_code(1)
            .expect_stderr("fetchd: missing or wrong token (check --token or FETCHD_TOKEN)");
    }
}

async fn rpc(url: &str) -> FetchdClient<Channel> {
    FetchdClient::connect(url.to_string()).await.unwrap()
}

/// A whole `Write` call: header, the chunks, trailer.
async fn write(
    client: &FetchdClient<Channel>,
    path: &str,
    chunks: Vec<Vec<u8>>,
    force: bool,
) -> Result<(), Status> {
    let mut hasher = Sha256::new();
    let size: u64 = chunks.iter().map(|chunk| chunk.len() as u64).sum();
    let mut messages = vec![WriteRequest {
        kind: Some(write_request::Kind::Header(WriteHeader {
            path: path.into(),
            size: Some(size),
            force,
            base: None,
        })),
    }];
    for chunk in chunks {
        hasher.update(&chunk);
        messages.push(WriteRequest {
            kind: Some(write_request::Kind::Data(chunk.into())),
        });
    }
    messages.push(WriteRequest {
        kind: Some(write_request::Kind::Trailer(WriteTrailer {
            sha256: hasher.finalize().to_vec().into(),
        })),
    });
    client
        .clone()
        .write(tokio_stream::iter(messages))
        .await
        .map(|_| ())
}

/// Asserts a status with `code` and exactly `message`, which names no
/// command-line flag.
fn assert_status(status: &Status, code: Code, message: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message, "{status:?}");
    assert!(!message.contains("--") && !message.contains("fetchd "));
}

fn in_process(root: &Path, allow_upload: bool) -> InProcessServer {
    let mut config = fetchd::ServerConfig::new(root);
    config.grace = Duration::from_secs(2);
    config.allow_upload = allow_upload;
    InProcessServer::start(config)
}

fn tree() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("dir")).unwrap();
    fs::write(root.join("f.txt"), b"old\n").unwrap();
    (tmp, root)
}

/// The statuses a plain gRPC client gets, word for word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_statuses_are_neutral() {
    let (_tmp, root) = tree();
    let server = in_process(&root, true);
    let client = rpc(&server.url).await;

    let empty = client
        .clone()
        .stat(StatRequest {
            path: String::new(),
            want_sha256: false,
        })
        .await
        .unwrap_err();
    assert_status(
        &empty,
        Code::InvalidArgument,
        "invalid path: the path is empty (use / for the root)",
    );

    let read = |path: &str, offset: u64| {
        let mut client = client.clone();
        let request = ReadRequest {
            path: path.into(),
            offset,
            length: None,
            range_only: false,
        };
        async move {
            let mut stream = client.read(request).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok::<(), Status>(())
        }
    };
    let dir = read("dir", 0).await.unwrap_err();
    assert_status(&dir, Code::FailedPrecondition, "dir: is a directory");
    let past = read("f.txt", 5).await.unwrap_err();
    assert_status(
        &past,
        Code::OutOfRange,
        "f.txt: offset 5 is past the end of the file (4 bytes)",
    );

    let exists = write(&client, "f.txt", vec![b"new\n".to_vec()], false)
        .await
        .unwrap_err();
    assert_status(
        &exists,
        Code::AlreadyExists,
        "f.txt: already exists on the server",
    );
    write(&client, "f.txt", vec![b"new\n".to_vec()], true)
        .await
        .unwrap();

    let read_only = in_process(&root, false);
    let refused = write(
        &rpc(&read_only.url).await,
        "g.txt",
        vec![b"g".to_vec()],
        false,
    )
    .await
    .unwrap_err();
    assert_status(
        &refused,
        Code::PermissionDenied,
        "g.txt: permission denied: this server does not accept uploads",
    );
}

/// The request limit (4 MiB by default) is on the whole encoded message: a
/// `WriteRequest` carrying `data` has 5 bytes of its own at this size (the
/// field's tag and a 4-byte length), so 4 MiB - 5 bytes of data fit and
/// 4 MiB - 4 do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_limit_is_the_whole_message() {
    let (_tmp, root) = tree();
    let server = in_process(&root, true);
    let client = rpc(&server.url).await;
    let limit = fetchd::DEFAULT_MAX_REQUEST_BYTES;
    assert_eq!(limit, 4 << 20);
    write(&client, "fits.bin", vec![vec![7; limit - 5]], false)
        .await
        .unwrap();
    assert_eq!(
        fs::metadata(root.join("fits.bin")).unwrap().len(),
        (limit - 5) as u64
    );
    let over = write(&client, "over.bin", vec![vec![7; limit - 4]], false)
        .await
        .unwrap_err();
    assert_status(
        &over,
        Code::ResourceExhausted,
        &format!(
            "request message of {} bytes is over the server's limit of {limit} bytes",
            limit + 1
        ),
    );
    assert!(over.metadata().get("grpc-retry-pushback-ms").is_none());
    assert!(!root.join("over.bin").exists());
}

/// `Read` sends data in messages of at most 1 MiB, in order, adding up to
/// the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_chunks_are_at_most_one_mib() {
    let (_tmp, root) = tree();
    let data = random_bytes((5 << 20) / 2 + 3, 11);
    fs::write(root.join("big.bin"), &data).unwrap();
    let server = in_process(&root, false);
    let mut client = rpc(&server.url).await;
    let mut stream = client
        .read(ReadRequest {
            path: "big.bin".into(),
            offset: 0,
            length: None,
            range_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        if let Some(read_response::Kind::Data(chunk)) = message.kind {
            assert!(
                !chunk.is_empty() && chunk.len() <= 1 << 20,
                "{}",
                chunk.len()
            );
            received.extend_from_slice(&chunk);
        }
    }
    assert_eq!(received, data);
}

/// A `range_only` read sends the range with no prefix digest and a trailer
/// digest over the bytes sent; without it the trailer is the whole file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_only_reads_digest_the_range() {
    let (_tmp, root) = tree();
    let data = random_bytes((3 << 20) + 17, 12);
    fs::write(root.join("big.bin"), &data).unwrap();
    let server = in_process(&root, false);
    let client = rpc(&server.url).await;
    let (offset, length) = (1_000_003u64, 1_500_000u64);
    let range = &data[offset as usize..(offset + length) as usize];
    for range_only in [true, false] {
        let mut stream = client
            .clone()
            .read(ReadRequest {
                path: "big.bin".into(),
                offset,
                length: Some(length),
                range_only,
            })
            .await
            .unwrap()
            .into_inner();
        let (mut received, mut prefix, mut trailer) = (Vec::new(), None, None);
        while let Some(message) = stream.message().await.unwrap() {
            match message.kind {
                Some(read_response::Kind::Header(header)) => prefix = Some(header.prefix_sha256),
                Some(read_response::Kind::Data(chunk)) => received.extend_from_slice(&chunk),
                Some(read_response::Kind::Trailer(end)) => trailer = Some(end.sha256),
                _ => {}
            }
        }
        assert_eq!(received, range, "range_only {range_only}");
        let (prefix, trailer) = (prefix.unwrap(), trailer.unwrap());
        if range_only {
            assert!(prefix.is_empty());
            assert_eq!(&trailer[..], &Sha256::digest(range)[..]);
        } else {
            assert_eq!(&prefix[..], &Sha256::digest(&data[..offset as usize])[..]);
            assert_eq!(&trailer[..], &Sha256::digest(&data)[..]);
        }
    }
}

/// The next message of a tail stream, within 10 s.
async fn next(
    stream: &mut tonic::Streaming<fetchd::proto::TailResponse>,
) -> fetchd::proto::tail_response::Kind {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .expect("the stream goes on")
        .kind
        .unwrap()
}

/// An idle tail stream carries `HEARTBEAT` events at the last cursor about
/// every `tail_heartbeat` (a proxy's read timeout never sees a silent
/// stream), and data flows as before after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tails_carry_heartbeats() {
    use fetchd::proto::{TailEventKind, TailRequest, tail_request, tail_response};
    let (_tmp, root) = tree();
    fs::write(root.join("app.log"), b"one\n").unwrap();
    let mut config = fetchd::ServerConfig::new(&root);
    config.tail_heartbeat = Duration::from_millis(300);
    let server = InProcessServer::start(config);
    let mut client = rpc(&server.url).await;
    let mut stream = client
        .tail(TailRequest {
            path: "app.log".into(),
            start: Some(tail_request::Start::LastLines(1)),
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut cursor = None;
    let mut heartbeats = 0;
    let started = std::time::Instant::now();
    while heartbeats < 3 {
        match next(&mut stream).await {
            tail_response::Kind::Data(data) => {
                assert_eq!(&data.data[..], b"one\n");
                cursor = data.cursor;
            }
            tail_response::Kind::Event(event) if event.kind == TailEventKind::Heartbeat as i32 => {
                assert!(cursor.is_some(), "a heartbeat before the data");
                assert_eq!(event.cursor, cursor, "a heartbeat moves no cursor");
                heartbeats += 1;
            }
            tail_response::Kind::Event(event) => {
                assert_eq!(event.kind, TailEventKind::Opened as i32, "{event:?}");
            }
        }
    }
    // Three heartbeats of a quiet stream took at least three periods.
    assert!(started.elapsed() >= Duration::from_millis(900));
    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(root.join("app.log"))
        .unwrap();
    std::io::Write::write_all(&mut log, b"two\n").unwrap();
    loop {
        match next(&mut stream).await {
            tail_response::Kind::Data(data) => {
                assert_eq!(&data.data[..], b"two\n");
                break;
            }
            tail_response::Kind::Event(event) => {
                assert_eq!(event.kind, TailEventKind::Heartbeat as i32, "{event:?}");
            }
        }
    }
}

/// The messages of a delta `Write` of `path` over `base`: header, `pieces`
/// (a copy of the base or data), trailer with `sha256`.
fn delta_messages(
    path: &str,
    base: Option<FileVersion>,
    force: bool,
    pieces: Vec<write_request::Kind>,
    sha256: Vec<u8>,
) -> Vec<WriteRequest> {
    let size = 2 * 1024 * 1024;
    let mut messages = vec![WriteRequest {
        kind: Some(write_request::Kind::Header(WriteHeader {
            path: path.into(),
            size: Some(size),
            force,
            base,
        })),
    }];
    messages.extend(
        pieces
            .into_iter()
            .map(|kind| WriteRequest { kind: Some(kind) }),
    );
    messages.push(WriteRequest {
        kind: Some(write_request::Kind::Trailer(WriteTrailer {
            sha256: sha256.into(),
        })),
    });
    messages
}

fn copy(offset: u64, length: u64) -> write_request::Kind {
    write_request::Kind::Copy(CopyRange { offset, length })
}

/// A delta `Write`: copies read the pinned base, data fills the rest, the
/// sha256 covers the assembled file; a stale base is ABORTED, a copy
/// without a base or past its end refused, and none of them touches the
/// target or leaves a temporary file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_writes_copy_from_a_pinned_base() {
    let (_tmp, root) = tree();
    let old = random_bytes(2 * 1024 * 1024, 9);
    fs::write(root.join("image.bin"), &old).unwrap();
    let server = in_process(&root, true);
    let client = rpc(&server.url).await;
    let version = client
        .clone()
        .stat(StatRequest {
            path: "image.bin".into(),
            want_sha256: false,
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    // New file: the base's second MiB, then 1 MiB of new bytes.
    let fresh = random_bytes(1024 * 1024, 10);
    let mut new = old[1024 * 1024..].to_vec();
    new.extend_from_slice(&fresh);
    let sha = Sha256::digest(&new).to_vec();
    let write_with = |base: Option<FileVersion>, force: bool, pieces, sha: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .clone()
                .write(tokio_stream::iter(delta_messages(
                    "image.bin",
                    base,
                    force,
                    pieces,
                    sha,
                )))
                .await
        }
    };
    // The base's second MiB copied, then the new MiB.
    let edit = || {
        vec![
            copy(1024 * 1024, 1024 * 1024),
            write_request::Kind::Data(fresh.clone().into()),
        ]
    };
    let untouched = || {
        assert!(
            fs::read(root.join("image.bin")).unwrap() == old,
            "target untouched"
        );
        let names: Vec<_> = fs::read_dir(&root).unwrap().collect();
        assert_eq!(names.len(), 3, "no temporary file: {names:?}");
    };

    let no_base = write_with(None, true, edit(), sha.clone())
        .await
        .unwrap_err();
    assert_eq!(no_base.code(), Code::InvalidArgument, "{no_base:?}");
    untouched();

    let past_end = write_with(
        Some(version),
        true,
        vec![copy(1024 * 1024 + 1, 1024 * 1024)],
        sha.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(past_end.code(), Code::OutOfRange, "{past_end:?}");
    untouched();

    let without_force = write_with(Some(version), false, vec![], sha.clone())
        .await
        .unwrap_err();
    assert_eq!(
        without_force.code(),
        Code::InvalidArgument,
        "{without_force:?}"
    );
    untouched();

    let mut stale = version;
    stale.mtime_ns -= 1;
    let aborted = write_with(Some(stale), true, edit(), sha.clone())
        .await
        .unwrap_err();
    assert_eq!(aborted.code(), Code::Aborted, "{aborted:?}");
    untouched();

    let mut wrong = sha.clone();
    wrong[0] ^= 1;
    let mismatch = write_with(Some(version), true, edit(), wrong)
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), Code::DataLoss, "{mismatch:?}");
    untouched();

    let stored = write_with(Some(version), true, edit(), sha.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.bytes, new.len() as u64);
    assert_eq!(stored.sha256.to_vec(), sha);
    assert!(
        fs::read(root.join("image.bin")).unwrap() == new,
        "the assembled file"
    );
}
