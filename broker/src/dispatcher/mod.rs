//! Dispatchers move entries from a subscription's cursor to its consumers, within the
//! permits each consumer granted (FLOW). One task per subscription (`task.rs`) reads entries
//! and asks the subscription which consumer gets each; the choice for each subscription type
//! is plain code in its own file.
//!
//! | type | who gets a message | order |
//! |---|---|---|
//! | Exclusive (`exclusive.rs`) | the one consumer | log order |
//! | Failover (`failover.rs`) | the active consumer | log order |
//! | Shared (`shared.rs`) | round robin over consumers with permits | none; redeliveries go to anyone |
//! | Key_Shared (`key_shared.rs`) | the consumer owning the key's hash | per key, also while consumers join |

pub mod exclusive;
pub mod failover;
pub mod key_shared;
pub mod shared;
mod task;

pub use task::run;

/// How long a dispatcher waits before retrying a failed read.
pub const READ_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(200);
/// Entries read at a time.
pub const MAX_READ_BATCH: u32 = 100;
/// Messages waiting for redelivery beyond which no new entries are read (Key_Shared keys
/// whose consumer has no permits pile up here).
pub const MAX_REPLAY: usize = 10_000;

/// The subscription types, as CommandSubscribe names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionType {
    Exclusive,
    Shared,
    Failover,
    KeyShared,
}

impl SubscriptionType {
    /// Types that acknowledge messages one by one: no cumulative acks.
    pub fn individual_ack_only(self) -> bool {
        matches!(self, SubscriptionType::Shared | SubscriptionType::KeyShared)
    }
}
