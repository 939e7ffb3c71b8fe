//! How a connection is made: dialling (TLS in the dialer for `https://`),
//! the HTTP/2 settings, one timed round trip, and receive windows sized from
//! it, so that a far server is not held to a near link's windows.

use std::time::Duration;

use tonic::transport::Endpoint;

use crate::client::connector::{PlainDialer, TlsDialer, TlsFailure};
use crate::client::target::Target;
use crate::error::{Error, Result};
use crate::tls::ClientTls;

/// How long connecting may take before the server counts as unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 receive window per stream on a near link (round trip up to
/// [`NEAR_RTT`]).
pub(crate) const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/2 receive window per connection on a near link.
pub(crate) const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Round trips up to this get the near windows: 8 MiB per stream still
/// allows 1.6 GB/s at 5 ms, and a loaded machine's loopback stays below it.
pub const NEAR_RTT: Duration = Duration::from_millis(5);
/// The rate the windows of a far link are sized for (10 Gbit/s): one
/// stream may have this rate times the round trip in flight.
pub(crate) const WINDOW_TARGET_BYTES_PER_SEC: f64 = 1.25e9;
/// Largest receive window per stream on a far link.
pub(crate) const MAX_STREAM_WINDOW_BYTES: u32 = 256 * 1024 * 1024;
/// Largest HTTP/2 frame the client accepts (the server's data frames).
pub(crate) const MAX_FRAME_BYTES: u32 = 1024 * 1024;
/// How often the client pings a server while calls are open, so that a
/// server that vanished (rather than closed the connection) is noticed.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// An unanswered ping this old ends the connection.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 receive windows of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Bytes one stream may have in flight.
    pub stream: u32,
    /// Bytes all streams of the connection may have in flight.
    pub connection: u32,
}

impl Windows {
    /// The windows of a near link.
    pub const NEAR: Windows = Windows {
        stream: STREAM_WINDOW_BYTES,
        connection: CONNECTION_WINDOW_BYTES,
    };

    /// Windows for a link with round trip `rtt`: the near ones up to
    /// [`NEAR_RTT`]; beyond, [`WINDOW_TARGET_BYTES_PER_SEC`] times the
    /// round trip per stream (at most [`MAX_STREAM_WINDOW_BYTES`]) and twice
    /// that per connection, so that a bulk download's streams share it.
    pub fn for_rtt(rtt: Duration) -> Windows {
        if rtt <= NEAR_RTT {
            return Windows::NEAR;
        }
        let wanted = rtt.as_secs_f64() * WINDOW_TARGET_BYTES_PER_SEC;
        let stream = (wanted as u64).clamp(
            u64::from(STREAM_WINDOW_BYTES),
            u64::from(MAX_STREAM_WINDOW_BYTES),
        ) as u32;
        Windows {
            stream,
            connection: stream.saturating_mul(2),
        }
    }
}

/// Opens a connection to `target` with `windows`, doing TLS in the dialer
/// when `tls` is given.
pub(crate) async fn dial(
    target: &Target,
    tls: Option<&ClientTls>,
    tls_failure: &TlsFailure,
    windows: Windows,
) -> Result<tonic::transport::Channel> {
    // For https:// the dialer does TLS (see `connector`): tonic is given
    // the address as plain http so that it adds no TLS of its own.
    let server = target.url();
    let endpoint = Endpoint::from_shared(server.replacen("https://", "http://", 1))
        .map_err(|err| Error::Usage(format!("--server {server}: not a valid URL ({err})")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .initial_stream_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .max_frame_size(MAX_FRAME_BYTES);
    let connected = match tls {
        Some(tls) => {
            endpoint
                .connect_with_connector(TlsDialer::new(tls.clone(), tls_failure.clone()))
                .await
        }
        None => {
            endpoint
                .connect_with_connector(PlainDialer::new(tls_failure.clone()))
                .await
        }
    };
    connected.map_err(|err| match crate::tls::diagnose(&err) {
        Some(reason) => Error::Tls {
            server: target.name(),
            reason,
        },
        None => Error::Unreachable {
            server: target.name(),
            reason: first_connect_reason(&err),
        },
    })
}

/// One round trip to the server, timed with a health check (which needs
/// no token); `None` when the check fails or times out, which leaves the
/// judgement to the calls that follow.
pub(crate) async fn round_trip(channel: &tonic::transport::Channel) -> Option<Duration> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(channel.clone());
    let started = std::time::Instant::now();
    let check = health.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(CONNECT_TIMEOUT, check).await {
        Ok(Ok(_)) => Some(started.elapsed()),
        // An answer (a server without health, say) is a round trip too.
        Ok(Err(status))
            if !matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown
            ) =>
        {
            Some(started.elapsed())
        }
        _ => None,
    }
}

/// Why the first connection failed, in words that say what to do: a
/// refused connection means nothing listens at that address.
fn first_connect_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let reason = error_chain(err);
    if reason.contains("connection refused") {
        format!("{reason}: nothing is listening there (is `fetchd serve` running? check --server)")
    } else {
        reason
    }
}

/// The innermost description of an error, e.g. `Connection refused`.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        reason = inner.to_string();
        source = inner.source();
    }
    match reason.find(" (os error") {
        Some(end) => reason[..end].to_lowercase(),
        None => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Near links keep the small windows; far ones get a window per stream
    /// of the target rate times the round trip, capped.
    #[test]
    fn windows_follow_the_round_trip() {
        assert_eq!(Windows::for_rtt(Duration::from_micros(100)), Windows::NEAR);
        assert_eq!(Windows::for_rtt(NEAR_RTT), Windows::NEAR);
        let at_50 = Windows::for_rtt(Duration::from_millis(50));
        assert_eq!(at_50.stream, 62_500_000);
        assert_eq!(at_50.connection, 125_000_000);
        let at_100 = Windows::for_rtt(Duration::from_millis(100));
        assert_eq!(at_100.stream, 125_000_000);
        let far = Windows::for_rtt(Duration::from_secs(2));
        assert_eq!(far.stream, MAX_STREAM_WINDOW_BYTES);
        assert!(
            far.connection <= i32::MAX as u32,
            "h2 allows at most 2^31-1"
        );
        let just_past = Windows::for_rtt(NEAR_RTT + Duration::from_micros(1));
        assert_eq!(
            just_past.stream, STREAM_WINDOW_BYTES,
            "never below the near window"
        );
    }
}
