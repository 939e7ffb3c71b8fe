//! Production operation: health and reflection, Prometheus metrics,
//! structured logs, compression, completions and help. Real servers on
//! 127.0.0.1 port 0 (the binary, or in-process where the test needs to
//! hold a call open), temp dirs, no sleeps.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{InProcessServer, STEP_TIMEOUT, ServerProcess, client, fetchd, sha256_hex};
use fetchd::ReadEvent;
use tokio_stream::StreamExt;
use tonic_health::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response};

// ---------------------------------------------------------------- helpers

/// A log-like text file of about `bytes` bytes: compresses well.
fn log_text(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 200);
    let mut n = 0u64;
    while out.len() < bytes {
        writeln!(
            out,
            "2026-11-24T01:02:{:02}.{:03}Z INFO http request method=GET path=/api/v1/items/{} \
             status={} bytes={} took={}ms peer=10.1.{}.{}",
            n % 60,
            n % 1000,
            n * 7 % 10_000,
            if n.is_multiple_of(17) { 404 } else { 200 },
            n * 131 % 65_536,
            n % 250,
            n % 7,
            n % 255,
        )
        .unwrap();
        n += 1;
    }
    out
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format strictly: every line is empty, a comment, or
/// `name{labels} value`.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in metrics line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in metrics line {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|pair| !pair.is_empty()) {
                    let (key, quoted) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                    let value = quoted
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("unquoted label {pair:?} in {line:?}"));
                    labels.insert(key.to_string(), value.to_string());
                }
                (name, labels)
            }
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// The value of the sample named `name` whose labels include `labels`;
/// 0 when there is none yet (a counter not yet touched).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .find(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map_or(0.0, |sample| sample.value)
}

/// `GET path` over HTTP/1.1: (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let status = head.lines().next().unwrap_or_default().to_string();
    // The body is small; hyper sends it with a Content-Length.
    (status, body.to_string())
}

fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, body) = http_get(addr, "/metrics");
    assert!(status.contains(" 200 "), "{status}\n{body}");
    parse_metrics(&body)
}

/// Starts `fetchd serve --metrics-listen 127.0.0.1:0` and reads both lines.
fn server_with_metrics(root: &Path, extra: &[&str]) -> (ServerProcess, SocketAddr) {
    let mut args = vec!["--metrics-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = ServerProcess::start(root, &args);
    let line = server.next_stdout_line();
    let addr = line
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("expected `metrics on IP:PORT`, got {line:?}"))
        .parse()
        .expect("address in the metrics line");
    (server, addr)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

// ----------------------------------------------------------------- health

/// Health says SERVING, then NOT_SERVING as soon as shutdown begins, while a
/// transfer still keeps the server draining; the Watch stream then ends
/// (it would otherwise hold the drain), the transfer completes, and the
/// server exits without waiting out its grace period.
#[test]
fn health_turns_not_serving_while_a_transfer_drains() {
    let dir = tempfile::tempdir().unwrap();
    // Larger than the HTTP/2 windows and the reader's queue, so the read
    // stays open while the test does not consume it.
    let data = common::random_bytes(48 << 20, 8);
    std::fs::write(dir.path().join("big.bin"), &data).unwrap();
    let mut config = fetchd::ServerConfig::new(dir.path());
    config.grace = Duration::from_secs(30);
    let metrics = config.metrics.clone();
    let mut server = InProcessServer::start(config);

    runtime().block_on(async {
        let mut health = HealthClient::new(channel(&server.url).await);
        for service in ["", "fetchd.v1.Fetchd"] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health check")
                .into_inner()
                .status;
            assert_eq!(
                status,
                health_check_response::ServingStatus::Serving as i32,
                "service {service:?}"
            );
        }
        let mut watch = health
            .watch(HealthCheckRequest {
                service: "fetchd.v1.Fetchd".into(),
            })
            .await
            .expect("health watch")
            .into_inner();
        let first = watch.next().await.expect("a status").expect("ok");
        assert_eq!(first.status, ServingStatus::Serving as i32);

        // A transfer that is started and then not read: the server drains.
        let fetchd_client = server.client().await;
        let mut read = fetchd_client.read("big.bin", 0, None).await.expect("read");
        assert!(matches!(
            read.next().await.expect("event"),
            Some(ReadEvent::Start(_))
        ));
        let samples = parse_metrics(&metrics.render());
        assert_eq!(value(&samples, "fetchd_transfers_active", &[]), 1.0);

        server.begin_shutdown();
        let next = tokio::time::timeout(STEP_TIMEOUT, watch.next())
            .await
            .expect("a status change within the timeout")
            .expect("a status")
            .expect("ok");
        assert_eq!(next.status, ServingStatus::NotServing as i32);
        // The watch then ends (UNAVAILABLE), so it does not hold the drain
        // for the grace period; the transfer does.
        let ended = tokio::time::timeout(STEP_TIMEOUT, watch.next())
            .await
            .expect("the watch ends within the timeout");
        match ended {
            Some(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
            other => panic!("watch after NOT_SERVING: {other:?}"),
        }
        let samples = parse_metrics(&metrics.render());
        assert_eq!(value(&samples, "fetchd_transfers_active", &[]), 1.0);

        // The transfer that was running finishes, verified.
        let mut hasher = fetchd::Hasher::new();
        let mut digest = None;
        while let Some(event) = read.next().await.expect("read goes on while draining") {
            match event {
                ReadEvent::Data(bytes) => hasher.update(&bytes),
                ReadEvent::End(end) => digest = Some(end),
                ReadEvent::Start(_) => {}
            }
        }
        assert_eq!(hasher.bytes(), data.len() as u64);
        assert_eq!(Some(hasher.finalize()), digest);
    });
    // Everything is done: the server exits long before its 30 s of grace.
    let stopping = std::time::Instant::now();
    drop(server);
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        stopping.elapsed()
    );
    let samples = parse_metrics(&metrics.render());
    assert_eq!(value(&samples, "fetchd_transfers_active", &[]), 0.0);
    assert_eq!(
        value(
            &samples,
            "fetchd_calls_total",
            &[("method", "Read"), ("code", "OK")]
        ),
        1.0
    );
}

// ------------------------------------------------------------- reflection

/// Both reflection versions list the fetchd service and health, so stock
/// tools can find them without the .proto.
#[test]
fn reflection_lists_fetchd_and_health() {
    use tonic_reflection::pb::{v1, v1alpha};
    let dir = tempfile::tempdir().unwrap();
    let server = InProcessServer::serve(dir.path());
    runtime().block_on(async {
        let channel = channel(&server.url).await;

        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut responses =
            v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect("reflection v1")
                .into_inner();
        let response = responses.next().await.expect("a response").expect("ok");
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            response.message_response
        else {
            panic!("not a service list: {response:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in ["fetchd.v1.Fetchd", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == want), "v1 lists {names:?}");
        }

        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "fetchd.v1.Fetchd".into(),
                ),
            ),
        };
        let mut responses =
            v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone())
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect("reflection v1alpha")
                .into_inner();
        let response = responses.next().await.expect("a response").expect("ok");
        let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            files,
        )) = response.message_response
        else {
            panic!("not a file descriptor: {response:?}");
        };
        assert!(!files.file_descriptor_proto.is_empty());
    });
}

// ---------------------------------------------------------------- metrics

/// `/metrics` is the Prometheus text format, and a `get` moves the counters:
/// file bytes sent by the file's size, one more Read call with code OK, one
/// more transfer timed; nothing is left active. A compressed `get` (served
/// by tonic's codec instead of the hand-written route) counts the same, and
/// puts fewer bytes on the wire than the file holds.
#[test]
fn metrics_parse_and_move_after_a_get() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let text = log_text(3 << 20);
    std::fs::write(root.join("app.log"), &text).unwrap();
    let (server, metrics_addr) = server_with_metrics(&root, &[]);

    let (status, _) = http_get(metrics_addr, "/nope");
    assert!(status.contains(" 404 "), "{status}");

    let read_ok = [
        ("service", "fetchd.v1.Fetchd"),
        ("method", "Read"),
        ("code", "OK"),
    ];
    let before = scrape(metrics_addr);
    client(
        &server.url,
        dir.path(),
        &["get", "app.log", "-o", "plain.log"],
    )
    .expect_code(0);
    let after = scrape(metrics_addr);
    let sent = |s: &[Sample]| value(s, "fetchd_sent_bytes_total", &[]);
    let wire = |s: &[Sample]| value(s, "fetchd_wire_sent_bytes_total", &[]);
    assert_eq!(sent(&after) - sent(&before), text.len() as f64);
    assert!(wire(&after) - wire(&before) >= text.len() as f64);
    assert_eq!(
        value(&after, "fetchd_calls_total", &read_ok)
            - value(&before, "fetchd_calls_total", &read_ok),
        1.0
    );
    let timed = |s: &[Sample]| {
        value(
            s,
            "fetchd_transfer_duration_seconds_count",
            &[("method", "Read")],
        )
    };
    assert_eq!(timed(&after) - timed(&before), 1.0);
    assert_eq!(value(&after, "fetchd_transfers_active", &[]), 0.0);
    assert_eq!(value(&after, "fetchd_tails_active", &[]), 0.0);
    for name in [
        "fetchd_received_bytes_total",
        "fetchd_wire_received_bytes_total",
        "fetchd_checksum_failures_total",
    ] {
        assert!(after.iter().any(|s| s.name == name), "{name} exported");
    }

    let before = after;
    client(
        &server.url,
        dir.path(),
        &["get", "app.log", "-o", "zstd.log", "--compress", "zstd"],
    )
    .expect_code(0);
    let after = scrape(metrics_addr);
    assert_eq!(sent(&after) - sent(&before), text.len() as f64);
    assert!(
        (wire(&after) - wire(&before)) * 3.0 < text.len() as f64,
        "zstd should shrink a log at least 3x on the wire: {} -> {}",
        text.len(),
        wire(&after) - wire(&before)
    );
    assert_eq!(
        value(&after, "fetchd_calls_total", &read_ok)
            - value(&before, "fetchd_calls_total", &read_ok),
        1.0
    );

    let before = after;
    client(&server.url, dir.path(), &["get", "missing.log"]).expect_code(1);
    let after = scrape(metrics_addr);
    let not_found = |s: &[Sample]| value(s, "fetchd_calls_total", &[("code", "NOT_FOUND")]);
    assert!(not_found(&after) > not_found(&before));
}

// ------------------------------------------------------------------- logs

/// With `--log-format json` every stderr line is one JSON object, and each
/// call writes one event with method, path, bytes, duration, status, peer.
#[test]
fn json_log_lines_parse_and_carry_the_call_fields() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let data = common::random_bytes(2 << 20, 3);
    std::fs::write(root.join("a.bin"), &data).unwrap();
    let mut server =
        ServerProcess::start_with_env(&root, &["--log-format", "json"], &[("RUST_LOG", "info")]);
    client(&server.url, dir.path(), &["get", "a.bin"]).expect_code(0);
    client(&server.url, dir.path(), &["get", "nope.bin"]).expect_code(1);
    let status = server.terminate(STEP_TIMEOUT);
    assert!(status.success(), "{status:?}");

    let lines = server.stderr_to_end();
    assert!(!lines.is_empty());
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect();
    for event in &events {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(event.get(key).is_some(), "{key} missing in {event}");
        }
    }
    let calls: Vec<&serde_json::Value> = events
        .iter()
        .filter(|event| event["message"] == "call")
        .collect();
    let read = calls
        .iter()
        .find(|event| event["method"] == "/fetchd.v1.Fetchd/Read" && event["path"] == "a.bin")
        .unwrap_or_else(|| panic!("no Read call event in {lines:#?}"));
    assert_eq!(read["level"], "INFO");
    assert_eq!(read["status"], "OK");
    assert_eq!(read["bytes"], data.len() as u64);
    assert!(read["duration_ms"].as_f64().is_some(), "{read}");
    let peer: SocketAddr = read["peer"].as_str().expect("peer").parse().unwrap();
    assert!(peer.ip().is_loopback());
    let failed = calls
        .iter()
        .find(|event| event["path"] == "nope.bin")
        .unwrap_or_else(|| panic!("no event for the missing file in {lines:#?}"));
    assert_eq!(failed["status"], "NOT_FOUND");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("nope.bin"))
    );
}

// ------------------------------------------------------------ compression

/// `get --compress gzip|zstd` delivers the same bytes, verified, for text
/// and for random data, large (streamed) and small (read whole).
#[test]
fn get_round_trips_with_each_compression() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let files = [
        ("text.log", log_text(5 << 20)),
        ("random.bin", common::random_bytes(3 << 20, 11)),
        ("small.log", log_text(10_000)),
    ];
    for (name, data) in &files {
        std::fs::write(root.join(name), data).unwrap();
    }
    let server = ServerProcess::start(&root, &[]);
    for codec in ["gzip", "zstd", "none"] {
        for (name, data) in &files {
            let out = format!("{codec}-{name}");
            let run = client(
                &server.url,
                dir.path(),
                &["get", name, "-o", &out, "--compress", codec, "--json"],
            );
            run.expect_code(0);
            let got = std::fs::read(dir.path().join(&out)).unwrap();
            assert!(
                got == *data,
                "{codec} {name}: bytes differ\n{}",
                run.describe()
            );
            let line: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
            assert_eq!(line["sha256"], sha256_hex(data), "{}", run.describe());
        }
    }
    // To stdout too (the same Read, a different sink).
    let run = client(
        &server.url,
        dir.path(),
        &["get", "text.log", "-o", "-", "--compress", "gzip"],
    );
    run.expect_code(0);
    assert!(run.stdout == files[0].1);
}

/// `tail --compress gzip|zstd` prints the same last lines, and a followed
/// tail with compression shows a line appended later.
#[test]
fn tail_round_trips_with_each_compression() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let text = log_text(200_000);
    std::fs::write(root.join("app.log"), &text).unwrap();
    let server = ServerProcess::start(&root, &[]);
    let want: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    let last_five: Vec<u8> = want[want.len() - 5..].concat();
    for codec in ["gzip", "zstd"] {
        let run = client(
            &server.url,
            dir.path(),
            &[
                "tail",
                "app.log",
                "-n",
                "5",
                "--no-follow",
                "--compress",
                codec,
            ],
        );
        run.expect_code(0);
        assert!(run.stdout == last_five, "{codec}\n{}", run.describe());
    }

    let mut child = fetchd()
        .args(["--server", &server.url, "tail", "app.log", "-n", "2"])
        .args(["--compress", "zstd"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::lines_of(child.stdout.take().unwrap());
    let tail_lines: Vec<String> = (0..2)
        .map(|_| rx.recv_timeout(STEP_TIMEOUT).expect("a last line"))
        .collect();
    let last_two = String::from_utf8(want[want.len() - 2..].concat()).unwrap();
    assert_eq!(tail_lines.join("\n") + "\n", last_two);
    let appended = "2026-11-24T09:09:09Z WARN appended while followed";
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("app.log"))
        .unwrap();
    writeln!(log, "{appended}").unwrap();
    let line = rx.recv_timeout(STEP_TIMEOUT).expect("the appended line");
    assert_eq!(line, appended);
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = common::wait_with_timeout(&mut child, STEP_TIMEOUT).expect("tail exits");
    assert!(status.success(), "{status:?}");
}

/// The server compresses an answer only when the request came compressed:
/// a client that merely accepts gzip (as grpcio always says it does) gets
/// plain bytes; one that sends gzip or zstd gets that back.
#[test]
fn server_compresses_only_when_the_request_is_compressed() {
    use fetchd::proto::fetchd_client::FetchdClient;
    use tonic::codec::CompressionEncoding::{Gzip, Zstd};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.log"), log_text(3 << 20)).unwrap();
    std::fs::write(dir.path().join("tiny.log"), log_text(1000)).unwrap();
    let server = InProcessServer::serve(dir.path());
    runtime().block_on(async {
        let channel = channel(&server.url).await;
        let accepting = FetchdClient::new(channel.clone())
            .accept_compressed(Gzip)
            .accept_compressed(Zstd);
        let cases = [
            (accepting.clone(), None),
            (accepting.clone().send_compressed(Gzip), Some("gzip")),
            (accepting.clone().send_compressed(Zstd), Some("zstd")),
        ];
        for (rpc, want) in cases {
            for path in ["app.log", "tiny.log"] {
                let response = rpc
                    .clone()
                    .read(fetchd::proto::ReadRequest {
                        path: path.into(),
                        offset: 0,
                        length: None,
                        range_only: false,
                    })
                    .await
                    .expect("read");
                let encoding = response
                    .metadata()
                    .get("grpc-encoding")
                    .map(|v| v.to_str().unwrap().to_string());
                assert_eq!(encoding.as_deref(), want, "{path}");
                let mut stream = response.into_inner();
                while let Some(message) = stream.next().await {
                    message.expect("decodes");
                }
                let tail = rpc
                    .clone()
                    .tail(fetchd::proto::TailRequest {
                        path: path.into(),
                        start: Some(fetchd::proto::tail_request::Start::LastLines(3)),
                        follow: false,
                    })
                    .await
                    .expect("tail");
                let encoding = tail
                    .metadata()
                    .get("grpc-encoding")
                    .map(|v| v.to_str().unwrap().to_string());
                assert_eq!(encoding.as_deref(), want, "tail {path}");
            }
        }
    });
}

// ------------------------------------------------------- completions, help

/// `fetchd completions SHELL` writes a script for bash, zsh and fish, and
/// `fetchd man [VERB]` a roff page.
#[test]
fn completions_and_man_pages_are_written() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let run = common::run_in(dir.path(), fetchd().args(["completions", shell]));
        run.expect_code(0);
        let script = run.stdout_str();
        assert!(
            script.contains("fetchd") && script.contains("metrics-listen"),
            "{shell}\n{}",
            run.describe()
        );
    }
    let run = common::run_in(dir.path(), fetchd().args(["completions", "tcsh"]));
    run.expect_code(2);
    let run = common::run_in(dir.path(), fetchd().arg("man"));
    run.expect_code(0);
    assert!(run.stdout_str().starts_with(".ie") || run.stdout_str().contains(".TH fetchd"));
    let run = common::run_in(dir.path(), fetchd().args(["man", "get"]));
    run.expect_code(0);
    assert!(run.stdout_str().contains("fetchd-get") && run.stdout_str().contains("compress"));
    common::run_in(dir.path(), fetchd().args(["man", "nope"])).expect_code(2);
}

/// Every verb and every flag of `--help` says what it does.
#[test]
fn every_flag_has_help() {
    use clap::CommandFactory;
    let mut command = fetchd::Cli::command();
    command.build();
    let mut missing = Vec::new();
    let mut check = |path: &str, command: &clap::Command| {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
    };
    check("fetchd", &command);
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        assert!(
            sub.get_about().is_some(),
            "verb {} has no about",
            sub.get_name()
        );
        check(&format!("fetchd {}", sub.get_name()), sub);
    }
    assert!(missing.is_empty(), "flags without help: {missing:?}");
    let run = common::run(Command::new(common::fetchd_bin()).args(["serve", "--help"]));
    run.expect_code(0);
    for flag in ["--metrics-listen", "--log-format", "--grace", "--root"] {
        assert!(
            run.stdout_str().contains(flag),
            "{flag}\n{}",
            run.describe()
        );
    }
}

/// Network threads of `serve`: `--workers N` runs exactly N, the default
/// is half the CPUs (at least one), and 0 is a usage error. Counted right
/// after start, before any call: the blocking pool's threads, which carry
/// the same name, only exist once a call needed one. Worker threads name
/// themselves as they start, which may be just after `listening on`, so
/// the count is awaited (bounded) before it is compared.
#[test]
fn serve_runs_the_workers_it_is_told() {
    fn workers(pid: u32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == "tokio-rt-worker")
            })
            .count()
    }
    fn assert_workers(pid: u32, want: usize) {
        common::wait_until(STEP_TIMEOUT, || workers(pid) >= want);
        assert_eq!(workers(pid), want);
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("f"), b"served by three").unwrap();
    let server = ServerProcess::start(root.path(), &["--workers", "3"]);
    assert_workers(server.pid(), 3);
    let cwd = tempfile::tempdir().unwrap();
    let run = client(&server.url, cwd.path(), &["get", "f", "-o", "-"]);
    run.expect_code(0);
    assert_eq!(run.stdout_str(), "served by three");

    let server = ServerProcess::start(root.path(), &[]);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_workers(server.pid(), cpus.div_ceil(2));

    common::run_in(cwd.path(), fetchd().args(["serve", "--workers", "0"])).expect_code(2);
}
