//! The client's one retry policy: which failures are tried again, for how
//! long, how long to wait between tries, and the notice a user sees.
//!
//! Tried again: a server that is busy at one of its limits or draining for a
//! restart (its status carries `grpc-retry-pushback-ms`, see
//! [`crate::error::RETRY_PUSHBACK_KEY`]), and a connection that dropped
//! after it had been made (UNAVAILABLE, a reset, a stream cut short). Never
//! tried again: every answer the server gave on purpose (NOT_FOUND,
//! PERMISSION_DENIED, INVALID_ARGUMENT, UNAUTHENTICATED, DATA_LOSS, a full
//! disk, ...) and TLS failures. A server that refuses the very first
//! connection is never retried either: that happens in
//! [`Client::connect`](crate::client::Client::connect), before any policy
//! applies.
//!
//! Waits grow exponentially from [`RETRY_BACKOFF_INITIAL`] to at most
//! [`RETRY_BACKOFF_MAX`], each with jitter (a random point in its upper
//! half), so that a crowd of clients refused at once does not come back at
//! once. A *streak* is the run of failures since the last progress; it may
//! last [`RetryPolicy::retry_for`], then the last failure is the verb's.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::error::Error;

/// Default for `--retry-for`: how long a streak of retries may last.
pub(crate) const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(30);
/// The first wait of a streak.
pub(crate) const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// The longest wait between two tries.
pub(crate) const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long the client keeps trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long a streak of failures may last; zero turns retries off.
    pub retry_for: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            retry_for: DEFAULT_RETRY_FOR,
        }
    }
}

impl RetryPolicy {
    /// No retries at all (`--retry-for 0`).
    pub const OFF: RetryPolicy = RetryPolicy {
        retry_for: Duration::ZERO,
    };

    /// A new streak under this policy.
    pub fn streak(self) -> Streak {
        Streak {
            policy: self,
            since: None,
            tries: 0,
        }
    }
}

/// Why a failure may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The server is at one of its limits (RESOURCE_EXHAUSTED with a
    /// pushback).
    Busy,
    /// The server is draining for a shutdown or restart.
    Draining,
    /// The connection dropped, or the server went away, after the client
    /// had connected.
    Dropped,
    /// The server's object store failed a request (UNAVAILABLE, reason
    /// `store-unavailable`): the store is down or slow.
    Store,
}

impl Cause {
    /// The cause of `err` when it is worth another try, else `None`.
    pub fn of(err: &Error) -> Option<Cause> {
        match err {
            Error::TryLater {
                code: Code::ResourceExhausted,
                ..
            } => Some(Cause::Busy),
            Error::TryLater { .. } => Some(Cause::Draining),
            Error::Unreachable { .. } => Some(Cause::Dropped),
            Error::Remote {
                code: Code::Unavailable,
                reason: Some(reason),
                ..
            } if reason == "store-unavailable" => Some(Cause::Store),
            // An UNAVAILABLE the server (or a proxy before it) chose to
            // send: the gRPC code for "try again".
            Error::Remote {
                code: Code::Unavailable,
                ..
            } => Some(Cause::Dropped),
            _ => None,
        }
    }

    /// The cause of a failure of a stream that had been flowing (a tail
    /// with a cursor): besides [`Cause::of`], a stream the server or a proxy
    /// broke off (ABORTED, CANCELLED, UNKNOWN, INTERNAL) counts as dropped,
    /// since asking again from the cursor cures it.
    pub fn of_flowing(err: &Error) -> Option<Cause> {
        Cause::of(err).or(match err {
            Error::Remote {
                code: Code::Aborted | Code::Cancelled | Code::Unknown | Code::Internal,
                ..
            } => Some(Cause::Dropped),
            _ => None,
        })
    }

    /// How the notice names it.
    pub fn describe(self) -> &'static str {
        match self {
            Cause::Busy => "server busy",
            Cause::Draining => "server shutting down",
            Cause::Dropped => "connection lost",
            Cause::Store => "the server's object store failed",
        }
    }
}

/// One run of failures with no progress in between.
#[derive(Clone, Debug)]
pub struct Streak {
    policy: RetryPolicy,
    /// When the first failure of the streak came; `None` before any.
    since: Option<Instant>,
    /// Failures in the streak so far.
    tries: u32,
}

/// What [`Streak::decide`] says about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Why it may be tried again.
    pub cause: Cause,
    /// How long to wait first.
    pub wait: Duration,
}

impl Streak {
    /// Something was gained (bytes, answers): the next failure starts a new
    /// streak with the shortest wait.
    pub fn progressed(&mut self) {
        self.since = None;
        self.tries = 0;
    }

    /// The wait before trying `err`'s call again, or `None` to give up: the
    /// failure is not retryable, retries are off, or the streak has lasted
    /// its time.
    pub fn decide(&mut self, err: &Error) -> Option<Retry> {
        let cause = Cause::of(err)?;
        self.decide_as(cause, err)
    }

    /// Like [`decide`](Self::decide), for a failure the caller has already
    /// judged worth a retry for `cause` (a flowing tail's broken stream):
    /// the wait honours the pushback `err` carries.
    pub fn decide_as(&mut self, cause: Cause, err: &Error) -> Option<Retry> {
        let pushback = match err {
            Error::TryLater { pushback, .. } => *pushback,
            _ => Duration::ZERO,
        };
        self.after(cause, pushback)
    }

    /// The wait before another try after a failure of `cause` (the server
    /// asked for at least `pushback`), or `None` when the streak's time is
    /// up.
    pub fn after(&mut self, cause: Cause, pushback: Duration) -> Option<Retry> {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        let left = self
            .policy
            .retry_for
            .checked_sub(now.duration_since(since))?;
        if left.is_zero() {
            return None;
        }
        let backoff = RETRY_BACKOFF_INITIAL
            .saturating_mul(1 << self.tries.min(16))
            .min(RETRY_BACKOFF_MAX);
        self.tries = self.tries.saturating_add(1);
        // Jitter: a random point in the upper half of the backoff.
        let half = backoff / 2;
        let jittered = half + half.mul_f64(fastrand::f64());
        Some(Retry {
            cause,
            // Never past the streak's end: the last try comes just before.
            wait: jittered.max(pushback).min(left),
        })
    }

    /// Decides on `err`; when it may be retried, tells `notify` (one notice
    /// per retry: `PATH: server busy, retrying in 2.0 s`) and waits. `true`
    /// means try again now.
    pub async fn wait(
        &mut self,
        subject: &str,
        err: &Error,
        notify: &(dyn Fn(&str) + Sync),
    ) -> bool {
        let Some(retry) = self.decide(err) else {
            return false;
        };
        notify(&notice(subject, retry));
        tracing::debug!(%err, ?retry, "retrying");
        tokio::time::sleep(retry.wait).await;
        true
    }
}

/// The notice of one retry: `PATH: server busy, retrying in 2.0 s`.
pub(crate) fn notice(subject: &str, retry: Retry) -> String {
    format!(
        "{subject}: {}, retrying in {:.1} s",
        retry.cause.describe(),
        retry.wait.as_secs_f64()
    )
}

/// What a failed read says about the bytes a client received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterRead {
    /// The file changed on the server, or is now shorter than what was
    /// received: start again from byte 0 (why, in words).
    Restart(&'static str),
    /// What arrived is wrong (DATA_LOSS): throw it away.
    Discard,
    /// Keep it for a later resume.
    Keep,
}

impl AfterRead {
    /// The verdict on a read that failed with `err`.
    pub(crate) fn of(err: &Error) -> AfterRead {
        match err.code() {
            Code::Aborted => AfterRead::Restart("the file changed on the server while it was read"),
            Code::OutOfRange => {
                AfterRead::Restart("the server's file is now shorter than the partial download")
            }
            Code::DataLoss => AfterRead::Discard,
            _ => AfterRead::Keep,
        }
    }
}

/// True when the file changed on the server while it was read (ABORTED):
/// a fresh read of it gets one consistent version.
pub(crate) fn changed_while_read(err: &Error) -> bool {
    err.code() == Code::Aborted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> Error {
        Error::TryLater {
            code: Code::ResourceExhausted,
            message: "server busy".into(),
            pushback: Duration::from_millis(200),
        }
    }

    fn dropped() -> Error {
        Error::Unreachable {
            server: "http://127.0.0.1:1".into(),
            reason: "connection reset".into(),
        }
    }

    /// Busy, draining and dropped are retried; answers given on purpose
    /// never are, whatever their code.
    #[test]
    fn only_transient_failures_are_retried() {
        let mut streak = RetryPolicy::default().streak();
        assert_eq!(streak.decide(&busy()).map(|r| r.cause), Some(Cause::Busy));
        let draining = Error::TryLater {
            code: Code::Unavailable,
            message: "draining".into(),
            pushback: Duration::ZERO,
        };
        assert_eq!(
            streak.decide(&draining).map(|r| r.cause),
            Some(Cause::Draining)
        );
        assert_eq!(
            streak.decide(&dropped()).map(|r| r.cause),
            Some(Cause::Dropped)
        );
        let never = [
            Error::NotFound { path: "a".into() },
            Error::OutsideRoot { path: "a".into() },
            Error::Unauthenticated,
            Error::NoSpace { path: "a".into() },
            Error::Remote {
                code: Code::ResourceExhausted,
                message: "the upload is larger than this server's limit".into(),
                reason: None,
            },
            Error::Remote {
                code: Code::DataLoss,
                message: "mismatch".into(),
                reason: None,
            },
            Error::Remote {
                code: Code::InvalidArgument,
                message: "bad".into(),
                reason: None,
            },
            Error::Tls {
                server: "https://h:1".into(),
                reason: "untrusted".into(),
            },
        ];
        for err in never {
            assert_eq!(streak.decide(&err), None, "{err}");
        }
    }

    /// Waits double up to the cap, stay in the upper half of each step,
    /// honour the server's pushback, and start over after progress.
    #[test]
    fn waits_back_off_with_jitter() {
        let mut streak = RetryPolicy {
            retry_for: Duration::from_secs(3600),
        }
        .streak();
        let mut step = RETRY_BACKOFF_INITIAL;
        for _ in 0..10 {
            let wait = streak.decide(&dropped()).expect("retried").wait;
            assert!(
                wait >= step / 2 && wait <= step,
                "{wait:?} for step {step:?}"
            );
            step = (step * 2).min(RETRY_BACKOFF_MAX);
        }
        streak.progressed();
        let wait = streak.decide(&dropped()).expect("retried").wait;
        assert!(wait <= RETRY_BACKOFF_INITIAL, "{wait:?}");
        let slow = Error::TryLater {
            code: Code::ResourceExhausted,
            message: "busy".into(),
            pushback: Duration::from_secs(2),
        };
        streak.progressed();
        assert_eq!(
            streak.decide(&slow).expect("retried").wait,
            Duration::from_secs(2)
        );
    }

    /// `--retry-for 0` retries nothing; a streak ends when its time is up.
    #[test]
    fn streaks_end() {
        assert_eq!(RetryPolicy::OFF.streak().decide(&busy()), None);
        let mut streak = RetryPolicy {
            retry_for: Duration::from_millis(30),
        }
        .streak();
        let first = streak.decide(&busy()).expect("first retry");
        assert!(first.wait <= Duration::from_millis(30), "{first:?}");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(streak.decide(&busy()), None);
    }

    /// The notice reads as the contract shows it.
    #[test]
    fn notice_text() {
        let retry = Retry {
            cause: Cause::Busy,
            wait: Duration::from_millis(2000),
        };
        assert_eq!(
            notice("logs/app.log", retry),
            "logs/app.log: server busy, retrying in 2.0 s"
        );
    }
}
