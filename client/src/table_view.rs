//! [`TableView`]: the latest value of every key of a topic, kept current (Pulsar's
//! `TableView`).
//!
//! Every partition is read from the earliest position with `read_compacted = true` by a
//! non-durable subscription, so on a compacted topic the broker sends the compacted view
//! first and then what came after; on a topic never compacted it sends everything (the result
//! is the same, it only takes longer). A message with a key sets the key's value; one with an
//! empty payload or `null_value` (a tombstone) removes the key; messages without a key are
//! skipped, as in Pulsar.
//!
//! [`TableViewBuilder::create`] returns once every partition was read up to its last message
//! at that time (GET_LAST_MESSAGE_ID). Then a task, one per table view, owns the partitions'
//! consumers: it applies new messages as they arrive, calls the listeners, and every
//! `auto_update_partitions_interval` subscribes to partitions added to the topic. The map sits
//! behind a lock held only to read or write it, never across an `.await` nor while listeners
//! run.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use futures::FutureExt;
use magnetar_proto::topic_name::partition_topic_name;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::error::{error_chain, ClientError};
use crate::message::Message;
use crate::reader::{is_available, StartMessageId};
use crate::topic::TopicName;
use crate::topic_consumer::{AckGrouping, SubscribeSettings, TopicConsumer};
use crate::{SubscriptionType, DEFAULT_RECEIVER_QUEUE_SIZE};

/// Pulsar's `autoUpdatePartitionsInterval` default for table views.
pub const DEFAULT_AUTO_UPDATE_PARTITIONS_INTERVAL: Duration = Duration::from_secs(60);

/// Called with a key and its new value, or `None` when a tombstone removed it.
type Listener = Arc<dyn Fn(&str, Option<&Bytes>) + Send + Sync>;

/// Builds a [`TableView`]; from [`Client::table_view`].
#[derive(Debug)]
pub struct TableViewBuilder {
    client: Client,
    topic: String,
    auto_update_partitions_interval: Duration,
    subscription_name: Option<String>,
    receiver_queue_size: u32,
}

impl TableViewBuilder {
    pub(crate) fn new(client: Client, topic: String) -> Self {
        TableViewBuilder {
            client,
            topic,
            auto_update_partitions_interval: DEFAULT_AUTO_UPDATE_PARTITIONS_INTERVAL,
            subscription_name: None,
            receiver_queue_size: DEFAULT_RECEIVER_QUEUE_SIZE,
        }
    }

    /// How often the topic's partition count is checked, so that partitions added later are
    /// read too (default 60 s).
    pub fn auto_update_partitions_interval(mut self, interval: Duration) -> Self {
        self.auto_update_partitions_interval = interval;
        self
    }

    /// The (non-durable) subscription's name (default `tableview-<random>`).
    pub fn subscription_name(mut self, name: impl Into<String>) -> Self {
        self.subscription_name = Some(name.into());
        self
    }

    pub fn receiver_queue_size(mut self, size: u32) -> Self {
        self.receiver_queue_size = size;
        self
    }

    /// Subscribes to every partition, reads each up to its current end, and starts the task
    /// that keeps the view current.
    pub async fn create(self) -> Result<TableView, ClientError> {
        if self.receiver_queue_size == 0 {
            return Err(ClientError::InvalidConfig { setting: "receiver_queue_size", reason: "must be at least 1" });
        }
        if self.auto_update_partitions_interval.is_zero() {
            return Err(ClientError::InvalidConfig {
                setting: "auto_update_partitions_interval",
                reason: "must be more than zero",
            });
        }
        let (topic, partitions) = self.client.resolve_partitions(&self.topic).await?;
        let partitioned = self.client.partitions(&topic).await? > 0;
        let subscription = self
            .subscription_name
            .unwrap_or_else(|| format!("tableview-{:010x}", rand::random::<u64>() & 0xff_ffff_ffff));
        let (start, initial_position) = StartMessageId::Earliest.to_wire(false);
        let settings = SubscribeSettings {
            subscription,
            sub_type: SubscriptionType::Exclusive.to_wire(),
            initial_position: initial_position.to_wire(),
            receiver_queue_size: self.receiver_queue_size,
            consumer_name: None,
            durable: false,
            start_message_id: Some(start),
            start_inclusive: false,
            schema: None,
            read_compacted: true,
            chunks: Default::default(),
            ack_grouping: AckGrouping::IMMEDIATE,
        };
        let shared = Arc::new(Shared { data: RwLock::new(HashMap::new()), listeners: Mutex::new(Vec::new()) });
        let mut consumers = Vec::with_capacity(partitions.len());
        for (index, name) in partitions.iter().enumerate() {
            let partition = if partitioned { index as i32 } else { -1 };
            let mut consumer = TopicConsumer::subscribe(self.client.clone(), name, partition, settings.clone()).await?;
            catch_up(&mut consumer, &shared).await?;
            consumers.push(consumer);
        }
        debug!(%topic, partitions = consumers.len(), keys = shared.data.read().len(), "table view loaded");
        let task = Updater {
            client: self.client,
            topic: topic.clone(),
            partitioned,
            settings,
            consumers,
            shared: shared.clone(),
            interval: self.auto_update_partitions_interval,
        };
        Ok(TableView { topic, shared, task: tokio::spawn(task.run()) })
    }
}

/// The map and the listeners, shared by the view and its task.
struct Shared {
    data: RwLock<HashMap<String, Bytes>>,
    listeners: Mutex<Vec<Listener>>,
}

impl Shared {
    /// Applies one message: a value sets its key, a tombstone removes it; keyless messages
    /// are skipped.
    fn apply(&self, message: &Message) {
        let Some(key) = message.key.as_deref() else { return };
        let tombstone = message.null_value || message.payload.is_empty();
        {
            let mut data = self.data.write();
            if tombstone {
                data.remove(key);
            } else {
                data.insert(key.to_owned(), message.payload.clone());
            }
        }
        let listeners: Vec<Listener> = self.listeners.lock().clone();
        let value = (!tombstone).then_some(&message.payload);
        for listener in listeners {
            listener(key, value);
        }
    }
}

/// The latest value of every key of a topic; see the module documentation. Dropping it stops
/// the updates.
pub struct TableView {
    topic: TopicName,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TableView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableView").field("topic", &self.topic).field("keys", &self.len()).finish()
    }
}

impl TableView {
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The latest value of `key`, if it has one.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.shared.data.read().get(key).cloned()
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.shared.data.read().contains_key(key)
    }

    /// Every key with a value, in no particular order.
    pub fn keys(&self) -> Vec<String> {
        self.shared.data.read().keys().cloned().collect()
    }

    /// Every key with its value, in no particular order.
    pub fn entries(&self) -> Vec<(String, Bytes)> {
        self.shared.data.read().iter().map(|(key, value)| (key.clone(), value.clone())).collect()
    }

    pub fn len(&self) -> usize {
        self.shared.data.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.data.read().is_empty()
    }

    /// Calls `action` with every key and value now, then with every update as it arrives
    /// (`None` for a removed key). An update racing with the registration may be seen twice.
    pub fn for_each_and_listen(&self, action: impl Fn(&str, Option<&Bytes>) + Send + Sync + 'static) {
        let action: Listener = Arc::new(action);
        let data = self.shared.data.read();
        self.shared.listeners.lock().push(action.clone());
        for (key, value) in data.iter() {
            action(key, Some(value));
        }
    }

    /// Calls `action` with every update from now on (`None` for a removed key).
    pub fn listen(&self, action: impl Fn(&str, Option<&Bytes>) + Send + Sync + 'static) {
        self.shared.listeners.lock().push(Arc::new(action));
    }

    /// Stops reading; the map keeps what it has.
    pub fn close(self) {
        self.task.abort();
    }
}

impl Drop for TableView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads `consumer`'s partition up to the last message it holds now.
async fn catch_up(consumer: &mut TopicConsumer, shared: &Shared) -> Result<(), ClientError> {
    loop {
        if !consumer.has_queued() {
            let last = consumer.last_message_id().await?;
            if !is_available(last, consumer.last_received, StartMessageId::Earliest, false) {
                return Ok(());
            }
        }
        match consumer.receive().await {
            Ok(message) => shared.apply(&message),
            Err(error) if error.is_message_error() => {
                warn!(error = %error_chain(&error), "table view: skipping a message that cannot be decoded");
            }
            Err(error) => return Err(error),
        }
    }
}

/// The task that keeps a table view current.
struct Updater {
    client: Client,
    topic: TopicName,
    partitioned: bool,
    settings: SubscribeSettings,
    consumers: Vec<TopicConsumer>,
    shared: Arc<Shared>,
    interval: Duration,
}

impl Updater {
    async fn run(mut self) {
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next = 0usize;
        loop {
            let count = self.consumers.len();
            let received = {
                let start = next % count.max(1);
                let (before, after) = self.consumers.split_at_mut(start);
                let receives: Vec<_> = after
                    .iter_mut()
                    .enumerate()
                    .map(|(index, consumer)| (index + start, consumer))
                    .chain(before.iter_mut().enumerate())
                    .map(|(index, consumer)| async move { (index, consumer.receive().await) }.boxed())
                    .collect();
                let any = async {
                    if receives.is_empty() {
                        std::future::pending().await
                    } else {
                        select_all(receives).await.0
                    }
                };
                tokio::select! {
                    received = any => Some(received),
                    _ = refresh.tick() => None,
                }
            };
            match received {
                Some((index, Ok(message))) => {
                    next = index + 1;
                    self.shared.apply(&message);
                }
                Some((index, Err(error))) if error.is_message_error() => {
                    next = index + 1;
                    warn!(topic = %self.topic, error = %error_chain(&error), "table view: skipping a message that cannot be decoded");
                }
                Some((_, Err(error))) => {
                    info!(topic = %self.topic, error = %error_chain(&error), "table view stopped updating");
                    return;
                }
                None => self.add_new_partitions().await,
            }
        }
    }

    async fn add_new_partitions(&mut self) {
        if !self.partitioned {
            return;
        }
        let count = match self.client.partitions(&self.topic).await {
            Ok(count) => count as usize,
            Err(error) => {
                return debug!(topic = %self.topic, error = %error_chain(&error), "table view: cannot read the partition count")
            }
        };
        for index in self.consumers.len()..count {
            let name = partition_topic_name(&self.topic, index as u32);
            match TopicConsumer::subscribe(self.client.clone(), &name, index as i32, self.settings.clone()).await {
                Ok(consumer) => {
                    info!(topic = %self.topic, partition = index, "table view: reading a new partition");
                    self.consumers.push(consumer);
                }
                Err(error) => {
                    // Partitions are added in order: try this one again at the next check.
                    return warn!(topic = %self.topic, partition = index, error = %error_chain(&error), "table view: cannot subscribe to a new partition");
                }
            }
        }
    }
}
