//! Garbage collection of entry logs.
//!
//! A log's live fraction comes from the accounting ([`super::log_usage`]), without reading the
//! log: record bytes its ledgers still count, over the bytes of records it holds. GC, for every
//! log but the one being written:
//! - removes log files the index knows nothing of (a crash during a flush, or after a compaction
//!   forgot a log but before its file was removed);
//! - removes logs whose ledgers count nothing (all deleted);
//! - compacts logs whose live fraction is below `gc_compaction_threshold`: it scans the log,
//!   keeps the records the index still points to, appends them to the current log in batches,
//!   each synced and followed by one index batch with the new locations and accounting, then
//!   forgets the log in the index and removes its file.
//!
//! Concurrency: one GC at a time (`gc_running`). Deciding which logs go takes the storage's
//! `appender` and `usage` locks, so no flush is halfway through writing a log it has not indexed
//! yet. Scanning and index lookups take no lock. A move appends its batch under `appender`, then
//! under `usage` keeps only the records the index still points at (a flush or a deletion may
//! have changed them since the scan) and commits their new locations; the copies it drops are
//! unaccounted garbage. Readers that looked up an old location before a move find the log gone
//! and look up again.
//!
//! Invariants: GC never removes a record the index points to. Only flush and GC change
//! locations, and both write only to the current log, which GC never collects; so once a scan
//! has checked every record of a log up to its indexed end, moving what was live leaves nothing
//! live there. A log that cannot be scanned (a bad record before its indexed end) is left alone
//! and reported.

use std::collections::HashSet;
use std::io;
use std::path::Path;

use tracing::{debug, error};

use super::entry_log::{self, io_error, Location, ScannedRecord};
use super::index::IndexBatch;
use super::log_usage::LogUsage;
use super::log_usage::UsageChange;
use super::LedgerStorage;
use crate::error::BookieError;

/// Live records gathered before they are moved in one batch.
const MOVE_BATCH_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    /// Logs removed, compacted ones not counted.
    pub logs_removed: usize,
    pub logs_compacted: usize,
    /// Bytes of files removed, less the bytes rewritten elsewhere.
    pub bytes_reclaimed: u64,
    /// Logs left alone because a record before their indexed end is unreadable (logged as
    /// errors: a human must look).
    pub logs_unreadable: usize,
}

struct Candidate {
    log_id: u64,
    end: u64,
    /// Ledgers the accounting says have records there; others' records are garbage.
    ledgers: HashSet<u64>,
}

pub(super) fn collect(storage: &LedgerStorage) -> Result<GcStats, BookieError> {
    let _one_at_a_time = storage.gc_running.lock();
    let mut stats = GcStats::default();
    let candidates = {
        let writer = storage.appender.lock();
        let mut usage = storage.usage.lock();
        let current = writer.current_log_id();
        for (log_id, path) in entry_log::list_logs(&storage.log_dir)? {
            if Some(log_id) != current && usage.get(log_id).is_none() {
                stats.bytes_reclaimed += remove_file(storage, log_id, &path)?;
                stats.logs_removed += 1;
            }
        }
        let mut empty = Vec::new();
        let mut candidates = Vec::new();
        for (log_id, info) in usage.iter() {
            if Some(log_id) == current {
                continue;
            }
            let live = info.live_bytes();
            if live == 0 {
                empty.push(log_id);
            } else if (live as f64) < storage.compaction_threshold * info.total_bytes() as f64 {
                candidates.push(Candidate { log_id, end: info.end, ledgers: info.ledgers.keys().copied().collect() });
            }
        }
        for log_id in empty {
            stats.bytes_reclaimed += forget_log(storage, &mut usage, log_id)?;
            stats.logs_removed += 1;
        }
        candidates
    };
    for candidate in candidates {
        match compact(storage, &candidate) {
            Ok(reclaimed) => {
                stats.logs_compacted += 1;
                stats.bytes_reclaimed += reclaimed;
            }
            Err(CompactionError::Unreadable(error)) => {
                error!(log_id = candidate.log_id, %error, "entry log cannot be compacted and stays as it is");
                stats.logs_unreadable += 1;
            }
            Err(CompactionError::Failed(error)) => return Err(error),
        }
    }
    if stats != GcStats::default() {
        debug!(?stats, "entry log garbage collected");
    }
    Ok(stats)
}

enum CompactionError {
    /// Reading the old log failed; it stays.
    Unreadable(BookieError),
    /// Moving records failed (index or current log); GC stops.
    Failed(BookieError),
}

struct LiveRecord {
    ledger_id: u64,
    entry_id: u64,
    location: Location,
    data: Vec<u8>,
}

/// A compaction in progress: records found live, waiting to be moved.
struct Compaction<'a> {
    storage: &'a LedgerStorage,
    candidate: &'a Candidate,
    pending: Vec<LiveRecord>,
    pending_bytes: usize,
    moved_bytes: u64,
    failure: Option<BookieError>,
}

impl Compaction<'_> {
    fn visit(&mut self, record: ScannedRecord<'_>) -> Result<(), BookieError> {
        self.keep_if_live(record).map_err(|error| {
            self.failure = Some(error);
            BookieError::Stopped { what: "entry log compaction" }
        })
    }

    fn keep_if_live(&mut self, record: ScannedRecord<'_>) -> Result<(), BookieError> {
        if !self.candidate.ledgers.contains(&record.ledger_id) {
            return Ok(());
        }
        let location = Location { log_id: self.candidate.log_id, offset: record.offset, len: record.data.len() as u32 };
        if self.storage.index.location(record.ledger_id, record.entry_id)? != Some(location) {
            return Ok(());
        }
        self.pending_bytes += record.data.len();
        self.pending.push(LiveRecord {
            ledger_id: record.ledger_id,
            entry_id: record.entry_id,
            location,
            data: record.data.to_vec(),
        });
        if self.pending_bytes >= MOVE_BATCH_BYTES {
            self.move_pending()?;
        }
        Ok(())
    }

    /// Appends the pending records to the current log, syncs, and points the index at the
    /// copies of those still live.
    fn move_pending(&mut self) -> Result<(), BookieError> {
        self.pending_bytes = 0;
        if self.pending.is_empty() {
            return Ok(());
        }
        let storage = self.storage;
        let mut writer = storage.appender.lock();
        let mut copies = Vec::with_capacity(self.pending.len());
        for record in self.pending.drain(..) {
            let copy = writer.append(record.ledger_id, record.entry_id, &record.data)?;
            copies.push((record.ledger_id, record.entry_id, record.location, copy));
        }
        let ends = writer.finish()?;
        let mut usage = storage.usage.lock();
        let mut batch = IndexBatch::default();
        let mut change = UsageChange::default();
        for (ledger_id, entry_id, old, copy) in &copies {
            // Deleted or overwritten since the scan looked: the copy is garbage.
            if storage.index.location(*ledger_id, *entry_id)? != Some(*old) {
                continue;
            }
            batch.put_location(*ledger_id, *entry_id, copy);
            change.add(copy.log_id, *ledger_id, copy.record_bytes());
            change.remove(old.log_id, *ledger_id, old.record_bytes());
            self.moved_bytes += copy.record_bytes();
        }
        for (log_id, end) in ends {
            change.extend_log(log_id, end);
        }
        usage.stage(&change, &mut batch);
        storage.index.write(batch)?;
        usage.apply(change);
        Ok(())
    }
}

/// Moves the log's live records to the current log and removes it; returns the bytes
/// reclaimed.
fn compact(storage: &LedgerStorage, candidate: &Candidate) -> Result<u64, CompactionError> {
    let path = storage.logs.path(candidate.log_id);
    let mut compaction =
        Compaction { storage, candidate, pending: Vec::new(), pending_bytes: 0, moved_bytes: 0, failure: None };
    let scanned = entry_log::scan(&path, candidate.log_id, candidate.end, |record| compaction.visit(record));
    if let Some(error) = compaction.failure.take() {
        return Err(CompactionError::Failed(error));
    }
    scanned.map_err(CompactionError::Unreadable)?;
    compaction.move_pending().map_err(CompactionError::Failed)?;
    let mut usage = storage.usage.lock();
    let removed = forget_log(storage, &mut usage, candidate.log_id).map_err(CompactionError::Failed)?;
    Ok(removed.saturating_sub(compaction.moved_bytes))
}

/// Drops the log from the index and the accounting, then removes its file; returns its size.
fn forget_log(storage: &LedgerStorage, usage: &mut LogUsage, log_id: u64) -> Result<u64, BookieError> {
    let mut batch = IndexBatch::default();
    batch.delete_log(log_id);
    storage.index.write(batch)?;
    usage.remove_log(log_id);
    remove_file(storage, log_id, &storage.logs.path(log_id))
}

fn remove_file(storage: &LedgerStorage, log_id: u64, path: &Path) -> Result<u64, BookieError> {
    let size = match std::fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(io_error(path, error)),
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(path, error)),
    }
    storage.logs.forget(log_id);
    Ok(size)
}
