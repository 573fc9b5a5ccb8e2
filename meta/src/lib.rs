//! Metadata: the small, strongly consistent key-value state of a Magnetar deployment (tenants,
//! namespaces, ledgers, cursors, topic ownership, bookie registrations, schemas).
//!
//! [`MetadataStore`] is the one interface; [`LocalStore`] keeps it in RocksDB for
//! `magnetar standalone`, [`EtcdStore`] in etcd for clusters. Both give the same guarantees,
//! checked by one conformance suite (tests/conformance.rs):
//!
//! - every key has a version (a store-wide revision, increasing) that changes on each put;
//!   `put` and `delete` can require an expected version, which makes them compare-and-set;
//! - keys are `/`-separated paths; `list_children` answers the next path segment under a
//!   prefix, like a directory listing;
//! - `watch` streams every put and delete under a prefix after the call returns;
//! - ephemeral keys belong to a session and vanish when it ends (closed, expired, or the
//!   process died); [`lock`] builds leader election on top.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

mod error;
pub mod etcd;
pub mod etcd_options;
mod key;
pub mod local;
pub mod lock;
pub mod sequence;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{retry_transient, MetaError, STARTUP_PATIENCE};
pub use etcd::EtcdStore;
pub use etcd_options::EtcdOptions;
pub use local::LocalStore;

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// A key's version: the store revision at which it was last written. Always > 0.
pub type Version = i64;

/// A value and the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: Version,
}

/// The condition a write or delete requires, for compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// No condition.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this version.
    Version(Version),
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put { key: String, value: Vec<u8>, version: Version },
    Delete { key: String },
}

/// A stream of changes under a prefix. Bounded: a watcher that falls more than the store's
/// watch capacity behind is cut off (the channel closes) and must re-read and watch again.
pub type Watch = mpsc::Receiver<WatchEvent>;

/// Identifies a session: a liveness lease that owns ephemeral keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub i64);

#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// The value at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Versioned>>;

    /// Writes `value` at `key` if `expected` holds; returns the new version. A failed condition
    /// is [`MetaError::BadVersion`].
    async fn put(&self, key: &str, value: Vec<u8>, expected: Expected) -> Result<Version>;

    /// Removes `key` if `expected` holds. Deleting a missing key with `Expected::Any` is Ok;
    /// with `Expected::Version` it is [`MetaError::BadVersion`].
    async fn delete(&self, key: &str, expected: Expected) -> Result<()>;

    /// The distinct next path segments of keys under `path` (`/a` lists `b` for `/a/b/c`), sorted.
    async fn list_children(&self, path: &str) -> Result<Vec<String>>;

    /// Every put and delete of a key starting with `prefix`, from now on, in order.
    async fn watch(&self, prefix: &str) -> Result<Watch>;

    /// Starts a session that lives while this process keeps it alive, for at most `ttl`
    /// without contact (a lease in etcd; the process's life in the local store).
    async fn create_session(&self, ttl: Duration) -> Result<SessionId>;

    /// Like `put`, but the key is removed when `session` ends.
    async fn put_ephemeral(&self, session: SessionId, key: &str, value: Vec<u8>, expected: Expected)
        -> Result<Version>;

    /// Ends a session now, removing its ephemeral keys.
    async fn close_session(&self, session: SessionId) -> Result<()>;

    /// Resolves once this process must count `session` as lost: the store said it ended, or
    /// (etcd) the lease has not been refreshed for long enough that it may expire on the
    /// server soon, while the process cannot tell. It resolves before the server may let the
    /// session's keys go, so an owner can stop acting on them before anyone else takes them
    /// over. Never resolves for a session that lives as long as the process (the default).
    async fn session_lost(&self, _session: SessionId) {
        std::future::pending::<()>().await
    }
}
