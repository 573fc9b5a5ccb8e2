//! The metadata store's errors.

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A compare-and-set condition did not hold: someone else changed the key first.
    #[error("version mismatch on {key}: expected {expected}")]
    BadVersion { key: String, expected: String },
    #[error("no session {session}: expired or closed")]
    SessionExpired { session: i64 },
    #[error("invalid metadata key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("local metadata store at {path}: {source}")]
    Rocks {
        path: String,
        #[source]
        source: rocksdb::Error,
    },
    /// The message spells out the source chain: tonic's transport errors say only "transport
    /// error" themselves, the cause (refused, TLS, authentication) is below.
    #[error("etcd at {endpoint}: {}", magnetar_proto::error_chain(source))]
    Etcd {
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    /// etcd refused the credentials: no user while etcd has authentication on, an unknown
    /// user or a wrong password, or a user given to an etcd with authentication off. Not
    /// retryable: the settings must change. `etcd_says` is etcd's fixed message, which never
    /// holds the password.
    #[error("etcd at {endpoint}: authentication failed: {reason} ({etcd_says})")]
    EtcdAuthentication { endpoint: String, reason: &'static str, etcd_says: String },
    /// etcd did not answer within the store's operation timeout (no leader, no reachable
    /// endpoint, or overloaded). Retryable.
    #[error("etcd at {endpoint} did not answer {operation} within {after:?}")]
    EtcdTimeout { endpoint: String, operation: &'static str, after: std::time::Duration },
    #[error("corrupt record at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A metadata store setting that cannot be used (a file missing, settings that do not
    /// go together); never holds a password.
    #[error("metadata store {setting}: {reason}")]
    InvalidConfig { setting: String, reason: String },
    #[error("metadata store task stopped: {what}")]
    Stopped { what: &'static str },
}

impl MetaError {
    /// Whether the same call may succeed when tried again unchanged: etcd unreachable,
    /// without a leader or electing one ("leader changed"), overloaded, or too slow. Not a
    /// failed condition, bad settings, refused credentials or corrupt data.
    pub fn is_transient(&self) -> bool {
        match self {
            MetaError::EtcdTimeout { .. } => true,
            MetaError::Etcd { source, .. } => match source {
                etcd_client::Error::GRpcStatus(status) => matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted
                ),
                etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
                _ => false,
            },
            _ => false,
        }
    }

    /// The error for a write or delete whose `expected` condition did not hold on `key`.
    pub(crate) fn bad_version(key: &str, expected: crate::Expected) -> MetaError {
        let expected = match expected {
            crate::Expected::Any => "any version".to_owned(),
            crate::Expected::Absent => "absent".to_owned(),
            crate::Expected::Version(version) => format!("version {version}"),
        };
        MetaError::BadVersion { key: key.to_owned(), expected }
    }
}

/// How long a process starting up keeps retrying a metadata step that fails transiently
/// (an etcd election takes a few seconds; a member that is down, a few more).
pub const STARTUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `operation` until it succeeds, fails with an error `transient` does not accept, or
/// fails after `patience` has passed since the first try; each failure that will be retried
/// is logged as a warning naming `what`, and the pause between tries doubles from 250 ms to
/// 4 s. For steps a process takes while starting (connect, register, read its settings):
/// an etcd electing a leader then is no reason to exit.
pub async fn retry_transient<T, E, F, Fut>(
    what: &str,
    patience: std::time::Duration,
    transient: impl Fn(&E) -> bool,
    mut operation: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(250);
    loop {
        match operation().await {
            Err(error) if transient(&error) && started.elapsed() + pause < patience => {
                tracing::warn!(%error, retry_in = ?pause, "{what} failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(4));
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn unavailable() -> MetaError {
        MetaError::Etcd {
            endpoint: "e".to_owned(),
            source: etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: leader changed")),
        }
    }

    #[test]
    fn elections_and_timeouts_are_transient_refusals_are_not() {
        assert!(unavailable().is_transient());
        let timeout =
            MetaError::EtcdTimeout { endpoint: "e".to_owned(), operation: "get", after: Duration::from_secs(1) };
        assert!(timeout.is_transient());
        assert!(!MetaError::bad_version("/k", crate::Expected::Absent).is_transient());
        let denied = MetaError::Etcd {
            endpoint: "e".to_owned(),
            source: etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("etcdserver: permission denied")),
        };
        assert!(!denied.is_transient());
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success_others_return_at_once() {
        let tries = AtomicU32::new(0);
        let outcome = retry_transient("step", STARTUP_PATIENCE, MetaError::is_transient, || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0..=2 => Err(unavailable()),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(outcome.ok(), Some(3));

        tries.store(0, Ordering::SeqCst);
        let outcome: Result<(), MetaError> =
            retry_transient("step", STARTUP_PATIENCE, MetaError::is_transient, || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err(MetaError::bad_version("/k", crate::Expected::Absent))
            })
            .await;
        assert!(matches!(outcome, Err(MetaError::BadVersion { .. })));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_the_patience() {
        let started = tokio::time::Instant::now();
        let outcome: Result<(), MetaError> =
            retry_transient("step", Duration::from_secs(10), MetaError::is_transient, || async { Err(unavailable()) })
                .await;
        assert!(outcome.is_err());
        assert!(started.elapsed() < Duration::from_secs(10), "gave up after {:?}", started.elapsed());
        assert!(started.elapsed() >= Duration::from_secs(5), "gave up after {:?}", started.elapsed());
    }
}
