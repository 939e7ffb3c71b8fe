//! Replicas behind a real load balancer, through the real binary: nginx
//! (`grpc_pass`) and haproxy (`proto h2`) in front of two `fetchd serve`
//! replicas of one root, a primary and a backup. A `get` whose replica is
//! SIGKILLed mid-way finishes through the proxy on the other one; a tail
//! idle for longer than the proxy's read timeout keeps following on
//! heartbeats; a tail across a proxy reload gets every line once. The
//! configurations are the ones docs/deploy.md shows, with short timeouts.
//!
//! The proxies are found at `/usr/sbin/NAME` or on the PATH. Without one a
//! test prints `SKIPPED` and passes, unless `FETCHD_REQUIRE_PROXIES=1` (as
//! `.ci/run` sets), when it fails.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    Background, STEP_TIMEOUT, ServerProcess, append_lines, line, random_bytes, sha256_hex,
    wait_until, wait_with_timeout,
};
use rustix::process::{Pid, Signal, kill_process};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

/// The proxy's read timeout in these tests: nginx `grpc_read_timeout`,
/// haproxy `timeout server`.
const PROXY_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The servers' `--tail-heartbeat`, below [`PROXY_READ_TIMEOUT`].
const HEARTBEAT_SECS: &str = "1";
/// How many times a proxy is started on a fresh port when it cannot bind.
const PROXY_START_TRIES: usize = 5;

// ------------------------------------------------------------ the proxies

/// Which load balancer sits in front of the replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProxyKind {
    Nginx,
    Haproxy,
}

impl ProxyKind {
    fn name(self) -> &'static str {
        match self {
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
        }
    }

    /// The binary, or `None` (after a `SKIPPED` line) when it is missing;
    /// with `FETCHD_REQUIRE_PROXIES=1` a missing binary fails the test.
    fn binary(self, test: &str) -> Option<PathBuf> {
        let name = self.name();
        let found = std::iter::once(PathBuf::from("/usr/sbin"))
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            ))
            .map(|dir| dir.join(name))
            .find(|path| path.is_file());
        if found.is_none() {
            let why = format!("{name} is not at /usr/sbin/{name} nor on the PATH");
            if std::env::var("FETCHD_REQUIRE_PROXIES").as_deref() == Ok("1") {
                panic!(
                    "{test}: {why}, and FETCHD_REQUIRE_PROXIES=1 requires it \
                     (Debian: apt-get install {name})"
                );
            }
            eprintln!("SKIPPED {test}: {why}");
        }
        found
    }

    /// The configuration docs/deploy.md shows, with the tests' short
    /// timeouts, every path inside `dir`: `primary` serves, `backup` takes
    /// over when it is down.
    fn config(self, dir: &Path, port: u16, primary: SocketAddr, backup: SocketAddr) -> String {
        let dir = dir.display();
        let read_timeout = PROXY_READ_TIMEOUT.as_secs();
        match self {
            ProxyKind::Nginx => format!(
                "daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
# A reload ends the old worker's streams after 1 s; clients resume.
worker_shutdown_timeout 1s;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream fetchd {{
        server {primary};
        server {backup} backup;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://fetchd;
            grpc_read_timeout {read_timeout}s;
            client_max_body_size 0;
        }}
    }}
}}
"
            ),
            // `timeout client` stays above 2 s: the fetchd client waits up
            // to 2 s for a plain server's first bytes, and haproxy speaks
            // only after the client did (docs/deploy.md).
            ProxyKind::Haproxy => format!(
                "global
    pidfile {dir}/haproxy.pid
    # A reload ends the old worker's streams after 1 s; clients resume.
    hard-stop-after 1s
defaults
    mode http
    timeout connect 1s
    timeout client {client_timeout}s
    timeout server {read_timeout}s
    retries 3
    option redispatch 1
frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend fetchd
backend fetchd
    server a {primary} proto h2 check inter 500ms fall 1 rise 1
    server b {backup} proto h2 check inter 500ms fall 1 rise 1 backup
",
                client_timeout = read_timeout + 1,
            ),
        }
    }
}

/// A proxy running as a child process (nginx `daemon off`, haproxy `-W`
/// in the foreground), its configuration and logs in a temp dir; ended by
/// PID on drop, its workers with it.
struct Proxy {
    kind: ProxyKind,
    bin: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Proxy {
    /// Starts `kind` in front of `primary` (with `backup`) on a free port
    /// of 127.0.0.1 and waits until it accepts connections.
    fn start(kind: ProxyKind, bin: &Path, primary: SocketAddr, backup: SocketAddr) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        // nginx's workers drop to an unprivileged user when the master is
        // root; they need to reach the temp paths.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut failures = Vec::new();
        for _ in 0..PROXY_START_TRIES {
            // A port that was free a moment ago; another process may take
            // it first, then the proxy exits and the next try has another.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            std::fs::write(
                Proxy::config_path(kind, dir.path()),
                kind.config(dir.path(), port, primary, backup),
            )
            .unwrap();
            let log = File::create(dir.path().join("stderr.log")).unwrap();
            let mut command = Command::new(bin);
            match kind {
                ProxyKind::Nginx => command
                    .arg("-p")
                    .arg(dir.path())
                    .arg("-e")
                    .arg(dir.path().join("error.log"))
                    .arg("-c")
                    .arg(Proxy::config_path(kind, dir.path())),
                ProxyKind::Haproxy => command
                    .arg("-W")
                    .arg("-f")
                    .arg(Proxy::config_path(kind, dir.path())),
            };
            let mut child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|err| panic!("spawn {}: {err}", bin.display()));
            let listening = wait_until(STEP_TIMEOUT, || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            // haproxy's master handles SIGUSR2 (a reload) once it has
            // logged its first "Loading success", which may come after
            // the worker accepts connections.
            let ready = listening
                && (kind != ProxyKind::Haproxy
                    || wait_until(STEP_TIMEOUT, || {
                        logs_of(dir.path()).contains("Loading success")
                    }));
            if ready && child.try_wait().unwrap().is_none() {
                return Proxy {
                    kind,
                    bin: bin.to_path_buf(),
                    child,
                    dir,
                    url: format!("http://127.0.0.1:{port}"),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            failures.push(format!("port {port}:\n{}", logs_of(dir.path())));
        }
        panic!(
            "{} did not start in {PROXY_START_TRIES} tries:\n{}",
            kind.name(),
            failures.join("\n")
        );
    }

    fn config_path(kind: ProxyKind, dir: &Path) -> PathBuf {
        dir.join(format!("{}.conf", kind.name()))
    }

    /// Reloads the configuration the way an operator would (`nginx -s
    /// reload`; SIGUSR2 to haproxy's master) and waits until the master
    /// says it took it: new workers serve new connections, the old ones
    /// finish theirs for at most a second.
    fn reload(&self) {
        let (needle, count_before) = match self.kind {
            ProxyKind::Nginx => ("reconfiguring", self.count_in_logs("reconfiguring")),
            ProxyKind::Haproxy => ("Loading success", self.count_in_logs("Loading success")),
        };
        match self.kind {
            ProxyKind::Nginx => {
                let status = Command::new(&self.bin)
                    .arg("-p")
                    .arg(self.dir.path())
                    .arg("-e")
                    .arg(self.dir.path().join("error.log"))
                    .arg("-c")
                    .arg(Proxy::config_path(self.kind, self.dir.path()))
                    .args(["-s", "reload"])
                    .stdin(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success(), "nginx -s reload: {status}");
            }
            ProxyKind::Haproxy => {
                // A SIGUSR2 that reaches the master while it is still
                // settling after start-up can go unanswered: ask again
                // (a second reload is harmless to what the test checks).
                for _ in 0..5 {
                    kill_process(pid(self.child.id()), Signal::USR2).unwrap();
                    if wait_until(Duration::from_secs(5), || {
                        self.count_in_logs(needle) > count_before
                    }) {
                        break;
                    }
                }
            }
        }
        assert!(
            wait_until(STEP_TIMEOUT, || self.count_in_logs(needle) > count_before),
            "{} never logged {needle:?} after the reload:\n{}",
            self.kind.name(),
            logs_of(self.dir.path())
        );
    }

    fn count_in_logs(&self, needle: &str) -> usize {
        logs_of(self.dir.path()).matches(needle).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM makes both masters stop their workers at once; a worker
        // left behind after that is killed by its PID.
        let workers = children_of(self.child.id());
        let _ = kill_process(pid(self.child.id()), Signal::TERM);
        if wait_with_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for worker in workers {
            let cmdline = std::fs::read(format!("/proc/{worker}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(self.kind.name()) {
                let _ = kill_process(pid(worker), Signal::KILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("{} logs:\n{}", self.kind.name(), logs_of(self.dir.path()));
        }
    }
}

fn pid(raw: u32) -> Pid {
    Pid::from_raw(raw as i32).unwrap()
}

/// The PIDs whose parent is `parent` (a proxy master's workers).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            let stat =
                std::fs::read_to_string(format!("/proc/{candidate}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split
            // after its closing parenthesis.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// What a proxy wrote to its logs in `dir`, for failure messages.
fn logs_of(dir: &Path) -> String {
    ["stderr.log", "error.log"]
        .iter()
        .filter_map(|name| std::fs::read_to_string(dir.join(name)).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

// --------------------------------------------------------------- clients

fn sha256_of_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path).unwrap(), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// `fetchd_sent_bytes_total` of the server whose metrics listen at `addr`.
fn sent_bytes(addr: SocketAddr) -> u64 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: fetchd\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    response
        .lines()
        .find_map(|line| line.strip_prefix("fetchd_sent_bytes_total "))
        .unwrap_or_else(|| panic!("no fetchd_sent_bytes_total in:\n{response}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

/// Two replicas of `root` (a primary and a backup), each with `extra`: one
/// root served twice (the reload and idle tests; the failover test below
/// gives each replica its own copy).
fn replicas(root: &Path, extra: &[&str]) -> (ServerProcess, ServerProcess) {
    (
        ServerProcess::start(root, extra),
        ServerProcess::start(root, extra),
    )
}

// ----------------------------------------------------------------- get

/// A 256 MiB get through the proxy whose serving replica is SIGKILLed
/// after 48 MiB: the client notices the lost connection, goes through the
/// proxy again, lands on the backup (another root with the same bytes),
/// resumes there, finishes by itself (exit 0) and DEST has the file's
/// sha256.
fn get_survives_a_replica_killed_mid_transfer(kind: ProxyKind) {
    let test = format!(
        "get_survives_a_replica_killed_mid_transfer ({})",
        kind.name()
    );
    let Some(bin) = kind.binary(&test) else {
        return;
    };
    // Two roots with the same bytes, as on two hosts: the backup resumes
    // a part file the primary began, checked by its own prefix digest.
    let roots = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let data = random_bytes(256 * MIB, 17);
    let want = sha256_hex(&data);
    for root in &roots {
        std::fs::write(root.path().join("big.bin"), &data).unwrap();
    }
    drop(data);
    let mut primary = ServerProcess::start(roots[0].path(), &[]);
    let backup = ServerProcess::start(roots[1].path(), &["--metrics-listen", "127.0.0.1:0"]);
    let backup_metrics: SocketAddr = backup
        .next_stdout_line()
        .strip_prefix("metrics on ")
        .expect("a `metrics on` line")
        .parse()
        .unwrap();
    let proxy = Proxy::start(kind, &bin, primary.addr, backup.addr);

    let work = tempfile::tempdir().unwrap();
    let part = work.path().join("big.bin.part");
    let dest = work.path().join("big.bin");
    let mut get = Background::start(
        work.path(),
        &proxy.url,
        &["get", "big.bin", "--limit-rate", "64M"],
    );
    assert!(
        wait_until(STEP_TIMEOUT, || std::fs::metadata(&part)
            .is_ok_and(|meta| meta.len() >= 48 * MIB as u64)),
        "{test}: 48 MiB never arrived"
    );
    primary.kill();
    assert!(!dest.exists(), "{test}: the get finished before the kill");

    let code = get.finish();
    assert_eq!(code, 0, "{test}: stderr {:?}", get.notices);
    assert!(
        get.notices
            .iter()
            .any(|notice| notice.contains("big.bin: connection lost, retrying")),
        "{test}: no retry notice: {:?}",
        get.notices
    );
    assert_eq!(sha256_of_file(&dest), want, "{test}");
    assert!(!part.exists(), "{test}");
    // Resumed, not begun again: the backup sent at most what was missing.
    let sent = sent_bytes(backup_metrics);
    assert!(
        sent > 0 && sent <= (256 - 48) * MIB as u64,
        "{test}: the backup sent {sent} bytes"
    );
    eprintln!(
        "{test}: the backup sent {:.1} MiB; client stderr {:?}",
        sent as f64 / MIB as f64,
        get.notices
    );
}

// ---------------------------------------------------------------- tail

/// A tail through the proxy that stays quiet for twice the proxy's read
/// timeout and more keeps its stream: the next line arrives exactly once
/// and the client never had to reconnect. The same quiet, through the same
/// proxy configuration to replicas whose heartbeat is far above the read
/// timeout, does cut the stream (so the timeout is real), and that tail
/// resumes from its cursor with the same lines.
fn idle_tail_outlives_the_proxy_read_timeout(kind: ProxyKind) {
    let test = format!(
        "idle_tail_outlives_the_proxy_read_timeout ({})",
        kind.name()
    );
    let Some(bin) = kind.binary(&test) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    append_lines(&log, 0..1);
    let (primary, backup) = replicas(root.path(), &["--tail-heartbeat", HEARTBEAT_SECS]);
    let proxy = Proxy::start(kind, &bin, primary.addr, backup.addr);
    let (quiet_primary, quiet_backup) = replicas(root.path(), &["--tail-heartbeat", "3600"]);
    let quiet_proxy = Proxy::start(kind, &bin, quiet_primary.addr, quiet_backup.addr);

    let cwd = tempfile::tempdir().unwrap();
    let mut tail = Background::start(cwd.path(), &proxy.url, &["tail", "app.log"]);
    let mut unbeaten = Background::start(cwd.path(), &quiet_proxy.url, &["tail", "app.log"]);
    tail.wait_lines(1);
    unbeaten.wait_lines(1);
    // The quiet stretch itself is what is tested: time is waited for here.
    std::thread::sleep(PROXY_READ_TIMEOUT * 2 + Duration::from_secs(1));
    append_lines(&log, 1..2);
    tail.wait_lines(2);
    unbeaten.wait_lines(2);
    tail.drain();
    unbeaten.drain();

    assert_eq!(tail.lines, [line(0), line(1)], "{test}");
    assert!(
        tail.notices.is_empty(),
        "{test}: the tail needed a reconnect: {:?}",
        tail.notices
    );
    assert_eq!(
        unbeaten.lines,
        [line(0), line(1)],
        "{test}: without heartbeats"
    );
    assert!(
        unbeaten
            .notices
            .iter()
            .any(|notice| notice.contains("connection lost")),
        "{test}: without heartbeats the proxy did not cut the quiet stream, so \
         the timeout under test is not in force: {:?}",
        unbeaten.notices
    );
}

/// A tail through the proxy across a reload: lines written before, during
/// (while the old worker still holds the stream) and after it (once the
/// old worker was stopped and the tail reconnected through the new one)
/// all arrive, each exactly once, in order.
fn tail_survives_a_proxy_reload(kind: ProxyKind) {
    let test = format!("tail_survives_a_proxy_reload ({})", kind.name());
    let Some(bin) = kind.binary(&test) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    append_lines(&log, 0..10);
    let (primary, backup) = replicas(root.path(), &["--tail-heartbeat", HEARTBEAT_SECS]);
    let proxy = Proxy::start(kind, &bin, primary.addr, backup.addr);

    let cwd = tempfile::tempdir().unwrap();
    let mut tail = Background::start(cwd.path(), &proxy.url, &["tail", "app.log", "-n", "100"]);
    tail.wait_lines(10);
    proxy.reload();
    append_lines(&log, 10..20);
    // The old worker ends its streams a second after the reload; the tail
    // comes back through the new worker from its cursor.
    tail.wait_stderr("reconnected; app.log resumes at byte");
    append_lines(&log, 20..30);
    tail.wait_lines(30);
    tail.drain();

    let want: Vec<String> = (0..30).map(line).collect();
    assert_eq!(tail.lines, want, "{test}: stderr {:?}", tail.notices);
}

/// A tail through the proxy whose replica is SIGKILLed: the client comes
/// back through the proxy to the backup, whose log is its own copy (another
/// file: other device and inode, as on another host) with the same lines.
/// The cursor's fingerprint of the last bytes received lets the backup
/// resume at the same offset: every line once, in order, nothing replayed.
fn tail_fails_over_to_a_replicas_copy(kind: ProxyKind) {
    let test = format!("tail_fails_over_to_a_replicas_copy ({})", kind.name());
    let Some(bin) = kind.binary(&test) else {
        return;
    };
    let roots = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let logs: Vec<PathBuf> = roots
        .iter()
        .map(|root| root.path().join("app.log"))
        .collect();
    for log in &logs {
        std::fs::write(log, "").unwrap();
        append_lines(log, 0..10);
    }
    let extra = ["--tail-heartbeat", HEARTBEAT_SECS];
    let mut primary = ServerProcess::start(roots[0].path(), &extra);
    let backup = ServerProcess::start(roots[1].path(), &extra);
    let proxy = Proxy::start(kind, &bin, primary.addr, backup.addr);

    let cwd = tempfile::tempdir().unwrap();
    let mut tail = Background::start(cwd.path(), &proxy.url, &["tail", "app.log", "-n", "100"]);
    tail.wait_lines(10);
    for log in &logs {
        append_lines(log, 10..20);
    }
    tail.wait_lines(20);
    primary.kill();
    tail.wait_stderr("reconnected; app.log resumes at byte");
    append_lines(&logs[1], 20..30);
    tail.wait_lines(30);
    tail.drain();

    let want: Vec<String> = (0..30).map(line).collect();
    assert_eq!(tail.lines, want, "{test}: stderr {:?}", tail.notices);
    assert!(
        !tail.notices.iter().any(|notice| notice.contains("gone")),
        "{test}: the backup started the file over: {:?}",
        tail.notices
    );
}

/// Every scenario through each proxy: `nginx::NAME` and `haproxy::NAME`.
macro_rules! through {
    ($proxy:ident, $kind:expr) => {
        mod $proxy {
            use super::ProxyKind;

            #[test]
            fn get_survives_a_replica_killed_mid_transfer() {
                super::get_survives_a_replica_killed_mid_transfer($kind);
            }

            #[test]
            fn idle_tail_outlives_the_proxy_read_timeout() {
                super::idle_tail_outlives_the_proxy_read_timeout($kind);
            }

            #[test]
            fn tail_survives_a_proxy_reload() {
                super::tail_survives_a_proxy_reload($kind);
            }

            #[test]
            fn tail_fails_over_to_a_replicas_copy() {
                super::tail_fails_over_to_a_replicas_copy($kind);
            }
        }
    };
}

through!(nginx, ProxyKind::Nginx);
through!(haproxy, ProxyKind::Haproxy);
