//! A persistent topic: its managed ledger, its producers and its subscriptions.
//!
//! Producers follow Pulsar's access modes: any number of Shared producers, or one Exclusive
//! producer (a second is refused with ProducerFenced, a Shared one with ProducerBusy), and
//! WaitForExclusive producers queue until the topic has no other producer, in arrival order.
//! Producer names are unique per topic. With deduplication on (namespace policy), publishes go
//! through [`Deduplication`]; the producer registry is a plain mutex never held across `.await`.
//! The topic holds its resolved policy limits ([`TopicLimits`]), replaced as a whole when a
//! policy changes; each check reads them once.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use magnetar_meta::MetadataStore;
use tokio::sync::oneshot;
use tracing::{info, warn};

mod policing;

pub use policing::{PolicingIntervals, QuotaVerdict};

use crate::compaction::{Compaction, CompactionOutcome};
use crate::dedup::{Deduplication, Published};
use crate::dispatcher::SubscriptionType;
use crate::error::BrokerError;
use crate::managed_ledger::ManagedLedger;
use crate::stats::{Meter, ProducerStats};
use crate::subscription::{task, StartAt, Subscription, SubscriptionSnapshot, UnackedLimits};
use crate::tenancy::model::RetentionPolicy;
use crate::tenancy::TopicLimits;
use crate::throttle::Throttle;
use crate::topic_name::TopicName;

/// How a producer shares the topic (Pulsar's ProducerAccessMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    Shared,
    Exclusive,
    WaitForExclusive,
    /// Exclusive, fencing out every producer already there (they get CLOSE_PRODUCER and, on
    /// their return, ProducerFenced or ProducerBusy).
    ExclusiveWithFencing,
}

impl AccessMode {
    /// The name Pulsar gives it (stats' `accessMode`).
    pub fn name(self) -> &'static str {
        match self {
            AccessMode::Shared => "Shared",
            AccessMode::Exclusive => "Exclusive",
            AccessMode::WaitForExclusive => "WaitForExclusive",
            AccessMode::ExclusiveWithFencing => "ExclusiveWithFencing",
        }
    }
}

/// One subscription of a topic as stats and metrics see it.
pub struct SubscriptionView {
    pub name: String,
    pub snapshot: SubscriptionSnapshot,
    /// The open subscription (with its meters); `None` for a durable one no consumer opened
    /// since the topic loaded.
    pub open: Option<Arc<Subscription>>,
}

/// Whether a new producer may publish now or waits for its turn as the exclusive one.
pub enum Admission {
    Ready,
    /// Answers once this producer became the topic's exclusive producer.
    Waiting(oneshot::Receiver<()>),
}

struct WaitingProducer {
    name: String,
    key: u64,
    ready: oneshot::Sender<()>,
}

#[derive(Default)]
struct Producers {
    /// Connected (ready) producers: name -> key of the connection's registration.
    by_name: HashMap<String, u64>,
    /// Key and name of the exclusive producer, if the topic has one.
    exclusive: Option<(u64, String)>,
    waiting: VecDeque<WaitingProducer>,
    /// How to tell each producer's client that the topic closed, by producer key: the
    /// connection answers the producer's pending publishes, then sends CLOSE_PRODUCER.
    closers: HashMap<u64, Box<dyn FnOnce() + Send>>,
    /// Each producer's stats (connected or waiting), by producer key.
    stats: HashMap<u64, Arc<ProducerStats>>,
}

impl Producers {
    /// Removes every producer, connected or waiting, and returns how to tell each one's
    /// client: the topic now belongs to an ExclusiveWithFencing producer.
    fn fence_out(&mut self) -> Vec<Box<dyn FnOnce() + Send>> {
        let keys: Vec<u64> =
            self.by_name.values().copied().chain(self.waiting.iter().map(|waiting| waiting.key)).collect();
        self.by_name.clear();
        self.waiting.clear();
        self.exclusive = None;
        keys.into_iter()
            .filter_map(|key| {
                self.stats.remove(&key);
                self.closers.remove(&key)
            })
            .collect()
    }

    /// Hands the topic to the first waiting producer once no one else publishes.
    fn promote_waiting(&mut self) {
        while self.exclusive.is_none() && self.by_name.is_empty() {
            let Some(next) = self.waiting.pop_front() else { return };
            if next.ready.send(()).is_ok() {
                self.by_name.insert(next.name.clone(), next.key);
                self.exclusive = Some((next.key, next.name));
            }
        }
    }
}

pub struct Topic {
    name: TopicName,
    ledger: Arc<ManagedLedger>,
    producers: Mutex<Producers>,
    /// Set while the namespace enables deduplication.
    dedup: Mutex<Option<Arc<Deduplication>>>,
    subscriptions: tokio::sync::Mutex<HashMap<String, Arc<Subscription>>>,
    /// Set once the topic closes (unload, shutdown): publishes are no longer stored.
    fenced: AtomicBool,
    /// Entries stored since the topic opened (load reports).
    published: AtomicU64,
    /// Messages and bytes made durable since the topic loaded (stats' msgInCounter).
    received: Meter,
    /// What the topic's policies limit, resolved.
    limits: parking_lot::RwLock<Arc<TopicLimits>>,
    /// The publish rate policy, shared by every producer of the topic.
    publish_rate: Throttle,
    /// The topic's dispatch rate policy, shared by all its subscriptions.
    dispatch_rate: Arc<Throttle>,
    /// The policy of an age quota the backlog exceeded at the last timed check.
    age_exceeded: Mutex<Option<RetentionPolicy>>,
    /// When the topic last had a producer or a consumer (ms since the epoch), as seen by the
    /// timed checks: inactive topic deletion counts from here.
    last_active_ms: AtomicU64,
    /// Since when each durable subscription has had no consumer: subscription expiration.
    idle_since_ms: Mutex<HashMap<String, u64>>,
    /// Its compacted view and compaction runs.
    compaction: Arc<Compaction>,
}

impl Topic {
    /// A topic over its opened managed ledger; its timed policy checks run every
    /// `intervals` until it closes.
    pub fn new(
        name: TopicName,
        ledger: Arc<ManagedLedger>,
        limits: TopicLimits,
        intervals: PolicingIntervals,
    ) -> Arc<Self> {
        let topic = Arc::new(Topic {
            name,
            ledger,
            producers: Mutex::default(),
            dedup: Mutex::default(),
            subscriptions: Default::default(),
            fenced: AtomicBool::new(false),
            published: AtomicU64::new(0),
            received: Meter::default(),
            publish_rate: Throttle::new(limits.publish_rate),
            dispatch_rate: Arc::new(Throttle::new(limits.dispatch_rate)),
            limits: parking_lot::RwLock::new(Arc::new(limits)),
            age_exceeded: Mutex::new(None),
            last_active_ms: AtomicU64::new(magnetar_proto::clock::now_ms()),
            idle_since_ms: Mutex::new(HashMap::new()),
            compaction: Arc::default(),
        });
        policing::spawn(&topic, intervals);
        topic
    }

    /// The limits in force now.
    pub fn limits(&self) -> Arc<TopicLimits> {
        self.limits.read().clone()
    }

    /// Takes new limits: deduplication and retention change at once, the rest applies to
    /// the next check.
    pub async fn apply_limits(&self, limits: TopicLimits, meta: &Arc<dyn MetadataStore>) -> Result<(), BrokerError> {
        let deduplication = limits.deduplication;
        self.ledger.set_retention(limits.retention);
        self.publish_rate.set(limits.publish_rate);
        self.dispatch_rate.set(limits.dispatch_rate);
        let subscription_rate = limits.subscription_dispatch_rate;
        let changed = **self.limits.read() != limits;
        let unacked = unacked_limits(&limits);
        *self.limits.write() = Arc::new(limits);
        for subscription in self.subscriptions().await {
            subscription.set_limits(unacked);
            subscription.set_dispatch_rates(self.dispatch_rate.clone(), subscription_rate);
        }
        if changed {
            info!(topic = %self.name, "policies applied");
        }
        self.set_deduplication(deduplication, meta).await
    }

    pub fn name(&self) -> &TopicName {
        &self.name
    }

    pub fn ledger(&self) -> &Arc<ManagedLedger> {
        &self.ledger
    }

    /// The topic's compaction: its compacted view (read by `read_compacted` subscriptions).
    pub fn compaction(&self) -> &Arc<Compaction> {
        &self.compaction
    }

    /// Compacts the topic now (admin trigger or the compaction threshold).
    pub async fn compact(&self) -> Result<CompactionOutcome, BrokerError> {
        let ledger = &self.ledger;
        self.compaction.run(ledger, ledger.bookies(), ledger.ledger_config()).await
    }

    /// Starts a compaction in the background; Conflict if one is running.
    pub fn trigger_compaction(self: &Arc<Self>) -> Result<(), BrokerError> {
        if self.compaction.is_running() {
            return Err(BrokerError::Conflict { what: format!("compaction of {} is already running", self.name) });
        }
        let topic = self.clone();
        tokio::spawn(async move {
            if let Err(error) = topic.compact().await {
                warn!(topic = %topic.name, %error, "compaction failed");
            }
        });
        Ok(())
    }

    /// Registers a producer under Pulsar's access-mode rules; a name already connected (or
    /// waiting) is refused with ProducerBusy. Its stats are the topic's publishers' from now
    /// on.
    pub fn add_producer(
        &self,
        stats: Arc<ProducerStats>,
        producer_key: u64,
        mode: AccessMode,
    ) -> Result<Admission, BrokerError> {
        let max_producers = self.limits().max_producers;
        let mut producers = self.producers.lock();
        let fenced_out = if mode == AccessMode::ExclusiveWithFencing { producers.fence_out() } else { Vec::new() };
        let admission = Self::admit(&self.name, &mut producers, &stats.name, producer_key, mode, max_producers);
        if admission.is_ok() {
            producers.stats.insert(producer_key, stats);
        }
        drop(producers);
        if !fenced_out.is_empty() {
            info!(topic = %self.name, producers = fenced_out.len(), "fenced out by an ExclusiveWithFencing producer");
        }
        for closer in fenced_out {
            closer();
        }
        admission
    }

    fn admit(
        topic: &TopicName,
        producers: &mut Producers,
        producer_name: &str,
        producer_key: u64,
        mode: AccessMode,
        max_producers: Option<u32>,
    ) -> Result<Admission, BrokerError> {
        if producers.by_name.contains_key(producer_name) || producers.waiting.iter().any(|w| w.name == producer_name) {
            return Err(BrokerError::ProducerBusy { topic: topic.to_string(), producer: producer_name.to_owned() });
        }
        if let Some(max) = max_producers {
            if producers.by_name.len() + producers.waiting.len() >= max as usize {
                return Err(BrokerError::TooManyProducers { topic: topic.to_string(), max });
            }
        }
        let exclusive_taken = producers.exclusive.is_some() || !producers.waiting.is_empty();
        let fenced = |reason: String| BrokerError::ProducerFenced { topic: topic.to_string(), reason };
        match mode {
            AccessMode::Shared if exclusive_taken => {
                let holder = producers.exclusive.as_ref().map_or("a waiting producer", |(_, name)| name.as_str());
                return Err(BrokerError::ProducerBusy { topic: topic.to_string(), producer: holder.to_owned() });
            }
            AccessMode::Shared => {}
            AccessMode::Exclusive if exclusive_taken => {
                let holder = producers.exclusive.as_ref().map_or("a waiting producer", |(_, name)| name.as_str());
                return Err(fenced(format!("topic has an existing exclusive producer: {holder}")));
            }
            AccessMode::Exclusive if !producers.by_name.is_empty() => {
                return Err(fenced("topic has existing shared producers".to_owned()));
            }
            AccessMode::Exclusive => producers.exclusive = Some((producer_key, producer_name.to_owned())),
            AccessMode::WaitForExclusive if exclusive_taken || !producers.by_name.is_empty() => {
                let (ready, turn) = oneshot::channel();
                producers.waiting.push_back(WaitingProducer {
                    name: producer_name.to_owned(),
                    key: producer_key,
                    ready,
                });
                return Ok(Admission::Waiting(turn));
            }
            AccessMode::WaitForExclusive | AccessMode::ExclusiveWithFencing => {
                producers.exclusive = Some((producer_key, producer_name.to_owned()))
            }
        }
        producers.by_name.insert(producer_name.to_owned(), producer_key);
        Ok(Admission::Ready)
    }

    pub fn remove_producer(&self, producer_name: &str, producer_key: u64) {
        let mut producers = self.producers.lock();
        if producers.by_name.get(producer_name) == Some(&producer_key) {
            producers.by_name.remove(producer_name);
        }
        if producers.exclusive.as_ref().is_some_and(|(key, _)| *key == producer_key) {
            producers.exclusive = None;
        }
        producers.waiting.retain(|waiting| waiting.key != producer_key);
        producers.closers.remove(&producer_key);
        producers.stats.remove(&producer_key);
        producers.promote_waiting();
    }

    /// Registers how to tell the producer `producer_key`'s client that the topic closed. If
    /// it already closed, that happens now.
    pub fn on_close(&self, producer_key: u64, closer: Box<dyn FnOnce() + Send>) {
        if self.fenced.load(Ordering::SeqCst) {
            return closer();
        }
        self.producers.lock().closers.insert(producer_key, closer);
        // Closed between the check and the insert: the close did not see this closer.
        if self.fenced.load(Ordering::SeqCst) {
            let closer = self.producers.lock().closers.remove(&producer_key);
            if let Some(closer) = closer {
                closer();
            }
        }
    }

    /// Whether the topic closed: a new publish is not stored (its client resends it to the
    /// next owner after CLOSE_PRODUCER).
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Counts a publish made durable (stats).
    pub fn record_received(&self, messages: u64, bytes: u64) {
        self.received.record(messages, bytes);
    }

    /// Messages and bytes made durable since the topic loaded.
    pub fn received(&self) -> &Meter {
        &self.received
    }

    /// The connected producers' stats, by producer name, and the number of producers waiting
    /// for exclusive access.
    pub fn producer_stats(&self) -> (Vec<Arc<ProducerStats>>, usize) {
        let producers = self.producers.lock();
        let mut connected: Vec<_> =
            producers.by_name.values().filter_map(|key| producers.stats.get(key).cloned()).collect();
        connected.sort_by(|a, b| a.name.cmp(&b.name));
        (connected, producers.waiting.len())
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    pub async fn consumer_count(&self) -> usize {
        self.subscriptions().await.iter().map(|subscription| subscription.consumer_count()).sum()
    }

    pub fn producer_count(&self) -> usize {
        self.producers.lock().by_name.len()
    }

    fn deduplication(&self) -> Option<Arc<Deduplication>> {
        self.dedup.lock().clone()
    }

    /// Turns deduplication on (rebuilding its state from the snapshot and the tail entries)
    /// or off (dropping the state and its snapshot).
    pub async fn set_deduplication(&self, enabled: bool, meta: &Arc<dyn MetadataStore>) -> Result<(), BrokerError> {
        if enabled == self.deduplication().is_some() {
            return Ok(());
        }
        if enabled {
            let dedup = Deduplication::open(self.ledger.clone(), meta.clone()).await?;
            let mut slot = self.dedup.lock();
            if slot.is_none() {
                *slot = Some(dedup);
            }
        } else {
            self.dedup.lock().take();
            Deduplication::delete_snapshot(meta.as_ref(), self.ledger.name()).await?;
        }
        info!(topic = %self.name, enabled, "deduplication changed");
        Ok(())
    }

    /// A producer registers: the highest sequence id stored for it (-1 if none or dedup is
    /// off), which PRODUCER_SUCCESS carries so a reconnecting client resumes after it.
    pub fn register_producer(&self, producer: &str) -> i64 {
        self.deduplication().map_or(-1, |dedup| dedup.register_producer(producer))
    }

    /// Appends a message entry (unless deduplication finds it a duplicate); a stored entry's
    /// future answers once it is durable. `partial_chunk`: a chunk before the last of its
    /// message, which deduplication checks but does not count.
    pub async fn publish(
        &self,
        producer: &str,
        sequence_id: u64,
        highest_sequence_id: u64,
        partial_chunk: bool,
        data: Bytes,
    ) -> Result<Published, BrokerError> {
        if self.is_fenced() {
            return Err(BrokerError::TopicFenced { topic: self.name.to_string() });
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        match self.deduplication() {
            Some(dedup) => dedup.publish(producer, sequence_id, highest_sequence_id, partial_chunk, data).await,
            None => Ok(Published::Stored(self.ledger.add_entry(data).await?)),
        }
    }

    /// The subscription, opened (a durable one created at `start` if new; a non-durable one
    /// lives in memory until its last consumer leaves).
    pub async fn subscription(
        &self,
        name: &str,
        start: StartAt,
        durable: bool,
        sub_type: SubscriptionType,
    ) -> Result<Arc<Subscription>, BrokerError> {
        let mut subscriptions = self.subscriptions.lock().await;
        if let Some(found) = subscriptions.get(name) {
            return Ok(found.clone());
        }
        if let Some(max) = self.limits().max_subscriptions {
            let cursors = self.ledger.cursors();
            let known = cursors.len().max(subscriptions.len());
            let stored = cursors.iter().any(|(cursor, _)| cursor == name);
            if !stored && known >= max as usize {
                return Err(BrokerError::NotAllowed {
                    what: format!("Exceed the maximum number of subscriptions of topic {}: {max}", self.name),
                });
            }
        }
        let opened =
            Subscription::open(&self.name.to_string(), name, self.ledger.clone(), start, durable, sub_type).await?;
        let limits = self.limits();
        opened.set_limits(unacked_limits(&limits));
        opened.set_dispatch_rates(self.dispatch_rate.clone(), limits.subscription_dispatch_rate);
        tokio::spawn(task::run(opened.clone()));
        subscriptions.insert(name.to_owned(), opened.clone());
        Ok(opened)
    }

    /// Drops a non-durable subscription (reader) once no consumer is attached.
    pub async fn remove_if_unused(&self, name: &str) {
        let mut subscriptions = self.subscriptions.lock().await;
        let Some(subscription) = subscriptions.get(name).cloned() else { return };
        if subscription.is_durable() || subscription.has_consumer() {
            return;
        }
        subscriptions.remove(name);
        drop(subscriptions);
        subscription.close().await;
    }

    /// Removes a subscription whose only consumer is `consumer_id`; refused while other
    /// consumers are connected, as Pulsar refuses it.
    pub async fn unsubscribe(&self, name: &str, consumer_id: u64) -> Result<(), BrokerError> {
        let mut subscriptions = self.subscriptions.lock().await;
        let Some(subscription) = subscriptions.get(name).cloned() else {
            return Err(BrokerError::NotAllowed { what: format!("subscription {name} does not exist") });
        };
        if !subscription.has_consumer_id(consumer_id) || subscription.consumer_count() > 1 {
            return Err(BrokerError::UnsubscribeRefused {
                what: "Unconnected or shared consumer attempting to unsubscribe".to_owned(),
            });
        }
        subscription.detach(consumer_id);
        subscriptions.remove(name);
        subscription.close().await;
        subscription.delete().await
    }

    /// Deletes a durable subscription for the broker (subscription expiration): its
    /// consumers are disconnected and its cursor is deleted.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), BrokerError> {
        let removed = self.subscriptions.lock().await.remove(name);
        if let Some(subscription) = removed {
            subscription.disconnect_all();
            subscription.close().await;
            subscription.delete().await?;
        } else {
            self.ledger.delete_cursor(name).await?;
        }
        Ok(())
    }

    /// The subscription `name` if it is open here.
    pub async fn loaded_subscription(&self, name: &str) -> Option<Arc<Subscription>> {
        self.subscriptions.lock().await.get(name).cloned()
    }

    pub async fn subscriptions(&self) -> Vec<Arc<Subscription>> {
        self.subscriptions.lock().await.values().cloned().collect()
    }

    /// Every subscription for stats: the open ones (readers included), then the durable
    /// cursors no consumer opened since the topic loaded.
    pub async fn subscription_views(&self) -> Vec<SubscriptionView> {
        let mut views: Vec<SubscriptionView> = self
            .subscriptions()
            .await
            .into_iter()
            .map(|open| SubscriptionView { name: open.name().to_owned(), snapshot: open.snapshot(), open: Some(open) })
            .collect();
        for (name, cursor) in self.ledger.cursors() {
            if !views.iter().any(|view| view.name == name) {
                let snapshot = SubscriptionSnapshot::of_cursor(&cursor, &self.ledger);
                views.push(SubscriptionView { name, snapshot, open: None });
            }
        }
        views
    }

    /// Bytes after the slowest durable subscription of `views` (Pulsar's backlog size, as its
    /// managed ledger estimates it); 0 without one.
    pub fn backlog_size(&self, views: &[SubscriptionView]) -> u64 {
        views
            .iter()
            .filter(|view| view.snapshot.durable)
            .map(|view| view.snapshot.mark_delete)
            .min()
            .map_or(0, |oldest| self.ledger.bytes_after(oldest))
    }

    /// Terminates the topic (Pulsar's terminate): publishes are refused from now on
    /// (TopicTerminatedError), those in flight complete, and consumers that read to the end
    /// are told REACHED_END_OF_TOPIC. Answers the last message's position.
    pub async fn terminate(&self) -> Result<Option<crate::managed_ledger::Position>, BrokerError> {
        let last = self.ledger.terminate().await?;
        for subscription in self.subscriptions().await {
            subscription.wake_dispatch();
        }
        // As Pulsar: producers are told to reconnect (CLOSE_PRODUCER after their pending
        // receipts); their new PRODUCER gets TopicTerminatedError, which clients report as
        // terminated instead of failing the connection on a SEND_ERROR.
        self.tell_producers_to_go();
        info!(topic = %self.name, ?last, "topic terminated");
        Ok(last)
    }

    /// Closes the topic for a hand-over (unload, shutdown) so that clients see no error:
    /// publishes stop being stored, consumers' acks are persisted and they are told to
    /// reconnect (CLOSE_CONSUMER), the ledger closes once every publish in flight is durable
    /// (so the next owner starts without recovery), and each producer is answered for its
    /// pending publishes and then told to reconnect (CLOSE_PRODUCER); clients resend whatever
    /// was not answered to the next owner.
    pub async fn close(&self) {
        self.fenced.store(true, Ordering::SeqCst);
        for subscription in self.subscriptions().await {
            subscription.close().await;
            subscription.disconnect_all();
        }
        if let Some(dedup) = self.deduplication() {
            if let Err(error) = dedup.snapshot().await {
                warn!(topic = %self.name, %error, "writing the dedup snapshot failed; the next owner replays more");
            }
        }
        if let Err(error) = self.ledger.close().await {
            warn!(topic = %self.name, %error, "closing the managed ledger failed; the next owner recovers it");
        }
        self.tell_producers_to_go();
    }

    /// Runs every producer's closer once (CLOSE_PRODUCER after its pending receipts), outside
    /// the producers' lock.
    fn tell_producers_to_go(&self) {
        let closers: Vec<_> = self.producers.lock().closers.drain().map(|(_, closer)| closer).collect();
        for closer in closers {
            closer();
        }
    }
}

/// The unacknowledged-message limits a topic's subscriptions are held to.
fn unacked_limits(limits: &TopicLimits) -> UnackedLimits {
    UnackedLimits {
        per_consumer: limits.max_unacked_per_consumer,
        per_subscription: limits.max_unacked_per_subscription,
        read_batch: Some(limits.read_batch),
    }
}
