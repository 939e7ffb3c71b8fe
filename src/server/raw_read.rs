//! `Read` served below tonic's codec, so file data is copied once on its way
//! out instead of twice.
//!
//! Through tonic, each message is encoded into the codec's own buffer: a
//! 1 MiB chunk read from the file is copied again into a freshly allocated
//! encode buffer before h2 writes it. Here the reader thread reads each chunk
//! straight into a buffer that already starts with the gRPC frame header and
//! the protobuf field header of a `ReadResponse { data }`
//! ([`crate::wire::READ_DATA_FRAMES`]), and the response body hands that buffer to h2 as it
//! is. The bytes on the wire are the same as tonic's, message for message
//! (a unit test holds the two encodings equal), so clients cannot tell.
//!
//! [`RawReadService`] wraps the generated service and takes only `Read` calls
//! whose request is not compressed; every other call goes to the generated
//! service, whose codec compresses. Before either, it applies fetchd's
//! compression rule ([`answer_in_request_encoding`]): the answer is
//! compressed exactly when the request is. Layers on the whole server
//! (authentication, limits, [`crate::server::calls`]) see both alike.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use prost::Message;
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::proto::{self, ReadRequest, ReadResponse, read_response};
use crate::read_stream::ReadEvent;
use crate::server::calls::CallRecord;
use crate::server::read::ReadEvents;
use crate::server::service::FetchdService;
use crate::store::Store;
use crate::wire::{PREFIX_BYTES, READ_DATA_FRAMES, READ_PATH, message_frame};

/// Largest `ReadRequest` accepted, framing included: a path of at most
/// 4,096 bytes and two numbers need far less.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The generated service with `Read` taken over by [`serve_read`].
#[derive(Debug)]
pub(crate) struct RawReadService<S, St: Store> {
    inner: S,
    service: FetchdService<St>,
}

impl<S: Clone, St: Store> Clone for RawReadService<S, St> {
    fn clone(&self) -> Self {
        RawReadService {
            inner: self.inner.clone(),
            service: self.service.clone(),
        }
    }
}

impl<S, St: Store> RawReadService<S, St> {
    /// Routes `Read` calls to `service` directly and the rest to `inner`
    /// (the generated server over the same `service`).
    pub(crate) fn new(inner: S, service: FetchdService<St>) -> RawReadService<S, St> {
        RawReadService { inner, service }
    }
}

impl<S: NamedService, St: Store> NamedService for RawReadService<S, St> {
    const NAME: &'static str = S::NAME;
}

impl<S, St> Service<http::Request<Body>> for RawReadService<S, St>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    St: Store,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let compressed = answer_in_request_encoding(request.headers_mut());
        if request.uri().path() != READ_PATH || compressed {
            return Box::pin(self.inner.call(request));
        }
        let service = self.service.clone();
        Box::pin(async move { Ok(serve_read(service, request).await) })
    }
}

/// Applies fetchd's compression rule to a request's headers and says
/// whether the request is compressed: the answer is compressed exactly when
/// the request is, with the same encoding.
///
/// tonic answers in the first encoding of `grpc-accept-encoding` it can
/// send; but that header lists what a client *can* decode (grpcio always
/// lists gzip), not what it wants. So the header is rewritten: to the
/// request's own `grpc-encoding` when that is gzip or zstd (a client asks for
/// compression by compressing its request — tonic's `send_compressed`,
/// grpcio's `compression=`), and removed otherwise, so file data goes out
/// uncompressed to every client that did not ask.
pub(crate) fn answer_in_request_encoding(headers: &mut http::HeaderMap) -> bool {
    let encoding = headers
        .get("grpc-encoding")
        .filter(|encoding| *encoding != "identity")
        .cloned();
    match encoding {
        Some(encoding) => {
            headers.insert("grpc-accept-encoding", encoding);
            true
        }
        None => {
            headers.remove("grpc-accept-encoding");
            false
        }
    }
}

/// Answers one `Read` call: the request's one message in, the response
/// frames out as the reader produces them.
async fn serve_read<St: Store>(
    service: FetchdService<St>,
    request: http::Request<Body>,
) -> http::Response<Body> {
    let (parts, body) = request.into_parts();
    let record = CallRecord::of(&parts.extensions);
    let peer = tonic::Request::from_http(http::Request::from_parts(parts, ())).remote_addr();
    let read = match read_request(body).await {
        Ok(request) => {
            service
                .start_read(request, peer, READ_DATA_FRAMES, record)
                .await
        }
        Err(status) => Err(status),
    };
    match read {
        Ok(events) => {
            let body = ReadBody {
                events,
                trailers: None,
                done: false,
            };
            let mut response = http::Response::new(Body::new(body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
        // Failed before anything was sent: a trailers-only response, as
        // tonic gives.
        Err(status) => status.into_http(),
    }
}

/// Reads the one message of a `Read` request.
async fn read_request(body: Body) -> Result<ReadRequest, Status> {
    let collected = Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!(
                    "request message larger than {MAX_REQUEST_BYTES} bytes"
                ))
            } else {
                // A layer below (the connection limits) may have ended the
                // body with a status of its own: pass it on as it is.
                match err.downcast::<Status>() {
                    Ok(status) => *status,
                    Err(err) => Status::cancelled(format!("request body: {err}")),
                }
            }
        })?
        .to_bytes();
    let Some((prefix, message)) = collected.split_at_checked(PREFIX_BYTES) else {
        return Err(Status::internal("missing request message"));
    };
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if prefix[0] != 0 {
        return Err(Status::internal(
            "compressed request message without a grpc-encoding header",
        ));
    }
    if message.len() != len {
        return Err(Status::internal(
            "expected exactly one request message of the length its prefix gives",
        ));
    }
    ReadRequest::decode(message)
        .map_err(|err| Status::internal(format!("cannot decode the request message: {err}")))
}

/// The response body of a `Read`: one frame per event, then the trailers
/// with the call's status.
struct ReadBody {
    events: ReadEvents,
    /// Trailers to send after the last message, once it is out.
    trailers: Option<http::HeaderMap>,
    done: bool,
}

impl ReadBody {
    /// The trailers ending the call with `status`.
    fn trailers(status: &Status) -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert(
                "grpc-status",
                http::HeaderValue::from(Code::Internal as i32),
            );
        }
        trailers
    }
}

impl http_body::Body for ReadBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(trailers) = this.trailers.take() {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let frame = match std::task::ready!(Pin::new(&mut this.events).poll_next(cx)) {
            Some(Ok(ReadEvent::Data(frame))) => Frame::data(frame),
            Some(Ok(ReadEvent::Start(start))) => Frame::data(message_frame(&ReadResponse {
                kind: Some(read_response::Kind::Header(start.into())),
            })),
            Some(Ok(ReadEvent::End(digest))) => {
                this.trailers = Some(ReadBody::trailers(&Status::new(Code::Ok, "")));
                Frame::data(message_frame(&ReadResponse {
                    kind: Some(read_response::Kind::Trailer(proto::ReadTrailer::from(
                        digest,
                    ))),
                }))
            }
            Some(Err(err)) => {
                this.done = true;
                Frame::trailers(ReadBody::trailers(&Status::from(err)))
            }
            None => {
                // The reader stopped without an end or an error: it died.
                this.done = true;
                Frame::trailers(ReadBody::trailers(&Status::internal(
                    "the read stopped unexpectedly; try again",
                )))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
