//! The server's Prometheus metrics and the small HTTP endpoint that serves
//! them (`serve --metrics-listen ADDR`, text format at `/metrics`).
//!
//! Each server owns its [`Metrics`] (a `prometheus` registry of its own, no
//! process-wide recorder), so two servers in one process — tests — keep
//! separate counts. Most values are filled in by [`super::calls`], the
//! layer every call passes through; the file bytes moved are added by the
//! handlers, which alone know where the file data is in the messages.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::error::{Error, Result};

/// The path the metrics are served at.
pub(crate) const METRICS_PATH: &str = "/metrics";
/// Upper bounds (seconds) of the transfer duration histogram's buckets: a
/// small file on a LAN to a large one on a slow link.
pub(crate) const TRANSFER_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
/// How long one metrics request may take before its connection is dropped.
pub(crate) const METRICS_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of descriptors) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Every metric the server exports. Cheap to clone (the handles are shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// File bytes sent in `Read` and `Tail` data, before compression.
    pub(crate) sent_bytes: IntCounter,
    /// File bytes received in uploads, before decompression.
    pub(crate) received_bytes: IntCounter,
    /// gRPC message bytes sent, as on the wire (after compression), all calls.
    pub(crate) wire_sent_bytes: IntCounter,
    /// gRPC message bytes received, as on the wire, all calls.
    pub(crate) wire_received_bytes: IntCounter,
    /// Calls by service, method and final gRPC status code.
    pub(crate) calls: IntCounterVec,
    /// `Read` (and upload) calls in progress.
    pub(crate) transfers_active: IntGauge,
    /// `Tail` calls in progress.
    pub(crate) tails_active: IntGauge,
    /// Calls that ended DATA_LOSS: an upload whose sha256 did not match.
    pub(crate) checksum_failures: IntCounter,
    /// Seconds from request to last byte of transfers that ended OK.
    pub(crate) transfer_seconds: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all at zero, in a registry of its own.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("valid metric name");
            registry
                .register(Box::new(counter.clone()))
                .expect("metric registered once");
            counter
        };
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("valid metric name");
            registry
                .register(Box::new(gauge.clone()))
                .expect("metric registered once");
            gauge
        };
        let sent_bytes = counter(
            "fetchd_sent_bytes_total",
            "File bytes sent to clients (Read and Tail data), before compression.",
        );
        let received_bytes = counter(
            "fetchd_received_bytes_total",
            "File bytes received from clients (upload data), after decompression.",
        );
        let wire_sent_bytes = counter(
            "fetchd_wire_sent_bytes_total",
            "gRPC message bytes sent on all calls, as on the wire (after compression).",
        );
        let wire_received_bytes = counter(
            "fetchd_wire_received_bytes_total",
            "gRPC message bytes received on all calls, as on the wire.",
        );
        let calls = IntCounterVec::new(
            Opts::new(
                "fetchd_calls_total",
                "Finished calls by gRPC service, method and status code.",
            ),
            &["service", "method", "code"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(calls.clone()))
            .expect("metric registered once");
        let transfers_active = gauge(
            "fetchd_transfers_active",
            "Transfers (Read calls, and uploads) in progress.",
        );
        let tails_active = gauge("fetchd_tails_active", "Tail streams open.");
        let checksum_failures = counter(
            "fetchd_checksum_failures_total",
            "Calls that ended DATA_LOSS: uploads whose sha256 did not match.",
        );
        let transfer_seconds = HistogramVec::new(
            HistogramOpts::new(
                "fetchd_transfer_duration_seconds",
                "Seconds from request to last byte of transfers that ended OK.",
            )
            .buckets(TRANSFER_SECONDS_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(transfer_seconds.clone()))
            .expect("metric registered once");
        Metrics {
            registry,
            sent_bytes,
            received_bytes,
            wire_sent_bytes,
            wire_received_bytes,
            calls,
            transfers_active,
            tails_active,
            checksum_failures,
            transfer_seconds,
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only for a malformed family, which the
        // constructors above rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Adds `bytes` of file data received in an upload.
    pub fn add_received_bytes(&self, bytes: u64) {
        self.received_bytes.inc_by(bytes);
    }

    /// The duration histogram of `method`'s transfers.
    pub(crate) fn transfer_histogram(&self, method: &str) -> Histogram {
        self.transfer_seconds.with_label_values(&[method])
    }
}

/// Serves `metrics` over HTTP/1.1 on `listener` until `shutdown`
/// completes: `GET /metrics` answers the text format, anything else 404
/// (or 405 for another method on `/metrics`).
pub(crate) async fn serve_http(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send,
) {
    let accept = async {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: a later accept may
                    // succeed; the gRPC server is not affected.
                    tracing::debug!(%err, "metrics listener: accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(answer(&metrics, &request)) }
                });
                // One request per connection, so the timeout bounds one
                // scrape and never cuts a kept-alive connection mid-answer.
                let connection = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(METRICS_REQUEST_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::debug!(%err, %peer, "metrics connection failed"),
                    Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
                }
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
}

/// Binds the metrics listener, so that `ADDR` with port 0 gets a real port
/// the caller can print.
pub(crate) async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| Error::Serve(format!("cannot listen on {addr} for metrics: {err}")))
}

/// The answer to one HTTP request.
fn answer(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    };
    if request.uri().path() != METRICS_PATH {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("not found; the metrics are at {METRICS_PATH}\n"),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_string(),
        );
    }
    reply(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every exported family is present from the start, with its help text.
    #[test]
    fn all_families_render_from_the_start() {
        let metrics = Metrics::new();
        metrics.calls.with_label_values(&["s", "m", "OK"]).inc();
        metrics.transfer_histogram("Read").observe(0.2);
        let text = metrics.render();
        for name in [
            "fetchd_sent_bytes_total",
            "fetchd_received_bytes_total",
            "fetchd_wire_sent_bytes_total",
            "fetchd_wire_received_bytes_total",
            "fetchd_calls_total",
            "fetchd_transfers_active",
            "fetchd_tails_active",
            "fetchd_checksum_failures_total",
            "fetchd_transfer_duration_seconds",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} in\n{text}"
            );
        }
        assert!(text.contains("fetchd_calls_total{code=\"OK\",method=\"m\",service=\"s\"} 1"));
    }
}
