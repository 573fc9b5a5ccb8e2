//! Failover: one active consumer at a time; the others stand by.
//!
//! Choice as Pulsar's `PersistentDispatcherSingleActiveConsumer`: only consumers of the best
//! (lowest) priority level count. On a partition of a partitioned topic they are sorted by
//! name and the active one is `partition index % count`, so the partitions of a topic spread
//! over the consumers; on a non-partitioned topic it is the first of them in subscription
//! order, so a consumer joining never takes over from a working one. When the active
//! consumer leaves, the choice is made again over those left, and its unacknowledged
//! messages go to the new one.

use super::{with_permits, Consumer, Dispatcher, Joining, Offer, SubscriptionType};
use crate::error::BrokerError;

pub struct Failover {
    /// The partition this topic is, if it is one: spreads partitions over consumers.
    pub partition_index: Option<u32>,
}

impl Dispatcher for Failover {
    fn sub_type(&self) -> SubscriptionType {
        SubscriptionType::Failover
    }

    fn admit(&mut self, _joining: Joining<'_>) -> Result<(), BrokerError> {
        Ok(())
    }

    fn remove(&mut self, _consumer_id: u64) {}

    fn pick_active(&self, consumers: &[Consumer]) -> Option<u64> {
        pick_active(consumers, self.partition_index)
    }

    fn announces_active(&self) -> bool {
        true
    }

    fn choose(&mut self, offer: Offer<'_>) -> Option<u64> {
        with_permits(offer.consumers, offer.active?)
    }
}

/// The active consumer among `consumers` (in subscription order).
pub fn pick_active(consumers: &[Consumer], partition_index: Option<u32>) -> Option<u64> {
    let best = consumers.iter().map(|c| c.priority_level).min()?;
    let mut eligible: Vec<&Consumer> = consumers.iter().filter(|c| c.priority_level == best).collect();
    match partition_index {
        Some(partition) => {
            eligible.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            Some(eligible[partition as usize % eligible.len()].id)
        }
        None => Some(eligible[0].id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: u64, name: &str, priority_level: i32) -> Consumer {
        Consumer { id, name: name.to_owned(), priority_level, permits: 0, blocked: false }
    }

    #[test]
    fn non_partitioned_topic_keeps_the_first_consumer_active() {
        let consumers = [candidate(7, "zed", 0), candidate(3, "alpha", 0)];
        assert_eq!(pick_active(&consumers, None), Some(7));
        assert_eq!(pick_active(&consumers[1..], None), Some(3));
        assert_eq!(pick_active(&[], None), None);
    }

    #[test]
    fn partitions_spread_over_consumers_sorted_by_name_within_best_priority() {
        let consumers = [candidate(1, "c", 0), candidate(2, "a", 0), candidate(3, "b", 0), candidate(4, "0", 1)];
        assert_eq!(pick_active(&consumers, Some(0)), Some(2));
        assert_eq!(pick_active(&consumers, Some(1)), Some(3));
        assert_eq!(pick_active(&consumers, Some(2)), Some(1));
        assert_eq!(pick_active(&consumers, Some(3)), Some(2));
    }
}
