//! `fetchd tail` end to end: the last lines, following through bursts,
//! partial lines, truncation, rotation and re-creation, many clients, a
//! server restart, a client that stops reading, signals, and confinement.
//! Every wait is on output or a condition, bounded by a timeout.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use fetchd::{TailCursor, TailEvent, TailNotice, TailStart};

/// How long any one expected output may take to show up.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(30);

/// `line-00042\n`.
fn line(i: usize) -> String {
    format!("line-{i:05}\n")
}

fn lines(range: std::ops::Range<usize>) -> String {
    range.map(line).collect()
}

fn append(path: &Path, data: &[u8]) {
    let mut file = OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(data).unwrap();
}

/// A folder served as the root, with `logs/app.log` holding `initial`.
struct Logs {
    tmp: tempfile::TempDir,
}

impl Logs {
    fn new(initial: &[u8]) -> Logs {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("root/logs")).unwrap();
        fs::write(tmp.path().join("root/logs/app.log"), initial).unwrap();
        Logs { tmp }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn log(&self) -> PathBuf {
        self.root().join("logs/app.log")
    }

    fn at(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }
}

/// Bytes a child wrote so far, and a condition variable for waiting on more.
#[derive(Default)]
struct Captured {
    data: Mutex<Vec<u8>>,
    more: Condvar,
}

impl Captured {
    /// Copies `from` into a new capture on a thread.
    fn spawn(mut from: impl Read + Send + 'static) -> Arc<Captured> {
        let captured = Arc::new(Captured::default());
        let sink = Arc::clone(&captured);
        thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = from.read(&mut buf).unwrap_or(0);
                let mut data = sink.data.lock().unwrap();
                if n == 0 {
                    sink.more.notify_all();
                    break;
                }
                data.extend_from_slice(&buf[..n]);
                sink.more.notify_all();
            }
        });
        captured
    }

    fn snapshot(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was captured; `false` on timeout.
    fn wait_for(&self, timeout: Duration, done: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut data = self.data.lock().unwrap();
        loop {
            if done(&data) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            data = self.more.wait_timeout(data, deadline - now).unwrap().0;
        }
    }
}

/// A running `fetchd tail`, killed on drop.
struct Tail {
    child: Child,
    cmdline: String,
    out: Arc<Captured>,
    err: Arc<Captured>,
}

impl Tail {
    fn start(url: &str, args: &[&str]) -> Tail {
        let mut cmd = fetchd();
        cmd.args(["--server", url, "tail"]).args(args);
        let cmdline = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Captured::spawn(child.stdout.take().unwrap());
        let err = Captured::spawn(child.stderr.take().unwrap());
        Tail {
            child,
            cmdline,
            out,
            err,
        }
    }

    fn stdout(&self) -> Vec<u8> {
        self.out.snapshot()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.snapshot()).into_owned()
    }

    fn describe(&self) -> String {
        let out = self.stdout();
        let shown = if out.len() > 2000 {
            format!(
                "({} bytes) ...{}",
                out.len(),
                String::from_utf8_lossy(&out[out.len() - 2000..])
            )
        } else {
            String::from_utf8_lossy(&out).into_owned()
        };
        format!(
            "command: {}\nstdout:\n{}\nstderr:\n{}",
            self.cmdline,
            shown,
            self.stderr()
        )
    }

    /// Waits until stdout (as text) satisfies `done`; the text, or `None`
    /// after the timeout.
    fn wait_for_stdout(&self, done: impl Fn(&str) -> bool) -> Option<String> {
        let ok = self
            .out
            .wait_for(OUTPUT_TIMEOUT, |got| done(&String::from_utf8_lossy(got)));
        ok.then(|| String::from_utf8_lossy(&self.stdout()).into_owned())
    }

    /// Waits until stdout is exactly `want`; fails the test otherwise.
    fn expect_stdout(&self, want: &str) {
        let want = want.as_bytes();
        let ok = self
            .out
            .wait_for(OUTPUT_TIMEOUT, |got| got.len() >= want.len());
        let got = self.stdout();
        assert!(
            ok && got == want,
            "stdout is not what was written (want {} bytes, got {})\n{}",
            want.len(),
            got.len(),
            self.describe()
        );
    }

    /// Waits until stderr contains `needle`.
    fn expect_stderr(&self, needle: &str) {
        let ok = self.err.wait_for(OUTPUT_TIMEOUT, |got| {
            String::from_utf8_lossy(got).contains(needle)
        });
        assert!(ok, "stderr lacks {needle:?}\n{}", self.describe());
    }

    /// Waits until stderr contains one of `needles`.
    fn expect_stderr_any(&self, needles: &[&str]) {
        let ok = self.err.wait_for(OUTPUT_TIMEOUT, |got| {
            let got = String::from_utf8_lossy(got);
            needles.iter().any(|needle| got.contains(needle))
        });
        assert!(ok, "stderr lacks all of {needles:?}\n{}", self.describe());
    }

    fn signal(&mut self, signal: rustix::process::Signal) -> ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
        let status = wait_with_timeout(&mut self.child, OUTPUT_TIMEOUT);
        status.unwrap_or_else(|| panic!("did not exit after {signal:?}\n{}", self.describe()))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fetchd serve` on a given address (for restarts on the same port).
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start(root: &Path, listen: &str) -> Serve {
        let mut child = fetchd()
            .args(["serve", "--listen", listen, "--root"])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let first = rx.recv_timeout(STEP_TIMEOUT).unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("fetchd serve --listen {listen}: printed {first:?}"))
            .parse()
            .unwrap();
        Serve { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// inotify watches the process `pid` holds, from `/proc/PID/fdinfo`.
fn inotify_watches(pid: u32) -> usize {
    let mut watches = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:inotify" {
            continue;
        }
        let fd = entry.file_name();
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
            .unwrap_or_default();
        watches += info
            .lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .count();
    }
    watches
}

/// A field of `/proc/PID/status` in KiB (e.g. `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// `--no-follow -n N` prints exactly the last N lines: with and without a
/// final newline, N larger than the file, the default of 10, and 0.
#[test]
fn no_follow_prints_the_last_lines() {
    let logs = Logs::new(lines(0..20).as_bytes());
    fs::write(logs.at("no-newline.log"), "a\nb\nc\nd\ne\nf\ng").unwrap();
    fs::write(logs.at("empty.log"), "").unwrap();
    let server = ServerProcess::start(&logs.root(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let tail = |args: &[&str]| {
        let mut all = vec!["tail", "--no-follow"];
        all.extend_from_slice(args);
        let run = client(&server.url, cwd.path(), &all);
        run.expect_code(0);
        run.stdout_str()
    };
    assert_eq!(tail(&["logs/app.log", "-n", "5"]), lines(15..20));
    assert_eq!(tail(&["logs/app.log"]), lines(10..20));
    assert_eq!(tail(&["logs/app.log", "-n", "500"]), lines(0..20));
    assert_eq!(tail(&["logs/app.log", "-n", "0"]), "");
    assert_eq!(tail(&["no-newline.log", "-n", "5"]), "c\nd\ne\nf\ng");
    assert_eq!(tail(&["no-newline.log", "-n", "1"]), "g");
    assert_eq!(tail(&["no-newline.log", "-n", "99"]), "a\nb\nc\nd\ne\nf\ng");
    assert_eq!(tail(&["/empty.log", "-n", "5"]), "");
}

/// 20,000 lines written in bursts all arrive exactly once, in order.
#[test]
fn bursts_arrive_exactly_once_in_order() {
    let logs = Logs::new(b"start\n");
    let server = ServerProcess::start(&logs.root(), &[]);
    let tail = Tail::start(&server.url, &["logs/app.log", "-n", "1"]);
    tail.expect_stdout("start\n");
    let mut file = OpenOptions::new().append(true).open(logs.log()).unwrap();
    for burst in 0..40 {
        let text = lines(burst * 500..(burst + 1) * 500);
        // Some bursts in one write, some line by line.
        if burst % 2 == 0 {
            file.write_all(text.as_bytes()).unwrap();
        } else {
            for l in text.split_inclusive('\n') {
                file.write_all(l.as_bytes()).unwrap();
            }
        }
    }
    tail.expect_stdout(&format!("start\n{}", lines(0..20_000)));
}

/// A line written in two parts: the first part shows as soon as it is
/// written, and together they make the whole line.
#[test]
fn partial_line_is_sent_when_written() {
    let logs = Logs::new(b"start\n");
    let server = ServerProcess::start(&logs.root(), &[]);
    let tail = Tail::start(&server.url, &["logs/app.log", "-n", "1"]);
    tail.expect_stdout("start\n");
    append(&logs.log(), b"hello, ");
    tail.expect_stdout("start\nhello, ");
    append(&logs.log(), b"world\n");
    tail.expect_stdout("start\nhello, world\n");
}

/// Truncate, then write: the notice says `truncated` and the new data
/// follows from offset 0, nothing lost or repeated.
#[test]
fn truncate_and_write() {
    let logs = Logs::new(lines(0..100).as_bytes());
    let server = ServerProcess::start(&logs.root(), &[]);
    let tail = Tail::start(&server.url, &["logs/app.log", "-n", "2"]);
    tail.expect_stdout(&lines(98..100));
    File::options()
        .write(true)
        .open(logs.log())
        .unwrap()
        .set_len(0)
        .unwrap();
    tail.expect_stderr("truncated");
    append(&logs.log(), b"after truncation\n");
    tail.expect_stdout(&format!("{}after truncation\n", lines(98..100)));
}

/// copytruncate: the log is copied, truncated and immediately written past
/// its old length; the new content arrives whole, once, after a notice.
#[test]
fn copytruncate() {
    let logs = Logs::new(lines(0..50).as_bytes());
    let server = ServerProcess::start(&logs.root(), &[]);
    let tail = Tail::start(&server.url, &["logs/app.log", "-n", "1"]);
    tail.expect_stdout(&lines(49..50));
    append(&logs.log(), lines(50..60).as_bytes());
    tail.expect_stdout(&lines(49..60));
    fs::copy(logs.log(), logs.at("logs/app.log.1")).unwrap();
    let file = OpenOptions::new().write(true).open(logs.log()).unwrap();
    file.set_len(0).unwrap();
    // Longer than what was there: size alone would not show the truncation.
    let after: String = (0..200).map(|i| format!("fresh-{i:04}\n")).collect();
    let mut file = OpenOptions::new().append(true).open(logs.log()).unwrap();
    file.write_all(after.as_bytes()).unwrap();
    tail.expect_stdout(&format!("{}{after}", lines(49..60)));
    tail.expect_stderr("truncated");
}

/// logrotate's rename + create: lines the writer still appends to the
/// renamed file come first, then the new file from its start.
#[test]
fn rotation_by_rename_and_create() {
    let logs = Logs::new(lines(0..10).as_bytes());
    let server = ServerProcess::start(&logs.root(), &[]);
    let tail = Tail::start(&server.url, &["logs/app.log", "-n", "3"]);
    tail.expect_stdout(&lines(7..10));
    let mut old = OpenOptions::new().append(true).open(logs.log()).unwrap();
    fs::rename(logs.log(), logs.at("logs/app.log.1")).unwrap();
    File::create(logs.log()).unwrap();
    // The application has not reopened its log yet.
    old.write_all(lines(10..15).as_bytes()).unwrap();
    tail.expect_stdout(&lines(7..15));
    drop(old);
    append(&logs.log(), lines(15..25).as_bytes());
    tail.expect_stdout(&lines(7..25));
    // "rotated", or "gone" then "appeared" if the server looked in between.
    tail.expect_stderr_any(&["file rotated", "file appeared"]);
    // And the next rotation works the same.
    fs::rename(logs.log(), logs.at("logs/app.log.2")).unwrap();
    fs::write(logs.log(), lines(25..30)).unwrap();
    tail.expect_stdout(&lines(7..30));
}

/// Delete and re-create: the new file is followed from its start.
#[test]
fn delete_and_recreate() {
    let logs = Logs::new(lines(0..5).as_bytes());
    let server = ServerProcess::start(&logs.root(), &[]);
    let tail = Tail::start(&server.url, &["logs/app.log"]);
    tail.expect_stdout(&lines(0..5));
    fs::remove_file(logs.log()).unwrap();
    tail.expect_stderr("waiting for it to reappear");
    fs::write(logs.log(), lines(5..8)).unwrap();
    tail.expect_stdout(&lines(0..8));
    append(&logs.log(), lines(8..9).as_bytes());
    tail.expect_stdout(&lines(0..9));
}

/// A file that does not exist yet: with follow, a notice, then its bytes
/// once it appears; without follow, exit 1 and `not found`.
#[test]
fn missing_file_waits_or_fails() {
    let logs = Logs::new(b"");
    let server = ServerProcess::start(&logs.root(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    client(
        &server.url,
        cwd.path(),
        &["tail", "--no-follow", "later.log"],
    )
    .expect_code(1)
    .expect_stderr("later.log: not found");

    let tail = Tail::start(&server.url, &["later.log"]);
    tail.expect_stderr("not found; waiting for it to appear");
    fs::write(logs.at("later.log"), "born\n").unwrap();
    tail.expect_stdout("born\n");
    append(&logs.at("later.log"), b"grows\n");
    tail.expect_stdout("born\ngrows\n");

    // A folder that does not exist yet either (checked at an interval).
    let nested = Tail::start(&server.url, &["new/dir/x.log"]);
    nested.expect_stderr("not found; waiting for it to appear");
    fs::create_dir_all(logs.at("new/dir")).unwrap();
    fs::write(logs.at("new/dir/x.log"), "deep\n").unwrap();
    nested.expect_stdout("deep\n");
}

/// 50 clients on one file all get every byte, and the server watches the
/// folder once for all of them; when they leave, the watch goes.
#[test]
fn fifty_clients_one_watch() {
    let logs = Logs::new(b"start\n");
    let server = ServerProcess::start(&logs.root(), &[]);
    let tails: Vec<Tail> = (0..50)
        .map(|_| Tail::start(&server.url, &["logs/app.log", "-n", "1"]))
        .collect();
    for tail in &tails {
        tail.expect_stdout("start\n");
    }
    assert_eq!(inotify_watches(server.pid()), 1, "one watch for 50 tails");
    let mut file = OpenOptions::new().append(true).open(logs.log()).unwrap();
    for burst in 0..20 {
        file.write_all(lines(burst * 100..(burst + 1) * 100).as_bytes())
            .unwrap();
    }
    let want = format!("start\n{}", lines(0..2000));
    for tail in &tails {
        tail.expect_stdout(&want);
    }
    drop(tails);
    assert!(
        wait_until(Duration::from_secs(10), || inotify_watches(server.pid())
            == 0),
        "the watch outlived its tails"
    );
}

/// The server is killed mid-stream while lines keep coming, and the log is
/// rotated while it is down; a new server on the same port picks up: the
/// client reconnects and resumes, nothing lost, nothing twice.
#[test]
fn server_restart_resumes_without_loss_or_duplicates() {
    let logs = Logs::new(b"start\n");
    let mut server = Serve::start(&logs.root(), "127.0.0.1:0");
    let addr = server.addr.to_string();
    let tail = Tail::start(&server.url(), &["logs/app.log", "-n", "1"]);
    tail.expect_stdout("start\n");

    append(&logs.log(), lines(0..1000).as_bytes());
    tail.expect_stdout(&format!("start\n{}", lines(0..1000)));

    // Killed while a writer is busy.
    let writer = {
        let log = logs.log();
        thread::spawn(move || {
            for i in 1000..3000 {
                append(&log, line(i).as_bytes());
                if i % 100 == 0 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };
    thread::sleep(Duration::from_millis(10));
    server.kill();
    writer.join().unwrap();
    // Rotated while nobody serves it.
    fs::rename(logs.log(), logs.at("logs/app.log.1")).unwrap();
    fs::write(logs.log(), lines(3000..3100)).unwrap();

    let _server = Serve::start(&logs.root(), &addr);
    append(&logs.log(), lines(3100..3200).as_bytes());
    tail.expect_stdout(&format!("start\n{}", lines(0..3200)));
    tail.expect_stderr("reconnected");
}

/// `fetchd tail logs/app.log -n 1` with its stdout left to the test, once
/// it printed the file's one line, `start`.
fn tail_read_by_hand(url: &str) -> (Child, ChildStdout) {
    let mut child = fetchd()
        .args(["--server", url, "tail", "logs/app.log", "-n", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"start\n");
    (child, stdout)
}

/// A client that stops reading while the file grows by 64 MiB does not
/// make the server buffer it: the server's peak RSS stays small, and the
/// client still gets every byte once it reads again.
#[test]
fn stalled_client_does_not_grow_server_memory() {
    const GROWTH: usize = 64 << 20;
    const RSS_BOUND_KIB: u64 = 64 * 1024;
    let logs = Logs::new(b"start\n");
    let server = ServerProcess::start(&logs.root(), &[]);
    let (mut child, mut stdout) = tail_read_by_hand(&server.url);

    // 64 MiB of lines while nobody reads.
    let block: Vec<u8> = (0..16 * 1024)
        .flat_map(|i| format!("{:063}\n", i).into_bytes())
        .collect();
    let mut file = OpenOptions::new().append(true).open(logs.log()).unwrap();
    for _ in 0..GROWTH / block.len() {
        file.write_all(&block).unwrap();
    }
    let stalled_kib = status_kib(server.pid(), "VmRSS");

    // Now read it all: every byte arrives, and the peak stayed bounded.
    let mut got = 0usize;
    let mut buf = vec![0; 1 << 20];
    while got < GROWTH {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the tail ended early after {got} bytes");
        assert!(
            buf[..n]
                .iter()
                .zip(block.iter().cycle().skip(got % block.len()))
                .all(|(a, b)| a == b),
            "wrong bytes near offset {got}"
        );
        got += n;
    }
    let peak_kib = status_kib(server.pid(), "VmHWM");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        peak_kib < RSS_BOUND_KIB,
        "server peak RSS {peak_kib} KiB (while stalled: {stalled_kib} KiB) for {} MiB appended",
        GROWTH >> 20
    );
}

/// SIGINT (Ctrl-C) and SIGTERM end a following tail with status 0.
#[test]
fn ctrl_c_and_sigterm_exit_zero() {
    let logs = Logs::new(b"one\n");
    let server = ServerProcess::start(&logs.root(), &[]);
    let mut tail = Tail::start(&server.url, &["logs/app.log"]);
    tail.expect_stdout("one\n");
    let status = tail.signal(rustix::process::Signal::INT);
    assert_eq!(status.code(), Some(0), "{}", tail.describe());

    let mut tail = Tail::start(&server.url, &["logs/app.log"]);
    tail.expect_stdout("one\n");
    let status = tail.signal(rustix::process::Signal::TERM);
    assert_eq!(status.code(), Some(0), "{}", tail.describe());
}

/// SIGINT and SIGTERM also end a tail whose stdout is blocked: the reader
/// stopped reading, the pipe is full and the client sits in `write(2)`.
#[test]
fn signals_exit_zero_while_stdout_is_blocked() {
    let logs = Logs::new(b"start\n");
    let server = ServerProcess::start(&logs.root(), &[]);
    for signal in [rustix::process::Signal::INT, rustix::process::Signal::TERM] {
        fs::write(logs.log(), "start\n").unwrap();
        // Held, never read again: the pipe fills up.
        let (mut child, stdout) = tail_read_by_hand(&server.url);
        let pid = child.id();
        // More than a pipe holds, in writes until the client is stuck in one.
        let block = vec![b'x'; 256 * 1024];
        let deadline = Instant::now() + OUTPUT_TIMEOUT;
        while !blocked_in_pipe_write(pid) {
            assert!(
                Instant::now() < deadline,
                "the client never blocked on stdout"
            );
            append(&logs.log(), &block);
            thread::sleep(Duration::from_millis(20));
        }
        let raw = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(raw, signal).unwrap();
        let status = wait_with_timeout(&mut child, OUTPUT_TIMEOUT);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            status.and_then(|status| status.code()),
            Some(0),
            "exit after {signal:?} while blocked on stdout"
        );
        drop(stdout);
    }
}

/// True when some thread of `pid` sleeps in a pipe write (`pipe_write`, or
/// `anon_pipe_write` on newer kernels).
fn blocked_in_pipe_write(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        fs::read_to_string(task.path().join("wchan"))
            .is_ok_and(|wchan| wchan.contains("pipe_write"))
    })
}

/// Tail is confined like every verb: a symlink leading out is refused with
/// PERMISSION_DENIED (nothing read, nothing watched), `..` past the root
/// too, and a FIFO is refused without being opened.
#[test]
fn confinement() {
    let logs = Logs::new(b"inside\n");
    let outside = logs.tmp.path().join("outside.log");
    fs::write(&outside, "outside secret\n").unwrap();
    symlink(&outside, logs.at("logs/escape.log")).unwrap();
    symlink("../../outside.log", logs.at("logs/relative-escape.log")).unwrap();
    symlink("app.log", logs.at("logs/inside-link.log")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        logs.at("logs/pipe").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let server = ServerProcess::start(&logs.root(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    for (path, reason) in [
        (
            "logs/escape.log",
            "permission denied: the path leads outside the served root",
        ),
        (
            "logs/relative-escape.log",
            "permission denied: the path leads outside the served root",
        ),
        (
            "../outside.log",
            "permission denied: the path leads outside the served root",
        ),
        ("logs/pipe", "fifo"),
    ] {
        for follow in [true, false] {
            let mut args = vec!["tail", path];
            if !follow {
                args.push("--no-follow");
            }
            let run = client(&server.url, cwd.path(), &args);
            run.expect_code(1).expect_stderr(reason);
            assert!(
                !run.stdout_str().contains("secret"),
                "leaked: {}",
                run.describe()
            );
            assert_eq!(run.stderr.lines().count(), 1, "{}", run.describe());
        }
    }
    assert_eq!(inotify_watches(server.pid()), 0, "nothing was watched");
    let run = client(
        &server.url,
        cwd.path(),
        &["tail", "--no-follow", "logs/inside-link.log"],
    );
    run.expect_code(0);
    assert_eq!(run.stdout_str(), "inside\n");
}

/// SIGTERM to the server ends open tail streams at once (no waiting for the
/// grace period); the client says so and keeps trying to reconnect.
#[test]
fn server_shutdown_ends_tail_streams() {
    let logs = Logs::new(b"one\n");
    let mut server = ServerProcess::start(&logs.root(), &["--grace", "60"]);
    let mut tail = Tail::start(&server.url, &["logs/app.log"]);
    tail.expect_stdout("one\n");
    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "server exit {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown waited {:?} for the tail stream",
        started.elapsed()
    );
    tail.expect_stderr("the server is shutting down; reconnecting");
    let status = tail.signal(rustix::process::Signal::INT);
    assert_eq!(status.code(), Some(0), "{}", tail.describe());
}

/// The library: a cursor from an earlier stream resumes right after it,
/// also when the file was rotated in between (the old file's rest first).
#[test]
fn cursor_resumes_across_rotation() {
    let logs = Logs::new(lines(0..3).as_bytes());
    let server = InProcessServer::serve(&logs.root());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = server.client().await;
        let mut stream = client
            .tail("logs/app.log", TailStart::LastLines(100), true)
            .await
            .unwrap();
        let mut cursor = TailCursor::default();
        let mut got = Vec::new();
        while got.len() < lines(0..3).len() {
            let event = tokio::time::timeout(OUTPUT_TIMEOUT, stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let TailEvent::Data { data, .. } = &event {
                got.extend_from_slice(data);
            }
            cursor = event.cursor();
        }
        drop(stream);

        append(&logs.log(), lines(3..5).as_bytes());
        fs::rename(logs.log(), logs.at("logs/app.log.1")).unwrap();
        fs::write(logs.log(), lines(5..7)).unwrap();

        let mut stream = client
            .tail("logs/app.log", TailStart::Cursor(cursor), true)
            .await
            .unwrap();
        let mut notices = Vec::new();
        let mut after = Vec::new();
        while after.len() < lines(3..7).len() {
            match tokio::time::timeout(OUTPUT_TIMEOUT, stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                TailEvent::Data { data, .. } => after.extend_from_slice(&data),
                TailEvent::Notice { notice, .. } => notices.push(notice),
            }
        }
        assert_eq!(String::from_utf8(after).unwrap(), lines(3..7));
        assert_eq!(notices, [TailNotice::Opened, TailNotice::Rotated]);
    });
}

/// A quiet log through a server that sends a heartbeat every second: the
/// heartbeats show nothing (one server, and `--json` over a fleet of two),
/// and the next line still arrives exactly once.
#[test]
fn heartbeats_of_a_quiet_tail_show_nothing() {
    let logs = Logs::new(b"start\n");
    let a = ServerProcess::start(&logs.root(), &["--tail-heartbeat", "1"]);
    let b = ServerProcess::start(&logs.root(), &["--tail-heartbeat", "1"]);
    let single = Tail::start(&a.url, &["logs/app.log", "-n", "1"]);
    let (a_label, b_label) = (format!("a={}", a.url), format!("b={}", b.url));
    // Servers given after the verb replace the one given before it.
    let fleet = Tail::start(
        &a.url,
        &[
            "--server",
            &a_label,
            "--server",
            &b_label,
            "logs/app.log",
            "-n",
            "1",
            "--json",
        ],
    );
    single.expect_stdout("start\n");
    assert!(
        fleet
            .wait_for_stdout(|out| out.matches("\"line\":\"start\"").count() == 2)
            .is_some(),
        "{}",
        fleet.describe()
    );
    // An idle stretch of a few heartbeat periods: time itself is what is
    // waited for here (the heartbeats are sent on a clock).
    std::thread::sleep(Duration::from_millis(3500));
    single.expect_stdout("start\n");
    append(&logs.log(), b"after the quiet\n");
    single.expect_stdout("start\nafter the quiet\n");
    let out = fleet
        .wait_for_stdout(|out| out.matches("after the quiet").count() == 2)
        .unwrap_or_else(|| panic!("{}", fleet.describe()));
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(single.stderr().is_empty(), "{}", single.stderr());
}
