//! The client's TLS connections: dial TCP, run the rustls handshake, insist
//! on HTTP/2, and remember the TLS error that ended a connection.
//!
//! Why not tonic's own client TLS: with TLS 1.3 the client's handshake is
//! done before the server has checked the client's certificate, so a server
//! that wants one (or refuses the one it got) answers with an alert after
//! the handshake. Under tonic that alert ends the HTTP/2 connection while
//! the first call is being written, and the call sees only "connection
//! closed" (or the alert is lost to the reset that writing into a closed
//! connection causes). So the dialer reads first: right after the
//! handshake it waits (briefly) for the server's first bytes, its HTTP/2
//! SETTINGS, which a server sends only once it accepted the client; an
//! alert there fails the connect with a message that says what is wrong.
//! The bytes read are handed on to HTTP/2 untouched, and [`Recorded`] keeps
//! any later TLS error for the calls it ends.
//!
//! Plain `http://` connections go through [`PlainDialer`], which waits for
//! nothing (a proxy speaks only after the client's preface) and looks at
//! the first bytes the connection reads: a TLS record, or a connection
//! closed before any byte (what a TLS server does with an HTTP/2 preface),
//! keeps a hint to use `https://` for the calls that fail that way, where
//! HTTP/2 alone would say "broken pipe" or "frame size error".

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::ClientTls;

/// How long the dialer waits for the server to speak first after the TLS
/// handshake (an HTTP/2 server sends its SETTINGS at once; one that waits
/// for the client costs a connection this much, once).
pub(crate) const FIRST_BYTES_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most bytes read ahead of HTTP/2 (the server's SETTINGS frame and
/// anything that came with it).
const READ_AHEAD_BYTES: usize = 16 * 1024;

/// The TLS error (as a sentence) that last ended a connection, shared by a
/// client and the connections it makes.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsFailure(Arc<Mutex<Option<String>>>);

impl TlsFailure {
    /// What went wrong, if a TLS error ended the last connection.
    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, reason: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// Keeps what `err` says about TLS, if anything.
    fn record(&self, err: &io::Error) {
        if let Some(reason) = crate::tls::diagnose(err) {
            self.set(Some(reason));
        }
    }
}

/// A tower service making TLS connections for tonic's channel.
#[derive(Clone, Debug)]
pub(crate) struct TlsDialer {
    tls: ClientTls,
    failure: TlsFailure,
}

impl TlsDialer {
    pub(crate) fn new(tls: ClientTls, failure: TlsFailure) -> TlsDialer {
        TlsDialer { tls, failure }
    }
}

type Dialing<S> = Pin<Box<dyn Future<Output = io::Result<TokioIo<Recorded<S>>>> + Send>>;

/// The host (without IPv6 brackets) and port of `uri`.
fn host_and_port(uri: &Uri, default_port: u16) -> io::Result<(String, u16)> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in --server"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, uri.port_u16().unwrap_or(default_port)))
}

/// A tower service making plain TCP connections for tonic's channel,
/// noticing a server that answers with TLS.
#[derive(Clone, Debug)]
pub(crate) struct PlainDialer {
    failure: TlsFailure,
}

impl PlainDialer {
    pub(crate) fn new(failure: TlsFailure) -> PlainDialer {
        PlainDialer { failure }
    }
}

impl tower::Service<Uri> for PlainDialer {
    type Response = TokioIo<Recorded<TcpStream>>;
    type Error = io::Error;
    type Future = Dialing<TcpStream>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Dialing<TcpStream> {
        let failure = self.failure.clone();
        Box::pin(async move {
            let (host, port) = host_and_port(&uri, 80)?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            // Nothing is awaited here: a proxy (nginx, haproxy) speaks only
            // after the client's preface. The first bytes read tell TLS
            // apart ([`Recorded`]); a hint from an earlier connection stays
            // until they show HTTP/2 (tonic may dial again in the background
            // before the failed call's error is read).
            Ok(TokioIo::new(Recorded {
                inner: tcp,
                ahead: Bytes::new(),
                failure,
                sniff: true,
            }))
        })
    }
}

impl tower::Service<Uri> for TlsDialer {
    type Response = TokioIo<Recorded<TlsStream<TcpStream>>>;
    type Error = io::Error;
    type Future = Dialing<TlsStream<TcpStream>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Dialing<TlsStream<TcpStream>> {
        let config = self.tls.config();
        let failure = self.failure.clone();
        Box::pin(async move {
            let (host, port) = host_and_port(&uri, 443)?;
            let name = ServerName::try_from(host.clone()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{host} is not a valid server name for TLS"),
                )
            })?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let mut stream = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .inspect_err(|err| failure.record(err))?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(io::Error::other(
                    "HTTP/2 was not negotiated: the server does not offer HTTP/2 over TLS (ALPN h2)",
                ));
            }
            let mut ahead = vec![0u8; READ_AHEAD_BYTES];
            let read = match tokio::time::timeout(FIRST_BYTES_WAIT, stream.read(&mut ahead)).await {
                Ok(Ok(0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection right after the TLS handshake",
                    ));
                }
                Ok(Ok(read)) => read,
                Ok(Err(err)) => {
                    failure.record(&err);
                    return Err(err);
                }
                // The server waits for us to speak first: nothing to check.
                Err(_) => 0,
            };
            ahead.truncate(read);
            failure.set(None);
            Ok(TokioIo::new(Recorded {
                inner: stream,
                ahead: Bytes::from(ahead),
                failure,
                sniff: false,
            }))
        })
    }
}

/// A connection that first hands out the bytes the dialer read ahead, and
/// keeps the TLS error ending it (or, plain, notices TLS from the server).
#[derive(Debug)]
pub(crate) struct Recorded<S> {
    inner: S,
    ahead: Bytes,
    failure: TlsFailure,
    /// Plain connection whose first bytes are still to be looked at.
    sniff: bool,
}

/// True when `bytes` start like a TLS record (handshake or alert, TLS
/// 1.0-1.3), which no HTTP/2 server sends.
fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, 0x00..=0x04, ..])
}

impl<S> Recorded<S> {
    fn note<T>(&mut self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(err)) = &result {
            // A write that fails before the server sent a byte: the
            // connection was closed or reset unanswered, as a read would
            // have seen had one come first.
            if self.sniff {
                self.closed_unanswered();
            }
            self.failure.record(err);
        }
        result
    }

    /// A plain connection ended before the server sent a single byte: what
    /// a TLS server does with an HTTP/2 preface it cannot parse.
    fn closed_unanswered(&mut self) {
        self.sniff = false;
        self.failure.set(Some(
            "the server closed the connection without answering, as a TLS server does; \
             if it serves TLS, connect to it with https://"
                .into(),
        ));
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.sniff {
            match &result {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    this.sniff = false;
                    if looks_like_tls(&buf.filled()[before..]) {
                        this.failure.set(Some(
                            "the server answered with TLS; connect to it with https://".into(),
                        ));
                    } else {
                        this.failure.set(None);
                    }
                }
                // Closed or reset before a single byte: what a TLS server
                // does with an HTTP/2 preface it cannot parse.
                Poll::Ready(_) => this.closed_unanswered(),
                Poll::Pending => {}
            }
        }
        this.note(result)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note(result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.note(result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.note(result)
    }
}
