//! The delivery core of one subscription: who gets which message, and when again. Plain code
//! without I/O: it owns no channel, no wire type and no clock. Callers pass the time and a
//! view of the ledger's positions, and get decisions back: what to read next, which
//! consumer gets which entry, which consumers became active, which must be closed.
//!
//! Delivery: new entries are read in log order after `read_after`. Messages to be sent again
//! (negative acks, a Shared consumer leaving, a Key_Shared key whose consumer has no permits,
//! delayed messages whose time came) wait in `replay`, which is served first, in position
//! order. A rewind (an Exclusive/Failover consumer change or redeliver-all) moves `read_after`
//! back to the mark-delete position and raises `epoch`, so a read started before it is
//! dropped. Every message sent again carries its redelivery count, so clients' dead-letter
//! policies work. The per-type choices are the [`Dispatcher`]'s (dispatcher/).
//!
//! Unacknowledged limits (Shared and Key_Shared, as Pulsar): a consumer holding the most
//! unacknowledged messages its policy allows is sent nothing more until acks bring it down to
//! half; a subscription holding its most sends nothing to anyone, likewise.
//!
//! Invariants (checked by the property tests in `tests.rs`): an acknowledged message is
//! never sent again; a message is out with at most one consumer at a time; Exclusive and
//! Failover send in log order; Key_Shared keeps per-key order while consumers come and go.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::dispatcher::{Consumer, Dispatcher, Joining, Offer, SubscribeOptions, SubscriptionType};
use crate::dispatcher::{MAX_READ_BATCH, MAX_REPLAY};
use crate::error::BrokerError;
use crate::managed_ledger::{CursorState, Position, PositionView};

/// What delivery needs to know of an entry (read from its metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Messages in the entry (a batch counts each).
    pub messages: i64,
    /// Delayed delivery: not before this time (ms since the epoch).
    pub deliver_at_ms: Option<u64>,
    /// The sticky key hash (Key_Shared).
    pub hash: u32,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing to send now: wait for permits or entries, or until this time (ms).
    Wait { until_ms: Option<u64> },
    /// Read these positions (messages to send again).
    Replay { positions: Vec<Position>, epoch: u64 },
    /// Read new entries from `from`, the first after `after` (a compacted view reads its
    /// own entries after `after`).
    Read { from: Position, after: Option<Position>, max: u32, epoch: u64 },
}

/// One entry to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// Index of the entry in the batch given to [`Delivery::dispatch`].
    pub index: usize,
    pub consumer_id: u64,
    pub redelivery_count: u32,
    /// Batch indexes not to deliver: bits of the indexes still unacknowledged (empty: all).
    pub ack_set: Vec<i64>,
}

/// A consumer's new state, to tell it (Failover's ACTIVE_CONSUMER_CHANGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveChange {
    pub consumer_id: u64,
    pub is_active: bool,
}

/// A message sent and not acknowledged.
#[derive(Debug, Clone, Copy)]
struct Delivered {
    consumer_id: u64,
    redelivery_count: u32,
    hash: u32,
    /// Messages in the entry (a batch counts each).
    messages: i64,
}

/// Entries sent and not acknowledged, by position, with the messages each consumer and the
/// subscription hold kept up to date on every change.
#[derive(Debug, Default)]
struct Outstanding {
    by_position: BTreeMap<Position, Delivered>,
    per_consumer: HashMap<u64, i64>,
    total: i64,
}

impl Outstanding {
    fn count(&mut self, delivered: &Delivered, sign: i64) {
        *self.per_consumer.entry(delivered.consumer_id).or_default() += sign * delivered.messages;
        self.total += sign * delivered.messages;
    }

    fn insert(&mut self, position: Position, delivered: Delivered) {
        if let Some(old) = self.by_position.insert(position, delivered) {
            self.count(&old, -1);
        }
        self.count(&delivered, 1);
    }

    fn remove(&mut self, position: &Position) -> Option<Delivered> {
        let removed = self.by_position.remove(position)?;
        self.count(&removed, -1);
        Some(removed)
    }

    fn get(&self, position: &Position) -> Option<&Delivered> {
        self.by_position.get(position)
    }

    fn contains_key(&self, position: &Position) -> bool {
        self.by_position.contains_key(position)
    }

    fn iter(&self) -> impl Iterator<Item = (&Position, &Delivered)> {
        self.by_position.iter()
    }

    /// Everything, emptied.
    fn take(&mut self) -> BTreeMap<Position, Delivered> {
        self.per_consumer.clear();
        self.total = 0;
        std::mem::take(&mut self.by_position)
    }

    /// Drops every entry before `after`.
    fn drop_before(&mut self, after: &Position) {
        let kept = self.by_position.split_off(after);
        for delivered in std::mem::replace(&mut self.by_position, kept).into_values() {
            self.count(&delivered, -1);
        }
    }

    fn unacked(&self, consumer_id: u64) -> i64 {
        self.per_consumer.get(&consumer_id).copied().unwrap_or(0)
    }
}

/// A subscription's unacknowledged-message limits (none: no limit), and the most entries it
/// reads at a time (none: [`MAX_READ_BATCH`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnackedLimits {
    pub per_consumer: Option<u32>,
    pub per_subscription: Option<u32>,
    pub read_batch: Option<u32>,
}

/// The delivery state of one subscription; see the module doc.
pub struct Delivery {
    topic: String,
    name: String,
    dispatcher: Box<dyn Dispatcher>,
    /// The partition this topic is, for the type's choice when it changes.
    partition_index: Option<u32>,
    cursor: CursorState,
    /// Last position read in log order (delivered, held or skipped); `None`: from the start.
    read_after: Option<Position>,
    /// Raised whenever `read_after` is moved back, so an in-flight read is discarded.
    epoch: u64,
    /// Attached consumers in subscription order.
    consumers: Vec<Consumer>,
    /// Exclusive and Failover: the consumer that receives.
    active: Option<u64>,
    delivered: Outstanding,
    limits: UnackedLimits,
    /// The subscription holds its most unacknowledged messages: nothing is sent.
    blocked: bool,
    /// Messages to send again, with their sticky key hash (Key_Shared keeps per-key order).
    replay: BTreeMap<Position, u32>,
    /// Set when a pass over `replay` sent nothing (consumers without permits); cleared by
    /// anything that may change that. New entries are read meanwhile.
    replay_blocked: bool,
    /// Messages per entry of the entries read lately (a moving average), so that a read of
    /// batch entries asks for about as many entries as the consumers' permits hold messages,
    /// as Pulsar's dispatchers do with `avgMessagesPerEntry`.
    messages_per_entry: f64,
    /// Times each position was delivered before, for the next send.
    redelivery_counts: HashMap<Position, u32>,
    /// Messages held until their deliver-at time (ms since the epoch).
    delayed: BTreeSet<(u64, Position)>,
}

impl Delivery {
    pub fn new(
        topic: &str,
        name: &str,
        sub_type: SubscriptionType,
        partition_index: Option<u32>,
        cursor: CursorState,
    ) -> Self {
        Delivery {
            topic: topic.to_owned(),
            name: name.to_owned(),
            dispatcher: sub_type.dispatcher(partition_index),
            partition_index,
            read_after: cursor.mark_delete,
            cursor,
            epoch: 0,
            consumers: Vec::new(),
            active: None,
            delivered: Outstanding::default(),
            limits: UnackedLimits::default(),
            blocked: false,
            replay: BTreeMap::new(),
            replay_blocked: false,
            messages_per_entry: 1.0,
            redelivery_counts: HashMap::new(),
            delayed: BTreeSet::new(),
        }
    }

    pub fn sub_type(&self) -> SubscriptionType {
        self.dispatcher.sub_type()
    }

    pub fn cursor(&self) -> &CursorState {
        &self.cursor
    }

    pub fn consumers(&self) -> &[Consumer] {
        &self.consumers
    }

    /// Messages sent to `consumer_id` and not acknowledged (a batch counts each).
    pub fn unacked_of(&self, consumer_id: u64) -> i64 {
        self.delivered.unacked(consumer_id)
    }

    /// Messages sent and not acknowledged, over all consumers.
    pub fn unacked_total(&self) -> i64 {
        self.delivered.total
    }

    /// Whether the subscription holds its most unacknowledged messages (sends nothing).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Exclusive and Failover: the consumer that receives now.
    pub fn active(&self) -> Option<u64> {
        self.active
    }

    /// The last position read in log order (`None`: from the start).
    pub fn read_after(&self) -> Option<Position> {
        self.read_after
    }

    /// The first position this subscription will read again or anew: the first message
    /// waiting for redelivery, else the one after the delivery position.
    pub fn next_needed(&self) -> Position {
        let next = self.read_after.map_or(Position::new(0, 0), |p| Position::new(p.ledger_id, p.entry_id + 1));
        self.replay.keys().next().map_or(next, |first| next.min(*first))
    }

    /// A compacted view read everything up to `horizon`: reading goes on after it, unless a
    /// rewind (a new epoch) happened meanwhile.
    pub fn skip_to(&mut self, horizon: Position, epoch: u64) {
        if epoch == self.epoch && self.read_after.is_none_or(|after| after < horizon) {
            self.read_after = Some(horizon);
        }
    }

    pub fn has_consumer(&self, consumer_id: u64) -> bool {
        self.consumers.iter().any(|c| c.id == consumer_id)
    }

    /// Something changed that may let a blocked replay pass send.
    fn changed(&mut self) {
        self.replay_blocked = false;
        self.update_blocks();
    }

    /// Takes the subscription's unacknowledged limits (a policy change).
    pub fn set_limits(&mut self, limits: UnackedLimits) {
        self.limits = limits;
        self.changed();
    }

    /// Blocks and unblocks consumers and the subscription by their unacknowledged messages:
    /// blocked at the limit, unblocked at half of it (Shared and Key_Shared only).
    fn update_blocks(&mut self) {
        let applies = matches!(self.sub_type(), SubscriptionType::Shared | SubscriptionType::KeyShared);
        let crossed = |held: i64, limit: Option<u32>, blocked: bool| match limit.filter(|_| applies) {
            None => false,
            Some(limit) if held >= i64::from(limit) => true,
            Some(limit) if held <= i64::from(limit) / 2 => false,
            Some(_) => blocked,
        };
        for consumer in &mut self.consumers {
            consumer.blocked = crossed(self.delivered.unacked(consumer.id), self.limits.per_consumer, consumer.blocked);
        }
        self.blocked = crossed(self.delivered.total, self.limits.per_subscription, self.blocked);
    }

    /// Attaches a consumer, refusing it as Pulsar does: a type other than the subscription's
    /// (ConsumerBusy), an id in use, and what its type refuses (a second Exclusive consumer,
    /// overlapping STICKY ranges).
    pub fn attach(&mut self, consumer: Consumer, options: &SubscribeOptions) -> Result<(), BrokerError> {
        if self.consumers.is_empty() {
            if self.sub_type() != options.sub_type {
                self.dispatcher = options.sub_type.dispatcher(self.partition_index);
            }
        } else if self.sub_type() != options.sub_type {
            return Err(BrokerError::SubscriptionBusy {
                what: format!(
                    "Subscription {} is of different type: {:?}, requested {:?}",
                    self.name,
                    self.sub_type(),
                    options.sub_type
                ),
            });
        }
        if self.has_consumer(consumer.id) {
            return Err(BrokerError::NotAllowed { what: format!("consumer id {} is already in use", consumer.id) });
        }
        let read_unacked = self.read_after.filter(|r| self.cursor.mark_delete.is_none_or(|m| m < *r));
        let joining = Joining { consumer: &consumer, options, attached: &self.consumers, read_unacked };
        self.dispatcher.admit(joining).map_err(|error| match error {
            BrokerError::ConsumerBusy { .. } => {
                BrokerError::ConsumerBusy { topic: self.topic.clone(), subscription: self.name.clone() }
            }
            BrokerError::SubscriptionBusy { what } => {
                BrokerError::SubscriptionBusy { what: format!("Subscription {}: {what}", self.name) }
            }
            other => other,
        })?;
        self.consumers.push(consumer);
        self.choose_active();
        self.changed();
        Ok(())
    }

    /// Single-active types: chooses the active consumer; on a change the unacknowledged
    /// messages go again to the new one.
    fn choose_active(&mut self) {
        if !self.sub_type().single_active() {
            return;
        }
        let chosen = self.dispatcher.pick_active(&self.consumers);
        if chosen != self.active {
            self.active = chosen;
            self.rewind();
        }
    }

    /// Who is active now, for each consumer, if the type tells them.
    pub fn active_changes(&self) -> Vec<ActiveChange> {
        if !self.dispatcher.announces_active() {
            return Vec::new();
        }
        self.consumers
            .iter()
            .map(|c| ActiveChange { consumer_id: c.id, is_active: Some(c.id) == self.active })
            .collect()
    }

    /// Detaches the consumer if attached (returns whether it was); its unacknowledged
    /// messages go to the others (Shared, Key_Shared) or to the next active consumer.
    pub fn detach(&mut self, consumer_id: u64) -> bool {
        let Some(index) = self.consumers.iter().position(|c| c.id == consumer_id) else { return false };
        self.consumers.remove(index);
        self.dispatcher.remove(consumer_id);
        if self.sub_type().single_active() {
            if self.active == Some(consumer_id) {
                self.active = None;
            }
            self.choose_active();
            if self.consumers.is_empty() {
                self.rewind();
            }
        } else {
            self.return_to_replay(|d| d.consumer_id == consumer_id);
        }
        self.changed();
        true
    }

    /// Closes every consumer (the topic moves to another broker); returns their ids.
    pub fn detach_all(&mut self) -> Vec<u64> {
        let closed: Vec<u64> = self.consumers.iter().map(|c| c.id).collect();
        for consumer_id in &closed {
            self.detach(*consumer_id);
        }
        closed
    }

    /// Moves delivered messages matching `which` back for redelivery, counting one more.
    fn return_to_replay(&mut self, which: impl Fn(&Delivered) -> bool) {
        let returned: Vec<(Position, Delivered)> =
            self.delivered.iter().filter(|(_, d)| which(d)).map(|(p, d)| (*p, *d)).collect();
        for (position, delivered) in returned {
            self.delivered.remove(&position);
            self.redelivery_counts.insert(position, delivered.redelivery_count + 1);
            self.replay.insert(position, delivered.hash);
        }
    }

    /// Moves delivery back to just after the mark-delete position, counting a redelivery for
    /// every message already sent and not acknowledged.
    fn rewind(&mut self) {
        for (position, delivered) in self.delivered.take() {
            self.redelivery_counts.insert(position, delivered.redelivery_count + 1);
        }
        self.replay.clear();
        self.delayed.clear();
        self.read_after = self.cursor.mark_delete;
        self.epoch += 1;
    }

    /// FLOW: the consumer may get `permits` more messages.
    pub fn flow(&mut self, consumer_id: u64, permits: u32) {
        if let Some(consumer) = self.consumers.iter_mut().find(|c| c.id == consumer_id) {
            consumer.permits = consumer.permits.saturating_add(i64::from(permits));
        }
        self.changed();
    }

    /// REDELIVER_UNACKNOWLEDGED_MESSAGES: the listed messages (negative acks, ack timeout) or,
    /// with none listed, every unacknowledged message of the consumer, are delivered again.
    /// Ids the consumer was not sent are ignored.
    pub fn redeliver(&mut self, consumer_id: u64, positions: &[Position]) {
        if positions.is_empty() {
            if self.sub_type().single_active() {
                if self.active == Some(consumer_id) {
                    self.rewind();
                }
            } else {
                self.return_to_replay(|d| d.consumer_id == consumer_id);
            }
        } else {
            for position in positions {
                if let Some(delivered) = self.delivered.get(position).filter(|d| d.consumer_id == consumer_id).copied()
                {
                    self.delivered.remove(position);
                    self.redelivery_counts.insert(*position, delivered.redelivery_count + 1);
                    self.replay.insert(*position, delivered.hash);
                }
            }
        }
        self.changed();
    }

    /// Acknowledges messages. `ids` are positions with their batch ack set (bits of the
    /// batch indexes still unacknowledged; empty: the whole entry). Positions that are not
    /// entries of `view` are ignored. Cumulative acks are refused on Shared and Key_Shared,
    /// as Pulsar refuses them. Returns whether the cursor state changed (to be persisted).
    pub fn ack(
        &mut self,
        ids: &[(Position, Vec<i64>)],
        cumulative: bool,
        view: &impl PositionView,
    ) -> Result<bool, BrokerError> {
        if cumulative && self.sub_type().individual_ack_only() {
            return Err(BrokerError::NotAllowed {
                what: format!("Cumulative ack is not supported for {:?} subscription", self.sub_type()),
            });
        }
        let mut changed = false;
        for (position, ack_set) in ids {
            changed |= self.cursor.ack(*position, ack_set, cumulative, view);
            if self.cursor.is_acked(*position) {
                self.forget(*position);
            }
        }
        if changed {
            self.forget_through_mark_delete();
        }
        self.changed();
        Ok(changed)
    }

    /// Acknowledges everything up to `position` for the broker itself (message TTL, backlog
    /// eviction), whatever the subscription type; whether anything changed.
    pub fn skip_through(&mut self, position: Position, view: &impl PositionView) -> bool {
        if self.cursor.mark_delete.is_some_and(|mark| mark >= position) {
            return false;
        }
        let changed = self.cursor.ack_cumulative(position, view);
        if changed {
            self.forget_through_mark_delete();
            self.changed();
        }
        changed
    }

    /// Drops what delivery keeps of messages at or before the mark-delete position.
    fn forget_through_mark_delete(&mut self) {
        if let Some(mark) = self.cursor.mark_delete {
            let after = Position::new(mark.ledger_id, mark.entry_id + 1);
            self.delivered.drop_before(&after);
            self.replay = self.replay.split_off(&after);
            self.redelivery_counts.retain(|p, _| *p > mark);
            self.dispatcher.acknowledged_through(mark);
        }
    }

    fn forget(&mut self, position: Position) {
        self.redelivery_counts.remove(&position);
        self.delivered.remove(&position);
        self.replay.remove(&position);
    }

    /// Moves the subscription so that the next message delivered is the one after
    /// `mark_delete` (a seek): acks after it are forgotten and every consumer is closed, to
    /// subscribe again, as Pulsar does. Returns the consumers closed.
    pub fn seek(&mut self, mark_delete: Option<Position>) -> Vec<u64> {
        let closed: Vec<u64> = self.consumers.drain(..).map(|c| c.id).collect();
        for consumer_id in &closed {
            self.dispatcher.remove(*consumer_id);
        }
        self.active = None;
        self.cursor.reset(mark_delete);
        self.delivered.take();
        self.redelivery_counts.clear();
        self.rewind();
        self.changed();
        closed
    }

    /// Consumers that may receive now.
    fn receivers(&self) -> impl Iterator<Item = &Consumer> {
        self.consumers.iter().filter(|c| self.active.is_none_or(|a| a == c.id))
    }

    /// What to read next, at time `now_ms`.
    pub fn next(&mut self, now_ms: u64, view: &impl PositionView) -> Next {
        while let Some(&(at, position)) = self.delayed.first() {
            if at > now_ms {
                break;
            }
            self.delayed.pop_first();
            self.replay.insert(position, 0);
            self.replay_blocked = false;
        }
        let until_ms = self.delayed.first().map(|(at, _)| *at);
        if self.sub_type().single_active() && self.active.is_none() {
            return Next::Wait { until_ms };
        }
        let permits: i64 = self.receivers().filter(|c| !c.blocked).map(|c| c.permits.max(0)).sum();
        if permits <= 0 || self.blocked {
            return Next::Wait { until_ms };
        }
        let batch = self.limits.read_batch.unwrap_or(MAX_READ_BATCH).max(1);
        let entries = ((permits as f64 / self.messages_per_entry) as i64).max(1);
        let max = entries.min(i64::from(batch)) as usize;
        if !self.replay.is_empty() && !self.replay_blocked {
            let positions = self.replay.keys().take(max).copied().collect();
            return Next::Replay { positions, epoch: self.epoch };
        }
        if self.replay.len() >= MAX_REPLAY {
            return Next::Wait { until_ms };
        }
        match view.next_position(self.read_after) {
            Some(from) => Next::Read { from, after: self.read_after, max: max as u32, epoch: self.epoch },
            None => Next::Wait { until_ms },
        }
    }

    /// Decides, for entries read for `epoch` (from the replay set or in log order), which
    /// consumer gets each, and takes what that spends: permits, the delivery position. A
    /// read made stale by a rewind sends nothing.
    pub fn dispatch(
        &mut self,
        entries: &[(Position, EntryMeta)],
        epoch: u64,
        from_replay: bool,
        now_ms: u64,
    ) -> Vec<Dispatched> {
        if self.epoch != epoch {
            return Vec::new();
        }
        let mut sends = Vec::new();
        for (index, (position, meta)) in entries.iter().enumerate() {
            if let Some((consumer_id, redelivery_count)) = self.dispatch_one(*position, meta, from_replay, now_ms) {
                let ack_set = self.cursor.batch_unacked(*position).to_vec();
                sends.push(Dispatched { index, consumer_id, redelivery_count, ack_set });
            }
        }
        if from_replay && sends.is_empty() {
            // Nothing could go out: read new entries until something changes.
            self.replay_blocked = true;
        }
        sends
    }

    fn dispatch_one(
        &mut self,
        position: Position,
        meta: &EntryMeta,
        from_replay: bool,
        now_ms: u64,
    ) -> Option<(u64, u32)> {
        if from_replay {
            if !self.replay.contains_key(&position) {
                return None;
            }
        } else {
            if self.read_after.is_none_or(|r| position > r) {
                self.read_after = Some(position);
            }
            self.messages_per_entry = 0.9 * self.messages_per_entry + 0.1 * meta.messages.max(1) as f64;
            if self.delivered.contains_key(&position) || self.replay.contains_key(&position) {
                return None;
            }
        }
        if self.cursor.is_acked(position) {
            self.forget(position);
            return None;
        }
        if self.dispatcher.holds_delayed() {
            if let Some(at) = meta.deliver_at_ms.filter(|at| *at > now_ms) {
                self.replay.remove(&position);
                self.delayed.insert((at, position));
                return None;
            }
        }
        // Only Key_Shared orders by key; the scan of the replay set is skipped for the others.
        let key_waiting = !from_replay
            && self.sub_type() == SubscriptionType::KeyShared
            && self.replay.values().any(|h| *h == meta.hash);
        let offer = Offer { position, hash: meta.hash, key_waiting, consumers: &self.consumers, active: self.active };
        let Some(consumer_id) = self.dispatcher.choose(offer) else {
            // Nobody can take it now: it waits in the replay set, in position order.
            self.replay.insert(position, meta.hash);
            return None;
        };
        let consumer = self.consumers.iter_mut().find(|c| c.id == consumer_id)?;
        consumer.permits -= meta.messages;
        self.replay.remove(&position);
        let redelivery_count = self.redelivery_counts.get(&position).copied().unwrap_or(0);
        self.delivered.insert(
            position,
            Delivered { consumer_id, redelivery_count, hash: meta.hash, messages: meta.messages.max(1) },
        );
        self.update_blocks();
        Some((consumer_id, redelivery_count))
    }
}
