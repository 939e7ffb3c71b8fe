//! The server: [`run`] takes a bound listener, a configuration and a
//! shutdown future, and serves the local tree until the future completes
//! (then drains within the grace period); [`serve`] does the same for any
//! [`Store`].
//!
//! - [`config`]: what a server serves and how ([`ServerConfig`]), and the
//!   defaults of its limits.
//! - [`conn`]: accepted connections and their limits (handshake and idle
//!   timeouts, calls per connection, request message size).
//! - [`auth`]: the token file and the layer that checks every call's token.
//! - [`calls`]: the layer that observes every call: metrics by method and
//!   status, the one log event per call.
//! - [`health`]: health `Watch` streams that end at shutdown, so they do
//!   not hold the drain for the whole grace period.
//! - [`metrics`]: the Prometheus metrics and their HTTP endpoint.
//! - [`service`]: the gRPC service (the only place that sees wire types).
//! - [`read`]: the chunk reader behind `Read` and `Stat`'s digest.
//! - [`raw_read`]: `Read` answered below tonic's codec, so file data is
//!   not copied into an encode buffer.
//! - [`digests`]: whole-file digests remembered by file version.
//! - [`delta`]: file versions described as chunks (kept beside their
//!   digests) and byte ranges read from one pinned version, behind
//!   `Manifest` and `ReadRanges`.
//! - [`upload`]: the writer behind `Write`: hash, verify, commit the
//!   version the store staged.
//!
//! The tree itself, and following a file for `tail`, are the store's
//! ([`crate::store`]).

pub(crate) mod auth;
pub(crate) mod calls;
pub(crate) mod config;
pub(crate) mod conn;
pub(crate) mod delta;
pub(crate) mod digests;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod raw_read;
pub(crate) mod read;
pub(crate) mod service;
pub(crate) mod upload;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Server, ServerTlsConfig};

use crate::error::{Error, Result};
use crate::proto;
use crate::store::Store;
use crate::store::local::LocalStore;
use auth::{AuthLayer, Tokens};
use calls::{CallLayer, KnownMethods};
pub(crate) use config::*;
use conn::{ConnLayer, Incoming};
use raw_read::RawReadService;
use service::FetchdService;

/// Warns when a server others can reach runs without TLS or tokens.
fn warn_if_exposed(addr: SocketAddr, tls: bool, tokens: bool) {
    if addr.ip().is_loopback() {
        return;
    }
    if !tls {
        tracing::warn!(
            %addr,
            "listening on a non-loopback address without TLS: file contents and tokens \
             cross the network in clear text (use --tls-cert and --tls-key)"
        );
    }
    if !tokens {
        tracing::warn!(
            %addr,
            "listening on a non-loopback address without --token-file: anyone who can \
             reach this port can read every file under the root"
        );
    }
}

/// Serves the local tree `config.root` on `listener` until `shutdown`
/// completes (see [`serve`]).
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    check_root(&config.root, config.allow_root_slash)?;
    let store = LocalStore::open(&config.root).map_err(|err| Error::io(&config.root, err))?;
    serve(listener, Arc::new(store), config, shutdown).await
}

/// Serves `store` on `listener` until `shutdown` completes; then
/// health turns NOT_SERVING, no new connections are accepted, and running
/// calls get `config.grace` to finish before the server returns.
///
/// With `config.allow_upload`, temporary upload files that an earlier run
/// left behind (a crash, a kill) are removed before the first call is
/// served ([`Store::sweep`]).
pub(crate) async fn serve<S: Store>(
    listener: TcpListener,
    store: Arc<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    tracing::info!(
        root = %store.describe(),
        tls = config.tls.is_some(),
        client_certificates = config.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
        tokens = config.tokens.as_ref().map_or(0, Tokens::len),
        "serving"
    );
    if let Ok(addr) = listener.local_addr() {
        warn_if_exposed(addr, config.tls.is_some(), config.tokens.is_some());
    }
    if config.allow_upload {
        sweep_uploads(Arc::clone(&store)).await;
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::fetchd_server::FetchdServer<FetchdService<S>>>()
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
    let service = FetchdService::new(store, config.max_transfers)
        .with_tails(config.max_tails.max(1), stopping.clone())
        .with_tail_heartbeat(config.tail_heartbeat)
        .with_uploads(config.allow_upload.then_some(config.max_upload_bytes));
    let fetchd = RawReadService::new(
        proto::fetchd_server::FetchdServer::new(service.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Zstd)
            // A backstop: the connection layer refuses larger messages
            // first, with RESOURCE_EXHAUSTED.
            .max_decoding_message_size(config.max_request_bytes),
        service,
    );
    let methods = KnownMethods::from_descriptor_sets(&[
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);

    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    });

    let limits = config.conn_limits();
    let incoming = Incoming::new(listener, limits, config.max_connections);
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let mut tls_config = ServerTlsConfig::new()
            .identity(tls.identity.clone())
            .timeout(config.handshake_timeout);
        if let Some(ca) = &tls.client_ca {
            tls_config = tls_config.client_ca_root(ca.clone());
        }
        builder = builder
            .tls_config(tls_config)
            .map_err(|err| Error::Serve(format!("TLS: {err}")))?;
    }
    let h2_streams = u32::try_from(limits.max_calls.saturating_mul(2)).unwrap_or(u32::MAX);
    let serve = builder
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .max_concurrent_streams(h2_streams)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        // Outermost first: observe the call (metrics, its log event), count
        // it on its connection, then check its token; every route
        // (reflection too) is behind all three.
        .layer(CallLayer::new(config.metrics.clone(), methods))
        .layer(ConnLayer::new(limits, stopping.clone()))
        .layer(AuthLayer::new(config.tokens.clone()))
        .add_service(health::EndWatches::new(health_service, stopping.clone()))
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
                    .set_not_serving::<proto::fetchd_server::FetchdServer<FetchdService<S>>>()
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
async fn sweep_uploads<S: Store>(store: Arc<S>) {
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || store.sweep()).await {
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
