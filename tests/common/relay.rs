//! A fault-injecting TCP relay for tests and benchmarks.
//!
//! [`Relay`] listens on loopback and forwards every accepted connection to an
//! upstream address, optionally adding one-way delay, cutting connections
//! abruptly (RST) after a byte count or on demand, stalling all traffic, or
//! refusing new connections. It needs only `tokio` and std, so it can be
//! shared by integration tests (`mod relay;` in `tests/common/mod.rs`) and by
//! examples (`#[path = "../tests/common/relay.rs"] mod relay;`).
//!
//! Fault switches take effect asynchronously: the call returns at once and the
//! connection tasks act on it at their next step (well under a millisecond on
//! an idle machine). Poll the counters (e.g. [`Relay::cuts`]) to wait for it.
#![allow(dead_code)]
// The API is `pub`, but this file always sits in a private module (`mod common;`
// in a test, `mod relay;` in an example), where `unreachable_pub` flags every item.
#![allow(unreachable_pub)]

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// First read buffer size, per direction and connection.
const MIN_BUF: usize = 64 * 1024;
/// A direction's read buffer doubles, up to this, each time a read fills it.
const MAX_BUF: usize = 1024 * 1024;
/// Most bytes one direction of one connection holds in its delay line.
const DELAY_BUDGET: usize = 64 << 20;
/// Stored in the cut thresholds for "never".
const NEVER: u64 = u64::MAX;

/// Which faults a [`Relay`] injects. The default injects none.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Cut a connection (both directions, abruptly) once it has forwarded this many bytes
    /// server->client since it was accepted (None = never). Each new connection starts counting at 0.
    /// Exactly this many bytes are forwarded (the rest of the chunk that crosses it is dropped),
    /// but the peer may read fewer: its kernel discards unread data when the RST arrives.
    pub cut_every_down: Option<u64>,
    /// Same, counting client->server bytes.
    pub cut_every_up: Option<u64>,
    /// One-way delay added to every byte in each direction (RTT = 2 x delay). Pipelined: the relay
    /// keeps reading while earlier bytes wait, stamping each chunk with its arrival time and writing it
    /// at arrival + delay, so throughput is not limited to one buffer per delay. Zero = no delay path.
    pub delay: Duration,
    /// Most server->client bytes per second, over all of this relay's connections together (a link
    /// of that rate to one host); None = unlimited. Applies on the no-delay path.
    pub rate_down: Option<u64>,
    /// The same for client->server bytes (an upload's link).
    pub rate_up: Option<u64>,
}

/// State shared by the [`Relay`] handle, the accept loop and every connection.
struct Shared {
    upstream: Mutex<SocketAddr>,
    delay: Mutex<Duration>,
    cut_up: AtomicU64,
    cut_down: AtomicU64,
    refuse: AtomicBool,
    stall: watch::Sender<bool>,
    cut_gen: watch::Sender<u64>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    connections: AtomicU64,
    cuts: AtomicU64,
    /// HTTP/1 requests seen client->server, by method.
    requests: Mutex<BTreeMap<String, u64>>,
    rate_down: Option<u64>,
    rate_up: Option<u64>,
    /// When the link is next free in each direction (down, up), on the rate's schedule.
    next_free: [tokio::sync::Mutex<Instant>; 2],
}

/// Direction of a byte stream through the relay.
#[derive(Clone, Copy)]
enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// Why a connection ended other than by both sides closing cleanly.
enum Stop {
    /// The relay cut it (threshold or `cut_all`).
    Cut,
    /// A socket failed (e.g. the peer reset it).
    Broken,
}

impl Shared {
    /// How many of `n` bytes in `dir` this connection may forward, having forwarded `total`:
    /// no more than reach the cut threshold.
    fn allowed(&self, dir: Dir, total: u64, n: usize) -> usize {
        let limit = match dir {
            Dir::Up => self.cut_up.load(Relaxed),
            Dir::Down => self.cut_down.load(Relaxed),
        };
        usize::try_from(limit.saturating_sub(total)).map_or(n, |left| n.min(left))
    }

    /// Counts `n` bytes forwarded in `dir`; `Err(Cut)` once this connection's total reaches the threshold.
    fn forwarded(&self, dir: Dir, n: usize, total: &mut u64) -> Result<(), Stop> {
        let (counter, limit) = match dir {
            Dir::Up => (&self.bytes_up, &self.cut_up),
            Dir::Down => (&self.bytes_down, &self.cut_down),
        };
        let n = n as u64;
        counter.fetch_add(n, Relaxed);
        *total += n;
        if *total >= limit.load(Relaxed) {
            Err(Stop::Cut)
        } else {
            Ok(())
        }
    }
}

impl Shared {
    /// Waits for `n` bytes' turn on a link of `rate` bytes per second shared by every connection:
    /// each send books its time on one schedule (a burst of at most 20 ms is allowed, so timer
    /// granularity does not cost throughput).
    async fn pace(&self, dir: Dir, n: usize, rate: u64) {
        let start = {
            let mut next = self.next_free[dir as usize].lock().await;
            let now = Instant::now();
            let start = (*next).max(now - Duration::from_millis(20));
            *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Locks a mutex, ignoring poisoning (the data are plain values).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sets SO_LINGER to zero, so that closing the socket sends RST and discards data in flight.
/// Tokio deprecates `set_linger` because a *non-zero* linger blocks the thread on drop; a
/// zero linger never blocks.
#[allow(deprecated)]
fn arm_reset(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// A running relay. Dropping it stops it: the listener closes and every connection task is
/// aborted (their sockets close normally, with FIN).
pub struct Relay {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks; dropping it aborts them all.
        self.accept.abort();
    }
}

impl Relay {
    /// Listens on 127.0.0.1:0 and forwards every accepted connection to `upstream`.
    pub async fn start(upstream: SocketAddr, faults: Faults) -> io::Result<Relay> {
        Self::start_on((Ipv4Addr::LOCALHOST, 0).into(), upstream, faults).await
    }

    /// Like [`Relay::start`], listening on `listen` instead.
    pub async fn start_on(
        listen: SocketAddr,
        upstream: SocketAddr,
        faults: Faults,
    ) -> io::Result<Relay> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            delay: Mutex::new(faults.delay),
            cut_up: AtomicU64::new(faults.cut_every_up.unwrap_or(NEVER)),
            cut_down: AtomicU64::new(faults.cut_every_down.unwrap_or(NEVER)),
            refuse: AtomicBool::new(false),
            stall: watch::Sender::new(false),
            cut_gen: watch::Sender::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            requests: Mutex::new(BTreeMap::new()),
            rate_down: faults.rate_down,
            rate_up: faults.rate_up,
            next_free: [
                tokio::sync::Mutex::new(Instant::now()),
                tokio::sync::Mutex::new(Instant::now()),
            ],
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Relay {
            shared,
            addr,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` for [`Relay::addr`], e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Abruptly closes (RST, both sides) every connection open now, including ones still
    /// connecting upstream. New connections are still accepted.
    pub fn cut_all(&self) {
        self.shared.cut_gen.send_modify(|g| *g += 1);
    }

    /// While on, no connection reads or writes a byte in either direction (sockets stay
    /// open, so the peers' buffers fill up); off resumes where it stopped.
    pub fn stall(&self, on: bool) {
        self.shared.stall.send_replace(on);
    }

    /// While on, accepted connections are reset at once (a server that is down);
    /// connections already open are not touched.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Relaxed);
    }

    /// Connections accepted from now on go to `addr` (e.g. a restarted server on a new port).
    pub fn set_upstream(&self, addr: SocketAddr) {
        *lock(&self.shared.upstream) = addr;
    }

    /// Changes [`Faults::cut_every_down`]. Applies at once to open connections too, which
    /// count from when they were accepted (so one past the new threshold is cut at its next chunk).
    pub fn set_cut_every_down(&self, bytes: Option<u64>) {
        self.shared.cut_down.store(bytes.unwrap_or(NEVER), Relaxed);
    }

    /// Changes [`Faults::cut_every_up`], like [`Relay::set_cut_every_down`].
    pub fn set_cut_every_up(&self, bytes: Option<u64>) {
        self.shared.cut_up.store(bytes.unwrap_or(NEVER), Relaxed);
    }

    /// Changes [`Faults::delay`] for connections accepted from now on.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.shared.delay) = delay;
    }

    /// Total bytes forwarded client->server, over all connections.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Relaxed)
    }

    /// Total bytes forwarded server->client, over all connections.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Relaxed)
    }

    /// Connections accepted so far (refused ones included).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Relaxed)
    }

    /// Connections the relay cut (by a cut threshold or [`Relay::cut_all`]).
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Relaxed)
    }

    /// HTTP/1 requests forwarded client->server so far, by kind: the
    /// method (`GET`, `HEAD`, ...), or `LIST` for an S3 listing (a GET
    /// with `list-type=` in its query). Told by the blank line that ends
    /// each request's head, so this holds for requests without bodies only
    /// (not PUT or POST with a body).
    pub fn requests(&self, kind: &str) -> u64 {
        lock(&self.shared.requests).get(kind).copied().unwrap_or(0)
    }
}

/// Tells the HTTP/1 requests in one connection's client->server bytes:
/// each starts a stream or follows the blank line that ends the last head.
#[derive(Default)]
struct RequestTally {
    /// The last bytes seen, to find a `\r\n\r\n` split across reads.
    tail: [u8; 4],
    /// The request line of the head being read, so far (at most 1 KiB).
    line: Vec<u8>,
    /// True once that line has ended.
    line_done: bool,
}

impl RequestTally {
    fn feed(&mut self, data: &[u8], shared: &Shared) {
        for &byte in data {
            if !self.line_done {
                if byte == b'\n' {
                    self.line_done = true;
                } else if self.line.len() < 1024 {
                    self.line.push(byte);
                }
            }
            self.tail = [self.tail[1], self.tail[2], self.tail[3], byte];
            if &self.tail == b"\r\n\r\n" {
                let line = String::from_utf8_lossy(&self.line).into_owned();
                let mut words = line.split(' ');
                let method = words.next().unwrap_or_default();
                let kind =
                    if method == "GET" && words.next().is_some_and(|t| t.contains("list-type=")) {
                        "LIST"
                    } else {
                        method
                    };
                *lock(&shared.requests).entry(kind.to_string()).or_default() += 1;
                *self = RequestTally::default();
            }
        }
    }
}

/// Accepts connections until aborted; owns (and so aborts on drop) every connection task.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((client, _)) => {
                    shared.connections.fetch_add(1, Relaxed);
                    // Subscribe here, so a cut_all after this accept reaches the connection.
                    let cut = shared.cut_gen.subscribe();
                    tasks.spawn(serve(client, Arc::clone(&shared), cut));
                }
                // E.g. out of file descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Relays one accepted connection until both sides close, it fails, or it is cut.
async fn serve(mut client: TcpStream, shared: Arc<Shared>, mut cut: watch::Receiver<u64>) {
    if shared.refuse.load(Relaxed) {
        arm_reset(&client);
        return;
    }
    let upstream = *lock(&shared.upstream);
    let connected = tokio::select! {
        r = TcpStream::connect(upstream) => r,
        _ = cut.changed() => {
            shared.cuts.fetch_add(1, Relaxed);
            arm_reset(&client);
            return;
        }
    };
    let Ok(mut server) = connected else {
        arm_reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let delay = *lock(&shared.delay);
    let end = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let pumps = async {
            if delay.is_zero() {
                tokio::try_join!(
                    pump(cr, sw, Dir::Up, &shared),
                    pump(sr, cw, Dir::Down, &shared)
                )
            } else {
                tokio::try_join!(
                    pump_delayed(cr, sw, Dir::Up, &shared, delay),
                    pump_delayed(sr, cw, Dir::Down, &shared, delay)
                )
            }
        };
        tokio::select! {
            r = pumps => r.err(),
            _ = cut.changed() => Some(Stop::Cut),
        }
    };
    match end {
        None => {} // both directions ended with FIN, passed on: close normally
        Some(stop) => {
            if matches!(stop, Stop::Cut) {
                shared.cuts.fetch_add(1, Relaxed);
            }
            arm_reset(&client);
            arm_reset(&server);
        }
    }
}

/// Waits until the stall flag equals `stalled` (forever if the relay is gone and `stalled` is true).
async fn until(rx: &mut watch::Receiver<bool>, stalled: bool) {
    if rx.wait_for(|s| *s == stalled).await.is_err() && stalled {
        std::future::pending::<()>().await;
    }
}

/// Reads once into `buf`, never while stalled (a pending read is abandoned when a stall
/// starts). A read that fills `buf` makes it grow for the next one, up to [`MAX_BUF`].
async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    stall: &mut watch::Receiver<bool>,
) -> Result<usize, Stop> {
    let n = loop {
        until(stall, false).await;
        tokio::select! {
            biased;
            () = until(stall, true) => {}
            res = r.read(buf) => break res.map_err(|_| Stop::Broken)?,
        }
    };
    if n == buf.len() && n < MAX_BUF {
        buf.resize(2 * n, 0);
    }
    Ok(n)
}

/// Writes all of `data`, never while stalled.
async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut data: &[u8],
    stall: &mut watch::Receiver<bool>,
) -> Result<(), Stop> {
    while !data.is_empty() {
        until(stall, false).await;
        let n = tokio::select! {
            biased;
            () = until(stall, true) => 0,
            res = w.write(data) => match res {
                Ok(0) | Err(_) => return Err(Stop::Broken),
                Ok(n) => n,
            },
        };
        data = &data[n..];
    }
    Ok(())
}

/// Forwards one direction without delay; on EOF passes the FIN on.
async fn pump<R, W>(mut r: R, mut w: W, dir: Dir, shared: &Shared) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut stall = shared.stall.subscribe();
    let mut buf = vec![0u8; MIN_BUF];
    let mut total = 0;
    let mut tally = RequestTally::default();
    loop {
        let n = read(&mut r, &mut buf, &mut stall).await?;
        if n == 0 {
            return w.shutdown().await.map_err(|_| Stop::Broken);
        }
        let n = shared.allowed(dir, total, n);
        let rate = match dir {
            Dir::Down => shared.rate_down,
            Dir::Up => shared.rate_up,
        };
        if let Some(rate) = rate {
            shared.pace(dir, n, rate).await;
        }
        write_all(&mut w, &buf[..n], &mut stall).await?;
        if matches!(dir, Dir::Up) {
            tally.feed(&buf[..n], shared);
        }
        shared.forwarded(dir, n, &mut total)?;
    }
}

/// Forwards one direction through a delay line: a reader stamps each chunk (and the EOF)
/// with `arrival + delay`, a writer writes it then. At most [`DELAY_BUDGET`] bytes wait.
async fn pump_delayed<R, W>(
    mut r: R,
    mut w: W,
    dir: Dir,
    shared: &Shared,
    delay: Duration,
) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let budget = Semaphore::new(DELAY_BUDGET);
    let reader = async {
        let mut stall = shared.stall.subscribe();
        let mut buf = vec![0u8; MIN_BUF];
        loop {
            let n = read(&mut r, &mut buf, &mut stall).await?;
            let at = Instant::now() + delay;
            if n == 0 {
                let _ = tx.send((at, None));
                return Ok(());
            }
            // n <= MAX_BUF, which fits in u32.
            budget
                .acquire_many(n as u32)
                .await
                .map_err(|_| Stop::Broken)?
                .forget();
            if tx.send((at, Some(buf[..n].to_vec()))).is_err() {
                return Ok(()); // the writer has stopped, and try_join! reports why
            }
        }
    };
    let writer = async {
        let mut stall = shared.stall.subscribe();
        let mut total = 0;
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            let Some(chunk) = chunk else {
                return w.shutdown().await.map_err(|_| Stop::Broken);
            };
            let n = shared.allowed(dir, total, chunk.len());
            write_all(&mut w, &chunk[..n], &mut stall).await?;
            budget.add_permits(chunk.len());
            shared.forwarded(dir, n, &mut total)?;
        }
        Ok(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}
