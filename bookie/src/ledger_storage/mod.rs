//! Ledger storage: where entries live once the journal has made them durable, in the manner of
//! BookKeeper's DbLedgerStorage.
//!
//! An add goes to the journal (durability) and to the [`write_cache`] (memory, no I/O). A
//! checkpoint swaps the write cache's halves, recording the journal mark that covers the swapped
//! half, then [`LedgerStorage::flush`] writes that half sorted by (ledger, entry) to the current
//! [`entry_log`], fdatasyncs it, and writes one synced [`index`] batch with the entries'
//! locations, the ledger states changed since the last checkpoint, the [`log_usage`] accounting
//! and the mark. From then on the journal may drop everything up to the mark. Reads look in the
//! write cache's halves, then the [`read_cache`], then the index and the entry logs (reading
//! ahead the ledger's following entries into the read cache). [`gc`] reclaims entry log space of
//! deleted ledgers and superseded records.
//!
//! Concurrency: `LedgerStorage` is shared as `Arc<LedgerStorage>`; every method blocks and is
//! meant for blocking threads. Locks, always taken in this order:
//! 1. `appender`: the entry log writer with its io_uring ring; held while appending and syncing
//!    (flush, GC moves) and while GC decides which log files are garbage;
//! 2. `usage`: the log accounting, and the right to commit index batches that change locations,
//!    accounting or ledger existence (flush, GC moves and removals, ledger deletion). Held only
//!    around a batch, never across entry log I/O, so a deletion never waits for a flush's writes;
//! 3. `cache`: the write cache, held only for map operations;
//! 4. `states`: ledger states.
//!
//! Reads of the index and entry logs take no lock.
//!
//! Invariants:
//! - after `flush` returns mark M, every entry put before the swap that recorded M reads back
//!   byte for byte, also after a restart; entries put after it are only in memory (the journal
//!   replays them);
//! - an entry is always in a write cache half or in the index: a half is dropped only after the
//!   index batch naming its entries is written, and that batch is written only after the entry
//!   log is synced. A crash between the two leaves the previous checkpoint intact, the unindexed
//!   records being garbage for GC;
//! - a deleted ledger's state, cached entries and index entries are gone when `delete_ledger`
//!   returns, and reads of it return None; a flush writing meanwhile leaves it out of its batch
//!   (the write cache hides it until then);
//! - GC never removes a record the index points to;
//! - entries are immutable per (ledger, entry) (the ledger protocol writes each with one
//!   content; recovery re-adds the same bytes): a put of an existing entry with other bytes
//!   replaces it in the write cache and the index, but a read cache copy is not refreshed.

pub mod entry_log;
pub mod gc;
pub mod index;
pub mod ledger_states;
pub mod log_usage;
pub mod read_cache;
pub mod write_cache;

#[cfg(test)]
mod tests;

use parking_lot::{Mutex, RwLock};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, info};

pub use gc::GcStats;

use self::entry_log::{io_error, EntryLogReader, EntryLogWriter, Location};
use self::index::{Index, IndexBatch};
use self::ledger_states::LedgerStates;
use self::log_usage::{LogUsage, UsageChange};
use self::read_cache::ReadCache;
use self::write_cache::{FlushingHalf, WriteCache};
use crate::config::BookieConfig;
use crate::error::BookieError;
use crate::ledger_data::LedgerData;
use crate::metrics::StorageMetrics;
use crate::uring::Ring;

/// Entry logs, under the data directory.
pub const ENTRY_LOG_DIR: &str = "entry-logs";
/// The RocksDB index, under the data directory.
pub const INDEX_DIR: &str = "index";
/// Read-ahead reads at most this many bytes besides the entry asked for.
const READ_AHEAD_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Times a read looks an entry up again when GC removed the log it was in between the lookup
/// and the read (once is enough unless the log went missing otherwise).
const READ_ATTEMPTS: usize = 3;

/// A flush between taking its half and committing it.
struct PendingFlush {
    half: Arc<FlushingHalf>,
    /// Ledgers deleted before the flush started: not written at all.
    skip: HashSet<u64>,
    /// Ledger states changed since the last checkpoint.
    states: Vec<(u64, LedgerData)>,
}

/// What a flush appended, synced: each entry's location, and the logs written with the end of
/// their records.
struct Appended {
    locations: Vec<(u64, u64, Location)>,
    ends: Vec<(u64, u64)>,
}

/// A ledger's state as an add sees it ([`LedgerStorage::admission`]).
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub fenced: bool,
    pub last_add_confirmed: i64,
    /// Whether the add's master key is the ledger's.
    pub key_matches: bool,
}

pub struct LedgerStorage {
    read_ahead_entries: usize,
    compaction_threshold: f64,
    log_dir: PathBuf,
    index: Index,
    logs: EntryLogReader,
    cache: Mutex<WriteCache>,
    read_cache: ReadCache,
    states: RwLock<LedgerStates>,
    /// Appends to entry logs (see the lock order above).
    appender: Mutex<EntryLogWriter>,
    /// Commits index batches that change locations, accounting or ledgers.
    usage: Mutex<LogUsage>,
    /// The mark the last flush made durable.
    mark: AtomicU64,
    /// One GC at a time.
    gc_running: Mutex<()>,
    metrics: StorageMetrics,
}

impl LedgerStorage {
    /// Opens (creating) entry logs under `<config.data_dir>/entry-logs/` and the RocksDB index
    /// under `<config.data_dir>/index/`.
    pub fn open(config: &BookieConfig) -> Result<Arc<Self>, BookieError> {
        Self::open_measured(config, StorageMetrics::default())
    }

    /// As [`LedgerStorage::open`], counting into `metrics`.
    pub fn open_measured(config: &BookieConfig, metrics: StorageMetrics) -> Result<Arc<Self>, BookieError> {
        let log_dir = config.data_dir.join(ENTRY_LOG_DIR);
        std::fs::create_dir_all(&log_dir).map_err(|e| io_error(&log_dir, e))?;
        let index = Index::open(&config.data_dir.join(INDEX_DIR))?;
        let mark = index.mark()?;
        let states = LedgerStates::loaded(index.states()?);
        let usage = index.usage()?;
        // A restart always starts a new log: nothing is appended after a possibly torn tail.
        let newest_file = entry_log::list_logs(&log_dir)?.last().map(|(log_id, _)| *log_id);
        let next_log_id = newest_file.max(usage.max_log_id()).map_or(1, |log_id| log_id + 1);
        let ring = Ring::new().map_err(|e| io_error(&log_dir, e))?;
        let writer = EntryLogWriter::new(log_dir.clone(), ring, config.entry_log_bytes, next_log_id);
        info!(
            data_dir = %config.data_dir.display(),
            mark,
            ledgers = states.ids().len(),
            entry_logs = usage.iter().count(),
            "ledger storage opened"
        );
        Ok(Arc::new(LedgerStorage {
            read_ahead_entries: config.read_ahead_entries,
            compaction_threshold: config.gc_compaction_threshold,
            logs: EntryLogReader::new(log_dir.clone()),
            log_dir,
            index,
            cache: Mutex::new(WriteCache::default()),
            read_cache: ReadCache::new(config.read_cache_bytes),
            states: RwLock::new(states),
            appender: Mutex::new(writer),
            usage: Mutex::new(usage),
            mark: AtomicU64::new(mark),
            gc_running: Mutex::new(()),
            metrics,
        }))
    }

    /// Puts an entry into the write cache's active half. No I/O. Overwrites an existing
    /// (ledger, entry) in the cache. The caller has checked the size against
    /// [`crate::MAX_ENTRY_SIZE`] (a larger entry would make every flush fail).
    pub fn put_entry(&self, ledger_id: u64, entry_id: u64, data: Bytes) {
        self.cache.lock().put(ledger_id, entry_id, data);
    }

    /// Reads an entry: active half, flushing half, read cache, then index + entry log (filling
    /// the read cache and reading ahead `read_ahead_entries` following entries of the same
    /// ledger from the same entry log).
    pub fn get_entry(&self, ledger_id: u64, entry_id: u64) -> Result<Option<Bytes>, BookieError> {
        if let Some(data) = self.cache.lock().get(ledger_id, entry_id) {
            return Ok(Some(data));
        }
        if let Some(data) = self.read_cache.get(ledger_id, entry_id) {
            self.metrics.read_cache_hits.inc();
            return Ok(Some(data));
        }
        self.metrics.read_cache_misses.inc();
        let mut run = self.read_from_logs(ledger_id, entry_id)?;
        Ok((!run.is_empty()).then(|| run.swap_remove(0).1))
    }

    /// The entry from the entry logs and the entries read ahead after it, all now in the read
    /// cache; empty if the index does not have the entry.
    fn read_from_logs(&self, ledger_id: u64, entry_id: u64) -> Result<Vec<(u64, Bytes)>, BookieError> {
        for _ in 0..READ_ATTEMPTS {
            let generation = self.read_cache.generation();
            let Some(first) = self.index.location(ledger_id, entry_id)? else { return Ok(Vec::new()) };
            let run = self.read_ahead_run(ledger_id, entry_id, first)?;
            if let Some(data) = self.logs.read_run(ledger_id, &run)? {
                let entries: Vec<(u64, Bytes)> = run.iter().map(|(id, _)| *id).zip(data).collect();
                self.metrics.read_entries_from_logs.inc_by(entries.len() as u64);
                self.read_cache.insert_if_unchanged(generation, ledger_id, &entries);
                return Ok(entries);
            }
            // GC moved the entry and removed the log since the lookup: look again.
        }
        Err(BookieError::Corrupt {
            what: format!("entry {entry_id} of ledger {ledger_id}"),
            reason: "the index keeps naming an entry log that does not exist".to_owned(),
        })
    }

    /// The entry and the following entries of the ledger that lie right after it in the same
    /// log (what one flush wrote together), up to the read-ahead limits.
    fn read_ahead_run(
        &self,
        ledger_id: u64,
        entry_id: u64,
        first: Location,
    ) -> Result<Vec<(u64, Location)>, BookieError> {
        let mut run = vec![(entry_id, first)];
        if self.read_ahead_entries == 0 {
            return Ok(run);
        }
        let mut span = first.record_bytes();
        for (next_id, location) in self.index.locations_after(ledger_id, entry_id, self.read_ahead_entries)? {
            let Some(&(last_id, last)) = run.last() else { break };
            let adjacent = Some(next_id) == last_id.checked_add(1)
                && location.log_id == last.log_id
                && location.offset == last.offset + last.record_bytes();
            if !adjacent || span + location.record_bytes() > READ_AHEAD_MAX_BYTES {
                break;
            }
            span += location.record_bytes();
            run.push((next_id, location));
        }
        Ok(run)
    }

    /// Consecutive entries first..=last, stopping at the first gap, after max_entries, or once
    /// max_bytes is reached (always at least one if present). Empty if `first` is absent.
    pub fn get_range(
        &self,
        ledger_id: u64,
        first: u64,
        last: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>, BookieError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        // Entries read ahead by the last read that went to the logs.
        let mut ahead: VecDeque<(u64, Bytes)> = VecDeque::new();
        let mut entry_id = first;
        while entry_id <= last && out.len() < max_entries {
            while ahead.front().is_some_and(|(id, _)| *id < entry_id) {
                ahead.pop_front();
            }
            let cached = self.cache.lock().get(ledger_id, entry_id);
            let data = match cached {
                Some(data) => data,
                None => match ahead.front() {
                    Some((id, data)) if *id == entry_id => data.clone(),
                    _ => match self.read_cache.get(ledger_id, entry_id) {
                        Some(data) => {
                            self.metrics.read_cache_hits.inc();
                            data
                        }
                        None => {
                            self.metrics.read_cache_misses.inc();
                            ahead = self.read_from_logs(ledger_id, entry_id)?.into();
                            match ahead.front() {
                                Some((_, data)) => data.clone(),
                                None => break,
                            }
                        }
                    },
                },
            };
            if !out.is_empty() && bytes + data.len() > max_bytes {
                break;
            }
            bytes += data.len();
            out.push((entry_id, data));
            if bytes >= max_bytes {
                break;
            }
            match entry_id.checked_add(1) {
                Some(next) => entry_id = next,
                None => break,
            }
        }
        Ok(out)
    }

    /// Highest entry id stored for the ledger (write cache halves and index), None if none.
    pub fn last_entry_id(&self, ledger_id: u64) -> Result<Option<u64>, BookieError> {
        // The cache first: a flush drops its half only after the index has the entries.
        let cached = self.cache.lock().last_entry_id(ledger_id);
        let indexed = self.index.last_entry_id(ledger_id)?;
        Ok(cached.max(indexed))
    }

    /// Ledger state: kept in memory, persisted at each checkpoint in the same RocksDB batch as
    /// the index.
    pub fn ledger_state(&self, ledger_id: u64) -> Result<Option<LedgerData>, BookieError> {
        Ok(self.states.read().get(ledger_id).cloned())
    }

    /// What an add needs of its ledger's state, without copying it: None for a ledger not
    /// known here.
    pub fn admission(&self, ledger_id: u64, master_key: &[u8]) -> Option<Admission> {
        self.states.read().get(ledger_id).map(|state| Admission {
            fenced: state.fenced,
            last_add_confirmed: state.last_add_confirmed,
            key_matches: state.master_key == master_key,
        })
    }

    /// Raises the ledger's last-add-confirmed to `lac` if that is higher.
    pub fn raise_last_add_confirmed(&self, ledger_id: u64, lac: i64) {
        self.states.write().raise_last_add_confirmed(ledger_id, lac);
    }

    pub fn set_ledger_state(&self, ledger_id: u64, state: LedgerData) {
        self.states.write().set(ledger_id, state);
    }

    /// Deletes the ledger: state, cached entries and index entries go now (persisted in one
    /// synced batch with the ledger's log accounting); entry log space is reclaimed by `gc`.
    /// Waits at most for one index batch of a flush or GC move, never for entry log writes.
    pub fn delete_ledger(&self, ledger_id: u64) -> Result<(), BookieError> {
        let mut usage = self.usage.lock();
        let mut batch = IndexBatch::default();
        batch.delete_ledger_entries(ledger_id);
        batch.delete_state(ledger_id);
        for log_id in usage.logs_holding(ledger_id) {
            batch.put_usage(log_id, ledger_id, 0);
        }
        self.index.write(batch)?;
        usage.remove_ledger(ledger_id);
        // A flush in progress sees the ledger hidden when it commits (under `usage`, which we hold).
        self.cache.lock().remove_ledger(ledger_id);
        self.states.write().remove(ledger_id);
        self.read_cache.invalidate_ledger(ledger_id);
        debug!(ledger_id, "ledger deleted from ledger storage");
        Ok(())
    }

    /// Makes the active half the flushing half and starts a new active half; records `mark`
    /// (the journal sequence number every entry put before this call is covered by). Cheap; the
    /// caller holds its own lock around put_entry and this call so the mark is exact. Returns
    /// false (and does nothing) if a flush is still pending.
    pub fn swap_write_cache(&self, mark: u64) -> bool {
        self.cache.lock().swap(mark)
    }

    /// Whether a swapped half waits for (or is in) `flush`.
    pub fn flush_pending(&self) -> bool {
        self.cache.lock().flush_pending()
    }

    /// Writes the flushing half to the current entry log (entries sorted by ledger then entry),
    /// fdatasyncs the entry log, then writes in ONE synced RocksDB batch: the index entries, the
    /// ledger states changed since the last checkpoint, the log accounting and the mark. Then
    /// drops the flushing half. Returns the mark now durable. No-op returning the last mark if
    /// nothing is flushing. After an error the half stays, and the next call tries again.
    pub fn flush(&self) -> Result<u64, BookieError> {
        let mut writer = self.appender.lock();
        let Some(pending) = self.start_flush() else { return Ok(self.checkpoint_mark()) };
        let started = std::time::Instant::now();
        let bytes = pending.half.entries.bytes();
        match Self::append_half(&mut writer, &pending.half, &pending.skip) {
            Ok(appended) => {
                let mark = self.commit_flush(pending, appended)?;
                self.metrics.flush.observe(crate::metrics::millis_since(started));
                self.metrics.flush_bytes.inc_by(bytes as u64);
                Ok(mark)
            }
            Err(error) => {
                self.abort_flush(pending);
                Err(error)
            }
        }
    }

    /// What a flush is about to write; None if nothing is flushing. The caller holds `appender`.
    fn start_flush(&self) -> Option<PendingFlush> {
        let (half, skip) = {
            let cache = self.cache.lock();
            (cache.flushing()?, cache.hidden().clone())
        };
        let states = self.states.write().take_dirty();
        Some(PendingFlush { half, skip, states })
    }

    /// Puts back what a failed flush took; its half stays for the next try.
    fn abort_flush(&self, pending: PendingFlush) {
        self.states.write().restore_dirty(pending.states.into_iter().map(|(ledger_id, _)| ledger_id));
    }

    /// Commits the index batch of an appended (and synced) flush, leaving out ledgers deleted
    /// meanwhile; then drops the half. Returns the mark now durable.
    fn commit_flush(&self, pending: PendingFlush, appended: Appended) -> Result<u64, BookieError> {
        let mut usage = self.usage.lock();
        // Stable while we hold `usage`: deletions add to it only under that lock.
        let deleted = self.cache.lock().hidden().clone();
        let mut batch = IndexBatch::default();
        let mut change = UsageChange::default();
        for (ledger_id, entry_id, location) in &appended.locations {
            if !deleted.contains(ledger_id) {
                batch.put_location(*ledger_id, *entry_id, location);
                change.add(location.log_id, *ledger_id, location.record_bytes());
            }
        }
        for (log_id, end) in &appended.ends {
            change.extend_log(*log_id, *end);
        }
        usage.stage(&change, &mut batch);
        // A state taken before its ledger was deleted is not written; if the ledger was created
        // again since, its new state waits for the next checkpoint.
        let mut later = Vec::new();
        for (ledger_id, state) in &pending.states {
            if deleted.contains(ledger_id) {
                later.push(*ledger_id);
            } else {
                batch.put_state(*ledger_id, state);
            }
        }
        let mark = pending.half.mark;
        batch.put_mark(mark);
        if let Err(error) = self.index.write(batch) {
            self.abort_flush(pending);
            return Err(error);
        }
        usage.apply(change);
        self.mark.store(mark, Ordering::Release);
        self.cache.lock().finish_flush();
        self.states.write().restore_dirty(later);
        Ok(mark)
    }

    /// Appends the half's entries (but those of `skip`) and syncs.
    fn append_half(
        writer: &mut EntryLogWriter,
        half: &FlushingHalf,
        skip: &HashSet<u64>,
    ) -> Result<Appended, BookieError> {
        let mut locations = Vec::with_capacity(half.entries.len());
        for (ledger_id, entry_id, data) in half.entries.iter() {
            if !skip.contains(&ledger_id) {
                locations.push((ledger_id, entry_id, writer.append(ledger_id, entry_id, data)?));
            }
        }
        let ends = writer.finish()?;
        Ok(Appended { locations, ends })
    }

    /// A crash in the middle of `flush`: the entry log is written and synced, the index batch
    /// never is.
    #[cfg(test)]
    fn flush_entry_log_only(&self) -> Result<(), BookieError> {
        let mut writer = self.appender.lock();
        let Some(half) = self.cache.lock().flushing() else { return Ok(()) };
        Self::append_half(&mut writer, &half, &HashSet::new()).map(|_| ())
    }

    /// The last mark made durable by flush (0 on a new bookie).
    pub fn checkpoint_mark(&self) -> u64 {
        self.mark.load(Ordering::Acquire)
    }

    /// Bytes in the write cache's halves and in the read cache.
    pub fn cache_bytes(&self) -> (u64, u64) {
        (self.cache.lock().bytes() as u64, self.read_cache.weighted_bytes())
    }

    /// Bytes in the active half (the bookie checkpoints when it passes write_cache_bytes).
    pub fn active_bytes(&self) -> usize {
        self.cache.lock().active_bytes()
    }

    /// Garbage collection: entry logs whose live fraction is below gc_compaction_threshold are
    /// compacted (live entries rewritten to the current entry log, index updated, old log
    /// removed); logs with no live data, and log files the index does not know, are removed.
    pub fn gc(&self) -> Result<GcStats, BookieError> {
        gc::collect(self)
    }

    /// Ids of ledgers known here (states), sorted.
    pub fn ledgers(&self) -> Result<Vec<u64>, BookieError> {
        Ok(self.states.read().ids())
    }
}
