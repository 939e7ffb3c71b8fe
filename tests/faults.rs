//! Real networks and real load: busy servers, restarts and drains, dropped
//! and stalled connections (through the fault-injecting relay in
//! `tests/common/relay.rs`), signals right after `listening on`, full
//! disks, and windows on a long link. Real servers on 127.0.0.1 port 0,
//! the real CLI, temp dirs; every wait is on an event with a timeout.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::relay::{Faults, Relay};
use common::{
    Background, InProcessServer, STEP_TIMEOUT, ServerProcess, append_lines, client, fetchd, line,
    lines_of, random_bytes, sha256_hex, wait_until, wait_with_timeout,
};
use fetchd::ReadEvent;

const MIB: usize = 1024 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A relay with some faults in front of an in-process server, on a runtime
/// of its own that the relay's tasks run on (and the test's own async
/// calls, if it makes any). The relay is dropped before its runtime.
struct Link {
    relay: Relay,
    runtime: tokio::runtime::Runtime,
}

impl Link {
    fn start(server: &InProcessServer, faults: Faults) -> Link {
        let runtime = runtime();
        let relay = runtime.block_on(Relay::start(server.addr, faults)).unwrap();
        Link { relay, runtime }
    }
}

/// Starts `fetchd serve` on a fixed address (a restart on the same port).
fn serve_at(root: &Path, addr: &str, extra: &[&str]) -> ServerProcess {
    ServerProcess::start_on(addr, root, extra, &[])
}

// ------------------------------------------------------------- signals

/// A script that signals `fetchd serve` as soon as it reads `listening on`
/// gets a clean drain and exit 0, never death by the signal: the handlers
/// are installed before the line is printed. Many rounds, both signals.
#[test]
fn serve_exits_cleanly_on_a_signal_right_after_listening() {
    let root = tempfile::tempdir().unwrap();
    for round in 0..24 {
        let mut child = fetchd()
            .args(["serve", "--listen", "127.0.0.1:0", "--root"])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let line = lines.recv_timeout(STEP_TIMEOUT).expect("listening line");
        assert!(line.starts_with("listening on "), "{line}");
        let signal = if round % 2 == 0 {
            rustix::process::Signal::TERM
        } else {
            rustix::process::Signal::INT
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
        let status = wait_with_timeout(&mut child, STEP_TIMEOUT).expect("exit");
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: {status:?} (signal {signal:?})"
        );
    }
}

// -------------------------------------------------------- busy servers

/// A server at its transfer limit answers RESOURCE_EXHAUSTED with a retry
/// pushback: `get` says `server busy, retrying in ...` and gets the file
/// once the slot is free; with `--retry-for 0` it fails at once.
#[test]
fn busy_server_is_retried_until_a_slot_frees() {
    let root = tempfile::tempdir().unwrap();
    // Larger than the connection window: the server cannot finish sending
    // it while the holder reads nothing, so the slot stays taken.
    let held = random_bytes(48 * MIB, 1);
    let wanted = random_bytes(300_000, 2);
    std::fs::write(root.path().join("held.bin"), &held).unwrap();
    std::fs::write(root.path().join("wanted.bin"), &wanted).unwrap();
    let mut config = fetchd::ServerConfig::new(root.path());
    config.max_transfers = 1;
    let server = InProcessServer::start(config);
    let rt = runtime();
    let holder = rt.block_on(server.client());
    let mut stream = rt
        .block_on(holder.read("held.bin", 0, None))
        .expect("holds the only slot");
    assert!(matches!(
        rt.block_on(stream.next()).unwrap(),
        Some(ReadEvent::Start(_))
    ));

    let work = tempfile::tempdir().unwrap();
    let refused = client(
        &server.url,
        work.path(),
        &["--retry-for", "0", "get", "wanted.bin"],
    );
    refused.expect_code(1).expect_stderr("server busy");
    assert!(!work.path().join("wanted.bin").exists());

    let mut get = Background::start(work.path(), &server.url, &["get", "wanted.bin"]);
    get.wait_stderr("wanted.bin: server busy, retrying in");
    drop(stream);
    let code = get.finish();
    let stderr = get.notices.clone();
    assert_eq!(code, 0, "{stderr:?}");
    assert_eq!(
        std::fs::read(work.path().join("wanted.bin")).unwrap(),
        wanted
    );
}

/// `put` of a regular file to a busy server is retried too, and lands whole.
#[test]
fn busy_server_put_is_retried() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("held.bin"), random_bytes(48 * MIB, 3)).unwrap();
    let mut config = fetchd::ServerConfig::new(root.path());
    config.max_transfers = 1;
    config.allow_upload = true;
    let server = InProcessServer::start(config);
    let rt = runtime();
    let holder = rt.block_on(server.client());
    let mut stream = rt.block_on(holder.read("held.bin", 0, None)).unwrap();
    rt.block_on(stream.next()).unwrap();

    let work = tempfile::tempdir().unwrap();
    let local = random_bytes(700_000, 4);
    std::fs::write(work.path().join("up.bin"), &local).unwrap();
    let mut put = Background::start(work.path(), &server.url, &["put", "up.bin", "in/up.bin"]);
    put.wait_stderr("in/up.bin: server busy, retrying in");
    drop(stream);
    let code = put.finish();
    let stderr = put.notices.clone();
    assert_eq!(code, 0, "{stderr:?}");
    assert_eq!(std::fs::read(root.path().join("in/up.bin")).unwrap(), local);
}

/// `put` to three servers, one of them busy: the other two get the file in
/// the shared pass, the busy one gets it sent again on its own under the
/// retry policy once it has room; exit 0, the file whole on all three.
#[test]
fn fleet_put_retries_a_busy_server_alone() {
    let roots: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    std::fs::write(roots[1].path().join("held.bin"), random_bytes(48 * MIB, 3)).unwrap();
    let servers: Vec<InProcessServer> = roots
        .iter()
        .enumerate()
        .map(|(i, root)| {
            let mut config = fetchd::ServerConfig::new(root.path());
            config.allow_upload = true;
            if i == 1 {
                config.max_transfers = 1;
            }
            InProcessServer::start(config)
        })
        .collect();
    let rt = runtime();
    let holder = rt.block_on(servers[1].client());
    let mut stream = rt.block_on(holder.read("held.bin", 0, None)).unwrap();
    rt.block_on(stream.next()).unwrap();

    let work = tempfile::tempdir().unwrap();
    let local = random_bytes(3 * MIB + 5, 4);
    std::fs::write(work.path().join("up.bin"), &local).unwrap();
    let b = format!("b={}", servers[1].url);
    let c = format!("c={}", servers[2].url);
    let mut put = Background::start(
        work.path(),
        &format!("a={}", servers[0].url),
        &["--server", &b, "--server", &c, "put", "up.bin", "in/up.bin"],
    );
    put.wait_stderr("b: ");
    for i in [0, 2] {
        assert_eq!(
            std::fs::read(roots[i].path().join("in/up.bin")).unwrap(),
            local
        );
    }
    assert!(!roots[1].path().join("in/up.bin").exists());
    drop(stream);
    let code = put.finish();
    let stderr = put.notices.clone();
    assert_eq!(code, 0, "{stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|line| line.contains("sending it to this server again")),
        "{stderr:?}"
    );
    assert_eq!(
        std::fs::read(roots[1].path().join("in/up.bin")).unwrap(),
        local
    );
}

/// Nothing listening: the very first connection is refused, and the
/// client fails at once (no retries) saying so.
#[test]
fn refused_first_connection_fails_at_once() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let run = client(
        &format!("http://127.0.0.1:{port}"),
        work.path(),
        &["get", "x.bin"],
    );
    run.expect_code(1).expect_stderr("nothing is listening");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(!run.stderr.contains("retrying"), "{}", run.describe());
}

// ----------------------------------------------- restarts and draining

/// A server killed mid-transfer and started again on the same port: the
/// running `get` retries until it is back, continues from its part file,
/// and lands the file whole. The same for a rolling restart (SIGTERM, a
/// short grace, a new server), which costs the client nothing but a wait.
#[test]
fn get_survives_a_server_restart_mid_transfer() {
    let root = tempfile::tempdir().unwrap();
    let data = random_bytes(24 * MIB, 5);
    std::fs::write(root.path().join("big.bin"), &data).unwrap();
    for graceful in [false, true] {
        let first = ServerProcess::start(root.path(), &["--grace", "1"]);
        let addr = first.addr.to_string();
        let mut first = Some(first);
        let work = tempfile::tempdir().unwrap();
        let part = work.path().join("big.bin.part");
        let mut get = Background::start(
            work.path(),
            &format!("http://{addr}"),
            &["get", "big.bin", "--limit-rate", "6M"],
        );
        assert!(
            wait_until(STEP_TIMEOUT, || std::fs::metadata(&part)
                .is_ok_and(|meta| meta.len() > 4 * MIB as u64)),
            "the download never got going"
        );
        let mut old = first.take().unwrap();
        if graceful {
            // Draining: the transfer runs on for the grace second, then
            // its connection is cut.
            let status = old.terminate(STEP_TIMEOUT);
            assert_eq!(status.code(), Some(0));
        } else {
            old.kill();
        }
        get.wait_stderr("big.bin: connection lost, retrying in");
        let _second = serve_at(root.path(), &addr, &[]);
        let code = get.finish();
        let stderr = get.notices.clone();
        assert_eq!(code, 0, "graceful={graceful}: {stderr:?}");
        let got = std::fs::read(work.path().join("big.bin")).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(&data), "graceful={graceful}");
        assert!(!part.exists());
    }
}

/// `tail` follows a log across a server restart on the same port: every
/// line once, in order.
#[test]
fn tail_survives_a_server_restart() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("app.log");
    std::fs::write(&log, "line 0\n").unwrap();
    let first = ServerProcess::start(root.path(), &[]);
    let addr = first.addr.to_string();
    let mut tail = tail_of(&format!("http://{addr}"), "app.log");
    tail.wait_lines(1);
    let mut first = first;
    first.kill();
    append_lines(&log, 1..50);
    let _second = serve_at(root.path(), &addr, &[]);
    append_lines(&log, 50..100);
    tail.wait_lines(100);
    assert_each_line_once(&mut tail, 100);
}

// --------------------------------------------------------- the relay

/// A 128 MiB get through a relay that cuts the connection every 16 MiB
/// completes by itself with the right digest, and resumes rather than
/// restarts: about 1x the file's bytes cross the relay.
#[test]
fn get_through_a_relay_that_cuts_every_16_mib() {
    let root = tempfile::tempdir().unwrap();
    let data = random_bytes(128 * MIB, 6);
    std::fs::write(root.path().join("big.bin"), &data).unwrap();
    let server = InProcessServer::serve(root.path());
    let link = Link::start(
        &server,
        Faults {
            cut_every_down: Some(16 * MIB as u64),
            ..Faults::default()
        },
    );
    let relay = &link.relay;
    let work = tempfile::tempdir().unwrap();
    let run = client(&relay.url(), work.path(), &["get", "big.bin"]);
    run.expect_code(0)
        .expect_stderr("connection lost, retrying in");
    let got = std::fs::read(work.path().join("big.bin")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    let cuts = relay.cuts();
    let down = relay.bytes_down();
    assert!(cuts >= 7, "only {cuts} cuts");
    assert!(
        down < (data.len() as u64) * 12 / 10,
        "{down} bytes crossed the relay for a {} byte file: restarted, not resumed",
        data.len()
    );
}

/// `get -o -` through a relay that cuts every 4 MiB: each retry continues
/// after the bytes already written (the server's digest of them matches),
/// so stdout gets the file exactly once.
#[test]
fn get_to_stdout_through_cuts_continues_after_what_it_wrote() {
    let root = tempfile::tempdir().unwrap();
    let data = random_bytes(24 * MIB, 11);
    std::fs::write(root.path().join("big.bin"), &data).unwrap();
    let server = InProcessServer::serve(root.path());
    let link = Link::start(
        &server,
        Faults {
            cut_every_down: Some(4 * MIB as u64),
            ..Faults::default()
        },
    );
    let relay = &link.relay;
    let work = tempfile::tempdir().unwrap();
    let run = client(&relay.url(), work.path(), &["get", "big.bin", "-o", "-"]);
    run.expect_code(0)
        .expect_stderr("connection lost, retrying in");
    assert!(relay.cuts() >= 4, "only {} cuts", relay.cuts());
    assert_eq!(run.stdout.len(), data.len(), "{}", run.stderr);
    assert_eq!(sha256_hex(&run.stdout), sha256_hex(&data));
}

/// `ls -r` whose listing is cut once lists again and prints every entry
/// exactly once.
#[test]
fn ls_after_a_cut_prints_every_entry_once() {
    let root = tempfile::tempdir().unwrap();
    for i in 0..4000 {
        let folder = root.path().join(format!("dir{:02}", i % 40));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join(format!("file-with-a-longish-name-{i:05}.txt")),
            b"x",
        )
        .unwrap();
    }
    let server = InProcessServer::serve(root.path());
    let link = Link::start(
        &server,
        Faults {
            cut_every_down: Some(64 * 1024),
            ..Faults::default()
        },
    );
    let relay = &link.relay;
    let work = tempfile::tempdir().unwrap();
    let mut ls = fetchd()
        .current_dir(work.path())
        .args(["--server", &relay.url(), "ls", "-r"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines_of(ls.stdout.take().unwrap());
    let stderr = lines_of(ls.stderr.take().unwrap());
    // One cut, then none: the client waits at least 0.125 s before it
    // tries again, long after this sees the cut.
    assert!(wait_until(STEP_TIMEOUT, || relay.cuts() >= 1));
    relay.set_cut_every_down(None);
    let status = wait_with_timeout(&mut ls, STEP_TIMEOUT).expect("ls exits");
    let lines: Vec<String> = stdout.iter().collect();
    let notices: Vec<String> = stderr.iter().collect();
    assert_eq!(status.code(), Some(0), "{notices:?}");
    assert!(
        notices
            .iter()
            .any(|line| line.contains("connection lost, retrying in")),
        "{notices:?}"
    );
    assert_eq!(lines.len(), 40 + 4000, "{notices:?}");
    let unique: std::collections::BTreeSet<&String> = lines.iter().collect();
    assert_eq!(unique.len(), lines.len(), "an entry printed twice");
}

/// A bulk `-r` of many small files and a few large ones through a relay
/// that keeps cutting: every file arrives whole, the batch continues with
/// the files it had not delivered, exit 0.
#[test]
fn bulk_get_through_a_relay_that_cuts() {
    let root = tempfile::tempdir().unwrap();
    let tree = root.path().join("tree");
    let mut expected = Vec::new();
    for i in 0..1500 {
        let rel = format!("d{}/f{i}.txt", i % 10);
        let data = random_bytes(4096, 100 + i as u64);
        std::fs::create_dir_all(tree.join(format!("d{}", i % 10))).unwrap();
        std::fs::write(tree.join(&rel), &data).unwrap();
        expected.push((rel, sha256_hex(&data)));
    }
    for i in 0..3 {
        let rel = format!("large{i}.bin");
        let data = random_bytes(3 * MIB, 200 + i);
        std::fs::write(tree.join(&rel), &data).unwrap();
        expected.push((rel, sha256_hex(&data)));
    }
    let server = InProcessServer::serve(root.path());
    let link = Link::start(
        &server,
        Faults {
            cut_every_down: Some(2 * MIB as u64),
            ..Faults::default()
        },
    );
    let relay = &link.relay;
    let work = tempfile::tempdir().unwrap();
    let run = client(
        &relay.url(),
        work.path(),
        &["get", "-r", "tree", "-o", "out"],
    );
    run.expect_code(0);
    assert!(relay.cuts() >= 3, "only {} cuts", relay.cuts());
    for (rel, digest) in &expected {
        let got = std::fs::read(work.path().join("out").join(rel))
            .unwrap_or_else(|err| panic!("{rel}: {err}\n{}", run.describe()));
        assert_eq!(&sha256_hex(&got), digest, "{rel}");
    }
}

/// A tail through a relay that cuts every connection again and again gets
/// every line exactly once, in order.
#[test]
fn tail_through_repeated_cuts_gets_every_line_once() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("app.log");
    std::fs::write(&log, "line 0\n").unwrap();
    let server = InProcessServer::serve(root.path());
    let link = Link::start(&server, Faults::default());
    let relay = &link.relay;
    let mut tail = tail_of(&relay.url(), "app.log");
    tail.wait_lines(1);
    let mut next = 1;
    for _ in 0..6 {
        append_lines(&log, next..next + 40);
        next += 40;
        let cuts = relay.cuts();
        relay.cut_all();
        // The relay cuts a moment after it is told to.
        assert!(wait_until(STEP_TIMEOUT, || relay.cuts() > cuts));
        append_lines(&log, next..next + 10);
        next += 10;
        tail.wait_lines(next);
    }
    assert!(relay.cuts() >= 6, "only {} cuts", relay.cuts());
    assert_each_line_once(&mut tail, next);
}

/// A connection that stalls for a few seconds (nothing moves either way)
/// and then recovers costs only the wait: the get completes, verified.
#[test]
fn get_survives_a_stall() {
    let root = tempfile::tempdir().unwrap();
    let data = random_bytes(32 * MIB, 7);
    std::fs::write(root.path().join("big.bin"), &data).unwrap();
    let server = InProcessServer::serve(root.path());
    let link = Link::start(&server, Faults::default());
    let relay = &link.relay;
    let work = tempfile::tempdir().unwrap();
    let part = work.path().join("big.bin.part");
    let mut get = Background::start(
        work.path(),
        &relay.url(),
        &["get", "big.bin", "--limit-rate", "16M"],
    );
    assert!(wait_until(STEP_TIMEOUT, || std::fs::metadata(&part)
        .is_ok_and(|meta| meta.len() > 2 * MIB as u64)));
    relay.stall(true);
    std::thread::sleep(Duration::from_secs(3));
    relay.stall(false);
    let code = get.finish();
    let stderr = get.notices.clone();
    assert_eq!(code, 0, "{stderr:?}");
    let got = std::fs::read(work.path().join("big.bin")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
}

/// On a link with a 50 ms round trip the client connects with receive
/// windows sized for it (one stream may have more than 8 MiB in flight);
/// on loopback it keeps the near windows, so a fast local transfer does
/// not buffer more. A get through the long link is verified as always.
#[test]
fn windows_follow_the_round_trip() {
    let root = tempfile::tempdir().unwrap();
    let data = random_bytes(16 * MIB, 8);
    std::fs::write(root.path().join("big.bin"), &data).unwrap();
    let server = InProcessServer::serve(root.path());
    let link = Link::start(
        &server,
        Faults {
            delay: Duration::from_millis(25),
            ..Faults::default()
        },
    );
    let rt = &link.runtime;
    let near = rt.block_on(server.client());
    let rtt = near.round_trip().expect("a loopback round trip");
    if rtt <= fetchd::NEAR_RTT {
        assert_eq!(near.windows(), fetchd::Windows::NEAR, "{rtt:?}");
    } else {
        // A machine this loaded measured loopback as a far link; what
        // matters then is that the windows follow what it measured.
        assert_eq!(near.windows(), fetchd::Windows::for_rtt(rtt));
    }
    let relay = &link.relay;
    let far = rt
        .block_on(fetchd::Client::connect(
            &fetchd::Target::parse(&relay.url()).unwrap(),
            &fetchd::ConnectOptions::default(),
        ))
        .unwrap();
    let windows = far.windows();
    assert!(
        windows.stream >= 48 * MIB as u32,
        "50 ms round trip, windows {windows:?}"
    );
    let work = tempfile::tempdir().unwrap();
    client(&relay.url(), work.path(), &["get", "big.bin"]).expect_code(0);
    let got = std::fs::read(work.path().join("big.bin")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
}

// --------------------------------------------------------- full disks

/// Runs `script` with `sh -c` in a mount namespace of its own where `dir`
/// is a tmpfs of `size` (as root, or as a user with user namespaces);
/// `None` when this machine allows neither.
fn in_small_disk(dir: &Path, size: &str, script: &str) -> Option<std::process::Output> {
    let probe = Command::new("unshare")
        .args(["-rm", "true"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let full = format!(
        "mount -t tmpfs -o size={size} none '{}' || exit 99; {script}",
        dir.display()
    );
    Command::new("timeout")
        .args(["120", "unshare", "-rm", "sh", "-c", &full])
        .env_remove("FETCHD_SERVER")
        .env("RUST_LOG", "warn")
        .output()
        .ok()
}

/// A full local disk: `get` fails naming DEST with `no space left on
/// device`, exit 1, DEST keeps exactly what it held before, and the part
/// file keeps what was written.
#[test]
fn full_local_disk_keeps_dest() {
    let root = tempfile::tempdir().unwrap();
    let data = random_bytes(8 * MIB, 9);
    std::fs::write(root.path().join("big.bin"), &data).unwrap();
    let server = ServerProcess::start(root.path(), &[]);
    let disk = tempfile::tempdir().unwrap();
    let bin = common::fetchd_bin();
    // DEST holds an older 1 MiB version; the disk has room for 4 MiB more.
    let script = format!(
        "head -c 1048576 /dev/zero > dest.bin; sync; \
         '{bin}' --server {url} get big.bin -o dest.bin; echo \"exit=$?\"; \
         sha256sum dest.bin; ls",
        bin = bin.display(),
        url = server.url
    );
    let script = format!("cd '{}' && {script}", disk.path().display());
    let Some(output) = in_small_disk(disk.path(), "5m", &script) else {
        eprintln!("SKIPPED full_local_disk_keeps_dest: no mount namespace here");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("exit=1"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("dest.bin: no space left on device"),
        "{stderr}"
    );
    let zeros = sha256_hex(&vec![0u8; MIB]);
    assert!(
        stdout.contains(&format!("{zeros}  dest.bin")),
        "DEST changed: {stdout}"
    );
    // The bytes that fitted stay for a resume once there is room.
    assert!(stdout.contains("dest.bin.part"), "{stdout}");
}

/// A full server disk: `put` gets RESOURCE_EXHAUSTED `no space left on
/// device` (exit 1, not retried), nothing is left at REMOTE or beside it,
/// and the server goes on serving.
#[test]
fn full_server_disk_refuses_the_upload_and_serves_on() {
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("up.bin");
    std::fs::write(&local, random_bytes(6 * MIB, 10)).unwrap();
    std::fs::write(work.path().join("small.txt"), b"small and fine\n").unwrap();
    let disk = tempfile::tempdir().unwrap();
    let bin = common::fetchd_bin();
    // The server runs inside the namespace, on the small disk; the client
    // too (same namespace, loopback is shared).
    let script = format!(
        "echo hello > '{d}/hello.txt'; \
         '{bin}' serve --root '{d}' --listen 127.0.0.1:0 --allow-upload > '{w}/serve.out' 2>/dev/null & \
         pid=$!; \
         for i in $(seq 1 200); do grep -q listening '{w}/serve.out' 2>/dev/null && break; sleep 0.05; done; \
         url=http://$(sed -n 's/^listening on //p' '{w}/serve.out'); \
         '{bin}' --server $url put '{w}/up.bin' in/up.bin; echo \"put=$?\"; \
         '{bin}' --server $url put '{w}/small.txt' in/small.txt; echo \"small=$?\"; \
         '{bin}' --server $url get hello.txt -o '{w}/hello.txt'; echo \"get=$?\"; \
         ls -a '{d}/in'; kill $pid; wait $pid",
        d = disk.path().display(),
        w = work.path().display(),
        bin = bin.display(),
    );
    let Some(output) = in_small_disk(disk.path(), "4m", &script) else {
        eprintln!("SKIPPED full_server_disk_refuses_the_upload_and_serves_on: no mount namespace");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("put=1"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("in/up.bin: no space left on device"),
        "{stderr}"
    );
    assert!(!stderr.contains("retrying"), "{stderr}");
    assert!(stdout.contains("small=0"), "{stdout}\n{stderr}");
    assert!(stdout.contains("get=0"), "{stdout}\n{stderr}");
    // Only the small upload is there: no up.bin, no temporary file.
    assert!(!stdout.contains("up.bin"), "{stdout}");
    assert!(!stdout.contains("fetchd-upload"), "{stdout}");
    assert!(stdout.contains("small.txt"), "{stdout}");
    assert_eq!(
        std::fs::read(work.path().join("hello.txt")).unwrap(),
        b"hello\n"
    );
}

// ------------------------------------------------------------ helpers

/// `fetchd tail PATH -n 100` in the background.
fn tail_of(url: &str, path: &str) -> Background {
    Background::start(Path::new("."), url, &["tail", path, "-n", "100"])
}

/// The tail got lines 0 to `count`, each once: anything more would be a
/// duplicate, so what comes within a moment is taken in first.
fn assert_each_line_once(tail: &mut Background, count: usize) {
    tail.drain();
    let want: Vec<String> = (0..count).map(line).collect();
    assert_eq!(tail.lines, want, "stderr: {:?}", tail.notices);
}
