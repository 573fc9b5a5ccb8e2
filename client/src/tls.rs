//! TLS for broker connections (`pulsar+ssl://`): turns the client's TLS settings into one
//! rustls client configuration (ring provider), built once per [`Client`](crate::Client) and
//! shared by all its connections.
//!
//! What the server must prove, from strictest to loosest:
//!
//! - by default, a certificate chain to a trusted root (the CA file, else the system's roots)
//!   that is valid for the broker's host name;
//! - with `tls_hostname_verification` off, the chain only (any name);
//! - with `tls_allow_insecure_connection`, nothing: any certificate is accepted. The
//!   handshake signatures are still checked, so the connection is encrypted, but it can be
//!   intercepted.
//!
//! A client certificate (mutual TLS) comes from the authentication provider when it has one
//! (Pulsar's `tls` method), else from `tls_certificate_file_path` / `tls_key_file_path`.
//! Certificate files are read when the client is created: a rotated certificate takes a new
//! client.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tracing::{debug, warn};

use crate::auth::ClientCertificateFiles;
use crate::error::ClientError;

/// What the TLS side of a client is built from (the TLS fields of `ClientConfig`, and the
/// client certificate its authentication or its files name).
pub(crate) struct TlsOptions<'a> {
    pub trust_certs_file_path: Option<&'a std::path::Path>,
    pub allow_insecure_connection: bool,
    pub hostname_verification: bool,
    pub client_certificate: Option<ClientCertificateFiles>,
}

/// Builds the rustls configuration for `config`. Reads the certificate files (off the async
/// threads).
pub(crate) async fn client_tls_config(config: TlsOptions<'_>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| tls_error("the ring provider supports no TLS version", source))?;

    let builder = if config.allow_insecure_connection {
        warn!("TLS server certificates are not verified (tls_allow_insecure_connection): the connection can be intercepted");
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate { provider }))
    } else {
        let roots = Arc::new(trusted_roots(config.trust_certs_file_path).await?);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider).build().map_err(|error| {
            ClientError::TlsConfig { reason: format!("cannot verify servers: {error}"), source: None }
        })?;
        if config.hostname_verification {
            builder.with_webpki_verifier(verifier)
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyServerName { inner: verifier }))
        }
    };

    let tls = match config.client_certificate {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let chain = read_certificates(&files.certificate, "the client certificate file").await?;
            let key = read_private_key(&files.private_key).await?;
            builder.with_client_auth_cert(chain, key).map_err(|source| {
                tls_error(
                    format!(
                        "cannot use the client certificate {} with the key {}",
                        files.certificate.display(),
                        files.private_key.display()
                    ),
                    source,
                )
            })?
        }
    };
    Ok(Arc::new(tls))
}

/// The name the broker's certificate must be valid for: its host, without IPv6 brackets.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(host.to_owned()).map_err(|_| ClientError::TlsConfig {
        reason: format!("{host:?} is neither a DNS name nor an IP address"),
        source: None,
    })
}

fn tls_error(reason: impl Into<String>, source: rustls::Error) -> ClientError {
    ClientError::TlsConfig { reason: reason.into(), source: Some(source) }
}

/// The roots to trust: the CA file's certificates, or the system's when there is no file.
async fn trusted_roots(ca_file: Option<&Path>) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for certificate in read_certificates(path, "the trusted CA certificates file").await? {
                roots.add(certificate).map_err(|source| {
                    tls_error(format!("a certificate in {} cannot be a trusted root", path.display()), source)
                })?;
            }
        }
        None => {
            let native = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs).await.map_err(|_| {
                ClientError::TlsConfig { reason: "loading the system's CA certificates panicked".into(), source: None }
            })?;
            for error in &native.errors {
                debug!(%error, "a system CA certificate source could not be read");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            debug!(added, ignored, "trusting the system's CA certificates");
            if roots.is_empty() {
                return Err(ClientError::TlsConfig {
                    reason: "no trusted CA certificates: the system has none; set tls_trust_certs_file_path \
                             (--tls-trust-cert-path, tlsTrustCertsFilePath) to a PEM file"
                        .into(),
                    source: None,
                });
            }
        }
    }
    Ok(roots)
}

async fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, ClientError> {
    tokio::fs::read(path).await.map_err(|source| ClientError::ReadFile { what, path: path.to_owned(), source })
}

/// Every certificate in a PEM file; at least one.
async fn read_certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = read_file(path, what).await?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ClientError::TlsConfig { reason: format!("{}: {error}", path.display()), source: None })?;
    if certificates.is_empty() {
        return Err(ClientError::TlsConfig {
            reason: format!("{} holds no PEM certificate", path.display()),
            source: None,
        });
    }
    Ok(certificates)
}

/// The first private key in a PEM file. Errors name the file, never its content.
async fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    let pem = read_file(path, "the client private key file").await?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| ClientError::TlsConfig {
        reason: format!("{} holds no usable PEM private key: {error}", path.display()),
        source: None,
    })
}

/// Verifies the chain but accepts a certificate issued for any name
/// (`tls_hostname_verification` off).
#[derive(Debug)]
struct AnyServerName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any server certificate (`tls_allow_insecure_connection`), still checking that the
/// server holds the key of the certificate it sent.
#[derive(Debug)]
struct AcceptAnyServerCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, certificate, signature, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, certificate, signature, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
