//! How a client connects, whichever server it talks to: the token, the TLS
//! files, the compression asked for, the retry policy.

use std::path::PathBuf;

use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;

use crate::client::retry::RetryPolicy;
use crate::error::{Error, Result};

/// How to connect, whichever server it is (that is a [`Target`]).
///
/// [`Target`]: crate::client::Target
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// CA certificate(s) to trust for `https://` instead of the system's.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Ask for file data (`Read`, `Tail`) compressed this way; `None` for
    /// plain bytes.
    pub compression: Option<Compression>,
    /// How long calls that fail on a busy, draining or lost server are
    /// tried again (`--retry-for`).
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("compression", &self.compression)
            .field("retry", &self.retry)
            .finish()
    }
}

/// A compression a client can ask the server to apply to file data.
///
/// A client asks by compressing its request the same way; the server then
/// compresses its answer (see [`crate::server::raw_read`]). Answers in
/// either encoding are always accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (deflate), level 6: what every gRPC implementation speaks.
    Gzip,
    /// zstd, level 3: several times faster than gzip at a similar ratio;
    /// not in every gRPC implementation (grpcio has none).
    Zstd,
}

impl Compression {
    pub(crate) fn encoding(self) -> CompressionEncoding {
        match self {
            Compression::Gzip => CompressionEncoding::Gzip,
            Compression::Zstd => CompressionEncoding::Zstd,
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub(crate) struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// The header value for `token` (`None`: no header), marked sensitive
    /// so that it never enters HPACK's table or a debug dump.
    pub(crate) fn new(token: Option<&str>) -> Result<BearerToken> {
        let Some(token) = token else {
            return Ok(BearerToken(None));
        };
        let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            Error::Usage("the token contains characters not allowed in a header".into())
        })?;
        value.set_sensitive(true);
        Ok(BearerToken(Some(value)))
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.0.as_ref().map(|_| "<redacted>");
        f.debug_tuple("BearerToken").field(&shown).finish()
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
