//! Key_Shared: each key goes to one consumer, chosen by the hash of its sticky key.
//!
//! The sticky key is the message's ordering key, else its partition key (messages with
//! neither share one empty key, as in Pulsar). Its hash is Murmur3 x86 32-bit (seed 0) of the
//! key bytes with the sign bit cleared, Pulsar's `Murmur3_32Hash`.
//!
//! Two selectors, as Pulsar's:
//! - AUTO_SPLIT (`ConsistentHashingStickyKeyConsumerSelector`): every consumer puts
//!   [`POINTS_PER_CONSUMER`] points on a hash ring (hash of consumer name + point index); a
//!   key goes to the consumer owning the first point at or after its hash, wrapping round.
//!   A consumer joining or leaving moves only the keys next to its points.
//! - STICKY (`HashRangeExclusiveStickyKeyConsumerSelector`): each consumer declares inclusive
//!   ranges of `hash % 65536`; ranges overlapping another consumer's are refused. A key whose
//!   slot no consumer declared is not delivered until one does.
//!
//! Order while consumers join (Pulsar's "recently joined consumers"): a consumer joining a
//! subscription that already has consumers is given the last position read so far; it gets
//! no message after that position until every message up to it is acknowledged, so a key
//! moving to it cannot overtake messages of that key still held by another consumer. And a
//! key with messages waiting to be sent again gets no new message before them.

use std::collections::BTreeMap;

use magnetar_proto::hash::pulsar_key_hash;

use super::{Dispatcher, Joining, KeySharedOptions, Offer, SubscriptionType};
use crate::error::BrokerError;
use crate::managed_ledger::Position;

/// Key_Shared: the selector and the recently joined consumers.
#[derive(Default)]
pub struct KeyShared {
    /// The key -> consumer choice; set by the first consumer (its mode: STICKY or AUTO_SPLIT).
    selector: Option<Selector>,
    /// Consumer id -> last position read when it joined.
    recently_joined: BTreeMap<u64, Position>,
}

impl Dispatcher for KeyShared {
    fn sub_type(&self) -> SubscriptionType {
        SubscriptionType::KeyShared
    }

    fn admit(&mut self, joining: Joining<'_>) -> Result<(), BrokerError> {
        if joining.attached.is_empty() {
            self.selector = None;
            self.recently_joined.clear();
        }
        let options = joining.options.key_shared.clone().unwrap_or(KeySharedOptions {
            sticky: false,
            ranges: Vec::new(),
            allow_out_of_order: false,
        });
        let selector =
            self.selector
                .get_or_insert_with(|| if options.sticky { Selector::sticky() } else { Selector::auto_split() });
        if matches!(selector, Selector::Sticky { .. }) != options.sticky {
            return Err(BrokerError::SubscriptionBusy {
                what: "the subscription uses another Key_Shared mode".to_owned(),
            });
        }
        let consumer = joining.consumer;
        selector
            .add(consumer.id, &consumer.name, &options.ranges)
            .map_err(|error| BrokerError::ConsumerAssign { what: error.to_string() })?;
        if !options.allow_out_of_order && !joining.attached.is_empty() {
            if let Some(read) = joining.read_unacked {
                self.recently_joined.insert(consumer.id, read);
            }
        }
        Ok(())
    }

    fn remove(&mut self, consumer_id: u64) {
        if let Some(selector) = self.selector.as_mut() {
            selector.remove(consumer_id);
        }
        self.recently_joined.remove(&consumer_id);
    }

    fn choose(&mut self, offer: Offer<'_>) -> Option<u64> {
        if offer.key_waiting {
            return None;
        }
        let owner = self.selector.as_ref()?.select(offer.hash)?;
        if self.recently_joined.get(&owner).is_some_and(|joined| offer.position > *joined) {
            return None;
        }
        super::with_permits(offer.consumers, owner)
    }

    fn acknowledged_through(&mut self, mark_delete: Position) {
        // Recently joined consumers get everything once all before their join is acked.
        self.recently_joined.retain(|_, joined| *joined > mark_delete);
    }
}

/// Hash slots for STICKY ranges: `hash % HASH_RANGE_SIZE`.
pub const HASH_RANGE_SIZE: u32 = 65536;
/// Ring points per consumer for AUTO_SPLIT (Pulsar's default
/// `subscriptionKeySharedConsistentHashingReplicaPoints`).
pub const POINTS_PER_CONSUMER: u32 = 100;

/// Pulsar's sticky key hash: Murmur3 x86 32-bit, seed 0, sign bit cleared.
pub fn sticky_key_hash(key: &[u8]) -> u32 {
    pulsar_key_hash(key)
}

/// An inclusive range of hash slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashRange {
    pub start: u32,
    pub end: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySharedError {
    InvalidRange { start: i32, end: i32 },
    Overlap { range: HashRange, owner: u64 },
    NoRanges,
}

impl std::fmt::Display for KeySharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySharedError::InvalidRange { start, end } => {
                write!(f, "invalid hash range [{start}, {end}]: need 0 <= start <= end < {HASH_RANGE_SIZE}")
            }
            KeySharedError::Overlap { range, owner } => {
                write!(f, "Range conflict with consumer {owner}: hash range [{}, {}] overlaps", range.start, range.end)
            }
            KeySharedError::NoRanges => write!(f, "a STICKY Key_Shared consumer must declare hash ranges"),
        }
    }
}

/// Chooses a consumer id for a sticky key hash.
#[derive(Debug, Clone)]
pub enum Selector {
    /// Hash ring: point -> consumer id.
    AutoSplit { ring: BTreeMap<u32, Vec<u64>> },
    /// Declared ranges: start -> (end, consumer id).
    Sticky { ranges: BTreeMap<u32, (u32, u64)> },
}

impl Selector {
    pub fn auto_split() -> Self {
        Selector::AutoSplit { ring: BTreeMap::new() }
    }

    pub fn sticky() -> Self {
        Selector::Sticky { ranges: BTreeMap::new() }
    }

    /// Checks that a consumer could be added, without adding it.
    pub fn check(&self, ranges: &[HashRange]) -> Result<(), KeySharedError> {
        let Selector::Sticky { ranges: taken } = self else { return Ok(()) };
        if ranges.is_empty() {
            return Err(KeySharedError::NoRanges);
        }
        for (i, range) in ranges.iter().enumerate() {
            for (start, (end, owner)) in taken {
                if range.start <= *end && *start <= range.end {
                    return Err(KeySharedError::Overlap { range: *range, owner: *owner });
                }
            }
            if let Some(other) = ranges[..i].iter().find(|o| range.start <= o.end && o.start <= range.end) {
                return Err(KeySharedError::Overlap { range: *other, owner: 0 });
            }
        }
        Ok(())
    }

    /// Adds a consumer (its ranges for STICKY; refused if they overlap another's).
    pub fn add(&mut self, consumer_id: u64, consumer_name: &str, ranges: &[HashRange]) -> Result<(), KeySharedError> {
        self.check(ranges)?;
        match self {
            Selector::AutoSplit { ring } => {
                for i in 0..POINTS_PER_CONSUMER {
                    let point = sticky_key_hash(format!("{consumer_name}{i}").as_bytes());
                    ring.entry(point).or_default().push(consumer_id);
                }
            }
            Selector::Sticky { ranges: taken } => {
                for range in ranges {
                    taken.insert(range.start, (range.end, consumer_id));
                }
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, consumer_id: u64) {
        match self {
            Selector::AutoSplit { ring } => {
                ring.retain(|_, owners| {
                    owners.retain(|c| *c != consumer_id);
                    !owners.is_empty()
                });
            }
            Selector::Sticky { ranges } => ranges.retain(|_, (_, owner)| *owner != consumer_id),
        }
    }

    /// The consumer for a sticky key hash, if any consumer covers it.
    pub fn select(&self, hash: u32) -> Option<u64> {
        match self {
            Selector::AutoSplit { ring } => {
                let (_, owners) = ring.range(hash..).next().or_else(|| ring.iter().next())?;
                // Several consumers on one point: pick by the hash, as Pulsar does.
                owners.get(hash as usize % owners.len()).copied()
            }
            Selector::Sticky { ranges } => {
                let slot = hash % HASH_RANGE_SIZE;
                let (_, (end, owner)) = ranges.range(..=slot).next_back()?;
                (slot <= *end).then_some(*owner)
            }
        }
    }
}

/// Converts declared ranges from the wire, checking their bounds.
pub fn ranges_from_wire(ranges: &[(i32, i32)]) -> Result<Vec<HashRange>, KeySharedError> {
    ranges
        .iter()
        .map(|&(start, end)| {
            if start < 0 || end < start || end >= HASH_RANGE_SIZE as i32 {
                return Err(KeySharedError::InvalidRange { start, end });
            }
            Ok(HashRange { start: start as u32, end: end as u32 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_split_gives_each_key_one_consumer_and_moves_few_keys_on_join() {
        let mut selector = Selector::auto_split();
        assert!(selector.add(1, "a", &[]).is_ok());
        assert!(selector.add(2, "b", &[]).is_ok());
        let keys: Vec<u32> = (0..1000).map(|i| sticky_key_hash(format!("key-{i}").as_bytes())).collect();
        let before: Vec<u64> = keys.iter().map(|h| selector.select(*h).unwrap_or(0)).collect();
        assert!(before.contains(&1) && before.contains(&2) && !before.contains(&0), "both consumers get keys");
        assert!(selector.add(3, "c", &[]).is_ok());
        let after: Vec<u64> = keys.iter().map(|h| selector.select(*h).unwrap_or(0)).collect();
        for (b, a) in before.iter().zip(&after) {
            assert!(a == b || *a == 3, "a key only moves to the new consumer");
        }
        selector.remove(3);
        let back: Vec<u64> = keys.iter().map(|h| selector.select(*h).unwrap_or(0)).collect();
        assert_eq!(back, before);
    }

    #[test]
    fn sticky_ranges_select_and_refuse_overlaps() {
        let mut selector = Selector::sticky();
        assert!(selector.add(1, "a", &[HashRange { start: 0, end: 32767 }]).is_ok());
        assert!(matches!(
            selector.add(2, "b", &[HashRange { start: 30000, end: 65535 }]),
            Err(KeySharedError::Overlap { owner: 1, .. })
        ));
        assert!(selector.add(2, "b", &[HashRange { start: 40000, end: 65535 }]).is_ok());
        assert_eq!(selector.select(5), Some(1));
        assert_eq!(selector.select(65536 + 5), Some(1));
        assert_eq!(selector.select(35000), None);
        assert_eq!(selector.select(50000), Some(2));
        assert!(ranges_from_wire(&[(5, 3)]).is_err());
        assert!(ranges_from_wire(&[(0, 65536)]).is_err());
    }
}
