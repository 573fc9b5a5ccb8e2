//! Non-persistent topics (`non-persistent://`), as Pulsar's NonPersistentTopic: messages go
//! from a producer straight to the consumers of each subscription, at most once. Nothing is
//! written to bookies, acknowledgements are not kept, a message a subscription cannot take
//! now (no consumer, or the chosen one has no permits) is dropped and counted. Each
//! subscription type picks its consumer with the same [`Dispatcher`] as persistent topics.
//! Every message is delivered and receipted with message id 0:0, as Pulsar does.
//!
//! A topic lives in memory on the broker owning its bundle while it has producers or
//! consumers; it is dropped when the last one leaves and closed (clients told to reconnect)
//! when its bundle is unloaded.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::dispatcher::{Consumer, Dispatcher, Joining, Offer, SubscribeOptions};
use crate::error::BrokerError;
use crate::managed_ledger::Position;
use crate::stats::{ConsumerStats, Meter, ProducerStats};
use crate::subscription::{entry_meta, ConsumerSink, OutgoingMessage};
use crate::topic::AccessMode;
use crate::topic_name::TopicName;

/// The position every non-persistent message is delivered at (Pulsar's 0:0).
pub const DELIVERED_AT: Position = Position { ledger_id: 0, entry_id: 0 };

/// A consumer attaching to a non-persistent subscription.
pub struct NpConsumer {
    /// Unique in the broker (connections' consumer ids are only unique per connection).
    pub key: u64,
    pub name: String,
    pub priority_level: i32,
    pub sink: Arc<dyn ConsumerSink>,
    pub stats: Arc<ConsumerStats>,
}

struct Attached {
    sink: Arc<dyn ConsumerSink>,
    stats: Arc<ConsumerStats>,
}

struct NpSubscription {
    dispatcher: Box<dyn Dispatcher>,
    /// The dispatcher's view: ids are consumer keys, permits as granted by FLOW.
    consumers: Vec<Consumer>,
    attached: HashMap<u64, Attached>,
    dispatched: Meter,
    dropped: Meter,
    /// The consumer last told it is active (Failover).
    active: Option<u64>,
}

impl NpSubscription {
    fn active(&self) -> Option<u64> {
        if self.dispatcher.sub_type().single_active() {
            self.dispatcher.pick_active(&self.consumers)
        } else {
            None
        }
    }

    /// Tells consumers who is active when it changed (Failover, as persistent subscriptions).
    fn announce_active(&mut self) {
        if !self.dispatcher.announces_active() {
            return;
        }
        let active = self.active();
        if active == self.active {
            return;
        }
        self.active = active;
        for (key, consumer) in &self.attached {
            consumer.sink.active_changed(Some(*key) == active);
        }
    }
}

struct NpProducer {
    stats: Arc<ProducerStats>,
    exclusive: bool,
    /// Tells its client the topic closed (CLOSE_PRODUCER).
    closer: Option<Box<dyn FnOnce() + Send>>,
}

#[derive(Default)]
struct Inner {
    producers: HashMap<u64, NpProducer>,
    subscriptions: BTreeMap<String, NpSubscription>,
}

pub struct NonPersistentTopic {
    name: TopicName,
    inner: Mutex<Inner>,
    closed: AtomicBool,
    /// Messages and bytes published.
    received: Meter,
    /// Messages no subscription took, summed over subscriptions.
    dropped: Meter,
}

impl NonPersistentTopic {
    pub fn new(name: TopicName) -> Arc<Self> {
        Arc::new(NonPersistentTopic {
            name,
            inner: Mutex::default(),
            closed: AtomicBool::new(false),
            received: Meter::default(),
            dropped: Meter::default(),
        })
    }

    pub fn name(&self) -> &TopicName {
        &self.name
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Whether nobody uses it any more (the broker drops it).
    pub fn is_idle(&self) -> bool {
        let inner = self.inner.lock();
        inner.producers.is_empty() && inner.subscriptions.is_empty()
    }

    /// Registers a producer. Shared producers share the topic; an Exclusive one is alone
    /// (ProducerFenced otherwise); ExclusiveWithFencing closes the others first.
    pub fn add_producer(
        &self,
        key: u64,
        stats: Arc<ProducerStats>,
        mode: AccessMode,
        closer: Box<dyn FnOnce() + Send>,
    ) -> Result<(), BrokerError> {
        if self.is_closed() {
            return Err(BrokerError::ServiceUnitNotReady { what: format!("topic {} is closing", self.name) });
        }
        let mut fenced_out = Vec::new();
        {
            let mut inner = self.inner.lock();
            if inner.producers.values().any(|p| p.stats.name == stats.name) {
                return Err(BrokerError::ProducerBusy { topic: self.name.to_string(), producer: stats.name.clone() });
            }
            let exclusive_held = inner.producers.values().any(|p| p.exclusive);
            let fenced =
                |reason: &str| BrokerError::ProducerFenced { topic: self.name.to_string(), reason: reason.into() };
            match mode {
                AccessMode::Shared if exclusive_held => {
                    return Err(BrokerError::ProducerBusy {
                        topic: self.name.to_string(),
                        producer: "an exclusive producer".to_owned(),
                    })
                }
                AccessMode::Shared => {}
                AccessMode::Exclusive if exclusive_held => {
                    return Err(fenced("topic has an existing exclusive producer"))
                }
                AccessMode::Exclusive if !inner.producers.is_empty() => {
                    return Err(fenced("topic has existing shared producers"))
                }
                AccessMode::Exclusive => {}
                AccessMode::WaitForExclusive => {
                    return Err(BrokerError::NotSupported {
                        what: "access mode WaitForExclusive on a non-persistent topic".to_owned(),
                    })
                }
                AccessMode::ExclusiveWithFencing => {
                    fenced_out = inner.producers.drain().filter_map(|(_, producer)| producer.closer).collect();
                }
            }
            let exclusive = mode != AccessMode::Shared;
            inner.producers.insert(key, NpProducer { stats, exclusive, closer: Some(closer) });
        }
        for closer in fenced_out {
            closer();
        }
        Ok(())
    }

    pub fn remove_producer(&self, key: u64) {
        self.inner.lock().producers.remove(&key);
    }

    /// Attaches a consumer to `subscription` (created with its first consumer, dropped with
    /// its last). A subscription keeps its type while it has consumers.
    pub fn subscribe(
        &self,
        subscription: &str,
        options: &SubscribeOptions,
        consumer: NpConsumer,
    ) -> Result<(), BrokerError> {
        if self.is_closed() {
            return Err(BrokerError::ServiceUnitNotReady { what: format!("topic {} is closing", self.name) });
        }
        let mut inner = self.inner.lock();
        let entry = inner.subscriptions.entry(subscription.to_owned()).or_insert_with(|| NpSubscription {
            dispatcher: options.sub_type.dispatcher(self.name.partition_of().map(|(_, index)| index)),
            consumers: Vec::new(),
            attached: HashMap::new(),
            dispatched: Meter::default(),
            dropped: Meter::default(),
            active: None,
        });
        let sub_type = entry.dispatcher.sub_type();
        let refuse = |what: String| Err(BrokerError::SubscriptionBusy { what });
        let result = if sub_type != options.sub_type {
            refuse(format!("subscription {subscription} is {}, not {}", sub_type.name(), options.sub_type.name()))
        } else {
            let view = Consumer {
                id: consumer.key,
                name: consumer.name.clone(),
                priority_level: consumer.priority_level,
                permits: 0,
                blocked: false,
            };
            let admitted = entry.dispatcher.admit(Joining {
                consumer: &view,
                options,
                attached: &entry.consumers,
                read_unacked: None,
            });
            admitted.map(|()| {
                entry.consumers.push(view);
                entry.attached.insert(consumer.key, Attached { sink: consumer.sink, stats: consumer.stats });
                entry.announce_active();
            })
        };
        if result.is_err() && entry.consumers.is_empty() {
            inner.subscriptions.remove(subscription);
        }
        result
    }

    pub fn add_permits(&self, subscription: &str, key: u64, permits: u32) {
        let mut inner = self.inner.lock();
        if let Some(consumer) = inner
            .subscriptions
            .get_mut(subscription)
            .and_then(|sub| sub.consumers.iter_mut().find(|consumer| consumer.id == key))
        {
            consumer.permits = consumer.permits.saturating_add(i64::from(permits));
        }
    }

    pub fn remove_consumer(&self, subscription: &str, key: u64) {
        let mut inner = self.inner.lock();
        let Some(entry) = inner.subscriptions.get_mut(subscription) else { return };
        entry.consumers.retain(|consumer| consumer.id != key);
        entry.attached.remove(&key);
        entry.dispatcher.remove(key);
        if entry.consumers.is_empty() {
            inner.subscriptions.remove(subscription);
        } else {
            entry.announce_active();
        }
    }

    /// Gives one published entry to each subscription's chosen consumer; what a subscription
    /// cannot take now is dropped and counted. Answers the sends to make, in order, so that
    /// the caller sends without holding the topic.
    pub fn publish(&self, data: Bytes) -> Vec<(Arc<dyn ConsumerSink>, OutgoingMessage)> {
        let meta = entry_meta::parse(&data);
        let messages = meta.messages.max(1);
        self.received.record(messages as u64, data.len() as u64);
        let mut inner = self.inner.lock();
        let mut sends = Vec::new();
        for subscription in inner.subscriptions.values_mut() {
            let active = subscription.active();
            let chosen = subscription.dispatcher.choose(Offer {
                position: DELIVERED_AT,
                hash: meta.hash,
                key_waiting: false,
                consumers: &subscription.consumers,
                active,
            });
            let target = chosen.and_then(|key| Some((key, subscription.attached.get(&key)?.sink.clone())));
            match target {
                Some((key, sink)) => {
                    if let Some(consumer) = subscription.consumers.iter_mut().find(|c| c.id == key) {
                        consumer.permits -= messages;
                    }
                    subscription.dispatched.record(messages as u64, data.len() as u64);
                    sends.push((
                        sink,
                        OutgoingMessage {
                            position: DELIVERED_AT,
                            redelivery_count: 0,
                            ack_set: Vec::new(),
                            messages,
                            data: data.clone(),
                        },
                    ));
                }
                None => {
                    subscription.dropped.record(messages as u64, data.len() as u64);
                    self.dropped.record(messages as u64, data.len() as u64);
                }
            }
        }
        sends
    }

    /// Closes the topic: producers get CLOSE_PRODUCER, consumers CLOSE_CONSUMER; their
    /// clients look the topic up again.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (closers, sinks) = {
            let mut inner = self.inner.lock();
            let closers: Vec<_> = inner.producers.drain().filter_map(|(_, producer)| producer.closer).collect();
            let sinks: Vec<_> = std::mem::take(&mut inner.subscriptions)
                .into_values()
                .flat_map(|sub| sub.attached.into_values().map(|attached| attached.sink))
                .collect();
            (closers, sinks)
        };
        for closer in closers {
            closer();
        }
        for sink in sinks {
            sink.closed_by_broker();
        }
    }

    /// Messages published, and messages dropped summed over subscriptions.
    pub fn counters(&self) -> (u64, u64) {
        (self.received.totals().0, self.dropped.totals().0)
    }

    /// Pulsar's NonPersistentTopicStats, as `GET .../non-persistent/.../stats` answers.
    pub fn stats_json(&self) -> Value {
        let inner = self.inner.lock();
        let rates_in = self.received.rates();
        let (in_messages, in_bytes) = self.received.totals();
        let publishers: Vec<Value> = inner
            .producers
            .values()
            .map(|producer| {
                let stats = &producer.stats;
                let rates = stats.published.rates();
                json!({
                    "producerId": stats.producer_id,
                    "producerName": stats.name,
                    "accessMode": stats.access_mode,
                    "msgRateIn": rates.messages,
                    "msgThroughputIn": rates.bytes,
                    "msgDropRate": 0.0,
                    "address": stats.client.address,
                    "connectedSince": stats.client.connected_since,
                    "clientVersion": stats.client.client_version,
                })
            })
            .collect();
        let mut subscriptions = Map::new();
        let mut out_rate = 0.0;
        let mut out_throughput = 0.0;
        for (name, subscription) in &inner.subscriptions {
            let rates = subscription.dispatched.rates();
            out_rate += rates.messages;
            out_throughput += rates.bytes;
            let consumers: Vec<Value> = subscription
                .consumers
                .iter()
                .filter_map(|view| {
                    let attached = subscription.attached.get(&view.id)?;
                    let rates = attached.stats.dispatched.rates();
                    Some(json!({
                        "consumerName": view.name,
                        "msgRateOut": rates.messages,
                        "msgThroughputOut": rates.bytes,
                        "msgOutCounter": attached.stats.dispatched.totals().0,
                        "availablePermits": view.permits,
                        "address": attached.stats.client.address,
                        "connectedSince": attached.stats.client.connected_since,
                        "clientVersion": attached.stats.client.client_version,
                    }))
                })
                .collect();
            subscriptions.insert(
                name.clone(),
                json!({
                    "type": subscription.dispatcher.sub_type().name(),
                    "msgRateOut": rates.messages,
                    "msgThroughputOut": rates.bytes,
                    "msgOutCounter": subscription.dispatched.totals().0,
                    "msgDropRate": subscription.dropped.rates().messages,
                    "msgDropCounter": subscription.dropped.totals().0,
                    "msgBacklog": 0,
                    "isDurable": false,
                    "consumers": consumers,
                }),
            );
        }
        json!({
            "msgRateIn": rates_in.messages,
            "msgThroughputIn": rates_in.bytes,
            "msgInCounter": in_messages,
            "bytesInCounter": in_bytes,
            "msgRateOut": out_rate,
            "msgThroughputOut": out_throughput,
            "msgDropRate": self.dropped.rates().messages,
            "msgDropCounter": self.dropped.totals().0,
            "storageSize": 0,
            "publishers": publishers,
            "subscriptions": Value::Object(subscriptions),
            "replication": {},
        })
    }
}
