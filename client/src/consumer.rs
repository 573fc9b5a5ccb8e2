//! [`Consumer`]: receives the messages of one subscription on one or more topics (and on
//! every partition of a partitioned topic), with Pulsar's consumer features on top of the
//! per-topic protocol (topic_consumer.rs):
//!
//! - negative acknowledgement: [`Consumer::negative_acknowledge`] asks for a redelivery
//!   (REDELIVER_UNACKNOWLEDGED_MESSAGES) after `negative_ack_redelivery_delay`;
//! - ack timeout: a message not acknowledged within `ack_timeout` is redelivered;
//! - dead letters: with a [`DeadLetterPolicy`], a message delivered `max_redeliver_count`
//!   times already is, instead of being redelivered once more, produced to the dead-letter
//!   topic (`<topic>-<subscription>-DLQ`) and acknowledged;
//! - retry: [`Consumer::reconsume_later`] produces a message to the retry topic
//!   (`<topic>-<subscription>-RETRY`, which the consumer also subscribes to) for delivery
//!   after a delay, and acknowledges the original.
//!
//! Also as Pulsar's consumers: acks grouped by time and count (topic_consumer.rs), flushed by
//! the timer task every group time; [`Consumer::batch_receive`] with a
//! [`BatchReceivePolicy`]; a [`RedeliveryBackoff`] that stretches the negative-ack delay with
//! the redelivery count (the nack queue is then kept sorted by deadline);
//! [`ConsumerInterceptor`]s; and pattern subscriptions (pattern.rs), whose discovery task
//! sends topics to add or drop through a bounded channel that `receive` drains, so the
//! consumer's topic list only ever changes inside its own calls. Topics keep their slot (index)
//! for the consumer's lifetime: a dropped topic's slot is emptied, never reused, so the
//! timers' slots stay valid.
//!
//! Timers run in a background task, one per consumer (spawned by
//! [`ConsumerBuilder::subscribe`], stopped by [`Consumer::close`] or drop), as in Pulsar's
//! Java client (NegativeAcksTracker, UnAckedMessageTracker): a nacked message is redelivered
//! after the delay, and an unacknowledged one after the ack timeout, even while the
//! application is busy and calls nothing on the consumer (on a Shared subscription, another
//! consumer then gets it). The task sleeps until the earliest deadline (both queues are in
//! deadline order, the delays being constant) and is woken when a queue gets its first
//! entry. The queues are shared with the consumer under a lock, so an acknowledged message
//! is dropped from them before the task can redeliver it. The task sends
//! REDELIVER_UNACKNOWLEDGED_MESSAGES (and dead-letter acks) through each topic consumer's
//! `AckHandle`, which follows it to a new connection and consumer id after a reconnect and
//! clears the redelivered entries' batch acknowledgement state.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::select_all;
use futures::FutureExt;
use magnetar_proto::pulsar::command_subscribe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::chunks::ChunkSettings;
use crate::client::Client;
use crate::error::{error_chain, ClientError};
use crate::message::{Message, MessageId};
use crate::pattern::{Discovery, TopicChange, TopicsPattern};
use crate::producer::{Producer, ProducerMessage};
use crate::redelivery_backoff::RedeliveryBackoff;
use crate::topic::TopicName;
use crate::topic_consumer::{AckGrouping, AckHandle, SubscribeSettings, TopicConsumer};
use magnetar_proto::clock::now_ms;

/// Pulsar's default receiver queue size.
pub const DEFAULT_RECEIVER_QUEUE_SIZE: u32 = 1000;

/// How a subscription shares its messages among its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SubscriptionType {
    /// One consumer at a time; others are refused.
    #[default]
    Exclusive,
    /// Round-robin among all consumers; no ordering.
    Shared,
    /// One active consumer; others take over when it leaves.
    Failover,
    /// Among all consumers, but all messages of a key go to the same consumer.
    KeyShared,
}

impl SubscriptionType {
    /// The name Pulsar's tools use: Exclusive, Shared, Failover, Key_Shared.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionType::Exclusive => "Exclusive",
            SubscriptionType::Shared => "Shared",
            SubscriptionType::Failover => "Failover",
            SubscriptionType::KeyShared => "Key_Shared",
        }
    }

    pub(crate) fn to_wire(self) -> command_subscribe::SubType {
        match self {
            SubscriptionType::Exclusive => command_subscribe::SubType::Exclusive,
            SubscriptionType::Shared => command_subscribe::SubType::Shared,
            SubscriptionType::Failover => command_subscribe::SubType::Failover,
            SubscriptionType::KeyShared => command_subscribe::SubType::KeyShared,
        }
    }

    /// Whether one consumer sees the subscription's messages in order, so that a cumulative
    /// ack means something.
    fn is_ordered(self) -> bool {
        matches!(self, SubscriptionType::Exclusive | SubscriptionType::Failover)
    }
}

impl fmt::Display for SubscriptionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubscriptionType {
    type Err = ClientError;

    /// Accepts Pulsar's names in any case, and `KeyShared`.
    fn from_str(text: &str) -> Result<Self, ClientError> {
        match text.to_ascii_lowercase().as_str() {
            "exclusive" => Ok(SubscriptionType::Exclusive),
            "shared" => Ok(SubscriptionType::Shared),
            "failover" => Ok(SubscriptionType::Failover),
            "key_shared" | "keyshared" => Ok(SubscriptionType::KeyShared),
            _ => Err(ClientError::InvalidConfig {
                setting: "subscription type",
                reason: "expected Exclusive, Shared, Failover or Key_Shared",
            }),
        }
    }
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum InitialPosition {
    /// After the last message published before the subscription was created.
    #[default]
    Latest,
    /// At the oldest message the topic still holds.
    Earliest,
}

impl InitialPosition {
    pub(crate) fn to_wire(self) -> command_subscribe::InitialPosition {
        match self {
            InitialPosition::Latest => command_subscribe::InitialPosition::Latest,
            InitialPosition::Earliest => command_subscribe::InitialPosition::Earliest,
        }
    }
}

impl FromStr for InitialPosition {
    type Err = ClientError;

    fn from_str(text: &str) -> Result<Self, ClientError> {
        match text.to_ascii_lowercase().as_str() {
            "latest" => Ok(InitialPosition::Latest),
            "earliest" => Ok(InitialPosition::Earliest),
            _ => Err(ClientError::InvalidConfig { setting: "initial position", reason: "expected Latest or Earliest" }),
        }
    }
}

/// Pulsar's default delay before a negatively acknowledged message is redelivered.
pub const DEFAULT_NEGATIVE_ACK_REDELIVERY_DELAY: Duration = Duration::from_secs(60);

/// Pulsar's `acknowledgementsGroupTime` and `maxAcknowledgmentGroupSize` defaults.
pub const DEFAULT_ACKNOWLEDGEMENT_GROUP_TIME: Duration = Duration::from_millis(100);
pub const DEFAULT_MAX_ACKNOWLEDGEMENT_GROUP_SIZE: usize = 1000;

/// When [`Consumer::batch_receive`] returns, as Pulsar's `BatchReceivePolicy`: once it has
/// `max_num_messages` messages or `max_num_bytes` bytes of payload, or `timeout` after it was
/// called with what it has (maybe nothing). `None` means no limit of that kind; the default is
/// Pulsar's: no message limit (the receiver queue bounds it), 10 MiB, 100 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchReceivePolicy {
    pub max_num_messages: Option<usize>,
    pub max_num_bytes: Option<usize>,
    pub timeout: Duration,
}

impl Default for BatchReceivePolicy {
    fn default() -> Self {
        BatchReceivePolicy {
            max_num_messages: None,
            max_num_bytes: Some(10 * 1024 * 1024),
            timeout: Duration::from_millis(100),
        }
    }
}

/// Sees what a consumer hands out and what the application does with it, as Pulsar's
/// `ConsumerInterceptor`. `before_consume` runs in `receive` and may change the message the
/// application gets; the others are told of acks, negative acks and ack-timeout redeliveries
/// (the last two when the redelivery is asked for). All must be quick.
pub trait ConsumerInterceptor: Send + Sync {
    fn before_consume(&self, message: Message) -> Message {
        message
    }

    fn on_acknowledge(&self, _id: &MessageId, _result: Result<(), &ClientError>) {}

    fn on_acknowledge_cumulative(&self, _id: &MessageId, _result: Result<(), &ClientError>) {}

    fn on_negative_acks_send(&self, _ids: &[MessageId]) {}

    fn on_ack_timeout_send(&self, _ids: &[MessageId]) {}
}

impl fmt::Debug for dyn ConsumerInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsumerInterceptor")
    }
}

/// The property names Pulsar's clients put on retried and dead-lettered messages.
pub const PROPERTY_RECONSUME_TIMES: &str = "RECONSUMETIMES";
pub const PROPERTY_DELAY_TIME: &str = "DELAY_TIME";
pub const PROPERTY_REAL_TOPIC: &str = "REAL_TOPIC";
pub const PROPERTY_ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";

/// Where messages go that could not be processed, as Pulsar's `DeadLetterPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterPolicy {
    /// A message delivered this many times already goes to the dead-letter topic instead of
    /// being redelivered again; a retried message, once retried more often than this.
    pub max_redeliver_count: u32,
    /// Default: `<topic>-<subscription>-DLQ`.
    pub dead_letter_topic: Option<String>,
    /// Default: `<topic>-<subscription>-RETRY`.
    pub retry_letter_topic: Option<String>,
}

impl DeadLetterPolicy {
    pub fn new(max_redeliver_count: u32) -> Self {
        DeadLetterPolicy { max_redeliver_count, dead_letter_topic: None, retry_letter_topic: None }
    }
}

/// Builds a [`Consumer`]; from [`Client::consumer`].
///
/// ```no_run
/// use std::time::Duration;
/// use magnetar_client::{Client, DeadLetterPolicy, SubscriptionType};
/// # async fn example(client: Client) -> Result<(), magnetar_client::ClientError> {
/// let mut consumer = client
///     .consumer("jobs", "workers")
///     .topic("urgent-jobs")
///     .subscription_type(SubscriptionType::Shared)
///     .ack_timeout(Duration::from_secs(30))
///     .negative_ack_redelivery_delay(Duration::from_secs(1))
///     .dead_letter_policy(DeadLetterPolicy::new(3))
///     .subscribe()
///     .await?;
/// let message = consumer.receive().await?;
/// consumer.negative_acknowledge(&message).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ConsumerBuilder {
    client: Client,
    topics: Vec<String>,
    subscription: String,
    subscription_type: SubscriptionType,
    initial_position: InitialPosition,
    receiver_queue_size: u32,
    consumer_name: Option<String>,
    ack_timeout: Option<Duration>,
    negative_ack_redelivery_delay: Duration,
    dead_letter_policy: Option<DeadLetterPolicy>,
    retry_enable: bool,
    read_compacted: bool,
    chunks: ChunkSettings,
    ack_grouping: AckGrouping,
    batch_receive_policy: BatchReceivePolicy,
    negative_ack_backoff: Option<Arc<dyn RedeliveryBackoff>>,
    interceptors: Vec<Arc<dyn ConsumerInterceptor>>,
    pattern: Option<String>,
    pattern_auto_discovery_period: Duration,
    /// Set by `with_schema` (schema.rs).
    pub(crate) schema: Option<magnetar_proto::pulsar::Schema>,
}

impl ConsumerBuilder {
    pub(crate) fn new(client: Client, topic: String, subscription: String) -> Self {
        ConsumerBuilder {
            client,
            topics: vec![topic],
            subscription,
            subscription_type: SubscriptionType::default(),
            initial_position: InitialPosition::default(),
            receiver_queue_size: DEFAULT_RECEIVER_QUEUE_SIZE,
            consumer_name: None,
            ack_timeout: None,
            negative_ack_redelivery_delay: DEFAULT_NEGATIVE_ACK_REDELIVERY_DELAY,
            dead_letter_policy: None,
            retry_enable: false,
            read_compacted: false,
            chunks: ChunkSettings::default(),
            ack_grouping: AckGrouping {
                group_time: DEFAULT_ACKNOWLEDGEMENT_GROUP_TIME,
                max_group_size: DEFAULT_MAX_ACKNOWLEDGEMENT_GROUP_SIZE,
            },
            batch_receive_policy: BatchReceivePolicy::default(),
            negative_ack_backoff: None,
            interceptors: Vec::new(),
            pattern: None,
            pattern_auto_discovery_period: crate::pattern::DEFAULT_PATTERN_AUTO_DISCOVERY_PERIOD,
            schema: None,
        }
    }

    /// Collects acks for this long and sends them together (Pulsar's
    /// `acknowledgmentGroupTime`, default 100 ms); zero sends every ack at once.
    pub fn acknowledgement_group_time(mut self, time: Duration) -> Self {
        self.ack_grouping.group_time = time;
        self
    }

    /// Sends the collected acks once this many are waiting (Pulsar's
    /// `maxAcknowledgmentGroupSize`, default 1000).
    pub fn max_acknowledgement_group_size(mut self, size: usize) -> Self {
        self.ack_grouping.max_group_size = size;
        self
    }

    /// When [`Consumer::batch_receive`] returns.
    pub fn batch_receive_policy(mut self, policy: BatchReceivePolicy) -> Self {
        self.batch_receive_policy = policy;
        self
    }

    /// Stretches the negative-ack redelivery delay by the message's redelivery count (Pulsar's
    /// `negativeAckRedeliveryBackoff`), in place of `negative_ack_redelivery_delay`.
    pub fn negative_ack_redelivery_backoff(mut self, backoff: impl RedeliveryBackoff + 'static) -> Self {
        self.negative_ack_backoff = Some(Arc::new(backoff));
        self
    }

    /// Adds an interceptor; several run in the order they were added.
    pub fn interceptor(mut self, interceptor: impl ConsumerInterceptor + 'static) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Subscribes to every topic of a namespace whose name matches `pattern` (a regex over
    /// the whole name, e.g. `persistent://public/default/orders-.*`; without `://` it means
    /// `persistent://`), in place of the topics named, and follows topics created and deleted
    /// later (Pulsar's `topicsPattern`).
    pub fn topics_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self
    }

    /// How often a pattern consumer asks for the namespace's topics (Pulsar's
    /// `patternAutoDiscoveryPeriod`, default 60 s; at least 100 ms). A broker with topic list
    /// watchers also tells it at once.
    pub fn pattern_auto_discovery_period(mut self, period: Duration) -> Self {
        self.pattern_auto_discovery_period = period;
        self
    }

    /// How many chunked messages may be collected at once (Pulsar's
    /// `maxPendingChunkedMessage`, default 10); when full, the oldest is dropped.
    pub fn max_pending_chunked_messages(mut self, max: usize) -> Self {
        self.chunks.max_pending_chunked_messages = max;
        self
    }

    /// Drop (and acknowledge) a chunked message whose chunks did not all arrive within this
    /// time (Pulsar's `expireTimeOfIncompleteChunkedMessage`, default 60 s).
    pub fn expire_time_of_incomplete_chunked_message(mut self, expire: Duration) -> Self {
        self.chunks.expire_time_of_incomplete_chunked_message = expire;
        self
    }

    /// Acknowledge, rather than leave for redelivery, the oldest chunked message dropped when
    /// too many are pending (Pulsar's `autoAckOldestChunkedMessageOnQueueFull`, default off).
    pub fn auto_ack_oldest_chunked_message_on_queue_full(mut self, enabled: bool) -> Self {
        self.chunks.auto_ack_oldest_chunked_message_on_queue_full = enabled;
        self
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Subscribes to one more topic with the same subscription.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Default: Exclusive. Key_Shared subscribes in AUTO_SPLIT mode (the broker splits the
    /// key hash range among the consumers).
    pub fn subscription_type(mut self, subscription_type: SubscriptionType) -> Self {
        self.subscription_type = subscription_type;
        self
    }

    /// Where the subscription starts if it does not exist yet. Default: Latest.
    pub fn initial_position(mut self, initial_position: InitialPosition) -> Self {
        self.initial_position = initial_position;
        self
    }

    /// How many messages the broker may push ahead of `receive`, per topic (default 1000,
    /// at least 1).
    pub fn receiver_queue_size(mut self, size: u32) -> Self {
        self.receiver_queue_size = size;
        self
    }

    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer_name = Some(name.into());
        self
    }

    /// Redeliver a message not acknowledged this long after it was received (default: never).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// How long after a negative acknowledgement the message is redelivered (default 60 s).
    pub fn negative_ack_redelivery_delay(mut self, delay: Duration) -> Self {
        self.negative_ack_redelivery_delay = delay;
        self
    }

    pub fn dead_letter_policy(mut self, policy: DeadLetterPolicy) -> Self {
        self.dead_letter_policy = Some(policy);
        self
    }

    /// Reads the topic's compacted view first (Exclusive and Failover subscriptions only, as
    /// Pulsar's `readCompacted`; the broker refuses it for the others).
    pub fn read_compacted(mut self, read_compacted: bool) -> Self {
        self.read_compacted = read_compacted;
        self
    }

    /// Enables [`Consumer::reconsume_later`]: the consumer also subscribes to the retry topic.
    pub fn enable_retry(mut self, enabled: bool) -> Self {
        self.retry_enable = enabled;
        self
    }

    /// Looks each topic (and its partitions) up, subscribes, and grants the first permits.
    pub async fn subscribe(self) -> Result<Consumer, ClientError> {
        if self.receiver_queue_size == 0 {
            return Err(ClientError::InvalidConfig { setting: "receiver_queue_size", reason: "must be at least 1" });
        }
        if self.subscription.is_empty() {
            return Err(ClientError::InvalidConfig { setting: "subscription", reason: "must not be empty" });
        }
        if self.ack_timeout.is_some_and(|timeout| timeout.is_zero()) {
            return Err(ClientError::InvalidConfig { setting: "ack_timeout", reason: "must be more than zero" });
        }
        if self.batch_receive_policy.timeout.is_zero()
            && self.batch_receive_policy.max_num_messages.is_none()
            && self.batch_receive_policy.max_num_bytes.is_none()
        {
            return Err(ClientError::InvalidConfig {
                setting: "batch_receive_policy",
                reason: "needs a message limit, a byte limit or a timeout",
            });
        }
        if self.pattern.is_some()
            && self.pattern_auto_discovery_period < crate::pattern::MIN_PATTERN_AUTO_DISCOVERY_PERIOD
        {
            return Err(ClientError::InvalidConfig {
                setting: "pattern_auto_discovery_period",
                reason: "must be at least 100 ms",
            });
        }
        let pattern = self.pattern.as_deref().map(TopicsPattern::parse).transpose()?;
        let (base_name, base_topic) = match &pattern {
            Some(pattern) => (pattern.display_name(), pattern.display_name().to_string()),
            None => {
                let name = TopicName::parse(&self.topics[0])?;
                (name.clone(), name.to_string())
            }
        };
        let policy = self.dead_letter_policy.clone();
        let dead_letter_topic = policy
            .as_ref()
            .and_then(|policy| policy.dead_letter_topic.clone())
            .unwrap_or_else(|| format!("{base_topic}-{}-DLQ", self.subscription));
        let retry_topic = policy
            .as_ref()
            .and_then(|policy| policy.retry_letter_topic.clone())
            .unwrap_or_else(|| format!("{base_topic}-{}-RETRY", self.subscription));
        let mut topics = if pattern.is_some() { Vec::new() } else { self.topics.clone() };
        if self.retry_enable {
            topics.push(retry_topic.clone());
        }
        let settings = SubscribeSettings {
            subscription: self.subscription.clone(),
            sub_type: self.subscription_type.to_wire(),
            initial_position: self.initial_position.to_wire(),
            receiver_queue_size: self.receiver_queue_size,
            consumer_name: self.consumer_name.clone(),
            durable: true,
            start_message_id: None,
            start_inclusive: false,
            schema: self.schema.clone(),
            read_compacted: self.read_compacted,
            chunks: self.chunks,
            ack_grouping: self.ack_grouping,
        };
        let mut consumers = Vec::new();
        for topic in &topics {
            let (_, partitions) = self.client.resolve_partitions(topic).await?;
            let partitioned = partitions.len() > 1;
            for (index, partition) in partitions.iter().enumerate() {
                let index = if partitioned { index as i32 } else { -1 };
                consumers
                    .push(TopicConsumer::subscribe(self.client.clone(), partition, index, settings.clone()).await?);
            }
        }
        let discovery = match pattern {
            None => None,
            Some(pattern) => {
                let (discovery, found) = Discovery::start(
                    self.client.clone(),
                    pattern,
                    settings.clone(),
                    self.pattern_auto_discovery_period,
                )
                .await?;
                consumers.extend(found);
                Some(discovery)
            }
        };
        debug!(topics = ?topics, subscription = %self.subscription, consumers = consumers.len(), "consumer subscribed");
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            timers: Mutex::new(Timers::default()),
            wake: Notify::new(),
            handles: Mutex::new(consumers.iter().map(|consumer| Some(consumer.ack_handle())).collect()),
            ack_group_time: (!self.ack_grouping.group_time.is_zero()).then_some(self.ack_grouping.group_time),
            interceptors: self.interceptors.clone(),
            dead_letter: policy.map(|policy| DeadLetter {
                max_redeliver_count: policy.max_redeliver_count,
                topic: dead_letter_topic,
                producer: tokio::sync::Mutex::new(None),
            }),
        });
        let timer_task = tokio::spawn(run_timers(shared.clone()));
        let mut batch_receive_policy = self.batch_receive_policy;
        // As Pulsar: a batch never asks for more than the receiver queue holds.
        let queue = self.receiver_queue_size as usize;
        if batch_receive_policy.max_num_messages.is_none_or(|max| max > queue || max == 0) {
            batch_receive_policy.max_num_messages = Some(queue);
        }
        Ok(Consumer {
            client: self.client,
            topic: base_name,
            subscription: self.subscription,
            subscription_type: self.subscription_type,
            consumers: consumers.into_iter().map(Some).collect(),
            next_consumer: 0,
            ack_timeout: self.ack_timeout,
            nack_delay: self.negative_ack_redelivery_delay,
            nack_backoff: self.negative_ack_backoff,
            batch_receive_policy,
            held_back: None,
            interceptors: self.interceptors,
            discovery,
            shared,
            timer_task,
            retry: self.retry_enable.then_some(Retry { topic: retry_topic, producer: None }),
            closed: false,
        })
    }
}

/// A received message's place: which topic consumer, which id.
type Slot = (usize, MessageId);

#[derive(Debug)]
struct DeadLetter {
    max_redeliver_count: u32,
    topic: String,
    /// Created on first use.
    producer: tokio::sync::Mutex<Option<Producer>>,
}

/// The timer queues, shared by the consumer and its timer task.
#[derive(Debug, Default)]
struct Timers {
    /// Received and not acknowledged, in deadline order (ack timeout only); an entry is
    /// live while `unacked_live` maps its slot to its deadline (a slot received again, after
    /// a redelivery, has a new entry and a new deadline).
    unacked: VecDeque<(Instant, Slot)>,
    unacked_live: HashMap<Slot, Instant>,
    /// Negatively acknowledged, in deadline order.
    nacked: VecDeque<(Instant, Slot)>,
    /// With a dead-letter policy, messages delivered `max_redeliver_count` times: they go to
    /// the dead-letter topic instead of their next redelivery.
    candidates: HashMap<Slot, Message>,
}

impl Timers {
    /// Drops the timers and dead-letter candidacy of acknowledged messages.
    fn forget(&mut self, covered: impl Fn(&Slot) -> bool) {
        self.unacked_live.retain(|slot, _| !covered(slot));
        self.nacked.retain(|(_, slot)| !covered(slot));
        self.candidates.retain(|slot, _| !covered(slot));
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        // Drop acknowledged entries from the front so the front is a real deadline.
        while let Some((deadline, slot)) = self.unacked.front() {
            if self.unacked_live.get(slot) == Some(deadline) {
                break;
            }
            self.unacked.pop_front();
        }
        let unacked = self.unacked.front().map(|(deadline, _)| *deadline);
        let nacked = self.nacked.front().map(|(deadline, _)| *deadline);
        match (unacked, nacked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Queues a nacked message; the queue stays in deadline order (with a backoff, later
    /// nacks may be due earlier).
    fn nack(&mut self, deadline: Instant, slot: Slot) {
        let at = self.nacked.partition_point(|(queued, _)| *queued <= deadline);
        self.nacked.insert(at, (deadline, slot));
    }

    /// Takes every message whose nack delay (first) or ack timeout (second) is over.
    fn take_due(&mut self, now: Instant) -> (Vec<Slot>, Vec<Slot>) {
        let mut nacked = Vec::new();
        while self.nacked.front().is_some_and(|(deadline, _)| *deadline <= now) {
            if let Some((_, slot)) = self.nacked.pop_front() {
                nacked.push(slot);
            }
        }
        let mut due = Vec::new();
        while self.unacked.front().is_some_and(|(deadline, _)| *deadline <= now) {
            if let Some((deadline, slot)) = self.unacked.pop_front() {
                if self.unacked_live.get(&slot) == Some(&deadline) {
                    self.unacked_live.remove(&slot);
                    debug!(id = %slot.1, "ack timeout: redelivering");
                    due.push(slot);
                }
            }
        }
        (nacked, due)
    }
}

/// What a consumer shares with its timer task.
#[derive(Debug)]
struct Shared {
    client: Client,
    timers: Mutex<Timers>,
    /// Wakes the timer task when a queue gets its first entry (an earlier deadline).
    wake: Notify,
    /// One per topic consumer slot, in the same order; `None` for a dropped topic.
    handles: Mutex<Vec<Option<AckHandle>>>,
    /// Grouped acks are flushed this often.
    ack_group_time: Option<Duration>,
    interceptors: Vec<Arc<dyn ConsumerInterceptor>>,
    dead_letter: Option<DeadLetter>,
}

impl Shared {
    fn timers(&self) -> MutexGuard<'_, Timers> {
        self.timers.lock()
    }

    fn handle(&self, index: usize) -> Option<AckHandle> {
        self.handles.lock().get(index).cloned().flatten()
    }

    /// Sends every topic consumer's grouped acks.
    async fn flush_acks(&self) {
        let handles: Vec<AckHandle> = self.handles.lock().iter().flatten().cloned().collect();
        for handle in handles {
            if let Err(error) = handle.flush().await {
                debug!(error = %error_chain(&error), "cannot flush grouped acks; kept for the next flush");
            }
        }
    }

    async fn redeliver_due(&self) {
        let (nacked, timed_out) = self.timers().take_due(Instant::now());
        if !self.interceptors.is_empty() {
            let ids = |slots: &[Slot]| slots.iter().map(|slot| slot.1).collect::<Vec<_>>();
            for interceptor in &self.interceptors {
                if !nacked.is_empty() {
                    interceptor.on_negative_acks_send(&ids(&nacked));
                }
                if !timed_out.is_empty() {
                    interceptor.on_ack_timeout_send(&ids(&timed_out));
                }
            }
        }
        let mut due = nacked;
        due.extend(timed_out);
        if !due.is_empty() {
            self.redeliver(due).await;
        }
    }

    /// Asks for these messages again, or, for dead-letter candidates, produces them to the
    /// dead-letter topic and acknowledges them. A lost connection is no error: the broker
    /// redelivers everything unacknowledged to the consumer once it subscribed again.
    async fn redeliver(&self, slots: Vec<Slot>) {
        let mut by_consumer: HashMap<usize, Vec<MessageId>> = HashMap::new();
        for slot in slots {
            let dead = self.timers().candidates.remove(&slot);
            match dead {
                Some(message) => match self.send_to_dead_letter(&message).await {
                    Ok(()) => {
                        let Some(handle) = self.handle(slot.0) else { continue };
                        if let Err(error) = handle.ack(slot.1).await {
                            debug!(id = %slot.1, error = %error_chain(&error), "dead letter: cannot acknowledge the original");
                        }
                    }
                    Err(error) => {
                        warn!(id = %slot.1, error = %error_chain(&error), "cannot produce to the dead-letter topic; redelivering");
                        by_consumer.entry(slot.0).or_default().push(slot.1);
                    }
                },
                None => by_consumer.entry(slot.0).or_default().push(slot.1),
            }
        }
        for (index, ids) in by_consumer {
            let Some(handle) = self.handle(index) else { continue };
            if let Err(error) = handle.redeliver(&ids).await {
                debug!(error = %error_chain(&error), "cannot ask for a redelivery; the broker redelivers after the reconnect");
            }
        }
    }

    async fn send_to_dead_letter(&self, message: &Message) -> Result<(), ClientError> {
        let Some(dead_letter) = &self.dead_letter else { return Ok(()) };
        let mut producer = dead_letter.producer.lock().await;
        if producer.is_none() {
            *producer = Some(self.client.producer(dead_letter.topic.clone()).create().await?);
        }
        if let Some(producer) = producer.as_mut() {
            producer.send_with(letter(message)).await?;
            debug!(id = %message.id, topic = %dead_letter.topic, "message sent to the dead-letter topic");
        }
        Ok(())
    }
}

/// The timer task: sleeps until the earliest deadline (or until woken by a new one), then
/// redelivers what is due. Aborted when the consumer is closed or dropped.
async fn run_timers(shared: Arc<Shared>) {
    let mut ack_flush = shared.ack_group_time.map(|period| {
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        let deadline = shared.timers().next_deadline();
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let flush_tick = async {
            match ack_flush.as_mut() {
                Some(interval) => {
                    interval.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = shared.wake.notified() => {}
            () = flush_tick => {
                shared.flush_acks().await;
                continue;
            }
        }
        shared.redeliver_due().await;
    }
}

#[derive(Debug)]
struct Retry {
    topic: String,
    producer: Option<Producer>,
}

/// Receives the messages of one subscription on one or more topics. Close it with
/// [`Consumer::close`]; dropping it closes it without waiting. Negative-ack and ack-timeout
/// redeliveries run in a background task, whether or not the consumer is being called.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    /// The first topic subscribed to (for a pattern consumer, the pattern's namespace and
    /// local part).
    topic: TopicName,
    subscription: String,
    subscription_type: SubscriptionType,
    /// One per topic or partition; `None` once a pattern consumer dropped its topic.
    consumers: Vec<Option<TopicConsumer>>,
    /// Where the next `receive` starts looking, so no topic starves the others.
    next_consumer: usize,
    ack_timeout: Option<Duration>,
    nack_delay: Duration,
    nack_backoff: Option<Arc<dyn RedeliveryBackoff>>,
    batch_receive_policy: BatchReceivePolicy,
    /// A message `batch_receive` took but that did not fit its batch: the next one starts
    /// with it.
    held_back: Option<Message>,
    interceptors: Vec<Arc<dyn ConsumerInterceptor>>,
    /// A pattern consumer's topic discovery.
    discovery: Option<Discovery>,
    /// The timer queues and what the timer task needs.
    shared: Arc<Shared>,
    timer_task: JoinHandle<()>,
    retry: Option<Retry>,
    closed: bool,
}

impl Consumer {
    /// The first topic subscribed to.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// Every topic (or partition) this consumer receives from.
    pub fn topics(&self) -> Vec<String> {
        self.consumers.iter().flatten().map(|consumer| consumer.topic_name().to_owned()).collect()
    }

    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    pub fn subscription_type(&self) -> SubscriptionType {
        self.subscription_type
    }

    /// Waits for the next message, from whichever topic has one.
    ///
    /// An error for which [`ClientError::is_message_error`] holds concerns one message (it
    /// could not be decoded); the next call goes on with the following ones. A lost
    /// connection is not an error: the consumer subscribes again and goes on.
    ///
    /// Cancel-safe: if the future is dropped, no message is lost; the next call returns it.
    pub async fn receive(&mut self) -> Result<Message, ClientError> {
        if self.closed {
            return Err(self.closed_error("close() was called"));
        }
        if let Some(message) = self.held_back.take() {
            return Ok(message);
        }
        let (index, result) = loop {
            let count = self.consumers.len();
            let start = if count == 0 { 0 } else { self.next_consumer % count };
            let received = {
                let (before, after) = self.consumers.split_at_mut(start);
                let in_turn = after
                    .iter_mut()
                    .enumerate()
                    .map(|(index, consumer)| (index + start, consumer))
                    .chain(before.iter_mut().enumerate());
                let receives: Vec<_> = in_turn
                    .filter_map(|(index, consumer)| consumer.as_mut().map(|consumer| (index, consumer)))
                    .map(|(index, consumer)| async move { (index, consumer.receive().await) }.boxed())
                    .collect();
                let any_message = async {
                    if receives.is_empty() {
                        std::future::pending().await
                    } else {
                        select_all(receives).await.0
                    }
                };
                let change = async {
                    match self.discovery.as_mut() {
                        Some(discovery) => discovery.next_change().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    change = change => Err(change),
                    received = any_message => Ok(received),
                }
            };
            match received {
                Ok(received) => break received,
                Err(change) => self.apply_change(change).await,
            }
        };
        self.next_consumer = index + 1;
        let mut message = result?;
        for interceptor in &self.interceptors {
            message = interceptor.before_consume(message);
        }
        let slot = (index, message.id);
        let mut wake = false;
        {
            let mut timers = self.shared.timers();
            if let Some(timeout) = self.ack_timeout {
                let deadline = Instant::now() + timeout;
                wake = timers.unacked.is_empty();
                timers.unacked.push_back((deadline, slot));
                timers.unacked_live.insert(slot, deadline);
            }
            if let Some(dead_letter) = &self.shared.dead_letter {
                if message.redelivery_count >= dead_letter.max_redeliver_count {
                    timers.candidates.insert(slot, message.clone());
                }
            }
        }
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(message)
    }

    /// Receives several messages at once, as the [`BatchReceivePolicy`] says: returns once it
    /// has the policy's number of messages or bytes, or its timeout after the call with what
    /// arrived by then (possibly nothing). A message that would take the batch over its byte
    /// limit starts the next batch instead (the first message of a batch always fits).
    ///
    /// Cancel-safe in the sense of [`Consumer::receive`], except that messages already taken
    /// by a cancelled call are lost to it (they are redelivered after the ack timeout or a
    /// reconnect).
    pub async fn batch_receive(&mut self) -> Result<Vec<Message>, ClientError> {
        let policy = self.batch_receive_policy;
        let deadline = Instant::now() + policy.timeout;
        let mut batch: Vec<Message> = Vec::new();
        let mut bytes = 0usize;
        loop {
            if policy.max_num_messages.is_some_and(|max| batch.len() >= max)
                || policy.max_num_bytes.is_some_and(|max| bytes >= max)
            {
                return Ok(batch);
            }
            let message = match tokio::time::timeout_at(deadline, self.receive()).await {
                Err(_) => return Ok(batch),
                Ok(Err(error)) if error.is_message_error() && !batch.is_empty() => {
                    warn!(error = %error_chain(&error), "batch receive: skipping a message that cannot be decoded");
                    continue;
                }
                Ok(result) => result?,
            };
            let size = message.payload.len();
            if !batch.is_empty() && policy.max_num_bytes.is_some_and(|max| bytes + size > max) {
                self.held_back = Some(message);
                return Ok(batch);
            }
            bytes += size;
            batch.push(message);
        }
    }

    /// Receives the next message and decodes its payload as JSON.
    pub async fn receive_json<T: serde::de::DeserializeOwned>(&mut self) -> Result<(Message, T), ClientError> {
        let message = self.receive().await?;
        let value = message.json()?;
        Ok((message, value))
    }

    /// Acknowledges one message. For a message of a batch, the broker is told once every
    /// message of the batch was acknowledged; with ack grouping, within the group time.
    pub async fn ack(&mut self, message: &Message) -> Result<(), ClientError> {
        let result = self.ack_one(message).await;
        for interceptor in &self.interceptors {
            interceptor.on_acknowledge(&message.id, result.as_ref().copied());
        }
        result
    }

    async fn ack_one(&mut self, message: &Message) -> Result<(), ClientError> {
        let index = self.consumer_index(message)?;
        let slot = (index, message.id);
        self.shared.timers().forget(|acked| *acked == slot);
        self.topic_consumer(index)?.ack(message.id).await
    }

    /// Acknowledges this message and every message before it on its topic (partition).
    /// Only for Exclusive and Failover subscriptions. For a batched message this covers its
    /// whole entry.
    pub async fn ack_cumulative(&mut self, message: &Message) -> Result<(), ClientError> {
        let result = self.ack_cumulative_one(message).await;
        for interceptor in &self.interceptors {
            interceptor.on_acknowledge_cumulative(&message.id, result.as_ref().copied());
        }
        result
    }

    async fn ack_cumulative_one(&mut self, message: &Message) -> Result<(), ClientError> {
        if !self.subscription_type.is_ordered() {
            return Err(ClientError::NotAllowed {
                operation: "cumulative acknowledgement",
                subscription_type: self.subscription_type.as_str(),
            });
        }
        let index = self.consumer_index(message)?;
        let up_to = message.id.entry_id_only();
        let covered =
            |slot: &Slot| slot.0 == index && (slot.1.ledger_id, slot.1.entry_id) <= (up_to.ledger_id, up_to.entry_id);
        self.shared.timers().forget(covered);
        self.topic_consumer(index)?.ack_cumulative(message.id).await
    }

    /// Negative acknowledgement: the message is redelivered after
    /// `negative_ack_redelivery_delay`, or after the backoff's delay for its redelivery count
    /// (or goes to the dead-letter topic, if it has been delivered `max_redeliver_count` times).
    pub async fn negative_acknowledge(&mut self, message: &Message) -> Result<(), ClientError> {
        let index = self.consumer_index(message)?;
        let slot = (index, message.id);
        let delay = match &self.nack_backoff {
            Some(backoff) => backoff.next(message.redelivery_count),
            None => self.nack_delay,
        };
        {
            let mut timers = self.shared.timers();
            timers.unacked_live.remove(&slot);
            timers.nack(Instant::now() + delay, slot);
        }
        // The deadline may be earlier than the one the timer task sleeps until.
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Asks the broker to redeliver every message received and not acknowledged yet.
    pub async fn redeliver_unacknowledged_messages(&mut self) -> Result<(), ClientError> {
        self.shared.flush_acks().await;
        let slots: Vec<Slot> = {
            let mut timers = self.shared.timers();
            timers.unacked.clear();
            timers.unacked_live.drain().map(|(slot, _)| slot).collect()
        };
        self.shared.redeliver(slots).await;
        Ok(())
    }

    /// Moves the subscription to `id` on the topic (partition) the id belongs to; the next
    /// messages are delivered from there. Timers of messages received before are dropped.
    pub async fn seek(&mut self, id: MessageId) -> Result<(), ClientError> {
        let index = if self.consumers.len() == 1 {
            0
        } else {
            usize::try_from(id.partition).ok().filter(|&index| index < self.consumers.len()).ok_or(
                ClientError::InvalidConfig { setting: "seek", reason: "on several topics, seek by publish time" },
            )?
        };
        self.forget_all();
        self.topic_consumer(index)?.seek(Some(id), None).await
    }

    /// Moves the subscription, on every topic, to the first message published at or after
    /// `publish_time` (milliseconds since the Unix epoch).
    pub async fn seek_by_time(&mut self, publish_time: u64) -> Result<(), ClientError> {
        self.forget_all();
        for consumer in self.consumers.iter_mut().flatten() {
            consumer.seek(None, Some(publish_time)).await?;
        }
        Ok(())
    }

    /// Produces the message to the retry topic for delivery after `delay` and acknowledges
    /// it here; once it was retried more than `max_redeliver_count` times (with a dead-letter
    /// policy), it goes to the dead-letter topic instead. Needs
    /// [`ConsumerBuilder::enable_retry`].
    pub async fn reconsume_later(&mut self, message: &Message, delay: Duration) -> Result<(), ClientError> {
        let Some(retry) = &mut self.retry else {
            return Err(ClientError::InvalidConfig {
                setting: "enable_retry",
                reason: "reconsume_later needs retry enabled",
            });
        };
        let times =
            message.properties.get(PROPERTY_RECONSUME_TIMES).and_then(|times| times.parse::<u32>().ok()).unwrap_or(0)
                + 1;
        let over_limit =
            self.shared.dead_letter.as_ref().is_some_and(|dead_letter| times > dead_letter.max_redeliver_count);
        if over_limit {
            self.shared.send_to_dead_letter(message).await?;
        } else {
            let mut retried = letter(message);
            retried.properties.insert(PROPERTY_RECONSUME_TIMES.into(), times.to_string());
            retried.properties.insert(PROPERTY_DELAY_TIME.into(), delay.as_millis().to_string());
            let deliver_at = now_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            retried.deliver_at_time = Some(i64::try_from(deliver_at).unwrap_or(i64::MAX));
            if retry.producer.is_none() {
                retry.producer = Some(self.client.producer(retry.topic.clone()).create().await?);
            }
            if let Some(producer) = retry.producer.as_mut() {
                producer.send_with(retried).await?;
            }
        }
        self.ack(message).await
    }

    /// Closes the consumer (every topic). Messages received but not acknowledged are
    /// redelivered later.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.closed = true;
        self.timer_task.abort();
        if let Some(discovery) = self.discovery.take() {
            discovery.stop();
        }
        self.shared.flush_acks().await;
        let mut result = Ok(());
        for consumer in self.consumers.iter_mut().flatten() {
            if let Err(error) = consumer.close().await {
                result = Err(error);
            }
        }
        if let Some(dead_letter) = &self.shared.dead_letter {
            if let Some(producer) = dead_letter.producer.lock().await.take() {
                let _ = producer.close().await;
            }
        }
        if let Some(producer) = self.retry.as_mut().and_then(|retry| retry.producer.take()) {
            let _ = producer.close().await;
        }
        result
    }

    fn consumer_index(&self, message: &Message) -> Result<usize, ClientError> {
        if self.consumers.len() == 1 && self.discovery.is_none() {
            return Ok(0);
        }
        self.consumers
            .iter()
            .position(|consumer| consumer.as_ref().is_some_and(|consumer| consumer.topic_name() == message.topic))
            .ok_or(ClientError::InvalidConfig {
                setting: "message",
                reason: "the message is not from this consumer's topics",
            })
    }

    /// The topic consumer in slot `index`.
    fn topic_consumer(&mut self, index: usize) -> Result<&mut TopicConsumer, ClientError> {
        self.consumers.get_mut(index).and_then(Option::as_mut).ok_or(ClientError::InvalidConfig {
            setting: "message",
            reason: "the message's topic is no longer subscribed",
        })
    }

    /// Adds a topic the pattern discovery subscribed to, or closes one that was deleted.
    async fn apply_change(&mut self, change: TopicChange) {
        match change {
            TopicChange::Added(consumer) => {
                debug!(topic = %consumer.topic_name(), subscription = %self.subscription, "pattern consumer: topic added");
                self.shared.handles.lock().push(Some(consumer.ack_handle()));
                self.consumers.push(Some(*consumer));
            }
            TopicChange::Removed(topic) => {
                let Some(index) =
                    self.consumers.iter().position(|slot| slot.as_ref().is_some_and(|c| c.topic_name() == topic))
                else {
                    return;
                };
                debug!(%topic, subscription = %self.subscription, "pattern consumer: topic gone");
                if let Some(handle) = self.shared.handles.lock().get_mut(index) {
                    *handle = None;
                }
                self.shared.timers().forget(|slot| slot.0 == index);
                if let Some(mut consumer) = self.consumers[index].take() {
                    if let Err(error) = consumer.close().await {
                        debug!(%topic, error = %error_chain(&error), "closing the consumer of a deleted topic");
                    }
                }
            }
        }
    }

    fn forget_all(&mut self) {
        *self.shared.timers() = Timers::default();
    }

    fn closed_error(&self, reason: &str) -> ClientError {
        ClientError::ConsumerClosed {
            subscription: self.subscription.clone(),
            topic: self.topic().to_string(),
            reason: reason.to_owned(),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.timer_task.abort();
        if let Some(discovery) = self.discovery.take() {
            discovery.stop();
        }
    }
}

/// A copy of `message` for the retry or dead-letter topic, naming where it came from (kept
/// from the first time when it is copied again).
fn letter(message: &Message) -> ProducerMessage {
    let mut copy = ProducerMessage::new(message.payload.clone());
    copy.key.clone_from(&message.key);
    copy.properties.clone_from(&message.properties);
    copy.properties.entry(PROPERTY_REAL_TOPIC.into()).or_insert_with(|| message.topic.clone());
    copy.properties.entry(PROPERTY_ORIGIN_MESSAGE_ID.into()).or_insert_with(|| message.id.to_string());
    copy.event_time = message.event_time;
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use magnetar_proto::pulsar as pb;

    fn subscription_type_from_wire(sub_type: i32) -> Option<SubscriptionType> {
        match pb::command_subscribe::SubType::try_from(sub_type).ok()? {
            command_subscribe::SubType::Exclusive => Some(SubscriptionType::Exclusive),
            command_subscribe::SubType::Shared => Some(SubscriptionType::Shared),
            command_subscribe::SubType::Failover => Some(SubscriptionType::Failover),
            command_subscribe::SubType::KeyShared => Some(SubscriptionType::KeyShared),
        }
    }

    #[test]
    fn subscription_types_parse_pulsar_names() {
        assert_eq!("Key_Shared".parse::<SubscriptionType>().ok(), Some(SubscriptionType::KeyShared));
        assert_eq!("shared".parse::<SubscriptionType>().ok(), Some(SubscriptionType::Shared));
        assert!("Round_Robin".parse::<SubscriptionType>().is_err());
        for kind in [
            SubscriptionType::Exclusive,
            SubscriptionType::Shared,
            SubscriptionType::Failover,
            SubscriptionType::KeyShared,
        ] {
            assert_eq!(kind.as_str().parse::<SubscriptionType>().ok(), Some(kind));
            assert_eq!(subscription_type_from_wire(kind.to_wire() as i32), Some(kind));
        }
    }
}
