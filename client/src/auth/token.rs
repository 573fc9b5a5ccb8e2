//! Pulsar's `token` method: a JWT (or any bearer token the broker's token provider accepts)
//! sent as the auth data. The token comes from a string, a file read again at every use (so
//! a sidecar can rotate it), an environment variable, or a function of the application.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::auth::{AuthData, Authentication};
use crate::error::ClientError;

/// The method name Pulsar brokers know token authentication by.
pub const TOKEN_METHOD: &str = "token";

type TokenFunction = dyn Fn() -> BoxFuture<'static, Result<String, ClientError>> + Send + Sync;

/// Token authentication (Pulsar's `AuthenticationToken`).
#[derive(Clone)]
pub struct TokenAuthentication {
    source: TokenSource,
}

#[derive(Clone)]
enum TokenSource {
    Static(String),
    File(PathBuf),
    Environment(String),
    Function(Arc<TokenFunction>),
}

impl TokenAuthentication {
    /// A fixed token.
    pub fn new(token: impl Into<String>) -> Self {
        TokenAuthentication { source: TokenSource::Static(token.into()) }
    }

    /// A token read from `path` each time one is needed (every CONNECT and AUTH_CHALLENGE),
    /// with surrounding whitespace removed: Pulsar's `file:///path` parameter.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        TokenAuthentication { source: TokenSource::File(path.into()) }
    }

    /// A token read from the environment variable `name` each time one is needed: Pulsar's
    /// `env:NAME` parameter.
    pub fn from_env(name: impl Into<String>) -> Self {
        TokenAuthentication { source: TokenSource::Environment(name.into()) }
    }

    /// A token from a function called each time one is needed (Pulsar's
    /// `AuthenticationToken(Supplier<String>)`). It runs on tokio's blocking pool, so it may
    /// block (read a file, call a local agent).
    pub fn from_fn<F>(function: F) -> Self
    where
        F: Fn() -> Result<String, ClientError> + Send + Sync + 'static,
    {
        let function = Arc::new(function);
        let call = move || {
            let function = function.clone();
            async move {
                tokio::task::spawn_blocking(move || function()).await.map_err(|_| ClientError::AuthenticationData {
                    method: TOKEN_METHOD.into(),
                    reason: "the token function panicked".into(),
                })?
            }
            .boxed()
        };
        TokenAuthentication { source: TokenSource::Function(Arc::new(call)) }
    }

    /// A token from an async function called each time one is needed (to fetch it from an
    /// identity service, say). It runs on the connection's task and must not block.
    pub fn from_async_fn<F, Fut>(function: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, ClientError>> + Send + 'static,
    {
        TokenAuthentication { source: TokenSource::Function(Arc::new(move || function().boxed())) }
    }

    /// The current token.
    pub async fn token(&self) -> Result<String, ClientError> {
        let token = match &self.source {
            TokenSource::Static(token) => token.clone(),
            TokenSource::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|source| ClientError::ReadFile {
                    what: "the token file",
                    path: path.clone(),
                    source,
                })?;
                text.trim().to_owned()
            }
            TokenSource::Environment(name) => std::env::var(name).map_err(|error| ClientError::AuthenticationData {
                method: TOKEN_METHOD.into(),
                reason: format!("environment variable {name}: {error}"),
            })?,
            TokenSource::Function(function) => function().await?,
        };
        if token.is_empty() {
            return Err(ClientError::AuthenticationData {
                method: TOKEN_METHOD.into(),
                reason: format!("the token from {} is empty", self.source.describe()),
            });
        }
        Ok(token)
    }
}

impl TokenSource {
    /// Where the token comes from, without the token.
    fn describe(&self) -> String {
        match self {
            TokenSource::Static(_) => "the settings".into(),
            TokenSource::File(path) => format!("file {}", path.display()),
            TokenSource::Environment(name) => format!("environment variable {name}"),
            TokenSource::Function(_) => "the token function".into(),
        }
    }
}

impl Authentication for TokenAuthentication {
    fn method_name(&self) -> &str {
        TOKEN_METHOD
    }

    fn auth_data(&self) -> BoxFuture<'_, Result<AuthData, ClientError>> {
        async move { Ok(AuthData::from(self.token().await?)) }.boxed()
    }
}

impl fmt::Debug for TokenAuthentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            TokenSource::Static(_) => "<redacted>".to_owned(),
            other => other.describe(),
        };
        f.debug_struct("TokenAuthentication").field("token", &format_args!("{source}")).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let auth = TokenAuthentication::new("eyJ.secret.sig");
        let shown = format!("{auth:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(shown, "TokenAuthentication { token: <redacted> }");
        let shown = format!("{:?}", TokenAuthentication::from_file("/run/token"));
        assert_eq!(shown, "TokenAuthentication { token: file /run/token }");
    }

    #[tokio::test]
    async fn file_token_is_read_again_each_time_and_trimmed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").expect("write");
        let auth = TokenAuthentication::from_file(&path);
        assert_eq!(auth.auth_data().await.expect("data").as_bytes(), b"first");
        std::fs::write(&path, "  second  \n").expect("write");
        assert_eq!(auth.auth_data().await.expect("data").as_bytes(), b"second");
    }

    #[tokio::test]
    async fn missing_or_empty_token_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        let auth = TokenAuthentication::from_file(&path);
        let error = auth.auth_data().await.expect_err("missing file");
        assert!(matches!(&error, ClientError::ReadFile { what: "the token file", .. }), "{error}");
        std::fs::write(&path, "\n").expect("write");
        let error = auth.auth_data().await.expect_err("empty file");
        assert!(error.to_string().contains("is empty"), "{error}");
    }

    #[tokio::test]
    async fn function_is_called_for_every_token() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let auth =
            TokenAuthentication::from_fn(move || Ok(format!("token-{}", counter.fetch_add(1, Ordering::SeqCst))));
        assert_eq!(auth.auth_data().await.expect("data").as_bytes(), b"token-0");
        assert_eq!(auth.auth_data().await.expect("data").as_bytes(), b"token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let failing = TokenAuthentication::from_async_fn(|| async {
            Err(ClientError::AuthenticationData { method: "token".into(), reason: "vault sealed".into() })
        });
        let error = failing.auth_data().await.expect_err("fails");
        assert!(error.to_string().contains("vault sealed"), "{error}");
    }
}
