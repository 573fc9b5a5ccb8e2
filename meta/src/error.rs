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
