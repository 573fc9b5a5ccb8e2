//! A subscription: a cursor on a topic plus the consumers it delivers to.
//!
//! Types Exclusive, Failover, Shared and Key_Shared (dispatcher/ has the choice of consumer
//! for each). One dispatcher task per subscription (dispatcher/task.rs) reads entries and asks
//! [`Subscription::dispatch`] who gets each. The mutable state sits behind one mutex that is
//! never held across an await; reads and sends happen outside it.
//!
//! Delivery: new entries are read in log order after `read_after`. Messages to be sent again
//! (negative acks, a Shared consumer leaving, a Key_Shared key whose consumer has no permits,
//! delayed messages whose time came) wait in `replay`, which is served first, in position
//! order. A rewind (an Exclusive/Failover consumer change or redeliver-all) moves `read_after`
//! back to the mark-delete position and raises `epoch`, so an in-flight read is dropped.
//! Every message sent again carries its redelivery count, so clients' dead-letter policies
//! work.
//!
//! Key_Shared order while consumers join (Pulsar's "recently joined consumers"): a consumer
//! joining a subscription that already has consumers is given the last position read so far;
//! it gets no message after that position until every message up to it is acknowledged, so
//! a key moving to it cannot overtake messages of that key still held by another consumer.
//!
//! Non-durable subscriptions (readers) have no `ManagedCursor`: acks stay in memory and the
//! subscription is dropped when its consumer leaves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use magnetar_proto::command;
use magnetar_proto::frame::Payload;
use magnetar_proto::pulsar::{base_command::Type, BaseCommand, CommandActiveConsumerChange};
use tokio::sync::mpsc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::dispatcher::key_shared::{self, HashRange, Selector};
use crate::dispatcher::{exclusive, failover, shared, SubscriptionType, MAX_READ_BATCH, MAX_REPLAY};
use crate::error::BrokerError;
use crate::managed_ledger::cursor::{is_valid_position, position_before, CursorState};
use crate::managed_ledger::{ManagedCursor, ManagedLedger, Position};
use crate::metrics::Metrics;
use crate::protocol::Outbound;

/// A consumer as a subscription sees it: where to send, and how many messages it may get.
pub struct ConsumerHandle {
    pub consumer_id: u64,
    pub consumer_name: String,
    /// Failover choice: lower is preferred, as Pulsar's priority level.
    pub priority_level: i32,
    /// Messages the consumer asked for (FLOW) and has not been sent yet.
    pub permits: AtomicI64,
    /// The consumer's connection writer.
    pub outbound: mpsc::Sender<Outbound>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    Earliest,
    Latest,
}

/// Where a new cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Initial(InitialPosition),
    /// The mark-delete position (`None`: before the first entry).
    After(Option<Position>),
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

/// A message sent and not acknowledged.
#[derive(Debug, Clone, Copy)]
struct Delivered {
    consumer_id: u64,
    redelivery_count: u32,
    hash: u32,
}

/// A message to be sent again: its sticky key hash (Key_Shared keeps per-key order with it).
type Replay = BTreeMap<Position, u32>;

struct Inner {
    sub_type: SubscriptionType,
    cursor: CursorState,
    /// Last position read in log order (delivered, held or skipped); `None`: from the start.
    read_after: Option<Position>,
    /// Raised whenever `read_after` is moved back, so an in-flight read is discarded.
    epoch: u64,
    /// Attached consumers in subscription order.
    consumers: Vec<Arc<ConsumerHandle>>,
    /// Exclusive and Failover: the consumer that receives.
    active: Option<u64>,
    /// Shared: where the round robin goes on.
    round_robin: usize,
    /// Key_Shared: the key -> consumer choice.
    selector: Option<Selector>,
    /// Key_Shared: consumer id -> last position read when it joined.
    recently_joined: BTreeMap<u64, Position>,
    delivered: BTreeMap<Position, Delivered>,
    replay: Replay,
    /// Set when a pass over `replay` sent nothing (consumers without permits); cleared by
    /// anything that may change that. New entries are read meanwhile.
    replay_blocked: bool,
    /// Times each position was delivered before, for the next send.
    redelivery_counts: HashMap<Position, u32>,
    /// Batch entries partly acknowledged: the bits of indexes still unacknowledged.
    batch_acks: HashMap<Position, Vec<i64>>,
    /// Shared: messages held until their deliver-at time (ms since the epoch).
    delayed: BTreeSet<(u64, Position)>,
}

pub struct Subscription {
    name: String,
    topic: String,
    /// The partition this topic is, for Failover's choice.
    partition_index: Option<u32>,
    ledger: Arc<ManagedLedger>,
    inner: Mutex<Inner>,
    /// Wakes the dispatcher: permits arrived, acks, consumers changed, delivery was reset.
    wake: Notify,
    /// The durable cursor: persists acks, owned by the managed ledger; `None` for readers.
    cursor: Option<Arc<ManagedCursor>>,
    dispatcher: CancellationToken,
}

/// What the dispatcher should do next.
pub(crate) enum Next {
    /// Nothing to send now: wait for permits or entries, or until this time (ms).
    Wait { until_ms: Option<u64> },
    /// Read these positions (messages to send again).
    Replay { positions: Vec<Position>, epoch: u64 },
    /// Read new entries from `from`.
    Read { from: Position, max: u32, epoch: u64 },
}

/// What the dispatcher learnt of an entry by parsing it.
pub(crate) struct EntryInfo {
    pub messages: i64,
    pub deliver_at_ms: Option<u64>,
    pub hash: u32,
}

impl EntryInfo {
    pub fn parse(data: &Bytes) -> Self {
        // A payload the broker cannot parse still goes out: the client reports it.
        match Payload::parse(data.clone()) {
            Ok(payload) => {
                let metadata = payload.metadata();
                let key = if metadata.num_messages_in_batch.is_some() {
                    first_batch_message_key(&payload.body())
                } else {
                    sticky_key(metadata.ordering_key.as_deref(), metadata.partition_key.as_deref())
                };
                EntryInfo {
                    messages: i64::from(payload.num_messages()),
                    deliver_at_ms: metadata.deliver_at_time.and_then(|t| u64::try_from(t).ok()),
                    hash: key_shared::sticky_key_hash(&key),
                }
            }
            Err(_) => EntryInfo { messages: 1, deliver_at_ms: None, hash: key_shared::sticky_key_hash(b"") },
        }
    }
}

/// The ordering key, else the partition key, else none (the empty key).
fn sticky_key(ordering: Option<&[u8]>, partition: Option<&str>) -> Vec<u8> {
    match (ordering, partition) {
        (Some(ordering), _) if !ordering.is_empty() => ordering.to_vec(),
        (_, Some(partition)) => partition.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// A batch entry's sticky key is its first message's, as Pulsar's `peekStickyKey`: the body
/// starts with `[u32 big-endian size][SingleMessageMetadata]`.
fn first_batch_message_key(body: &[u8]) -> Vec<u8> {
    use prost::Message as _;
    let Some(size) = body.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
        return Vec::new();
    };
    let Some(encoded) = body.get(4..4usize.saturating_add(size)) else { return Vec::new() };
    match magnetar_proto::pulsar::SingleMessageMetadata::decode(encoded) {
        Ok(single) => sticky_key(single.ordering_key.as_deref(), single.partition_key.as_deref()),
        Err(_) => Vec::new(),
    }
}

/// The dispatcher's answer for one entry.
pub(crate) enum Dispatch {
    /// Delivery was reset while the entry was read: drop the rest of the read.
    Stale,
    /// Nothing to send (acknowledged, held, or sent another way).
    Skip,
    Send {
        consumer: Arc<ConsumerHandle>,
        redelivery_count: u32,
        ack_set: Vec<i64>,
    },
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Subscription {
    /// Opens the subscription. A durable one gets its cursor (created at `start` if new);
    /// a non-durable one (reader) starts at `start` with its state in memory only.
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
        let (cursor, state) = if durable {
            let cursor = ledger.open_cursor(name, start_mark_delete).await?;
            let state = cursor.state();
            (Some(cursor), state)
        } else {
            (None, CursorState { mark_delete: start_mark_delete, ..Default::default() })
        };
        let read_after = state.mark_delete;
        let subscription = Arc::new(Subscription {
            name: name.to_owned(),
            topic: topic.to_owned(),
            partition_index: partition_index(topic),
            ledger,
            inner: Mutex::new(Inner {
                sub_type,
                cursor: state,
                read_after,
                epoch: 0,
                consumers: Vec::new(),
                active: None,
                round_robin: 0,
                selector: None,
                recently_joined: BTreeMap::new(),
                delivered: BTreeMap::new(),
                replay: BTreeMap::new(),
                replay_blocked: false,
                redelivery_counts: HashMap::new(),
                batch_acks: HashMap::new(),
                delayed: BTreeSet::new(),
            }),
            wake: Notify::new(),
            cursor,
            dispatcher: CancellationToken::new(),
        });
        tokio::spawn(crate::dispatcher::run(subscription.clone(), subscription.dispatcher.clone()));
        Ok(subscription)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ledger(&self) -> &Arc<ManagedLedger> {
        &self.ledger
    }

    pub fn is_durable(&self) -> bool {
        self.cursor.is_some()
    }

    pub fn has_consumer(&self) -> bool {
        !self.lock().consumers.is_empty()
    }

    pub fn has_consumer_id(&self, consumer_id: u64) -> bool {
        self.lock().consumers.iter().any(|c| c.consumer_id == consumer_id)
    }

    pub fn consumer_count(&self) -> usize {
        self.lock().consumers.len()
    }

    pub fn sub_type(&self) -> SubscriptionType {
        self.lock().sub_type
    }

    pub fn mark_delete(&self) -> Option<Position> {
        self.lock().cursor.mark_delete
    }

    /// Unacknowledged entries.
    pub fn backlog(&self) -> u64 {
        self.ledger.backlog(&self.lock().cursor)
    }

    fn wake(&self, inner: &mut Inner) {
        inner.replay_blocked = false;
        self.wake.notify_one();
    }

    /// Attaches a consumer, refusing it as Pulsar does: a type other than the subscription's
    /// (ConsumerBusy), a second Exclusive consumer (ConsumerBusy), overlapping STICKY ranges.
    pub fn attach(&self, consumer: Arc<ConsumerHandle>, options: &SubscribeOptions) -> Result<(), BrokerError> {
        let mut inner = self.lock();
        if inner.consumers.is_empty() {
            inner.sub_type = options.sub_type;
            inner.selector = None;
            inner.recently_joined.clear();
        } else if inner.sub_type != options.sub_type {
            return Err(BrokerError::SubscriptionBusy {
                what: format!(
                    "Subscription {} is of different type: {:?}, requested {:?}",
                    self.name, inner.sub_type, options.sub_type
                ),
            });
        }
        if inner.consumers.iter().any(|c| c.consumer_id == consumer.consumer_id) {
            return Err(BrokerError::NotAllowed {
                what: format!("consumer id {} is already in use", consumer.consumer_id),
            });
        }
        match options.sub_type {
            SubscriptionType::Exclusive => {
                if !inner.consumers.is_empty() {
                    return Err(BrokerError::ConsumerBusy {
                        topic: self.topic.clone(),
                        subscription: self.name.clone(),
                    });
                }
            }
            SubscriptionType::KeyShared => {
                let key_options = options.key_shared.clone().unwrap_or(KeySharedOptions {
                    sticky: false,
                    ranges: Vec::new(),
                    allow_out_of_order: false,
                });
                let selector = inner.selector.get_or_insert_with(|| {
                    if key_options.sticky {
                        Selector::sticky()
                    } else {
                        Selector::auto_split()
                    }
                });
                if matches!(selector, Selector::Sticky { .. }) != key_options.sticky {
                    return Err(BrokerError::SubscriptionBusy {
                        what: format!("Subscription {} uses another Key_Shared mode", self.name),
                    });
                }
                selector
                    .add(consumer.consumer_id, &consumer.consumer_name, &key_options.ranges)
                    .map_err(|error| BrokerError::ConsumerAssign { what: error.to_string() })?;
                if !key_options.allow_out_of_order && !inner.consumers.is_empty() {
                    if let Some(read) = inner.read_after.filter(|r| inner.cursor.mark_delete.is_none_or(|m| m < *r)) {
                        inner.recently_joined.insert(consumer.consumer_id, read);
                    }
                }
            }
            SubscriptionType::Shared | SubscriptionType::Failover => {}
        }
        inner.consumers.push(consumer);
        self.choose_active(&mut inner);
        self.wake(&mut inner);
        Ok(())
    }

    /// Exclusive/Failover: chooses the active consumer; on a change the unacknowledged
    /// messages go again to the new one.
    fn choose_active(&self, inner: &mut Inner) {
        let chosen = match inner.sub_type {
            SubscriptionType::Exclusive => {
                exclusive::pick(&inner.consumers.iter().map(|c| c.consumer_id).collect::<Vec<_>>())
            }
            SubscriptionType::Failover => {
                let candidates: Vec<failover::Candidate<'_>> = inner
                    .consumers
                    .iter()
                    .map(|c| failover::Candidate {
                        consumer_id: c.consumer_id,
                        consumer_name: &c.consumer_name,
                        priority_level: c.priority_level,
                    })
                    .collect();
                failover::pick_active(&candidates, self.partition_index)
            }
            SubscriptionType::Shared | SubscriptionType::KeyShared => None,
        };
        if chosen != inner.active {
            inner.active = chosen;
            Self::rewind(inner);
        }
    }

    /// Failover: tells every consumer whether it is the active one (ACTIVE_CONSUMER_CHANGE).
    /// Called after a consumer's SUBSCRIBE was answered and when one leaves.
    pub fn announce_active(&self) {
        let inner = self.lock();
        if inner.sub_type == SubscriptionType::Failover {
            let chosen = inner.active;
            for consumer in &inner.consumers {
                let frame = BaseCommand {
                    command_type: Type::ActiveConsumerChange as i32,
                    active_consumer_change: Some(CommandActiveConsumerChange {
                        consumer_id: consumer.consumer_id,
                        is_active: Some(Some(consumer.consumer_id) == chosen),
                    }),
                    ..Default::default()
                };
                // The connection queue is bounded; a full one means a stuck client, which
                // learns the state again on its next change.
                let _ = consumer.outbound.try_send(Outbound::command(frame));
            }
        }
    }

    /// Detaches the consumer if attached; its unacknowledged messages go to the others
    /// (Shared, Key_Shared) or to the next active consumer (Exclusive, Failover).
    pub fn detach(&self, consumer_id: u64) -> bool {
        let mut inner = self.lock();
        let Some(index) = inner.consumers.iter().position(|c| c.consumer_id == consumer_id) else { return false };
        inner.consumers.remove(index);
        match inner.sub_type {
            SubscriptionType::Shared | SubscriptionType::KeyShared => {
                if let Some(selector) = inner.selector.as_mut() {
                    selector.remove(consumer_id);
                }
                inner.recently_joined.remove(&consumer_id);
                Self::return_to_replay(&mut inner, |d| d.consumer_id == consumer_id);
            }
            SubscriptionType::Exclusive | SubscriptionType::Failover => {
                if inner.active == Some(consumer_id) {
                    inner.active = None;
                }
                self.choose_active(&mut inner);
                if inner.consumers.is_empty() {
                    Self::rewind(&mut inner);
                }
            }
        }
        self.wake(&mut inner);
        drop(inner);
        self.announce_active();
        true
    }

    /// Moves delivered messages matching `which` back for redelivery, counting one more.
    fn return_to_replay(inner: &mut Inner, which: impl Fn(&Delivered) -> bool) {
        let returned: Vec<(Position, Delivered)> =
            inner.delivered.iter().filter(|(_, d)| which(d)).map(|(p, d)| (*p, *d)).collect();
        for (position, delivered) in returned {
            inner.delivered.remove(&position);
            inner.redelivery_counts.insert(position, delivered.redelivery_count + 1);
            inner.replay.insert(position, delivered.hash);
        }
    }

    /// Moves delivery back to just after the mark-delete position, counting a redelivery for
    /// every message already sent and not acknowledged.
    fn rewind(inner: &mut Inner) {
        for (position, delivered) in std::mem::take(&mut inner.delivered) {
            inner.redelivery_counts.insert(position, delivered.redelivery_count + 1);
        }
        inner.replay.clear();
        inner.delayed.clear();
        inner.read_after = inner.cursor.mark_delete;
        inner.epoch += 1;
    }

    /// FLOW: the consumer may get `permits` more messages.
    pub fn add_permits(&self, consumer_id: u64, permits: u32) {
        let mut inner = self.lock();
        if let Some(consumer) = inner.consumers.iter().find(|c| c.consumer_id == consumer_id) {
            consumer.permits.fetch_add(i64::from(permits), Ordering::SeqCst);
        }
        self.wake(&mut inner);
    }

    /// REDELIVER_UNACKNOWLEDGED_MESSAGES: the listed messages (negative acks) or, with none
    /// listed, every unacknowledged message of the consumer, are delivered again. Ids the
    /// consumer was not sent are ignored.
    pub fn redeliver(&self, consumer_id: u64, positions: &[Position]) {
        let mut inner = self.lock();
        let single_active = matches!(inner.sub_type, SubscriptionType::Exclusive | SubscriptionType::Failover);
        if positions.is_empty() {
            if single_active {
                if inner.active == Some(consumer_id) {
                    Self::rewind(&mut inner);
                }
            } else {
                Self::return_to_replay(&mut inner, |d| d.consumer_id == consumer_id);
            }
        } else {
            let listed: BTreeSet<Position> = positions.iter().copied().collect();
            let returned: Vec<(Position, Delivered)> = inner
                .delivered
                .iter()
                .filter(|(p, d)| listed.contains(p) && d.consumer_id == consumer_id)
                .map(|(p, d)| (*p, *d))
                .collect();
            for (position, delivered) in returned {
                inner.delivered.remove(&position);
                inner.redelivery_counts.insert(position, delivered.redelivery_count + 1);
                inner.replay.insert(position, delivered.hash);
            }
        }
        self.wake(&mut inner);
    }

    /// Acknowledges messages. `ids` are positions with their batch ack set (bits of the
    /// batch indexes still unacknowledged; empty: the whole entry). Positions that are not
    /// entries of the topic are ignored. Cumulative acks are refused on Shared and
    /// Key_Shared, as Pulsar refuses them.
    pub fn ack(&self, ids: &[(Position, Vec<i64>)], cumulative: bool) -> Result<(), BrokerError> {
        let mut inner = self.lock();
        if cumulative && inner.sub_type.individual_ack_only() {
            return Err(BrokerError::NotAllowed {
                what: format!("Cumulative ack is not supported for {:?} subscription", inner.sub_type),
            });
        }
        let mut changed = false;
        for (position, ack_set) in ids {
            let position = *position;
            if !is_valid_position(&self.ledger, position) {
                continue;
            }
            let partial = !ack_set.is_empty() && ack_set.iter().any(|word| *word != 0);
            if partial {
                let remaining = inner.batch_acks.entry(position).or_insert_with(|| ack_set.clone());
                for (word, acked) in remaining.iter_mut().zip(ack_set) {
                    *word &= *acked;
                }
                let done = remaining.iter().all(|word| *word == 0);
                if cumulative && position.entry_id > 0 {
                    changed |= inner
                        .cursor
                        .ack_cumulative(Position::new(position.ledger_id, position.entry_id - 1), &self.ledger);
                }
                if !done {
                    continue;
                }
            }
            changed |= if cumulative {
                inner.cursor.ack_cumulative(position, &self.ledger)
            } else {
                inner.cursor.ack_individual(position, &self.ledger)
            };
            Self::forget(&mut inner, position);
        }
        if changed {
            if let Some(mark) = inner.cursor.mark_delete {
                let after = Position::new(mark.ledger_id, mark.entry_id + 1);
                inner.delivered = inner.delivered.split_off(&after);
                inner.replay = inner.replay.split_off(&after);
                inner.redelivery_counts.retain(|p, _| *p > mark);
                inner.batch_acks.retain(|p, _| *p > mark);
                // Recently joined consumers get everything once all before their join is acked.
                inner.recently_joined.retain(|_, joined| *joined > mark);
            }
            if let Some(cursor) = &self.cursor {
                cursor.persist(&inner.cursor);
            }
        }
        self.wake(&mut inner);
        Ok(())
    }

    fn forget(inner: &mut Inner, position: Position) {
        inner.redelivery_counts.remove(&position);
        inner.delivered.remove(&position);
        inner.replay.remove(&position);
        inner.batch_acks.remove(&position);
    }

    /// Tells every consumer's client to reconnect (CLOSE_CONSUMER, as Pulsar's broker-initiated
    /// close) and detaches them: the topic is moving to another broker.
    pub fn disconnect_all(&self) {
        let mut inner = self.lock();
        for consumer in std::mem::take(&mut inner.consumers) {
            let frame = command::close_consumer(consumer.consumer_id, u64::MAX);
            let _ = consumer.outbound.try_send(Outbound::command(frame));
        }
        inner.active = None;
    }

    /// Moves the subscription so that the next message delivered is the one after
    /// `mark_delete` (a seek): acks after it are forgotten and every consumer is closed
    /// (CLOSE_CONSUMER), to subscribe again, as Pulsar does. Returns the consumers closed.
    pub fn reset(&self, mark_delete: Option<Position>) -> Vec<u64> {
        let mut inner = self.lock();
        let closed: Vec<Arc<ConsumerHandle>> = std::mem::take(&mut inner.consumers);
        for consumer in &closed {
            // Request id -1, as Pulsar's broker-initiated close.
            let frame = command::close_consumer(consumer.consumer_id, u64::MAX);
            let _ = consumer.outbound.try_send(Outbound::command(frame));
        }
        inner.active = None;
        inner.selector = None;
        inner.recently_joined.clear();
        inner.cursor.reset(mark_delete);
        inner.delivered.clear();
        inner.redelivery_counts.clear();
        inner.batch_acks.clear();
        Self::rewind(&mut inner);
        if let Some(cursor) = &self.cursor {
            cursor.persist(&inner.cursor);
        }
        self.wake(&mut inner);
        closed.iter().map(|c| c.consumer_id).collect()
    }

    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Consumers that may receive now, with their permits.
    fn receivers(inner: &Inner) -> Vec<(u64, i64)> {
        inner
            .consumers
            .iter()
            .filter(|c| inner.active.is_none_or(|a| a == c.consumer_id))
            .map(|c| (c.consumer_id, c.permits.load(Ordering::SeqCst)))
            .collect()
    }

    /// The next read for the dispatcher.
    pub(crate) fn next(&self) -> Next {
        let mut inner = self.lock();
        let now = now_ms();
        while let Some(&(at, position)) = inner.delayed.first() {
            if at > now {
                break;
            }
            inner.delayed.pop_first();
            inner.replay.insert(position, 0);
            inner.replay_blocked = false;
        }
        let until_ms = inner.delayed.first().map(|(at, _)| *at);
        let single_active = matches!(inner.sub_type, SubscriptionType::Exclusive | SubscriptionType::Failover);
        if single_active && inner.active.is_none() {
            return Next::Wait { until_ms };
        }
        let permits: i64 = Self::receivers(&inner).iter().map(|(_, p)| (*p).max(0)).sum();
        if permits <= 0 {
            return Next::Wait { until_ms };
        }
        let max = permits.min(i64::from(MAX_READ_BATCH)) as usize;
        if !inner.replay.is_empty() && !inner.replay_blocked {
            let positions = inner.replay.keys().take(max).copied().collect();
            return Next::Replay { positions, epoch: inner.epoch };
        }
        if inner.replay.len() >= MAX_REPLAY {
            return Next::Wait { until_ms };
        }
        match self.ledger.next_position(inner.read_after) {
            Some(from) => Next::Read { from, max: max as u32, epoch: inner.epoch },
            None => Next::Wait { until_ms },
        }
    }

    /// After a pass over the replay set: if nothing went out, new entries are read until
    /// something changes.
    pub(crate) fn replay_pass_done(&self, sent_any: bool, epoch: u64) {
        let mut inner = self.lock();
        if !sent_any && inner.epoch == epoch {
            inner.replay_blocked = true;
        }
    }

    /// Decides what happens to a read entry and takes what it needs: the consumer's permits,
    /// the delivery position.
    pub(crate) fn dispatch(&self, position: Position, info: &EntryInfo, epoch: u64, from_replay: bool) -> Dispatch {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return Dispatch::Stale;
        }
        if from_replay {
            if !inner.replay.contains_key(&position) {
                return Dispatch::Skip;
            }
        } else {
            if inner.read_after.is_none_or(|r| position > r) {
                inner.read_after = Some(position);
            }
            if inner.delivered.contains_key(&position) || inner.replay.contains_key(&position) {
                return Dispatch::Skip;
            }
        }
        if inner.cursor.is_acked(position) {
            Self::forget(&mut inner, position);
            return Dispatch::Skip;
        }
        if inner.sub_type == SubscriptionType::Shared {
            if let Some(at) = info.deliver_at_ms.filter(|at| *at > now_ms()) {
                inner.replay.remove(&position);
                inner.delayed.insert((at, position));
                return Dispatch::Skip;
            }
        }
        let chosen = match inner.sub_type {
            SubscriptionType::Exclusive | SubscriptionType::Failover => {
                inner.active.filter(|_| Self::receivers(&inner).iter().any(|(_, p)| *p > 0))
            }
            SubscriptionType::Shared => {
                let receivers = Self::receivers(&inner);
                shared::pick_round_robin(&receivers, &mut inner.round_robin)
            }
            SubscriptionType::KeyShared => {
                // A key with messages waiting keeps its order: new ones wait behind them.
                let key_waiting = !from_replay && inner.replay.values().any(|h| *h == info.hash);
                let owner = inner.selector.as_ref().and_then(|s| s.select(info.hash));
                owner.filter(|owner| {
                    !key_waiting
                        && inner.recently_joined.get(owner).is_none_or(|joined| position <= *joined)
                        && inner
                            .consumers
                            .iter()
                            .any(|c| c.consumer_id == *owner && c.permits.load(Ordering::SeqCst) > 0)
                })
            }
        };
        let Some(consumer) = chosen.and_then(|id| inner.consumers.iter().find(|c| c.consumer_id == id).cloned()) else {
            // Nobody can take it now: it waits in the replay set, in position order.
            inner.replay.insert(position, info.hash);
            return Dispatch::Skip;
        };
        consumer.permits.fetch_sub(info.messages, Ordering::SeqCst);
        inner.replay.remove(&position);
        let redelivery_count = inner.redelivery_counts.get(&position).copied().unwrap_or(0);
        inner
            .delivered
            .insert(position, Delivered { consumer_id: consumer.consumer_id, redelivery_count, hash: info.hash });
        let ack_set = inner.batch_acks.get(&position).cloned().unwrap_or_default();
        Dispatch::Send { consumer, redelivery_count, ack_set }
    }

    /// Waits until every acknowledgement received so far is persisted.
    pub async fn flush(&self) {
        if let Some(cursor) = &self.cursor {
            cursor.flush().await;
        }
    }

    /// Removes the subscription's cursor for good.
    pub async fn delete(&self) -> Result<(), BrokerError> {
        if self.cursor.is_some() {
            self.ledger.delete_cursor(&self.name).await?;
        }
        Ok(())
    }

    /// Stops delivery and writes the cursor's latest state.
    pub async fn close(&self) {
        self.dispatcher.cancel();
        if let Some(cursor) = &self.cursor {
            cursor.close().await;
        }
    }

    pub(crate) fn message_frame(
        consumer_id: u64,
        position: Position,
        redelivery_count: u32,
        ack_set: Vec<i64>,
        data: Bytes,
    ) -> Outbound {
        let mut frame = command::message(consumer_id, position.ledger_id, position.entry_id, redelivery_count);
        if let Some(message) = frame.message.as_mut() {
            message.ack_set = ack_set;
        }
        Outbound { command: frame, payload: Some(data) }
    }
}

/// The mark-delete position that makes the first entry published at or after `time_ms` the
/// next one delivered (the end if there is none): a seek by time, a reader's rollback. A
/// linear scan from the oldest entry, reading runs of entries.
pub async fn mark_delete_for_publish_time(
    ledger: &ManagedLedger,
    time_ms: u64,
) -> Result<Option<Position>, BrokerError> {
    let mut after = None;
    while let Some(from) = ledger.next_position(after) {
        let entries = ledger.read_entries(from, MAX_READ_BATCH).await?;
        if entries.is_empty() {
            break;
        }
        for (position, data) in entries {
            let published = Payload::parse(data).map_or(0, |p| p.metadata().publish_time);
            if published >= time_ms {
                return Ok(after);
            }
            after = Some(position);
        }
    }
    Ok(after)
}

/// `<topic>-partition-<i>` is partition `i`.
fn partition_index(topic: &str) -> Option<u32> {
    let (_, index) = topic.rsplit_once("-partition-")?;
    index.parse().ok()
}

/// The mark-delete position that makes `position` the next message delivered.
pub fn start_before(ledger: &ManagedLedger, position: Position) -> Option<Position> {
    match ledger.last_confirmed() {
        Some(last) if position > last => Some(last),
        None => None,
        Some(_) => position_before(ledger, position),
    }
}

#[cfg(test)]
mod tests {
    use super::partition_index;

    #[test]
    fn batch_entries_take_the_sticky_key_of_their_first_message() {
        use prost::Message as _;
        let single = magnetar_proto::pulsar::SingleMessageMetadata {
            partition_key: Some("k1".to_owned()),
            payload_size: 1,
            ..Default::default()
        };
        let encoded = single.encode_to_vec();
        let mut body = (encoded.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&encoded);
        body.push(b'x');
        assert_eq!(super::first_batch_message_key(&body), b"k1".to_vec());
        assert_eq!(super::first_batch_message_key(&body[..3]), Vec::<u8>::new());
        assert_eq!(super::sticky_key(Some(b"o".as_slice()), Some("p")), b"o".to_vec());
        assert_eq!(super::sticky_key(Some(b"".as_slice()), Some("p")), b"p".to_vec());
    }

    #[test]
    fn partition_index_is_read_from_the_topic_name() {
        assert_eq!(partition_index("persistent://public/default/t-partition-3"), Some(3));
        assert_eq!(partition_index("persistent://public/default/t"), None);
        assert_eq!(partition_index("persistent://public/default/t-partition-x"), None);
    }
}
