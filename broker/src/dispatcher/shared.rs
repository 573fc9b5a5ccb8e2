//! Shared: messages go round robin to the consumers that have permits; no ordering. Messages
//! with a deliver-at time are held until then (delayed delivery).

use super::{Consumer, Dispatcher, Joining, Offer, SubscriptionType};
use crate::error::BrokerError;

#[derive(Default)]
pub struct Shared {
    /// Where the round robin goes on (an index in subscription order).
    next: usize,
}

impl Dispatcher for Shared {
    fn sub_type(&self) -> SubscriptionType {
        SubscriptionType::Shared
    }

    fn admit(&mut self, _joining: Joining<'_>) -> Result<(), BrokerError> {
        Ok(())
    }

    fn remove(&mut self, _consumer_id: u64) {}

    fn holds_delayed(&self) -> bool {
        true
    }

    fn choose(&mut self, offer: Offer<'_>) -> Option<u64> {
        pick_round_robin(offer.consumers, &mut self.next)
    }
}

/// The next consumer with permits, starting at `*next` (in subscription order) and moving it
/// past the one chosen, so consumers take turns.
pub fn pick_round_robin(consumers: &[Consumer], next: &mut usize) -> Option<u64> {
    let count = consumers.len();
    for step in 0..count {
        let index = (*next + step) % count;
        if consumers[index].permits > 0 && !consumers[index].blocked {
            *next = (index + 1) % count;
            return Some(consumers[index].id);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_take_turns_and_those_without_permits_are_skipped() {
        let consumer = |id, permits| Consumer { id, name: String::new(), priority_level: 0, permits, blocked: false };
        let mut next = 0;
        let consumers = [consumer(1, 5), consumer(2, 0), consumer(3, 5)];
        let picks: Vec<u64> = (0..4).filter_map(|_| pick_round_robin(&consumers, &mut next)).collect();
        assert_eq!(picks, vec![1, 3, 1, 3]);
        assert_eq!(pick_round_robin(&[consumer(1, 0)], &mut next), None);
        assert_eq!(pick_round_robin(&[], &mut next), None);
    }
}
