//! Who gets a message: the behaviour of each subscription type behind one interface,
//! [`Dispatcher`], as plain code without I/O. The delivery core
//! (`subscription/delivery.rs`) asks it at each choice; one file per type.
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

use crate::error::BrokerError;
use crate::managed_ledger::Position;
use key_shared::HashRange;

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
    /// The name Pulsar gives it (stats' `type`).
    pub fn name(self) -> &'static str {
        match self {
            SubscriptionType::Exclusive => "Exclusive",
            SubscriptionType::Shared => "Shared",
            SubscriptionType::Failover => "Failover",
            SubscriptionType::KeyShared => "Key_Shared",
        }
    }

    /// Types that acknowledge messages one by one: no cumulative acks.
    pub fn individual_ack_only(self) -> bool {
        matches!(self, SubscriptionType::Shared | SubscriptionType::KeyShared)
    }

    /// Types where one consumer receives at a time, in log order.
    pub fn single_active(self) -> bool {
        matches!(self, SubscriptionType::Exclusive | SubscriptionType::Failover)
    }

    /// The dispatcher for a subscription of this type.
    pub fn dispatcher(self, partition_index: Option<u32>) -> Box<dyn Dispatcher> {
        match self {
            SubscriptionType::Exclusive => Box::new(exclusive::Exclusive),
            SubscriptionType::Failover => Box::new(failover::Failover { partition_index }),
            SubscriptionType::Shared => Box::new(shared::Shared::default()),
            SubscriptionType::KeyShared => Box::new(key_shared::KeyShared::default()),
        }
    }
}

/// Key_Shared settings a consumer subscribes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySharedOptions {
    pub sticky: bool,
    pub ranges: Vec<HashRange>,
    pub allow_out_of_order: bool,
}

/// What a subscribing consumer asks for.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub sub_type: SubscriptionType,
    pub key_shared: Option<KeySharedOptions>,
}

/// A consumer as a dispatcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub id: u64,
    pub name: String,
    /// Failover choice: lower is preferred, as Pulsar's priority level.
    pub priority_level: i32,
    /// Messages the consumer asked for (FLOW) and was not sent yet.
    pub permits: i64,
    /// Holds the most unacknowledged messages its subscription's policy allows: sent nothing
    /// until acks bring it down to half (Shared and Key_Shared, as Pulsar).
    pub blocked: bool,
}

/// What a joining consumer's admission may look at.
pub struct Joining<'a> {
    pub consumer: &'a Consumer,
    pub options: &'a SubscribeOptions,
    /// Consumers attached before it, in subscription order.
    pub attached: &'a [Consumer],
    /// The last position read so far, if anything read is not yet acknowledged.
    pub read_unacked: Option<Position>,
}

/// One entry to give to a consumer.
pub struct Offer<'a> {
    pub position: Position,
    /// The entry's sticky key hash.
    pub hash: u32,
    /// A message of the same key is waiting to be sent again (Key_Shared keeps it first).
    pub key_waiting: bool,
    /// Attached consumers, in subscription order.
    pub consumers: &'a [Consumer],
    /// The receiving consumer of a single-active type.
    pub active: Option<u64>,
}

/// The behaviour of one subscription type. Every call is made under the subscription's lock.
pub trait Dispatcher: Send {
    fn sub_type(&self) -> SubscriptionType;

    /// Checks a consumer joining and takes note of it; an error refuses the consumer.
    fn admit(&mut self, joining: Joining<'_>) -> Result<(), BrokerError>;

    /// The consumer left.
    fn remove(&mut self, consumer_id: u64);

    /// Single-active types: the consumer that receives now, among `consumers`.
    fn pick_active(&self, _consumers: &[Consumer]) -> Option<u64> {
        None
    }

    /// Whether consumers are told which of them is active (ACTIVE_CONSUMER_CHANGE).
    fn announces_active(&self) -> bool {
        false
    }

    /// Whether messages with a deliver-at time are held until then (delayed delivery).
    fn holds_delayed(&self) -> bool {
        false
    }

    /// Who gets the entry now (a consumer with permits); `None`: it waits to be sent again.
    fn choose(&mut self, offer: Offer<'_>) -> Option<u64>;

    /// Everything up to `mark_delete` is acknowledged.
    fn acknowledged_through(&mut self, _mark_delete: Position) {}
}

/// The first consumer of `consumers` with id `id` that has permits.
pub(crate) fn with_permits(consumers: &[Consumer], id: u64) -> Option<u64> {
    consumers.iter().find(|c| c.id == id && c.permits > 0 && !c.blocked).map(|c| c.id)
}
