//! Pulsar's `basic` method: a user id and password, sent as `user:password` and checked by
//! the broker against its htpasswd file.

use std::fmt;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::auth::{AuthData, Authentication};
use crate::error::ClientError;

/// The method name Pulsar brokers know basic authentication by.
pub const BASIC_METHOD: &str = "basic";

/// User and password authentication (Pulsar's `AuthenticationBasic`).
#[derive(Clone)]
pub struct BasicAuthentication {
    user_id: String,
    password: String,
}

impl BasicAuthentication {
    pub fn new(user_id: impl Into<String>, password: impl Into<String>) -> Self {
        BasicAuthentication { user_id: user_id.into(), password: password.into() }
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }
}

impl Authentication for BasicAuthentication {
    fn method_name(&self) -> &str {
        BASIC_METHOD
    }

    fn auth_data(&self) -> BoxFuture<'_, Result<AuthData, ClientError>> {
        let data = AuthData::from(format!("{}:{}", self.user_id, self.password));
        async move { Ok(data) }.boxed()
    }
}

impl fmt::Debug for BasicAuthentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuthentication")
            .field("user_id", &self.user_id)
            .field("password", &format_args!("<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn data_is_user_colon_password_and_debug_hides_the_password() {
        let auth = BasicAuthentication::new("alice", "s3cr3t:pw");
        assert_eq!(auth.auth_data().await.expect("data").as_bytes(), b"alice:s3cr3t:pw");
        let shown = format!("{auth:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
    }
}
