//! Which partition a message goes to, as Pulsar's Java client decides it.
//!
//! A message with a key always goes to `murmur3_32(key) & i32::MAX % partitions`
//! (`Murmur3Hash32` with seed 0 over the key's UTF-8 bytes, then Java's `signSafeMod`), so
//! Java, Go and this client put a key on the same partition. Messages without a key follow
//! the [`RoutingMode`]. This is plain code without I/O; the producer owns the state.

use std::time::{Duration, Instant};

pub use magnetar_proto::hash::{murmur3_32, pulsar_key_hash};

/// How messages without a key are spread over the partitions (Pulsar's `MessageRoutingMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RoutingMode {
    /// One partition after the other; with batching, a whole batch (up to
    /// `batching_max_messages`, or what arrived within `batching_max_publish_delay`) goes to
    /// one partition before the next is used.
    #[default]
    RoundRobin,
    /// Every message to one partition, picked at random when the producer is created.
    Single,
}

/// Picks a message's partition, for producers that route by their own rule (Pulsar's
/// `MessageRouter` in `CustomPartition` mode). Called for every message, keyed or not; the
/// answer must be below `partitions`, else the send fails with
/// [`ClientError::InvalidPartition`](crate::ClientError::InvalidPartition).
///
/// ```
/// use magnetar_client::{MessageRouter, ProducerMessage};
/// /// Orders of a region go to "their" partition.
/// struct ByRegion;
/// impl MessageRouter for ByRegion {
///     fn choose_partition(&self, message: &ProducerMessage, partitions: u32) -> u32 {
///         match message.properties().get("region").map(String::as_str) {
///             Some("eu") => 0,
///             _ => partitions - 1,
///         }
///     }
/// }
/// ```
pub trait MessageRouter: Send + Sync {
    fn choose_partition(&self, message: &crate::ProducerMessage, partitions: u32) -> u32;
}

/// The partition a key maps to.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    // The hash is non-negative, so Java's signSafeMod is the plain remainder.
    pulsar_key_hash(key) % partitions.max(1)
}

/// The router's state for one partitioned producer.
#[derive(Debug)]
pub(crate) struct Router {
    mode: RoutingMode,
    partitions: u32,
    /// Single mode's partition, and round robin's current one.
    current: u32,
    /// Round robin with batching: messages sent to `current` since it was chosen.
    sent_to_current: u32,
    switched_at: Instant,
    /// Round robin with batching: switch after this many messages or this long; `None`
    /// without batching (switch every message).
    batch: Option<(u32, Duration)>,
}

impl Router {
    /// `start` is the first partition (random in production, fixed in tests).
    pub(crate) fn new(mode: RoutingMode, partitions: u32, start: u32, batch: Option<(u32, Duration)>) -> Router {
        let partitions = partitions.max(1);
        Router { mode, partitions, current: start % partitions, sent_to_current: 0, switched_at: Instant::now(), batch }
    }

    /// The partition for the next message.
    pub(crate) fn route(&mut self, key: Option<&[u8]>, now: Instant) -> u32 {
        if let Some(key) = key {
            return partition_for_key(key, self.partitions);
        }
        match (self.mode, self.batch) {
            (RoutingMode::Single, _) => self.current,
            (RoutingMode::RoundRobin, None) => {
                let partition = self.current;
                self.current = (self.current + 1) % self.partitions;
                partition
            }
            (RoutingMode::RoundRobin, Some((max_messages, delay))) => {
                if self.sent_to_current >= max_messages || now.duration_since(self.switched_at) >= delay {
                    self.current = (self.current + 1) % self.partitions;
                    self.sent_to_current = 0;
                    self.switched_at = now;
                }
                self.sent_to_current += 1;
                self.current
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_match_another_pulsar_client() {
        // Values asserted by the .NET Pulsar client's tests for its Java-compatible hash; the
        // first one's raw murmur3 (0xa8d02b9a) has the top bit set, so it checks the mask.
        let scratched = b"I will not buy this record, it is scratched.";
        assert_eq!(murmur3_32(scratched, 0), 2_832_214_938);
        assert_eq!(pulsar_key_hash(scratched), 684_731_290);
        assert_eq!(pulsar_key_hash(b"Hello world"), 764_499_724);
        assert_eq!(partition_for_key(scratched, 4), 2);
        assert_eq!(partition_for_key(b"Hello world", 10), 4);
    }

    #[test]
    fn keys_map_to_partitions_as_pulsar_does() {
        // Murmur3_32Hash("key-1") etc. computed by the reference above, masked and reduced
        // as Java's client does; every key lands on the same partition every time.
        for (key, partitions) in [("key-1", 4u32), ("customer-7", 16), ("", 3), ("ünïcode", 5)] {
            let expected = (murmur3_32(key.as_bytes(), 0) & 0x7fff_ffff) % partitions;
            assert_eq!(partition_for_key(key.as_bytes(), partitions), expected);
        }
        // A hash with the top bit set is masked, not treated as negative.
        let high = (0..10_000).map(|n| format!("k{n}")).find(|k| murmur3_32(k.as_bytes(), 0) & 0x8000_0000 != 0);
        let high = high.expect("some key hashes with the top bit set");
        assert!(pulsar_key_hash(high.as_bytes()) < 0x8000_0000);
    }

    #[test]
    fn round_robin_without_batching_rotates_per_message() {
        let mut router = Router::new(RoutingMode::RoundRobin, 3, 1, None);
        let now = Instant::now();
        let chosen: Vec<u32> = (0..6).map(|_| router.route(None, now)).collect();
        assert_eq!(chosen, [1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn round_robin_with_batching_fills_a_batch_per_partition() {
        let mut router = Router::new(RoutingMode::RoundRobin, 2, 0, Some((3, Duration::from_secs(60))));
        let now = router.switched_at;
        let chosen: Vec<u32> = (0..7).map(|_| router.route(None, now)).collect();
        assert_eq!(chosen, [0, 0, 0, 1, 1, 1, 0]);
        // After the publish delay, the next message moves on even if the batch is not full.
        let later = now + Duration::from_secs(61);
        assert_eq!(router.route(None, later), 1);
    }

    #[test]
    fn single_mode_sticks_to_one_partition_but_keys_still_hash() {
        let mut router = Router::new(RoutingMode::Single, 8, 5, None);
        let now = Instant::now();
        assert!((0..10).all(|_| router.route(None, now) == 5));
        assert_eq!(router.route(Some(b"customer-7"), now), partition_for_key(b"customer-7", 8));
    }
}
