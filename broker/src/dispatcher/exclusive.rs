//! Exclusive: one consumer, every message in log order. A second consumer is refused with
//! ConsumerBusy; the one consumer is always the active one.

use super::{with_permits, Consumer, Dispatcher, Joining, Offer, SubscriptionType};
use crate::error::BrokerError;

pub struct Exclusive;

impl Dispatcher for Exclusive {
    fn sub_type(&self) -> SubscriptionType {
        SubscriptionType::Exclusive
    }

    fn admit(&mut self, joining: Joining<'_>) -> Result<(), BrokerError> {
        if joining.attached.is_empty() {
            Ok(())
        } else {
            // The delivery core fills in the topic and subscription names.
            Err(BrokerError::ConsumerBusy { topic: String::new(), subscription: String::new() })
        }
    }

    fn remove(&mut self, _consumer_id: u64) {}

    fn pick_active(&self, consumers: &[Consumer]) -> Option<u64> {
        consumers.first().map(|c| c.id)
    }

    fn choose(&mut self, offer: Offer<'_>) -> Option<u64> {
        with_permits(offer.consumers, offer.active?)
    }
}
