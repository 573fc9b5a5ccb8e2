//! How [`EtcdStore`](crate::EtcdStore) reaches a secured etcd: as an etcd user (etcd's
//! `--auth` with users and roles; the client authenticates and sends the token etcd gives it on
//! every call, leases and watches included), and over TLS (the CA that signed etcd's
//! certificate; a client certificate for etcd's `--client-cert-auth`).
//!
//! Settings name files, never hold them in logs: `Debug` hides the password.

use std::fmt;
use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use serde::Deserialize;

use crate::{MetaError, Result};

/// Largest password, certificate or key file read.
const MAX_FILE_LEN: u64 = 1024 * 1024;

/// The etcd user and TLS files of a metadata store connection (a broker's
/// `metadata_store_*` settings, a bookie's `[metadata_store]` section).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdOptions {
    /// An etcd user; with `password` or `password_file`.
    pub user: Option<String>,
    pub password: Option<String>,
    /// A file holding the password (surrounding whitespace trimmed).
    pub password_file: Option<PathBuf>,
    /// PEM CA that signed etcd's certificate: setting it dials the endpoints over TLS.
    pub tls_trust_certs_file_path: Option<PathBuf>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub tls_certificate_file_path: Option<PathBuf>,
    pub tls_key_file_path: Option<PathBuf>,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("tls_trust_certs_file_path", &self.tls_trust_certs_file_path)
            .field("tls_certificate_file_path", &self.tls_certificate_file_path)
            .field("tls_key_file_path", &self.tls_key_file_path)
            .finish()
    }
}

fn invalid(setting: &str, reason: impl ToString) -> MetaError {
    MetaError::InvalidConfig { setting: setting.to_owned(), reason: reason.to_string() }
}

/// Reads a small file; the error names the setting and the file.
fn read_file(setting: &str, path: &Path) -> Result<Vec<u8>> {
    let named = |reason: String| invalid(setting, format!("{}: {reason}", path.display()));
    let length = std::fs::metadata(path).map_err(|error| named(error.to_string()))?.len();
    if length > MAX_FILE_LEN {
        return Err(named(format!("{length} bytes: too large")));
    }
    std::fs::read(path).map_err(|error| named(error.to_string()))
}

impl EtcdOptions {
    /// Whether the endpoints are dialed over TLS.
    pub fn tls(&self) -> bool {
        self.tls_trust_certs_file_path.is_some()
    }

    /// The password, from the setting or its file.
    fn password(&self) -> Result<Option<String>> {
        match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => Err(invalid("password", "give password or password_file, not both")),
            (Some(password), None) => Ok(Some(password.clone())),
            (None, Some(path)) => {
                let text = String::from_utf8(read_file("password_file", path)?)
                    .map_err(|_| invalid("password_file", format!("{}: not UTF-8", path.display())))?;
                Ok(Some(text.trim().to_owned()))
            }
            (None, None) => Ok(None),
        }
    }

    /// Adds the user and TLS settings to `options`, reading the files now; errors name the
    /// setting and file, never the password.
    pub(crate) fn apply(&self, mut options: ConnectOptions) -> Result<ConnectOptions> {
        let password = self.password()?;
        match (self.user.as_deref().filter(|user| !user.is_empty()), password) {
            (Some(user), Some(password)) => options = options.with_user(user, password),
            (Some(_), None) => return Err(invalid("user", "needs password or password_file")),
            (None, Some(_)) => return Err(invalid("password", "given without user")),
            (None, None) => {}
        }
        let identity = match (&self.tls_certificate_file_path, &self.tls_key_file_path) {
            (None, None) => None,
            (Some(certificate), Some(key)) => Some(Identity::from_pem(
                read_file("tls_certificate_file_path", certificate)?,
                read_file("tls_key_file_path", key)?,
            )),
            _ => return Err(invalid("tls_certificate_file_path", "and tls_key_file_path go together")),
        };
        match &self.tls_trust_certs_file_path {
            Some(ca) => {
                let mut tls = TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(read_file("tls_trust_certs_file_path", ca)?));
                if let Some(identity) = identity {
                    tls = tls.identity(identity);
                }
                options = options.with_tls(tls);
            }
            None if identity.is_some() => {
                return Err(invalid("tls_certificate_file_path", "needs tls_trust_certs_file_path (TLS to etcd)"))
            }
            None => {}
        }
        Ok(options)
    }

    /// `endpoints` as dialed: `https://` with TLS (tonic uses TLS only for https URIs).
    pub(crate) fn endpoints(&self, endpoints: &[String]) -> Vec<String> {
        endpoints
            .iter()
            .map(|endpoint| {
                let host_port = endpoint.trim_start_matches("http://").trim_start_matches("https://");
                match self.tls() {
                    true => format!("https://{host_port}"),
                    false => format!("http://{host_port}"),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let options =
            EtcdOptions { user: Some("root".into()), password: Some("hunter22".into()), ..Default::default() };
        let shown = format!("{options:?}");
        assert!(shown.contains("root") && !shown.contains("hunter22"), "{shown}");
    }

    #[test]
    fn settings_that_do_not_fit_are_named() {
        let both = EtcdOptions {
            user: Some("u".into()),
            password: Some("p".into()),
            password_file: Some("/x".into()),
            ..Default::default()
        };
        assert!(both.apply(ConnectOptions::new()).unwrap_err().to_string().contains("not both"));
        let no_user = EtcdOptions { password: Some("secret-pw".into()), ..Default::default() };
        let error = no_user.apply(ConnectOptions::new()).unwrap_err().to_string();
        assert!(error.contains("without user") && !error.contains("secret-pw"), "{error}");
        let missing_ca =
            EtcdOptions { tls_trust_certs_file_path: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let error = missing_ca.apply(ConnectOptions::new()).unwrap_err().to_string();
        assert!(error.contains("tls_trust_certs_file_path") && error.contains("/nonexistent/ca.pem"), "{error}");
        let lone_key = EtcdOptions { tls_key_file_path: Some("/k".into()), ..Default::default() };
        assert!(lone_key.apply(ConnectOptions::new()).is_err());
    }

    #[test]
    fn tls_dials_https() {
        let endpoints = vec!["http://127.0.0.1:2379".to_owned(), "etcd-2:2379".to_owned()];
        let tls = EtcdOptions { tls_trust_certs_file_path: Some("/ca.pem".into()), ..Default::default() };
        assert_eq!(tls.endpoints(&endpoints), ["https://127.0.0.1:2379", "https://etcd-2:2379"]);
        assert_eq!(EtcdOptions::default().endpoints(&endpoints), ["http://127.0.0.1:2379", "http://etcd-2:2379"]);
    }

    #[test]
    fn reads_from_toml() {
        let options: EtcdOptions = toml_like();
        assert_eq!(options.user.as_deref(), Some("magnetar"));
    }

    fn toml_like() -> EtcdOptions {
        serde_json::from_str(r#"{"user":"magnetar","password_file":"/etc/pw"}"#).expect("valid")
    }
}
