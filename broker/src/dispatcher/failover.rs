//! Failover: one active consumer at a time; the others stand by.
//!
//! Choice as Pulsar's `PersistentDispatcherSingleActiveConsumer`: only consumers of the best
//! (lowest) priority level count. On a partition of a partitioned topic they are sorted by
//! name and the active one is `partition index % count`, so the partitions of a topic spread
//! over the consumers; on a non-partitioned topic it is the first of them in subscription
//! order, so a consumer joining never takes over from a working one. When the active
//! consumer leaves, the choice is made again over those left, and its unacknowledged
//! messages go to the new one.

/// What the choice needs to know of a consumer.
pub struct Candidate<'a> {
    pub consumer_id: u64,
    pub consumer_name: &'a str,
    pub priority_level: i32,
}

/// The active consumer among `consumers` (in subscription order).
pub fn pick_active(consumers: &[Candidate<'_>], partition_index: Option<u32>) -> Option<u64> {
    let best = consumers.iter().map(|c| c.priority_level).min()?;
    let mut eligible: Vec<&Candidate<'_>> = consumers.iter().filter(|c| c.priority_level == best).collect();
    match partition_index {
        Some(partition) => {
            eligible.sort_by(|a, b| a.consumer_name.cmp(b.consumer_name).then(a.consumer_id.cmp(&b.consumer_id)));
            Some(eligible[partition as usize % eligible.len()].consumer_id)
        }
        None => Some(eligible[0].consumer_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(consumer_id: u64, consumer_name: &str, priority_level: i32) -> Candidate<'_> {
        Candidate { consumer_id, consumer_name, priority_level }
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
