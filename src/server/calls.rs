//! Every call, observed once: a tower layer over the whole server that
//! counts calls by method and final status, tracks transfers and tails in
//! progress, times transfers, counts the bytes on the wire, and writes one
//! structured log event when a call ends.
//!
//! It sits above the router, so the hand-written `Read` route
//! ([`super::raw_read`]), the tonic-generated handlers, health and
//! reflection are all seen alike. The status is read where gRPC puts it: the
//! response headers of a trailers-only answer, or the trailers after the
//! last message. A call whose response is dropped before its trailers (the
//! client went away, the connection broke) ends as CANCELLED.
//!
//! What only a handler knows — the file path asked for and the file bytes
//! moved — it adds through the [`CallRecord`] the layer puts into the
//! request's extensions.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;
use prost::Message;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::{Code, Status};

use crate::server::metrics::Metrics;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The gRPC service whose calls are logged at info level; the standard
/// services (health checks, reflection) log at debug, so a load balancer's
/// probes do not flood the log.
pub(crate) const FETCHD_SERVICE: &str = "fetchd.v1.Fetchd";
/// Methods of [`FETCHD_SERVICE`] that move file data: counted in
/// `fetchd_transfers_active` and timed in `fetchd_transfer_duration_seconds`.
pub(crate) const TRANSFER_METHODS: &[&str] = &["Read", "Write"];
/// The method of [`FETCHD_SERVICE`] counted in `fetchd_tails_active`.
pub(crate) const TAIL_METHOD: &str = "Tail";
/// Longest request path written to the log, in characters.
pub(crate) const LOGGED_PATH_CHARS: usize = 1024;
/// Label value for a call to a method the server does not serve (so a
/// client sending made-up paths cannot add label values without bound).
pub(crate) const UNKNOWN_LABEL: &str = "unknown";

/// The methods the server serves, read from the descriptor sets it
/// registers for reflection: `/package.Service/Method` -> (service, method).
#[derive(Debug, Default)]
pub(crate) struct KnownMethods {
    methods: std::collections::HashMap<String, (Arc<str>, Arc<str>)>,
}

impl KnownMethods {
    /// The methods of every service in the encoded `FileDescriptorSet`s.
    pub(crate) fn from_descriptor_sets(sets: &[&[u8]]) -> KnownMethods {
        let mut methods = std::collections::HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = service.name.unwrap_or_default();
                    let full: Arc<str> = if package.is_empty() {
                        name.into()
                    } else {
                        format!("{package}.{name}").into()
                    };
                    for method in service.method {
                        let method = method.name.unwrap_or_default();
                        methods.insert(
                            format!("/{full}/{method}"),
                            (Arc::clone(&full), Arc::from(method.as_str())),
                        );
                    }
                }
            }
        }
        KnownMethods { methods }
    }

    /// The (service, method) labels of an HTTP/2 path.
    fn labels(&self, path: &str) -> (Arc<str>, Arc<str>) {
        self.methods
            .get(path)
            .cloned()
            .unwrap_or_else(|| (Arc::from(UNKNOWN_LABEL), Arc::from(UNKNOWN_LABEL)))
    }
}

/// The tower layer that observes every call (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct CallLayer {
    metrics: Metrics,
    methods: Arc<KnownMethods>,
}

impl CallLayer {
    /// Observes calls into `metrics`; `methods` names the labels.
    pub(crate) fn new(metrics: Metrics, methods: KnownMethods) -> CallLayer {
        CallLayer {
            metrics,
            methods: Arc::new(methods),
        }
    }
}

impl<S> tower_layer::Layer<S> for CallLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            metrics: self.metrics.clone(),
            methods: Arc::clone(&self.methods),
        }
    }
}

/// A service with every call observed.
#[derive(Clone, Debug)]
pub(crate) struct Observed<S> {
    inner: S,
    metrics: Metrics,
    methods: Arc<KnownMethods>,
}

impl<S, ResBody> Service<http::Request<Body>> for Observed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = Arc::new(CallState::start(&self.metrics, &self.methods, &request));
        let mut request = request.map(|body| {
            Body::new(CountedRequest {
                inner: body,
                call: Arc::clone(&call),
            })
        });
        request
            .extensions_mut()
            .insert(CallRecord(Some(Arc::clone(&call))));
        let response = self.inner.call(request);
        // Ends the call as CANCELLED if the response never comes (the
        // client reset the stream first).
        let finisher = Finisher { call, early: None };
        Box::pin(async move {
            let mut finisher = finisher;
            let response = response.await?;
            // A trailers-only answer carries its status in the headers.
            finisher.early = Status::from_header_map(response.headers());
            finisher.call.set_encoding(response.headers());
            Ok(response.map(|body| {
                Body::new(ObservedBody {
                    inner: Box::pin(body),
                    finisher: Some(finisher),
                })
            }))
        })
    }
}

/// What handlers add to the call they serve: the file path and the file
/// bytes moved. Found in the request's extensions; a request that did not
/// pass the layer (a unit test calling a handler) gets a detached record
/// that goes nowhere.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallRecord(Option<Arc<CallState>>);

impl CallRecord {
    /// The record of the call whose request has these extensions.
    pub(crate) fn of(extensions: &http::Extensions) -> CallRecord {
        extensions.get::<CallRecord>().cloned().unwrap_or_default()
    }

    /// Names the file or folder the call is about, as the client asked for
    /// it (control characters escaped, at most [`LOGGED_PATH_CHARS`]
    /// characters, so a hostile name cannot forge log lines). The first name
    /// given stays.
    pub(crate) fn set_path(&self, path: &str) {
        if let Some(call) = &self.0 {
            let shown: String = path
                .chars()
                .take(LOGGED_PATH_CHARS)
                .flat_map(char::escape_debug)
                .collect();
            let _ = call.path.set(shown);
        }
    }

    /// Adds `bytes` of file data sent to the client.
    pub(crate) fn add_sent(&self, bytes: u64) {
        if let Some(call) = &self.0 {
            call.file_bytes.fetch_add(bytes, Ordering::Relaxed);
            call.metrics.sent_bytes.inc_by(bytes);
        }
    }

    /// Adds `bytes` of file data received from the client (uploads).
    pub(crate) fn add_received(&self, bytes: u64) {
        if let Some(call) = &self.0 {
            call.file_bytes.fetch_add(bytes, Ordering::Relaxed);
            call.metrics.add_received_bytes(bytes);
        }
    }
}

/// Which gauge a call counts in while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallKind {
    Transfer,
    Tail,
    Other,
}

/// One call in progress.
struct CallState {
    metrics: Metrics,
    service: Arc<str>,
    method: Arc<str>,
    /// The HTTP/2 path, as the client sent it (for the log).
    rpc: String,
    kind: CallKind,
    peer: Option<SocketAddr>,
    started: Instant,
    path: OnceLock<String>,
    /// The compression of the response, when not identity.
    encoding: OnceLock<String>,
    file_bytes: AtomicU64,
    wire_sent: AtomicU64,
    wire_received: AtomicU64,
    finished: AtomicBool,
}

impl fmt::Debug for CallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallState")
            .field("rpc", &self.rpc)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl CallState {
    fn start(
        metrics: &Metrics,
        methods: &KnownMethods,
        request: &http::Request<Body>,
    ) -> CallState {
        let rpc = request.uri().path();
        let (service, method) = methods.labels(rpc);
        let kind = if &*service != FETCHD_SERVICE {
            CallKind::Other
        } else if TRANSFER_METHODS.contains(&&*method) {
            CallKind::Transfer
        } else if &*method == TAIL_METHOD {
            CallKind::Tail
        } else {
            CallKind::Other
        };
        match kind {
            CallKind::Transfer => metrics.transfers_active.inc(),
            CallKind::Tail => metrics.tails_active.inc(),
            CallKind::Other => {}
        }
        // The outermost layer: the connection layer has not yet put a
        // `TcpConnectInfo` on the request, so ask it directly.
        let peer = crate::server::conn::peer_of(request);
        CallState {
            metrics: metrics.clone(),
            service,
            method,
            rpc: rpc.chars().take(256).collect(),
            kind,
            peer,
            started: Instant::now(),
            path: OnceLock::new(),
            encoding: OnceLock::new(),
            file_bytes: AtomicU64::new(0),
            wire_sent: AtomicU64::new(0),
            wire_received: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        }
    }

    fn set_encoding(&self, headers: &http::HeaderMap) {
        if let Some(encoding) = headers
            .get("grpc-encoding")
            .and_then(|value| value.to_str().ok())
            .filter(|value| *value != "identity")
        {
            let _ = self.encoding.set(encoding.to_string());
        }
    }

    fn add_wire_sent(&self, bytes: u64) {
        self.wire_sent.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.wire_sent_bytes.inc_by(bytes);
    }

    fn add_wire_received(&self, bytes: u64) {
        self.wire_received.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.wire_received_bytes.inc_by(bytes);
    }

    /// Counts the call as ended with `status` and logs it; only the first
    /// ending counts.
    fn finish(&self, status: &Status) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let elapsed = self.started.elapsed();
        let code = status.code();
        let metrics = &self.metrics;
        metrics
            .calls
            .with_label_values(&[&*self.service, &*self.method, code_name(code)])
            .inc();
        match self.kind {
            CallKind::Transfer => {
                metrics.transfers_active.dec();
                if code == Code::Ok {
                    metrics
                        .transfer_histogram(&self.method)
                        .observe(elapsed.as_secs_f64());
                }
            }
            CallKind::Tail => metrics.tails_active.dec(),
            CallKind::Other => {}
        }
        if code == Code::DataLoss {
            metrics.checksum_failures.inc();
        }
        self.log(status, elapsed);
    }

    /// The one log event of the call.
    fn log(&self, status: &Status, elapsed: std::time::Duration) {
        let code = code_name(status.code());
        let error = (status.code() != Code::Ok).then(|| status.message());
        let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(
                    target: "fetchd::call",
                    $level,
                    method = %self.rpc,
                    path = self.path.get().map(String::as_str),
                    bytes = self.file_bytes.load(Ordering::Relaxed),
                    wire_sent = self.wire_sent.load(Ordering::Relaxed),
                    wire_received = self.wire_received.load(Ordering::Relaxed),
                    duration_ms,
                    status = code,
                    error,
                    encoding = self.encoding.get().map(String::as_str),
                    peer = self.peer.map(tracing::field::display),
                    "call"
                )
            };
        }
        if &*self.service == FETCHD_SERVICE || &*self.service == UNKNOWN_LABEL {
            event!(tracing::Level::INFO);
        } else {
            event!(tracing::Level::DEBUG);
        }
    }
}

/// Ends its call when dropped, unless it ended already: a response that
/// never came, or a body dropped before its trailers, means the client left.
struct Finisher {
    call: Arc<CallState>,
    /// The status of a trailers-only answer.
    early: Option<Status>,
}

impl Finisher {
    fn finish(&self, status: &Status) {
        self.call.finish(status);
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        match &self.early {
            Some(status) => self.call.finish(status),
            None => self.call.finish(&Status::cancelled(
                "the call ended before its status was sent",
            )),
        }
    }
}

/// A request body that counts the bytes it delivers.
struct CountedRequest {
    inner: Body,
    call: Arc<CallState>,
}

impl http_body::Body for CountedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.call.add_wire_received(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes it sends and ends the call at its
/// trailers (or, without any, at its end).
struct ObservedBody<B> {
    inner: Pin<Box<B>>,
    finisher: Option<Finisher>,
}

impl<B> http_body::Body for ObservedBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = std::task::ready!(self.inner.as_mut().poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(finisher) = &self.finisher {
                        finisher.call.add_wire_sent(data.len() as u64);
                    }
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(finisher) = self.finisher.take()
                {
                    let status = Status::from_header_map(trailers)
                        .unwrap_or_else(|| Status::unknown("the trailers carried no grpc-status"));
                    finisher.finish(&status);
                }
            }
            Some(Err(_)) => {
                if let Some(finisher) = self.finisher.take() {
                    finisher.finish(&Status::internal("the response body failed"));
                }
            }
            None => {
                // The end without trailers: a trailers-only answer (its
                // status came in the headers) or a broken one.
                if let Some(finisher) = self.finisher.take() {
                    let status = finisher.early.clone().unwrap_or_else(|| {
                        Status::unknown("the response ended without a grpc-status")
                    });
                    finisher.finish(&status);
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The canonical name of a status code, as the gRPC documentation and the
/// metric labels spell it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels come from the descriptor sets; anything else is `unknown`.
    #[test]
    fn methods_are_known_from_the_descriptors() {
        let methods = KnownMethods::from_descriptor_sets(&[
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ]);
        let (service, method) = methods.labels("/fetchd.v1.Fetchd/Read");
        assert_eq!((&*service, &*method), ("fetchd.v1.Fetchd", "Read"));
        let (service, method) = methods.labels("/grpc.health.v1.Health/Check");
        assert_eq!((&*service, &*method), ("grpc.health.v1.Health", "Check"));
        let (service, method) = methods.labels("/fetchd.v1.Fetchd/Nope");
        assert_eq!((&*service, &*method), (UNKNOWN_LABEL, UNKNOWN_LABEL));
    }

    /// Every code has its canonical name.
    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::DataLoss), "DATA_LOSS");
        for number in 0..17 {
            assert!(!code_name(Code::from_i32(number)).is_empty());
        }
    }
}
