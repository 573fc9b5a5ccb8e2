//! A subscription: a durable cursor on a topic plus the consumer(s) it delivers to.
//!
//! This version has Exclusive subscriptions: one consumer at a time, fed by one dispatcher
//! task (dispatcher/exclusive.rs). The subscription's mutable state sits behind one mutex that
//! is never held across an await; the dispatcher reads entries and sends messages outside it.
//!
//! Delivery: messages go out in log order from just after the mark-delete position, skipping
//! individually acknowledged ones. When a consumer detaches or asks for redelivery, delivery
//! restarts after the mark-delete position, so every unacknowledged message comes again
//! (at-least-once) with its redelivery count raised.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::BrokerError;
use crate::managed_ledger::cursor::CursorState;
use crate::managed_ledger::{ManagedCursor, ManagedLedger, Position};
use crate::metrics::Metrics;
use crate::protocol::Outbound;

/// A consumer as a subscription sees it: where to send, and how many messages it may get.
pub struct ConsumerHandle {
    pub consumer_id: u64,
    pub consumer_name: String,
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

struct Inner {
    cursor: CursorState,
    /// Last position handed to the dispatcher (delivered or skipped); `None`: from the start.
    read_after: Option<Position>,
    /// Raised whenever `read_after` is moved back, so an in-flight read is discarded.
    epoch: u64,
    consumer: Option<Arc<ConsumerHandle>>,
    dispatcher: Option<CancellationToken>,
    /// Positions sent to the consumer and not acknowledged, with the redelivery count they
    /// were sent with. Bounded by the consumer's permits.
    delivered: BTreeMap<Position, u32>,
    /// Redelivery counts of positions to be sent again.
    redeliveries: HashMap<Position, u32>,
}

pub struct Subscription {
    name: String,
    topic: String,
    ledger: Arc<ManagedLedger>,
    inner: Mutex<Inner>,
    /// Wakes the dispatcher: permits arrived, or delivery was reset.
    wake: Notify,
    /// The durable cursor: persists acks, owned by the managed ledger.
    cursor: Arc<ManagedCursor>,
}

/// What the dispatcher should do next.
pub(crate) enum Next {
    /// Nothing to send now: wait for permits or entries.
    Wait,
    Read {
        from: Position,
        max: u32,
        epoch: u64,
    },
}

impl Subscription {
    /// Opens the subscription, creating its cursor durably at `initial` if it is new.
    pub async fn open(
        topic: &str,
        name: &str,
        ledger: Arc<ManagedLedger>,
        initial: InitialPosition,
    ) -> Result<Arc<Self>, BrokerError> {
        let initial_mark_delete = match initial {
            InitialPosition::Earliest => None,
            InitialPosition::Latest => ledger.last_confirmed(),
        };
        let cursor = ledger.open_cursor(name, initial_mark_delete).await?;
        let state = cursor.state();
        let read_after = state.mark_delete;
        Ok(Arc::new(Subscription {
            name: name.to_owned(),
            topic: topic.to_owned(),
            ledger,
            inner: Mutex::new(Inner {
                cursor: state,
                read_after,
                epoch: 0,
                consumer: None,
                dispatcher: None,
                delivered: BTreeMap::new(),
                redeliveries: HashMap::new(),
            }),
            wake: Notify::new(),
            cursor,
        }))
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

    pub fn has_consumer(&self) -> bool {
        self.lock().consumer.is_some()
    }

    pub fn mark_delete(&self) -> Option<Position> {
        self.lock().cursor.mark_delete
    }

    /// Unacknowledged entries.
    pub fn backlog(&self) -> u64 {
        self.ledger.backlog(&self.lock().cursor)
    }

    /// Attaches the subscription's one consumer and starts delivering to it.
    pub fn attach(self: &Arc<Self>, consumer: Arc<ConsumerHandle>) -> Result<(), BrokerError> {
        let cancel = CancellationToken::new();
        {
            let mut inner = self.lock();
            if inner.consumer.is_some() {
                return Err(BrokerError::ConsumerBusy { topic: self.topic.clone(), subscription: self.name.clone() });
            }
            inner.consumer = Some(consumer.clone());
            inner.dispatcher = Some(cancel.clone());
            Self::rewind(&mut inner);
        }
        tokio::spawn(crate::dispatcher::exclusive::run(self.clone(), consumer, cancel));
        Ok(())
    }

    /// Detaches the consumer if it is this one; its unacknowledged messages will be delivered
    /// again to the next consumer.
    pub fn detach(&self, consumer_id: u64) -> bool {
        let mut inner = self.lock();
        if inner.consumer.as_ref().is_none_or(|c| c.consumer_id != consumer_id) {
            return false;
        }
        inner.consumer = None;
        if let Some(cancel) = inner.dispatcher.take() {
            cancel.cancel();
        }
        Self::rewind(&mut inner);
        true
    }

    /// Moves delivery back to just after the mark-delete position, counting a redelivery for
    /// every message already sent and not acknowledged.
    fn rewind(inner: &mut Inner) {
        for (position, count) in std::mem::take(&mut inner.delivered) {
            inner.redeliveries.insert(position, count + 1);
        }
        if inner.read_after != inner.cursor.mark_delete {
            inner.read_after = inner.cursor.mark_delete;
            inner.epoch += 1;
        }
    }

    pub fn add_permits(&self, permits: u32) {
        if let Some(consumer) = self.lock().consumer.clone() {
            consumer.permits.fetch_add(i64::from(permits), Ordering::SeqCst);
        }
        self.wake.notify_one();
    }

    /// Delivers every unacknowledged message again.
    pub fn redeliver_unacknowledged(&self) {
        Self::rewind(&mut self.lock());
        self.wake.notify_one();
    }

    pub fn ack(&self, positions: &[Position], cumulative: bool) {
        let mut inner = self.lock();
        let mut changed = false;
        for position in positions {
            changed |= if cumulative {
                inner.cursor.ack_cumulative(*position, &self.ledger)
            } else {
                inner.cursor.ack_individual(*position, &self.ledger)
            };
            inner.redeliveries.remove(position);
            inner.delivered.remove(position);
        }
        if changed {
            if let Some(mark) = inner.cursor.mark_delete {
                inner.redeliveries.retain(|p, _| *p > mark);
                inner.delivered = inner.delivered.split_off(&Position::new(mark.ledger_id, mark.entry_id + 1));
            }
            self.cursor.persist(&inner.cursor);
        }
    }

    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// The next read for the dispatcher.
    pub(crate) fn next(&self, consumer: &ConsumerHandle) -> Next {
        let permits = consumer.permits.load(Ordering::SeqCst);
        if permits <= 0 {
            return Next::Wait;
        }
        let inner = self.lock();
        match self.ledger.next_position(inner.read_after) {
            Some(from) => Next::Read { from, max: permits.min(i64::from(u32::MAX)) as u32, epoch: inner.epoch },
            None => Next::Wait,
        }
    }

    /// Takes a read entry for delivery: `Some(redelivery count)` if it should be sent, `None`
    /// if it is acknowledged already or the read is stale (delivery was reset meanwhile), and
    /// moves delivery past it.
    pub(crate) fn take(&self, position: Position, epoch: u64) -> Result<Option<u32>, ()> {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return Err(());
        }
        inner.read_after = Some(position);
        if inner.cursor.is_acked(position) {
            return Ok(None);
        }
        let count = inner.redeliveries.remove(&position).unwrap_or(0);
        inner.delivered.insert(position, count);
        Ok(Some(count))
    }

    /// Waits until every acknowledgement received so far is persisted.
    pub async fn flush(&self) {
        self.cursor.flush().await;
    }

    /// Removes the subscription's cursor for good.
    pub async fn delete(&self) -> Result<(), BrokerError> {
        self.ledger.delete_cursor(&self.name).await
    }

    /// Stops delivery and writes the cursor's latest state.
    pub async fn close(&self) {
        let cancel = self.lock().dispatcher.take();
        if let Some(cancel) = cancel {
            cancel.cancel();
        }
        self.cursor.close().await;
    }

    pub(crate) fn message_frame(consumer_id: u64, position: Position, redelivery_count: u32, data: Bytes) -> Outbound {
        Outbound {
            command: magnetar_proto::command::message(
                consumer_id,
                position.ledger_id,
                position.entry_id,
                redelivery_count,
            ),
            payload: Some(data),
        }
    }
}
