//! The bookie's metrics, in BookKeeper's names, as Prometheus text: journal add and sync
//! latencies (histograms in milliseconds, as BookKeeper's OpStats), the journal queue and its
//! group-commit batches, ledger storage flushes, the read cache, the bookie's state and disk
//! use, and the auto-recovery worker's totals.
//!
//! Each bookie has its own [`BookieMetrics`] (several bookies can share a process in tests and
//! standalone); [`BookieMetrics::render`] sets the values read at scrape time (state, disk,
//! cache sizes) and encodes the whole registry. Parts built without a registry (tests, the
//! journal opened alone) get unregistered metrics that count all the same.

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Latency buckets in milliseconds, from a fast disk's sync to a stalled one.
const LATENCY_MS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0];
/// Entries in one group commit.
const BATCH_ENTRIES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];
/// Bytes in one group commit.
const BATCH_BYTES: &[f64] = &[512.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0];

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid histogram")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid counter")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid gauge")
}

/// The journal's: kept by the journal thread and its callers.
#[derive(Clone)]
pub struct JournalMetrics {
    /// From an add's submit to its answer (queue, write and fdatasync).
    pub add_entry: Histogram,
    /// One group commit's write and fdatasync (one linked io_uring submission).
    pub sync: Histogram,
    /// Requests submitted and not yet taken by the journal thread.
    pub queue_size: IntGauge,
    pub batch_entries: Histogram,
    pub batch_bytes: Histogram,
    pub written_bytes: IntCounter,
}

impl Default for JournalMetrics {
    fn default() -> Self {
        JournalMetrics {
            add_entry: histogram(
                "bookie_journal_JOURNAL_ADD_ENTRY",
                "Milliseconds from an add reaching the journal to its record being durable",
                LATENCY_MS,
            ),
            sync: histogram(
                "bookie_journal_JOURNAL_SYNC",
                "Milliseconds of one group commit's write and fdatasync",
                LATENCY_MS,
            ),
            queue_size: gauge("bookie_journal_JOURNAL_QUEUE_SIZE", "Journal requests waiting for the journal thread"),
            batch_entries: histogram(
                "bookie_journal_JOURNAL_FORCE_WRITE_BATCH_ENTRIES",
                "Records made durable by one fdatasync",
                BATCH_ENTRIES,
            ),
            batch_bytes: histogram(
                "bookie_journal_JOURNAL_FORCE_WRITE_BATCH_BYTES",
                "Bytes of records made durable by one fdatasync",
                BATCH_BYTES,
            ),
            written_bytes: counter("bookie_journal_JOURNAL_WRITE_BYTES", "Bytes of records written to the journal"),
        }
    }
}

/// Ledger storage's: flushes (checkpoints) and the read cache.
#[derive(Clone)]
pub struct StorageMetrics {
    /// One flush: the write cache half appended to the entry log, synced, indexed.
    pub flush: Histogram,
    pub flush_bytes: IntCounter,
    pub read_cache_hits: IntCounter,
    pub read_cache_misses: IntCounter,
    pub read_cache_size: IntGauge,
    pub write_cache_size: IntGauge,
    /// Entries read from entry logs (misses and what was read ahead with them).
    pub read_entries_from_logs: IntCounter,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            flush: histogram(
                "bookie_flush",
                "Milliseconds of one ledger storage flush (entry log append and sync, index commit)",
                LATENCY_MS,
            ),
            flush_bytes: counter("bookie_flush_size", "Bytes of entries flushed from the write cache to entry logs"),
            read_cache_hits: counter("bookie_read_cache_hits", "Reads answered by the read cache"),
            read_cache_misses: counter("bookie_read_cache_misses", "Reads that went to an entry log"),
            read_cache_size: gauge("bookie_read_cache_size", "Bytes in the read cache"),
            write_cache_size: gauge("bookie_write_cache_size", "Bytes in the write cache (both halves)"),
            read_entries_from_logs: counter(
                "bookie_read_entries_from_entry_logs",
                "Entries read from entry logs, read-ahead included",
            ),
        }
    }
}

/// The gRPC service's: every request, by kind.
#[derive(Clone)]
pub struct ServerMetrics {
    pub add_entry: Histogram,
    pub read_entry: Histogram,
    pub add_entry_failures: IntCounter,
    pub read_entry_failures: IntCounter,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            add_entry: histogram(
                "bookkeeper_server_ADD_ENTRY_REQUEST",
                "Milliseconds to answer an add request (durable on this bookie)",
                LATENCY_MS,
            ),
            read_entry: histogram(
                "bookkeeper_server_READ_ENTRY_REQUEST",
                "Milliseconds to answer a read request",
                LATENCY_MS,
            ),
            add_entry_failures: counter("bookkeeper_server_ADD_ENTRY_FAILED", "Add requests answered with an error"),
            read_entry_failures: counter("bookkeeper_server_READ_ENTRY_FAILED", "Read requests answered with an error"),
        }
    }
}

/// The auto-recovery worker's totals.
#[derive(Clone)]
pub struct AutoRecoveryMetrics {
    /// Ledgers whose lost replicas were all restored.
    pub ledgers: IntCounter,
    /// Replicas (fragment, lost bookie) restored.
    pub fragments: IntCounter,
    /// Entries copied.
    pub entries: IntCounter,
    /// Audit passes that found a lost bookie.
    pub passes: IntCounter,
}

impl Default for AutoRecoveryMetrics {
    fn default() -> Self {
        AutoRecoveryMetrics {
            ledgers: counter(
                "replication_worker_NUM_FULL_OR_PARTIAL_LEDGERS_REPLICATED",
                "Ledgers whose replicas on lost bookies were restored",
            ),
            fragments: counter("replication_worker_NUM_FRAGMENTS_REPLICATED", "Fragments re-replicated"),
            entries: counter("replication_worker_NUM_ENTRIES_WRITTEN", "Entries copied by re-replication"),
            passes: counter("auditor_NUM_AUDITS_WITH_LOST_BOOKIES", "Audit passes that found a lost bookie"),
        }
    }
}

impl AutoRecoveryMetrics {
    pub fn register(&self, registry: &Registry) {
        for metric in [&self.ledgers, &self.fragments, &self.entries, &self.passes] {
            register(registry, metric.clone());
        }
    }
}

fn register<C: prometheus::core::Collector + 'static>(registry: &Registry, collector: C) {
    // Names are fixed and distinct: a refusal is a programming error, caught by the tests.
    registry.register(Box::new(collector)).expect("metric registered once");
}

/// Values read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct BookieState {
    pub read_only: bool,
    /// Each watched directory: (path, total bytes, free bytes for the bookie).
    pub disks: Vec<(String, u64, u64)>,
    pub read_cache_bytes: u64,
    pub write_cache_bytes: u64,
}

/// One bookie's registry and its parts' metrics.
pub struct BookieMetrics {
    registry: Registry,
    pub journal: JournalMetrics,
    pub storage: StorageMetrics,
    pub server: ServerMetrics,
    server_status: IntGauge,
    disk_total: IntGaugeVec,
    disk_free: IntGaugeVec,
}

impl BookieMetrics {
    /// The metrics of bookie `bookie_id`, each sample labelled `bookie` (standalone's
    /// bookies share one `/metrics`).
    pub fn new(bookie_id: &str) -> Self {
        let labels = std::collections::HashMap::from([("bookie".to_owned(), bookie_id.to_owned())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("valid bookie label");
        let journal = JournalMetrics::default();
        let storage = StorageMetrics::default();
        let server = ServerMetrics::default();
        let server_status = gauge("bookie_SERVER_STATUS", "1 while the bookie takes adds, 0 while it is read-only");
        let disk_total = IntGaugeVec::new(
            Opts::new("bookie_ledger_dir_total_bytes", "Size of the disk holding a bookie directory"),
            &["dir"],
        )
        .expect("valid gauge");
        let disk_free = IntGaugeVec::new(
            Opts::new(
                "bookie_ledger_dir_free_bytes",
                "Bytes the bookie can still write on the disk holding a directory",
            ),
            &["dir"],
        )
        .expect("valid gauge");
        for histogram in [&journal.add_entry, &journal.sync, &journal.batch_entries, &journal.batch_bytes] {
            register(&registry, histogram.clone());
        }
        register(&registry, journal.queue_size.clone());
        register(&registry, journal.written_bytes.clone());
        register(&registry, storage.flush.clone());
        for counter in [
            &storage.flush_bytes,
            &storage.read_cache_hits,
            &storage.read_cache_misses,
            &storage.read_entries_from_logs,
            &server.add_entry_failures,
            &server.read_entry_failures,
        ] {
            register(&registry, counter.clone());
        }
        register(&registry, storage.read_cache_size.clone());
        register(&registry, storage.write_cache_size.clone());
        register(&registry, server.add_entry.clone());
        register(&registry, server.read_entry.clone());
        register(&registry, server_status.clone());
        register(&registry, disk_total.clone());
        register(&registry, disk_free.clone());
        BookieMetrics { registry, journal, storage, server, server_status, disk_total, disk_free }
    }

    /// The registry, for parts that add their own (the auto-recovery worker).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text of every metric, with `state` as of now.
    pub fn render(&self, state: &BookieState) -> String {
        encode(vec![self.gather(state)])
    }

    /// Every metric family, with `state` as of now.
    pub fn gather(&self, state: &BookieState) -> Vec<MetricFamily> {
        self.server_status.set(if state.read_only { 0 } else { 1 });
        self.disk_total.reset();
        self.disk_free.reset();
        for (dir, total, free) in &state.disks {
            self.disk_total.with_label_values(&[dir.as_str()]).set(clamp(*total));
            self.disk_free.with_label_values(&[dir.as_str()]).set(clamp(*free));
        }
        self.storage.read_cache_size.set(clamp(state.read_cache_bytes));
        self.storage.write_cache_size.set(clamp(state.write_cache_bytes));
        self.registry.gather()
    }
}

/// Prometheus text of several bookies' families: each family once, with every bookie's
/// samples.
pub fn encode(bookies: Vec<Vec<MetricFamily>>) -> String {
    let mut merged: Vec<MetricFamily> = Vec::new();
    for family in bookies.into_iter().flatten() {
        match merged.iter_mut().find(|known| known.name() == family.name()) {
            Some(known) => known.mut_metric().extend(family.get_metric().iter().cloned()),
            None => merged.push(family),
        }
    }
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail but for metric names, which are fixed.
    let _ = TextEncoder::new().encode(&merged, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Milliseconds since `start`, for the latency histograms.
pub fn millis_since(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_once_with_its_type() {
        let metrics = BookieMetrics::new("b1");
        AutoRecoveryMetrics::default().register(metrics.registry());
        metrics.journal.sync.observe(0.3);
        metrics.storage.read_cache_hits.inc();
        let text = metrics.render(&BookieState {
            read_only: true,
            disks: vec![("/data".to_owned(), 100, 40)],
            read_cache_bytes: 7,
            write_cache_bytes: 9,
        });
        assert!(text.contains("# TYPE bookie_journal_JOURNAL_SYNC histogram"), "{text}");
        assert!(text.contains("bookie_journal_JOURNAL_SYNC_bucket{bookie=\"b1\",le=\"0.5\"} 1"), "{text}");
        assert!(text.contains("bookie_read_cache_hits{bookie=\"b1\"} 1"), "{text}");
        assert!(text.contains("bookie_SERVER_STATUS{bookie=\"b1\"} 0"), "{text}");
        assert!(text.contains("bookie_ledger_dir_free_bytes{dir=\"/data\",bookie=\"b1\"} 40"), "{text}");
        assert!(text.contains("bookie_read_cache_size{bookie=\"b1\"} 7"), "{text}");
        assert!(text.contains("replication_worker_NUM_ENTRIES_WRITTEN{bookie=\"b1\"} 0"), "{text}");
    }

    #[test]
    fn two_bookies_share_each_family() {
        let (one, two) = (BookieMetrics::new("b1"), BookieMetrics::new("b2"));
        let state = BookieState::default();
        let text = encode(vec![one.gather(&state), two.gather(&state)]);
        assert_eq!(text.matches("# TYPE bookie_SERVER_STATUS gauge").count(), 1, "{text}");
        assert!(text.contains("bookie_SERVER_STATUS{bookie=\"b1\"} 1"), "{text}");
        assert!(text.contains("bookie_SERVER_STATUS{bookie=\"b2\"} 1"), "{text}");
    }
}
