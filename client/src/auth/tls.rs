//! Pulsar's `tls` method: the broker takes the client's role from the certificate it
//! presented in the TLS handshake, so CONNECT carries no data; this provider supplies that
//! certificate and key to the TLS layer.

use std::path::PathBuf;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::auth::{AuthData, Authentication, ClientCertificateFiles};
use crate::error::ClientError;

/// The method name Pulsar brokers know TLS authentication by.
pub const TLS_METHOD: &str = "tls";

/// Authentication by client certificate (Pulsar's `AuthenticationTls`). Needs a
/// `pulsar+ssl://` service URL: the certificate is presented in the TLS handshake.
#[derive(Debug, Clone)]
pub struct TlsAuthentication {
    certificate: ClientCertificateFiles,
}

impl TlsAuthentication {
    /// The client certificate (PEM, with any intermediates) and its private key (PEM).
    pub fn new(certificate_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        TlsAuthentication {
            certificate: ClientCertificateFiles { certificate: certificate_file.into(), private_key: key_file.into() },
        }
    }
}

impl Authentication for TlsAuthentication {
    fn method_name(&self) -> &str {
        TLS_METHOD
    }

    /// Empty, as Pulsar's client sends it: the identity is the certificate.
    fn auth_data(&self) -> BoxFuture<'_, Result<AuthData, ClientError>> {
        async { Ok(AuthData::default()) }.boxed()
    }

    fn tls_client_certificate(&self) -> Option<&ClientCertificateFiles> {
        Some(&self.certificate)
    }
}
