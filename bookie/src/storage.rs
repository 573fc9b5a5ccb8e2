//! The bookie's durable entry store.
//!
//! This first engine keeps entries and per-ledger state in RocksDB and makes every add durable
//! with a synced write batch before it is answered. RocksDB's write thread joins concurrent
//! writers into one group that shares a single WAL sync, so many small adds share one fsync
//! (group commit). Callers run these blocking methods on blocking threads.
//!
//! Layout: `e | ledger (u64 BE) | entry (u64 BE)` holds an entry's bytes; `l | ledger` holds
//! the ledger's state (fenced flag, last-add-confirmed, master key).
//!
//! Fencing is atomic with adds: an add checks the fenced flag and writes under the ledger's
//! lock stripe held shared; fencing takes it exclusively. Once `fence` has returned, no add
//! that was not already durable can succeed, so a recovery that reads after fencing sees every
//! entry this bookie will ever acknowledge.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use tokio::sync::watch;

use crate::error::BookieError;
use crate::ledger_state::LedgerState;

const ENTRY_PREFIX: u8 = b'e';
const LEDGER_PREFIX: u8 = b'l';
const LOCK_STRIPES: usize = 64;

fn entry_key(ledger_id: u64, entry_id: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = ENTRY_PREFIX;
    key[1..9].copy_from_slice(&ledger_id.to_be_bytes());
    key[9..].copy_from_slice(&entry_id.to_be_bytes());
    key
}

fn ledger_key(ledger_id: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = LEDGER_PREFIX;
    key[1..].copy_from_slice(&ledger_id.to_be_bytes());
    key
}

fn entry_id_of(key: &[u8], ledger_id: u64) -> Option<u64> {
    if key.len() != 17 || key[0] != ENTRY_PREFIX || key[1..9] != ledger_id.to_be_bytes() {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&key[9..]);
    Some(u64::from_be_bytes(id))
}

/// What a fence found on this bookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceResult {
    pub last_add_confirmed: i64,
    /// Highest entry stored (-1: none).
    pub last_entry_id: i64,
}

pub struct EntryStore {
    db: DB,
    path: String,
    /// Cache of ledger states; the stored copy is the truth, written in the same batch.
    states: Mutex<HashMap<u64, LedgerState>>,
    /// Shared by adds, exclusive for fence and delete, so that fencing is atomic with adds.
    stripes: Vec<RwLock<()>>,
    /// Last-add-confirmed per ledger for long-polling readers.
    lac_watchers: Mutex<HashMap<u64, watch::Sender<i64>>>,
}

impl EntryStore {
    pub fn open(dir: &Path) -> Result<Arc<Self>, BookieError> {
        let path = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|source| BookieError::Io { path: path.clone(), source })?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let db = DB::open(&options, dir).map_err(|source| BookieError::Storage { path: path.clone(), source })?;
        Ok(Arc::new(EntryStore {
            db,
            path,
            states: Mutex::new(HashMap::new()),
            stripes: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            lac_watchers: Mutex::new(HashMap::new()),
        }))
    }

    fn storage_error(&self, source: rocksdb::Error) -> BookieError {
        BookieError::Storage { path: self.path.clone(), source }
    }

    fn stripe(&self, ledger_id: u64) -> &RwLock<()> {
        &self.stripes[(ledger_id % LOCK_STRIPES as u64) as usize]
    }

    fn state(&self, ledger_id: u64) -> Result<Option<LedgerState>, BookieError> {
        if let Some(state) = self.states.lock().unwrap_or_else(|p| p.into_inner()).get(&ledger_id) {
            return Ok(Some(state.clone()));
        }
        let Some(bytes) = self.db.get(ledger_key(ledger_id)).map_err(|e| self.storage_error(e))? else {
            return Ok(None);
        };
        let state = LedgerState::decode(ledger_id, &bytes)?;
        self.states.lock().unwrap_or_else(|p| p.into_inner()).insert(ledger_id, state.clone());
        Ok(Some(state))
    }

    fn synced() -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        options
    }

    /// Stores an entry durably. Fails on a fenced ledger unless this is a recovery write, and
    /// when the master key differs from the one the ledger's first add set.
    pub fn add(
        &self,
        ledger_id: u64,
        entry_id: u64,
        master_key: &[u8],
        last_add_confirmed: i64,
        payload: &[u8],
        recovery: bool,
    ) -> Result<(), BookieError> {
        if payload.len() > crate::MAX_ENTRY_SIZE {
            return Err(BookieError::InvalidRequest {
                reason: format!("entry of {} bytes exceeds the limit of {}", payload.len(), crate::MAX_ENTRY_SIZE),
            });
        }
        let _shared = self.stripe(ledger_id).read().unwrap_or_else(|p| p.into_inner());
        let mut state = match self.state(ledger_id)? {
            Some(state) => {
                if state.master_key != master_key {
                    return Err(BookieError::Unauthorized { ledger_id });
                }
                if state.fenced && !recovery {
                    return Err(BookieError::Fenced { ledger_id });
                }
                state
            }
            None => LedgerState { fenced: false, last_add_confirmed: -1, master_key: master_key.to_vec() },
        };
        state.last_add_confirmed = state.last_add_confirmed.max(last_add_confirmed);
        let mut batch = WriteBatch::default();
        batch.put(entry_key(ledger_id, entry_id), payload);
        batch.put(ledger_key(ledger_id), state.encode());
        self.db.write_opt(batch, &Self::synced()).map_err(|e| self.storage_error(e))?;
        let lac = state.last_add_confirmed;
        self.states.lock().unwrap_or_else(|p| p.into_inner()).insert(ledger_id, state);
        self.publish_lac(ledger_id, lac);
        Ok(())
    }

    fn publish_lac(&self, ledger_id: u64, lac: i64) {
        let watchers = self.lac_watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = watchers.get(&ledger_id) {
            sender.send_if_modified(|current| {
                if lac > *current {
                    *current = lac;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// A receiver that sees this ledger's last-add-confirmed as it grows.
    pub fn watch_lac(&self, ledger_id: u64) -> Result<watch::Receiver<i64>, BookieError> {
        let current = self.state(ledger_id)?.map_or(-1, |s| s.last_add_confirmed);
        let mut watchers = self.lac_watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.retain(|_, sender| sender.receiver_count() > 0);
        let sender = watchers.entry(ledger_id).or_insert_with(|| watch::channel(current).0);
        sender.send_if_modified(|value| {
            if current > *value {
                *value = current;
                true
            } else {
                false
            }
        });
        Ok(sender.subscribe())
    }

    pub fn read(&self, ledger_id: u64, entry_id: u64) -> Result<Bytes, BookieError> {
        match self.db.get(entry_key(ledger_id, entry_id)).map_err(|e| self.storage_error(e))? {
            Some(bytes) => Ok(Bytes::from(bytes)),
            None if self.state(ledger_id)?.is_none() => Err(BookieError::NoSuchLedger { ledger_id }),
            None => Err(BookieError::NoSuchEntry { ledger_id, entry_id }),
        }
    }

    /// Consecutive entries from `first` to at most `last`, stopping at the first gap, after
    /// `max_entries`, or once `max_bytes` is reached (always at least one entry if present).
    pub fn read_range(
        &self,
        ledger_id: u64,
        first: u64,
        last: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>, BookieError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let start = entry_key(ledger_id, first);
        let iter = self.db.iterator(IteratorMode::From(&start, Direction::Forward));
        let mut expected = first;
        for item in iter {
            let (key, value) = item.map_err(|e| self.storage_error(e))?;
            let Some(entry_id) = entry_id_of(&key, ledger_id) else { break };
            if entry_id != expected || entry_id > last || out.len() >= max_entries {
                break;
            }
            if !out.is_empty() && bytes + value.len() > max_bytes {
                break;
            }
            bytes += value.len();
            out.push((entry_id, Bytes::from(value.into_vec())));
            expected += 1;
        }
        if out.is_empty() {
            return Err(match self.state(ledger_id)? {
                None => BookieError::NoSuchLedger { ledger_id },
                Some(_) => BookieError::NoSuchEntry { ledger_id, entry_id: first },
            });
        }
        Ok(out)
    }

    /// Highest entry id stored for the ledger, -1 if none.
    pub fn last_entry_id(&self, ledger_id: u64) -> Result<i64, BookieError> {
        let end = entry_key(ledger_id, u64::MAX);
        let mut iter = self.db.iterator(IteratorMode::From(&end, Direction::Reverse));
        match iter.next() {
            Some(item) => {
                let (key, _) = item.map_err(|e| self.storage_error(e))?;
                Ok(entry_id_of(&key, ledger_id).map_or(-1, |id| id as i64))
            }
            None => Ok(-1),
        }
    }

    pub fn last_add_confirmed(&self, ledger_id: u64) -> Result<Option<i64>, BookieError> {
        Ok(self.state(ledger_id)?.map(|s| s.last_add_confirmed))
    }

    /// Fences the ledger durably; from now on only recovery adds succeed. Fencing a ledger
    /// this bookie has never seen creates its state fenced, so a late first add fails too.
    pub fn fence(&self, ledger_id: u64, master_key: &[u8]) -> Result<FenceResult, BookieError> {
        let _exclusive = self.stripe(ledger_id).write().unwrap_or_else(|p| p.into_inner());
        let mut state = match self.state(ledger_id)? {
            Some(state) if state.master_key != master_key => return Err(BookieError::Unauthorized { ledger_id }),
            Some(state) => state,
            None => LedgerState { fenced: false, last_add_confirmed: -1, master_key: master_key.to_vec() },
        };
        if !state.fenced {
            state.fenced = true;
            self.db
                .put_opt(ledger_key(ledger_id), state.encode(), &Self::synced())
                .map_err(|e| self.storage_error(e))?;
        }
        let result =
            FenceResult { last_add_confirmed: state.last_add_confirmed, last_entry_id: self.last_entry_id(ledger_id)? };
        self.states.lock().unwrap_or_else(|p| p.into_inner()).insert(ledger_id, state);
        Ok(result)
    }

    /// Removes the ledger's entries and state.
    pub fn delete(&self, ledger_id: u64) -> Result<(), BookieError> {
        let _exclusive = self.stripe(ledger_id).write().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        batch.delete_range(entry_key(ledger_id, 0), entry_key(ledger_id + 1, 0));
        batch.delete(ledger_key(ledger_id));
        self.db.write_opt(batch, &Self::synced()).map_err(|e| self.storage_error(e))?;
        self.states.lock().unwrap_or_else(|p| p.into_inner()).remove(&ledger_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_and_fence_blocks_adds() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = EntryStore::open(dir.path()).expect("open");
            for entry in 0..10u64 {
                store.add(7, entry, b"key", entry as i64 - 1, format!("e{entry}").as_bytes(), false).expect("add");
            }
            let fenced = store.fence(7, b"key").expect("fence");
            assert_eq!(fenced, FenceResult { last_add_confirmed: 8, last_entry_id: 9 });
            assert!(matches!(store.add(7, 10, b"key", 9, b"late", false), Err(BookieError::Fenced { .. })));
            store.add(7, 10, b"key", 9, b"recovered", true).expect("recovery add");
        }
        let store = EntryStore::open(dir.path()).expect("reopen");
        assert_eq!(store.read(7, 3).expect("read"), Bytes::from_static(b"e3"));
        assert!(matches!(store.add(7, 11, b"key", 10, b"x", false), Err(BookieError::Fenced { .. })));
        let range = store.read_range(7, 2, 100, 5, usize::MAX).expect("range");
        assert_eq!(range.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
        assert_eq!(store.last_entry_id(7).expect("last"), 10);
    }

    #[test]
    fn wrong_master_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EntryStore::open(dir.path()).expect("open");
        store.add(1, 0, b"right", -1, b"x", false).expect("add");
        assert!(matches!(store.add(1, 1, b"wrong", 0, b"y", false), Err(BookieError::Unauthorized { .. })));
    }

    #[test]
    fn delete_removes_entries_and_reads_report_missing_ledger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EntryStore::open(dir.path()).expect("open");
        store.add(2, 0, b"k", -1, b"x", false).expect("add");
        store.add(3, 0, b"k", -1, b"y", false).expect("add");
        store.delete(2).expect("delete");
        assert!(matches!(store.read(2, 0), Err(BookieError::NoSuchLedger { .. })));
        assert_eq!(store.read(3, 0).expect("other ledger"), Bytes::from_static(b"y"));
    }
}
