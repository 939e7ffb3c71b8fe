//! Delta transfer, black box: `fetchd get` onto an older DEST fetches only
//! what changed. Real servers on 127.0.0.1 port 0, the real CLI, temp dirs;
//! the bytes on the wire are counted by the relay in front of the server,
//! not taken from the program's own figures.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;

use common::relay::{Faults, Relay};
use common::{InProcessServer, Run, client, random_bytes, sha256_hex};

const MIB: usize = 1024 * 1024;

/// A relay in front of an in-process server, on a runtime of its own.
struct Link {
    relay: Relay,
    _runtime: tokio::runtime::Runtime,
}

impl Link {
    fn start(server: &InProcessServer) -> Link {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let relay = runtime
            .block_on(Relay::start(server.addr, Faults::default()))
            .unwrap();
        Link {
            relay,
            _runtime: runtime,
        }
    }
}

/// A server over `server_dir` behind a counting relay.
struct Setup {
    _server: InProcessServer,
    link: Link,
    root: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_uploads(false)
    }

    fn with_uploads(allow_upload: bool) -> Setup {
        let root = tempfile::tempdir().unwrap();
        let mut config = fetchd::ServerConfig::new(root.path());
        config.grace = std::time::Duration::from_secs(2);
        config.allow_upload = allow_upload;
        let server = InProcessServer::start(config);
        let link = Link::start(&server);
        Setup {
            _server: server,
            link,
            root,
            out: tempfile::tempdir().unwrap(),
        }
    }

    /// `get NAME -o OUT/NAME ARGS...`, and the bytes the server sent for it.
    fn get(&self, name: &str, args: &[&str]) -> (Run, u64) {
        let before = self.link.relay.bytes_down();
        let dest = self.out.path().join(name);
        let mut all = vec!["get", name, "-o", dest.to_str().unwrap()];
        all.extend_from_slice(args);
        let run = client(&self.link.relay.url(), self.out.path(), &all);
        (run, self.link.relay.bytes_down() - before)
    }

    /// `put --force OUT/NAME NAME ARGS...`, and the bytes the client sent
    /// for it.
    fn put(&self, name: &str, args: &[&str]) -> (Run, u64) {
        let before = self.link.relay.bytes_up();
        let local = self.out.path().join(name);
        let mut all = vec!["put", "--force", local.to_str().unwrap(), name];
        all.extend_from_slice(args);
        let run = client(&self.link.relay.url(), self.out.path(), &all);
        (run, self.link.relay.bytes_up() - before)
    }

    fn server_file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.root.path().join(name)).unwrap()
    }

    fn put_server(&self, name: &str, data: &[u8]) {
        std::fs::write(self.root.path().join(name), data).unwrap();
    }

    fn put_local(&self, name: &str, data: &[u8]) {
        std::fs::write(self.out.path().join(name), data).unwrap();
    }

    fn local(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.out.path().join(name)).unwrap()
    }
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.stdout_str().lines().next().expect("a JSON line")).unwrap()
}

fn overwrite(data: &mut [u8], at: usize, len: usize, seed: u64) {
    data[at..at + len].copy_from_slice(&random_bytes(len, seed));
}

/// Scattered 4 KiB overwrites in a 16 MiB file: the file arrives right and
/// the wire carries a small fraction of it, as `received` says.
#[test]
fn scattered_overwrites_cost_only_the_chunks_around_them() {
    let setup = Setup::new();
    let old = random_bytes(16 * MIB, 1);
    let mut new = old.clone();
    for i in 0..10 {
        overwrite(&mut new, i * 1_500_000 + 777, 4096, 100 + i as u64);
    }
    setup.put_server("image.bin", &new);
    setup.put_local("image.bin", &old);
    let (run, wire) = setup.get("image.bin", &["--json"]);
    run.expect_code(0);
    assert!(setup.local("image.bin") == new, "DEST is the server's file");
    let line = json(&run);
    assert_eq!(line["sha256"], sha256_hex(&new));
    let received = line["received"].as_u64().unwrap();
    let reused = line["reused"].as_u64().unwrap();
    assert_eq!(received + reused, new.len() as u64);
    assert!(received >= 10 * 4096, "{received}");
    assert!(received < 2 * MIB as u64, "{received} bytes fetched");
    // Everything the server sent: the fetched bytes, the manifest, framing.
    assert!(
        wire >= received && wire < 2 * MIB as u64,
        "{wire} bytes on the wire"
    );
    assert!(
        !Path::new(&format!(
            "{}.part",
            setup.out.path().join("image.bin").display()
        ))
        .exists()
    );
}

/// An insertion and a deletion in the middle move every later byte; the
/// cut points move with them, so the rest of the file is still reused.
#[test]
fn an_insertion_and_a_deletion_are_found_anywhere() {
    let setup = Setup::new();
    let old = random_bytes(12 * MIB, 2);
    let mut new = old.clone();
    new.splice(3 * MIB..3 * MIB, random_bytes(100_000, 3));
    new.drain(8 * MIB..8 * MIB + 200_000);
    setup.put_server("db.dump", &new);
    setup.put_local("db.dump", &old);
    let (run, wire) = setup.get("db.dump", &[]);
    run.expect_code(0).expect_stderr("reused");
    assert!(setup.local("db.dump") == new);
    assert!(wire < 100_000 + MIB as u64, "{wire} bytes on the wire");
}

/// An appended tail, and a local copy cut short: each costs what is new.
#[test]
fn an_append_and_a_truncated_copy_fetch_only_the_missing_tail() {
    let setup = Setup::new();
    let old = random_bytes(6 * MIB, 4);
    let mut grown = old.clone();
    grown.extend(random_bytes(300_000, 5));
    setup.put_server("grown.log", &grown);
    setup.put_local("grown.log", &old);
    let (run, wire) = setup.get("grown.log", &["--json"]);
    run.expect_code(0);
    assert!(setup.local("grown.log") == grown);
    assert!(wire < 300_000 + 512 * 1024, "{wire}");

    let whole = random_bytes(6 * MIB, 6);
    setup.put_server("cut.bin", &whole);
    setup.put_local("cut.bin", &whole[..2 * MIB]);
    let (run, wire) = setup.get("cut.bin", &["--json"]);
    run.expect_code(0);
    assert!(setup.local("cut.bin") == whole);
    let received = json(&run)["received"].as_u64().unwrap();
    assert!(received < 4 * MIB as u64 + 512 * 1024, "{received}");
    assert!(wire < 4 * MIB as u64 + MIB as u64, "{wire}");
}

/// A local copy with nothing in common is downloaded whole, correctly.
#[test]
fn an_unrelated_local_copy_falls_back_to_a_whole_download() {
    let setup = Setup::new();
    let new = random_bytes(4 * MIB, 7);
    setup.put_server("other.bin", &new);
    setup.put_local("other.bin", &random_bytes(4 * MIB, 8));
    let (run, wire) = setup.get("other.bin", &["--json"]);
    run.expect_code(0);
    assert!(setup.local("other.bin") == new);
    let line = json(&run);
    assert_eq!(line["reused"], 0);
    assert_eq!(line["received"], new.len() as u64);
    assert!(wire >= new.len() as u64);
}

/// `--whole-file` sends every byte even when DEST is nearly the same.
#[test]
fn whole_file_turns_the_delta_off() {
    let setup = Setup::new();
    let old = random_bytes(4 * MIB, 9);
    let mut new = old.clone();
    overwrite(&mut new, MIB, 4096, 10);
    setup.put_server("f.bin", &new);
    setup.put_local("f.bin", &old);
    let (run, wire) = setup.get("f.bin", &["--whole-file", "--json"]);
    run.expect_code(0);
    assert!(setup.local("f.bin") == new);
    assert_eq!(json(&run)["reused"], 0);
    assert!(wire >= new.len() as u64, "{wire}");
}

/// A DEST that is a symlink is never a source of chunks: the link's target
/// (outside OUT) is neither read for chunks nor written, and DEST becomes a
/// regular file with the server's bytes.
#[test]
fn a_symlinked_dest_is_not_read_for_chunks() {
    let setup = Setup::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let old = random_bytes(4 * MIB, 11);
    let mut new = old.clone();
    overwrite(&mut new, MIB, 4096, 12);
    let target = elsewhere.path().join("secret.bin");
    std::fs::write(&target, &old).unwrap();
    setup.put_server("link.bin", &new);
    std::os::unix::fs::symlink(&target, setup.out.path().join("link.bin")).unwrap();
    let (run, wire) = setup.get("link.bin", &["--json"]);
    run.expect_code(0);
    assert_eq!(json(&run)["reused"], 0);
    assert!(wire >= new.len() as u64, "{wire}");
    let dest = setup.out.path().join("link.bin");
    assert!(std::fs::symlink_metadata(&dest).unwrap().is_file());
    assert!(setup.local("link.bin") == new);
    assert!(
        std::fs::read(&target).unwrap() == old,
        "the link's target is untouched"
    );
}

/// A FIFO at DEST is never opened as a source (which would hang): the get
/// completes with the server's bytes.
#[test]
fn a_fifo_dest_is_not_opened_for_chunks() {
    let setup = Setup::new();
    let new = random_bytes(2 * MIB, 13);
    setup.put_server("pipe.bin", &new);
    let dest = setup.out.path().join("pipe.bin");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &dest,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let (run, _) = setup.get("pipe.bin", &["--json"]);
    run.expect_code(0);
    assert_eq!(json(&run)["reused"], 0);
    assert!(std::fs::symlink_metadata(&dest).unwrap().is_file());
    assert!(setup.local("pipe.bin") == new);
}

/// An unchanged DEST (a rerun) is still skipped without any data fetched,
/// and a second delta of the same file is answered from the server's kept
/// manifest.
#[test]
fn reruns_fetch_nothing() {
    let setup = Setup::new();
    let old = random_bytes(4 * MIB, 14);
    let mut new = old.clone();
    overwrite(&mut new, 2 * MIB, 4096, 15);
    setup.put_server("r.bin", &new);
    setup.put_local("r.bin", &old);
    setup.get("r.bin", &[]).0.expect_code(0);
    let (run, wire) = setup.get("r.bin", &["--json"]);
    run.expect_code(0);
    assert_eq!(json(&run)["status"], "skipped");
    assert!(wire < 64 * 1024, "{wire}");
}

/// `put --force` over an older REMOTE sends only the chunks around the
/// edits (counted on the wire), the server's file becomes the new one, and
/// nothing else is left in its folder.
#[test]
fn put_force_sends_only_what_the_server_lacks() {
    let setup = Setup::with_uploads(true);
    let old = random_bytes(16 * MIB, 20);
    let mut new = old.clone();
    for i in 0..8 {
        overwrite(&mut new, i * 1_900_000 + 333, 4096, 200 + i as u64);
    }
    new.splice(5 * MIB..5 * MIB, random_bytes(70_000, 21));
    new.drain(11 * MIB..11 * MIB + 90_000);
    setup.put_server("vm.img", &old);
    setup.put_local("vm.img", &new);
    let (run, wire) = setup.put("vm.img", &["--json"]);
    run.expect_code(0);
    assert!(setup.server_file("vm.img") == new, "REMOTE is the new file");
    let line = json(&run);
    assert_eq!(line["sha256"], sha256_hex(&new));
    let sent = line["sent"].as_u64().unwrap();
    let reused = line["reused"].as_u64().unwrap();
    assert_eq!(sent + reused, new.len() as u64);
    assert!(sent >= 8 * 4096 + 70_000, "{sent}");
    assert!(sent < 2 * MIB as u64, "{sent} bytes sent");
    assert!(
        wire >= sent && wire < 2 * MIB as u64,
        "{wire} bytes on the wire"
    );
    let names: Vec<_> = std::fs::read_dir(setup.root.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");

    // Without --json: the summary says what was reused.
    let mut newer = new.clone();
    overwrite(&mut newer, 3 * MIB, 4096, 22);
    setup.put_local("vm.img", &newer);
    let (run, _) = setup.put("vm.img", &[]);
    run.expect_code(0).expect_stderr("reused 9");
    assert!(setup.server_file("vm.img") == newer);
}

/// `put --force --whole-file` sends every byte; a REMOTE that does not
/// exist yet, or that shares nothing, is an ordinary upload.
#[test]
fn put_whole_file_and_unrelated_remotes_send_everything() {
    let setup = Setup::with_uploads(true);
    let old = random_bytes(4 * MIB, 23);
    let mut new = old.clone();
    overwrite(&mut new, MIB, 4096, 24);
    setup.put_server("a.bin", &old);
    setup.put_local("a.bin", &new);
    let (run, wire) = setup.put("a.bin", &["--json", "--whole-file"]);
    run.expect_code(0);
    assert_eq!(json(&run)["reused"], 0);
    assert!(wire >= new.len() as u64, "{wire}");
    assert!(setup.server_file("a.bin") == new);

    let other = random_bytes(4 * MIB, 25);
    setup.put_local("a.bin", &other);
    let (run, wire) = setup.put("a.bin", &["--json"]);
    run.expect_code(0);
    assert_eq!(json(&run)["reused"], 0);
    assert!(wire >= other.len() as u64, "{wire}");
    assert!(setup.server_file("a.bin") == other);

    setup.put_local("fresh.bin", &new);
    let (run, _) = setup.put("fresh.bin", &["--json"]);
    run.expect_code(0);
    assert_eq!(json(&run)["sent"], new.len() as u64);
    assert!(setup.server_file("fresh.bin") == new);
}

/// The server's file replaced while its ranges are on the way: the delta
/// is ABORTED (never a mix of versions), DEST keeps the old copy until a
/// whole download of the newest version is verified and renamed.
#[test]
fn a_server_file_changed_mid_delta_is_fetched_again_whole() {
    let setup = Setup::new();
    let old = random_bytes(4 * MIB, 30);
    // The old 4 MiB, then 32 MiB the local copy lacks: more than the
    // stream's window and the server's queue hold, so the server is still
    // reading when the file is replaced.
    let mut new = old.clone();
    new.extend_from_slice(&random_bytes(32 * MIB, 31));
    let newest = random_bytes(new.len(), 32);
    setup.put_server("live.bin", &new);
    setup.put_local("live.bin", &old);
    let dest = setup.out.path().join("live.bin");
    let mut get = common::Background::start(
        setup.out.path(),
        &setup.link.relay.url(),
        &[
            "get",
            "live.bin",
            "-o",
            dest.to_str().unwrap(),
            "--limit-rate",
            "16m",
        ],
    );
    assert!(
        common::wait_until(std::time::Duration::from_secs(30), || {
            setup.link.relay.bytes_down() > MIB as u64
        }),
        "the ranges started"
    );
    assert!(
        std::fs::read(&dest).unwrap() == old,
        "DEST untouched meanwhile"
    );
    let staged = setup.root.path().join(".live.bin.new");
    std::fs::write(&staged, &newest).unwrap();
    std::fs::rename(&staged, setup.root.path().join("live.bin")).unwrap();
    assert_eq!(get.finish(), 0, "{:?}", get.notices);
    assert!(
        std::fs::read(&dest).unwrap() == newest,
        "DEST is the newest version"
    );
    assert!(
        get.notices.iter().any(|line| {
            line.contains("the file changed while it was read")
                && line.contains("downloading it whole")
        }),
        "{:?}",
        get.notices
    );
}

/// `get -r` over a folder whose local copy is an earlier run: a changed
/// file comes as a delta (counted on the wire), an unchanged one is
/// skipped, a new one is fetched whole, and every file ends up the
/// server's.
#[test]
fn a_recursive_rerun_fetches_only_what_changed_in_each_file() {
    let setup = Setup::new();
    std::fs::create_dir(setup.root.path().join("tree")).unwrap();
    std::fs::create_dir(setup.out.path().join("tree")).unwrap();
    let old = random_bytes(8 * MIB, 40);
    let mut changed = old.clone();
    for i in 0..4 {
        overwrite(&mut changed, i * 1_700_000 + 99, 4096, 41 + i as u64);
    }
    let same = random_bytes(2 * MIB, 45);
    let fresh = random_bytes(MIB + 5, 46);
    setup.put_server("tree/changed.bin", &changed);
    setup.put_server("tree/same.bin", &same);
    setup.put_server("tree/fresh.bin", &fresh);
    setup.put_local("tree/changed.bin", &old);
    setup.put_local("tree/same.bin", &same);
    let before = setup.link.relay.bytes_down();
    let out = setup.out.path().join("tree");
    let run = client(
        &setup.link.relay.url(),
        setup.out.path(),
        &["get", "-r", "tree", "-o", out.to_str().unwrap(), "--json"],
    );
    let wire = setup.link.relay.bytes_down() - before;
    run.expect_code(0);
    assert!(setup.local("tree/changed.bin") == changed);
    assert!(setup.local("tree/same.bin") == same);
    assert!(setup.local("tree/fresh.bin") == fresh);
    let lines: Vec<serde_json::Value> = run
        .stdout_str()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &serde_json::Value| line["path"].is_string())
        .collect();
    let line = |name: &str| {
        lines
            .iter()
            .find(|line| line["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("no line for {name}: {}", run.stdout_str()))
    };
    assert_eq!(line("same.bin")["status"], "skipped");
    assert_eq!(line("fresh.bin")["status"], "ok");
    let changed_line = line("changed.bin");
    assert_eq!(changed_line["status"], "ok");
    assert!(changed_line["reused"].as_u64().unwrap() > 7 * MIB as u64);
    // The new file whole, and only the chunks around the four edits.
    assert!(
        wire > fresh.len() as u64 && wire < (fresh.len() + MIB) as u64,
        "{wire} bytes on the wire"
    );
}
