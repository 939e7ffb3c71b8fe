//! TLS material and what a failed handshake means, for both sides.
//!
//! PEM files are read and checked here, before any socket is opened, so a
//! missing or malformed file is reported by its path; and the rustls error
//! buried in a transport error's source chain is turned into a sentence that
//! says what is wrong and what to pass instead.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError};
use tonic::transport::{Certificate, Identity};

use crate::error::{Error, Result};

/// Largest PEM file fetchd reads (certificate chains are a few KiB).
pub(crate) const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The server's TLS material, read and checked: `--tls-cert`, `--tls-key`
/// and, for mutual TLS, `--client-ca`.
#[derive(Clone)]
pub struct ServerTls {
    /// Certificate chain and private key, as PEM.
    pub identity: Identity,
    /// CA that client certificates must chain to; `None`: no client
    /// certificates asked for.
    pub client_ca: Option<Certificate>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ServerTls")
            .field("mutual", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate chain, the key and the optional client CA, and
    /// checks that rustls accepts them together (the key matches the
    /// certificate, the CA is usable), naming the file at fault.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls> {
        let (cert_pem, chain) = read_certificates(cert)?;
        let (key_pem, private_key) = read_private_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| tls_file(cert, err.to_string()))?;
        let client_ca = match client_ca {
            None => {
                check_identity(builder.with_no_client_auth(), chain, private_key, cert, key)?;
                None
            }
            Some(ca) => {
                let (ca_pem, roots) = read_certificates(ca)?;
                let mut store = rustls::RootCertStore::empty();
                for root in roots {
                    store.add(root).map_err(|err| {
                        tls_file(ca, format!("not a usable CA certificate: {err}"))
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(store),
                    provider,
                )
                .build()
                .map_err(|err| tls_file(ca, format!("not a usable CA certificate: {err}")))?;
                check_identity(
                    builder.with_client_cert_verifier(verifier),
                    chain,
                    private_key,
                    cert,
                    key,
                )?;
                Some(Certificate::from_pem(ca_pem))
            }
        };
        Ok(ServerTls {
            identity: Identity::from_pem(cert_pem, key_pem),
            client_ca,
        })
    }
}

/// Builds a server config from a checked chain and key, only to learn
/// whether rustls takes them (it checks that the key matches).
fn check_identity(
    builder: rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<()> {
    builder.with_single_cert(chain, key).map_err(|err| {
        tls_file(
            cert_path,
            format!(
                "cannot be used with the key in {}: {err}",
                key_path.display()
            ),
        )
    })?;
    Ok(())
}

/// The client's TLS setup: the CA to trust (`--ca-cert`, else the system's
/// roots) and, for mutual TLS, the certificate to present
/// (`--client-cert --client-key`), as a rustls configuration.
#[derive(Clone)]
pub(crate) struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field(
                "client_certificate",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads and checks the files the client options name; `server` is
    /// only for messages.
    pub(crate) fn load(
        server: &str,
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<ClientTls> {
        check_client_identity_pair(client_cert, client_key)?;
        let mut roots = rustls::RootCertStore::empty();
        let mut pinned = Vec::new();
        match ca {
            Some(path) => {
                for cert in read_certificates(path)?.1 {
                    roots.add(cert.clone()).map_err(|err| {
                        tls_file(path, format!("not a usable CA certificate: {err}"))
                    })?;
                    pinned.push(cert);
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(Error::Tls {
                        server: server.to_string(),
                        reason: "no system CA certificates were found to check the server \
                                 with; pass --ca-cert FILE"
                            .into(),
                    });
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let setup = |err: String| Error::Tls {
            server: server.to_string(),
            reason: err,
        };
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|err| setup(err.to_string()))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| setup(err.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedOrWebPki { webpki, pinned }));
        let mut config = match (client_cert, client_key) {
            (Some(cert), Some(key)) => {
                let (_, chain) = read_certificates(cert)?;
                let (_, private_key) = read_private_key(key)?;
                builder
                    .with_client_auth_cert(chain, private_key)
                    .map_err(|err| {
                        tls_file(
                            cert,
                            format!("cannot be used with the key in {}: {err}", key.display()),
                        )
                    })?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration.
    pub(crate) fn config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.config)
    }
}

/// The standard (webpki) check of the server's certificate, plus one case
/// it refuses and curl accepts: a self-signed certificate that is marked as
/// a CA (as `openssl req -x509` makes them) presented by the server itself.
/// It is accepted only when it is byte for byte one of the `--ca-cert`
/// certificates, and only for a host name it names.
#[derive(Debug)]
struct PinnedOrWebPki {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let err = match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(err) => err,
        };
        let ca_as_server = matches!(
            &err,
            rustls::Error::InvalidCertificate(CertificateError::Other(other))
                if matches!(other.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity))
        );
        if !ca_as_server
            || !self
                .pinned
                .iter()
                .any(|pin| pin.as_ref() == end_entity.as_ref())
        {
            return Err(err);
        }
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        cert.verify_is_valid_for_subject_name(server_name)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `--client-cert` and `--client-key` come together or not at all.
pub(crate) fn check_client_identity_pair(cert: Option<&Path>, key: Option<&Path>) -> Result<()> {
    match (cert, key) {
        (Some(_), None) => Err(Error::Usage(
            "--client-cert needs --client-key (the private key of that certificate)".into(),
        )),
        (None, Some(_)) => Err(Error::Usage(
            "--client-key needs --client-cert (the certificate of that key)".into(),
        )),
        _ => Ok(()),
    }
}

/// Reads a PEM file holding one or more certificates.
fn read_certificates(path: &Path) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>)> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| tls_file(path, format!("not a valid PEM file ({err})")))?;
    if certs.is_empty() {
        return Err(tls_file(
            path,
            "no certificate in it (expected a PEM block -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok((pem, certs))
}

/// Reads a PEM file holding a private key (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(path: &Path) -> Result<(Vec<u8>, PrivateKeyDer<'static>)> {
    let pem = read_pem(path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => tls_file(
            path,
            "no private key in it (expected a PEM block -----BEGIN PRIVATE KEY-----)".into(),
        ),
        err => tls_file(path, format!("not a valid PEM file ({err})")),
    })?;
    Ok((pem, key))
}

/// The bytes of a PEM file, refused when unreadable or implausibly large.
fn read_pem(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|err| tls_file(path, describe_io(&err)))?;
    let mut pem = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|err| tls_file(path, describe_io(&err)))?;
    if pem.len() as u64 > MAX_PEM_BYTES {
        return Err(tls_file(
            path,
            format!("larger than {MAX_PEM_BYTES} bytes; not a PEM certificate or key"),
        ));
    }
    Ok(pem)
}

fn tls_file(path: &Path, reason: String) -> Error {
    Error::TlsFile {
        path: PathBuf::from(path),
        reason,
    }
}

fn describe_io(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(end) => text[..end].to_lowercase(),
        None => text,
    };
    format!("cannot read it: {text}")
}

/// What went wrong in a TLS handshake, as a sentence for the user, when the
/// error's source chain holds a rustls error (or a TLS-level symptom); `None`
/// when the failure has nothing to do with TLS.
pub(crate) fn diagnose(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(describe_rustls(tls));
        }
        // An I/O error does not list the error it wraps as its source (it
        // skips to that error's source), and h2's error lists nothing: look
        // inside both.
        let io = err
            .downcast_ref::<io::Error>()
            .or_else(|| err.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        if let Some(inner) = io.and_then(io::Error::get_ref)
            && let Some(found) = diagnose(inner)
        {
            return Some(found);
        }
        let text = err.to_string();
        if text.contains("HTTP/2 was not negotiated") {
            return Some(
                "the server does not offer HTTP/2 over TLS (ALPN h2); is it a fetchd server?"
                    .into(),
            );
        }
        if text.contains("no native certs found") {
            return Some(
                "no system CA certificates were found to check the server with; pass --ca-cert FILE"
                    .into(),
            );
        }
        if text.contains("tls handshake eof") {
            return Some(
                "the server closed the connection during the TLS handshake; \
                 is it serving TLS at this address (or only plain http://)?"
                    .into(),
            );
        }
        current = err.source();
    }
    None
}

/// One rustls error as a sentence.
fn describe_rustls(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => describe_server_certificate(cert),
        rustls::Error::AlertReceived(alert) => describe_alert(*alert),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server did not answer with TLS; is it serving plain http:// at this address?"
                .into()
        }
        rustls::Error::NoCertificatesPresented => "the peer presented no certificate".into(),
        other => format!("TLS handshake failed: {other}"),
    }
}

/// Why the client refused the server's certificate.
fn describe_server_certificate(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => "the server's certificate is not trusted: it is signed \
             by an unknown CA (pass --ca-cert FILE with the CA that signed it)"
            .into(),
        CertificateError::NotValidForName => {
            "certificate name mismatch: the server's certificate is not valid for the host name \
             in --server"
                .into()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let host = match expected {
                rustls::pki_types::ServerName::DnsName(name) => name.as_ref().to_string(),
                rustls::pki_types::ServerName::IpAddress(ip) => {
                    std::net::IpAddr::from(*ip).to_string()
                }
                other => format!("{other:?}"),
            };
            let names = if presented.is_empty() {
                "no names".to_string()
            } else {
                presented.join(", ")
            };
            format!(
                "certificate name mismatch: the server's certificate is not valid for {host} \
                 (it is valid for {names}); connect by one of those names"
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (check the clocks)".into()
        }
        CertificateError::Revoked => "the server's certificate has been revoked".into(),
        CertificateError::BadSignature => "the server's certificate has a bad signature".into(),
        CertificateError::Other(other)
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) =>
        {
            "the server's certificate is not trusted: it is a CA certificate, not a server's \
             (a self-signed one is trusted only when given itself as --ca-cert)"
                .into()
        }
        CertificateError::Other(other) => {
            format!("the server's certificate is not acceptable: {}", other.0)
        }
        other => format!("the server's certificate is not acceptable: {other}"),
    }
}

/// What a TLS alert from the server means to the client.
fn describe_alert(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::CertificateRequired => "the server requires a client certificate \
             (mutual TLS): pass --client-cert FILE --client-key FILE"
            .into(),
        AlertDescription::UnknownCA => "the server does not trust the client certificate: it is \
             not signed by the CA the server accepts (its --client-ca)"
            .into(),
        AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::CertificateRevoked
        | AlertDescription::CertificateExpired
        | AlertDescription::AccessDenied => {
            format!("the server refused the client certificate ({alert:?})")
        }
        AlertDescription::DecryptError => {
            "the server could not verify the client certificate's signature; does \
             --client-key belong to --client-cert?"
                .into()
        }
        AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => {
            format!(
                "the server refused the TLS handshake ({alert:?}): no protocol version or \
                 cipher in common"
            )
        }
        other => format!("the server ended the TLS handshake with the alert {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rustls error wrapped in an I/O error, as tokio-rustls reports it,
    /// is found and described.
    #[test]
    fn finds_rustls_errors_inside_io_errors() {
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = diagnose(&err).expect("a TLS error");
        assert!(text.contains("unknown CA"), "{text}");
        assert!(text.contains("--ca-cert"), "{text}");

        let alert = io::Error::other(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        let text = diagnose(&alert).expect("a TLS error");
        assert!(text.contains("--client-cert"), "{text}");
    }

    /// Errors without TLS in them are left alone.
    #[test]
    fn other_errors_are_not_tls() {
        let err = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(diagnose(&err).is_none());
    }

    /// A missing file, an empty file and a key where a certificate belongs
    /// are each reported with the path.
    #[test]
    fn bad_pem_files_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let text = read_certificates(&missing)
            .expect_err("missing")
            .to_string();
        assert!(
            text.contains("missing.pem") && text.contains("cannot read"),
            "{text}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let text = read_certificates(&empty).expect_err("empty").to_string();
        assert!(
            text.contains("empty.pem") && text.contains("no certificate"),
            "{text}"
        );
        let text = read_private_key(&empty).expect_err("empty").to_string();
        assert!(text.contains("no private key"), "{text}");
    }
}
