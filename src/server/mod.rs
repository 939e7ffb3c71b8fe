//! The server: `run` takes a bound listener, a configuration and a shutdown
//! future, and serves until the future completes (then drains within the
//! grace period).
//!
//! - [`service`]: the gRPC service (the only place that sees wire types).
//! - [`read`]: the chunk reader behind `Read` and `Stat`'s digest.
//! - [`read_route`]: `Read` answered below tonic's codec, so file data is
//!   not copied into an encode buffer.
//! - [`digests`]: whole-file digests remembered by file version.
//! - [`upload`]: the writer behind `Write`: temporary file, hash, verify,
//!   atomic placement, start-up sweep of leftovers.
//! - [`tail`]: the tail streams, one task per client.
//! - [`watches`]: folder watches shared by every tail (one inotify watch per
//!   folder).

pub mod digests;
pub mod read;
pub mod read_route;
pub mod service;
pub mod tail;
pub mod upload;
pub mod watches;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::error::{Error, Result};
use crate::proto;
use crate::sandbox::Root;
use read_route::ReadRoute;
use service::FetchdService;

/// HTTP/2 receive window per stream.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/2 receive window per connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame the server accepts.
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;
/// Default for `--grace`: how long running transfers may finish after a
/// shutdown signal.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Default for `--max-transfers`: reads served at once, over all clients.
pub const DEFAULT_MAX_TRANSFERS: usize = 256;
/// Default for [`ServerConfig::max_tails`]: tail streams open at once.
pub const DEFAULT_MAX_TAILS: usize = 4096;

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
    /// Accept uploads (`Write`); without it they get PERMISSION_DENIED.
    pub allow_upload: bool,
    /// Largest upload accepted, in bytes; larger gets RESOURCE_EXHAUSTED.
    pub max_upload_bytes: u64,
}

impl ServerConfig {
    /// Defaults for serving `root`.
    pub fn new(root: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            root: root.into(),
            grace: DEFAULT_GRACE,
            max_transfers: DEFAULT_MAX_TRANSFERS,
            max_tails: DEFAULT_MAX_TAILS,
            allow_upload: false,
            max_upload_bytes: upload::DEFAULT_MAX_UPLOAD_BYTES,
        }
    }
}

/// Serves `config.root` on `listener` until `shutdown` completes; then
/// health turns NOT_SERVING, no new connections are accepted, and running
/// calls get `config.grace` to finish before the server returns.
///
/// With `config.allow_upload`, temporary upload files that an earlier run
/// left behind (a crash, a kill) are removed before the first call is
/// served ([`upload::sweep_leftovers`]).
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let root = Root::open(&config.root).map_err(|err| Error::io(&config.root, err))?;
    let root = Arc::new(root);
    tracing::info!(root = %root.host_path().display(), "serving");
    if config.allow_upload {
        sweep_uploads(Arc::clone(&root)).await;
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::fetchd_server::FetchdServer<FetchdService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| Error::Serve(format!("reflection: {err}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|err| Error::Serve(format!("reflection: {err}")))?;

    raise_open_file_limit();
    let stopping = CancellationToken::new();
    let service = FetchdService::new(Arc::clone(&root), config.max_transfers)
        .with_tails(config.max_tails.max(1), stopping.clone())
        .with_uploads(config.allow_upload.then_some(config.max_upload_bytes));
    let fetchd = ReadRoute::new(
        proto::fetchd_server::FetchdServer::new(service.clone()),
        service,
    );

    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    });

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(fetchd)
        .serve_with_incoming_shutdown(incoming, {
            let stopping = stopping.clone();
            let health = health.clone();
            async move {
                stopping.cancelled().await;
                tracing::info!("shutting down: no new connections, draining transfers");
                health
                    .set_not_serving::<proto::fetchd_server::FetchdServer<FetchdService>>()
                    .await;
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            }
        });

    let grace = config.grace;
    tokio::select! {
        served = serve => served.map_err(|err| Error::Serve(err.to_string())),
        () = async {
            stopping.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "grace period over; ending the remaining transfers");
            Ok(())
        }
    }
}

/// Removes the temporary files of uploads an earlier run did not finish.
/// A failure is logged, not fatal: leftovers are hidden files that take
/// space, nothing worse.
async fn sweep_uploads(root: Arc<Root>) {
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || upload::sweep_leftovers(&root)).await {
        Ok(Ok(swept)) => {
            if swept.truncated {
                tracing::warn!(
                    entries = swept.visited,
                    "the sweep for unfinished uploads stopped at its entry limit"
                );
            }
            tracing::debug!(removed = swept.removed, entries = swept.visited, elapsed = ?started.elapsed(), "swept unfinished uploads");
        }
        Ok(Err(err)) => tracing::warn!(%err, "cannot sweep unfinished uploads"),
        Err(err) => tracing::warn!(%err, "the sweep for unfinished uploads failed"),
    }
}

/// Raises the soft limit on open files to the hard limit: every tail stream
/// holds a descriptor, and a thousand tails would pass the usual soft 1024.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(%err, "cannot raise the open-file limit");
        }
    }
}
