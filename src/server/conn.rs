//! Connections and their limits: the accept loop, which holds at most
//! `--max-connections` open (beyond that, new connections wait in the
//! kernel's listen backlog until one closes, as Go's `LimitListener` does),
//! the socket wrapper that closes connections that never get going or sit
//! idle, and the tower layer that counts calls per connection and bounds
//! request messages.
//!
//! Each accepted socket is wrapped in a [`Guarded`] that shares a
//! [`ConnState`] with the calls made on it (tonic hands it to every request
//! as connect info). The layer counts calls in and out; the socket checks,
//! whenever the connection task reads, whether the connection is still
//! wanted:
//!
//! - before its first call: for at most the handshake timeout (a peer that
//!   connects and sends nothing, or stalls in the TLS handshake, is closed);
//! - with no call open: for at most the idle timeout;
//! - with calls open: for as long as they run (HTTP/2 keepalive pings find
//!   peers that went away).
//!
//! Closing happens by failing the read, which ends hyper's connection task;
//! only that connection is affected.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, PollSemaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::error::Error;

/// How long the accept loop pauses after an error such as "too many open
/// files", instead of spinning on it.
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The per-connection limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnLimits {
    /// Longest time from accept to the first call.
    pub handshake_timeout: Duration,
    /// Longest time a connection may stay open without a call.
    pub idle_timeout: Duration,
    /// Calls open at once on one connection; more get RESOURCE_EXHAUSTED.
    pub max_calls: usize,
    /// Largest request message, in bytes; larger get RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
}

/// Accepted sockets, wrapped and ready for tonic.
#[derive(Debug)]
pub(crate) struct Incoming {
    listener: TcpListener,
    limits: ConnLimits,
    pause: Option<Pin<Box<Sleep>>>,
    /// One permit per open connection, `max_connections` in all.
    slots: PollSemaphore,
    /// The permit the next accepted connection takes.
    slot: Option<OwnedSemaphorePermit>,
    max_connections: usize,
    /// Whether every slot is taken (logged once each time it happens).
    full: bool,
}

impl Incoming {
    /// Accepts on `listener`, giving each connection `limits`, with at
    /// most `max_connections` (at least 1) open at once.
    pub(crate) fn new(
        listener: TcpListener,
        limits: ConnLimits,
        max_connections: usize,
    ) -> Incoming {
        let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Incoming {
            listener,
            limits,
            pause: None,
            slots: PollSemaphore::new(Arc::new(Semaphore::new(max_connections))),
            slot: None,
            max_connections,
            full: false,
        }
    }

    /// `Ready` once a connection may be accepted: a slot is held for it.
    fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.is_some() {
            return Poll::Ready(());
        }
        if self.slots.available_permits() == 0 && !self.full {
            self.full = true;
            tracing::warn!(
                max_connections = self.max_connections,
                "every connection slot is taken (--max-connections): new connections wait \
                 in the listen backlog until one closes"
            );
        }
        // The semaphore is never closed, so `None` cannot happen; waiting
        // on is the right answer if it ever did.
        if let Some(permit) = std::task::ready!(self.slots.poll_acquire(cx)) {
            self.slot = Some(permit);
            self.full = false;
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Stream for Incoming {
    type Item = io::Result<Guarded>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = &mut this.pause {
                std::task::ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            std::task::ready!(this.poll_slot(cx));
            match std::task::ready!(this.listener.poll_accept(cx)) {
                Ok((stream, remote)) => {
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(%err, %remote, "cannot set TCP_NODELAY");
                    }
                    let Some(slot) = this.slot.take() else {
                        continue; // poll_slot made sure there is one
                    };
                    let guarded = Guarded::new(stream, remote, this.limits, slot);
                    return Poll::Ready(Some(Ok(guarded)));
                }
                // The peer gave up before we got to it: not our problem.
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(err) => {
                    tracing::warn!(%err, "cannot accept a connection; pausing");
                    this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                }
            }
        }
    }
}

/// What one connection's socket and its calls share.
#[derive(Debug)]
pub(crate) struct ConnState {
    limits: ConnLimits,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    accepted: Instant,
    calls: AtomicUsize,
    called: AtomicBool,
    idle_since: Mutex<Instant>,
}

impl ConnState {
    /// When the connection should be closed if nothing changes; `None`
    /// while calls are open.
    fn deadline(&self) -> Option<Instant> {
        if !self.called.load(Ordering::Acquire) {
            return Some(self.accepted + self.limits.handshake_timeout);
        }
        if self.calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        Some(idle_since + self.limits.idle_timeout)
    }

    /// Counts a call in; the guard counts it out.
    fn start_call(self: &Arc<ConnState>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::AcqRel);
        self.called.store(true, Ordering::Release);
        CallGuard {
            conn: Some(Arc::clone(self)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Acquire)
    }
}

/// One open call; counts it out when the response ends or is dropped.
#[derive(Debug)]
struct CallGuard {
    conn: Option<Arc<ConnState>>,
}

impl CallGuard {
    fn end(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Idle time starts now; written before the count drops so that
            // whoever sees no calls also sees this time.
            *conn.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            conn.calls.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.end();
    }
}

/// What every request on a connection carries (as tonic connect info).
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    state: Arc<ConnState>,
}

/// An accepted socket that closes itself when its connection is no longer
/// wanted (see the module documentation).
#[derive(Debug)]
pub(crate) struct Guarded {
    stream: TcpStream,
    state: Arc<ConnState>,
    timer: Pin<Box<Sleep>>,
    /// The connection's slot of `--max-connections`, freed when it closes.
    _slot: OwnedSemaphorePermit,
}

impl Guarded {
    fn new(
        stream: TcpStream,
        remote: SocketAddr,
        limits: ConnLimits,
        slot: OwnedSemaphorePermit,
    ) -> Guarded {
        let now = Instant::now();
        let local = stream.local_addr().ok();
        Guarded {
            stream,
            state: Arc::new(ConnState {
                limits,
                remote,
                local,
                accepted: now,
                calls: AtomicUsize::new(0),
                called: AtomicBool::new(false),
                idle_since: Mutex::new(now),
            }),
            timer: Box::pin(tokio::time::sleep_until(now + limits.handshake_timeout)),
            _slot: slot,
        }
    }

    /// `Ready(error)` once the connection should be closed; otherwise
    /// arranges to be woken when that may be the case.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let now = Instant::now();
            let deadline = match self.state.deadline() {
                // Calls are open: look again one idle period after the
                // timer last went off (not on every read: resetting a
                // timer costs more than checking one).
                None if self.timer.deadline() > now => self.timer.deadline(),
                None => now + self.state.limits.idle_timeout,
                Some(deadline) if now >= deadline => {
                    let called = self.state.called.load(Ordering::Acquire);
                    let reason = if called {
                        "idle timeout: no call for too long"
                    } else {
                        "handshake timeout: no call made in time"
                    };
                    tracing::debug!(peer = %self.state.remote, reason, "closing connection");
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, reason));
                }
                Some(deadline) => deadline,
            };
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(read) = Pin::new(&mut this.stream).poll_read(cx, buf) {
            return Poll::Ready(read);
        }
        match this.poll_expired(cx) {
            Poll::Ready(err) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for Guarded {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            state: Arc::clone(&self.state),
        }
    }
}

/// The connection a request came on, plain or TLS.
fn conn_of<B>(request: &http::Request<B>) -> Option<Arc<ConnState>> {
    let extensions = request.extensions();
    extensions
        .get::<ConnInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<ConnInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .map(|info| Arc::clone(&info.state))
}

/// The peer address of a request's connection, if known.
pub(crate) fn peer_of<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    conn_of(request).map(|conn| conn.remote).or_else(|| {
        request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
    })
}

/// Tower layer: counts calls per connection (refusing those over the
/// limit), bounds request messages, and gives requests the usual
/// [`TcpConnectInfo`] so `Request::remote_addr` works.
#[derive(Clone, Debug)]
pub(crate) struct ConnLayer {
    limits: ConnLimits,
    stopping: CancellationToken,
}

impl ConnLayer {
    /// A layer enforcing `limits`; once `stopping` is cancelled (the drain
    /// before a shutdown) it refuses every new call but health with
    /// UNAVAILABLE and a retry pushback, so clients try again elsewhere or
    /// after the restart instead of failing.
    pub(crate) fn new(limits: ConnLimits, stopping: CancellationToken) -> ConnLayer {
        ConnLayer { limits, stopping }
    }
}

impl<S> Layer<S> for ConnLayer {
    type Service = ConnService<S>;

    fn layer(&self, inner: S) -> ConnService<S> {
        ConnService {
            inner,
            limits: self.limits,
            stopping: self.stopping.clone(),
        }
    }
}

/// The service [`ConnLayer`] makes.
#[derive(Clone, Debug)]
pub(crate) struct ConnService<S> {
    inner: S,
    limits: ConnLimits,
    stopping: CancellationToken,
}

/// Calls under this prefix are served while draining: health says
/// NOT_SERVING then, which is what a load balancer asks.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for ConnService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if self.stopping.is_cancelled() && !request.uri().path().starts_with(HEALTH_PREFIX) {
            let status = Status::from(Error::Draining);
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let conn = conn_of(&request);
        let guard = conn.as_ref().map(ConnState::start_call);
        if let Some(conn) = &conn
            && conn.calls() > self.limits.max_calls
        {
            drop(guard);
            tracing::info!(peer = %conn.remote, limit = self.limits.max_calls, "refused a call over the per-connection limit");
            let status = Status::from(Error::Limit {
                what: "calls on one connection",
                limit: self.limits.max_calls,
                flag: "--max-streams-per-connection",
            });
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let (mut parts, body) = request.into_parts();
        if let Some(conn) = &conn {
            parts.extensions.insert(TcpConnectInfo {
                local_addr: conn.local,
                remote_addr: Some(conn.remote),
            });
        }
        let body = Body::new(LimitedBody::new(body, self.limits.max_request_bytes));
        let request = http::Request::from_parts(parts, body);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(match guard {
                None => response,
                Some(guard) => response.map(|body| Body::new(GuardedBody { inner: body, guard })),
            })
        })
    }
}

/// A response body that counts its call out when it ends.
struct GuardedBody {
    inner: Body,
    guard: CallGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        // The call is over when the trailers (or an error, or the end)
        // come: count it out before they are sent, so a client that starts
        // its next call on seeing them never finds this one still counted.
        let done = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(frame)) => frame.is_trailers(),
        };
        if done {
            this.guard.end();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED as soon as a gRPC
/// message header announces more than the limit, before the message is
/// buffered.
struct LimitedBody {
    inner: Body,
    scan: FrameScan,
}

impl LimitedBody {
    fn new(inner: Body, limit: usize) -> LimitedBody {
        LimitedBody {
            inner,
            scan: FrameScan::new(limit),
        }
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(size) = this.scan.feed(data)
        {
            return Poll::Ready(Some(Err(Status::from(Error::MessageTooLarge {
                size,
                limit: this.scan.limit,
            }))));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Follows the gRPC length-prefixed framing (1 flag byte, 4 length bytes,
/// the message) across arbitrary chunk boundaries.
#[derive(Debug)]
pub(crate) struct FrameScan {
    limit: usize,
    header: [u8; 5],
    header_len: usize,
    body_left: u64,
}

impl FrameScan {
    /// A scanner refusing messages over `limit` bytes.
    pub(crate) fn new(limit: usize) -> FrameScan {
        FrameScan {
            limit,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
        }
    }

    /// Takes the next bytes of the stream; `Err(size)` when a message
    /// header announces `size` bytes, more than the limit.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), u64> {
        while !data.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(data.len() as u64);
                self.body_left -= skip;
                data = &data[skip as usize..];
                continue;
            }
            let take = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == 5 {
                self.header_len = 0;
                let size = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                if size > self.limit as u64 {
                    return Err(size);
                }
                self.body_left = size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, len as usize));
        out
    }

    /// Messages up to the limit pass, however the bytes are chunked; the
    /// first one over it is caught from its header alone.
    #[test]
    fn frame_scan_finds_oversized_messages_across_chunks() {
        let mut stream = message(10);
        stream.extend(message(0));
        stream.extend(message(16));
        for chunk in 1..=stream.len() {
            let mut scan = FrameScan::new(16);
            for piece in stream.chunks(chunk) {
                scan.feed(piece).expect("within the limit");
            }
        }
        let mut over = message(3);
        over.extend_from_slice(&[0, 0, 0, 0, 17]);
        for chunk in 1..=over.len() {
            let mut scan = FrameScan::new(16);
            let result: Result<(), u64> = over.chunks(chunk).try_for_each(|piece| scan.feed(piece));
            assert_eq!(result, Err(17), "chunk size {chunk}");
        }
    }

    /// Once draining, every call but health is refused with UNAVAILABLE
    /// and a retry pushback (what the client retries); before, calls pass.
    #[tokio::test]
    async fn draining_refuses_new_calls_with_a_pushback() {
        let inner = tower::service_fn(|_request: http::Request<Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let stopping = CancellationToken::new();
        let limits = ConnLimits {
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_calls: 8,
            max_request_bytes: 1024,
        };
        let mut service = ConnLayer::new(limits, stopping.clone()).layer(inner);
        let call = |path: &str| {
            http::Request::post(path)
                .body(Body::empty())
                .expect("request")
        };
        let status_of = |response: &http::Response<Body>| {
            Status::from_header_map(response.headers()).map(|status| status.code())
        };
        let before = service
            .call(call("/fetchd.v1.Fetchd/Read"))
            .await
            .expect("served");
        assert_eq!(status_of(&before), None, "passed to the service");
        stopping.cancel();
        let refused = service
            .call(call("/fetchd.v1.Fetchd/Read"))
            .await
            .expect("answered");
        assert_eq!(status_of(&refused), Some(tonic::Code::Unavailable));
        let pushback = refused
            .headers()
            .get(crate::error::RETRY_PUSHBACK_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        assert!(pushback.is_some(), "{:?}", refused.headers());
        let health = service
            .call(call("/grpc.health.v1.Health/Check"))
            .await
            .expect("served");
        assert_eq!(status_of(&health), None, "health is still answered");
    }
}
