//! The `fetchd.v1.Fetchd` gRPC service: the edge where wire messages become
//! domain calls and [`Error`]s become statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::entry::{EntryInfo, EntryKind, ReadEvent};
use crate::error::{Error, Result};
use crate::proto::{
    self, ListRequest, ListResponse, ReadHeader, ReadRequest, ReadResponse, StatRequest,
    StatResponse, read_response,
};
use crate::sandbox::{RequestPath, Root};
use crate::server::digests::DigestCache;
use crate::server::read::{OpenRead, Prepared};
use crate::server::tail::{self, TailSpec};
use crate::server::watches::Watches;
use crate::tail::{TailCursor, TailEvent, TailNotice, TailStart};

/// Entries per `List` message.
pub const LIST_BATCH_ENTRIES: usize = 512;
/// `List` batches queued between the walker thread and the network.
pub const LIST_QUEUE_BATCHES: usize = 2;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The file service over one root.
#[derive(Debug, Clone)]
pub struct FetchdService {
    root: Arc<Root>,
    digests: Arc<DigestCache>,
    transfers: Arc<Semaphore>,
    max_transfers: usize,
    watches: Watches,
    tails: Arc<Semaphore>,
    max_tails: usize,
    stopping: CancellationToken,
}

impl FetchdService {
    /// A service over `root` allowing `max_transfers` reads at once.
    pub fn new(root: Arc<Root>, max_transfers: usize) -> FetchdService {
        FetchdService {
            root,
            digests: Arc::new(DigestCache::default()),
            transfers: Arc::new(Semaphore::new(max_transfers)),
            max_transfers,
            watches: Watches::default(),
            tails: Arc::new(Semaphore::new(crate::server::DEFAULT_MAX_TAILS)),
            max_tails: crate::server::DEFAULT_MAX_TAILS,
            stopping: CancellationToken::new(),
        }
    }

    /// Allows `max_tails` tail streams at once and ends them all (cleanly,
    /// with a `STOPPING` event) when `stopping` is cancelled: graceful
    /// shutdown waits for open streams, and a tail never ends by itself.
    pub fn with_tails(mut self, max_tails: usize, stopping: CancellationToken) -> FetchdService {
        self.tails = Arc::new(Semaphore::new(max_tails));
        self.max_tails = max_tails;
        self.stopping = stopping;
        self
    }
}

#[tonic::async_trait]
impl proto::fetchd_server::Fetchd for FetchdService {
    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let request = request.into_inner();
        let path = RequestPath::parse(&request.path)?;
        let root = Arc::clone(&self.root);
        let info = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || root.stat(&path))
                .await
                .map_err(|err| Status::internal(err.to_string()))??
        };
        let mut response = StatResponse {
            entry: None,
            version: None,
            sha256: Default::default(),
        };
        if info.kind == crate::entry::EntryKind::File {
            let open = OpenRead::open(
                Arc::clone(&self.root),
                Arc::clone(&self.digests),
                path,
                0,
                None,
            )
            .await?;
            if request.want_sha256 {
                let _permit = self.acquire_transfer()?;
                let (entry, version, digest) = open.digest().await?;
                response.entry = Some(entry.into());
                response.version = Some(version.into());
                response.sha256 = bytes::Bytes::copy_from_slice(digest.as_bytes());
            } else {
                response.version = Some(open.version().into());
                response.entry = Some(open.entry().clone().into());
            }
        } else {
            response.entry = Some(info.into());
        }
        Ok(Response::new(response))
    }

    type ListStream = ResponseStream<ListResponse>;

    async fn list(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let request = request.into_inner();
        let path = RequestPath::parse(&request.path)?;
        let root = Arc::clone(&self.root);
        let digests = Arc::clone(&self.digests);
        let (tx, rx) = mpsc::channel::<Result<Vec<EntryInfo>>>(LIST_QUEUE_BATCHES);
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(LIST_BATCH_ENTRIES);
            let mut open = true;
            let walked = root.walk(&path, request.recursive, &mut |listed| {
                let mut info = listed.info.clone();
                if request.want_sha256 && info.kind == EntryKind::File {
                    // A file that cannot be opened or changes while hashed
                    // is listed without a digest; the client then asks for
                    // it the usual way.
                    info.sha256 = digests.get(&listed.version()).or_else(|| {
                        listed
                            .open()
                            .ok()
                            .and_then(|(file, _)| digests.digest_of(&file).ok().flatten())
                    });
                }
                batch.push(info);
                if batch.len() == LIST_BATCH_ENTRIES {
                    let full =
                        std::mem::replace(&mut batch, Vec::with_capacity(LIST_BATCH_ENTRIES));
                    open = tx.blocking_send(Ok(full)).is_ok();
                }
                open
            });
            let last = match walked {
                Ok(()) if batch.is_empty() => return,
                Ok(()) => Ok(batch),
                Err(err) => Err(err),
            };
            let _ = tx.blocking_send(last);
        });
        let stream = ReceiverStream::new(rx).map(|batch| match batch {
            Ok(entries) => Ok(ListResponse {
                entries: entries.into_iter().map(Into::into).collect(),
            }),
            Err(err) => Err(Status::from(err)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type ReadStream = ResponseStream<ReadResponse>;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let path = RequestPath::parse(&request.path)?;
        let permit = self.acquire_transfer()?;
        let started = Instant::now();
        let shown = path.shown();
        let prepared = OpenRead::prepare(
            Arc::clone(&self.root),
            Arc::clone(&self.digests),
            path,
            request.offset,
            request.length,
        )
        .await?;
        tracing::debug!(path = %shown, offset = request.offset, ?peer, "read started");
        let events: Pin<Box<dyn Stream<Item = Result<ReadEvent>> + Send>> = match prepared {
            Prepared::Whole(events) => {
                drop(permit);
                Box::pin(tokio_stream::iter(events))
            }
            Prepared::Streaming(open) => Box::pin(ReceiverStream::new(open.stream(permit))),
        };
        let mut sent: u64 = 0;
        let stream = events.map(move |event| {
            let kind = match event {
                Ok(ReadEvent::Start(start)) => read_response::Kind::Header(ReadHeader {
                    entry: Some(start.entry.into()),
                    version: Some(start.version.into()),
                    offset: start.offset,
                    length: start.length,
                    prefix_sha256: start
                        .prefix_sha256
                        .map(|digest| bytes::Bytes::copy_from_slice(digest.as_bytes()))
                        .unwrap_or_default(),
                }),
                Ok(ReadEvent::Data(data)) => {
                    sent += data.len() as u64;
                    read_response::Kind::Data(data)
                }
                Ok(ReadEvent::End(digest)) => {
                    tracing::debug!(path = %shown, bytes = sent, elapsed = ?started.elapsed(), "read done");
                    read_response::Kind::Trailer(proto::ReadTrailer {
                        sha256: bytes::Bytes::copy_from_slice(digest.as_bytes()),
                    })
                }
                Err(err) => {
                    tracing::info!(path = %shown, %err, "read failed");
                    return Err(Status::from(err));
                }
            };
            Ok(ReadResponse { kind: Some(kind) })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type TailStream = ResponseStream<proto::TailResponse>;

    async fn tail(
        &self,
        request: Request<proto::TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let path = RequestPath::parse(&request.path)?;
        let start = match request.start {
            None => TailStart::LastLines(0),
            Some(proto::tail_request::Start::LastLines(lines)) => TailStart::LastLines(lines),
            Some(proto::tail_request::Start::Cursor(cursor)) => {
                TailStart::Cursor(TailCursor::from(cursor))
            }
        };
        let permit = self.acquire_tail()?;
        let shown = path.shown();
        let spec = TailSpec {
            path,
            start,
            follow: request.follow,
        };
        let events = tail::start(
            Arc::clone(&self.root),
            self.watches.clone(),
            spec,
            self.stopping.clone(),
            permit,
        )
        .await?;
        tracing::debug!(path = %shown, ?peer, ?start, "tail started");
        let stream = ReceiverStream::new(events).map(|item| match item {
            Ok(event) => Ok(tail_response(event)),
            Err(err) => Err(Status::from(err)),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A tail message as it goes on the wire.
fn tail_response(event: TailEvent) -> proto::TailResponse {
    use proto::tail_response::Kind;
    let kind = match event {
        TailEvent::Data { data, cursor } => Kind::Data(proto::TailData {
            data,
            cursor: Some(cursor.into()),
        }),
        TailEvent::Notice { notice, cursor } => {
            let kind = match notice {
                TailNotice::Opened => proto::TailEventKind::Opened,
                TailNotice::Truncated => proto::TailEventKind::Truncated,
                TailNotice::Rotated => proto::TailEventKind::Rotated,
                TailNotice::Gone => proto::TailEventKind::Gone,
                TailNotice::Appeared => proto::TailEventKind::Appeared,
                TailNotice::ResumeLost => proto::TailEventKind::ResumeLost,
                TailNotice::Stopping => proto::TailEventKind::Stopping,
            };
            Kind::Event(proto::TailEvent {
                kind: kind.into(),
                cursor: Some(cursor.into()),
            })
        }
    };
    proto::TailResponse { kind: Some(kind) }
}

impl FetchdService {
    /// A tail slot, or RESOURCE_EXHAUSTED when all are taken.
    fn acquire_tail(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        Arc::clone(&self.tails).try_acquire_owned().map_err(|_| {
            Status::from(Error::Limit {
                what: "tails",
                limit: self.max_tails,
                flag: "--max-tails",
            })
        })
    }

    /// A transfer slot, or RESOURCE_EXHAUSTED when all are taken.
    fn acquire_transfer(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        Arc::clone(&self.transfers)
            .try_acquire_owned()
            .map_err(|_| {
                Status::from(Error::Limit {
                    what: "transfers",
                    limit: self.max_transfers,
                    flag: "--max-transfers",
                })
            })
    }
}
