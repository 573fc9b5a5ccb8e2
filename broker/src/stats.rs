//! Live counters behind the admin API's stats and the per-topic metrics: a [`Meter`] counts
//! messages and bytes since it was made and gives their rate over the last few seconds;
//! each producer ([`ProducerStats`]) and consumer ([`ConsumerStats`]) has one, registered
//! with its topic or subscription while it is connected.
//!
//! Totals are exact (`msgInCounter`, `bytesInCounter`, `msgOutCounter`, as Pulsar counts
//! them since the topic loaded). Rates are averaged over a window of at least
//! [`RATE_WINDOW`] and at most twice that, ending now: Pulsar averages over its stats
//! interval (60 s) instead, so a rate here follows a change within seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The shortest time a rate is averaged over.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    messages: u64,
    bytes: u64,
}

/// Messages and bytes counted since creation, with their recent rate.
#[derive(Debug)]
pub struct Meter {
    messages: AtomicU64,
    bytes: AtomicU64,
    /// The window's start and the sample that becomes the next start.
    samples: Mutex<(Sample, Sample)>,
}

impl Default for Meter {
    fn default() -> Self {
        let start = Sample { at: Instant::now(), messages: 0, bytes: 0 };
        Meter { messages: AtomicU64::new(0), bytes: AtomicU64::new(0), samples: Mutex::new((start, start)) }
    }
}

/// Per-second rates of a [`Meter`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub messages: f64,
    pub bytes: f64,
}

impl Meter {
    pub fn record(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Messages and bytes since the meter was made.
    pub fn totals(&self) -> (u64, u64) {
        (self.messages.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    /// The rates over the window ending now (zero before anything was counted).
    pub fn rates(&self) -> Rates {
        let now = Instant::now();
        let (messages, bytes) = self.totals();
        let current = Sample { at: now, messages, bytes };
        let mut samples = self.samples.lock();
        if now.duration_since(samples.1.at) >= RATE_WINDOW {
            samples.0 = samples.1;
            samples.1 = current;
        }
        let start = samples.0;
        let elapsed = now.duration_since(start.at).as_secs_f64();
        if elapsed <= 0.0 {
            return Rates::default();
        }
        Rates {
            messages: messages.saturating_sub(start.messages) as f64 / elapsed,
            bytes: bytes.saturating_sub(start.bytes) as f64 / elapsed,
        }
    }
}

/// Who a connected client is, as stats show it.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// `ip:port` of the client's connection.
    pub address: String,
    /// The client's version from its CONNECT (`Pulsar-CPP-v3.7.0`, ...).
    pub client_version: String,
    /// When it connected, as Pulsar writes it (RFC 3339, UTC).
    pub connected_since: String,
}

/// One producer of a topic while it is connected.
#[derive(Debug)]
pub struct ProducerStats {
    pub producer_id: u64,
    pub name: String,
    /// Its access mode as Pulsar names it (`Shared`, `Exclusive`, `WaitForExclusive`).
    pub access_mode: &'static str,
    pub client: ClientInfo,
    /// Messages and bytes made durable for it.
    pub published: Meter,
}

/// One consumer of a subscription while it is connected.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub consumer_id: u64,
    pub name: String,
    pub client: ClientInfo,
    /// Messages and bytes dispatched to it.
    pub dispatched: Meter,
    /// Messages it asked to have delivered again (negative acks, ack timeouts).
    pub redelivered: Meter,
}

/// Now, as Pulsar's stats write `connectedSince`.
pub fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// A time as RFC 3339 in UTC with milliseconds (`2026-12-03T10:00:00.123Z`).
pub fn rfc3339(time: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_exact_and_rates_follow_the_window() {
        let meter = Meter::default();
        meter.record(3, 300);
        meter.record(2, 200);
        assert_eq!(meter.totals(), (5, 500));
        let rates = meter.rates();
        assert!(rates.messages > 0.0 && rates.bytes > rates.messages, "{rates:?}");
    }

    #[test]
    fn dates_are_written_as_pulsar_writes_them() {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_796_294_400_123);
        assert_eq!(rfc3339(at), "2026-12-03T10:40:00.123Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = std::time::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}

/// Pulsar's add latency buckets (`pulsar_storage_write_latency_le_*`), in milliseconds.
pub const WRITE_LATENCY_BUCKETS: Buckets = Buckets {
    prefix: "pulsar_storage_write_latency",
    help: "Entries added whose add took (ms) up to the bound in the name (since the topic loaded)",
    bounds: &[
        (0.5, "pulsar_storage_write_latency_le_0_5"),
        (1.0, "pulsar_storage_write_latency_le_1"),
        (5.0, "pulsar_storage_write_latency_le_5"),
        (10.0, "pulsar_storage_write_latency_le_10"),
        (20.0, "pulsar_storage_write_latency_le_20"),
        (50.0, "pulsar_storage_write_latency_le_50"),
        (100.0, "pulsar_storage_write_latency_le_100"),
        (200.0, "pulsar_storage_write_latency_le_200"),
        (1000.0, "pulsar_storage_write_latency_le_1000"),
    ],
    overflow: "pulsar_storage_write_latency_le_overflow",
    count: "pulsar_storage_write_latency_count",
    sum: "pulsar_storage_write_latency_sum",
};

/// Pulsar's entry size buckets (`pulsar_entry_size_le_*`), in bytes.
pub const ENTRY_SIZE_BUCKETS: Buckets = Buckets {
    prefix: "pulsar_entry_size",
    help: "Entries added whose size (bytes) is up to the bound in the name (since the topic loaded)",
    bounds: &[
        (128.0, "pulsar_entry_size_le_128"),
        (512.0, "pulsar_entry_size_le_512"),
        (1024.0, "pulsar_entry_size_le_1_kb"),
        (2048.0, "pulsar_entry_size_le_2_kb"),
        (4096.0, "pulsar_entry_size_le_4_kb"),
        (16384.0, "pulsar_entry_size_le_16_kb"),
        (102400.0, "pulsar_entry_size_le_100_kb"),
        (1048576.0, "pulsar_entry_size_le_1_mb"),
    ],
    overflow: "pulsar_entry_size_le_overflow",
    count: "pulsar_entry_size_count",
    sum: "pulsar_entry_size_sum",
};

/// A bucket layout in Pulsar's style: one gauge per bucket named by its upper bound, holding
/// how many values fell in it (not cumulative, unlike a Prometheus histogram), plus the
/// count and the sum.
#[derive(Debug)]
pub struct Buckets {
    pub prefix: &'static str,
    pub help: &'static str,
    /// Upper bounds, increasing, with the metric name of each.
    pub bounds: &'static [(f64, &'static str)],
    pub overflow: &'static str,
    pub count: &'static str,
    pub sum: &'static str,
}

/// Values counted into a [`Buckets`] layout; lock-free.
#[derive(Debug)]
pub struct BucketCounter {
    layout: &'static Buckets,
    /// One per bound and one for the overflow.
    counts: Vec<AtomicU64>,
    /// The sum, in thousandths of the unit.
    sum_milli: AtomicU64,
}

/// A [`BucketCounter`] read at one time (summed over topics for a namespace).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketCounts {
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl BucketCounts {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts bucket by bucket.
    pub fn add(&mut self, other: &BucketCounts) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }
}

impl BucketCounter {
    pub fn new(layout: &'static Buckets) -> Self {
        BucketCounter {
            layout,
            counts: (0..=layout.bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_milli: AtomicU64::new(0),
        }
    }

    pub fn record(&self, value: f64) {
        let index =
            self.layout.bounds.iter().position(|(bound, _)| value <= *bound).unwrap_or(self.layout.bounds.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_milli.fetch_add((value.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> BucketCounts {
        BucketCounts {
            counts: self.counts.iter().map(|count| count.load(Ordering::Relaxed)).collect(),
            sum: self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod bucket_tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them() {
        let sizes = BucketCounter::new(&ENTRY_SIZE_BUCKETS);
        for size in [1.0, 128.0, 129.0, 5000.0, 2_000_000.0] {
            sizes.record(size);
        }
        let counts = sizes.snapshot();
        assert_eq!(counts.counts, vec![2, 1, 0, 0, 0, 1, 0, 0, 1]);
        assert_eq!(counts.count(), 5);
        assert_eq!(counts.sum, 2_005_258.0);
    }
}
