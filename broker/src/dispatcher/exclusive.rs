//! Exclusive: one consumer, every message in log order. A second consumer is refused with
//! ConsumerBusy (`Subscription::attach`); the one consumer is always the active one.

/// The consumer that receives, if attached.
pub fn pick(consumers: &[u64]) -> Option<u64> {
    consumers.first().copied()
}
