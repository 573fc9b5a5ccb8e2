//! How a client proves who it is to the broker, as Pulsar clients do it.
//!
//! An [`Authentication`] names a method (`token`, `basic`, `tls`, ...) and produces the data
//! for it. The connection sends both in CONNECT (`auth_method_name`, `auth_data`), and asks the
//! provider again for fresh data whenever the broker sends AUTH_CHALLENGE (for instance because
//! a token expired), answering with AUTH_RESPONSE on the same connection: producers and
//! consumers on it are not disturbed.
//!
//! The providers here are Pulsar's: [`TokenAuthentication`] (a JWT from a string, a file read
//! again each time, an environment variable or a function), [`BasicAuthentication`]
//! (`user:password`) and [`TlsAuthentication`] (the role comes from the client certificate,
//! which it also supplies to the TLS layer). [`AuthPlugin`] turns Pulsar's spelling
//! (`--auth-plugin` / `--auth-params`, client.conf's `authPlugin` / `authParams`) into one.
//!
//! Secrets never reach logs: [`AuthData`] and every provider redact them in their `Debug`
//! output, and errors describe what is wrong without quoting a value.

mod basic;
mod plugin;
mod tls;
mod token;

use std::fmt;
use std::path::PathBuf;

use futures::future::BoxFuture;

use crate::error::ClientError;

pub use basic::BasicAuthentication;
pub use plugin::{authentication_from_plugin, AuthPlugin};
pub use tls::TlsAuthentication;
pub use token::TokenAuthentication;

/// A way for the client to authenticate itself to brokers. Implement it for a method of your
/// own; the connection calls [`auth_data`](Authentication::auth_data) for every CONNECT and
/// every AUTH_CHALLENGE, so a provider can hand out fresh credentials each time.
///
/// ```
/// use futures::future::BoxFuture;
/// use magnetar_client::{AuthData, Authentication, ClientError};
///
/// #[derive(Debug)]
/// struct Static;
///
/// impl Authentication for Static {
///     fn method_name(&self) -> &str {
///         "token"
///     }
///
///     fn auth_data(&self) -> BoxFuture<'_, Result<AuthData, ClientError>> {
///         Box::pin(async { Ok(AuthData::from("eyJhbGciOi...")) })
///     }
/// }
/// ```
pub trait Authentication: fmt::Debug + Send + Sync + 'static {
    /// The method the broker knows this by, sent as `auth_method_name`: `token`, `basic`,
    /// `tls`, ...
    fn method_name(&self) -> &str;

    /// The data to send as `auth_data`, produced afresh on every call. It runs on the
    /// connection's task, so it must not block: do file reads and other blocking work on
    /// `spawn_blocking` (the providers here do).
    fn auth_data(&self) -> BoxFuture<'_, Result<AuthData, ClientError>>;

    /// The client certificate to present in the TLS handshake, for methods whose identity is
    /// the certificate (Pulsar's `tls`). It takes precedence over
    /// [`ClientConfig::tls_certificate_file_path`](crate::ClientConfig::tls_certificate_file_path).
    fn tls_client_certificate(&self) -> Option<&ClientCertificateFiles> {
        None
    }
}

/// The bytes of `auth_data` in CONNECT or AUTH_RESPONSE. A secret: `Debug` shows only its
/// length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthData(Vec<u8>);

impl AuthData {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        AuthData(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl From<Vec<u8>> for AuthData {
    fn from(bytes: Vec<u8>) -> Self {
        AuthData(bytes)
    }
}

impl From<String> for AuthData {
    fn from(text: String) -> Self {
        AuthData(text.into_bytes())
    }
}

impl From<&str> for AuthData {
    fn from(text: &str) -> Self {
        AuthData(text.as_bytes().to_vec())
    }
}

impl fmt::Debug for AuthData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthData(<{} bytes redacted>)", self.0.len())
    }
}

/// A client certificate (with its chain) and its private key, both PEM files, for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificateFiles {
    /// The certificate, followed by any intermediates.
    pub certificate: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1). The path is not a secret; the file is.
    pub private_key: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_data_debug_shows_only_the_length() {
        let data = AuthData::from("secret-token");
        assert_eq!(format!("{data:?}"), "AuthData(<12 bytes redacted>)");
        assert_eq!(data.as_bytes(), b"secret-token");
    }
}
