//! `LocalStore`: the [`MetadataStore`] of `magnetar standalone`, kept in one RocksDB database.
//!
//! **Layout.** Each key `/a/b` is stored at RocksDB key `k/a/b` as a record: a format byte,
//! the version (big-endian i64), the owning session (big-endian i64, 0 for a persistent key)
//! and the value. The store-wide revision counter lives at `r` and is written in the same
//! `WriteBatch` as every change, so versions are strictly increasing across restarts, like
//! etcd's `mod_revision`. Every write uses `sync = true`: an acknowledged write survives a
//! crash.
//!
//! **Concurrency.** RocksDB calls block, so every operation runs on tokio's blocking pool
//! (`spawn_blocking`). Reads go straight to RocksDB. Writes (read, check the expected version,
//! write) are serialized by one mutex around the writer state, which makes
//! compare-and-set atomic; the mutex is only ever taken on the blocking pool, never on an async
//! worker. Watch events are published while the writer mutex is still held, so every watcher
//! sees changes in revision order. Operations are not cancel-safe: dropping the future does
//! not stop a write that already started on the blocking pool.
//!
//! **Sessions.** A local session lives until `close_session` or the end of the process (its
//! ttl is ignored). Sessions are only in memory, so `open` deletes every ephemeral key a
//! previous process left behind.
//!
//! **Watches.** Each watcher has its own bounded channel of [`WATCH_CAPACITY`] events. A
//! watcher whose channel is full is dropped (its receiver sees the channel close) rather than
//! slowing writers down; it must re-read and watch again.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rocksdb::{Options, WriteBatch, WriteOptions, DB};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{key, Expected, MetaError, MetadataStore, Result, SessionId, Version, Versioned, Watch, WatchEvent};

/// How many events a watcher may fall behind before it is cut off.
pub const WATCH_CAPACITY: usize = 1024;

/// RocksDB key prefix of metadata records (followed by the metadata key, which starts with `/`).
const DATA_PREFIX: &[u8] = b"k";
/// RocksDB key of the store-wide revision counter (big-endian i64).
const REVISION_KEY: &[u8] = b"r";
/// The session field of a record that belongs to no session.
const NO_SESSION: i64 = 0;

/// A standalone metadata store in a local RocksDB directory. Cheap to clone: clones share the
/// database, sessions and watchers. The database closes when the last clone is dropped.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

/// What all clones of a [`LocalStore`] share.
struct Inner {
    db: DB,
    /// The database directory, for error messages.
    path: String,
    /// Serializes writes; see the module docs.
    writer: Mutex<WriterState>,
    /// Live watchers. Locked briefly to publish or register, never across I/O.
    watchers: Mutex<Vec<Watcher>>,
    /// Next session id to hand out. Starts at 1 in every process: sessions and their keys from
    /// earlier processes are gone by then.
    next_session: AtomicI64,
}

/// State only the writer may touch.
struct WriterState {
    /// The last revision written (the value stored at [`REVISION_KEY`]).
    revision: i64,
    /// Open sessions and the ephemeral keys each one currently owns.
    sessions: HashMap<i64, HashSet<String>>,
}

struct Watcher {
    prefix: String,
    sender: mpsc::Sender<WatchEvent>,
}

/// One stored key: what the RocksDB value holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    version: Version,
    /// The owning session's id, or [`NO_SESSION`].
    session: i64,
    value: Vec<u8>,
}

impl LocalStore {
    /// Opens (creating if missing) the store in directory `path`, and deletes the ephemeral
    /// keys left by a previous process.
    ///
    /// Blocking: it opens RocksDB and scans the keys. From async code, call it inside
    /// `tokio::task::spawn_blocking`.
    pub fn open(path: &Path) -> Result<LocalStore> {
        let path_text = path.display().to_string();
        let rocks = |source| MetaError::Rocks { path: path_text.clone(), source };

        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path).map_err(rocks)?;

        let revision = match db.get(REVISION_KEY).map_err(rocks)? {
            None => 0,
            Some(bytes) => {
                let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| MetaError::Corrupt {
                    key: "<revision counter>".to_owned(),
                    reason: format!("{} bytes, expected 8", bytes.len()),
                })?;
                i64::from_be_bytes(bytes)
            }
        };

        // Sessions end with the process: drop every ephemeral key of the previous one.
        let mut stale = WriteBatch::default();
        let mut iterator = db.raw_iterator();
        iterator.seek(DATA_PREFIX);
        while let Some((raw_key, raw_value)) = iterator.item() {
            if !raw_key.starts_with(DATA_PREFIX) {
                break;
            }
            let record = Record::decode(raw_key, raw_value)?;
            if record.session != NO_SESSION {
                stale.delete(raw_key);
            }
            iterator.next();
        }
        iterator.status().map_err(rocks)?;
        drop(iterator);
        let stale_count = stale.len();
        if stale_count > 0 {
            db.write_opt(stale, &sync_write()).map_err(rocks)?;
            info!(path = %path_text, stale_count, "deleted ephemeral keys left by the previous process");
        }

        Ok(LocalStore {
            inner: Arc::new(Inner {
                db,
                path: path_text,
                writer: Mutex::new(WriterState { revision, sessions: HashMap::new() }),
                watchers: Mutex::new(Vec::new()),
                next_session: AtomicI64::new(1),
            }),
        })
    }

    /// Runs `operation` on the blocking pool.
    async fn blocking<T, F>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || operation(&inner))
            .await
            .map_err(|_| MetaError::Stopped { what: "local store operation (panicked or runtime shut down)" })?
    }
}

#[async_trait]
impl MetadataStore for LocalStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        key::validate(key)?;
        let key = key.to_owned();
        self.blocking(move |inner| {
            Ok(inner.read(&key)?.map(|record| Versioned { value: record.value, version: record.version }))
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, expected: Expected) -> Result<Version> {
        key::validate(key)?;
        let key = key.to_owned();
        self.blocking(move |inner| inner.put(&key, value, expected, NO_SESSION)).await
    }

    async fn delete(&self, key: &str, expected: Expected) -> Result<()> {
        key::validate(key)?;
        let key = key.to_owned();
        self.blocking(move |inner| inner.delete(&key, expected)).await
    }

    async fn list_children(&self, path: &str) -> Result<Vec<String>> {
        key::validate(path)?;
        let prefix = key::children_prefix(path);
        self.blocking(move |inner| inner.list_children(&prefix)).await
    }

    async fn watch(&self, prefix: &str) -> Result<Watch> {
        key::validate(prefix)?;
        let (sender, receiver) = mpsc::channel(WATCH_CAPACITY);
        let mut watchers = self.inner.lock_watchers()?;
        watchers.retain(|watcher| !watcher.sender.is_closed());
        watchers.push(Watcher { prefix: prefix.to_owned(), sender });
        Ok(receiver)
    }

    async fn create_session(&self, _ttl: Duration) -> Result<SessionId> {
        let session = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        self.blocking(move |inner| {
            inner.lock_writer()?.sessions.insert(session, HashSet::new());
            Ok(SessionId(session))
        })
        .await
    }

    async fn put_ephemeral(
        &self,
        session: SessionId,
        key: &str,
        value: Vec<u8>,
        expected: Expected,
    ) -> Result<Version> {
        key::validate(key)?;
        if session.0 == NO_SESSION {
            return Err(MetaError::SessionExpired { session: session.0 });
        }
        let key = key.to_owned();
        self.blocking(move |inner| inner.put(&key, value, expected, session.0)).await
    }

    /// Closing an unknown or already closed session is a no-op.
    async fn close_session(&self, session: SessionId) -> Result<()> {
        self.blocking(move |inner| inner.close_session(session.0)).await
    }
}

impl Inner {
    fn rocks_error(&self, source: rocksdb::Error) -> MetaError {
        MetaError::Rocks { path: self.path.clone(), source }
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, WriterState>> {
        Ok(self.writer.lock())
    }

    fn lock_watchers(&self) -> Result<MutexGuard<'_, Vec<Watcher>>> {
        Ok(self.watchers.lock())
    }

    fn read(&self, key: &str) -> Result<Option<Record>> {
        let raw_key = data_key(key);
        match self.db.get_pinned(&raw_key).map_err(|e| self.rocks_error(e))? {
            None => Ok(None),
            Some(raw_value) => Record::decode(&raw_key, &raw_value).map(Some),
        }
    }

    /// Writes `key` for `session` (or [`NO_SESSION`]) if `expected` holds.
    fn put(&self, key: &str, value: Vec<u8>, expected: Expected, session: i64) -> Result<Version> {
        let mut writer = self.lock_writer()?;
        if session != NO_SESSION && !writer.sessions.contains_key(&session) {
            return Err(MetaError::SessionExpired { session });
        }
        let current = self.read(key)?;
        check_expected(key, expected, current.as_ref())?;

        let revision = writer.revision + 1;
        let record = Record { version: revision, session, value };
        let mut batch = WriteBatch::default();
        batch.put(data_key(key), record.encode());
        batch.put(REVISION_KEY, revision.to_be_bytes());
        self.db.write_opt(batch, &sync_write()).map_err(|e| self.rocks_error(e))?;
        writer.revision = revision;

        // Like etcd, a put moves the key to the writer's session (or makes it persistent).
        if let Some(previous) = current.filter(|previous| previous.session != session) {
            if let Some(keys) = writer.sessions.get_mut(&previous.session) {
                keys.remove(key);
            }
        }
        if let Some(keys) = writer.sessions.get_mut(&session) {
            keys.insert(key.to_owned());
        }

        self.publish(vec![WatchEvent::Put { key: key.to_owned(), value: record.value, version: revision }]);
        Ok(revision)
    }

    fn delete(&self, key: &str, expected: Expected) -> Result<()> {
        let mut writer = self.lock_writer()?;
        let current = self.read(key)?;
        check_expected(key, expected, current.as_ref())?;
        let Some(current) = current else {
            return Ok(());
        };

        let revision = writer.revision + 1;
        let mut batch = WriteBatch::default();
        batch.delete(data_key(key));
        batch.put(REVISION_KEY, revision.to_be_bytes());
        self.db.write_opt(batch, &sync_write()).map_err(|e| self.rocks_error(e))?;
        writer.revision = revision;

        if let Some(keys) = writer.sessions.get_mut(&current.session) {
            keys.remove(key);
        }
        self.publish(vec![WatchEvent::Delete { key: key.to_owned() }]);
        Ok(())
    }

    /// Deletes the session's keys in one batch (one revision, like an etcd lease revoke).
    fn close_session(&self, session: i64) -> Result<()> {
        let mut writer = self.lock_writer()?;
        let Some(keys) = writer.sessions.remove(&session) else {
            return Ok(());
        };
        if keys.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<String> = keys.into_iter().collect();
        keys.sort();

        let revision = writer.revision + 1;
        let mut batch = WriteBatch::default();
        for key in &keys {
            batch.delete(data_key(key));
        }
        batch.put(REVISION_KEY, revision.to_be_bytes());
        if let Err(source) = self.db.write_opt(batch, &sync_write()) {
            // Keep the session so the caller can retry the close.
            writer.sessions.insert(session, keys.into_iter().collect());
            return Err(self.rocks_error(source));
        }
        writer.revision = revision;
        self.publish(keys.into_iter().map(|key| WatchEvent::Delete { key }).collect());
        Ok(())
    }

    /// The distinct child segments of keys under `prefix` (ends with `/`), sorted.
    fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        let raw_prefix = data_key(prefix);
        let mut children = BTreeSet::new();
        let mut iterator = self.db.raw_iterator();
        iterator.seek(&raw_prefix);
        while let Some(raw_key) = iterator.key() {
            if !raw_key.starts_with(&raw_prefix) {
                break;
            }
            let key = std::str::from_utf8(&raw_key[DATA_PREFIX.len()..]).map_err(|e| MetaError::Corrupt {
                key: String::from_utf8_lossy(raw_key).into_owned(),
                reason: format!("key is not UTF-8: {e}"),
            })?;
            let Some(child) = key::child_of(prefix, key) else {
                iterator.next();
                continue;
            };
            let has_descendants = key.len() > prefix.len() + child.len();
            children.insert(child.to_owned());
            if has_descendants {
                // Skip the rest of this child's subtree: every key starting with
                // `prefix + child + "/"` sorts before `prefix + child + "0"` ('0' follows '/').
                let mut skip_to = data_key(prefix);
                skip_to.extend_from_slice(child.as_bytes());
                skip_to.push(b'0');
                iterator.seek(&skip_to);
            } else {
                iterator.next();
            }
        }
        iterator.status().map_err(|e| self.rocks_error(e))?;
        Ok(children.into_iter().collect())
    }

    /// Hands `events` to every watcher whose prefix they match; cuts off watchers that are
    /// full or gone. Called with the writer mutex held, so events go out in revision order.
    fn publish(&self, events: Vec<WatchEvent>) {
        let Ok(mut watchers) = self.lock_watchers() else {
            return;
        };
        watchers.retain(|watcher| {
            for event in &events {
                let key = match event {
                    WatchEvent::Put { key, .. } | WatchEvent::Delete { key } => key,
                };
                if !key.starts_with(&watcher.prefix) {
                    continue;
                }
                match watcher.sender.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        warn!(prefix = %watcher.prefix, capacity = WATCH_CAPACITY, "watcher fell behind; closing its watch");
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }
}

/// Checks `expected` against the key's current record.
fn check_expected(key: &str, expected: Expected, current: Option<&Record>) -> Result<()> {
    let holds = match (expected, current) {
        (Expected::Any, _) => true,
        (Expected::Absent, current) => current.is_none(),
        (Expected::Version(version), Some(record)) => record.version == version,
        (Expected::Version(_), None) => false,
    };
    if holds {
        Ok(())
    } else {
        Err(MetaError::bad_version(key, expected))
    }
}

fn data_key(key: &str) -> Vec<u8> {
    let mut raw = Vec::with_capacity(DATA_PREFIX.len() + key.len());
    raw.extend_from_slice(DATA_PREFIX);
    raw.extend_from_slice(key.as_bytes());
    raw
}

fn sync_write() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

impl Record {
    /// Encoding format: `[1][version: i64 BE][session: i64 BE][value]`.
    const FORMAT: u8 = 1;
    const HEADER_LEN: usize = 1 + 8 + 8;

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(Self::HEADER_LEN + self.value.len());
        bytes.push(Self::FORMAT);
        bytes.extend_from_slice(&self.version.to_be_bytes());
        bytes.extend_from_slice(&self.session.to_be_bytes());
        bytes.extend_from_slice(&self.value);
        bytes
    }

    /// Decodes the RocksDB value stored at `raw_key` (used for error messages only).
    fn decode(raw_key: &[u8], bytes: &[u8]) -> Result<Record> {
        let corrupt = |reason: String| MetaError::Corrupt {
            key: String::from_utf8_lossy(raw_key.strip_prefix(DATA_PREFIX).unwrap_or(raw_key)).into_owned(),
            reason,
        };
        if bytes.len() < Self::HEADER_LEN {
            return Err(corrupt(format!("record of {} bytes is shorter than its header", bytes.len())));
        }
        if bytes[0] != Self::FORMAT {
            return Err(corrupt(format!("unknown record format {}", bytes[0])));
        }
        let field = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            i64::from_be_bytes(raw)
        };
        Ok(Record { version: field(1), session: field(9), value: bytes[Self::HEADER_LEN..].to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let record = Record { version: 42, session: 7, value: b"hello".to_vec() };
        assert_eq!(Record::decode(b"k/x", &record.encode()).expect("decode"), record);
        let empty = Record { version: 1, session: NO_SESSION, value: Vec::new() };
        assert_eq!(Record::decode(b"k/x", &empty.encode()).expect("decode"), empty);
    }

    #[test]
    fn truncated_or_unknown_records_are_corrupt() {
        let bytes = Record { version: 3, session: 0, value: vec![1, 2] }.encode();
        assert!(matches!(Record::decode(b"k/x", &bytes[..10]), Err(MetaError::Corrupt { .. })));
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(Record::decode(b"k/x", &future), Err(MetaError::Corrupt { key, .. }) if key == "/x"));
    }

    #[test]
    fn expected_conditions() {
        let record = Record { version: 5, session: 0, value: Vec::new() };
        assert!(check_expected("/k", Expected::Any, None).is_ok());
        assert!(check_expected("/k", Expected::Any, Some(&record)).is_ok());
        assert!(check_expected("/k", Expected::Absent, None).is_ok());
        assert!(check_expected("/k", Expected::Absent, Some(&record)).is_err());
        assert!(check_expected("/k", Expected::Version(5), Some(&record)).is_ok());
        assert!(check_expected("/k", Expected::Version(4), Some(&record)).is_err());
        assert!(check_expected("/k", Expected::Version(5), None).is_err());
    }
}
