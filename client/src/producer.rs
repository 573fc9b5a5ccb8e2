//! [`Producer`]: publishes messages to one topic, or over the partitions of a partitioned
//! topic.
//!
//! Each partition (or the single topic) has one producer task (producer_task.rs) that owns
//! the broker connection, the open batch and the messages waiting for receipts; the
//! [`Producer`] handle routes each message to a partition (routing.rs) and talks to that task
//! through a bounded channel. Sequence ids are assigned here, one per message, in call
//! order, starting after the `last_sequence_id` the broker reports in PRODUCER_SUCCESS (so a
//! named producer continues where its previous incarnation stopped and the broker can drop
//! duplicates). Sends take `&mut self`, which keeps sequence ids in wire order.
//!
//! [`Producer::send_async`] queues the message and returns a [`SendReceipt`] future that
//! resolves to the message's id once the broker stored it. At most
//! [`ProducerBuilder::max_pending_messages`] messages per partition wait for receipts (queued
//! in a batch or sent); past that, `send_async` waits for room. With batching, messages
//! wait in the open batch until it holds `batching_max_messages` messages or
//! `batching_max_bytes` bytes, or `batching_max_publish_delay` passed since its first one.
//!
//! When the connection is lost (broker restart, network), the task reconnects with backoff,
//! registers again under the same producer name and resends every message still waiting for
//! its receipt with its original sequence id, so broker-side deduplication drops what was
//! already stored.
//!
//! Also as Pulsar's producers: chunking of messages larger than the broker's limit
//! (chunks.rs), access modes (Shared, Exclusive, WaitForExclusive, ExclusiveWithFencing), a
//! user's [`MessageRouter`](crate::MessageRouter) in place of the routing modes, and
//! [`ProducerInterceptor`]s that see (and may change) every message before it is sent and
//! learn every send's outcome. An interceptor's outcome call runs in a small task per message
//! that forwards the receipt, so it is called whether or not the [`SendReceipt`] is awaited.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use crate::client::Client;
use crate::compression::CompressionType;
use crate::error::ClientError;
use crate::message::MessageId;
use crate::producer_task::{ProducerTask, TaskCommand};
use crate::routing::{MessageRouter, Router, RoutingMode};
use crate::topic::TopicName;
use magnetar_proto::pulsar::ProducerAccessMode as WireAccessMode;

/// Pulsar's default for messages waiting for their receipts.
pub const DEFAULT_MAX_PENDING_MESSAGES: usize = 1000;
/// Pulsar's batching defaults.
pub const DEFAULT_BATCHING_MAX_MESSAGES: u32 = 1000;
pub const DEFAULT_BATCHING_MAX_BYTES: usize = 128 * 1024;
pub const DEFAULT_BATCHING_MAX_PUBLISH_DELAY: Duration = Duration::from_millis(1);

/// When a batching producer closes its open batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingConfig {
    pub max_messages: u32,
    pub max_bytes: usize,
    pub max_publish_delay: Duration,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_messages: DEFAULT_BATCHING_MAX_MESSAGES,
            max_bytes: DEFAULT_BATCHING_MAX_BYTES,
            max_publish_delay: DEFAULT_BATCHING_MAX_PUBLISH_DELAY,
        }
    }
}

/// Who may produce to a topic besides this producer (Pulsar's `ProducerAccessMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProducerAccessMode {
    /// Any number of producers (the default).
    #[default]
    Shared,
    /// Only this producer; creating it fails if another producer is connected.
    Exclusive,
    /// Only this producer; creating it waits until the producers connected have gone.
    WaitForExclusive,
    /// Only this producer; the producers connected are fenced out (their sends fail).
    ExclusiveWithFencing,
}

impl ProducerAccessMode {
    pub(crate) fn to_wire(self) -> WireAccessMode {
        match self {
            ProducerAccessMode::Shared => WireAccessMode::Shared,
            ProducerAccessMode::Exclusive => WireAccessMode::Exclusive,
            ProducerAccessMode::WaitForExclusive => WireAccessMode::WaitForExclusive,
            ProducerAccessMode::ExclusiveWithFencing => WireAccessMode::ExclusiveWithFencing,
        }
    }
}

/// Sees every message a producer sends, as Pulsar's `ProducerInterceptor`.
///
/// `before_send` runs in `send_async`, before routing; what it returns is what is sent.
/// `on_send_acknowledgement` runs once the broker stored the message (or the send failed),
/// with the message as sent. Both must be quick: they run on the client's tasks.
pub trait ProducerInterceptor: Send + Sync {
    fn before_send(&self, _topic: &TopicName, message: ProducerMessage) -> ProducerMessage {
        message
    }

    fn on_send_acknowledgement(
        &self,
        _topic: &TopicName,
        _message: &ProducerMessage,
        _result: Result<&MessageId, &ClientError>,
    ) {
    }
}

/// What a send resolves to in full: the message's id and, for a chunked message, its first
/// chunk's id (Pulsar's `ChunkMessageIdImpl`: `id` is the last chunk's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentMessageId {
    pub id: MessageId,
    pub first_chunk_id: Option<MessageId>,
}

/// What every partition's task needs to know.
#[derive(Debug, Clone)]
pub(crate) struct ProducerConfig {
    pub batching: Option<BatchingConfig>,
    pub compression: CompressionType,
    /// The schema sent in PRODUCER (typed producers).
    pub schema: Option<magnetar_proto::pulsar::Schema>,
    /// Split messages larger than the chunk size into chunks.
    pub chunking: bool,
    /// The most a chunk (metadata included) may hold; `None`: the broker's maximum.
    pub chunk_max_message_size: Option<usize>,
    pub access_mode: ProducerAccessMode,
}

/// Builds a [`Producer`]; from [`Client::producer`].
///
/// ```no_run
/// use std::time::Duration;
/// use magnetar_client::{Client, CompressionType, RoutingMode};
/// # async fn example(client: Client) -> Result<(), magnetar_client::ClientError> {
/// let mut producer = client
///     .producer("events")
///     .batching_max_messages(500)
///     .batching_max_publish_delay(Duration::from_millis(5))
///     .compression(CompressionType::Zstd)
///     .routing_mode(RoutingMode::RoundRobin)
///     .create()
///     .await?;
/// producer.send("hello").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ProducerBuilder {
    client: Client,
    topic: String,
    name: Option<String>,
    max_pending_messages: usize,
    batching: Option<BatchingConfig>,
    compression: CompressionType,
    routing_mode: RoutingMode,
    message_router: Option<Arc<dyn MessageRouter>>,
    chunking: bool,
    chunk_max_message_size: Option<usize>,
    access_mode: ProducerAccessMode,
    interceptors: Vec<Arc<dyn ProducerInterceptor>>,
    /// Set by `with_schema` (schema.rs).
    pub(crate) schema: Option<magnetar_proto::pulsar::Schema>,
}

impl std::fmt::Debug for dyn MessageRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageRouter")
    }
}

impl std::fmt::Debug for dyn ProducerInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProducerInterceptor")
    }
}

impl ProducerBuilder {
    pub(crate) fn new(client: Client, topic: String) -> Self {
        ProducerBuilder {
            client,
            topic,
            name: None,
            max_pending_messages: DEFAULT_MAX_PENDING_MESSAGES,
            batching: None,
            compression: CompressionType::None,
            routing_mode: RoutingMode::RoundRobin,
            message_router: None,
            chunking: false,
            chunk_max_message_size: None,
            access_mode: ProducerAccessMode::Shared,
            interceptors: Vec::new(),
            schema: None,
        }
    }

    /// Splits a message larger than the broker's maximum message size into chunks, which
    /// consumers put together again (Pulsar's `enableChunking`). Needs batching off.
    pub fn chunking(mut self, enabled: bool) -> Self {
        self.chunking = enabled;
        self
    }

    /// With chunking, the most one chunk may hold (Pulsar's `chunkMaxMessageSize`); default
    /// and upper bound: the broker's maximum message size.
    pub fn chunk_max_message_size(mut self, size: usize) -> Self {
        self.chunk_max_message_size = Some(size);
        self
    }

    /// Who else may produce to the topic (default Shared).
    pub fn access_mode(mut self, mode: ProducerAccessMode) -> Self {
        self.access_mode = mode;
        self
    }

    /// Picks every message's partition with `router` (keys included), in place of the
    /// routing mode (Pulsar's `CustomPartition` mode with a `MessageRouter`).
    pub fn message_router(mut self, router: impl MessageRouter + 'static) -> Self {
        self.message_router = Some(Arc::new(router));
        self
    }

    /// Adds an interceptor; several run in the order they were added.
    pub fn interceptor(mut self, interceptor: impl ProducerInterceptor + 'static) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// The producer's name; the broker picks a unique one when none is given. At most one
    /// producer of a name may be connected to a topic.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How many messages per partition may wait for their receipts (default 1000).
    pub fn max_pending_messages(mut self, max: usize) -> Self {
        self.max_pending_messages = max;
        self
    }

    /// Turns batching on (with Pulsar's defaults) or off (the default here).
    pub fn batching(mut self, enabled: bool) -> Self {
        self.batching = enabled.then(|| self.batching.unwrap_or_default());
        self
    }

    /// Turns batching on; a batch is sent once it holds this many messages (default 1000).
    pub fn batching_max_messages(mut self, max: u32) -> Self {
        self.batching.get_or_insert_with(BatchingConfig::default).max_messages = max;
        self
    }

    /// Turns batching on; a batch is sent once its payloads reach this many bytes (default
    /// 128 KiB).
    pub fn batching_max_bytes(mut self, max: usize) -> Self {
        self.batching.get_or_insert_with(BatchingConfig::default).max_bytes = max;
        self
    }

    /// Turns batching on; a batch is sent at the latest this long after its first message
    /// (default 1 ms).
    pub fn batching_max_publish_delay(mut self, delay: Duration) -> Self {
        self.batching.get_or_insert_with(BatchingConfig::default).max_publish_delay = delay;
        self
    }

    /// Compresses every entry (a single message, or a whole batch) with `compression`.
    pub fn compression(mut self, compression: CompressionType) -> Self {
        self.compression = compression;
        self
    }

    /// How messages without a key are spread over partitions (default round robin).
    pub fn routing_mode(mut self, mode: RoutingMode) -> Self {
        self.routing_mode = mode;
        self
    }

    /// Looks the topic up (and its partitions) and registers one producer per partition with
    /// the broker that owns it.
    pub async fn create(self) -> Result<Producer, ClientError> {
        if self.max_pending_messages == 0 {
            return Err(ClientError::InvalidConfig { setting: "max_pending_messages", reason: "must be at least 1" });
        }
        if let Some(batching) = &self.batching {
            if batching.max_messages == 0 || batching.max_bytes == 0 {
                return Err(ClientError::InvalidConfig {
                    setting: "batching",
                    reason: "batching_max_messages and batching_max_bytes must be at least 1",
                });
            }
        }
        if self.chunking && self.batching.is_some() {
            return Err(ClientError::InvalidConfig {
                setting: "chunking",
                reason: "chunking needs batching off, as in Pulsar",
            });
        }
        if self.chunk_max_message_size == Some(0) {
            return Err(ClientError::InvalidConfig { setting: "chunk_max_message_size", reason: "must be at least 1" });
        }
        let (topic, partition_names) = self.client.resolve_partitions(&self.topic).await?;
        let config = Arc::new(ProducerConfig {
            batching: self.batching,
            compression: self.compression,
            schema: self.schema,
            chunking: self.chunking,
            chunk_max_message_size: self.chunk_max_message_size,
            access_mode: self.access_mode,
        });
        let mut partitions = Vec::with_capacity(partition_names.len());
        for (index, name) in partition_names.iter().enumerate() {
            let partition = if partition_names.len() > 1 { index as i32 } else { -1 };
            let handle = ProducerTask::start(
                self.client.clone(),
                name,
                partition,
                self.name.clone(),
                config.clone(),
                self.max_pending_messages,
            )
            .await?;
            partitions.push(handle);
        }
        let router = (partitions.len() > 1).then(|| {
            let start = rand::random::<u32>();
            let batch = self.batching.map(|b| (b.max_messages, b.max_publish_delay));
            Router::new(self.routing_mode, partitions.len() as u32, start, batch)
        });
        debug!(%topic, partitions = partitions.len(), "producer created");
        Ok(Producer {
            topic,
            partitions,
            router,
            message_router: self.message_router,
            interceptors: self.interceptors,
            chunking: self.chunking,
            max_pending_messages: self.max_pending_messages,
            closed: false,
        })
    }
}

/// A message to send, with its optional key and properties.
///
/// ```
/// use magnetar_client::ProducerMessage;
/// let message = ProducerMessage::new("order 42 shipped").key("order-42").property("region", "eu");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerMessage {
    pub(crate) payload: Bytes,
    pub(crate) key: Option<String>,
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) event_time: Option<u64>,
    /// Deliver no earlier than this, in milliseconds since the Unix epoch (Shared
    /// subscriptions; the broker holds the message until then).
    pub(crate) deliver_at_time: Option<i64>,
    /// The key is base64 of raw bytes (KeyValue SEPARATED).
    pub(crate) key_is_base64: bool,
    /// A tombstone: no value (the metadata's `null_value`).
    pub(crate) null_value: bool,
}

impl ProducerMessage {
    /// The properties as the protocol carries them (in a message's or a batch member's
    /// metadata).
    pub(crate) fn wire_properties(&self) -> Vec<magnetar_proto::pulsar::KeyValue> {
        self.properties
            .iter()
            .map(|(key, value)| magnetar_proto::pulsar::KeyValue { key: key.clone(), value: value.clone() })
            .collect()
    }

    pub fn new(payload: impl Into<Bytes>) -> Self {
        ProducerMessage {
            payload: payload.into(),
            key: None,
            properties: BTreeMap::new(),
            event_time: None,
            deliver_at_time: None,
            key_is_base64: false,
            null_value: false,
        }
    }

    /// A message without a value for `key` (metadata `null_value = true`, empty payload):
    /// compaction and table views remove the key.
    pub fn tombstone(key: impl Into<String>) -> Self {
        ProducerMessage { null_value: true, ..ProducerMessage::new(Bytes::new()).key(key) }
    }

    /// True for a message without a value ([`ProducerMessage::tombstone`]).
    pub fn is_null_value(&self) -> bool {
        self.null_value
    }

    /// The partition key, if any.
    pub fn get_key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The properties set so far.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    /// Replaces the payload (for interceptors).
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// A message whose payload is `value` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, ClientError> {
        let payload = serde_json::to_vec(value).map_err(|source| ClientError::Json { source })?;
        Ok(ProducerMessage::new(payload))
    }

    /// The partition key: routes the message (Key_Shared subscriptions, partitions, compaction).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The application's event time in milliseconds since the Unix epoch.
    pub fn event_time(mut self, millis: u64) -> Self {
        self.event_time = Some(millis);
        self
    }

    /// Asks the broker to deliver the message no earlier than `millis` since the Unix epoch.
    pub fn deliver_at(mut self, millis: i64) -> Self {
        self.deliver_at_time = Some(millis);
        self
    }

    /// Sets a key of raw bytes, sent in base64 (KeyValue SEPARATED encoding).
    pub(crate) fn key_bytes(mut self, key: &[u8]) -> Self {
        use base64::Engine;
        self.key = Some(base64::engine::general_purpose::STANDARD.encode(key));
        self.key_is_base64 = true;
        self
    }

    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}

/// The handle to one partition's producer task.
#[derive(Debug)]
pub(crate) struct PartitionHandle {
    pub topic: TopicName,
    /// The name the broker confirmed; kept across reconnects.
    pub name: String,
    /// Shared with the task, which raises it when a reconnect's PRODUCER_SUCCESS reports a
    /// higher `last_sequence_id`.
    pub next_sequence_id: Arc<AtomicU64>,
    pub commands: mpsc::Sender<TaskCommand>,
    /// One permit per message queued or waiting for its receipt.
    pub in_flight: Arc<Semaphore>,
    pub max_message_size: usize,
    pub send_timeout: Duration,
}

/// Publishes to one topic (all its partitions). Close it with [`Producer::close`]; dropping
/// it closes it without waiting (queued messages are still sent).
#[derive(Debug)]
pub struct Producer {
    topic: TopicName,
    partitions: Vec<PartitionHandle>,
    /// `None` for a topic that is not partitioned.
    router: Option<Router>,
    /// The user's router; takes precedence over `router`.
    message_router: Option<Arc<dyn MessageRouter>>,
    interceptors: Vec<Arc<dyn ProducerInterceptor>>,
    /// Messages over the maximum size are split into chunks rather than refused.
    chunking: bool,
    max_pending_messages: usize,
    closed: bool,
}

impl Producer {
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The producer's name, as the broker confirmed it (the first partition's).
    pub fn name(&self) -> &str {
        &self.partitions[0].name
    }

    /// How many partitions the producer writes to (1 for a topic that is not partitioned).
    pub fn partitions(&self) -> usize {
        self.partitions.len()
    }

    /// The sequence id the next message gets (on the first partition).
    pub fn next_sequence_id(&self) -> u64 {
        self.partitions[0].next_sequence_id.load(Ordering::Relaxed)
    }

    /// Sends one message and waits until the broker has stored it.
    pub async fn send(&mut self, payload: impl Into<Bytes>) -> Result<MessageId, ClientError> {
        self.send_with(ProducerMessage::new(payload)).await
    }

    /// Sends `value` as a JSON payload and waits until the broker has stored it.
    pub async fn send_json<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<MessageId, ClientError> {
        self.send_with(ProducerMessage::json(value)?).await
    }

    /// Sends a message with key and properties and waits until the broker has stored it.
    pub async fn send_with(&mut self, message: ProducerMessage) -> Result<MessageId, ClientError> {
        self.send_async(message).await?.await
    }

    /// Queues a message and returns at once (once there is room for it among the pending
    /// ones); the returned receipt resolves when the broker has stored it. Messages of one
    /// partition are stored in the order they were queued.
    ///
    /// Cancel-safe: if this future is dropped before it completes, the message was not sent.
    pub async fn send_async(&mut self, message: ProducerMessage) -> Result<SendReceipt, ClientError> {
        if self.closed {
            return Err(self.closed_error("close() was called"));
        }
        let mut message = message;
        for interceptor in &self.interceptors {
            message = interceptor.before_send(&self.topic, message);
        }
        let index = self.route(&message)?;
        let partition = &self.partitions[index];
        let size = message.payload.len();
        if size > partition.max_message_size && !self.chunking {
            return Err(ClientError::MessageTooLarge { size, max: partition.max_message_size });
        }
        let permit =
            partition.in_flight.clone().acquire_owned().await.map_err(|_| self.closed_error("its task ended"))?;
        let sequence_id = partition.next_sequence_id.load(Ordering::Relaxed);
        let (reply, receipt) = oneshot::channel();
        let reply = self.intercepted(reply, &message);
        partition
            .commands
            .send(TaskCommand::Send { message, sequence_id, permit, reply })
            .await
            .map_err(|_| self.closed_error("its task ended"))?;
        partition.next_sequence_id.fetch_add(1, Ordering::Relaxed);
        Ok(SendReceipt::new(receipt, partition))
    }

    /// Queues `messages` as one batch entry (Pulsar's batch format, compressed with the
    /// producer's codec), whatever the batching settings; an open batch is sent before it.
    /// Each message takes its own sequence id and counts against
    /// [`ProducerBuilder::max_pending_messages`]; the receipt resolves to the entry's id. On a
    /// partitioned topic the batch goes to the partition of its first message.
    pub async fn send_batch_async(&mut self, messages: Vec<ProducerMessage>) -> Result<SendReceipt, ClientError> {
        if self.closed {
            return Err(self.closed_error("close() was called"));
        }
        let count = messages.len();
        if count == 0 {
            return Err(ClientError::InvalidConfig { setting: "batch", reason: "a batch needs at least one message" });
        }
        if count > self.max_pending_messages {
            return Err(ClientError::InvalidConfig {
                setting: "batch",
                reason: "a batch may hold at most max_pending_messages messages",
            });
        }
        let index = self.route(&messages[0])?;
        let partition = &self.partitions[index];
        let size: usize = messages.iter().map(|m| m.payload.len()).sum();
        if size > partition.max_message_size {
            return Err(ClientError::MessageTooLarge { size, max: partition.max_message_size });
        }
        let permit = partition
            .in_flight
            .clone()
            .acquire_many_owned(count as u32)
            .await
            .map_err(|_| self.closed_error("its task ended"))?;
        let sequence_id = partition.next_sequence_id.load(Ordering::Relaxed);
        let (reply, receipt) = oneshot::channel();
        partition
            .commands
            .send(TaskCommand::SendBatch { messages, sequence_id, permit, reply })
            .await
            .map_err(|_| self.closed_error("its task ended"))?;
        partition.next_sequence_id.fetch_add(count as u64, Ordering::Relaxed);
        Ok(SendReceipt::new(receipt, partition))
    }

    /// Sends the open batches now, and waits until every message queued before was stored
    /// (or failed).
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let mut waits = Vec::new();
        for partition in &self.partitions {
            let (reply, done) = oneshot::channel();
            partition.commands.send(TaskCommand::Flush { reply }).await.map_err(|_| self.closed_error("task ended"))?;
            waits.push(done);
        }
        for done in waits {
            done.await.map_err(|_| self.closed_error("its task ended"))?;
        }
        Ok(())
    }

    /// Closes the producer: open batches are sent, and the broker answers once the messages
    /// sent before are stored. Sends still waiting for receipts after that fail.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.closed = true;
        let mut result = Ok(());
        for partition in &self.partitions {
            let (reply, done) = oneshot::channel();
            if partition.commands.send(TaskCommand::Close { reply }).await.is_err() {
                continue;
            }
            if let Ok(Err(error)) = done.await {
                result = Err(error);
            }
        }
        result
    }

    /// The partition (index) for `message`.
    fn route(&mut self, message: &ProducerMessage) -> Result<usize, ClientError> {
        let partitions = self.partitions.len() as u32;
        if let (Some(router), true) = (&self.message_router, partitions > 1) {
            let partition = router.choose_partition(message, partitions);
            if partition >= partitions {
                return Err(ClientError::InvalidPartition { partition, partitions });
            }
            return Ok(partition as usize);
        }
        Ok(match &mut self.router {
            None => 0,
            Some(router) => router.route(message.key.as_deref().map(str::as_bytes), Instant::now()) as usize,
        })
    }

    /// With interceptors, a reply that tells them the outcome before passing it on.
    fn intercepted(
        &self,
        reply: oneshot::Sender<SendResult>,
        message: &ProducerMessage,
    ) -> oneshot::Sender<SendResult> {
        if self.interceptors.is_empty() {
            return reply;
        }
        let (inner, outcome) = oneshot::channel::<SendResult>();
        let interceptors = self.interceptors.clone();
        let topic = self.topic.clone();
        let message = message.clone();
        tokio::spawn(async move {
            let result = outcome.await.unwrap_or_else(|_| {
                Err(ClientError::SendFailed { reason: "the producer's task ended before the receipt arrived".into() })
            });
            for interceptor in &interceptors {
                interceptor.on_send_acknowledgement(&topic, &message, result.as_ref().map(|sent| &sent.id));
            }
            let _ = reply.send(result);
        });
        inner
    }

    fn closed_error(&self, reason: &str) -> ClientError {
        ClientError::ProducerClosed {
            producer: self.partitions[0].name.clone(),
            topic: self.topic.to_string(),
            reason: reason.to_owned(),
        }
    }
}

/// What a producer task answers a send with.
pub(crate) type SendResult = Result<SentMessageId, ClientError>;

type ReceiptReceiver = oneshot::Receiver<SendResult>;

/// The broker's answer to one send: resolves to the stored message's id, or to the error
/// that kept it from being stored (including no answer within the operation timeout).
#[derive(Debug)]
pub struct SendReceipt {
    receipt: Pin<Box<tokio::time::Timeout<ReceiptReceiver>>>,
    topic: String,
    producer: String,
    send_timeout: Duration,
}

impl SendReceipt {
    fn new(receipt: ReceiptReceiver, partition: &PartitionHandle) -> Self {
        SendReceipt {
            receipt: Box::pin(tokio::time::timeout(partition.send_timeout, receipt)),
            topic: partition.topic.to_string(),
            producer: partition.name.clone(),
            send_timeout: partition.send_timeout,
        }
    }
}

impl SendReceipt {
    /// Waits for the outcome with the first chunk's id of a chunked message.
    pub async fn sent_id(self) -> Result<SentMessageId, ClientError> {
        std::future::poll_fn({
            let mut this = self;
            move |cx| this.poll_sent(cx)
        })
        .await
    }

    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<SendResult> {
        let this = self;
        let outcome = match this.receipt.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(outcome) => outcome,
        };
        Poll::Ready(match outcome {
            Err(_) => Err(ClientError::Timeout {
                broker: this.topic.clone(),
                operation: "SEND (waiting for its receipt)".into(),
                after: this.send_timeout,
            }),
            Ok(Err(_)) => Err(ClientError::ProducerClosed {
                producer: this.producer.clone(),
                topic: this.topic.clone(),
                reason: "its task ended before the receipt arrived".into(),
            }),
            Ok(Ok(result)) => result,
        })
    }
}

impl Future for SendReceipt {
    type Output = Result<MessageId, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_sent(cx).map(|result| result.map(|sent| sent.id))
    }
}
