//! The one error type of fetchd, and its one mapping to and from gRPC status
//! codes.
//!
//! Every message is a sentence for a user: it names the path as the request
//! named it (never the server's absolute path) and, where there is one, says
//! what to do. A message a server sends is read by clients in any language,
//! so it names no command-line flag and no `fetchd` command line: it names
//! the request field concerned or says what happened. The `fetchd` command
//! line adds its own hints when it prints an error (`cli::hint`).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::checksum::Digest;

/// Result with fetchd's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in fetchd, on either side of the wire.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path string itself is unusable (empty, NUL byte, too long).
    #[error("{}invalid path: {reason}", path_prefix(.path))]
    InvalidPath {
        /// The path as given (printable form).
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// Nothing exists at the path.
    #[error("{path}: not found")]
    NotFound {
        /// The path as requested.
        path: String,
    },

    /// The path leads outside the served root (`..` or a symlink).
    #[error("{path}: permission denied: the path leads outside the served root")]
    OutsideRoot {
        /// The path as requested.
        path: String,
    },

    /// The operating system refused access.
    #[error("{path}: permission denied")]
    PermissionDenied {
        /// The path as requested.
        path: String,
    },

    /// A FIFO, socket or device: never opened.
    #[error("{path}: permission denied: a {kind} is not a regular file and is never served")]
    NotRegular {
        /// The path as requested.
        path: String,
        /// `fifo`, `socket`, `block device` or `character device`.
        kind: &'static str,
    },

    /// A directory where a file is needed.
    #[error("{path}: is a directory")]
    IsDirectory {
        /// The path as requested.
        path: String,
    },

    /// A file where a directory is needed.
    #[error("{path}: not a directory")]
    NotDirectory {
        /// The path as requested.
        path: String,
    },

    /// The file changed (identity, size or mtime) while it was being read.
    #[error("{path}: the file changed while it was read; try again")]
    Changed {
        /// The path as requested.
        path: String,
    },

    /// A read started past the end of the file.
    #[error("{path}: offset {offset} is past the end of the file ({size} bytes)")]
    OffsetPastEnd {
        /// The path as requested.
        path: String,
        /// Requested offset.
        offset: u64,
        /// Size of the file.
        size: u64,
    },

    /// The received bytes do not hash to the server's digest.
    #[error(
        "{path}: checksum mismatch (expected sha256 {expected}, got {actual}); nothing was written"
    )]
    ChecksumMismatch {
        /// The remote path.
        path: String,
        /// The server's digest.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },

    /// Uploads are switched off on this server.
    #[error("{path}: permission denied: this server does not accept uploads")]
    UploadsDisabled {
        /// The path the upload was for.
        path: String,
    },

    /// An upload's target exists and replacing it was not asked for (the
    /// header's `force`).
    #[error("{path}: already exists on the server")]
    AlreadyExists {
        /// The path as requested.
        path: String,
    },

    /// An upload's target is a directory.
    #[error("{path}: is a directory on the server; name the file to create inside it")]
    TargetIsDirectory {
        /// The path as requested.
        path: String,
    },

    /// An upload is larger than the server accepts.
    #[error(
        "{path}: the upload is larger than this server's limit of {limit} bytes; nothing was written"
    )]
    TooLarge {
        /// The path as requested.
        path: String,
        /// The limit in bytes.
        limit: u64,
    },

    /// An upload did not carry the number of bytes its header declared.
    #[error(
        "{path}: size mismatch: {declared} bytes were declared but {received}{more} arrived; nothing was written",
        more = if *.received > *.declared { " or more" } else { "" }
    )]
    SizeMismatch {
        /// The path as requested.
        path: String,
        /// The size in the header.
        declared: u64,
        /// The bytes that arrived (when more than declared: as soon as
        /// that was seen).
        received: u64,
    },

    /// The filesystem is full (or a quota is reached).
    #[error("{path}: no space left on device (the server's disk is full); nothing was written")]
    NoSpace {
        /// The path as requested.
        path: String,
    },

    /// A request that breaks the protocol's rules (messages out of order,
    /// a malformed field).
    #[error("{}invalid request: {reason}", path_prefix(.path))]
    InvalidRequest {
        /// The path concerned (empty when the request named none yet).
        path: String,
        /// What was wrong.
        reason: String,
    },

    /// A server limit is reached.
    #[error("server busy: the limit of {limit} concurrent {what} is reached; retry later")]
    Limit {
        /// What is limited (e.g. `transfers`).
        what: &'static str,
        /// The configured limit.
        limit: usize,
        /// The `serve` option that sets it (e.g. `--max-transfers`), for
        /// the server's own operator; never part of the message a client
        /// is sent.
        flag: &'static str,
    },

    /// The server is draining for a shutdown or restart: it finishes what
    /// runs and takes no new calls.
    #[error(
        "the server is shutting down and takes no new calls; retry shortly or on another replica"
    )]
    Draining,

    /// `tail` on a store that cannot follow a file (an object store).
    #[error(
        "{path}: tail needs a directory root; this server serves an object store, \
         whose objects cannot be followed as they grow (use get)"
    )]
    CannotFollow {
        /// The path as requested.
        path: String,
    },

    /// The object store behind the server failed a request (after its own
    /// retries): the store is down, slow or refused the server's
    /// credentials.
    #[error("{path}: the object store failed: {reason}; try again")]
    Store {
        /// The path as requested.
        path: String,
        /// What the store said.
        reason: String,
    },

    /// A request message is larger than the server accepts.
    #[error("request message of {size} bytes is over the server's limit of {limit} bytes")]
    MessageTooLarge {
        /// The size the message announced.
        size: u64,
        /// The configured limit.
        limit: usize,
    },

    /// A call without a token the server accepts.
    #[error("missing or wrong token")]
    Unauthenticated,

    /// A TLS connection could not be made (client side): an untrusted or
    /// mismatched certificate, a missing client certificate, ...
    #[error("TLS with {server} failed: {reason}")]
    Tls {
        /// The server URL.
        server: String,
        /// What is wrong, and what to pass instead.
        reason: String,
    },

    /// A certificate or key file that cannot be used.
    #[error("{}: {reason}", path.display())]
    TlsFile {
        /// The file as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The peer broke the protocol (a bug or a hostile peer).
    #[error("{path}: protocol error: {reason}")]
    Protocol {
        /// The remote path concerned.
        path: String,
        /// What was wrong.
        reason: String,
    },

    /// The server could not be reached or went away.
    #[error("cannot reach the server at {server}: {reason}")]
    Unreachable {
        /// The server URL.
        server: String,
        /// What failed.
        reason: String,
    },

    /// The server cannot take the call now and asked to be tried again
    /// (client side): busy at a limit, or draining for a restart. Its
    /// status carried `grpc-retry-pushback-ms`.
    #[error("{message}")]
    TryLater {
        /// The gRPC status code (RESOURCE_EXHAUSTED or UNAVAILABLE).
        code: Code,
        /// The server's message.
        message: String,
        /// The wait the server suggested.
        pushback: Duration,
    },

    /// The server answered with an error status (client side).
    #[error("{message}")]
    Remote {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
        /// The status's `fetchd-reason` ([`Error::reason`]), when it had one.
        reason: Option<String>,
    },

    /// A local file operation failed (client side, or server I/O).
    #[error("{}: {}", path.display(), describe_io(source))]
    Io {
        /// The local path (on the server: the path as requested).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// A local destination that fetchd refuses to write: it would land
    /// outside the output folder or go through a symlink.
    #[error("{}: refused to write: {reason}", path.display())]
    UnsafeDestination {
        /// The local path concerned.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },

    /// Another process holds a file fetchd needs for itself.
    #[error("{}: another fetchd is using it; wait for it to finish or remove {}", dest.display(), lock.display())]
    Locked {
        /// The destination concerned.
        dest: PathBuf,
        /// The file that is locked.
        lock: PathBuf,
    },

    /// The server could not start or failed while serving.
    #[error("server failed: {0}")]
    Serve(String),

    /// A problem with what the user asked for, found before any transfer.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Maps an I/O error met while resolving or reading `path` on the server
    /// to the variant a client can act on.
    pub fn from_server_io(path: &str, source: io::Error) -> Error {
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound { path: path.into() },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied { path: path.into() },
            io::ErrorKind::NotADirectory => Error::NotDirectory { path: path.into() },
            io::ErrorKind::IsADirectory => Error::IsDirectory { path: path.into() },
            io::ErrorKind::InvalidFilename => Error::InvalidPath {
                path: path.into(),
                reason: "a name in it is too long",
            },
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                Error::NoSpace { path: path.into() }
            }
            _ => Error::io(path, source),
        }
    }

    /// The gRPC code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidPath { .. } | Error::InvalidRequest { .. } | Error::Usage(_) => {
                Code::InvalidArgument
            }
            Error::NotFound { .. } => Code::NotFound,
            Error::OutsideRoot { .. }
            | Error::PermissionDenied { .. }
            | Error::NotRegular { .. }
            | Error::UploadsDisabled { .. } => Code::PermissionDenied,
            Error::IsDirectory { .. }
            | Error::NotDirectory { .. }
            | Error::TargetIsDirectory { .. } => Code::FailedPrecondition,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::TooLarge { .. } | Error::NoSpace { .. } => Code::ResourceExhausted,
            Error::SizeMismatch { .. } => Code::DataLoss,
            Error::Changed { .. } => Code::Aborted,
            Error::OffsetPastEnd { .. } => Code::OutOfRange,
            Error::ChecksumMismatch { .. } => Code::DataLoss,
            Error::Limit { .. } | Error::MessageTooLarge { .. } => Code::ResourceExhausted,
            Error::Draining => Code::Unavailable,
            Error::CannotFollow { .. } => Code::FailedPrecondition,
            Error::Store { .. } => Code::Unavailable,
            Error::TryLater { code, .. } => *code,
            Error::Unauthenticated => Code::Unauthenticated,
            Error::Tls { .. } => Code::Unavailable,
            Error::TlsFile { .. } => Code::InvalidArgument,
            Error::Protocol { .. } => Code::Internal,
            Error::Unreachable { .. } => Code::Unavailable,
            Error::Remote { code, .. } => *code,
            Error::Io { .. } | Error::Serve(_) => Code::Internal,
            Error::Locked { .. } => Code::FailedPrecondition,
            Error::UnsafeDestination { .. } => Code::PermissionDenied,
        }
    }

    /// A short, stable token for what went wrong, sent with a status as its
    /// `fetchd-reason` metadata so that a client can tell apart the cases a
    /// status code shares (FAILED_PRECONDITION: `is-directory` or
    /// `not-directory`) without reading the message. `None` for errors that
    /// are never a server's answer.
    pub(crate) fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Error::InvalidPath { .. } => "invalid-path",
            Error::NotFound { .. } => "not-found",
            Error::OutsideRoot { .. } => "outside-root",
            Error::PermissionDenied { .. } => "permission-denied",
            Error::NotRegular { .. } => "not-regular",
            Error::IsDirectory { .. } => "is-directory",
            Error::NotDirectory { .. } => "not-directory",
            Error::Changed { .. } => "changed",
            Error::OffsetPastEnd { .. } => "offset-past-end",
            Error::ChecksumMismatch { .. } => "checksum-mismatch",
            Error::UploadsDisabled { .. } => "uploads-disabled",
            Error::AlreadyExists { .. } => "already-exists",
            Error::TargetIsDirectory { .. } => "target-is-directory",
            Error::TooLarge { .. } => "upload-too-large",
            Error::SizeMismatch { .. } => "size-mismatch",
            Error::NoSpace { .. } => "no-space",
            Error::InvalidRequest { .. } => "invalid-request",
            Error::Limit { .. } => "busy",
            Error::Draining => "draining",
            Error::CannotFollow { .. } => "cannot-follow",
            Error::Store { .. } => "store-unavailable",
            Error::MessageTooLarge { .. } => "message-too-large",
            Error::Unauthenticated => "unauthenticated",
            Error::Remote { reason, .. } => return reason.as_deref().and_then(known_reason),
            _ => return None,
        })
    }
}

/// The gRPC metadata key of [`Error::reason`].
pub(crate) const REASON_KEY: &str = "fetchd-reason";

/// `reason` when it is one this build knows (as a `'static` token).
fn known_reason(reason: &str) -> Option<&'static str> {
    const KNOWN: &[&str] = &[
        "invalid-path",
        "not-found",
        "outside-root",
        "permission-denied",
        "not-regular",
        "is-directory",
        "not-directory",
        "changed",
        "offset-past-end",
        "checksum-mismatch",
        "uploads-disabled",
        "already-exists",
        "target-is-directory",
        "upload-too-large",
        "size-mismatch",
        "no-space",
        "invalid-request",
        "busy",
        "draining",
        "cannot-follow",
        "store-unavailable",
        "message-too-large",
        "unauthenticated",
    ];
    KNOWN.iter().copied().find(|known| *known == reason)
}

impl Error {
    /// A copy carrying the same code and message (errors hold I/O sources,
    /// which cannot be cloned).
    pub fn clone_message(&self) -> Error {
        Error::Remote {
            code: self.code(),
            message: self.to_string(),
            reason: self.reason().map(str::to_string),
        }
    }
}

/// The gRPC metadata key by which a server tells a client that a call may
/// be tried again, and after how many milliseconds (gRPC's retry design,
/// A6). fetchd's own client retries only what carries it, besides broken
/// connections; other gRPC clients with a retry policy honour it too.
pub(crate) const RETRY_PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// The wait a server suggests before a busy call is tried again.
pub(crate) const BUSY_PUSHBACK: Duration = Duration::from_millis(200);
/// The wait a draining server suggests: about what a restart takes.
pub(crate) const DRAINING_PUSHBACK: Duration = Duration::from_millis(500);

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let message = err.to_string();
        let pushback = match &err {
            Error::Limit { .. } => Some(BUSY_PUSHBACK),
            Error::Draining => Some(DRAINING_PUSHBACK),
            _ => None,
        };
        let mut status = Status::new(err.code(), message);
        if let Some(reason) = err.reason() {
            status
                .metadata_mut()
                .insert(REASON_KEY, MetadataValue::from_static(reason));
        }
        if let Some(wait) = pushback
            && let Ok(value) = wait.as_millis().to_string().parse()
        {
            status.metadata_mut().insert(RETRY_PUSHBACK_KEY, value);
        }
        status
    }
}

/// `PATH: ` before a message, or nothing when there is no path yet.
fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// A short description of an I/O error without the raw `os error N` suffix.
fn describe_io(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_lowercase(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant travels with the status code the contract names.
    #[test]
    fn codes_follow_the_contract() {
        let path = String::from("a/b");
        let cases = [
            (Error::NotFound { path: path.clone() }, Code::NotFound),
            (
                Error::OutsideRoot { path: path.clone() },
                Code::PermissionDenied,
            ),
            (
                Error::NotRegular {
                    path: path.clone(),
                    kind: "fifo",
                },
                Code::PermissionDenied,
            ),
            (
                Error::InvalidPath {
                    path: path.clone(),
                    reason: "empty",
                },
                Code::InvalidArgument,
            ),
            (Error::Changed { path: path.clone() }, Code::Aborted),
            (
                Error::UploadsDisabled { path: path.clone() },
                Code::PermissionDenied,
            ),
            (
                Error::AlreadyExists { path: path.clone() },
                Code::AlreadyExists,
            ),
            (
                Error::TargetIsDirectory { path: path.clone() },
                Code::FailedPrecondition,
            ),
            (
                Error::TooLarge {
                    path: path.clone(),
                    limit: 1,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::SizeMismatch {
                    path: path.clone(),
                    declared: 1,
                    received: 2,
                },
                Code::DataLoss,
            ),
            (
                Error::InvalidRequest {
                    path: path.clone(),
                    reason: "no header".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::Limit {
                    what: "transfers",
                    limit: 1,
                    flag: "--max-transfers",
                },
                Code::ResourceExhausted,
            ),
            (
                Error::MessageTooLarge { size: 9, limit: 1 },
                Code::ResourceExhausted,
            ),
            (Error::Unauthenticated, Code::Unauthenticated),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{}", status.message());
        }
    }

    /// Upload errors read as sentences that say what to do.
    #[test]
    fn upload_messages() {
        let no_path = Error::InvalidRequest {
            path: String::new(),
            reason: "no header".into(),
        };
        assert_eq!(no_path.to_string(), "invalid request: no header");
        let more = Error::SizeMismatch {
            path: "a".into(),
            declared: 10,
            received: 11,
        };
        assert_eq!(
            more.to_string(),
            "a: size mismatch: 10 bytes were declared but 11 or more arrived; nothing was written"
        );
        let full = Error::from_server_io("a", io::Error::from_raw_os_error(28));
        assert_eq!(full.code(), Code::ResourceExhausted, "{full}");
        let disabled = Error::UploadsDisabled { path: "a".into() }.to_string();
        assert_eq!(
            disabled,
            "a: permission denied: this server does not accept uploads"
        );
    }

    /// An empty path reads as a sentence, not as `: invalid path: ...`.
    #[test]
    fn an_empty_path_has_no_prefix() {
        let empty = Error::InvalidPath {
            path: String::new(),
            reason: "the path is empty (use / for the root)",
        };
        assert_eq!(
            empty.to_string(),
            "invalid path: the path is empty (use / for the root)"
        );
        let named = Error::InvalidPath {
            path: "a\\0b".into(),
            reason: "it contains a NUL byte",
        };
        assert_eq!(
            named.to_string(),
            "a\\0b: invalid path: it contains a NUL byte"
        );
    }

    /// One error of every variant, and whether a server ever sends it (the
    /// match is exhaustive: a new variant has to be placed here).
    fn every_variant() -> Vec<(Error, bool)> {
        let path = || String::from("a/b");
        let digest = Digest::from_slice(&[0; 32]).expect("32 bytes");
        let all = vec![
            Error::InvalidPath {
                path: path(),
                reason: "it contains a NUL byte",
            },
            Error::InvalidPath {
                path: String::new(),
                reason: "the path is empty (use / for the root)",
            },
            Error::NotFound { path: path() },
            Error::OutsideRoot { path: path() },
            Error::PermissionDenied { path: path() },
            Error::NotRegular {
                path: path(),
                kind: "fifo",
            },
            Error::IsDirectory { path: path() },
            Error::NotDirectory { path: path() },
            Error::Changed { path: path() },
            Error::OffsetPastEnd {
                path: path(),
                offset: 9,
                size: 1,
            },
            Error::ChecksumMismatch {
                path: path(),
                expected: digest,
                actual: digest,
            },
            Error::UploadsDisabled { path: path() },
            Error::AlreadyExists { path: path() },
            Error::TargetIsDirectory { path: path() },
            Error::TooLarge {
                path: path(),
                limit: 10,
            },
            Error::SizeMismatch {
                path: path(),
                declared: 1,
                received: 2,
            },
            Error::NoSpace { path: path() },
            Error::InvalidRequest {
                path: String::new(),
                reason: "the first message of a Write must be its header".into(),
            },
            Error::Limit {
                what: "transfers",
                limit: 256,
                flag: "--max-transfers",
            },
            Error::Limit {
                what: "tails",
                limit: 4096,
                flag: "--max-tails",
            },
            Error::Limit {
                what: "calls on one connection",
                limit: 256,
                flag: "--max-streams-per-connection",
            },
            Error::Draining,
            Error::CannotFollow { path: path() },
            Error::MessageTooLarge {
                size: 5 << 20,
                limit: 4 << 20,
            },
            Error::Unauthenticated,
            Error::Tls {
                server: "https://h:1".into(),
                reason: "pass --ca-cert FILE".into(),
            },
            Error::TlsFile {
                path: "ca.pem".into(),
                reason: "not PEM".into(),
            },
            Error::Protocol {
                path: path(),
                reason: "no header".into(),
            },
            Error::Unreachable {
                server: "http://h:1".into(),
                reason: "connection refused".into(),
            },
            Error::TryLater {
                code: Code::Unavailable,
                message: "busy".into(),
                pushback: BUSY_PUSHBACK,
            },
            Error::Remote {
                code: Code::NotFound,
                message: "a: not found".into(),
                reason: Some("not-found".into()),
            },
            Error::io("a/b", io::Error::other("the writer stopped early")),
            Error::UnsafeDestination {
                path: "out/x".into(),
                reason: "a symlink".into(),
            },
            Error::Locked {
                dest: "x".into(),
                lock: "x.part".into(),
            },
            Error::Serve("bind failed".into()),
            Error::Usage("--token-file t: empty".into()),
        ];
        all.into_iter()
            .map(|err| {
                let sent = match &err {
                    Error::InvalidPath { .. }
                    | Error::NotFound { .. }
                    | Error::OutsideRoot { .. }
                    | Error::PermissionDenied { .. }
                    | Error::NotRegular { .. }
                    | Error::IsDirectory { .. }
                    | Error::NotDirectory { .. }
                    | Error::Changed { .. }
                    | Error::OffsetPastEnd { .. }
                    | Error::ChecksumMismatch { .. }
                    | Error::UploadsDisabled { .. }
                    | Error::AlreadyExists { .. }
                    | Error::TargetIsDirectory { .. }
                    | Error::TooLarge { .. }
                    | Error::SizeMismatch { .. }
                    | Error::NoSpace { .. }
                    | Error::InvalidRequest { .. }
                    | Error::Limit { .. }
                    | Error::Draining
                    | Error::CannotFollow { .. }
                    | Error::Store { .. }
                    | Error::MessageTooLarge { .. }
                    | Error::Unauthenticated
                    | Error::Io { .. } => true,
                    // Client side only, or the server's own start-up and
                    // command line (never a status).
                    Error::Tls { .. }
                    | Error::TlsFile { .. }
                    | Error::Protocol { .. }
                    | Error::Unreachable { .. }
                    | Error::TryLater { .. }
                    | Error::Remote { .. }
                    | Error::UnsafeDestination { .. }
                    | Error::Locked { .. }
                    | Error::Serve(_)
                    | Error::Usage(_) => false,
                };
                (err, sent)
            })
            .collect()
    }

    /// What a server sends is for clients in any language: no command-line
    /// flag, no `fetchd` command, no leading `: `.
    #[test]
    fn server_messages_name_no_command_line() {
        for (err, sent) in every_variant() {
            if !sent {
                continue;
            }
            let status = Status::from(err);
            let message = status.message();
            assert!(!message.contains("--"), "{message}");
            assert!(!message.contains("fetchd "), "{message}");
            assert!(!message.contains("FETCHD_"), "{message}");
            assert!(!message.starts_with(':'), "{message}");
            assert!(!message.is_empty());
        }
    }

    /// The server's messages, word for word, where they used to carry a
    /// command-line hint.
    #[test]
    fn neutral_messages() {
        let texts = [
            (Error::IsDirectory { path: "d".into() }, "d: is a directory"),
            (
                Error::AlreadyExists { path: "f".into() },
                "f: already exists on the server",
            ),
            (
                Error::TooLarge {
                    path: "f".into(),
                    limit: 10,
                },
                "f: the upload is larger than this server's limit of 10 bytes; nothing was written",
            ),
            (
                Error::Limit {
                    what: "transfers",
                    limit: 256,
                    flag: "--max-transfers",
                },
                "server busy: the limit of 256 concurrent transfers is reached; retry later",
            ),
            (
                Error::MessageTooLarge {
                    size: 4_194_308,
                    limit: 4_194_304,
                },
                "request message of 4194308 bytes is over the server's limit of 4194304 bytes",
            ),
            (Error::Unauthenticated, "missing or wrong token"),
        ];
        for (err, text) in texts {
            assert_eq!(Status::from(err).message(), text);
        }
    }

    /// A refused token comes back with the server's words alone: the hint
    /// to pass `--token` is the command line's (`cli::hint`).
    #[test]
    fn unauthenticated_keeps_the_servers_message() {
        let status = Status::from(Error::Unauthenticated);
        match Error::from_status(status, "http://h:1") {
            Error::Remote { code, message, .. } => {
                assert_eq!(code, Code::Unauthenticated);
                assert_eq!(message, "missing or wrong token");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Limits and draining travel with a retry pushback and come back as
    /// TryLater; an upload over the size limit (also RESOURCE_EXHAUSTED)
    /// and a full disk carry none, so nobody retries them.
    #[test]
    fn busy_and_draining_carry_a_pushback() {
        let busy = Status::from(Error::Limit {
            what: "transfers",
            limit: 1,
            flag: "--max-transfers",
        });
        assert!(matches!(
            Error::from_status(busy, "http://h:1"),
            Error::TryLater {
                code: Code::ResourceExhausted,
                pushback: BUSY_PUSHBACK,
                ..
            }
        ));
        let draining = Status::from(Error::Draining);
        assert!(matches!(
            Error::from_status(draining, "http://h:1"),
            Error::TryLater {
                code: Code::Unavailable,
                ..
            }
        ));
        for err in [
            Error::TooLarge {
                path: "a".into(),
                limit: 1,
            },
            Error::NoSpace { path: "a".into() },
        ] {
            let status = Status::from(err);
            assert!(status.metadata().get(RETRY_PUSHBACK_KEY).is_none());
            let back = Error::from_status(status, "http://h:1");
            assert!(matches!(back, Error::Remote { .. }), "{back:?}");
        }
    }

    /// Every error a server sends carries its reason, and it comes back
    /// on the client's side of the wire.
    #[test]
    fn reasons_travel_with_the_status() {
        for (err, sent) in every_variant() {
            if !sent || matches!(err, Error::Io { .. }) {
                continue;
            }
            let reason = err.reason().expect("a server's error has a reason");
            let status = Status::from(err);
            assert_eq!(
                status
                    .metadata()
                    .get(REASON_KEY)
                    .map(|v| v.to_str().expect("ascii")),
                Some(reason)
            );
            // Busy and draining come back as TryLater, their own class.
            let back = Error::from_status(status, "http://h:1");
            if !matches!(back, Error::TryLater { .. }) {
                assert_eq!(back.reason(), Some(reason), "{back:?}");
            }
        }
    }

    /// I/O errors read as sentences, without `(os error N)`.
    #[test]
    fn io_errors_have_no_raw_os_suffix() {
        let err = Error::io(
            "out/file",
            io::Error::from_raw_os_error(28), // ENOSPC
        );
        let text = err.to_string();
        assert!(text.starts_with("out/file: "), "{text}");
        assert!(!text.contains("os error"), "{text}");
    }
}
