//! Bearer tokens: the token file, and the tower layer that checks every
//! call on the server (reflection and any other route included) except the
//! health service.
//!
//! Tokens are kept only as sha256 digests and compared by digest in
//! constant time against every token, so neither the time a check takes
//! nor its result for a near miss says anything about a token's bytes or
//! length. No token is ever logged or put into a message.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::error::{Error, Result};

/// Calls under this path prefix never need a token (load balancers and
/// orchestrators probe health without credentials).
pub(crate) const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";
/// Largest token file read.
pub(crate) const MAX_TOKEN_FILE_BYTES: u64 = 1024 * 1024;

type TokenDigest = [u8; 32];

/// The tokens of `--token-file`; cheap to clone, all clones see a reload.
#[derive(Clone)]
pub struct Tokens {
    file: PathBuf,
    digests: Arc<RwLock<Arc<[TokenDigest]>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("file", &self.file)
            .field("count", &self.len())
            .finish()
    }
}

impl Tokens {
    /// Reads the token file: one token a line, surrounding whitespace
    /// trimmed, blank lines ignored. A file without any token is refused
    /// (it would refuse every call).
    pub fn load(file: impl Into<PathBuf>) -> Result<Tokens> {
        let file = file.into();
        let digests = read_token_file(&file)?;
        Ok(Tokens {
            file,
            digests: Arc::new(RwLock::new(digests)),
        })
    }

    /// Tokens from memory (tests, embedding); not reloadable from a file.
    pub fn from_list<S: AsRef<str>>(tokens: &[S]) -> Tokens {
        let digests: Vec<TokenDigest> = tokens
            .iter()
            .map(|token| digest(token.as_ref().trim().as_bytes()))
            .collect();
        Tokens {
            file: PathBuf::new(),
            digests: Arc::new(RwLock::new(digests.into())),
        }
    }

    /// The token file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Reads the file again and, if it is good, replaces the tokens; if it
    /// is not, the old tokens stay. Returns how many tokens there are now.
    pub fn reload(&self) -> Result<usize> {
        let digests = read_token_file(&self.file)?;
        let count = digests.len();
        *self
            .digests
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = digests;
        Ok(count)
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// True when no token is accepted (every call is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<[TokenDigest]> {
        Arc::clone(
            &self
                .digests
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    /// True when `presented` is one of the tokens. Compares digests in
    /// constant time against every token, without stopping at a match.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut found = subtle::Choice::from(0);
        for token in self.current().iter() {
            found |= token.ct_eq(&presented);
        }
        found.into()
    }

    /// True when an `authorization` header value carries an accepted
    /// bearer token.
    pub fn authorizes(&self, header: Option<&http::HeaderValue>) -> bool {
        let Some(value) = header else {
            // Still spend the time of a check, so a missing header is not
            // told apart from a wrong one by timing.
            let _ = self.accepts(b"");
            return false;
        };
        let value = value.as_bytes();
        let token = match value.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
            _ => &[][..],
        };
        self.accepts(token) && !token.is_empty()
    }
}

fn digest(bytes: &[u8]) -> TokenDigest {
    Sha256::digest(bytes).into()
}

/// Parses a token file into digests.
fn read_token_file(file: &Path) -> Result<Arc<[TokenDigest]>> {
    use std::io::Read;
    let problem =
        |reason: String| Error::Usage(format!("--token-file {}: {reason}", file.display()));
    let opened = std::fs::File::open(file).map_err(|err| Error::io(file, err))?;
    warn_if_readable_by_others(file, &opened);
    let mut text = String::new();
    opened
        .take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::InvalidData => problem("not a text file (UTF-8)".into()),
            _ => Error::io(file, err),
        })?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(problem(format!(
            "larger than {MAX_TOKEN_FILE_BYTES} bytes; not a token file"
        )));
    }
    let mut digests = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() {
            continue;
        }
        if token.bytes().any(|byte| !(0x20..0x7f).contains(&byte)) {
            // Never echo the line: it may be a token.
            return Err(problem(format!(
                "line {} holds a character that cannot travel in an HTTP header \
                 (tokens are printable ASCII)",
                index + 1
            )));
        }
        digests.push(digest(token.as_bytes()));
    }
    if digests.is_empty() {
        return Err(problem(
            "no token in it (one token a line); every call would be refused".into(),
        ));
    }
    Ok(digests.into())
}

/// A token file others may read gives the tokens away.
fn warn_if_readable_by_others(file: &Path, opened: &std::fs::File) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = opened.metadata()
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            file = %file.display(),
            "the token file is readable by every user of this machine; chmod 600 it"
        );
    }
}

/// Tower layer that refuses calls without an accepted token with
/// UNAUTHENTICATED, except health checks. Without tokens it passes
/// everything through.
#[derive(Clone, Debug)]
pub(crate) struct AuthLayer {
    tokens: Option<Tokens>,
}

impl AuthLayer {
    /// Checks calls against `tokens`; `None` lets every call through.
    pub(crate) fn new(tokens: Option<Tokens>) -> AuthLayer {
        AuthLayer { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone, Debug)]
pub(crate) struct Auth<S> {
    inner: S,
    tokens: Option<Tokens>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = std::result::Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Auth<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let allowed = match &self.tokens {
            None => true,
            Some(_) if request.uri().path().starts_with(HEALTH_PATH_PREFIX) => true,
            Some(tokens) => tokens.authorizes(request.headers().get(http::header::AUTHORIZATION)),
        };
        if !allowed {
            let peer = super::conn::peer_of(&request);
            tracing::info!(
                peer = %peer.map_or_else(|| "unknown".to_string(), |addr| addr.to_string()),
                method = request.uri().path(),
                "refused a call without a valid token"
            );
            let status = Status::from(Error::Unauthenticated);
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(text).expect("header")
    }

    /// Right, wrong, missing and malformed headers.
    #[test]
    fn bearer_headers_are_checked() {
        let tokens = Tokens::from_list(&["alpha", "beta"]);
        assert!(tokens.authorizes(Some(&header("Bearer alpha"))));
        assert!(tokens.authorizes(Some(&header("bearer beta"))));
        assert!(!tokens.authorizes(Some(&header("Bearer alph"))));
        assert!(!tokens.authorizes(Some(&header("Bearer alphaa"))));
        assert!(!tokens.authorizes(Some(&header("alpha"))));
        assert!(!tokens.authorizes(Some(&header("Basic alpha"))));
        assert!(!tokens.authorizes(Some(&header("Bearer "))));
        assert!(!tokens.authorizes(None));
    }

    /// The file format: trimmed lines, blanks skipped; an empty file and a
    /// line with a control character are refused without echoing it.
    #[test]
    fn token_file_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens");
        std::fs::write(&file, "  one  \n\n\ttwo\r\n   \n").expect("write");
        let tokens = Tokens::load(&file).expect("load");
        assert_eq!(tokens.len(), 2);
        assert!(tokens.accepts(b"one") && tokens.accepts(b"two"));
        assert!(!tokens.accepts(b"  one  "));

        std::fs::write(&file, "\n  \n").expect("write");
        let err = tokens.reload().expect_err("empty file").to_string();
        assert!(err.contains("no token"), "{err}");
        assert_eq!(tokens.len(), 2, "a failed reload keeps the old tokens");

        std::fs::write(&file, "good\nsecret\u{1}value\n").expect("write");
        let err = tokens.reload().expect_err("control character").to_string();
        assert!(err.contains("line 2") && !err.contains("secret"), "{err}");

        std::fs::write(&file, "three\n").expect("write");
        assert_eq!(tokens.reload().expect("reload"), 1);
        assert!(tokens.accepts(b"three") && !tokens.accepts(b"one"));
    }

    /// Debug output shows the file and the count, never a token.
    #[test]
    fn debug_hides_tokens() {
        let tokens = Tokens::from_list(&["hunter2"]);
        let shown = format!("{tokens:?} {:?}", AuthLayer::new(Some(tokens.clone())));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
