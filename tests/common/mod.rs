//! Shared test harness: real servers on 127.0.0.1 port 0 (as the built
//! binary or in-process), a CLI runner that shows everything when an
//! assertion fails, and deterministic test data.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub mod relay;

/// How long any one CLI run or server start may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The `fetchd` binary under test.
pub fn fetchd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fetchd"))
}

/// A `fetchd` command with a clean environment for the client options.
pub fn fetchd() -> Command {
    let mut cmd = Command::new(fetchd_bin());
    cmd.env_remove("FETCHD_SERVER")
        .env_remove("FETCHD_TOKEN")
        .env("RUST_LOG", "warn");
    cmd
}

/// The lines `from` (a child's stdout or stderr) produces, as they come,
/// read on a thread of their own until it ends or the receiver is dropped.
pub fn lines_of(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `fetchd serve` running as a child process, killed (by PID) on drop.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub url: String,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Starts `fetchd serve --root ROOT --listen 127.0.0.1:0 EXTRA...` and
    /// waits for its `listening on` line.
    pub fn start(root: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_with_env(root, extra, &[])
    }

    /// Like [`ServerProcess::start`], with extra environment variables (e.g.
    /// `RUST_LOG`).
    pub fn start_with_env(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::start_on("127.0.0.1:0", root, extra, env)
    }

    /// Like [`ServerProcess::start_with_env`], listening on `listen` (a
    /// server started again on the port of one that stopped).
    pub fn start_on(
        listen: &str,
        root: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let mut command = fetchd();
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .args(["serve", "--listen", listen, "--root"])
            .arg(root)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fetchd serve");
        let line_rx = lines_of(child.stdout.take().unwrap());
        let err_rx = lines_of(child.stderr.take().unwrap());
        let line = line_rx.recv_timeout(STEP_TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            let errors: Vec<String> = err_rx.try_iter().collect();
            panic!(
                "fetchd serve printed no `listening on` line; stderr:\n{}",
                errors.join("\n")
            )
        });
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address in the listening line");
        ServerProcess {
            child,
            url: format!("http://{addr}"),
            addr,
            stdout: line_rx,
            stderr: err_rx,
        }
    }

    /// The next line the server prints on stdout after `listening on`
    /// (e.g. `metrics on IP:PORT`), waiting at most [`STEP_TIMEOUT`].
    pub fn next_stdout_line(&self) -> String {
        self.stdout
            .recv_timeout(STEP_TIMEOUT)
            .expect("another line on the server's stdout")
    }

    /// Every line of stderr, once the server has exited and closed it.
    pub fn stderr_to_end(&self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(STEP_TIMEOUT) {
            lines.push(line);
        }
        lines
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        wait_with_timeout(&mut self.child, timeout).expect("server did not exit after SIGTERM")
    }

    /// What the server logged so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Waits (bounded) for a stderr line containing `needle`; returns every
    /// line read up to and including it. Panics with what was seen when the
    /// line does not come in time.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {needle:?} within {timeout:?}; saw:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit, or returns `None` after `timeout` (the child is
/// left running; the caller decides).
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// One finished CLI run.
pub struct Run {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.cmdline,
            self.status.code(),
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }

    /// Asserts the exit code, showing the run when it differs.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code(),
            code,
            "unexpected exit code\n{}",
            self.describe()
        );
        self
    }

    /// Asserts stderr contains `needle`.
    pub fn expect_stderr(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{}",
            self.describe()
        );
        self
    }
}

/// Runs `cmd` to completion (bounded by [`STEP_TIMEOUT`]) in `cwd`.
pub fn run_in(cwd: &Path, cmd: &mut Command) -> Run {
    cmd.current_dir(cwd);
    run(cmd)
}

/// Runs `cmd` to completion, bounded by [`STEP_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Run {
    let cmdline = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fetchd");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_thread = thread::spawn(move || {
        let mut buf = String::new();
        let _ = stderr.read_to_string(&mut buf);
        buf
    });
    let status = match wait_with_timeout(&mut child, STEP_TIMEOUT) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {STEP_TIMEOUT:?}: {cmdline}");
        }
    };
    Run {
        cmdline,
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

/// `fetchd --server URL ARGS...` run in `cwd`.
pub fn client(url: &str, cwd: &Path, args: &[&str]) -> Run {
    run_in(cwd, fetchd().args(["--server", url]).args(args))
}

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Lower-case hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Polls `condition` every 5 ms until it holds or `timeout` passes; returns
/// whether it held. For conditions with no event to wait on (a file growing).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    condition()
}

/// A server running inside the test process on its own runtime thread;
/// shut down (and joined) on drop.
pub struct InProcessServer {
    pub addr: SocketAddr,
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl InProcessServer {
    pub fn start(config: fetchd::ServerConfig) -> InProcessServer {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                fetchd::run_server(listener, config, async {
                    let _ = shutdown_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(STEP_TIMEOUT).expect("server address");
        InProcessServer {
            addr,
            url: format!("http://{addr}"),
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// Asks the server to shut down (health turns NOT_SERVING, running
    /// calls drain) without waiting for it; drop waits.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Serves `root` with default settings.
    pub fn serve(root: &Path) -> InProcessServer {
        let mut config = fetchd::ServerConfig::new(root);
        config.grace = Duration::from_secs(2);
        InProcessServer::start(config)
    }

    pub async fn client(&self) -> fetchd::Client {
        let target = fetchd::Target::parse(&self.url).expect("target");
        fetchd::Client::connect(&target, &Default::default())
            .await
            .expect("connect")
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A client verb running in the background, its stdout and stderr read
/// line by line.
pub struct Background {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Its stdout so far.
    pub lines: Vec<String>,
    /// Its stderr so far.
    pub notices: Vec<String>,
}

impl Background {
    pub fn start(cwd: &Path, url: &str, args: &[&str]) -> Background {
        let mut child = fetchd()
            .current_dir(cwd)
            .args(["--server", url])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fetchd");
        Background {
            stdout: lines_of(child.stdout.take().unwrap()),
            stderr: lines_of(child.stderr.take().unwrap()),
            child,
            lines: Vec::new(),
            notices: Vec::new(),
        }
    }

    /// Takes in what both pipes hold now.
    pub fn gather(&mut self) {
        self.lines.extend(self.stdout.try_iter());
        self.notices.extend(self.stderr.try_iter());
    }

    /// Waits until stdout holds `count` lines (or the step times out).
    pub fn wait_lines(&mut self, count: usize) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while self.lines.len() < count && Instant::now() < deadline {
            if let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(50)) {
                self.lines.push(line);
            }
            self.gather();
        }
        assert!(
            self.lines.len() >= count,
            "{} of {count} lines\nstdout: {:?}\nstderr: {:?}",
            self.lines.len(),
            self.lines,
            self.notices
        );
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_stderr(&mut self, needle: &str) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !self.notices.iter().any(|line| line.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no stderr line with {needle:?}\nstdout: {:?}\nstderr: {:?}",
                self.lines,
                self.notices
            );
            if let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(50)) {
                self.notices.push(line);
            }
            self.gather();
        }
    }

    /// Whatever still comes within a moment (duplicates would).
    pub fn drain(&mut self) {
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(300)) {
            self.lines.push(line);
        }
        self.gather();
    }

    /// Waits for the exit; returns the code.
    pub fn finish(&mut self) -> i32 {
        let status = wait_with_timeout(&mut self.child, STEP_TIMEOUT).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!(
                "the client did not finish; stderr so far: {:?}",
                self.notices
            )
        });
        // The pipes close with the process: read them to the end.
        self.lines.extend(self.stdout.iter());
        self.notices.extend(self.stderr.iter());
        status.code().unwrap_or(-1)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `i`th line the tail tests write.
pub fn line(i: usize) -> String {
    format!("line {i}")
}

/// Appends lines `range` to `log`.
pub fn append_lines(log: &Path, range: std::ops::Range<usize>) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    for i in range {
        writeln!(file, "{}", line(i)).unwrap();
    }
}
