//! Per-entry-log accounting: for each log, the end of the records the index accounts for, and
//! the record bytes (headers included) each ledger has there. GC reads it to find a log's live
//! fraction without scanning the log. Persisted in the index (`e|log`, `m|log|ledger`).
//!
//! Concurrency: the storage keeps it inside its checkpoint mutex, beside the entry log writer.
//! It changes in two steps: [`LogUsage::stage`] puts the values a [`UsageChange`] leads to into
//! an index batch, and [`LogUsage::apply`] makes the same change in memory once that batch is
//! written, so memory never runs ahead of disk.
//!
//! Invariants: a ledger's count in a log is at least the bytes of the records there that the
//! index points to (an overwritten entry leaves its old record counted until the log is
//! compacted, and a deleted ledger's counts go in the deletion's batch), so a log whose ledgers
//! count nothing holds no live record. A log's end only grows.

use std::collections::{BTreeMap, HashMap};

use super::entry_log::HEADER_LEN;
use super::index::IndexBatch;

/// What one entry log holds, as far as the index knows.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LogInfo {
    /// End of the records the index accounts for; bytes after it are garbage.
    pub end: u64,
    /// Record bytes per ledger.
    pub ledgers: HashMap<u64, u64>,
}

impl LogInfo {
    pub fn live_bytes(&self) -> u64 {
        self.ledgers.values().sum()
    }

    /// Record bytes in the log, live or not.
    pub fn total_bytes(&self) -> u64 {
        self.end.saturating_sub(HEADER_LEN)
    }
}

#[derive(Debug, Default)]
pub struct LogUsage {
    logs: BTreeMap<u64, LogInfo>,
}

/// Bytes added to and removed from (log, ledger) counts, and new log ends.
#[derive(Debug, Default)]
pub struct UsageChange {
    bytes: BTreeMap<(u64, u64), (u64, u64)>,
    ends: BTreeMap<u64, u64>,
}

impl UsageChange {
    pub fn add(&mut self, log_id: u64, ledger_id: u64, bytes: u64) {
        self.bytes.entry((log_id, ledger_id)).or_default().0 += bytes;
    }

    pub fn remove(&mut self, log_id: u64, ledger_id: u64, bytes: u64) {
        self.bytes.entry((log_id, ledger_id)).or_default().1 += bytes;
    }

    pub fn extend_log(&mut self, log_id: u64, end: u64) {
        let current = self.ends.entry(log_id).or_default();
        *current = (*current).max(end);
    }
}

impl LogUsage {
    pub fn load_end(&mut self, log_id: u64, end: u64) {
        self.logs.entry(log_id).or_default().end = end;
    }

    pub fn load_bytes(&mut self, log_id: u64, ledger_id: u64, bytes: u64) {
        self.logs.entry(log_id).or_default().ledgers.insert(ledger_id, bytes);
    }

    pub fn get(&self, log_id: u64) -> Option<&LogInfo> {
        self.logs.get(&log_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &LogInfo)> {
        self.logs.iter().map(|(log_id, info)| (*log_id, info))
    }

    pub fn max_log_id(&self) -> Option<u64> {
        self.logs.keys().next_back().copied()
    }

    /// Logs where the ledger has records.
    pub fn logs_holding(&self, ledger_id: u64) -> Vec<u64> {
        self.logs.iter().filter(|(_, info)| info.ledgers.contains_key(&ledger_id)).map(|(log_id, _)| *log_id).collect()
    }

    pub fn remove_ledger(&mut self, ledger_id: u64) {
        for info in self.logs.values_mut() {
            info.ledgers.remove(&ledger_id);
        }
    }

    pub fn remove_log(&mut self, log_id: u64) {
        self.logs.remove(&log_id);
    }

    fn count_after(&self, change: &UsageChange) -> Vec<(u64, u64, u64)> {
        change
            .bytes
            .iter()
            .map(|(&(log_id, ledger_id), &(added, removed))| {
                let now = self.logs.get(&log_id).and_then(|info| info.ledgers.get(&ledger_id)).copied().unwrap_or(0);
                (log_id, ledger_id, now.saturating_add(added).saturating_sub(removed))
            })
            .collect()
    }

    fn end_after(&self, log_id: u64, end: u64) -> u64 {
        self.logs.get(&log_id).map_or(end, |info| info.end.max(end))
    }

    /// Puts into `batch` the values `change` leads to.
    pub fn stage(&self, change: &UsageChange, batch: &mut IndexBatch) {
        for (log_id, ledger_id, bytes) in self.count_after(change) {
            batch.put_usage(log_id, ledger_id, bytes);
        }
        for (&log_id, &end) in &change.ends {
            batch.put_log_end(log_id, self.end_after(log_id, end));
        }
    }

    /// Makes `change` in memory, after the batch [`stage`](Self::stage) filled was written.
    pub fn apply(&mut self, change: UsageChange) {
        for (log_id, ledger_id, bytes) in self.count_after(&change) {
            let info = self.logs.entry(log_id).or_default();
            if bytes == 0 {
                info.ledgers.remove(&ledger_id);
            } else {
                info.ledgers.insert(ledger_id, bytes);
            }
        }
        for (log_id, end) in change.ends {
            let end = self.end_after(log_id, end);
            self.logs.entry(log_id).or_default().end = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_add_remove_and_extend() {
        let mut usage = LogUsage::default();
        let mut change = UsageChange::default();
        change.add(1, 10, 100);
        change.add(1, 11, 50);
        change.extend_log(1, 166);
        usage.apply(change);
        let mut change = UsageChange::default();
        change.remove(1, 10, 100);
        change.add(2, 10, 100);
        change.extend_log(2, 116);
        change.extend_log(1, 20);
        usage.apply(change);
        let one = usage.get(1).expect("log 1");
        assert_eq!((one.end, one.live_bytes(), one.total_bytes()), (166, 50, 150));
        assert!(!one.ledgers.contains_key(&10), "a zero count is dropped");
        assert_eq!(usage.logs_holding(10), vec![2]);
        usage.remove_ledger(11);
        assert_eq!(usage.get(1).expect("log 1").live_bytes(), 0);
        assert_eq!(usage.max_log_id(), Some(2));
        usage.remove_log(2);
        assert_eq!(usage.max_log_id(), Some(1));
    }

    #[test]
    fn removing_more_than_counted_stops_at_zero() {
        let mut usage = LogUsage::default();
        usage.load_bytes(1, 5, 10);
        let mut change = UsageChange::default();
        change.remove(1, 5, 30);
        usage.apply(change);
        assert_eq!(usage.get(1).expect("log").live_bytes(), 0);
    }
}
