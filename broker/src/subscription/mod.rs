//! A subscription: a cursor on a topic plus the consumers it delivers to.
//!
//! The decisions (who gets which message, who is active, what to read next) are the delivery
//! core's ([`delivery::Delivery`], plain code, with the per-type choice in `dispatcher/`).
//! This shell holds it behind one mutex that is never held across an await, with what the
//! core must not know: each consumer's [`ConsumerSink`] (its connection, which builds the
//! frames), the wake-up of the dispatch task, the wall clock, and the durable cursor, which
//! it marks dirty when an ack changed the state (the cursor's persister then reads the state
//! through [`CursorSource`] and writes it once).
//!
//! One dispatch task per subscription ([`task`]) asks [`Subscription::next`] what to read,
//! reads it, and gives it back to [`Subscription::dispatch`], which answers with the messages
//! to send: one way out, one way back.
//!
//! Non-durable subscriptions (readers) have no `ManagedCursor`: acks stay in memory and the
//! subscription is dropped when its consumer leaves.

pub mod delivery;
pub mod entry_meta;
pub mod start;
pub mod task;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use magnetar_proto::clock::now_ms;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::compaction::{CompactedLedger, Compaction};
use crate::dispatcher::{Consumer, SubscribeOptions, SubscriptionType};
use crate::error::BrokerError;
use crate::managed_ledger::cursor::CursorSource;
use crate::managed_ledger::PositionView;
use crate::managed_ledger::{CursorState, ManagedCursor, ManagedLedger, Position};
use crate::stats::{ConsumerStats, Meter};
use crate::tenancy::effective::Rate;
use crate::throttle::Throttle;
pub use delivery::UnackedLimits;
use delivery::{ActiveChange, Delivery, EntryMeta, Next};
pub use start::{InitialPosition, StartAt};

/// One message for a consumer.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub position: Position,
    pub redelivery_count: u32,
    /// Bits of the batch indexes still unacknowledged (empty: deliver every index).
    pub ack_set: Vec<i64>,
    /// Messages in the entry (a batch counts each).
    pub messages: i64,
    pub data: Bytes,
}

/// Where a consumer's messages and notices go: its connection, which turns them into frames.
#[async_trait]
pub trait ConsumerSink: Send + Sync {
    /// Sends messages in order; waits while the connection's queue is full (backpressure).
    /// False if the connection is gone (its cleanup detaches the consumer).
    async fn send_messages(&self, messages: Vec<OutgoingMessage>) -> bool;
    /// Tells the consumer whether it is the active one; never waits (a full queue means a
    /// stuck client, which learns the state again on the next change).
    fn active_changed(&self, is_active: bool);
    /// Tells the consumer's client to subscribe again (the broker closed it); never waits.
    fn closed_by_broker(&self);
    /// Tells the consumer it read everything of a terminated topic (REACHED_END_OF_TOPIC);
    /// never waits.
    fn reached_end_of_topic(&self) {}
}

/// A consumer attaching: who it is and where its messages go.
pub struct NewConsumer {
    /// Unique among the broker's consumers (not the client's consumer id, which is unique on
    /// its connection only); every call about this consumer names it by this.
    pub consumer_id: u64,
    pub consumer_name: String,
    pub priority_level: i32,
    pub sink: Arc<dyn ConsumerSink>,
    /// What stats show of it; its sink counts what it sends there.
    pub stats: Arc<ConsumerStats>,
}

struct Inner {
    delivery: Delivery,
    sinks: HashMap<u64, Arc<dyn ConsumerSink>>,
    stats: HashMap<u64, Arc<ConsumerStats>>,
    /// Consumers told that they read a terminated topic to its end.
    told_end: std::collections::HashSet<u64>,
}

impl Inner {
    /// Forgets a consumer that left; its sink, if it had one.
    fn forget(&mut self, consumer_id: u64) -> Option<Arc<dyn ConsumerSink>> {
        self.stats.remove(&consumer_id);
        self.told_end.remove(&consumer_id);
        self.sinks.remove(&consumer_id)
    }
}

/// A subscription's state for stats, taken at one moment.
#[derive(Debug, Clone)]
pub struct SubscriptionSnapshot {
    /// `None` for a durable subscription no consumer opened since the topic loaded (its
    /// cursor only; Pulsar shows no dispatcher as type "None").
    pub sub_type: Option<SubscriptionType>,
    pub durable: bool,
    pub mark_delete: Option<Position>,
    /// The last position read for delivery.
    pub read_after: Option<Position>,
    /// Runs of positions acknowledged individually beyond the mark-delete position, as
    /// (first, last), both included.
    pub individually_acked: Vec<(Position, Position)>,
    /// Unacknowledged entries (Pulsar's msgBacklog).
    pub backlog: u64,
    /// Bytes of the backlog, estimated as Pulsar does.
    pub backlog_bytes: u64,
    /// Messages sent and not acknowledged.
    pub unacked: i64,
    pub blocked: bool,
    pub active_consumer: Option<String>,
    pub consumers: Vec<ConsumerSnapshot>,
}

impl SubscriptionSnapshot {
    /// A durable subscription no consumer opened since the topic loaded: its cursor's state.
    pub fn of_cursor(cursor: &ManagedCursor, ledger: &ManagedLedger) -> Self {
        let state = cursor.state().unwrap_or_else(|| CursorState::at(cursor.persisted_mark_delete()));
        SubscriptionSnapshot {
            sub_type: None,
            durable: true,
            mark_delete: state.mark_delete,
            read_after: state.mark_delete,
            individually_acked: state.individually_acked.ranges().collect(),
            backlog: ledger.backlog(&state),
            backlog_bytes: ledger.bytes_after(state.mark_delete),
            unacked: 0,
            blocked: false,
            active_consumer: None,
            consumers: Vec::new(),
        }
    }
}

/// One consumer's state for stats.
#[derive(Debug, Clone)]
pub struct ConsumerSnapshot {
    pub stats: Arc<ConsumerStats>,
    pub permits: i64,
    pub unacked: i64,
    pub blocked: bool,
}

pub struct Subscription {
    name: String,
    ledger: Arc<ManagedLedger>,
    inner: Mutex<Inner>,
    /// Wakes the dispatch task: permits arrived, acks, consumers changed, delivery was reset.
    wake: Notify,
    /// The durable cursor: persists acks, owned by the managed ledger; `None` for readers.
    cursor: Option<Arc<ManagedCursor>>,
    /// Stops the dispatch task.
    stop: CancellationToken,
    /// The dispatch rate policies: the topic's (shared by all its subscriptions) and this
    /// subscription's own.
    rates: Mutex<(Arc<Throttle>, Arc<Throttle>)>,
    /// Messages and bytes given to consumers, and messages delivered again on request, since
    /// the subscription opened here (stats).
    dispatched: Meter,
    redelivered: Meter,
    /// Set once a consumer reads compacted (`read_compacted`): the topic's compaction, whose
    /// compacted ledger is read before the log.
    compaction: Mutex<Option<Arc<Compaction>>>,
}

impl CursorSource for Subscription {
    fn with_cursor_state(&self, f: &mut dyn FnMut(&CursorState)) {
        f(self.inner.lock().delivery.cursor());
    }
}

impl Subscription {
    /// Opens the subscription (its dispatch task, [`task::run`], is started by its owner). A
    /// durable one gets its cursor
    /// (created at `start` if new) and holds its live state from now on; a non-durable one
    /// (reader) starts at `start` with its state in memory only.
    pub async fn open(
        topic: &str,
        name: &str,
        ledger: Arc<ManagedLedger>,
        start: StartAt,
        durable: bool,
        sub_type: SubscriptionType,
    ) -> Result<Arc<Self>, BrokerError> {
        let start_mark_delete = match start {
            StartAt::Initial(InitialPosition::Earliest) => None,
            StartAt::Initial(InitialPosition::Latest) => ledger.last_confirmed(),
            StartAt::After(position) => position,
        };
        let cursor = if durable { Some(ledger.open_cursor(name, start_mark_delete).await?) } else { None };
        let partition_index = magnetar_proto::topic_name::partition_index(topic);
        let subscription = Arc::new_cyclic(|weak: &std::sync::Weak<Subscription>| {
            let state = match &cursor {
                Some(cursor) => cursor.lend_to(weak.clone()),
                None => CursorState::at(start_mark_delete),
            };
            Subscription {
                name: name.to_owned(),
                ledger,
                inner: Mutex::new(Inner {
                    delivery: Delivery::new(topic, name, sub_type, partition_index, state),
                    sinks: HashMap::new(),
                    stats: HashMap::new(),
                    told_end: Default::default(),
                }),
                wake: Notify::new(),
                cursor,
                stop: CancellationToken::new(),
                rates: Mutex::new((Arc::new(Throttle::new(Rate::NONE)), Arc::new(Throttle::new(Rate::NONE)))),
                dispatched: Meter::default(),
                redelivered: Meter::default(),
                compaction: Mutex::new(None),
            }
        });
        Ok(subscription)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ledger(&self) -> &Arc<ManagedLedger> {
        &self.ledger
    }

    /// Reads the topic's compacted view first from now on (`read_compacted`).
    pub fn read_compacted(&self, compaction: Arc<Compaction>) {
        *self.compaction.lock() = Some(compaction);
        self.wake.notify_one();
    }

    pub fn reads_compacted(&self) -> bool {
        self.compaction.lock().is_some()
    }

    /// The compacted ledger this subscription reads first, if it reads compacted and the
    /// topic was compacted.
    pub fn compacted_view(&self) -> Option<Arc<CompactedLedger>> {
        self.compaction.lock().as_ref().and_then(|compaction| compaction.current())
    }

    /// Reading moves past the compacted view's horizon (see [`Delivery::skip_to`]).
    pub fn skip_to(&self, horizon: Position, epoch: u64) {
        self.inner.lock().delivery.skip_to(horizon, epoch);
    }

    pub fn is_durable(&self) -> bool {
        self.cursor.is_some()
    }

    pub fn has_consumer(&self) -> bool {
        !self.inner.lock().delivery.consumers().is_empty()
    }

    pub fn has_consumer_id(&self, consumer_id: u64) -> bool {
        self.inner.lock().delivery.has_consumer(consumer_id)
    }

    /// The first position this subscription reads next (again or anew), for the entry cache:
    /// `None` while it has no consumers (it holds nothing in the cache then).
    pub fn cache_position(&self) -> Option<Position> {
        let inner = self.inner.lock();
        if inner.delivery.consumers().is_empty() {
            return None;
        }
        Some(inner.delivery.next_needed())
    }

    pub fn consumer_count(&self) -> usize {
        self.inner.lock().delivery.consumers().len()
    }

    pub fn sub_type(&self) -> SubscriptionType {
        self.inner.lock().delivery.sub_type()
    }

    pub fn mark_delete(&self) -> Option<Position> {
        self.inner.lock().delivery.cursor().mark_delete
    }

    /// The state stats show, taken under one lock.
    pub fn snapshot(&self) -> SubscriptionSnapshot {
        let inner = self.inner.lock();
        let delivery = &inner.delivery;
        let cursor = delivery.cursor();
        let name_of = |id: u64| inner.stats.get(&id).map(|stats| stats.name.clone());
        let consumers = delivery
            .consumers()
            .iter()
            .filter_map(|consumer| {
                Some(ConsumerSnapshot {
                    stats: inner.stats.get(&consumer.id)?.clone(),
                    permits: consumer.permits,
                    unacked: delivery.unacked_of(consumer.id),
                    blocked: consumer.blocked,
                })
            })
            .collect();
        let active = delivery.active().and_then(name_of);
        SubscriptionSnapshot {
            sub_type: Some(delivery.sub_type()),
            durable: self.cursor.is_some(),
            mark_delete: cursor.mark_delete,
            read_after: delivery.read_after(),
            individually_acked: cursor.individually_acked.ranges().collect(),
            backlog: self.ledger.backlog(cursor),
            backlog_bytes: self.ledger.bytes_after(cursor.mark_delete),
            unacked: delivery.unacked_total(),
            blocked: delivery.is_blocked(),
            active_consumer: active,
            consumers,
        }
    }

    /// The `n`th unacknowledged entry after the mark-delete position (1 is the first), or
    /// the last one if fewer are unacknowledged; `None` if none is.
    pub fn nth_unacked(&self, n: u64) -> Option<Position> {
        let view = self.ledger.positions();
        let inner = self.inner.lock();
        let cursor = inner.delivery.cursor();
        let (mut at, mut found, mut seen) = (cursor.mark_delete, None, 0);
        while seen < n {
            let Some(next) = view.next_position(at) else { break };
            at = Some(next);
            if !cursor.is_acked(next) {
                found = Some(next);
                seen += 1;
            }
        }
        found
    }

    /// Messages and bytes given to consumers since the subscription opened here.
    pub fn dispatched(&self) -> &Meter {
        &self.dispatched
    }

    /// Messages delivered again on the consumers' request since it opened here.
    pub fn redelivered(&self) -> &Meter {
        &self.redelivered
    }

    /// Unacknowledged entries.
    pub fn backlog(&self) -> u64 {
        self.ledger.backlog(self.inner.lock().delivery.cursor())
    }

    /// Attaches a consumer, refusing it as Pulsar does (see [`Delivery::attach`]).
    pub fn attach(&self, consumer: NewConsumer, options: &SubscribeOptions) -> Result<(), BrokerError> {
        let mut inner = self.inner.lock();
        let spec = Consumer {
            id: consumer.consumer_id,
            name: consumer.consumer_name,
            priority_level: consumer.priority_level,
            permits: 0,
            blocked: false,
        };
        inner.delivery.attach(spec, options)?;
        inner.sinks.insert(consumer.consumer_id, consumer.sink);
        inner.stats.insert(consumer.consumer_id, consumer.stats);
        self.wake.notify_one();
        Ok(())
    }

    /// Failover: tells every consumer whether it is the active one (ACTIVE_CONSUMER_CHANGE).
    /// Called after a consumer's SUBSCRIBE was answered and when one leaves.
    pub fn announce_active(&self) {
        let inner = self.inner.lock();
        Self::announce(&inner, inner.delivery.active_changes());
    }

    fn announce(inner: &Inner, changes: Vec<ActiveChange>) {
        for change in changes {
            if let Some(sink) = inner.sinks.get(&change.consumer_id) {
                sink.active_changed(change.is_active);
            }
        }
    }

    /// Detaches the consumer if attached; its unacknowledged messages go to the others
    /// (Shared, Key_Shared) or to the next active consumer (Exclusive, Failover).
    pub fn detach(&self, consumer_id: u64) -> bool {
        let mut inner = self.inner.lock();
        if !inner.delivery.detach(consumer_id) {
            return false;
        }
        inner.forget(consumer_id);
        self.wake.notify_one();
        Self::announce(&inner, inner.delivery.active_changes());
        true
    }

    /// FLOW: the consumer may get `permits` more messages.
    pub fn add_permits(&self, consumer_id: u64, permits: u32) {
        self.inner.lock().delivery.flow(consumer_id, permits);
        self.wake.notify_one();
    }

    /// REDELIVER_UNACKNOWLEDGED_MESSAGES (see [`Delivery::redeliver`]).
    pub fn redeliver(&self, consumer_id: u64, positions: &[Position]) {
        let mut inner = self.inner.lock();
        let before = inner.delivery.unacked_of(consumer_id);
        inner.delivery.redeliver(consumer_id, positions);
        let returned = before - inner.delivery.unacked_of(consumer_id);
        let returned = u64::try_from(returned).unwrap_or(0);
        self.redelivered.record(returned, 0);
        if let Some(stats) = inner.stats.get(&consumer_id) {
            stats.redelivered.record(returned, 0);
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// Acknowledges messages (see [`Delivery::ack`]); a change marks the cursor dirty, to be
    /// persisted by its own task.
    pub fn ack(&self, ids: &[(Position, Vec<i64>)], cumulative: bool) -> Result<(), BrokerError> {
        let view = self.ledger.positions();
        let changed = self.inner.lock().delivery.ack(ids, cumulative, &view)?;
        if changed {
            if let Some(cursor) = &self.cursor {
                cursor.mark_dirty();
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Takes the dispatch rates of the topic's policies: `topic` is shared by the topic's
    /// subscriptions, `own` is this subscription's.
    pub fn set_dispatch_rates(&self, topic: Arc<Throttle>, own: Rate) {
        let mut rates = self.rates.lock();
        rates.0 = topic;
        rates.1.set(own);
    }

    /// How many messages the dispatch rates let out now (`Ok(None)`: no message limit), or
    /// how long to wait before any.
    pub(crate) fn dispatch_budget(&self) -> Result<Option<u64>, std::time::Duration> {
        let (topic, own) = self.rates.lock().clone();
        match (topic.budget(), own.budget()) {
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(wait), _) | (_, Err(wait)) => Err(wait),
            (Ok(a), Ok(b)) => Ok(match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }),
        }
    }

    /// How long the dispatch task pauses after sending `messages` in `bytes` to stay within
    /// the dispatch rates (zero within them).
    pub(crate) fn dispatch_wait(&self, messages: u64, bytes: u64) -> std::time::Duration {
        let (topic, own) = self.rates.lock().clone();
        topic.acquire(messages, bytes).max(own.acquire(messages, bytes))
    }

    /// Takes the unacknowledged-message limits of the topic's policies.
    pub fn set_limits(&self, limits: UnackedLimits) {
        self.inner.lock().delivery.set_limits(limits);
        self.wake.notify_one();
    }

    /// Acknowledges everything through `position` for the broker (message TTL, backlog
    /// eviction): the messages leave the backlog, whatever the subscription type.
    pub fn skip_through(&self, position: Position) -> bool {
        let view = self.ledger.positions();
        let changed = self.inner.lock().delivery.skip_through(position, &view);
        if changed {
            if let Some(cursor) = &self.cursor {
                cursor.mark_dirty();
            }
            self.wake.notify_one();
        }
        changed
    }

    /// Tells every consumer's client to reconnect (CLOSE_CONSUMER, as Pulsar's broker-initiated
    /// close) and detaches them: the topic is moving to another broker.
    pub fn disconnect_all(&self) {
        let mut inner = self.inner.lock();
        for consumer_id in inner.delivery.detach_all() {
            if let Some(sink) = inner.forget(consumer_id) {
                sink.closed_by_broker();
            }
        }
    }

    /// Moves the subscription so that the next message delivered is the one after
    /// `mark_delete` (a seek): acks after it are forgotten and every consumer is closed
    /// (CLOSE_CONSUMER), to subscribe again, as Pulsar does. Returns the consumers closed.
    pub fn reset(&self, mark_delete: Option<Position>) -> Vec<u64> {
        let mut inner = self.inner.lock();
        let closed = inner.delivery.seek(mark_delete);
        for consumer_id in &closed {
            if let Some(sink) = inner.forget(*consumer_id) {
                sink.closed_by_broker();
            }
        }
        drop(inner);
        if let Some(cursor) = &self.cursor {
            cursor.mark_dirty();
        }
        self.wake.notify_one();
        closed
    }

    /// On a terminated topic read to its end: tells each consumer not told yet
    /// (REACHED_END_OF_TOPIC, as Pulsar's broker does).
    pub(crate) fn announce_end_of_topic(&self) {
        if !self.ledger.is_terminated() {
            return;
        }
        let mut inner = self.inner.lock();
        if self.ledger.next_position(inner.delivery.read_after()).is_some() {
            return;
        }
        let untold: Vec<u64> = inner.sinks.keys().copied().filter(|id| !inner.told_end.contains(id)).collect();
        for consumer_id in untold {
            if let Some(sink) = inner.sinks.get(&consumer_id) {
                sink.reached_end_of_topic();
            }
            inner.told_end.insert(consumer_id);
        }
    }

    /// Wakes the dispatch task (the topic was terminated, a policy changed, ...).
    pub fn wake_dispatch(&self) {
        self.wake.notify_one();
    }

    /// Cancelled when the subscription closes: the dispatch task stops.
    pub(crate) fn stopped(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// The dispatch task's wake-up, registered before it asks [`Self::next`].
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// What the dispatch task should read next.
    pub(crate) fn next(&self) -> Next {
        let view = self.ledger.positions();
        self.inner.lock().delivery.next(now_ms(), &view)
    }

    /// Which consumer gets each of `entries` (read for `epoch`): the messages to send, per
    /// consumer in log order.
    pub(crate) fn dispatch(
        &self,
        entries: Vec<(Position, Bytes)>,
        epoch: u64,
        from_replay: bool,
    ) -> Vec<(Arc<dyn ConsumerSink>, Vec<OutgoingMessage>)> {
        let metas: Vec<(Position, EntryMeta)> =
            entries.iter().map(|(position, data)| (*position, entry_meta::parse(data))).collect();
        let mut inner = self.inner.lock();
        let sends = inner.delivery.dispatch(&metas, epoch, from_replay, now_ms());
        let mut batches: Vec<(u64, Arc<dyn ConsumerSink>, Vec<OutgoingMessage>)> = Vec::new();
        for send in sends {
            let Some(sink) = inner.sinks.get(&send.consumer_id) else { continue };
            let (position, data) = &entries[send.index];
            self.dispatched.record(metas[send.index].1.messages.max(0) as u64, data.len() as u64);
            let message = OutgoingMessage {
                position: *position,
                redelivery_count: send.redelivery_count,
                ack_set: send.ack_set,
                messages: metas[send.index].1.messages,
                data: data.clone(),
            };
            match batches.iter_mut().find(|(id, _, _)| *id == send.consumer_id) {
                Some((_, _, messages)) => messages.push(message),
                None => batches.push((send.consumer_id, sink.clone(), vec![message])),
            }
        }
        batches.into_iter().map(|(_, sink, messages)| (sink, messages)).collect()
    }

    /// Waits until every acknowledgement received so far is persisted; true if they are
    /// (always for a non-durable subscription, which has nothing to persist).
    pub async fn flush(&self) -> bool {
        match &self.cursor {
            Some(cursor) => cursor.flush().await,
            None => true,
        }
    }

    /// Removes the subscription's cursor for good.
    pub async fn delete(&self) -> Result<(), BrokerError> {
        if self.cursor.is_some() {
            self.ledger.delete_cursor(&self.name).await?;
        }
        Ok(())
    }

    /// Stops delivery, hands the cursor its latest state back and writes it.
    pub async fn close(&self) {
        self.stop.cancel();
        if let Some(cursor) = &self.cursor {
            let state = self.inner.lock().delivery.cursor().clone();
            cursor.take_back(state);
            cursor.close().await;
        }
    }
}
