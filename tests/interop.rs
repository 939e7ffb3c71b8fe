//! The Python example (examples/python, grpcio) against a real
//! `fetchd serve`: download with sha256 verified by hashlib against the
//! ReadTrailer, a followed tail that shows a line appended by the test, and
//! the service list from grpcio-reflection.
//!
//! Needs a virtualenv with examples/python/requirements.txt: `.ci/run`
//! makes it at target/interop-venv (or set FETCHD_PYTHON to its python).
//! Without one the test is skipped with a notice, unless
//! FETCHD_REQUIRE_INTEROP=1 (as in CI), where a missing venv fails it.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{STEP_TIMEOUT, ServerProcess, random_bytes, run_in, sha256_hex};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv's python, or `None` (after saying why) to skip.
fn python() -> Option<PathBuf> {
    let required = std::env::var_os("FETCHD_REQUIRE_INTEROP").is_some_and(|v| v == "1");
    let python = match std::env::var_os("FETCHD_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => repo().join("target/interop-venv/bin/python"),
    };
    let usable = python.exists()
        && Command::new(&python)
            .args(["-c", "import grpc, grpc_tools, grpc_reflection"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    if usable {
        return Some(python);
    }
    let why = format!(
        "no Python with grpcio, grpcio-tools and grpcio-reflection at {}; \
         make it with: python3 -m venv target/interop-venv && \
         target/interop-venv/bin/pip install -r examples/python/requirements.txt",
        python.display()
    );
    assert!(!required, "FETCHD_REQUIRE_INTEROP=1 but {why}");
    eprintln!("SKIPPED python interop: {why}");
    None
}

fn example(python: &Path, server: &ServerProcess) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("examples/python/fetchd_client.py"))
        .args(["--server", &server.addr.to_string(), "--timeout", "60"]);
    cmd
}

/// The Python client downloads and verifies, follows a log and lists the
/// services by reflection, all against the Rust server.
#[test]
fn python_example_talks_to_the_rust_server() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("logs")).unwrap();
    let data = random_bytes(3 << 20, 5);
    std::fs::write(root.join("data.bin"), &data).unwrap();
    let log: String = (0..20_000)
        .map(|n| format!("2026-11-24T01:02:03Z INFO request {n} served\n"))
        .collect();
    std::fs::write(root.join("logs/app.log"), &log).unwrap();
    let server = ServerProcess::start(&root, &[]);

    // Download, verified: plain and gzip (a grpcio client asks for
    // compression by compressing its request).
    for (remote, want, compress) in [
        ("data.bin", data.as_slice(), "none"),
        ("logs/app.log", log.as_bytes(), "gzip"),
    ] {
        let out = format!("{compress}.out");
        let run = run_in(
            dir.path(),
            example(&python, &server).args(["get", remote, "-o", &out, "--compress", compress]),
        );
        run.expect_code(0);
        let line: serde_json::Value = serde_json::from_slice(&run.stdout)
            .unwrap_or_else(|err| panic!("not one JSON line ({err})\n{}", run.describe()));
        assert_eq!(line["sha256"], sha256_hex(want), "{}", run.describe());
        assert_eq!(line["bytes"], want.len() as u64);
        assert!(std::fs::read(dir.path().join(&out)).unwrap() == want);
    }
    let run = run_in(
        dir.path(),
        example(&python, &server).args(["get", "nope.bin"]),
    );
    run.expect_code(1).expect_stderr("NOT_FOUND");

    // Reflection, with grpcio-reflection: the services and fetchd's methods.
    let run = run_in(dir.path(), example(&python, &server).arg("services"));
    run.expect_code(0);
    let listed = run.stdout_str();
    for want in [
        "fetchd.v1.Fetchd\n",
        "grpc.health.v1.Health\n",
        "fetchd.v1.Fetchd/Read(ReadRequest) returns (stream ReadResponse)",
        "fetchd.v1.Fetchd/Tail(TailRequest) returns (stream TailResponse)",
    ] {
        assert!(
            listed.contains(want),
            "{want:?} missing\n{}",
            run.describe()
        );
    }

    // Tail: the last 3 lines, then a line appended now.
    let mut child = example(&python, &server)
        .args(["tail", "logs/app.log", "-n", "3", "--follow"])
        .args(["--exit-after-lines", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = common::lines_of(child.stdout.take().unwrap());
    let first: Vec<String> = (0..3)
        .map(|_| {
            rx.recv_timeout(STEP_TIMEOUT)
                .expect("a last line from python")
        })
        .collect();
    let want: Vec<&str> = log.lines().rev().take(3).collect::<Vec<_>>();
    assert_eq!(first, want.into_iter().rev().collect::<Vec<_>>());
    let appended = "2026-11-24T09:09:09Z WARN appended while python follows";
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("logs/app.log"))
        .unwrap();
    writeln!(file, "{appended}").unwrap();
    let line = rx
        .recv_timeout(STEP_TIMEOUT)
        .expect("the appended line from python");
    assert_eq!(line, appended);
    let status = common::wait_with_timeout(&mut child, STEP_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the python tail did not exit after its lines")
    });
    assert!(status.success(), "{status:?}");
}
