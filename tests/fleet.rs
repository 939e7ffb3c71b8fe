//! Several servers from one command, through the real binary: a merged
//! `tail` over three servers, one of them SIGKILLed and started again on its
//! port mid-stream.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Appends `host-N line I` for every I in `range`; the last one optionally
/// without its newline yet.
fn append(log: &Path, host: usize, range: std::ops::Range<usize>) {
    let mut file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    for i in range {
        writeln!(file, "host-{host} line {i}").unwrap();
    }
}

/// `fetchd tail` over several servers in the background, its stdout lines
/// gathered.
struct FleetTail {
    child: Child,
    lines: mpsc::Receiver<String>,
    got: Vec<String>,
}

impl FleetTail {
    fn start(servers: &[String], extra: &[&str]) -> FleetTail {
        let mut command = fetchd();
        for server in servers {
            command.args(["--server", server]);
        }
        let mut child = command
            .args(["tail", "app.log", "-n", "100"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        FleetTail {
            child,
            lines,
            got: Vec::new(),
        }
    }

    /// Gathers lines until `done` holds of them (or the step times out).
    fn wait(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !done(&self.got) && Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.got.push(line);
            }
        }
        assert!(done(&self.got), "{what}: {:?}", self.got);
    }

    /// Lines that may still come after the last expected one (duplicates).
    fn drain(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(300)) {
            self.got.push(line);
        }
    }
}

impl Drop for FleetTail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines per label, in the order they came.
fn by_label(lines: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let (label, text) = line.split_once(": ").expect("a LABEL: prefix");
        out.entry(label.to_string())
            .or_default()
            .push(text.to_string());
    }
    out
}

/// Every line of every host exactly once, in order per host, each after its
/// host's label, also the lines written while one host's server was dead;
/// a partial line is held until its newline and never split or mixed.
#[test]
fn tail_merges_three_servers_through_a_kill_and_restart() {
    let roots: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (host, root) in roots.iter().enumerate() {
        std::fs::write(root.path().join("app.log"), "").unwrap();
        append(&root.path().join("app.log"), host, 0..5);
    }
    let mut servers: Vec<ServerProcess> = roots
        .iter()
        .map(|root| ServerProcess::start(root.path(), &[]))
        .collect();
    let urls: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(host, server)| format!("h{host}={}", server.url))
        .collect();
    let mut tail = FleetTail::start(&urls, &[]);
    tail.wait("the backlog of every host", |got| got.len() >= 15);

    // A partial line on host 0: held, then completed.
    let log0 = roots[0].path().join("app.log");
    {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log0)
            .unwrap();
        write!(file, "host-0 line 5 (first half").unwrap();
    }
    append(&roots[1].path().join("app.log"), 1, 5..10);
    tail.wait("host 1 while host 0 holds a partial line", |got| {
        got.len() >= 20
    });
    {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log0)
            .unwrap();
        writeln!(file, ", second half)").unwrap();
    }
    append(&log0, 0, 6..10);

    // Host 2's server dies; its log grows meanwhile; it comes back on its
    // port, and its follower resumes exactly.
    let addr = servers[2].addr.to_string();
    servers[2].kill();
    let log2 = roots[2].path().join("app.log");
    append(&log2, 2, 5..30);
    append(&roots[1].path().join("app.log"), 1, 10..20);
    servers[2] = ServerProcess::start_on(&addr, roots[2].path(), &[], &[]);
    append(&log2, 2, 30..40);

    let want = |host: usize, count: usize| -> Vec<String> {
        (0..count)
            .map(|i| match (host, i) {
                (0, 5) => "host-0 line 5 (first half, second half)".to_string(),
                _ => format!("host-{host} line {i}"),
            })
            .collect()
    };
    tail.wait("every line of every host", |got| got.len() >= 10 + 20 + 40);
    tail.drain();
    let got = by_label(&tail.got);
    assert_eq!(got["h0"], want(0, 10));
    assert_eq!(got["h1"], want(1, 20));
    assert_eq!(got["h2"], want(2, 40));
    assert_eq!(got.len(), 3, "{got:?}");
}

/// `--no-follow` prints each server's last lines, server after server in
/// the order given; a server that is down is reported and the others are
/// printed (exit 0); `--no-prefix` drops the labels; when no server can be
/// tailed the exit status is 1.
#[test]
fn tail_no_follow_server_after_server() {
    let roots: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for (host, root) in roots.iter().enumerate() {
        std::fs::write(root.path().join("app.log"), "").unwrap();
        append(&root.path().join("app.log"), host, 0..3);
    }
    let servers: Vec<ServerProcess> = roots
        .iter()
        .map(|root| ServerProcess::start(root.path(), &[]))
        .collect();
    let mut gone = ServerProcess::start(roots[0].path(), &[]);
    let dead = gone.url.clone();
    gone.kill();
    let cwd = tempfile::tempdir().unwrap();

    let run = run_in(
        cwd.path(),
        fetchd().args([
            "--server",
            &format!("b={}", servers[1].url),
            "--server",
            &format!("down={dead}"),
            "--server",
            &format!("a={}", servers[0].url),
            "tail",
            "app.log",
            "--no-follow",
            "--retry-for",
            "0",
        ]),
    );
    run.expect_code(0).expect_stderr("down: ");
    let lines: Vec<String> = run.stdout_str().lines().map(String::from).collect();
    assert_eq!(
        lines,
        [
            "b: host-1 line 0",
            "b: host-1 line 1",
            "b: host-1 line 2",
            "a: host-0 line 0",
            "a: host-0 line 1",
            "a: host-0 line 2",
        ]
    );

    let run = run_in(
        cwd.path(),
        fetchd().args([
            "--server",
            &servers[0].url,
            "--server",
            &servers[1].url,
            "tail",
            "app.log",
            "--no-follow",
            "--no-prefix",
            "-n",
            "1",
        ]),
    );
    run.expect_code(0);
    assert_eq!(run.stdout_str(), "host-0 line 2\nhost-1 line 2\n");

    let run = run_in(
        cwd.path(),
        fetchd().args([
            "--server",
            &servers[0].url,
            "--server",
            &servers[1].url,
            "tail",
            "missing.log",
            "--no-follow",
        ]),
    );
    run.expect_code(1).expect_stderr("not found");
}

/// `tail --json`, with one server or several: one object a line, each
/// line's `offset` the real byte offset of its start in that file.
#[test]
fn tail_json_offsets_are_real_byte_offsets() {
    let root = tempfile::tempdir().unwrap();
    let text = "first\nsécond line\n\nlast one\n";
    std::fs::write(root.path().join("app.log"), text).unwrap();
    let server = ServerProcess::start(root.path(), &[]);
    let other = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let want: Vec<(u64, &str)> = {
        let mut offset = 0;
        text.split_inclusive('\n')
            .map(|line| {
                let at = offset;
                offset += line.len() as u64;
                (at, line.trim_end_matches('\n'))
            })
            .collect()
    };

    for servers in [
        vec![server.url.clone()],
        vec![server.url.clone(), other.url.clone()],
    ] {
        let mut command = fetchd();
        for url in &servers {
            command.args(["--server", url]);
        }
        let run = run_in(
            cwd.path(),
            command.args(["tail", "app.log", "--no-follow", "--json"]),
        );
        run.expect_code(0);
        let objects: Vec<serde_json::Value> = run
            .stdout_str()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            objects.len(),
            want.len() * servers.len(),
            "{}",
            run.describe()
        );
        for (i, object) in objects.iter().enumerate() {
            let (offset, line) = want[i % want.len()];
            assert_eq!(object["offset"], offset, "{object}");
            assert_eq!(object["line"], line, "{object}");
            assert_eq!(object["path"], "app.log");
            let label = servers[i / want.len()].trim_start_matches("http://");
            assert_eq!(object["server"], label, "{object}");
        }
    }
}

/// `put` to three servers at once, one of which takes no uploads: exit 1,
/// that one named on stderr, the file whole on the other two; with
/// `--json`, one object per server with its label and status.
#[test]
fn put_to_every_server_reports_each() {
    let roots: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers: Vec<ServerProcess> = roots
        .iter()
        .enumerate()
        .map(|(i, root)| match i {
            1 => ServerProcess::start(root.path(), &[]),
            _ => ServerProcess::start(root.path(), &["--allow-upload"]),
        })
        .collect();
    let cwd = tempfile::tempdir().unwrap();
    let data = random_bytes(3 * 1024 * 1024 + 17, 42);
    std::fs::write(cwd.path().join("release.tar"), &data).unwrap();
    let labels = ["a", "b", "c"];
    let mut command = fetchd();
    for (label, server) in labels.iter().zip(&servers) {
        command.args(["--server", &format!("{label}={}", server.url)]);
    }
    let run = run_in(cwd.path(), command.args(["put", "release.tar", "dist/"]));
    run.expect_code(1).expect_stderr("b: ");
    assert!(
        !run.stderr.contains("a: ") && !run.stderr.contains("c: "),
        "{}",
        run.describe()
    );
    for i in [0, 2] {
        let stored = std::fs::read(roots[i].path().join("dist/release.tar")).unwrap();
        assert_eq!(sha256_hex(&stored), sha256_hex(&data), "server {i}");
    }
    assert!(!roots[1].path().join("dist").exists());

    let mut command = fetchd();
    for (label, server) in labels.iter().zip(&servers) {
        command.args(["--server", &format!("{label}={}", server.url)]);
    }
    let run = run_in(
        cwd.path(),
        command.args(["put", "release.tar", "dist/again.tar", "--json"]),
    );
    run.expect_code(1);
    let objects: Vec<serde_json::Value> = run
        .stdout_str()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let got: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| (o["server"].as_str().unwrap(), o["status"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [("a", "ok"), ("b", "error"), ("c", "ok")]);
    assert_eq!(objects[0]["sha256"], sha256_hex(&data));
}

/// `--server a=URL --server b=URL ...` for every server.
fn fleet_command(servers: &[(&str, &ServerProcess)]) -> std::process::Command {
    let mut command = fetchd();
    for (label, server) in servers {
        command.args(["--server", &format!("{label}={}", server.url)]);
    }
    command
}

/// The JSON objects a run printed, one a line.
fn json_objects(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The labels of an object's `servers`.
fn servers_of(object: &serde_json::Value) -> Vec<String> {
    object["servers"]
        .as_array()
        .unwrap_or_else(|| panic!("no servers in {object}"))
        .iter()
        .map(|label| label.as_str().unwrap().to_string())
        .collect()
}

/// A 256 MiB file striped over three replicas, one SIGKILLed once the
/// download is under way: the get completes by itself, verified, and the
/// bytes came from more than one replica.
#[test]
fn get_from_replicas_survives_a_killed_replica() {
    let roots: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let data = random_bytes(256 << 20, 7);
    std::fs::write(roots[0].path().join("big.bin"), &data).unwrap();
    for root in &roots[1..] {
        std::fs::hard_link(roots[0].path().join("big.bin"), root.path().join("big.bin")).unwrap();
    }
    let mut servers: Vec<ServerProcess> = roots
        .iter()
        .map(|root| ServerProcess::start(root.path(), &[]))
        .collect();
    let cwd = tempfile::tempdir().unwrap();
    let mut child = {
        let fleet: Vec<(&str, &ServerProcess)> =
            ["a", "b", "c"].into_iter().zip(&servers).collect();
        fleet_command(&fleet)
            .current_dir(cwd.path())
            .args(["get", "big.bin", "--json", "--limit-rate", "64M"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let part = cwd.path().join("big.bin.part");
    assert!(
        wait_until(STEP_TIMEOUT, || std::fs::metadata(&part)
            .is_ok_and(|meta| meta.len() > 48 << 20)),
        "the download never got going"
    );
    servers[1].kill();
    let status = wait_with_timeout(&mut child, Duration::from_secs(120)).expect("get finished");
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{status}: {stdout}");
    let got = std::fs::read(cwd.path().join("big.bin")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    assert!(!part.exists());
    let objects = json_objects(&stdout);
    assert_eq!(objects.len(), 1, "{stdout}");
    assert_eq!(objects[0]["sha256"], sha256_hex(&data));
    let labels = servers_of(&objects[0]);
    assert!(
        labels.contains(&"a".to_string()) && labels.contains(&"c".to_string()),
        "{labels:?}"
    );
}

/// A replica with another version of a file (same size, other bytes) is
/// never mixed in: with the odd one last or first, the file is the
/// majority's, only the agreeing replicas delivered, and a notice names
/// the one left out.
#[test]
fn get_never_mixes_a_disagreeing_replica() {
    let size = 40 << 20;
    let good = random_bytes(size, 1);
    let mut other = good.clone();
    other[size / 2..size / 2 + 4096].fill(0xEE);
    for odd in [2, 0] {
        let roots: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        for (i, root) in roots.iter().enumerate() {
            let bytes = if i == odd { &other } else { &good };
            std::fs::write(root.path().join("image.raw"), bytes).unwrap();
        }
        let servers: Vec<ServerProcess> = roots
            .iter()
            .map(|root| ServerProcess::start(root.path(), &[]))
            .collect();
        let labels = ["a", "b", "c"];
        let fleet: Vec<(&str, &ServerProcess)> = labels.into_iter().zip(&servers).collect();
        let cwd = tempfile::tempdir().unwrap();
        let run = run_in(cwd.path(), fleet_command(&fleet).args(["get", "image.raw"]));
        run.expect_code(0).expect_stderr(&format!(
            "{}: image.raw: differs from the other replicas",
            labels[odd]
        ));
        let got = std::fs::read(cwd.path().join("image.raw")).unwrap();
        assert!(
            got == good,
            "odd replica {odd}: the file is not the majority's"
        );

        let run = run_in(
            cwd.path(),
            fleet_command(&fleet).args(["get", "image.raw", "--force", "--json"]),
        );
        run.expect_code(0);
        let objects = json_objects(&run.stdout_str());
        let delivered = servers_of(&objects[0]);
        assert!(!delivered.is_empty(), "{}", run.describe());
        assert!(
            !delivered.contains(&labels[odd].to_string()),
            "odd replica {odd} delivered: {delivered:?}"
        );
        assert_eq!(objects[0]["sha256"], sha256_hex(&good));
    }
}

/// A 200-file tree from three replicas: every file arrives whole, the
/// files are spread (more than one replica delivered), a rerun skips them
/// all, and with one replica down before the start (connections made one at
/// a time, `--max-connecting 1`) the others deliver everything.
#[test]
fn get_tree_spreads_over_replicas() {
    let roots: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut expected = BTreeMap::new();
    for i in 0..200usize {
        let rel = format!("data/d{}/f{i}.bin", i % 7);
        let bytes = random_bytes(1 + (i * 7919) % (300 << 10), i as u64);
        for root in &roots {
            let path = root.path().join(&rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        expected.insert(rel, sha256_hex(&bytes));
    }
    let mut servers: Vec<ServerProcess> = roots
        .iter()
        .map(|root| ServerProcess::start(root.path(), &[]))
        .collect();
    let labels = ["a", "b", "c"];
    let check_tree = |out: &Path| {
        for (rel, digest) in &expected {
            let got = std::fs::read(out.join(rel.strip_prefix("data/").unwrap())).unwrap();
            assert_eq!(&sha256_hex(&got), digest, "{rel}");
        }
    };
    let cwd = tempfile::tempdir().unwrap();
    {
        let fleet: Vec<(&str, &ServerProcess)> = labels.into_iter().zip(&servers).collect();
        let run = run_in(
            cwd.path(),
            fleet_command(&fleet).args(["get", "-r", "data", "--json"]),
        );
        run.expect_code(0);
        check_tree(&cwd.path().join("data"));
        let objects = json_objects(&run.stdout_str());
        assert_eq!(objects.len(), 200);
        let mut delivering = std::collections::BTreeSet::new();
        for object in &objects {
            assert_eq!(object["status"], "ok", "{object}");
            let labels = servers_of(object);
            assert_eq!(labels.len(), 1, "{object}");
            delivering.extend(labels);
        }
        assert!(delivering.len() > 1, "all from {delivering:?}");

        let rerun = run_in(
            cwd.path(),
            fleet_command(&fleet).args(["get", "-r", "data", "--json"]),
        );
        rerun.expect_code(0);
        for object in json_objects(&rerun.stdout_str()) {
            assert_eq!(object["status"], "skipped", "{object}");
            assert_eq!(object["servers"], serde_json::json!([]), "{object}");
        }
    }
    servers[0].kill();
    let fresh = tempfile::tempdir().unwrap();
    let fleet: Vec<(&str, &ServerProcess)> = labels.into_iter().zip(&servers).collect();
    let run = run_in(
        fresh.path(),
        fleet_command(&fleet).args(["--max-connecting", "1", "get", "-r", "data"]),
    );
    run.expect_code(0).expect_stderr("a: ");
    check_tree(&fresh.path().join("data"));
}
