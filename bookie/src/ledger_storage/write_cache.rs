//! The write cache: entries put since the last checkpoint, held in memory until a flush writes
//! them to an entry log.
//!
//! Two halves. Adds go to the active half; a checkpoint swaps it into the flushing half (with
//! the journal mark that covers it) and starts an empty active half, so adds never wait for the
//! disk. Both halves are sorted by (ledger, entry), the order the entry log wants.
//!
//! Concurrency: the storage keeps the cache in one mutex, held only for map operations. The
//! flushing half is an `Arc` so that a flush can write it out without holding that mutex while
//! readers keep finding its entries here.
//!
//! Invariants: at most one flushing half exists; it is dropped only after its entries are in the
//! index, so an entry is always findable in a half or through the index. The flushing half is
//! never changed (a flush may be writing it): a ledger deleted while it exists is hidden instead,
//! its entries there no longer found, and the flush leaves them out of the index. Byte counts are
//! the sum of the entries' data lengths.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

/// Entries of one half, by (ledger, entry), with the sum of their lengths.
#[derive(Debug, Default, Clone)]
pub struct CacheHalf {
    entries: BTreeMap<(u64, u64), Bytes>,
    bytes: usize,
}

impl CacheHalf {
    pub fn put(&mut self, ledger_id: u64, entry_id: u64, data: Bytes) {
        self.bytes += data.len();
        if let Some(old) = self.entries.insert((ledger_id, entry_id), data) {
            self.bytes -= old.len();
        }
    }

    pub fn get(&self, ledger_id: u64, entry_id: u64) -> Option<Bytes> {
        self.entries.get(&(ledger_id, entry_id)).cloned()
    }

    pub fn last_entry_id(&self, ledger_id: u64) -> Option<u64> {
        self.entries.range((ledger_id, 0)..=(ledger_id, u64::MAX)).next_back().map(|((_, entry_id), _)| *entry_id)
    }

    pub fn remove_ledger(&mut self, ledger_id: u64) {
        let keys: Vec<(u64, u64)> =
            self.entries.range((ledger_id, 0)..=(ledger_id, u64::MAX)).map(|(key, _)| *key).collect();
        for key in keys {
            if let Some(old) = self.entries.remove(&key) {
                self.bytes -= old.len();
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in (ledger, entry) order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, &Bytes)> {
        self.entries.iter().map(|((ledger_id, entry_id), data)| (*ledger_id, *entry_id, data))
    }
}

/// The half being written out, and the journal mark that every entry in it is covered by.
#[derive(Debug)]
pub struct FlushingHalf {
    pub entries: CacheHalf,
    pub mark: u64,
}

#[derive(Debug, Default)]
pub struct WriteCache {
    active: CacheHalf,
    flushing: Option<Arc<FlushingHalf>>,
    /// Ledgers deleted since the flushing half was swapped in: its entries of them are dead.
    hidden: HashSet<u64>,
}

impl WriteCache {
    pub fn put(&mut self, ledger_id: u64, entry_id: u64, data: Bytes) {
        self.active.put(ledger_id, entry_id, data);
    }

    /// The newest copy: the active half was written after the flushing half.
    pub fn get(&self, ledger_id: u64, entry_id: u64) -> Option<Bytes> {
        self.active
            .get(ledger_id, entry_id)
            .or_else(|| self.visible_flushing(ledger_id)?.entries.get(ledger_id, entry_id))
    }

    pub fn last_entry_id(&self, ledger_id: u64) -> Option<u64> {
        let flushing = self.visible_flushing(ledger_id).and_then(|half| half.entries.last_entry_id(ledger_id));
        self.active.last_entry_id(ledger_id).max(flushing)
    }

    /// The flushing half, if the ledger's entries there are not hidden.
    fn visible_flushing(&self, ledger_id: u64) -> Option<&FlushingHalf> {
        self.flushing.as_deref().filter(|_| !self.hidden.contains(&ledger_id))
    }

    pub fn active_bytes(&self) -> usize {
        self.active.bytes()
    }

    /// Bytes in both halves.
    pub fn bytes(&self) -> usize {
        self.active.bytes() + self.flushing.as_ref().map_or(0, |half| half.entries.bytes())
    }

    /// Makes the active half the flushing half, covered by `mark`. False, changing nothing, while
    /// a flushing half is still there.
    pub fn swap(&mut self, mark: u64) -> bool {
        if self.flushing.is_some() {
            return false;
        }
        let entries = std::mem::take(&mut self.active);
        self.flushing = Some(Arc::new(FlushingHalf { entries, mark }));
        true
    }

    pub fn flushing(&self) -> Option<Arc<FlushingHalf>> {
        self.flushing.clone()
    }

    pub fn flush_pending(&self) -> bool {
        self.flushing.is_some()
    }

    /// Ledgers whose entries in the flushing half are dead (deleted since the swap).
    pub fn hidden(&self) -> &HashSet<u64> {
        &self.hidden
    }

    /// Drops the flushing half once its entries are in the index.
    pub fn finish_flush(&mut self) {
        self.flushing = None;
        self.hidden.clear();
    }

    /// Removes a ledger's entries from the active half and hides them in the flushing half.
    pub fn remove_ledger(&mut self, ledger_id: u64) {
        self.active.remove_ledger(ledger_id);
        if self.flushing.is_some() {
            self.hidden.insert(ledger_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_overwrites_and_counts_bytes() {
        let mut cache = WriteCache::default();
        cache.put(1, 0, Bytes::from_static(b"abc"));
        cache.put(1, 1, Bytes::from_static(b"de"));
        cache.put(1, 0, Bytes::from_static(b"x"));
        assert_eq!(cache.active_bytes(), 3);
        assert_eq!(cache.get(1, 0), Some(Bytes::from_static(b"x")));
        assert_eq!(cache.last_entry_id(1), Some(1));
        assert_eq!(cache.last_entry_id(2), None);
    }

    #[test]
    fn swap_moves_active_half_and_refuses_while_flush_pending() {
        let mut cache = WriteCache::default();
        cache.put(1, 0, Bytes::from_static(b"old"));
        assert!(cache.swap(7));
        cache.put(1, 1, Bytes::from_static(b"new"));
        assert!(!cache.swap(8), "a second swap must wait for the flush");
        assert_eq!(cache.active_bytes(), 3);
        assert_eq!(cache.get(1, 0), Some(Bytes::from_static(b"old")));
        assert_eq!(cache.last_entry_id(1), Some(1));
        let flushing = cache.flushing().expect("flushing half");
        assert_eq!((flushing.mark, flushing.entries.len()), (7, 1));
        cache.finish_flush();
        assert_eq!(cache.get(1, 0), None);
        assert!(cache.swap(8));
        assert!(cache.hidden().is_empty());
    }

    #[test]
    fn newer_active_copy_wins_over_flushing_copy() {
        let mut cache = WriteCache::default();
        cache.put(1, 0, Bytes::from_static(b"first"));
        assert!(cache.swap(1));
        cache.put(1, 0, Bytes::from_static(b"second"));
        assert_eq!(cache.get(1, 0), Some(Bytes::from_static(b"second")));
    }

    #[test]
    fn remove_ledger_clears_the_active_half_and_hides_the_flushing_half() {
        let mut cache = WriteCache::default();
        cache.put(1, 0, Bytes::from_static(b"a"));
        cache.put(2, 0, Bytes::from_static(b"b"));
        assert!(cache.swap(1));
        cache.put(1, 1, Bytes::from_static(b"c"));
        cache.put(u64::MAX, u64::MAX, Bytes::from_static(b"d"));
        cache.remove_ledger(1);
        cache.remove_ledger(u64::MAX);
        assert_eq!(cache.get(1, 0), None);
        assert_eq!(cache.get(1, 1), None);
        assert_eq!(cache.get(u64::MAX, u64::MAX), None);
        assert_eq!(cache.last_entry_id(1), None);
        assert_eq!(cache.get(2, 0), Some(Bytes::from_static(b"b")));
        assert_eq!(cache.active_bytes(), 0);
        assert_eq!(cache.hidden(), &HashSet::from([1, u64::MAX]));
        // A ledger re-created after its deletion is seen in the active half only.
        cache.put(1, 2, Bytes::from_static(b"e"));
        assert_eq!(cache.get(1, 0), None);
        assert_eq!(cache.last_entry_id(1), Some(2));
        cache.finish_flush();
        assert!(cache.hidden().is_empty());
    }
}
