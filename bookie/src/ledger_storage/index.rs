//! The index: RocksDB under `<data_dir>/index/`, saying where each entry is and holding what
//! must survive a restart besides the entry logs.
//!
//! Keys (integers big-endian, so keys sort by ledger then entry):
//! - `i | ledger u64 | entry u64` -> `log_id u64 | offset u64 | len u32`: an entry's record;
//! - `l | ledger u64` -> [`LedgerData::encode`];
//! - `c` -> `mark u64`: the journal mark the last checkpoint made durable;
//! - `m | log_id u64 | ledger u64` -> `bytes u64`: record bytes the ledger has in the log;
//! - `e | log_id u64` -> `end u64`: end of the log's records that the index accounts for.
//!
//! Concurrency: RocksDB is safe from many threads; reads go straight to it. Changes go through
//! [`IndexBatch`], written atomically with sync = true; the storage decides who may write what
//! (its checkpoint mutex).
//!
//! Invariants: a location is written only after its record is synced in its entry log; every
//! value read back is length-checked, a malformed one is `Corrupt`.

use std::collections::HashMap;
use std::path::Path;

use rocksdb::{BlockBasedOptions, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use super::entry_log::Location;
use super::log_usage::LogUsage;
use crate::error::BookieError;
use crate::ledger_data::LedgerData;

const ENTRY_PREFIX: u8 = b'i';
const STATE_PREFIX: u8 = b'l';
const MARK_KEY: &[u8] = b"c";
const USAGE_PREFIX: u8 = b'm';
const LOG_END_PREFIX: u8 = b'e';
const LOCATION_LEN: usize = 20;

/// A one-byte prefix and two u64s.
fn pair_key(prefix: u8, high: u64, low: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = prefix;
    key[1..9].copy_from_slice(&high.to_be_bytes());
    key[9..].copy_from_slice(&low.to_be_bytes());
    key
}

fn single_key(prefix: u8, id: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// A key after every `prefix | high | *` key and before every `prefix | high + 1 | *` key: the
/// largest such key followed by a zero byte (this works for `high == u64::MAX` too).
fn pair_end(prefix: u8, high: u64) -> Vec<u8> {
    let mut end = pair_key(prefix, high, u64::MAX).to_vec();
    end.push(0);
    end
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut value = [0u8; 8];
    value.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(value)
}

/// The two ids of a pair key, None if it is not one.
fn split_pair_key(key: &[u8], prefix: u8) -> Option<(u64, u64)> {
    (key.len() == 17 && key[0] == prefix).then(|| (be_u64(&key[1..9]), be_u64(&key[9..])))
}

pub fn encode_location(location: &Location) -> [u8; LOCATION_LEN] {
    let mut value = [0u8; LOCATION_LEN];
    value[..8].copy_from_slice(&location.log_id.to_be_bytes());
    value[8..16].copy_from_slice(&location.offset.to_be_bytes());
    value[16..].copy_from_slice(&location.len.to_be_bytes());
    value
}

pub fn decode_location(ledger_id: u64, entry_id: u64, value: &[u8]) -> Result<Location, BookieError> {
    if value.len() != LOCATION_LEN {
        return Err(BookieError::Corrupt {
            what: format!("index entry of ledger {ledger_id} entry {entry_id}"),
            reason: format!("{} bytes, expected {LOCATION_LEN}", value.len()),
        });
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&value[16..]);
    Ok(Location { log_id: be_u64(&value[..8]), offset: be_u64(&value[8..16]), len: u32::from_be_bytes(len) })
}

fn decode_u64(what: impl FnOnce() -> String, value: &[u8]) -> Result<u64, BookieError> {
    if value.len() != 8 {
        return Err(BookieError::Corrupt { what: what(), reason: format!("{} bytes, expected 8", value.len()) });
    }
    Ok(be_u64(value))
}

pub struct Index {
    db: DB,
    path: String,
}

impl Index {
    pub fn open(dir: &Path) -> Result<Self, BookieError> {
        let path = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|source| BookieError::Io { path: path.clone(), source })?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Reads of entries this bookie never had (or has deleted) should not touch the disk.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        options.set_block_based_table_factory(&table);
        let db = DB::open(&options, dir).map_err(|source| BookieError::Storage { path: path.clone(), source })?;
        Ok(Index { db, path })
    }

    fn storage_error(&self, source: rocksdb::Error) -> BookieError {
        BookieError::Storage { path: self.path.clone(), source }
    }

    pub fn location(&self, ledger_id: u64, entry_id: u64) -> Result<Option<Location>, BookieError> {
        match self.db.get_pinned(pair_key(ENTRY_PREFIX, ledger_id, entry_id)).map_err(|e| self.storage_error(e))? {
            Some(value) => Ok(Some(decode_location(ledger_id, entry_id, &value)?)),
            None => Ok(None),
        }
    }

    /// Up to `max` entries of the ledger after `entry_id`, in entry order, with their locations.
    pub fn locations_after(
        &self,
        ledger_id: u64,
        entry_id: u64,
        max: usize,
    ) -> Result<Vec<(u64, Location)>, BookieError> {
        let mut out = Vec::new();
        if entry_id == u64::MAX || max == 0 {
            return Ok(out);
        }
        let start = pair_key(ENTRY_PREFIX, ledger_id, entry_id + 1);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(pair_end(ENTRY_PREFIX, ledger_id));
        for item in self.db.iterator_opt(IteratorMode::From(&start, Direction::Forward), options) {
            let (key, value) = item.map_err(|e| self.storage_error(e))?;
            let Some((_, entry_id)) = split_pair_key(&key, ENTRY_PREFIX) else { break };
            out.push((entry_id, decode_location(ledger_id, entry_id, &value)?));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    pub fn last_entry_id(&self, ledger_id: u64) -> Result<Option<u64>, BookieError> {
        let last = pair_key(ENTRY_PREFIX, ledger_id, u64::MAX);
        match self.db.iterator(IteratorMode::From(&last, Direction::Reverse)).next() {
            Some(item) => {
                let (key, _) = item.map_err(|e| self.storage_error(e))?;
                Ok(split_pair_key(&key, ENTRY_PREFIX).filter(|(ledger, _)| *ledger == ledger_id).map(|(_, e)| e))
            }
            None => Ok(None),
        }
    }

    /// The mark of the last checkpoint, 0 if none.
    pub fn mark(&self) -> Result<u64, BookieError> {
        match self.db.get_pinned(MARK_KEY).map_err(|e| self.storage_error(e))? {
            Some(value) => decode_u64(|| "index checkpoint mark".to_owned(), &value),
            None => Ok(0),
        }
    }

    /// Calls `visit` with every key and value whose key starts with `prefix`.
    fn for_each_with_prefix(
        &self,
        prefix: u8,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), BookieError>,
    ) -> Result<(), BookieError> {
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(vec![prefix + 1]);
        for item in self.db.iterator_opt(IteratorMode::From(&[prefix], Direction::Forward), options) {
            let (key, value) = item.map_err(|e| self.storage_error(e))?;
            visit(&key, &value)?;
        }
        Ok(())
    }

    pub fn states(&self) -> Result<HashMap<u64, LedgerData>, BookieError> {
        let mut states = HashMap::new();
        self.for_each_with_prefix(STATE_PREFIX, |key, value| {
            if key.len() != 9 {
                return Err(BookieError::Corrupt {
                    what: "index ledger state key".to_owned(),
                    reason: format!("{} bytes, expected 9", key.len()),
                });
            }
            let ledger_id = be_u64(&key[1..]);
            states.insert(ledger_id, LedgerData::decode(ledger_id, value)?);
            Ok(())
        })?;
        Ok(states)
    }

    /// Per-log accounting as stored.
    pub fn usage(&self) -> Result<LogUsage, BookieError> {
        let mut usage = LogUsage::default();
        self.for_each_with_prefix(LOG_END_PREFIX, |key, value| {
            if key.len() != 9 {
                return Err(BookieError::Corrupt {
                    what: "index log end key".to_owned(),
                    reason: format!("{} bytes, expected 9", key.len()),
                });
            }
            let log_id = be_u64(&key[1..]);
            usage.load_end(log_id, decode_u64(|| format!("index end of entry log {log_id}"), value)?);
            Ok(())
        })?;
        self.for_each_with_prefix(USAGE_PREFIX, |key, value| {
            let (log_id, ledger_id) = split_pair_key(key, USAGE_PREFIX).ok_or_else(|| BookieError::Corrupt {
                what: "index log usage key".to_owned(),
                reason: format!("{} bytes, expected 17", key.len()),
            })?;
            let bytes = decode_u64(|| format!("index usage of ledger {ledger_id} in entry log {log_id}"), value)?;
            usage.load_bytes(log_id, ledger_id, bytes);
            Ok(())
        })?;
        Ok(usage)
    }

    pub fn write(&self, batch: IndexBatch) -> Result<(), BookieError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch.batch, &options).map_err(|e| self.storage_error(e))
    }
}

/// Changes to the index, applied atomically by [`Index::write`].
#[derive(Default)]
pub struct IndexBatch {
    batch: WriteBatch,
}

impl IndexBatch {
    pub fn put_location(&mut self, ledger_id: u64, entry_id: u64, location: &Location) {
        self.batch.put(pair_key(ENTRY_PREFIX, ledger_id, entry_id), encode_location(location));
    }

    pub fn delete_ledger_entries(&mut self, ledger_id: u64) {
        self.batch.delete_range(pair_key(ENTRY_PREFIX, ledger_id, 0).to_vec(), pair_end(ENTRY_PREFIX, ledger_id));
    }

    pub fn put_state(&mut self, ledger_id: u64, state: &LedgerData) {
        self.batch.put(single_key(STATE_PREFIX, ledger_id), state.encode());
    }

    pub fn delete_state(&mut self, ledger_id: u64) {
        self.batch.delete(single_key(STATE_PREFIX, ledger_id));
    }

    pub fn put_mark(&mut self, mark: u64) {
        self.batch.put(MARK_KEY, mark.to_be_bytes());
    }

    /// Record bytes the ledger has in the log; zero deletes the key.
    pub fn put_usage(&mut self, log_id: u64, ledger_id: u64, bytes: u64) {
        let key = pair_key(USAGE_PREFIX, log_id, ledger_id);
        if bytes == 0 {
            self.batch.delete(key);
        } else {
            self.batch.put(key, bytes.to_be_bytes());
        }
    }

    pub fn put_log_end(&mut self, log_id: u64, end: u64) {
        self.batch.put(single_key(LOG_END_PREFIX, log_id), end.to_be_bytes());
    }

    /// Forgets everything the index knows about a log (its end and its usage).
    pub fn delete_log(&mut self, log_id: u64) {
        self.batch.delete(single_key(LOG_END_PREFIX, log_id));
        self.batch.delete_range(pair_key(USAGE_PREFIX, log_id, 0).to_vec(), pair_end(USAGE_PREFIX, log_id));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn location(log_id: u64, offset: u64) -> Location {
        Location { log_id, offset, len: 10 }
    }

    #[test]
    fn ledger_deletion_takes_only_that_ledgers_entries_including_extreme_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = Index::open(dir.path()).expect("open");
        let mut batch = IndexBatch::default();
        for ledger in [0, 5, 6, u64::MAX - 1, u64::MAX] {
            for entry in [0, 1, u64::MAX] {
                batch.put_location(ledger, entry, &location(ledger, entry));
            }
        }
        index.write(batch).expect("write");
        let mut batch = IndexBatch::default();
        batch.delete_ledger_entries(5);
        batch.delete_ledger_entries(u64::MAX);
        index.write(batch).expect("delete");
        assert_eq!(index.last_entry_id(5).expect("last"), None);
        assert_eq!(index.last_entry_id(u64::MAX).expect("last"), None);
        assert_eq!(index.location(u64::MAX, u64::MAX).expect("get"), None);
        assert_eq!(index.last_entry_id(6).expect("last"), Some(u64::MAX));
        assert_eq!(index.last_entry_id(u64::MAX - 1).expect("last"), Some(u64::MAX));
        assert_eq!(index.location(0, 1).expect("get"), Some(location(0, 1)));
        let after = index.locations_after(6, 0, 10).expect("after");
        assert_eq!(after, vec![(1, location(6, 1)), (u64::MAX, location(6, u64::MAX))]);
        assert!(index.locations_after(6, u64::MAX, 10).expect("after").is_empty());
    }

    #[test]
    fn usage_states_and_mark_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let index = Index::open(dir.path()).expect("open");
            assert_eq!(index.mark().expect("mark"), 0);
            let mut batch = IndexBatch::default();
            batch.put_mark(42);
            batch.put_state(3, &LedgerData { fenced: true, last_add_confirmed: 7, master_key: b"k".to_vec() });
            batch.put_log_end(1, 1000);
            batch.put_log_end(2, 500);
            batch.put_usage(1, 3, 300);
            batch.put_usage(1, 4, 200);
            batch.put_usage(2, 3, 100);
            index.write(batch).expect("write");
            let mut batch = IndexBatch::default();
            batch.delete_log(2);
            batch.put_usage(1, 4, 0);
            index.write(batch).expect("write");
        }
        let index = Index::open(dir.path()).expect("reopen");
        assert_eq!(index.mark().expect("mark"), 42);
        let states = index.states().expect("states");
        assert_eq!(states.len(), 1);
        assert!(states[&3].fenced);
        let usage = index.usage().expect("usage");
        assert_eq!(usage.iter().map(|(log_id, _)| log_id).collect::<Vec<_>>(), vec![1]);
        let log = usage.get(1).expect("log 1");
        assert_eq!((log.end, log.live_bytes()), (1000, 300));
    }

    #[test]
    fn malformed_location_is_corrupt() {
        assert!(matches!(decode_location(1, 2, &[0u8; 19]), Err(BookieError::Corrupt { .. })));
    }

    proptest! {
        #[test]
        fn location_values_round_trip(log_id in any::<u64>(), offset in any::<u64>(), len in any::<u32>()) {
            let location = Location { log_id, offset, len };
            prop_assert_eq!(decode_location(0, 0, &encode_location(&location)).expect("decode"), location);
        }

        #[test]
        fn entry_keys_sort_by_ledger_then_entry(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
            let (key_a, key_b) = (pair_key(ENTRY_PREFIX, a.0, a.1), pair_key(ENTRY_PREFIX, b.0, b.1));
            prop_assert_eq!(key_a.cmp(&key_b), a.cmp(&b));
            prop_assert_eq!(split_pair_key(&key_a, ENTRY_PREFIX), Some(a));
            prop_assert!(key_a.as_slice() < pair_end(ENTRY_PREFIX, a.0).as_slice());
            if b.0 > a.0 {
                prop_assert!(pair_end(ENTRY_PREFIX, a.0).as_slice() < key_b.as_slice());
            }
        }
    }
}
