//! The `fetchd.v1.Fetchd` gRPC service: the edge where wire messages become
//! domain calls and [`Error`]s become statuses.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::checksum::Digest;
use crate::entry::{EntryInfo, EntryKind};
use crate::error::{Error, Result};
use crate::proto::{
    self, ListRequest, ListResponse, ReadRequest, ReadResponse, StatRequest, StatResponse,
    file_result, read_response, write_request,
};
use crate::read_stream::ReadEvent;
use crate::server::calls::CallRecord;
use crate::server::delta::{self, Described, ManifestCache};
use crate::server::digests::{DigestCache, InOrder};
use crate::server::read::{Framing, OpenRead, ReadEvents, SMALL_FILE_BYTES, Span, WholeRead};
use crate::server::upload::{Base, Stored, Upload, UploadSpec};
use crate::store::{Reader, RequestPath, Store, TailSpec};
use crate::tail_stream::{RECENT_BYTES, RecentBytes, TailCursor, TailEvent, TailNotice, TailStart};

/// Entries per `List` message.
pub(crate) const LIST_BATCH_ENTRIES: usize = 512;
/// `List` batches queued between the walker thread and the network.
pub(crate) const LIST_QUEUE_BATCHES: usize = 2;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Most paths one `ReadMany` call may name.
pub(crate) const READ_MANY_MAX_PATHS: usize = 4096;
/// A `ReadMany` message is sent once it holds this many bytes of file data...
pub(crate) const READ_MANY_MESSAGE_BYTES: usize = 1024 * 1024;
/// ... or this many files.
pub(crate) const READ_MANY_MESSAGE_FILES: usize = 256;
/// `ReadMany` messages queued between the reading thread and the network.
pub(crate) const READ_MANY_QUEUE_MESSAGES: usize = 2;
/// Files of a `ReadMany` opened at once (an object store holds at most
/// this many first blocks of 1 MiB).
pub(crate) const READ_MANY_OPENED_AT_ONCE: usize = 16;

/// The file service over one store.
#[derive(Debug)]
pub(crate) struct FetchdService<S: Store> {
    store: Arc<S>,
    digests: Arc<DigestCache<S::Version>>,
    manifests: Arc<ManifestCache<S::Version>>,
    transfers: Arc<Semaphore>,
    max_transfers: usize,
    tails: Arc<Semaphore>,
    max_tails: usize,
    stopping: CancellationToken,
    /// The largest upload accepted; `None`: uploads are refused.
    max_upload_bytes: Option<u64>,
    /// An idle tail stream gets a heartbeat this often.
    tail_heartbeat: Duration,
}

// Not derived: a derive would ask `S: Clone`, and the store is shared.
impl<S: Store> Clone for FetchdService<S> {
    fn clone(&self) -> Self {
        FetchdService {
            store: Arc::clone(&self.store),
            digests: Arc::clone(&self.digests),
            manifests: Arc::clone(&self.manifests),
            transfers: Arc::clone(&self.transfers),
            max_transfers: self.max_transfers,
            tails: Arc::clone(&self.tails),
            max_tails: self.max_tails,
            stopping: self.stopping.clone(),
            max_upload_bytes: self.max_upload_bytes,
            tail_heartbeat: self.tail_heartbeat,
        }
    }
}

impl<S: Store> FetchdService<S> {
    /// A service over `store` allowing `max_transfers` reads at once.
    pub(crate) fn new(store: Arc<S>, max_transfers: usize) -> FetchdService<S> {
        FetchdService {
            store,
            digests: Arc::new(DigestCache::default()),
            manifests: Arc::new(ManifestCache::default()),
            transfers: Arc::new(Semaphore::new(max_transfers)),
            max_transfers,
            tails: Arc::new(Semaphore::new(crate::server::config::DEFAULT_MAX_TAILS)),
            max_tails: crate::server::config::DEFAULT_MAX_TAILS,
            stopping: CancellationToken::new(),
            max_upload_bytes: None,
            tail_heartbeat: crate::server::config::DEFAULT_TAIL_HEARTBEAT,
        }
    }

    /// Sends a heartbeat on a tail stream idle for `every`.
    pub(crate) fn with_tail_heartbeat(mut self, every: Duration) -> FetchdService<S> {
        self.tail_heartbeat = every.max(Duration::from_millis(100));
        self
    }

    /// Accepts uploads of at most `max_bytes` bytes; `None` refuses them
    /// all (PERMISSION_DENIED).
    pub(crate) fn with_uploads(mut self, max_bytes: Option<u64>) -> FetchdService<S> {
        self.max_upload_bytes = max_bytes;
        self
    }

    /// Allows `max_tails` tail streams at once and ends them all (cleanly,
    /// with a `STOPPING` event) when `stopping` is cancelled: graceful
    /// shutdown waits for open streams, and a tail never ends by itself.
    pub(crate) fn with_tails(
        mut self,
        max_tails: usize,
        stopping: CancellationToken,
    ) -> FetchdService<S> {
        self.tails = Arc::new(Semaphore::new(max_tails));
        self.max_tails = max_tails;
        self.stopping = stopping;
        self
    }
}

#[tonic::async_trait]
impl<S: Store> proto::fetchd_server::Fetchd for FetchdService<S> {
    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        CallRecord::of(request.extensions()).set_path(&request.get_ref().path);
        let request = request.into_inner();
        let path = RequestPath::parse(&request.path)?;
        let store = Arc::clone(&self.store);
        let info = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || store.stat(&path))
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
                Arc::clone(&self.store),
                Arc::clone(&self.digests),
                path,
                Span::WHOLE,
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
        let store = Arc::clone(&self.store);
        let digests = Arc::clone(&self.digests);
        let (tx, rx) = mpsc::channel::<Result<Vec<EntryInfo>>>(LIST_QUEUE_BATCHES);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(LIST_BATCH_ENTRIES);
            let mut entries = InOrder::new(runtime);
            // Moves the entries that are complete into batches, sent as
            // they fill; `false` once the client went away.
            let pass_on = |entries: &mut InOrder, batch: &mut Vec<EntryInfo>, finish| {
                while let Some(info) = entries.next(finish) {
                    batch.push(info);
                    if batch.len() == LIST_BATCH_ENTRIES {
                        let full = std::mem::replace(batch, Vec::with_capacity(LIST_BATCH_ENTRIES));
                        if tx.blocking_send(Ok(full)).is_err() {
                            return false;
                        }
                    }
                }
                true
            };
            let walked = store.list(&path, request.recursive, &mut |listed| {
                let info = listed.info;
                if !request.want_sha256 || info.kind != EntryKind::File {
                    entries.ready(info);
                } else if let Some(known) = listed.version.and_then(|version| digests.get(&version))
                {
                    entries.ready(EntryInfo {
                        sha256: Some(known),
                        ..info
                    });
                } else {
                    // A file that cannot be opened is listed without a
                    // digest; the client then asks for it the usual way.
                    match (listed.open)() {
                        Ok(reader) => entries.digest(info, reader, &digests),
                        Err(_) => entries.ready(info),
                    }
                }
                pass_on(&mut entries, &mut batch, false)
            });
            let last = match walked {
                Ok(()) => {
                    if !pass_on(&mut entries, &mut batch, true) || batch.is_empty() {
                        return;
                    }
                    Ok(batch)
                }
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
            .start_read(request.into_inner(), peer, Framing::BARE, record)
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

    type ReadManyStream = ResponseStream<proto::ReadManyResponse>;

    async fn read_many(
        &self,
        request: Request<proto::ReadManyRequest>,
    ) -> Result<Response<Self::ReadManyStream>, Status> {
        let record = CallRecord::of(request.extensions());
        let request = request.into_inner();
        if request.paths.len() > READ_MANY_MAX_PATHS {
            return Err(Status::invalid_argument(format!(
                "ReadMany takes at most {READ_MANY_MAX_PATHS} paths, not {}; split the batch",
                request.paths.len()
            )));
        }
        let permit = self.acquire_transfer()?;
        let max = match request.max_file_bytes {
            0 => SMALL_FILE_BYTES,
            asked => asked.min(SMALL_FILE_BYTES),
        };
        let store = Arc::clone(&self.store);
        let digests = Arc::clone(&self.digests);
        let (tx, rx) = mpsc::channel(READ_MANY_QUEUE_MESSAGES);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut files = Vec::new();
            let mut bytes = 0;
            // Opened a few at a time: an object store's GETs go out
            // together, and it holds at most that many first blocks.
            let mut opened = std::collections::VecDeque::new();
            for (index, path) in request.paths.iter().enumerate() {
                if opened.is_empty() {
                    opened = open_group(&*store, &request.paths[index..]);
                }
                let read = opened
                    .pop_front()
                    .unwrap_or_else(|| Err(unopened(path)))
                    .and_then(|(path, reader)| {
                        OpenRead::<S>::read_whole(reader, Arc::clone(&digests), path, max)
                    });
                let result = match read {
                    Ok(WholeRead::File {
                        entry,
                        version,
                        data,
                        sha256,
                    }) => {
                        bytes += data.len();
                        record.add_sent(data.len() as u64);
                        file_result::Result::File(proto::WholeFile {
                            entry: Some(entry.into()),
                            version: Some(version.into()),
                            data,
                            sha256: bytes::Bytes::copy_from_slice(sha256.as_bytes()),
                        })
                    }
                    Ok(WholeRead::TooLarge(size)) => file_result::Result::TooLarge(size),
                    Err(err) => {
                        let status = Status::from(err);
                        file_result::Result::Error(proto::FileError {
                            code: status.code() as i32,
                            message: status.message().to_string(),
                        })
                    }
                };
                files.push(proto::FileResult {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    result: Some(result),
                });
                if bytes >= READ_MANY_MESSAGE_BYTES || files.len() >= READ_MANY_MESSAGE_FILES {
                    bytes = 0;
                    let message = proto::ReadManyResponse {
                        files: std::mem::take(&mut files),
                    };
                    if tx.blocking_send(Ok(message)).is_err() {
                        return;
                    }
                }
            }
            if !files.is_empty() {
                let _ = tx.blocking_send(Ok(proto::ReadManyResponse { files }));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn write(
        &self,
        request: Request<Streaming<proto::WriteRequest>>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let peer = request.remote_addr();
        let record = CallRecord::of(request.extensions());
        let mut stream = request.into_inner();
        let (header, path) = write_header(&mut stream).await?;
        record.set_path(&header.path);
        let shown = path.shown();
        let Some(limit) = self.max_upload_bytes else {
            return Err(Error::UploadsDisabled { path: shown }.into());
        };
        let _permit = self.acquire_transfer()?;
        let started = Instant::now();
        let mut base = match header.base {
            None => None,
            Some(_) if !header.force => {
                return Err(Error::InvalidRequest {
                    path: shown,
                    reason: "a base without force: a delta upload replaces a file".into(),
                }
                .into());
            }
            Some(pinned) => {
                let (store, path) = (Arc::clone(&self.store), path.clone());
                Some(
                    tokio::task::spawn_blocking(move || {
                        Base::open(&*store, &path, crate::entry::FileVersion::from(pinned))
                    })
                    .await
                    .map_err(|err| Status::internal(err.to_string()))??,
                )
            }
        };
        let spec = UploadSpec {
            path,
            size: header.size,
            force: header.force,
        };
        let mut upload = Upload::begin(Arc::clone(&self.store), spec, limit).await?;
        let received =
            receive_upload(&mut stream, &mut upload, base.as_mut(), &shown, &record).await;
        if received.is_err() {
            // The temporary file is gone before the client hears why.
            upload.abort().await;
        }
        match received {
            Ok(stored) => {
                tracing::info!(path = %shown, bytes = stored.bytes, ?peer, elapsed = ?started.elapsed(), "upload stored");
                Ok(Response::new(proto::WriteResponse {
                    path: stored.path,
                    bytes: stored.bytes,
                    sha256: bytes::Bytes::copy_from_slice(stored.sha256.as_bytes()),
                }))
            }
            Err(status) => {
                tracing::info!(path = %shown, ?peer, code = ?status.code(), message = status.message(), "upload failed; nothing was written");
                Err(status)
            }
        }
    }

    type ManifestStream = ResponseStream<proto::ManifestResponse>;

    async fn manifest(
        &self,
        request: Request<proto::ManifestRequest>,
    ) -> Result<Response<Self::ManifestStream>, Status> {
        CallRecord::of(request.extensions()).set_path(&request.get_ref().path);
        let request = request.into_inner();
        let path = RequestPath::parse(&request.path)?;
        let pinned = if request.groups.is_empty() {
            None
        } else {
            Some(
                request
                    .version
                    .map(crate::entry::FileVersion::from)
                    .ok_or_else(|| Error::InvalidRequest {
                        path: path.shown(),
                        reason: "groups without the version they are of".into(),
                    })?,
            )
        };
        let permit = self.acquire_transfer()?;
        let (store, digests, manifests) = (
            Arc::clone(&self.store),
            Arc::clone(&self.digests),
            Arc::clone(&self.manifests),
        );
        let description = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                delta::describe(&*store, &digests, &manifests, &path)
            })
            .await
            .map_err(|err| Status::internal(err.to_string()))??
        };
        let messages = match pinned {
            None => manifest_outline(description),
            Some(version) => {
                if version != description.version {
                    return Err(Error::Changed { path: path.shown() }.into());
                }
                manifest_lists(&path, &description.described, &request.groups)?
            }
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(
            messages
                .into_iter()
                .map(|kind| Ok(proto::ManifestResponse { kind: Some(kind) })),
        ))))
    }

    type ReadRangesStream = ResponseStream<ReadResponse>;

    async fn read_ranges(
        &self,
        request: Request<proto::ReadRangesRequest>,
    ) -> Result<Response<Self::ReadRangesStream>, Status> {
        let record = CallRecord::of(request.extensions());
        record.set_path(&request.get_ref().path);
        let request = request.into_inner();
        let path = RequestPath::parse(&request.path)?;
        let invalid = |reason: &str| Error::InvalidRequest {
            path: path.shown(),
            reason: reason.into(),
        };
        let pinned = request
            .version
            .map(crate::entry::FileVersion::from)
            .ok_or_else(|| invalid("no version to read the ranges of"))?;
        if request.offsets.len() != request.lengths.len() {
            return Err(invalid("offsets and lengths differ in number").into());
        }
        let ranges: Vec<(u64, u64)> = request
            .offsets
            .iter()
            .copied()
            .zip(request.lengths.iter().copied())
            .collect();
        let permit = self.acquire_transfer()?;
        let store = Arc::clone(&self.store);
        let opened =
            tokio::task::spawn_blocking(move || delta::open_ranges(&*store, path, pinned, ranges))
                .await
                .map_err(|err| Status::internal(err.to_string()))??;
        let events = ReceiverStream::new(opened.stream(permit));
        let stream = events.map(move |event| {
            let kind = match event? {
                ReadEvent::Start(start) => read_response::Kind::Header(start.into()),
                ReadEvent::Data(data) => {
                    record.add_sent(data.len() as u64);
                    read_response::Kind::Data(data)
                }
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
        let mut recent = None;
        let start = match request.start {
            None => TailStart::LastLines(0),
            Some(proto::tail_request::Start::LastLines(lines)) => TailStart::LastLines(lines),
            Some(proto::tail_request::Start::Cursor(cursor)) => {
                recent = Digest::from_slice(&cursor.recent_sha256)
                    .filter(|_| cursor.recent_len > 0)
                    .map(|sha256| RecentBytes {
                        len: cursor.recent_len.min(RECENT_BYTES as u32),
                        sha256,
                    });
                TailStart::Cursor(TailCursor::from(cursor))
            }
        };
        let permit = self.acquire_tail()?;
        let shown = path.shown();
        let spec = TailSpec {
            path,
            start,
            follow: request.follow,
            recent,
        };
        let store = Arc::clone(&self.store);
        let stopping = self.stopping.clone();
        let events = tokio::task::spawn_blocking(move || store.follow(spec, stopping))
            .await
            .map_err(|err| Status::internal(err.to_string()))??;
        tracing::debug!(path = %shown, ?peer, ?start, "tail started");
        // The tail slot is held for as long as the stream lives.
        let stream = events.fuse().map(move |item| match item {
            Ok(event) => {
                let _held = &permit;
                if let TailEvent::Data { data, .. } = &event {
                    record.add_sent(data.len() as u64);
                }
                Ok(tail_response(event))
            }
            Err(err) => Err(Status::from(err)),
        });
        Ok(Response::new(Box::pin(with_heartbeats(
            stream,
            self.tail_heartbeat,
        ))))
    }
}

/// Opens the first [`READ_MANY_OPENED_AT_ONCE`] of `paths` with one
/// [`Store::open_many`], each with its parsed path, in order.
fn open_group<S: Store>(
    store: &S,
    paths: &[String],
) -> std::collections::VecDeque<Result<(RequestPath, S::Reader)>> {
    let parsed: Vec<Result<RequestPath>> = paths
        .iter()
        .take(READ_MANY_OPENED_AT_ONCE)
        .map(|path| RequestPath::parse(path))
        .collect();
    let valid: Vec<RequestPath> = parsed
        .iter()
        .filter_map(|path| path.as_ref().ok().cloned())
        .collect();
    let mut readers = store.open_many(&valid).into_iter();
    parsed
        .into_iter()
        .map(|path| {
            let path = path?;
            let reader = readers
                .next()
                .unwrap_or_else(|| Err(unopened(&path.shown())))?;
            Ok((path, reader))
        })
        .collect()
}

/// A file of a `ReadMany` that [`open_group`] gave no answer for.
fn unopened(path: &str) -> Error {
    Error::Store {
        path: path.to_string(),
        reason: "the store answered fewer opens than asked (a bug in fetchd)".into(),
    }
}

/// The header every `Write` stream starts with, as a domain request.
async fn write_header(
    stream: &mut Streaming<proto::WriteRequest>,
) -> Result<(proto::WriteHeader, RequestPath), Status> {
    let header = match stream.message().await? {
        Some(proto::WriteRequest {
            kind: Some(write_request::Kind::Header(header)),
        }) => header,
        _ => {
            return Err(Error::InvalidRequest {
                path: String::new(),
                reason: "the first message of a Write must be its header".into(),
            }
            .into());
        }
    };
    let path = RequestPath::parse(&header.path)?;
    Ok((header, path))
}

/// Feeds a `Write` stream's data into `upload` until the trailer (and the
/// end of the stream after it), then finishes it.
async fn receive_upload<R: Reader>(
    stream: &mut Streaming<proto::WriteRequest>,
    upload: &mut Upload,
    mut base: Option<&mut Base<R>>,
    shown: &str,
    record: &CallRecord,
) -> Result<Stored, Status> {
    let invalid = |reason: &str| {
        Status::from(Error::InvalidRequest {
            path: shown.to_string(),
            reason: reason.to_string(),
        })
    };
    loop {
        let message = stream.message().await?;
        match message.and_then(|message| message.kind) {
            Some(write_request::Kind::Data(data)) => {
                record.add_received(data.len() as u64);
                upload.push(data).await?;
            }
            Some(write_request::Kind::Copy(copy)) => {
                let Some(base) = base.as_deref_mut() else {
                    return Err(invalid("a copy in an upload without a base"));
                };
                base.copy_into(copy.offset, copy.length, upload).await?;
            }
            Some(write_request::Kind::Trailer(trailer)) => {
                let expected = Digest::from_slice(&trailer.sha256)
                    .ok_or_else(|| invalid("the trailer's sha256 is not 32 bytes"))?;
                if stream.message().await?.is_some() {
                    return Err(invalid("a message came after the trailer"));
                }
                if let Some(base) = base {
                    base.check_current().await?;
                }
                return Ok(upload.finish(expected).await?);
            }
            Some(write_request::Kind::Header(_)) => return Err(invalid("a second header")),
            None => {
                return Err(invalid(&format!(
                    "the stream ended after {} bytes without the trailer (the sha256); nothing was written",
                    upload.received()
                )));
            }
        }
    }
}

/// `responses` with a `HEARTBEAT` event (at the last cursor sent) after
/// every `every` without a message, so that no proxy on the way takes a
/// quiet tail for a dead one. None before the first message: that one
/// (`OPENED` or `GONE`) comes at once.
fn with_heartbeats(
    responses: impl Stream<Item = Result<proto::TailResponse, Status>> + Send + 'static,
    every: Duration,
) -> impl Stream<Item = Result<proto::TailResponse, Status>> + Send + 'static {
    async_fn_stream::fn_stream(move |emitter| async move {
        let mut responses = std::pin::pin!(responses);
        let mut cursor = None;
        loop {
            let next = match &cursor {
                None => responses.next().await,
                Some(_) => match tokio::time::timeout(every, responses.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        emitter
                            .emit(Ok(proto::TailResponse {
                                kind: Some(proto::tail_response::Kind::Event(proto::TailEvent {
                                    kind: proto::TailEventKind::Heartbeat.into(),
                                    cursor: cursor.clone(),
                                })),
                            }))
                            .await;
                        continue;
                    }
                },
            };
            let Some(item) = next else { break };
            if let Ok(response) = &item {
                cursor = match &response.kind {
                    Some(proto::tail_response::Kind::Data(data)) => data.cursor.clone(),
                    Some(proto::tail_response::Kind::Event(event)) => event.cursor.clone(),
                    None => cursor,
                };
            }
            emitter.emit(item).await;
        }
    })
}

/// A tail message as it goes on the wire.
/// A manifest's first level: the header, then the group list in batches.
fn manifest_outline(description: delta::Description) -> Vec<proto::manifest_response::Kind> {
    use proto::manifest_response::Kind;
    let delta::Description {
        entry,
        version,
        described,
    } = description;
    let chunked = described.chunked.as_ref();
    let params = chunked.map(|chunked| chunked.params);
    let groups = chunked.map_or(&[][..], |chunked| &chunked.groups[..]);
    let mut out = vec![Kind::Header(proto::ManifestHeader {
        entry: Some(entry.into()),
        version: Some(version.into()),
        sha256: bytes::Bytes::copy_from_slice(described.sha256.as_bytes()),
        min_chunk: params.map_or(0, |params| params.min),
        avg_chunk: params.map_or(0, |params| params.avg),
        max_chunk: params.map_or(0, |params| params.max),
        group_count: groups.len() as u32,
    })];
    for batch in groups.chunks(delta::GROUPS_PER_MESSAGE) {
        let mut hashes = Vec::with_capacity(batch.len() * crate::delta::HASH_BYTES);
        for group in batch {
            hashes.extend_from_slice(&group.hash.0);
        }
        out.push(Kind::Groups(proto::ManifestGroups {
            lengths: batch.iter().map(|group| group.len).collect(),
            chunk_counts: batch.iter().map(|group| group.chunks).collect(),
            hashes: hashes.into(),
        }));
    }
    out
}

/// The chunk lists of the groups asked for, in request order.
fn manifest_lists(
    path: &RequestPath,
    described: &Described,
    asked: &[u32],
) -> Result<Vec<proto::manifest_response::Kind>> {
    let Some(chunked) = described.chunked.as_ref() else {
        delta::check_groups(path, asked, 0)?;
        return Ok(Vec::new());
    };
    delta::check_groups(path, asked, chunked.groups.len())?;
    let lists: Vec<&[crate::delta::Chunk]> = chunked.group_chunks().collect();
    Ok(asked
        .iter()
        .map(|&group| {
            let chunks = lists[group as usize];
            let mut hashes = Vec::with_capacity(chunks.len() * crate::delta::HASH_BYTES);
            for chunk in chunks {
                hashes.extend_from_slice(&chunk.hash.0);
            }
            proto::manifest_response::Kind::Chunks(proto::ChunkList {
                group,
                lengths: chunks.iter().map(|chunk| chunk.len).collect(),
                hashes: hashes.into(),
            })
        })
        .collect())
}

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

impl<S: Store> FetchdService<S> {
    /// Checks and opens the file a `Read` asks for, and starts reading it:
    /// the events of the read, with data chunks laid out as `framing` says.
    /// Shared by the tonic handler and [`crate::server::raw_read`].
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
            Arc::clone(&self.store),
            Arc::clone(&self.digests),
            path,
            Span {
                offset: request.offset,
                length: request.length,
                range_only: request.range_only,
            },
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
