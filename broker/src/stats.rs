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
