//! Following a remote file: `Tail` calls, one after another, resumed from
//! the cursor of the last message received.
//!
//! [`Follower::next`] hands out the file's bytes and what happened to it.
//! When the connection drops, the server is busy or restarts, it reconnects
//! with the waits of the client's [retry policy](crate::client::retry)
//! (while following, for as long as it follows, like `tail -F`; with
//! `--no-follow`, for `--retry-for`) and asks for the bytes after its
//! cursor, so nothing is lost or repeated. Every message is checked to
//! continue exactly where the previous one ended.

use std::time::Duration;

use bytes::Bytes;
use tokio_stream::StreamExt;
use tonic::Streaming;

use crate::client::Client;
use crate::client::retry::{self, Cause, RetryPolicy, Streak};
use crate::error::{Error, Result};
use crate::proto::{self, tail_response};
use crate::tail_stream::{RecentBytes, RecentWindow, TailCursor, TailEvent, TailNotice, TailStart};

impl Client {
    /// Opens one `Tail` stream of `path`.
    pub async fn tail(&self, path: &str, start: TailStart, follow: bool) -> Result<TailStream> {
        self.tail_with(path, start, None, follow).await
    }

    /// Like [`Client::tail`]; a cursor carries `recent`, the bytes received
    /// just before it, so that another copy of the file can take over.
    pub(crate) async fn tail_with(
        &self,
        path: &str,
        start: TailStart,
        recent: Option<RecentBytes>,
        follow: bool,
    ) -> Result<TailStream> {
        let start = match start {
            TailStart::LastLines(lines) => proto::tail_request::Start::LastLines(lines),
            TailStart::Cursor(cursor) => {
                let mut cursor = proto::TailCursor::from(cursor);
                if let Some(recent) = recent {
                    cursor.recent_len = recent.len;
                    cursor.recent_sha256 = bytes::Bytes::copy_from_slice(recent.sha256.as_bytes());
                }
                proto::tail_request::Start::Cursor(cursor)
            }
        };
        let stream = self
            .data_rpc()
            .tail(proto::TailRequest {
                path: path.to_string(),
                start: Some(start),
                follow,
            })
            .await
            .map_err(|status| self.status(status))?
            .into_inner();
        Ok(TailStream {
            inner: stream,
            client: self.clone(),
            path: path.to_string(),
        })
    }
}

/// The messages of one `Tail` call, as domain events.
#[derive(Debug)]
pub struct TailStream {
    inner: Streaming<proto::TailResponse>,
    client: Client,
    path: String,
}

impl TailStream {
    /// The next message, or `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<TailEvent>> {
        let message = loop {
            match self.inner.next().await {
                None => return Ok(None),
                Some(Err(status)) => return Err(self.client.status(status)),
                // A quiet stream's keep-alive for proxies: nothing to show.
                Some(Ok(proto::TailResponse {
                    kind: Some(tail_response::Kind::Event(event)),
                })) if event.kind == proto::TailEventKind::Heartbeat as i32 => {}
                Some(Ok(message)) => break message,
            }
        };
        let protocol = |reason: &str| Error::Protocol {
            path: self.path.clone(),
            reason: reason.to_string(),
        };
        let event = match message.kind {
            Some(tail_response::Kind::Data(data)) => TailEvent::Data {
                data: data.data,
                cursor: TailCursor::from(
                    data.cursor.ok_or_else(|| protocol("data without cursor"))?,
                ),
            },
            Some(tail_response::Kind::Event(event)) => {
                let notice = match proto::TailEventKind::try_from(event.kind) {
                    Ok(proto::TailEventKind::Opened) => TailNotice::Opened,
                    Ok(proto::TailEventKind::Truncated) => TailNotice::Truncated,
                    Ok(proto::TailEventKind::Rotated) => TailNotice::Rotated,
                    Ok(proto::TailEventKind::Gone) => TailNotice::Gone,
                    Ok(proto::TailEventKind::Appeared) => TailNotice::Appeared,
                    Ok(proto::TailEventKind::ResumeLost) => TailNotice::ResumeLost,
                    Ok(proto::TailEventKind::Stopping) => TailNotice::Stopping,
                    _ => return Err(protocol(&format!("unknown tail event {}", event.kind))),
                };
                TailEvent::Notice {
                    notice,
                    cursor: TailCursor::from(
                        event
                            .cursor
                            .ok_or_else(|| protocol("event without cursor"))?,
                    ),
                }
            }
            None => return Err(protocol("empty message")),
        };
        Ok(Some(event))
    }
}

/// What a [`Follower`] hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Followed {
    /// The next bytes of the file, exactly as written, and the position
    /// just after them.
    Data(Bytes, TailCursor),
    /// Something happened to the file (`Opened` is reported only after a
    /// reconnect; the rest always).
    Notice(TailNotice, TailCursor),
    /// The connection was lost, the server is busy or stopping: the
    /// follower waits, then tries again.
    Retrying {
        /// The one-line notice: `PATH: connection lost, retrying in 0.2 s`.
        notice: String,
        /// What happened, for the first notice of an outage.
        reason: Option<String>,
    },
    /// Reconnected; the stream continues at the cursor.
    Resumed(TailCursor),
}

/// Follows one file across reconnects.
#[derive(Debug)]
pub(crate) struct Follower {
    /// The last connection; reconnects go to the same server, the same way.
    client: Client,
    /// False once the connection was lost: the next open reconnects.
    connected: bool,
    path: String,
    lines: u32,
    follow: bool,
    stream: Option<TailStream>,
    /// Where the next byte comes from; `None` before the first message.
    cursor: Option<TailCursor>,
    /// The bytes received just before the cursor, sent with it on a resume.
    recent: RecentWindow,
    /// The failures since the last message, and the waits between tries.
    streak: Streak,
    /// The wait before the next try, once it was announced.
    wait: Option<Duration>,
    /// An outage is under way (its first failure was reported).
    reconnecting: bool,
}

impl Follower {
    /// A follower of `path` over `client` (reconnecting to the same server
    /// when the connection is lost), starting with its last `lines` lines;
    /// `follow` false stops at the end of what the file held at the start.
    pub(crate) fn new(client: Client, path: &str, lines: u32, follow: bool) -> Follower {
        let retry = client.retry_policy();
        Follower {
            client,
            connected: true,
            path: path.to_string(),
            lines,
            follow,
            stream: None,
            cursor: None,
            recent: RecentWindow::default(),
            streak: match follow {
                // Like `tail -F`: as long as it follows, whatever
                // --retry-for says.
                true => RetryPolicy {
                    retry_for: Duration::MAX,
                }
                .streak(),
                false => retry.streak(),
            },
            wait: None,
            reconnecting: false,
        }
    }

    /// The next thing to show, or `None` when a `--no-follow` tail is done.
    /// Errors that reconnecting cannot fix (refused, not found without
    /// follow, a broken protocol) end it; with follow, lost connections and
    /// server restarts never do.
    pub(crate) async fn next(&mut self) -> Result<Option<Followed>> {
        loop {
            if let Some(wait) = self.wait.take() {
                tokio::time::sleep(wait).await;
            }
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => match self.open().await {
                    Ok(stream) => self.stream.insert(stream),
                    Err(err) => {
                        self.connected = false;
                        return self.retry(err).map(Some);
                    }
                },
            };
            match stream.next().await {
                Ok(Some(event)) => {
                    self.check_continuity(&event)?;
                    let resumed = std::mem::take(&mut self.reconnecting);
                    self.streak.progressed();
                    self.cursor = Some(event.cursor());
                    self.recent.observe(&event);
                    match event {
                        TailEvent::Data { data, cursor } => {
                            return Ok(Some(Followed::Data(data, cursor)));
                        }
                        TailEvent::Notice {
                            notice: TailNotice::Stopping,
                            cursor,
                        } => {
                            self.stream = None;
                            self.connected = false;
                            if !self.follow {
                                return Err(Error::Unreachable {
                                    server: self.client.target().name(),
                                    reason: "the server is shutting down".into(),
                                });
                            }
                            // The server is about to go: give it the first
                            // wait of a streak before knocking again.
                            self.reconnecting = true;
                            self.wait = self
                                .streak
                                .after(Cause::Draining, Duration::ZERO)
                                .map(|retry| retry.wait);
                            return Ok(Some(Followed::Notice(TailNotice::Stopping, cursor)));
                        }
                        TailEvent::Notice {
                            notice: TailNotice::Opened,
                            cursor,
                        } => {
                            if resumed {
                                return Ok(Some(Followed::Resumed(cursor)));
                            }
                        }
                        TailEvent::Notice { notice, cursor } => {
                            return Ok(Some(Followed::Notice(notice, cursor)));
                        }
                    }
                }
                Ok(None) if !self.follow => return Ok(None),
                Ok(None) => {
                    // A following stream only ends when the server stops.
                    self.stream = None;
                    return self
                        .retry(Error::Unreachable {
                            server: self.client.target().name(),
                            reason: "the server ended the stream".into(),
                        })
                        .map(Some);
                }
                Err(err) => {
                    self.stream = None;
                    self.connected = false;
                    return self.retry(err).map(Some);
                }
            }
        }
    }

    /// After a failure: the notice of the wait before the next try, or the
    /// error when it is not worth one (refused, not found without follow,
    /// a broken protocol, the policy's time is up).
    fn retry(&mut self, err: Error) -> Result<Followed> {
        let Some(cause) = self.cause(&err) else {
            return Err(err);
        };
        let Some(retry) = self.streak.decide_as(cause, &err) else {
            return Err(err);
        };
        self.wait = Some(retry.wait);
        let first = !std::mem::replace(&mut self.reconnecting, true);
        Ok(Followed::Retrying {
            notice: retry::notice(&self.path, retry),
            reason: first.then(|| err.to_string()),
        })
    }

    /// Connects (again, if need be) and starts a stream after the cursor.
    async fn open(&mut self) -> Result<TailStream> {
        if !self.connected {
            self.client = self.client.reconnect().await?;
            self.connected = true;
        }
        let client = &self.client;
        let start = match self.cursor {
            Some(cursor) => TailStart::Cursor(cursor),
            None => TailStart::LastLines(self.lines),
        };
        client
            .tail_with(&self.path, start, self.recent.fingerprint(), self.follow)
            .await
    }

    /// Why a failure is worth another try: what the retry policy retries
    /// (busy, draining, a lost connection), and while following a stream
    /// that flowed, also one the server broke off.
    fn cause(&self, err: &Error) -> Option<Cause> {
        if self.follow && self.cursor.is_some() {
            Cause::of_flowing(err)
        } else {
            Cause::of(err)
        }
    }

    /// Data must continue exactly at the cursor; anything else is a server
    /// bug, and printing it would lose or repeat bytes.
    fn check_continuity(&self, event: &TailEvent) -> Result<()> {
        let TailEvent::Data { data, cursor } = event else {
            return Ok(());
        };
        let expected = self.cursor.unwrap_or_default();
        let starts_at = cursor.offset.checked_sub(data.len() as u64);
        if self.cursor.is_none()
            || cursor.file != expected.file
            || starts_at != Some(expected.offset)
        {
            return Err(Error::Protocol {
                path: self.path.clone(),
                reason: format!(
                    "data for bytes ending at {} does not continue the cursor at {}",
                    cursor.offset, expected.offset
                ),
            });
        }
        Ok(())
    }
}
