//! Pulsar's spelling of authentication settings: a plugin (a Java class name, or here also a
//! short name) and a parameter string, as `--auth-plugin` / `--auth-params` and client.conf's
//! `authPlugin` / `authParams` give them. Every CLI and [`ClientConf`](crate::ClientConf)
//! goes through [`AuthPlugin`].
//!
//! Parameters come in the forms Pulsar accepts:
//!
//! - token: `token:<jwt>`, `file:///path/to/token` (read again at every use), `env:VAR`,
//!   `{"token":"<jwt>"}`, or the token itself;
//! - basic: `{"userId":"u","password":"p"}` or `userId:u,password:p`;
//! - tls: `{"tlsCertFile":"/a","tlsKeyFile":"/b"}` or `tlsCertFile:/a,tlsKeyFile:/b`.
//!
//! Parameters are secrets: errors say what is wrong and never quote them.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use tracing::warn;

use crate::auth::{Authentication, BasicAuthentication, TlsAuthentication, TokenAuthentication};
use crate::error::ClientError;

const CLASS_PREFIX: &str = "org.apache.pulsar.client.impl.auth.";

/// Pulsar plugins this client knows but does not implement.
const UNSUPPORTED_CLASSES: [&str; 5] = [
    "org.apache.pulsar.client.impl.auth.oauth2.AuthenticationOAuth2",
    "org.apache.pulsar.client.impl.auth.AuthenticationSasl",
    "org.apache.pulsar.client.impl.auth.AuthenticationAthenz",
    "org.apache.pulsar.client.impl.auth.AuthenticationKeyStoreTls",
    "org.apache.pulsar.client.impl.auth.AuthenticationDisabled",
];

/// An authentication plugin as Pulsar names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPlugin {
    /// `org.apache.pulsar.client.impl.auth.AuthenticationToken`, or `token`.
    Token,
    /// `org.apache.pulsar.client.impl.auth.AuthenticationBasic`, or `basic`.
    Basic,
    /// `org.apache.pulsar.client.impl.auth.AuthenticationTls`, or `tls`.
    Tls,
}

impl AuthPlugin {
    /// The plugin for a Pulsar class name or a short name (`token`, `basic`, `tls`, in any
    /// case).
    pub fn from_name(name: &str) -> Result<AuthPlugin, ClientError> {
        let name = name.trim();
        let short = name.strip_prefix(CLASS_PREFIX).and_then(|class| class.strip_prefix("Authentication"));
        match short {
            Some("Token") => return Ok(AuthPlugin::Token),
            Some("Basic") => return Ok(AuthPlugin::Basic),
            Some("Tls") => return Ok(AuthPlugin::Tls),
            _ => {}
        }
        match name.to_ascii_lowercase().as_str() {
            "token" => Ok(AuthPlugin::Token),
            "basic" => Ok(AuthPlugin::Basic),
            "tls" => Ok(AuthPlugin::Tls),
            _ if UNSUPPORTED_CLASSES.contains(&name) => {
                Err(ClientError::Unsupported { what: format!("the authentication plugin {name}") })
            }
            _ => Err(ClientError::UnknownAuthPlugin { plugin: name.to_owned() }),
        }
    }

    /// The short name, which is also the method name sent to brokers.
    pub fn name(self) -> &'static str {
        match self {
            AuthPlugin::Token => super::token::TOKEN_METHOD,
            AuthPlugin::Basic => super::basic::BASIC_METHOD,
            AuthPlugin::Tls => super::tls::TLS_METHOD,
        }
    }

    /// The provider configured by `params` in one of Pulsar's forms (see the module doc).
    pub fn authentication(self, params: &str) -> Result<Arc<dyn Authentication>, ClientError> {
        Ok(match self {
            AuthPlugin::Token => Arc::new(token_from_params(params)?),
            AuthPlugin::Basic => {
                let mut map = param_map(self, params)?;
                let user_id = take_required(self, &mut map, "userId")?;
                let password = take_required(self, &mut map, "password")?;
                warn_unknown(self, map);
                Arc::new(BasicAuthentication::new(user_id, password))
            }
            AuthPlugin::Tls => {
                let mut map = param_map(self, params)?;
                let certificate = take_required(self, &mut map, "tlsCertFile")?;
                let key = take_required(self, &mut map, "tlsKeyFile")?;
                warn_unknown(self, map);
                Arc::new(TlsAuthentication::new(certificate, key))
            }
        })
    }
}

impl FromStr for AuthPlugin {
    type Err = ClientError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        AuthPlugin::from_name(name)
    }
}

impl fmt::Display for AuthPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The provider for a plugin and its parameters as Pulsar spells them, e.g.
/// `("org.apache.pulsar.client.impl.auth.AuthenticationToken", "file:///run/token")`.
pub fn authentication_from_plugin(plugin: &str, params: &str) -> Result<Arc<dyn Authentication>, ClientError> {
    AuthPlugin::from_name(plugin)?.authentication(params)
}

fn invalid(plugin: AuthPlugin, reason: impl Into<String>) -> ClientError {
    ClientError::InvalidAuthParams { plugin: plugin.name(), reason: reason.into() }
}

fn token_from_params(params: &str) -> Result<TokenAuthentication, ClientError> {
    let plugin = AuthPlugin::Token;
    let params = params.trim();
    let non_empty = |token: &str| {
        if token.is_empty() {
            Err(invalid(plugin, "the token is empty"))
        } else {
            Ok(TokenAuthentication::new(token))
        }
    };
    if params.is_empty() {
        return Err(invalid(plugin, "none given: expected token:<token>, file:///path/to/token or the token itself"));
    }
    if let Some(token) = params.strip_prefix("token:").or_else(|| params.strip_prefix("data:")) {
        return non_empty(token);
    }
    if params.starts_with("file:") {
        let path = url::Url::parse(params)
            .ok()
            .and_then(|url| url.to_file_path().ok())
            .filter(|path| path.file_name().is_some())
            .ok_or_else(|| {
                invalid(plugin, "file: must be a file URL with an absolute path, as file:///path/to/token")
            })?;
        return Ok(TokenAuthentication::from_file(path));
    }
    if let Some(name) = params.strip_prefix("env:") {
        if name.is_empty() {
            return Err(invalid(plugin, "env: names no environment variable"));
        }
        return Ok(TokenAuthentication::from_env(name));
    }
    if params.starts_with('{') {
        let mut map = param_map(plugin, params)?;
        let token = take_required(plugin, &mut map, "token")?;
        warn_unknown(plugin, map);
        return non_empty(&token);
    }
    // Pulsar takes anything else as the token itself.
    non_empty(params)
}

/// Parameters as a map: a JSON object of strings, or Pulsar's `key1:value1,key2:value2`
/// (the value runs to the next comma and may hold colons, as Windows paths do).
fn param_map(plugin: AuthPlugin, params: &str) -> Result<HashMap<String, String>, ClientError> {
    let params = params.trim();
    if params.is_empty() {
        return Err(invalid(plugin, "none given"));
    }
    if params.starts_with('{') {
        // Syntax errors are reported by position only: serde's messages may quote the input.
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(params).map_err(|error| {
            invalid(plugin, format!("not a valid JSON object (line {}, column {})", error.line(), error.column()))
        })?;
        return object
            .into_iter()
            .map(|(key, value)| match value {
                serde_json::Value::String(value) => Ok((key, value)),
                _ => Err(invalid(plugin, format!("the value of {key:?} is not a string"))),
            })
            .collect();
    }
    let mut map = HashMap::new();
    for (index, part) in params.split(',').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (key, value) =
            part.split_once(':').ok_or_else(|| invalid(plugin, format!("part {} is not key:value", index + 1)))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(invalid(plugin, format!("part {} has no key", index + 1)));
        }
        map.insert(key.to_owned(), value.trim().to_owned());
    }
    Ok(map)
}

fn take_required(plugin: AuthPlugin, map: &mut HashMap<String, String>, key: &str) -> Result<String, ClientError> {
    match map.remove(key) {
        Some(value) if !value.trim().is_empty() => Ok(value),
        Some(_) => Err(invalid(plugin, format!("{key} is empty"))),
        None => Err(invalid(plugin, format!("{key} is missing"))),
    }
}

fn warn_unknown(plugin: AuthPlugin, rest: HashMap<String, String>) {
    for key in rest.into_keys() {
        warn!(plugin = plugin.name(), %key, "unknown authentication parameter; ignored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN_CLASS: &str = "org.apache.pulsar.client.impl.auth.AuthenticationToken";
    const BASIC_CLASS: &str = "org.apache.pulsar.client.impl.auth.AuthenticationBasic";
    const TLS_CLASS: &str = "org.apache.pulsar.client.impl.auth.AuthenticationTls";

    async fn data(plugin: &str, params: &str) -> (String, Vec<u8>) {
        let auth = authentication_from_plugin(plugin, params).expect("valid");
        let data = auth.auth_data().await.expect("data");
        (auth.method_name().to_owned(), data.into_bytes())
    }

    fn refused(plugin: &str, params: &str) -> ClientError {
        match authentication_from_plugin(plugin, params) {
            Ok(auth) => panic!("{plugin} {params:?} should be refused, got {auth:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn plugin_names_are_pulsar_classes_or_short_names() {
        assert_eq!(AuthPlugin::from_name(TOKEN_CLASS).expect("token"), AuthPlugin::Token);
        assert_eq!(AuthPlugin::from_name(BASIC_CLASS).expect("basic"), AuthPlugin::Basic);
        assert_eq!(AuthPlugin::from_name(TLS_CLASS).expect("tls"), AuthPlugin::Tls);
        assert_eq!(AuthPlugin::from_name(" token ").expect("token"), AuthPlugin::Token);
        assert_eq!("TLS".parse::<AuthPlugin>().expect("tls"), AuthPlugin::Tls);
        assert_eq!(AuthPlugin::Basic.to_string(), "basic");
    }

    #[test]
    fn unknown_and_unsupported_plugins_are_errors() {
        for name in ["", "jwt", "org.apache.pulsar.client.impl.auth.AuthenticationNope", "AuthenticationToken"] {
            assert!(
                matches!(AuthPlugin::from_name(name), Err(ClientError::UnknownAuthPlugin { .. })),
                "{name:?} should be unknown"
            );
        }
        let oauth = "org.apache.pulsar.client.impl.auth.oauth2.AuthenticationOAuth2";
        assert!(matches!(AuthPlugin::from_name(oauth), Err(ClientError::Unsupported { .. })));
    }

    #[tokio::test]
    async fn token_params_in_every_pulsar_form() {
        let expected = ("token".to_owned(), b"eyJhbGciOiJIUzI1NiJ9.e30.sig".to_vec());
        assert_eq!(data(TOKEN_CLASS, "token:eyJhbGciOiJIUzI1NiJ9.e30.sig").await, expected);
        assert_eq!(data("token", "eyJhbGciOiJIUzI1NiJ9.e30.sig").await, expected);
        assert_eq!(data("token", r#"{"token":"eyJhbGciOiJIUzI1NiJ9.e30.sig"}"#).await, expected);
        assert_eq!(data("token", " token:eyJhbGciOiJIUzI1NiJ9.e30.sig\n").await, expected);

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("my token");
        std::fs::write(&path, "eyJhbGciOiJIUzI1NiJ9.e30.sig\n").expect("write");
        let url = url::Url::from_file_path(&path).expect("file url");
        assert!(url.as_str().contains("%20"), "{url}");
        assert_eq!(data("token", url.as_str()).await, expected);
    }

    #[test]
    fn malformed_token_params_are_errors_that_do_not_quote_them() {
        for params in
            ["", "token:", "file://relative/path", "file:", "env:", r#"{"token":1}"#, r#"{"tok":"x"}"#, "{oops"]
        {
            let error = refused("token", params);
            assert!(matches!(error, ClientError::InvalidAuthParams { plugin: "token", .. }), "{params:?}: {error}");
        }
        let error = refused("token", r#"{"token": "secret-value", oops}"#);
        assert!(!error.to_string().contains("secret-value"), "{error}");
    }

    #[tokio::test]
    async fn basic_params_as_json_or_key_value_pairs() {
        let expected = ("basic".to_owned(), b"alice:p:w".to_vec());
        assert_eq!(data(BASIC_CLASS, r#"{"userId":"alice","password":"p:w"}"#).await, expected);
        assert_eq!(data("basic", "userId:alice,password:p:w").await, expected);
        let error = refused("basic", r#"{"userId":"alice"}"#);
        assert!(error.to_string().contains("password is missing"), "{error}");
        let error = refused("basic", "userId:alice,hunter2");
        assert!(error.to_string().contains("part 2 is not key:value"), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[tokio::test]
    async fn tls_params_name_the_certificate_and_key() {
        for params in [
            r#"{"tlsCertFile":"/c/cert.pem","tlsKeyFile":"/c/key.pem"}"#,
            "tlsCertFile:/c/cert.pem,tlsKeyFile:/c/key.pem",
        ] {
            let auth = authentication_from_plugin(TLS_CLASS, params).expect("valid");
            assert_eq!(auth.method_name(), "tls");
            assert!(auth.auth_data().await.expect("data").as_bytes().is_empty());
            let certificate = auth.tls_client_certificate().expect("a certificate");
            assert_eq!(certificate.certificate, std::path::Path::new("/c/cert.pem"));
            assert_eq!(certificate.private_key, std::path::Path::new("/c/key.pem"));
        }
        let error = refused("tls", "tlsCertFile:/c/cert.pem");
        assert!(error.to_string().contains("tlsKeyFile is missing"), "{error}");
        let error = refused("tls", "tlsCertFile:,tlsKeyFile:/k");
        assert!(error.to_string().contains("tlsCertFile is empty"), "{error}");
        let error = refused("tls", "");
        assert!(error.to_string().contains("none given"), "{error}");
    }
}
