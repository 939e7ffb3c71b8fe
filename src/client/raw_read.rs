//! `Read` answers decoded below tonic's codec, so file data reaches the
//! writer and the hasher in the buffers h2 received it in.
//!
//! Through tonic, every HTTP/2 DATA frame is copied into the decoder's own
//! buffer before a message is cut from it: a second copy of every byte
//! received, and that buffer's regrowth. Here the response body's frames
//! are split into gRPC messages by a [`Splitter`]: a message that is exactly
//! one `ReadResponse.data` field, which is how fetchd's server sends file
//! data (see [`crate::wire`]), is passed on as slices of the frames
//! that carry it, one or more [`Piece::Data`] per message, with no copy. Any
//! other message (the header, the trailer, or data with other fields beside
//! it) is gathered whole and decoded by prost, as tonic would.
//!
//! The call's status is read as tonic reads it: a `grpc-status` in the
//! response headers (a trailers-only answer), else the `grpc-status`
//! trailer, else the HTTP status. Only uncompressed answers take this path:
//! [`Client::read`](crate::client::Client::read) makes a compressed call,
//! whose answer is compressed too, through tonic.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use prost::Message;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, StatusCode};
use tonic::service::interceptor::{InterceptedService, ResponseBody};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

use crate::client::options::BearerToken;
use crate::proto::{ReadRequest, ReadResponse};
use crate::wire::{DATA_HEAD_MAX, DATA_KEY, PREFIX_BYTES, READ_PATH, message_frame};

/// What a `Read` answer carries, in order.
#[derive(Debug)]
pub(crate) enum Piece {
    /// File bytes: all or part of one data message's payload.
    Data(Bytes),
    /// Any other message, decoded.
    Message(ReadResponse),
}

/// Where the splitter is in the message stream.
#[derive(Debug)]
enum State {
    /// Reading a message prefix; `have` of its bytes so far.
    Prefix {
        buf: [u8; PREFIX_BYTES],
        have: usize,
    },
    /// Reading the start of a `len`-byte message, until it shows whether
    /// the message is one data field.
    Head {
        len: usize,
        buf: [u8; DATA_HEAD_MAX],
        have: usize,
    },
    /// Passing on the `left` file bytes still to come in this message.
    Data { left: usize },
    /// Gathering a whole `len`-byte message.
    Gather { len: usize, buf: BytesMut },
}

impl State {
    fn prefix() -> State {
        State::Prefix {
            buf: [0; PREFIX_BYTES],
            have: 0,
        }
    }
}

/// What the first bytes of a message say about it.
enum Head {
    /// More bytes needed.
    Undecided,
    /// Exactly one data field with this many bytes of payload.
    Data(usize),
    /// Anything else: gather and decode.
    Other,
}

/// Reads `head`, the first bytes of a `len`-byte message.
fn classify_head(head: &[u8], len: usize) -> Head {
    let Some((&key, varint)) = head.split_first() else {
        return Head::Undecided;
    };
    if key != DATA_KEY {
        return Head::Other;
    }
    // A varint ends at its first byte without the continuation bit.
    match varint.iter().position(|byte| byte & 0x80 == 0) {
        Some(end) => {
            let mut varint = &varint[..=end];
            match prost::encoding::decode_varint(&mut varint).map(usize::try_from) {
                Ok(Ok(payload)) if 1 + end + 1 + payload == len => Head::Data(payload),
                _ => Head::Other,
            }
        }
        None if head.len() < DATA_HEAD_MAX && head.len() < len => Head::Undecided,
        None => Head::Other,
    }
}

/// Splits the body of a `Read` answer, frame by frame, into [`Piece`]s.
#[derive(Debug)]
pub(crate) struct Splitter {
    state: State,
    max_message_bytes: usize,
}

impl Splitter {
    /// A splitter that refuses messages longer than `max_message_bytes`.
    pub(crate) fn new(max_message_bytes: usize) -> Splitter {
        Splitter {
            state: State::prefix(),
            max_message_bytes,
        }
    }

    /// Takes the next DATA frame; appends what it completes to `out`.
    pub(crate) fn feed(
        &mut self,
        mut frame: Bytes,
        out: &mut VecDeque<Piece>,
    ) -> Result<(), Status> {
        while !frame.is_empty() {
            match &mut self.state {
                State::Prefix { buf, have } => {
                    let n = (PREFIX_BYTES - *have).min(frame.len());
                    buf[*have..*have + n].copy_from_slice(&frame[..n]);
                    frame.advance(n);
                    *have += n;
                    if *have == PREFIX_BYTES {
                        let (compressed, len) = (buf[0], [buf[1], buf[2], buf[3], buf[4]]);
                        self.state =
                            self.message_start(compressed, u32::from_be_bytes(len), out)?;
                    }
                }
                State::Head { len, buf, have } => {
                    buf[*have] = frame[0];
                    frame.advance(1);
                    *have += 1;
                    let (len, head) = (*len, &buf[..*have]);
                    match classify_head(head, len) {
                        Head::Undecided if head.len() < len => {}
                        Head::Data(payload) => self.state = State::Data { left: payload },
                        Head::Undecided | Head::Other => {
                            let mut gathered = BytesMut::with_capacity(len);
                            gathered.extend_from_slice(head);
                            self.state = State::Gather { len, buf: gathered };
                        }
                    }
                }
                State::Data { left } => {
                    let n = (*left).min(frame.len());
                    out.push_back(Piece::Data(frame.split_to(n)));
                    *left -= n;
                }
                State::Gather { len, buf } => {
                    let n = (*len - buf.len()).min(frame.len());
                    buf.extend_from_slice(&frame[..n]);
                    frame.advance(n);
                }
            }
            self.message_end(out)?;
        }
        Ok(())
    }

    /// The state after a message prefix.
    fn message_start(
        &self,
        compressed: u8,
        len: u32,
        out: &mut VecDeque<Piece>,
    ) -> Result<State, Status> {
        if compressed != 0 {
            return Err(Status::internal(
                "the server compressed a message of an uncompressed call",
            ));
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max_message_bytes {
            return Err(Status::out_of_range(format!(
                "a message of {len} bytes, more than the {} this client accepts",
                self.max_message_bytes
            )));
        }
        if len == 0 {
            out.push_back(Piece::Message(ReadResponse::default()));
            return Ok(State::prefix());
        }
        Ok(State::Head {
            len,
            buf: [0; DATA_HEAD_MAX],
            have: 0,
        })
    }

    /// Ends a message that is complete: decodes a gathered one.
    fn message_end(&mut self, out: &mut VecDeque<Piece>) -> Result<(), Status> {
        match &mut self.state {
            State::Data { left: 0 } => self.state = State::prefix(),
            State::Gather { len, buf } if buf.len() == *len => {
                let message = ReadResponse::decode(std::mem::take(buf).freeze())
                    .map_err(|err| Status::internal(format!("a bad message: {err}")))?;
                out.push_back(Piece::Message(message));
                self.state = State::prefix();
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks that the answer did not end inside a message.
    pub(crate) fn finish(&self) -> Result<(), Status> {
        match self.state {
            State::Prefix { have: 0, .. } => Ok(()),
            _ => Err(Status::internal(
                "the answer ended inside a message: the stream was cut short",
            )),
        }
    }
}

/// What calls are made on: the channel, with the token added.
pub(crate) type Calls = InterceptedService<Channel, BearerToken>;

/// A `Read` call in progress, read below tonic's codec.
#[derive(Debug)]
pub(crate) struct RawRead {
    body: ResponseBody<Body>,
    http_status: StatusCode,
    splitter: Splitter,
    ready: VecDeque<Piece>,
    ended: bool,
}

impl RawRead {
    /// Makes the call on `calls` and reads the answer's headers.
    pub(crate) async fn call(
        calls: &Calls,
        request: &ReadRequest,
        max_message_bytes: usize,
    ) -> Result<RawRead, Status> {
        let frame = message_frame(request);
        let mut http_request = http::Request::new(Body::new(Full::new(frame)));
        *http_request.method_mut() = http::Method::POST;
        *http_request.uri_mut() = http::Uri::from_static(READ_PATH);
        *http_request.version_mut() = http::Version::HTTP_2;
        let headers = http_request.headers_mut();
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );

        let transport = |err: tonic::transport::Error| Status::from_error(Box::new(err));
        let mut calls = calls.clone();
        let ready = calls.ready().await.map_err(transport)?;
        let response = ready.call(http_request).await.map_err(transport)?;
        let (parts, body) = response.into_parts();

        let mut read = RawRead {
            body,
            http_status: parts.status,
            splitter: Splitter::new(max_message_bytes),
            ready: VecDeque::new(),
            ended: false,
        };
        if let Some(status) = Status::from_header_map(&parts.headers) {
            // A trailers-only answer: the status is all there is.
            if status.code() != Code::Ok {
                return Err(status);
            }
            read.ended = true;
        } else if !parts.status.is_success() {
            return Err(call_status(None, parts.status).err().unwrap_or_else(|| {
                Status::unknown(format!("HTTP status {}", parts.status.as_u16()))
            }));
        }
        match parts.headers.get("grpc-encoding") {
            None => {}
            Some(encoding) if encoding == "identity" => {}
            Some(encoding) => {
                return Err(Status::internal(format!(
                    "the server answered an uncompressed call in {encoding:?}"
                )));
            }
        }
        Ok(read)
    }

    /// The next piece of the answer; `None` once the call ended well.
    pub(crate) async fn next(&mut self) -> Result<Option<Piece>, Status> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                return Ok(Some(piece));
            }
            if self.ended {
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.splitter.feed(data, &mut self.ready)?,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.ended = true;
                            self.splitter.finish()?;
                            call_status(Some(&trailers), self.http_status)?;
                        }
                    }
                },
                Some(Err(status)) => {
                    self.ended = true;
                    return Err(status);
                }
                None => {
                    self.ended = true;
                    self.splitter.finish()?;
                    call_status(None, self.http_status)?;
                }
            }
        }
    }
}

/// The call's outcome from its trailers, or from the HTTP status when they
/// carry none; the mapping is gRPC's (`http-grpc-status-mapping.md`), as
/// tonic applies it.
fn call_status(trailers: Option<&HeaderMap>, http_status: StatusCode) -> Result<(), Status> {
    if let Some(status) = trailers.and_then(Status::from_header_map) {
        return match status.code() {
            Code::Ok => Ok(()),
            _ => Err(status),
        };
    }
    let code = match http_status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        StatusCode::OK => {
            return Err(Status::unknown(
                "the answer ended without a grpc-status: the stream was cut short",
            ));
        }
        _ => Code::Unknown,
    };
    Err(Status::new(
        code,
        format!("no grpc-status; HTTP status {}", http_status.as_u16()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ReadHeader, ReadTrailer, read_response::Kind};
    use proptest::prelude::*;

    /// A message framed as tonic frames it (`server::raw_read` holds
    /// [`message_frame`] to tonic's encoding).
    fn framed(message: &ReadResponse) -> Vec<u8> {
        message_frame(message).to_vec()
    }

    fn data(bytes: &[u8]) -> ReadResponse {
        ReadResponse {
            kind: Some(Kind::Data(Bytes::copy_from_slice(bytes))),
        }
    }

    /// What a stream of messages splits into, fed in frames cut at `cuts`.
    fn split(stream: &[u8], cuts: &[usize]) -> Result<Vec<Piece>, Status> {
        let stream = Bytes::copy_from_slice(stream);
        let mut splitter = Splitter::new(1 << 20);
        let mut out = VecDeque::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([&stream.len()]) {
            let cut = cut.clamp(at, stream.len());
            splitter.feed(stream.slice(at..cut), &mut out)?;
            at = cut;
        }
        splitter.finish()?;
        Ok(out.into())
    }

    /// Pieces back as messages: data pieces joined per message boundary
    /// are not visible, so data is compared as one byte string.
    fn summary(pieces: Vec<Piece>) -> (Vec<u8>, Vec<ReadResponse>) {
        let mut bytes = Vec::new();
        let mut messages = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Data(data) => bytes.extend_from_slice(&data),
                Piece::Message(message) => messages.push(message),
            }
        }
        (bytes, messages)
    }

    #[test]
    fn data_messages_pass_as_slices_of_the_frame() {
        let stream = Bytes::from([framed(&data(b"hello")), framed(&data(b"world"))].concat());
        let mut splitter = Splitter::new(1024);
        let mut out = VecDeque::new();
        splitter.feed(stream.clone(), &mut out).expect("splits");
        splitter.finish().expect("ends between messages");
        let pieces: Vec<_> = out.into_iter().collect();
        assert_eq!(pieces.len(), 2);
        for (piece, want) in pieces.iter().zip([&b"hello"[..], b"world"]) {
            let Piece::Data(bytes) = piece else {
                panic!("not data: {piece:?}")
            };
            assert_eq!(&bytes[..], want);
            // No copy: the piece points into the frame it came in.
            let range = stream.as_ptr_range();
            assert!(range.contains(&bytes.as_ptr()));
        }
    }

    #[test]
    fn header_and_trailer_are_decoded() {
        let header = ReadResponse {
            kind: Some(Kind::Header(ReadHeader {
                offset: 7,
                length: 300,
                ..ReadHeader::default()
            })),
        };
        let trailer = ReadResponse {
            kind: Some(Kind::Trailer(ReadTrailer {
                sha256: vec![9; 32].into(),
            })),
        };
        let stream = [framed(&header), framed(&data(&[1; 300])), framed(&trailer)].concat();
        let (bytes, messages) = summary(split(&stream, &[3, 4, 5, 6, 40]).expect("splits"));
        assert_eq!(bytes, vec![1; 300]);
        assert_eq!(messages, vec![header, trailer]);
    }

    #[test]
    fn data_beside_another_field_is_gathered() {
        // A data field followed by a second one (the last wins in protobuf)
        // is not one data field: it is decoded whole.
        let mut body = data(b"first").encode_to_vec();
        body.extend_from_slice(&data(b"second").encode_to_vec());
        let mut stream = vec![0];
        stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
        stream.extend_from_slice(&body);
        let (bytes, messages) = summary(split(&stream, &[]).expect("splits"));
        assert!(bytes.is_empty());
        assert_eq!(messages, vec![data(b"second")]);
    }

    #[test]
    fn bad_streams_are_refused() {
        let whole = framed(&data(b"abc"));
        let cut = split(&whole[..whole.len() - 1], &[]).expect_err("cut short");
        assert_eq!(cut.code(), Code::Internal);

        let mut compressed = whole.clone();
        compressed[0] = 1;
        assert_eq!(
            split(&compressed, &[]).expect_err("compressed").code(),
            Code::Internal
        );

        let mut huge = whole;
        huge[1..5].copy_from_slice(&(2u32 << 20).to_be_bytes());
        assert_eq!(
            split(&huge, &[]).expect_err("too long").code(),
            Code::OutOfRange
        );
    }

    #[test]
    fn missing_status_maps_like_grpc() {
        assert_eq!(
            call_status(None, StatusCode::OK)
                .expect_err("no trailer")
                .code(),
            Code::Unknown
        );
        assert_eq!(
            call_status(None, StatusCode::SERVICE_UNAVAILABLE)
                .expect_err("503")
                .code(),
            Code::Unavailable
        );
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(call_status(Some(&trailers), StatusCode::OK).is_ok());
        trailers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(
            call_status(Some(&trailers), StatusCode::OK)
                .expect_err("not found")
                .code(),
            Code::NotFound
        );
    }

    proptest! {
        /// Any messages, cut into frames anywhere, split into the same
        /// messages and the same file bytes that went in.
        #[test]
        fn any_framing_splits_the_same(
            sizes in prop::collection::vec(0usize..3000, 1..6),
            cuts in prop::collection::vec(0usize..20000, 0..12),
        ) {
            let mut stream = Vec::new();
            let mut want_bytes = Vec::new();
            let mut want_messages = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let payload: Vec<u8> = (0..*size).map(|b| (b * 31 + i) as u8).collect();
                if i % 3 == 2 {
                    // Every third message is not data.
                    let trailer = ReadResponse {
                        kind: Some(Kind::Trailer(ReadTrailer { sha256: payload.into() })),
                    };
                    stream.extend_from_slice(&framed(&trailer));
                    want_messages.push(trailer);
                } else {
                    stream.extend_from_slice(&framed(&data(&payload)));
                    want_bytes.extend_from_slice(&payload);
                }
            }
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (bytes, messages) = summary(split(&stream, &cuts).expect("splits"));
            prop_assert_eq!(bytes, want_bytes);
            prop_assert_eq!(messages, want_messages);
        }
    }
}
