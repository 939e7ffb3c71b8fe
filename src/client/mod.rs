//! The client: a connection to one server and the calls on it, returning
//! domain types. The only client module that sees wire types.
//!
//! - [`target`]: which server (a URL and its label); [`options`]: how to
//!   connect; [`channel`]: dialling and the windows; [`connector`]: TLS.
//! - [`download`]: one file from the server to a local file or stdout, with
//!   skip, resume and retry.
//! - [`assemble`]: the writer thread that appends chunks and hashes them.
//! - [`bulk`]: many files at once, `-j` at a time, confined to the output folder.
//! - [`retry`]: the one retry policy (what is retried, how long, the notice).
//! - [`follow`]: following a file across reconnects, resuming from a cursor.
//! - [`fleet`]: connecting to several servers at once.
//! - [`upload`]: one local file (or stdin) to the server, read and hashed on
//!   a blocking thread.
//! - [`raw_read`]: `Read` answers decoded below tonic's codec.

pub(crate) mod assemble;
pub(crate) mod bulk;
pub(crate) mod channel;
mod connector;
pub(crate) mod download;
pub(crate) mod fleet;
pub(crate) mod follow;
pub(crate) mod manifest;
pub(crate) mod options;
mod raw_read;
pub(crate) mod retry;
mod status;
pub(crate) mod target;
pub(crate) mod upload;

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;

use crate::checksum::Digest;
use crate::entry::{EntryInfo, FileVersion};
use crate::error::{Error, Result};
use crate::proto::{self, fetchd_client::FetchdClient, read_response};
use crate::read_stream::{ReadEvent, ReadStart};
use crate::tls::ClientTls;
use channel::{Windows, dial, round_trip};
use connector::TlsFailure;
pub(crate) use options::{BearerToken, Compression, ConnectOptions};
use raw_read::{Calls, Piece, RawRead};
use retry::RetryPolicy;
pub(crate) use target::Target;

/// Server used when neither `--server` nor `FETCHD_SERVER` is given.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
/// Largest message the client decodes (a data chunk is 1 MiB).
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

type Rpc = FetchdClient<Calls>;

/// A connection to one fetchd server. Cheap to clone: clones share the
/// HTTP/2 connection.
#[derive(Clone, Debug)]
pub struct Client {
    rpc: Rpc,
    /// The same channel, for calls read below tonic's codec.
    calls: Calls,
    target: Target,
    /// How it connected, to connect again the same way.
    options: std::sync::Arc<ConnectOptions>,
    tls_failure: TlsFailure,
    compression: Option<Compression>,
    retry: RetryPolicy,
    windows: Windows,
    rtt: Option<Duration>,
}

/// What `Stat` says about a path.
#[derive(Clone, Debug)]
pub struct RemoteStat {
    /// The object (symlinks followed).
    pub entry: EntryInfo,
    /// The file's version; `None` for folders.
    pub version: Option<FileVersion>,
    /// The whole file's sha256, when asked for.
    pub sha256: Option<Digest>,
}

impl Client {
    /// Connects to the server, failing early if it cannot be reached.
    ///
    /// The receive windows follow the link: the client connects with the
    /// near windows, times one health check (a round trip), and when that
    /// took longer than [`NEAR_RTT`] connects again with windows sized for
    /// the round trip ([`Windows::for_rtt`]), since HTTP/2 lets one stream
    /// move at most a window per round trip. Near links keep small windows,
    /// so a fast local download does not buffer more.
    pub async fn connect(target: &Target, options: &ConnectOptions) -> Result<Client> {
        let server = target.url();
        crate::tls::check_client_identity_pair(
            options.client_cert.as_deref(),
            options.client_key.as_deref(),
        )?;
        let tls = if server.starts_with("https://") {
            Some(ClientTls::load(
                server,
                options.ca_cert.as_deref(),
                options.client_cert.as_deref(),
                options.client_key.as_deref(),
            )?)
        } else {
            None
        };
        let tls_failure = TlsFailure::default();
        let near = Windows::NEAR;
        let mut channel = dial(target, tls.as_ref(), &tls_failure, near).await?;
        let mut windows = near;
        let rtt = round_trip(&channel).await;
        if let Some(rtt) = rtt {
            let wanted = Windows::for_rtt(rtt);
            if wanted != near {
                // On failure the first connection serves, with its windows.
                if let Ok(wide) = dial(target, tls.as_ref(), &tls_failure, wanted).await {
                    tracing::debug!(?rtt, ?wanted, "a far server: wider windows");
                    channel = wide;
                    windows = wanted;
                }
            }
        }
        let token = BearerToken::new(options.token.as_deref())?;
        let calls = InterceptedService::new(channel, token);
        let rpc = FetchdClient::new(calls.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        Ok(Client {
            rpc,
            calls,
            target: target.clone(),
            options: std::sync::Arc::new(options.clone()),
            compression: options.compression,
            tls_failure,
            retry: options.retry,
            windows,
            rtt,
        })
    }

    /// The receive windows the connection was made with.
    pub fn windows(&self) -> Windows {
        self.windows
    }

    /// The round trip measured at connect (`None` when the health check
    /// failed), which chose the windows.
    pub fn round_trip(&self) -> Option<Duration> {
        self.rtt
    }

    /// The stub for a call that moves file data: its request compressed
    /// when the client asks for compression, so the answer is too.
    pub(crate) fn data_rpc(&self) -> Rpc {
        match self.compression {
            Some(compression) => self.rpc.clone().send_compressed(compression.encoding()),
            None => self.rpc.clone(),
        }
    }

    /// Connects again to the same server, the same way (after the
    /// connection was lost).
    pub async fn reconnect(&self) -> Result<Client> {
        Client::connect(&self.target, &self.options).await
    }

    /// The server this client talks to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The server's URL.
    pub fn server(&self) -> &str {
        self.target.url()
    }

    /// How failed calls are tried again.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The same connection under another retry policy: a fleet hands a
    /// replica's failed work to the others at once instead of waiting on it.
    pub fn with_retry_policy(&self, retry: RetryPolicy) -> Client {
        Client {
            retry,
            ..self.clone()
        }
    }

    /// Runs `call` until it succeeds, fails for good, or its streak of
    /// retries ([`retry`]) runs out; each retry is one notice about
    /// `subject` to `notify`.
    pub async fn retrying<T, F, Fut>(
        &self,
        subject: &str,
        notify: &(dyn Fn(&str) + Sync),
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut streak = self.retry.streak();
        loop {
            match call().await {
                Err(err) if streak.wait(subject, &err, notify).await => {}
                done => return done,
            }
        }
    }

    fn status(&self, status: tonic::Status) -> Error {
        // A connection ended by a TLS alert (a client certificate missing
        // or refused) often shows in the call only as "connection closed".
        if matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Internal
        ) && let Some(reason) = self.tls_failure.get()
        {
            let server = self.target.name();
            return if self.target.is_tls() {
                Error::Tls { server, reason }
            } else {
                Error::Unreachable { server, reason }
            };
        }
        Error::from_status(status, &self.target.name())
    }

    /// Metadata of `path`; with `want_sha256`, also the file's digest.
    pub async fn stat(&self, path: &str, want_sha256: bool) -> Result<RemoteStat> {
        let response = self
            .rpc
            .clone()
            .stat(proto::StatRequest {
                path: path.to_string(),
                want_sha256,
            })
            .await
            .map_err(|status| self.status(status))?
            .into_inner();
        let protocol = |reason: &str| Error::Protocol {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let entry = response
            .entry
            .ok_or_else(|| protocol("stat answer without an entry"))?;
        let entry = EntryInfo::try_from(entry).map_err(|reason| protocol(&reason))?;
        let sha256 = if response.sha256.is_empty() {
            None
        } else {
            Some(
                Digest::from_slice(&response.sha256)
                    .ok_or_else(|| protocol("bad sha256 length"))?,
            )
        };
        Ok(RemoteStat {
            entry,
            version: response.version.map(Into::into),
            sha256,
        })
    }

    /// The entries below `path` (see the `List` RPC), as they stream in.
    pub async fn list(&self, path: &str, recursive: bool) -> Result<ListStream> {
        self.list_entries(path, recursive, false).await
    }

    /// Like [`list`](Self::list); with `want_sha256`, regular files carry
    /// their digest (costs the server a hash of files it has not seen).
    pub async fn list_entries(
        &self,
        path: &str,
        recursive: bool,
        want_sha256: bool,
    ) -> Result<ListStream> {
        let stream = self
            .rpc
            .clone()
            .list(proto::ListRequest {
                path: path.to_string(),
                recursive,
                want_sha256,
            })
            .await
            .map_err(|status| self.status(status))?
            .into_inner();
        Ok(ListStream {
            inner: stream,
            pending: Vec::new().into_iter(),
            client: self.clone(),
            path: path.to_string(),
        })
    }

    /// Stores a file: sends the header for `target`, then every piece
    /// `body` yields, and waits for the server's answer. A body that ends
    /// without [`UploadPiece::End`] makes the server discard the upload.
    /// The server may answer (with an error) before the body is done; then
    /// `body` is dropped, so whoever feeds it sees its sends fail.
    pub async fn write(
        &self,
        target: WriteTarget,
        body: tokio::sync::mpsc::Receiver<UploadPiece>,
    ) -> Result<Written> {
        use proto::{WriteHeader, WriteRequest, WriteTrailer, write_request::Kind};
        let header = WriteRequest {
            kind: Some(Kind::Header(WriteHeader {
                path: target.path.clone(),
                size: target.size,
                force: target.force,
                base: target.base.map(Into::into),
            })),
        };
        let pieces = tokio_stream::wrappers::ReceiverStream::new(body).map(|piece| {
            let kind = match piece {
                UploadPiece::Data(data) => Kind::Data(data),
                UploadPiece::Copy { offset, length } => {
                    Kind::Copy(proto::CopyRange { offset, length })
                }
                UploadPiece::End(digest) => Kind::Trailer(WriteTrailer {
                    sha256: bytes::Bytes::copy_from_slice(digest.as_bytes()),
                }),
            };
            WriteRequest { kind: Some(kind) }
        });
        let requests = tokio_stream::once(header).chain(pieces);
        let response = self
            .rpc
            .clone()
            .write(requests)
            .await
            .map_err(|status| self.status(status))?
            .into_inner();
        let sha256 = Digest::from_slice(&response.sha256).ok_or_else(|| Error::Protocol {
            path: target.path.clone(),
            reason: "bad sha256 length in the answer".into(),
        })?;
        Ok(Written {
            path: response.path,
            bytes: response.bytes,
            sha256,
        })
    }

    /// Starts reading `path` from `offset`; `length` bytes or to the end.
    /// An uncompressed answer is read below tonic's codec (see
    /// [`raw_read`]); a compressed one through it.
    pub async fn read(&self, path: &str, offset: u64, length: Option<u64>) -> Result<ReadStream> {
        self.start_read(proto::ReadRequest {
            path: path.to_string(),
            offset,
            length,
            range_only: false,
        })
        .await
    }

    /// Reads `length` bytes of `path` from `offset` as a range of a larger
    /// transfer: the server hashes only the bytes it sends (the trailer's
    /// sha256 covers `offset..offset + length`), not the prefix before them.
    pub async fn read_range(&self, path: &str, offset: u64, length: u64) -> Result<ReadStream> {
        self.start_read(proto::ReadRequest {
            path: path.to_string(),
            offset,
            length: Some(length),
            range_only: true,
        })
        .await
    }

    async fn start_read(&self, request: proto::ReadRequest) -> Result<ReadStream> {
        let path = request.path.clone();
        let answer = match self.compression {
            None => RawRead::call(&self.calls, &request, MAX_MESSAGE_BYTES)
                .await
                .map(ReadAnswer::Split),
            Some(_) => self
                .data_rpc()
                .read(request)
                .await
                .map(|response| ReadAnswer::Decoded(response.into_inner())),
        };
        Ok(ReadStream {
            inner: answer.map_err(|status| self.status(status))?,
            client: self.clone(),
            path,
        })
    }

    /// Starts reading the files at `paths` whole (see the `ReadMany` RPC);
    /// files larger than `max_file_bytes` are answered as too large.
    pub async fn read_many(&self, paths: Vec<String>, max_file_bytes: u64) -> Result<ManyStream> {
        let stream = self
            .rpc
            .clone()
            .read_many(proto::ReadManyRequest {
                paths,
                max_file_bytes,
            })
            .await
            .map_err(|status| self.status(status))?
            .into_inner();
        Ok(ManyStream {
            inner: stream,
            client: self.clone(),
        })
    }
}

/// One path's answer in a `ReadMany` call.
#[derive(Debug)]
pub enum ManyResult {
    /// The whole file.
    File {
        /// The file as the server described it.
        entry: EntryInfo,
        /// Its bytes.
        data: bytes::Bytes,
        /// The sha256 the server computed over them.
        sha256: Digest,
    },
    /// Larger than the call allows: the file's size.
    TooLarge(u64),
    /// What the server said about this path.
    Failed(Error),
}

/// The answers of a `ReadMany` call, in request order.
#[derive(Debug)]
pub struct ManyStream {
    inner: Streaming<proto::ReadManyResponse>,
    client: Client,
}

impl ManyStream {
    /// The answers of the next message, each with the index of its path in
    /// the request, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<(usize, ManyResult)>>> {
        let message = match self.inner.next().await {
            None => return Ok(None),
            Some(Err(status)) => return Err(self.client.status(status)),
            Some(Ok(message)) => message,
        };
        message
            .files
            .into_iter()
            .map(|answer| self.answer(answer))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn answer(&self, answer: proto::FileResult) -> Result<(usize, ManyResult)> {
        use proto::file_result::Result as Answer;
        let index = answer.index as usize;
        let protocol = |reason: &str| Error::Protocol {
            path: format!("ReadMany path #{index}"),
            reason: reason.to_string(),
        };
        let result = match answer.result {
            Some(Answer::File(file)) => {
                let entry = file
                    .entry
                    .ok_or_else(|| protocol("file without an entry"))?;
                ManyResult::File {
                    entry: EntryInfo::try_from(entry).map_err(|reason| protocol(&reason))?,
                    data: file.data,
                    sha256: Digest::from_slice(&file.sha256)
                        .ok_or_else(|| protocol("bad sha256 length"))?,
                }
            }
            Some(Answer::TooLarge(size)) => ManyResult::TooLarge(size),
            Some(Answer::Error(error)) => ManyResult::Failed(
                self.client
                    .status(tonic::Status::new(error.code.into(), error.message)),
            ),
            None => return Err(protocol("an answer without a result")),
        };
        Ok((index, result))
    }
}

/// What goes into a `Write` call after its header.
#[derive(Clone, Debug)]
pub enum UploadPiece {
    /// The next bytes of the file.
    Data(bytes::Bytes),
    /// The next `length` bytes are the base's from `offset` (a delta
    /// upload: [`WriteTarget::base`]).
    Copy { offset: u64, length: u64 },
    /// The end: the sha256 of every byte sent.
    End(Digest),
}

/// The server's answer to a finished `Write`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The path written, as the server names it.
    pub path: String,
    /// Bytes the server wrote.
    pub bytes: u64,
    /// sha256 of the stored file, computed by the server.
    pub sha256: Digest,
}

/// The parameters of a `Write` call.
#[derive(Clone, Debug)]
pub struct WriteTarget {
    /// The path on the server.
    pub path: String,
    /// Bytes that will follow; `None` when unknown (stdin).
    pub size: Option<u64>,
    /// Replace an existing file.
    pub force: bool,
    /// A delta upload: the version of the file at `path` that copies read
    /// from.
    pub base: Option<FileVersion>,
}

/// Entries of a `List` call.
#[derive(Debug)]
pub struct ListStream {
    inner: Streaming<proto::ListResponse>,
    pending: std::vec::IntoIter<proto::Entry>,
    client: Client,
    path: String,
}

impl ListStream {
    /// The next entry, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<EntryInfo>> {
        loop {
            if let Some(entry) = self.pending.next() {
                return EntryInfo::try_from(entry)
                    .map(Some)
                    .map_err(|reason| Error::Protocol {
                        path: self.path.clone(),
                        reason,
                    });
            }
            match self.inner.next().await {
                None => return Ok(None),
                Some(Err(status)) => return Err(self.client.status(status)),
                Some(Ok(batch)) => self.pending = batch.entries.into_iter(),
            }
        }
    }
}

/// How a `Read` answer is read.
#[derive(Debug)]
enum ReadAnswer {
    /// Uncompressed: split below tonic, file data without a copy.
    Split(RawRead),
    /// Compressed: decoded by tonic's codec.
    Decoded(Streaming<proto::ReadResponse>),
}

/// The messages of a `Read` call, as domain events.
#[derive(Debug)]
pub struct ReadStream {
    inner: ReadAnswer,
    client: Client,
    path: String,
}

impl ReadStream {
    /// The next event, or `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<ReadEvent>> {
        let message = match &mut self.inner {
            ReadAnswer::Split(raw) => match raw.next().await {
                Ok(None) => return Ok(None),
                Err(status) => return Err(self.client.status(status)),
                Ok(Some(Piece::Data(data))) => return Ok(Some(ReadEvent::Data(data))),
                Ok(Some(Piece::Message(message))) => message,
            },
            ReadAnswer::Decoded(stream) => match stream.next().await {
                None => return Ok(None),
                Some(Err(status)) => return Err(self.client.status(status)),
                Some(Ok(message)) => message,
            },
        };
        let protocol = |reason: &str| Error::Protocol {
            path: self.path.clone(),
            reason: reason.to_string(),
        };
        let event = match message.kind {
            Some(read_response::Kind::Data(data)) => ReadEvent::Data(data),
            Some(read_response::Kind::Header(header)) => {
                let entry = header
                    .entry
                    .ok_or_else(|| protocol("header without entry"))?;
                let prefix_sha256 = if header.prefix_sha256.is_empty() {
                    None
                } else {
                    Some(
                        Digest::from_slice(&header.prefix_sha256)
                            .ok_or_else(|| protocol("bad prefix sha256 length"))?,
                    )
                };
                ReadEvent::Start(ReadStart {
                    entry: EntryInfo::try_from(entry).map_err(|reason| protocol(&reason))?,
                    version: header
                        .version
                        .ok_or_else(|| protocol("header without version"))?
                        .into(),
                    offset: header.offset,
                    length: header.length,
                    prefix_sha256,
                })
            }
            Some(read_response::Kind::Trailer(trailer)) => ReadEvent::End(
                Digest::from_slice(&trailer.sha256).ok_or_else(|| protocol("bad sha256 length"))?,
            ),
            None => return Err(protocol("empty message")),
        };
        Ok(Some(event))
    }
}
