//! The command line's own hints, added to an error when it is printed.
//!
//! A server's messages name no command-line flag (any gRPC client reads
//! them); what a `fetchd` user can do about an error is said here instead.
//! On the client side a server's error is an [`Error::Remote`] (or
//! [`Error::TryLater`]) carrying the status code and the server's words, so
//! a hint is chosen by the verb and the status code (and, for errors made on
//! the client side, by the variant), never by the server's wording.
//!
//! A status code can stand for more than one case (FAILED_PRECONDITION for a
//! `get` is "is a directory" or "not a directory"; PERMISSION_DENIED for a
//! `put` is a server that takes no uploads, a path outside the root or the
//! operating system's refusal). A fetchd server says which with the status's
//! `fetchd-reason` ([`Error::reason`]); a hint that fits one case only is
//! given for that case (or when the status carries no reason).

use tonic::Code;

use crate::error::Error;

/// The verb an error is printed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    /// `fetchd get`; `recursive` with `-r`.
    Get {
        /// `-r` was given.
        recursive: bool,
    },
    /// `fetchd put`.
    Put,
    /// `fetchd ls`.
    Ls,
    /// `fetchd stat`.
    Stat,
    /// `fetchd tail`.
    Tail,
    /// `serve`, `completions`, `man`: no hints.
    Other,
}

/// What to append to `err`'s message when `verb` prints it, if anything.
pub(crate) fn hint(verb: Verb, err: &Error) -> Option<&'static str> {
    match (verb, answered(err)?) {
        (Verb::Other, _) => None,
        (_, Code::Unauthenticated) => Some(" (check --token or FETCHD_TOKEN)"),
        (Verb::Get { recursive: false }, Code::FailedPrecondition)
            if err.reason().is_none_or(|reason| reason == "is-directory") =>
        {
            Some(" (use -r to fetch a tree)")
        }
        (Verb::Put, Code::AlreadyExists) => Some("; use --force to replace it"),
        (Verb::Put, Code::PermissionDenied)
            if err
                .reason()
                .is_none_or(|reason| reason == "uploads-disabled") =>
        {
            Some(" (put needs a server started with `fetchd serve --allow-upload`)")
        }
        _ => None,
    }
}

/// The status code of an error that is the server's answer (received as
/// [`Error::Remote`] or [`Error::TryLater`], or one of the variants a
/// server sends, which the client also makes itself in places, such as
/// [`Error::IsDirectory`] after a `Stat`); `None` for the client's own
/// failures (a local file, a lock, TLS, an unreachable server, a bad reply),
/// which get no hint.
fn answered(err: &Error) -> Option<Code> {
    match err {
        Error::Remote { code, .. } | Error::TryLater { code, .. } => Some(*code),
        Error::Io { .. }
        | Error::Locked { .. }
        | Error::UnsafeDestination { .. }
        | Error::ChecksumMismatch { .. }
        | Error::Protocol { .. }
        | Error::Unreachable { .. }
        | Error::Tls { .. }
        | Error::TlsFile { .. }
        | Error::Serve(_)
        | Error::Usage(_) => None,
        _ => Some(err.code()),
    }
}

/// `err`'s message with `verb`'s hint: what the command line prints (after
/// `fetchd: `), and the `error` of its `--json` objects.
pub(crate) fn describe(verb: Verb, err: &Error) -> String {
    match hint(verb, err) {
        Some(hint) => format!("{err}{hint}"),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    /// A server's error as the client receives it.
    fn received(err: Error) -> Error {
        Error::from_status(Status::from(err), "http://127.0.0.1:1")
    }

    const GET: Verb = Verb::Get { recursive: false };

    /// The hints of the contract, from the status code and the status's
    /// reason.
    #[test]
    fn hints_by_verb_and_code() {
        let cases = [
            (
                GET,
                Error::IsDirectory { path: "dir".into() },
                "dir: is a directory (use -r to fetch a tree)",
            ),
            (
                Verb::Put,
                Error::AlreadyExists {
                    path: "d/t.txt".into(),
                },
                "d/t.txt: already exists on the server; use --force to replace it",
            ),
            (
                Verb::Put,
                Error::UploadsDisabled {
                    path: "a/f.txt".into(),
                },
                "a/f.txt: permission denied: this server does not accept uploads \
                 (put needs a server started with `fetchd serve --allow-upload`)",
            ),
            (
                Verb::Stat,
                Error::Unauthenticated,
                "missing or wrong token (check --token or FETCHD_TOKEN)",
            ),
            (
                Verb::Put,
                Error::Unauthenticated,
                "missing or wrong token (check --token or FETCHD_TOKEN)",
            ),
            (GET, Error::NotFound { path: "x".into() }, "x: not found"),
            (
                Verb::Ls,
                Error::NotDirectory { path: "f/x".into() },
                "f/x: not a directory",
            ),
            (
                Verb::Get { recursive: true },
                Error::NotDirectory { path: "f/x".into() },
                "f/x: not a directory",
            ),
            (
                Verb::Put,
                Error::TargetIsDirectory { path: "dir".into() },
                "dir: is a directory on the server; name the file to create inside it",
            ),
            // The codes these share with a hinted case, told apart by the
            // status's fetchd-reason: no hint that does not fit.
            (
                GET,
                Error::NotDirectory { path: "f/x".into() },
                "f/x: not a directory",
            ),
            (
                Verb::Put,
                Error::OutsideRoot {
                    path: "../x".into(),
                },
                "../x: permission denied: the path leads outside the served root",
            ),
        ];
        for (verb, err, want) in cases {
            assert_eq!(describe(verb, &received(err)), want, "{verb:?}");
        }
    }

    /// Errors made on the client side get the hint by their variant; a
    /// token refused by some other server (a proxy) gets it too.
    #[test]
    fn local_errors_and_other_servers() {
        assert_eq!(
            describe(GET, &Error::IsDirectory { path: "d".into() }),
            "d: is a directory (use -r to fetch a tree)"
        );
        let proxy =
            Error::from_status(Status::unauthenticated("jwt expired"), "http://127.0.0.1:1");
        assert_eq!(
            describe(Verb::Tail, &proxy),
            "jwt expired (check --token or FETCHD_TOKEN)"
        );
        // A local file in the way is not the server's AlreadyExists.
        let locked = Error::Locked {
            dest: "x".into(),
            lock: "x.part".into(),
        };
        assert_eq!(hint(GET, &locked), None);
        // A status without a reason (another server) gets the code's hint.
        let bare = Error::from_status(
            Status::failed_precondition("d: is a directory"),
            "http://127.0.0.1:1",
        );
        assert_eq!(hint(GET, &bare), Some(" (use -r to fetch a tree)"));
        assert_eq!(hint(Verb::Other, &Error::Unauthenticated), None);
    }
}
