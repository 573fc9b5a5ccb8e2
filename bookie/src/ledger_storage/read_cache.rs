//! The read cache: entries recently read from entry logs (and the entries read ahead after
//! them), so that a reader going through a ledger in order mostly reads memory. A moka cache
//! weighted by bytes, capacity `read_cache_bytes`.
//!
//! Concurrency: moka is safe from many threads. The `deletions` lock orders fills against
//! ledger deletions: a reader notes the deletion generation before it looks an entry up in the
//! index and fills the cache only if no deletion happened since (checked and inserted under the
//! lock held shared); a deletion bumps the generation and invalidates under it exclusively.
//!
//! Invariants: once `invalidate_ledger` returned, no entry of that ledger read before it is
//! returned by `get` (moka checks invalidation predicates on every read) or inserted later.
//! Entries are immutable per (ledger, entry) in the ledger protocol, so the cache is never
//! refreshed on overwrite.

use parking_lot::RwLock;

use bytes::Bytes;
use moka::sync::Cache;
use tracing::warn;

/// Bytes an entry costs besides its data: key, `Bytes` handle, moka's bookkeeping.
const ENTRY_OVERHEAD: usize = 96;

pub struct ReadCache {
    entries: Cache<(u64, u64), Bytes>,
    deletions: RwLock<u64>,
}

impl ReadCache {
    pub fn new(capacity_bytes: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_key: &(u64, u64), data: &Bytes| u32::try_from(data.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX))
            .support_invalidation_closures()
            .build();
        ReadCache { entries, deletions: RwLock::new(0) }
    }

    pub fn get(&self, ledger_id: u64, entry_id: u64) -> Option<Bytes> {
        self.entries.get(&(ledger_id, entry_id))
    }

    /// Bytes held, as the weigher counts them (moka's count may lag a little).
    pub fn weighted_bytes(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Note this before looking up the index for entries to insert later.
    pub fn generation(&self) -> u64 {
        *self.deletions.read()
    }

    /// Caches entries of a ledger read from the entry logs, unless a ledger was deleted since
    /// `generation` (they might belong to it). Returns whether they were inserted.
    pub fn insert_if_unchanged(&self, generation: u64, ledger_id: u64, entries: &[(u64, Bytes)]) -> bool {
        let deletions = self.deletions.read();
        if *deletions != generation {
            return false;
        }
        for (entry_id, data) in entries {
            self.entries.insert((ledger_id, *entry_id), data.clone());
        }
        true
    }

    pub fn invalidate_ledger(&self, ledger_id: u64) {
        let mut deletions = self.deletions.write();
        *deletions += 1;
        if let Err(error) = self.entries.invalidate_entries_if(move |key, _| key.0 == ledger_id) {
            warn!(ledger_id, %error, "read cache cannot invalidate one ledger, clearing it all");
            self.entries.invalidate_all();
        }
    }

    #[cfg(test)]
    pub fn contains(&self, ledger_id: u64, entry_id: u64) -> bool {
        self.entries.contains_key(&(ledger_id, entry_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidated_ledger_is_gone_and_late_fills_are_refused() {
        let cache = ReadCache::new(1 << 20);
        let before = cache.generation();
        assert!(cache.insert_if_unchanged(before, 1, &[(0, Bytes::from_static(b"a")), (1, Bytes::from_static(b"b"))]));
        assert!(cache.insert_if_unchanged(before, 2, &[(0, Bytes::from_static(b"c"))]));
        cache.invalidate_ledger(1);
        assert_eq!(cache.get(1, 0), None);
        assert_eq!(cache.get(1, 1), None);
        assert_eq!(cache.get(2, 0), Some(Bytes::from_static(b"c")));
        assert!(!cache.insert_if_unchanged(before, 1, &[(0, Bytes::from_static(b"a"))]), "read before the delete");
        assert_eq!(cache.get(1, 0), None);
        let after = cache.generation();
        assert!(cache.insert_if_unchanged(after, 1, &[(0, Bytes::from_static(b"new"))]));
        assert_eq!(cache.get(1, 0), Some(Bytes::from_static(b"new")));
    }

    #[test]
    fn cache_holds_about_its_capacity_in_bytes() {
        let cache = ReadCache::new(64 * 1024);
        let generation = cache.generation();
        for entry in 0..1000u64 {
            cache.insert_if_unchanged(generation, 1, &[(entry, Bytes::from(vec![0u8; 1024]))]);
        }
        cache.entries.run_pending_tasks();
        assert!(cache.entries.weighted_size() <= 64 * 1024, "{}", cache.entries.weighted_size());
    }
}
