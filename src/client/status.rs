//! How the client reads a status: a server's answer ([`Error::Remote`],
//! with its `fetchd-reason`), a busy or draining server's request to try
//! again ([`Error::TryLater`], with its pushback), a TLS failure, or a
//! broken transport ([`Error::Unreachable`]).

use std::time::Duration;

use tonic::{Code, Status};

use crate::error::{Error, REASON_KEY, RETRY_PUSHBACK_KEY};

impl Error {
    /// Turns a status received from `server` into an error. Transport
    /// failures become [`Error::Unreachable`]; everything else keeps the
    /// server's message, which already names the path (the command line
    /// adds its hints when it prints the error, `cli::hint`).
    pub fn from_status(status: Status, server: &str) -> Error {
        let message = status.message().to_string();
        if let Some(reason) = tls_reason(&status) {
            return Error::Tls {
                server: server.to_string(),
                reason,
            };
        }
        if let Some(pushback) = pushback(&status) {
            return Error::TryLater {
                code: status.code(),
                message,
                pushback,
            };
        }
        match status.code() {
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                if is_transport_failure(&status) =>
            {
                Error::Unreachable {
                    server: server.to_string(),
                    reason: transport_reason(&status),
                }
            }
            code => Error::Remote {
                code,
                message,
                reason: status
                    .metadata()
                    .get(REASON_KEY)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string),
            },
        }
    }
}

/// The pushback a status carries: a non-negative number of milliseconds
/// (a negative or unreadable one means "do not retry", as in gRPC).
fn pushback(status: &Status) -> Option<Duration> {
    let value = status.metadata().get(RETRY_PUSHBACK_KEY)?.to_str().ok()?;
    let millis: u64 = value.trim().parse().ok()?;
    Some(Duration::from_millis(millis.min(60_000)))
}

/// True when a status describes a broken transport rather than an answer.
fn is_transport_failure(status: &Status) -> bool {
    use std::error::Error as _;
    let message = status.message();
    // A status naming its case (`fetchd-reason`) is the server's own answer,
    // whatever its code (UNAVAILABLE `store-unavailable`: its store failed).
    if status.metadata().get(REASON_KEY).is_some() {
        return false;
    }
    status.code() == Code::Unavailable
        || status.source().is_some_and(|source| {
            source.downcast_ref::<tonic::transport::Error>().is_some()
                || source.downcast_ref::<h2::Error>().is_some()
                || source.downcast_ref::<hyper::Error>().is_some()
        })
        || message.contains("transport")
        || message.contains("h2 protocol error")
        // hyper's words for a call whose connection went away under it.
        || message.contains("connection closed")
        || message.contains("connection reset")
        // A `Read` answer that stopped without its status (raw_read).
        || message.contains("cut short")
}

/// What went wrong with TLS, when the status carries a TLS failure.
fn tls_reason(status: &Status) -> Option<String> {
    use std::error::Error as _;
    status.source().and_then(crate::tls::diagnose)
}

/// The most specific reason a transport failure gives.
fn transport_reason(status: &Status) -> String {
    use std::error::Error as _;
    let mut reason = status.message().to_string();
    let mut source = status.source();
    while let Some(err) = source {
        reason = err.to_string();
        source = err.source();
    }
    if reason.is_empty() {
        "the connection was lost".to_string()
    } else {
        reason
    }
}
