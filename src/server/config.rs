//! What a server serves and how: [`ServerConfig`], the defaults of its
//! limits, and the check that refuses to export the whole filesystem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::server::auth::Tokens;
use crate::server::conn::ConnLimits;
use crate::server::metrics::Metrics;
use crate::server::upload;
use crate::tls::ServerTls;

/// HTTP/2 receive window per stream.
pub(crate) const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/2 receive window per connection.
pub(crate) const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame the server accepts.
pub(crate) const MAX_FRAME_BYTES: u32 = 1024 * 1024;
/// Default for `--grace`: how long running transfers may finish after a
/// shutdown signal.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Default for `--tail-heartbeat`: an idle tail stream carries a heartbeat
/// at least this often, well under the 60 s read timeouts of proxies.
pub(crate) const DEFAULT_TAIL_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default for `--max-transfers`: reads served at once, over all clients.
pub(crate) const DEFAULT_MAX_TRANSFERS: usize = 256;
/// Default for [`ServerConfig::max_tails`]: tail streams open at once.
pub(crate) const DEFAULT_MAX_TAILS: usize = 4096;
/// Default for `--max-connections`: connections open at once, as many as
/// the tail streams the server allows (a follower is a connection each).
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = DEFAULT_MAX_TAILS;
/// Default for `--max-streams-per-connection`: calls open at once on one
/// connection.
pub(crate) const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 256;
/// Default for `--max-request-bytes`: the largest request message.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Default for `--idle-timeout`: a connection without calls for this long
/// is closed.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default for `--handshake-timeout`: a connection must make its first call
/// (TCP, TLS and HTTP/2 handshakes included) within this time.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `--keepalive-interval`: how often an HTTP/2 ping checks that
/// the peer is still there.
pub(crate) const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default for `--keepalive-timeout`: a ping unanswered for this long
/// closes the connection, ending its calls.
pub(crate) const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a server serves and how.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The directory tree to export.
    pub root: PathBuf,
    /// How long transfers may run on after shutdown is asked for.
    pub grace: Duration,
    /// Transfers (reads and uploads) served at once; more get
    /// RESOURCE_EXHAUSTED.
    pub max_transfers: usize,
    /// Tail streams open at once; more get RESOURCE_EXHAUSTED.
    pub max_tails: usize,
    /// Connections open at once; more wait in the listen backlog until one
    /// closes.
    pub max_connections: usize,
    /// Calls open at once on one connection; more get RESOURCE_EXHAUSTED.
    /// HTTP/2 advertises twice this as its stream limit, so a flood of
    /// streams beyond that is refused by the protocol itself.
    pub max_streams_per_connection: usize,
    /// Largest request message in bytes; larger get RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// A connection without calls for this long is closed.
    pub idle_timeout: Duration,
    /// A connection that has not made its first call within this time
    /// (handshakes included) is closed.
    pub handshake_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings.
    pub keepalive_interval: Duration,
    /// A keepalive ping unanswered for this long closes the connection.
    pub keepalive_timeout: Duration,
    /// Serve TLS (and, with a client CA, require client certificates).
    pub tls: Option<ServerTls>,
    /// Require one of these bearer tokens on every call but health.
    pub tokens: Option<Tokens>,
    /// Serve even when the root is `/`.
    pub allow_root_slash: bool,
    /// Accept uploads (`Write`); without it they get PERMISSION_DENIED.
    pub allow_upload: bool,
    /// Largest upload accepted, in bytes; larger gets RESOURCE_EXHAUSTED.
    pub max_upload_bytes: u64,
    /// An idle tail stream carries a heartbeat at least this often.
    pub tail_heartbeat: Duration,
    /// Where the server counts what it does (served by
    /// [`metrics::serve_http`] when `--metrics-listen` is given).
    pub metrics: Metrics,
}

impl ServerConfig {
    /// Defaults for serving `root`.
    pub fn new(root: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            root: root.into(),
            grace: DEFAULT_GRACE,
            max_transfers: DEFAULT_MAX_TRANSFERS,
            max_tails: DEFAULT_MAX_TAILS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            tls: None,
            tokens: None,
            allow_root_slash: false,
            allow_upload: false,
            max_upload_bytes: upload::DEFAULT_MAX_UPLOAD_BYTES,
            tail_heartbeat: DEFAULT_TAIL_HEARTBEAT,
            metrics: Metrics::new(),
        }
    }

    pub(crate) fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            max_calls: self.max_streams_per_connection.max(1),
            max_request_bytes: self.max_request_bytes,
        }
    }
}

/// Refuses a root that is the whole filesystem unless `allow_root_slash`.
pub(crate) fn check_root(root: &Path, allow_root_slash: bool) -> Result<()> {
    let canonical = std::fs::canonicalize(root).map_err(|err| Error::io(root, err))?;
    if canonical == Path::new("/") && !allow_root_slash {
        return Err(Error::Usage(format!(
            "--root {}: that is the whole filesystem (/); refusing to serve it \
             (pass --allow-root-slash if that is really meant)",
            root.display()
        )));
    }
    Ok(())
}
