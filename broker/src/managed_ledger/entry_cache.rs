//! The entry cache: entries just written (and entries read from bookies), kept in memory so
//! that a subscription reading at the tail, or several reading the same range, get them
//! without a bookie read. As Pulsar's managed-ledger cache (`RangeEntryCacheImpl` under a
//! broker-wide `RangeEntryCacheManagerImpl`):
//!
//! - An entry is kept as the same [`Bytes`] the producer's SEND carried (or the bookie's read
//!   answer): caching, and handing one entry to any number of subscriptions and consumers,
//!   copies no payload.
//! - A managed ledger caches only while some reader of it is active (a subscription with
//!   consumers): a topic nobody reads costs no memory.
//! - Entries are dropped once every active reader is past them, once older than
//!   `managed_ledger_cache_eviction_time_threshold_millis`, and, when the broker-wide size
//!   passes `managed_ledger_cache_size_mb`, down to `managed_ledger_cache_eviction_watermark`
//!   of it, oldest first, from every managed ledger in proportion to its share.
//!
//! Entries may be cached before they are confirmed (a write is cached when placed, so that it
//! is there by the time it becomes readable): reads ask the cache only for confirmed
//! positions, so an entry whose write failed is never served, only evicted.
//!
//! The size counted is the entries' payload bytes. A cached SEND payload shares its buffer
//! with what the connection read with it, which can keep a little more memory alive than is
//! counted, as in Pulsar (a retained slice of a larger buffer).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::config::EntryCacheConfig;
use super::Position;

/// Counters and size of the broker's entry cache, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EntryCacheStats {
    pub size_bytes: u64,
    pub entries: u64,
    pub hits: u64,
    pub hit_bytes: u64,
    pub misses: u64,
    pub evicted: u64,
    pub caches: u64,
}

/// The broker-wide budget and counters every managed ledger's cache shares.
#[derive(Debug)]
pub struct EntryCacheManager {
    config: EntryCacheConfig,
    size: AtomicU64,
    entries: AtomicU64,
    hits: AtomicU64,
    hit_bytes: AtomicU64,
    misses: AtomicU64,
    evicted: AtomicU64,
    caches: Mutex<Vec<Weak<EntryCache>>>,
}

impl EntryCacheManager {
    pub fn new(config: EntryCacheConfig) -> Arc<Self> {
        Arc::new(EntryCacheManager {
            config,
            size: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            hit_bytes: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            caches: Mutex::new(Vec::new()),
        })
    }

    /// A cache for one managed ledger, counted in this budget.
    pub fn cache(self: &Arc<Self>) -> Arc<EntryCache> {
        let cache = Arc::new(EntryCache { manager: self.clone(), inner: Mutex::new(Inner::default()) });
        let mut caches = self.caches.lock();
        caches.retain(|c| c.strong_count() > 0);
        caches.push(Arc::downgrade(&cache));
        cache
    }

    pub fn stats(&self) -> EntryCacheStats {
        EntryCacheStats {
            size_bytes: self.size.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            hit_bytes: self.hit_bytes.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            caches: self.caches.lock().iter().filter(|c| c.strong_count() > 0).count() as u64,
        }
    }

    fn live_caches(&self) -> Vec<Arc<EntryCache>> {
        self.caches.lock().iter().filter_map(Weak::upgrade).collect()
    }

    /// Drops entries older than the time threshold from every cache. The broker runs it
    /// every [`SWEEP_INTERVAL`] (see [`EntryCacheManager::spawn_sweeper`]).
    pub fn sweep(&self) {
        if self.size.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(cutoff) = Instant::now().checked_sub(self.config.eviction_time) else { return };
        for cache in self.live_caches() {
            cache.evict_older_than(cutoff);
        }
    }

    /// Runs [`EntryCacheManager::sweep`] every [`SWEEP_INTERVAL`] until the manager is
    /// dropped.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(SWEEP_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                match weak.upgrade() {
                    Some(manager) => manager.sweep(),
                    None => return,
                }
            }
        });
    }

    /// Over the budget: every cache drops its oldest entries in proportion to its share,
    /// until the total is at the watermark.
    fn relieve_pressure(&self) {
        let size = self.size.load(Ordering::Relaxed);
        if size <= self.config.size_bytes {
            return;
        }
        let target = (self.config.size_bytes as f64 * self.config.eviction_watermark) as u64;
        let to_free = size.saturating_sub(target);
        let caches = self.live_caches();
        for cache in &caches {
            let share = cache.inner.lock().size;
            let free = (u128::from(to_free) * u128::from(share)).div_ceil(u128::from(size.max(1))) as u64;
            cache.evict_oldest(free);
        }
    }

    fn add(&self, entries: u64, bytes: u64) {
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.size.fetch_add(bytes, Ordering::Relaxed);
    }

    fn remove(&self, entries: u64, bytes: u64, evicted: bool) {
        self.entries.fetch_sub(entries, Ordering::Relaxed);
        self.size.fetch_sub(bytes, Ordering::Relaxed);
        if evicted {
            self.evicted.fetch_add(entries, Ordering::Relaxed);
        }
    }
}

/// How often entries past the time threshold are dropped (Pulsar's
/// `managedLedgerCacheEvictionIntervalMs` is 10 ms; a coarser sweep costs no wake-ups when
/// idle and the threshold is a second).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

struct Cached {
    data: Bytes,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<Position, Cached>,
    size: u64,
    /// Readers by id: where each reads next, `None` while it is idle (no consumers).
    readers: HashMap<u64, Option<Position>>,
    next_reader: u64,
    /// A read-ahead in flight: its first and last position, and who waits for it.
    loading: Option<(Position, Position, Arc<Notify>)>,
    closed: bool,
}

impl Inner {
    fn active_readers(&self) -> bool {
        self.readers.values().any(Option::is_some)
    }

    fn slowest_reader(&self) -> Option<Position> {
        self.readers.values().flatten().min().copied()
    }
}

/// One managed ledger's cached entries.
pub struct EntryCache {
    manager: Arc<EntryCacheManager>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for EntryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("EntryCache").field("entries", &inner.entries.len()).field("size", &inner.size).finish()
    }
}

impl EntryCache {
    fn enabled(&self) -> bool {
        self.manager.config.size_bytes > 0
    }

    /// Keeps `data` at `position` if some reader is active (a write just placed, or an entry
    /// read from a bookie).
    pub fn insert(&self, position: Position, data: &Bytes) {
        self.insert_all(std::iter::once((position, data)));
    }

    /// Keeps every entry of `entries` if some reader is active and is not past them.
    pub fn insert_all<'a>(&self, entries: impl IntoIterator<Item = (Position, &'a Bytes)>) {
        if !self.enabled() {
            return;
        }
        let (mut added, mut bytes) = (0u64, 0u64);
        {
            let mut inner = self.inner.lock();
            if inner.closed || !inner.active_readers() {
                return;
            }
            let slowest = inner.slowest_reader();
            let now = Instant::now();
            for (position, data) in entries {
                if slowest.is_some_and(|slowest| position < slowest) {
                    continue;
                }
                let size = data.len() as u64;
                if let Some(old) = inner.entries.insert(position, Cached { data: data.clone(), at: now }) {
                    inner.size -= old.data.len() as u64;
                    self.manager.remove(1, old.data.len() as u64, false);
                }
                inner.size += size;
                added += 1;
                bytes += size;
            }
        }
        self.manager.add(added, bytes);
        self.manager.relieve_pressure();
    }

    /// The cached run of consecutive entries from `from` to at most `last` (same ledger), at
    /// most `max_entries` of them and `max_bytes` (at least one); empty on a miss. Counts a
    /// hit or a miss.
    pub fn get_run(&self, from: Position, last: u64, max_entries: u32, max_bytes: u64) -> Vec<(Position, Bytes)> {
        let mut run = Vec::new();
        if self.enabled() {
            let inner = self.inner.lock();
            let mut bytes = 0u64;
            let end = Position::new(from.ledger_id, last);
            for (position, cached) in inner.entries.range(from..=end) {
                let expected = Position::new(from.ledger_id, from.entry_id + run.len() as u64);
                if *position != expected || run.len() as u32 >= max_entries.max(1) {
                    break;
                }
                if !run.is_empty() && bytes + cached.data.len() as u64 > max_bytes {
                    break;
                }
                bytes += cached.data.len() as u64;
                run.push((*position, cached.data.clone()));
            }
            if !run.is_empty() {
                self.manager.hits.fetch_add(run.len() as u64, Ordering::Relaxed);
                self.manager.hit_bytes.fetch_add(bytes, Ordering::Relaxed);
                return run;
            }
        }
        self.manager.misses.fetch_add(1, Ordering::Relaxed);
        if tracing::enabled!(tracing::Level::TRACE) {
            let inner = self.inner.lock();
            let first = inner.entries.first_key_value().map(|(p, _)| *p);
            let last_cached = inner.entries.last_key_value().map(|(p, _)| *p);
            tracing::trace!(%from, last, ?first, ?last_cached, readers = ?inner.readers, "entry cache miss");
        }
        run
    }

    /// A read-ahead loading `from`, if one is in flight: wait on it, then ask again.
    pub fn loading(&self, from: Position) -> Option<Arc<Notify>> {
        let inner = self.inner.lock();
        inner.loading.as_ref().filter(|(first, last, _)| (*first..=*last).contains(&from)).map(|(_, _, n)| n.clone())
    }

    /// Marks a read-ahead of `first..=last` as in flight, unless one already is.
    pub fn start_loading(&self, first: Position, last: Position) -> Option<Arc<Notify>> {
        let mut inner = self.inner.lock();
        if inner.loading.is_some() || !inner.active_readers() {
            return None;
        }
        let notify = Arc::new(Notify::new());
        inner.loading = Some((first, last, notify.clone()));
        Some(notify)
    }

    /// The read-ahead is done (its entries inserted, or it failed).
    pub fn done_loading(&self) {
        if let Some((_, _, notify)) = self.inner.lock().loading.take() {
            notify.notify_waiters();
        }
    }

    /// Whether `position` is cached.
    pub fn contains(&self, position: Position) -> bool {
        self.inner.lock().entries.contains_key(&position)
    }

    /// A new reader, idle until it says where it reads.
    pub fn reader(self: &Arc<Self>) -> CacheReader {
        let mut inner = self.inner.lock();
        let id = inner.next_reader;
        inner.next_reader += 1;
        inner.readers.insert(id, None);
        CacheReader { cache: self.clone(), id }
    }

    fn set_reader(&self, id: u64, at: Option<Position>) {
        let evict_below = {
            let mut inner = self.inner.lock();
            let Some(slot) = inner.readers.get_mut(&id) else { return };
            if *slot == at {
                return;
            }
            *slot = at;
            if inner.active_readers() {
                inner.slowest_reader()
            } else {
                // Nobody reads: nothing is worth keeping.
                Some(Position::new(u64::MAX, u64::MAX))
            }
        };
        if let Some(below) = evict_below {
            self.evict_before(below);
        }
    }

    /// Drops entries before `position` (every active reader is past them, or trimmed).
    pub fn evict_before(&self, position: Position) {
        self.remove_where(|inner| {
            let kept = inner.entries.split_off(&position);
            std::mem::replace(&mut inner.entries, kept)
        });
    }

    /// Drops a ledger's entries after `last` (an add that failed there is never readable).
    pub fn evict_ledger_after(&self, ledger_id: u64, last: Option<u64>) {
        let from = Position::new(ledger_id, last.map_or(0, |last| last + 1));
        self.remove_where(|inner| {
            let mut removed = inner.entries.split_off(&from);
            let mut kept_after = removed.split_off(&Position::new(ledger_id.saturating_add(1), 0));
            inner.entries.append(&mut kept_after);
            removed
        });
    }

    fn evict_older_than(&self, cutoff: Instant) {
        self.remove_where(|inner| {
            // Writes are cached in position order, so the old ones are in front: stop at the
            // first young one. (An entry read back from a bookie behind a younger one waits
            // for the readers to pass it, or for pressure.)
            let mut removed = BTreeMap::new();
            while let Some(entry) = inner.entries.first_entry() {
                if entry.get().at >= cutoff {
                    break;
                }
                let (position, cached) = entry.remove_entry();
                removed.insert(position, cached);
            }
            removed
        });
    }

    fn evict_oldest(&self, bytes: u64) {
        self.remove_where(|inner| {
            let mut removed = BTreeMap::new();
            let mut freed = 0u64;
            while freed < bytes {
                let Some((position, cached)) = inner.entries.pop_first() else { break };
                freed += cached.data.len() as u64;
                removed.insert(position, cached);
            }
            removed
        });
    }

    /// Drops everything and caches nothing more (the managed ledger closed).
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.evict_before(Position::new(u64::MAX, u64::MAX));
        self.done_loading();
    }

    fn remove_where(&self, take: impl FnOnce(&mut Inner) -> BTreeMap<Position, Cached>) {
        let removed = {
            let mut inner = self.inner.lock();
            let removed = take(&mut inner);
            let bytes: u64 = removed.values().map(|c| c.data.len() as u64).sum();
            inner.size -= bytes;
            removed
        };
        if removed.is_empty() {
            return;
        }
        let bytes = removed.values().map(|c| c.data.len() as u64).sum();
        self.manager.remove(removed.len() as u64, bytes, true);
        // The payloads are freed here, outside the lock.
        drop(removed);
    }
}

impl Drop for EntryCache {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        let bytes: u64 = inner.entries.values().map(|c| c.data.len() as u64).sum();
        self.manager.remove(inner.entries.len() as u64, bytes, false);
    }
}

/// A subscription reading a managed ledger: while it is active, the ledger caches, and
/// entries before where it reads next may be dropped once every active reader is past them.
pub struct CacheReader {
    cache: Arc<EntryCache>,
    id: u64,
}

impl CacheReader {
    /// The reader reads `position` next (it has consumers).
    pub fn at(&self, position: Position) {
        self.cache.set_reader(self.id, Some(position));
    }

    /// The reader has no consumers: it holds nothing in the cache.
    pub fn idle(&self) {
        self.cache.set_reader(self.id, None);
    }
}

impl Drop for CacheReader {
    fn drop(&mut self) {
        self.cache.set_reader(self.id, None);
        self.cache.inner.lock().readers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(size_bytes: u64) -> Arc<EntryCacheManager> {
        EntryCacheManager::new(EntryCacheConfig {
            size_bytes,
            eviction_watermark: 0.5,
            eviction_time: Duration::from_secs(60),
        })
    }

    fn entry(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn caches_only_while_a_reader_is_active_and_serves_the_same_bytes() {
        let manager = manager(1 << 20);
        let cache = manager.cache();
        let data = entry(100);
        cache.insert(Position::new(1, 0), &data);
        assert!(!cache.contains(Position::new(1, 0)), "no reader: nothing cached");
        let reader = cache.reader();
        cache.insert(Position::new(1, 0), &data);
        assert!(!cache.contains(Position::new(1, 0)), "an idle reader does not count");
        reader.at(Position::new(1, 0));
        cache.insert(Position::new(1, 0), &data);
        cache.insert(Position::new(1, 1), &entry(50));
        let run = cache.get_run(Position::new(1, 0), 10, 10, u64::MAX);
        assert_eq!(run.len(), 2);
        assert_eq!(run[0].1.as_ptr(), data.as_ptr(), "the cached entry is the same buffer, not a copy");
        assert_eq!(manager.stats().size_bytes, 150);
        assert_eq!(manager.stats().hits, 2);
        assert!(cache.get_run(Position::new(1, 2), 10, 10, u64::MAX).is_empty());
        assert_eq!(manager.stats().misses, 1);
        drop(reader);
        assert_eq!(manager.stats().size_bytes, 0, "the last reader gone, the cache empties");
    }

    #[test]
    fn runs_stop_at_gaps_limits_and_the_last_readable_entry() {
        let manager = manager(1 << 20);
        let cache = manager.cache();
        let reader = cache.reader();
        reader.at(Position::new(1, 0));
        for entry_id in [0, 1, 2, 4] {
            cache.insert(Position::new(1, entry_id), &entry(10));
        }
        assert_eq!(cache.get_run(Position::new(1, 0), 10, 10, u64::MAX).len(), 3, "gap at 3");
        assert_eq!(cache.get_run(Position::new(1, 0), 1, 10, u64::MAX).len(), 2, "bounded by the last");
        assert_eq!(cache.get_run(Position::new(1, 0), 10, 2, u64::MAX).len(), 2, "bounded by entries");
        assert_eq!(cache.get_run(Position::new(1, 0), 10, 10, 15).len(), 1, "bounded by bytes, at least one");
    }

    #[test]
    fn entries_go_once_every_active_reader_is_past_them() {
        let manager = manager(1 << 20);
        let cache = manager.cache();
        let (fast, slow) = (cache.reader(), cache.reader());
        fast.at(Position::new(1, 0));
        slow.at(Position::new(1, 0));
        for entry_id in 0..10 {
            cache.insert(Position::new(1, entry_id), &entry(10));
        }
        fast.at(Position::new(1, 8));
        assert!(cache.contains(Position::new(1, 0)), "the slow reader still needs it");
        slow.at(Position::new(1, 5));
        assert!(!cache.contains(Position::new(1, 4)));
        assert!(cache.contains(Position::new(1, 5)));
        slow.idle();
        assert!(!cache.contains(Position::new(1, 7)), "an idle reader holds nothing back");
        assert!(cache.contains(Position::new(1, 8)));
        cache.insert(Position::new(1, 3), &entry(10));
        assert!(!cache.contains(Position::new(1, 3)), "nobody active needs what is behind them");
        assert_eq!(manager.stats().entries, 2);
        assert_eq!(manager.stats().evicted, 8);
    }

    #[test]
    fn pressure_evicts_the_oldest_down_to_the_watermark_across_ledgers() {
        let manager = manager(1000);
        let (a, b) = (manager.cache(), manager.cache());
        let (ra, rb) = (a.reader(), b.reader());
        ra.at(Position::new(1, 0));
        rb.at(Position::new(1, 0));
        for entry_id in 0..5 {
            a.insert(Position::new(1, entry_id), &entry(100));
            b.insert(Position::new(1, entry_id), &entry(100));
        }
        assert_eq!(manager.stats().size_bytes, 1000);
        a.insert(Position::new(1, 5), &entry(100));
        let stats = manager.stats();
        assert!(stats.size_bytes <= 500 + 100, "down to the watermark: {stats:?}");
        assert!(!a.contains(Position::new(1, 0)) && !b.contains(Position::new(1, 0)), "oldest first, in both");
        assert!(a.contains(Position::new(1, 5)) && b.contains(Position::new(1, 4)), "newest kept");
    }

    #[test]
    fn old_entries_and_failed_writes_are_dropped() {
        let manager = EntryCacheManager::new(EntryCacheConfig {
            size_bytes: 1 << 20,
            eviction_watermark: 0.9,
            eviction_time: Duration::from_millis(20),
        });
        let cache = manager.cache();
        let reader = cache.reader();
        reader.at(Position::new(1, 0));
        cache.insert(Position::new(1, 0), &entry(10));
        std::thread::sleep(Duration::from_millis(40));
        cache.insert(Position::new(1, 1), &entry(10));
        cache.insert(Position::new(1, 2), &entry(10));
        cache.insert(Position::new(2, 0), &entry(10));
        manager.sweep();
        assert!(!cache.contains(Position::new(1, 0)));
        assert!(cache.contains(Position::new(1, 1)));
        cache.evict_ledger_after(1, Some(1));
        assert!(!cache.contains(Position::new(1, 2)) && cache.contains(Position::new(1, 1)));
        assert!(cache.contains(Position::new(2, 0)), "other ledgers untouched");
        cache.close();
        assert_eq!(manager.stats().size_bytes, 0);
        cache.insert(Position::new(3, 0), &entry(10));
        assert_eq!(manager.stats().entries, 0, "a closed cache keeps nothing");
        drop(reader);
    }

    #[test]
    fn a_disabled_cache_keeps_nothing() {
        let manager = manager(0);
        let cache = manager.cache();
        let reader = cache.reader();
        reader.at(Position::new(1, 0));
        cache.insert(Position::new(1, 0), &entry(10));
        assert!(cache.get_run(Position::new(1, 0), 0, 1, u64::MAX).is_empty());
        assert_eq!(manager.stats().size_bytes, 0);
    }
}
