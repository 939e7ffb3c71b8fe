//! The `fetchd.v1.Fetchd` gRPC service: the edge where wire messages become
//! domain calls and [`Error`]s become statuses.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::entry::{EntryInfo, EntryKind, ReadEvent};
use crate::error::{Error, Result};
use crate::proto::{
    self, ListRequest, ListResponse, ReadRequest, ReadResponse, StatRequest, StatResponse,
    read_response,
};
use crate::sandbox::{RequestPath, Root};
use crate::server::calls::CallRecord;
use crate::server::digests::DigestCache;
use crate::server::read::{Framing, OpenRead, ReadEvents};
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
        CallRecord::of(request.extensions()).set_path(&request.get_ref().path);
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
        CallRecord::of(request.extensions()).set_path(&request.get_ref().path);
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
        let record = CallRecord::of(request.extensions());
        let read = self
            .start_read(request.into_inner(), peer, Framing::Bare, record)
            .await?;
        let stream = read.map(|event| {
            let kind = match event? {
                ReadEvent::Start(start) => read_response::Kind::Header(start.into()),
                ReadEvent::Data(data) => read_response::Kind::Data(data),
                ReadEvent::End(digest) => read_response::Kind::Trailer(digest.into()),
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
        let record = CallRecord::of(request.extensions());
        record.set_path(&request.get_ref().path);
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
        let stream = ReceiverStream::new(events).map(move |item| match item {
            Ok(event) => {
                if let TailEvent::Data { data, .. } = &event {
                    record.add_sent(data.len() as u64);
                }
                Ok(tail_response(event))
            }
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
    /// Checks and opens the file a `Read` asks for, and starts reading it:
    /// the events of the read, with data chunks laid out as `framing` says.
    /// Shared by the tonic handler and [`crate::server::read_route`].
    pub(crate) async fn start_read(
        &self,
        request: ReadRequest,
        peer: Option<SocketAddr>,
        framing: Framing,
        record: CallRecord,
    ) -> Result<ReadEvents, Status> {
        record.set_path(&request.path);
        let path = RequestPath::parse(&request.path)?;
        let permit = self.acquire_transfer()?;
        let shown = path.shown();
        let prepared = OpenRead::prepare(
            Arc::clone(&self.root),
            Arc::clone(&self.digests),
            path,
            request.offset,
            request.length,
            framing,
        )
        .await?;
        tracing::debug!(path = %shown, offset = request.offset, ?peer, "read started");
        Ok(ReadEvents::new(prepared, permit, shown, framing, record))
    }

    /// A tail slot, or RESOURCE_EXHAUSTED when all are taken.
    fn acquire_tail(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        Arc::clone(&self.tails).try_acquire_owned().map_err(|_| {
            Status::from(Error::Limit {
                what: "tails",
                limit: self.max_tails,
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
                })
            })
    }
}
