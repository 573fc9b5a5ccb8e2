//! [`Consumer`]: receives the messages of one subscription on one topic.
//!
//! Flow control: on subscribe the consumer grants the broker as many permits as its receiver
//! queue holds (FLOW), and grants more each time half of them were used. A permit is used
//! when a message is handed to the application, or when the broker charged for a message
//! that never reaches it (compacted out, acknowledged before a redelivery, undecodable).
//! The broker therefore never has more entries in flight than the queue size, which is also
//! the capacity of the channel from the connection task.
//!
//! Batches: one entry can hold several messages. The broker tracks acknowledgements per
//! entry, so an individual ack of a batched message is sent only once every message of that
//! batch was acknowledged (a small bitmap per entry). A cumulative ack sends the entry's id,
//! and so covers the whole entry, including any messages after the acknowledged one in the
//! same batch.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use magnetar_proto::command;
use magnetar_proto::pulsar::{command_ack::AckType, command_subscribe};
use tokio::sync::mpsc;
use tracing::debug;

use crate::client::Client;
use crate::connection::{Connection, ConsumerEvent};
use crate::entry::{decode_entry, DecodedEntry};
use crate::error::ClientError;
use crate::message::{Message, MessageId};
use crate::topic::TopicName;

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

    fn to_wire(self) -> command_subscribe::SubType {
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
    fn to_wire(self) -> command_subscribe::InitialPosition {
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

/// Builds a [`Consumer`]; from [`Client::consumer`].
#[derive(Debug)]
pub struct ConsumerBuilder {
    client: Client,
    topic: String,
    subscription: String,
    subscription_type: SubscriptionType,
    initial_position: InitialPosition,
    receiver_queue_size: u32,
    consumer_name: Option<String>,
}

impl ConsumerBuilder {
    pub(crate) fn new(client: Client, topic: String, subscription: String) -> Self {
        ConsumerBuilder {
            client,
            topic,
            subscription,
            subscription_type: SubscriptionType::default(),
            initial_position: InitialPosition::default(),
            receiver_queue_size: DEFAULT_RECEIVER_QUEUE_SIZE,
            consumer_name: None,
        }
    }

    /// Default: Exclusive.
    pub fn subscription_type(mut self, subscription_type: SubscriptionType) -> Self {
        self.subscription_type = subscription_type;
        self
    }

    /// Where the subscription starts if it does not exist yet. Default: Latest.
    pub fn initial_position(mut self, initial_position: InitialPosition) -> Self {
        self.initial_position = initial_position;
        self
    }

    /// How many messages the broker may push ahead of `receive` (default 1000, at least 1).
    pub fn receiver_queue_size(mut self, size: u32) -> Self {
        self.receiver_queue_size = size;
        self
    }

    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer_name = Some(name.into());
        self
    }

    /// Looks the topic up, subscribes, and grants the first permits.
    pub async fn subscribe(self) -> Result<Consumer, ClientError> {
        if self.receiver_queue_size == 0 {
            return Err(ClientError::InvalidConfig { setting: "receiver_queue_size", reason: "must be at least 1" });
        }
        if self.subscription.is_empty() {
            return Err(ClientError::InvalidConfig { setting: "subscription", reason: "must not be empty" });
        }
        let (topic, connection) = self.client.topic_connection(&self.topic).await?;
        let consumer_id = connection.new_consumer_id();
        let (sender, events) = mpsc::channel(self.receiver_queue_size as usize);
        connection.add_consumer(consumer_id, sender).await?;

        let topic_name = topic.to_string();
        let subscribe = |request_id| {
            let mut subscribe = command::subscribe(
                &topic_name,
                &self.subscription,
                self.subscription_type.to_wire(),
                consumer_id,
                request_id,
                self.initial_position.to_wire(),
            );
            if let Some(body) = subscribe.subscribe.as_mut() {
                body.consumer_name = self.consumer_name.clone();
            }
            subscribe
        };
        if let Err(error) = connection.request(subscribe).await {
            connection.remove_consumer(consumer_id).await;
            return Err(error);
        }
        let consumer = Consumer {
            connection,
            topic,
            subscription: self.subscription,
            subscription_type: self.subscription_type,
            consumer_id,
            events,
            ready: VecDeque::new(),
            batches: HashMap::new(),
            unsent_permits: 0,
            refill_threshold: (self.receiver_queue_size / 2).max(1),
            closed: None,
        };
        consumer.connection.send_command(command::flow(consumer_id, self.receiver_queue_size)).await?;
        debug!(topic = %consumer.topic, subscription = %consumer.subscription, consumer_id, "subscribed");
        Ok(consumer)
    }
}

/// Acknowledgement state of one batch entry whose messages are not all acknowledged.
#[derive(Debug)]
struct BatchAcks {
    /// One bit per message of the batch: set once acknowledged (or never delivered).
    acked: Vec<u64>,
    remaining: u32,
}

impl BatchAcks {
    fn new(size: u32, delivered: &[i32]) -> Self {
        let words = (size as usize).div_ceil(64);
        let mut acks = BatchAcks { acked: vec![u64::MAX; words], remaining: 0 };
        for &index in delivered {
            if let Some(word) = acks.acked.get_mut(index as usize / 64) {
                let bit = 1u64 << (index as usize % 64);
                if *word & bit != 0 {
                    *word &= !bit;
                    acks.remaining += 1;
                }
            }
        }
        acks
    }

    fn is_acked(&self, index: i32) -> bool {
        let Ok(index) = usize::try_from(index) else { return true };
        self.acked.get(index / 64).is_none_or(|word| word & (1u64 << (index % 64)) != 0)
    }

    fn mark(&mut self, index: i32) {
        if self.is_acked(index) {
            return;
        }
        let index = index as usize;
        self.acked[index / 64] |= 1u64 << (index % 64);
        self.remaining -= 1;
    }
}

/// Receives the messages of one subscription. Close it with [`Consumer::close`]; dropping it
/// closes it without waiting.
#[derive(Debug)]
pub struct Consumer {
    connection: Connection,
    topic: TopicName,
    subscription: String,
    subscription_type: SubscriptionType,
    consumer_id: u64,
    /// Entries from the connection task; capacity: the receiver queue size.
    events: mpsc::Receiver<ConsumerEvent>,
    /// Messages of an entry already split, waiting for `receive`.
    ready: VecDeque<Message>,
    /// Batch entries with messages not yet acknowledged, by (ledger, entry).
    batches: HashMap<(u64, u64), BatchAcks>,
    /// Permits used since the last FLOW.
    unsent_permits: u32,
    /// Send FLOW once this many permits were used: half the queue.
    refill_threshold: u32,
    /// Why the consumer can receive no more, once it can't.
    closed: Option<String>,
}

impl Consumer {
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    pub fn subscription_type(&self) -> SubscriptionType {
        self.subscription_type
    }

    /// Waits for the next message.
    ///
    /// An error for which [`ClientError::is_message_error`] holds concerns one message (it
    /// could not be decoded); the next call goes on with the following ones. Other errors
    /// mean the consumer was closed or its connection lost.
    ///
    /// Cancel-safe: if the future is dropped, no message is lost; the next call returns it.
    pub async fn receive(&mut self) -> Result<Message, ClientError> {
        loop {
            if self.unsent_permits >= self.refill_threshold && self.closed.is_none() {
                // Cancelling here loses nothing: the count is reset only once FLOW is queued.
                self.connection.send_command(command::flow(self.consumer_id, self.unsent_permits)).await?;
                self.unsent_permits = 0;
            }
            if let Some(message) = self.ready.pop_front() {
                self.unsent_permits += 1;
                return Ok(message);
            }
            if let Some(reason) = &self.closed {
                return Err(self.closed_error(reason.clone()));
            }
            match self.events.recv().await {
                None => self.closed = Some(self.end_reason()),
                Some(ConsumerEvent::Closed { reason }) => self.closed = Some(reason),
                Some(ConsumerEvent::Message { command, payload }) => match decode_entry(&command, &payload) {
                    Ok(decoded) => self.accept(decoded),
                    Err(error) => {
                        self.unsent_permits += payload.num_messages();
                        return Err(error);
                    }
                },
                Some(ConsumerEvent::Corrupt { message_id, error }) => {
                    self.unsent_permits += 1;
                    return Err(ClientError::CorruptMessage { id: MessageId::from(&message_id), source: error });
                }
            }
        }
    }

    /// Acknowledges one message. For a message of a batch, the broker is told once every
    /// message of the batch was acknowledged.
    pub async fn ack(&mut self, message: &Message) -> Result<(), ClientError> {
        let id = message.id;
        if id.is_batched() {
            let entry = (id.ledger_id, id.entry_id);
            let Some(batch) = self.batches.get_mut(&entry) else {
                // The whole entry was acknowledged already (cumulatively, or by its other messages).
                return Ok(());
            };
            if batch.is_acked(id.batch_index) {
                return Ok(());
            }
            if batch.remaining > 1 {
                batch.mark(id.batch_index);
                return Ok(());
            }
            // The last one: tell the broker first, so a cancelled call can be repeated.
            self.send_ack(AckType::Individual, id.entry_id_only()).await?;
            self.batches.remove(&entry);
            return Ok(());
        }
        self.send_ack(AckType::Individual, id).await
    }

    /// Acknowledges this message and every message before it in the subscription. Only for
    /// Exclusive and Failover subscriptions. For a batched message this covers its whole
    /// entry.
    pub async fn ack_cumulative(&mut self, message: &Message) -> Result<(), ClientError> {
        if !self.subscription_type.is_ordered() {
            return Err(ClientError::NotAllowed {
                operation: "cumulative acknowledgement",
                subscription_type: self.subscription_type.as_str(),
            });
        }
        let entry = message.id.entry_id_only();
        self.send_ack(AckType::Cumulative, entry).await?;
        let position = (entry.ledger_id, entry.entry_id);
        self.batches.retain(|&batch_entry, _| batch_entry > position);
        Ok(())
    }

    /// Closes the consumer. Messages received but not acknowledged are redelivered later.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let already_closed = self.closed.is_some();
        self.closed = Some("close() was called".into());
        if already_closed {
            return Ok(());
        }
        let consumer_id = self.consumer_id;
        let result = self.connection.request(|request_id| command::close_consumer(consumer_id, request_id)).await;
        self.connection.remove_consumer(consumer_id).await;
        result.map(|_| ())
    }

    fn accept(&mut self, decoded: DecodedEntry) {
        let DecodedEntry { messages, permits, batch_size } = decoded;
        let delivered = u32::try_from(messages.len()).unwrap_or(u32::MAX);
        // Messages charged for but not delivered use their permits now.
        self.unsent_permits = self.unsent_permits.saturating_add(permits.saturating_sub(delivered));
        if let (Some(size), Some(first)) = (batch_size, messages.first()) {
            let indexes: Vec<i32> = messages.iter().map(|message| message.id.batch_index).collect();
            self.batches.insert((first.id.ledger_id, first.id.entry_id), BatchAcks::new(size, &indexes));
        }
        self.ready.extend(messages);
    }

    async fn send_ack(&self, ack_type: AckType, id: MessageId) -> Result<(), ClientError> {
        self.connection.send_command(command::ack(self.consumer_id, ack_type, vec![id.to_wire()])).await
    }

    /// Why the channel from the connection ended without a Closed event.
    fn end_reason(&self) -> String {
        if self.connection.is_closed() {
            self.connection.disconnected().to_string()
        } else {
            "the connection stopped routing messages to it (the broker sent more than its permits allow)".into()
        }
    }

    fn closed_error(&self, reason: String) -> ClientError {
        ClientError::ConsumerClosed { subscription: self.subscription.clone(), topic: self.topic.to_string(), reason }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.closed.is_none() {
            self.connection.abandon_consumer(self.consumer_id);
        }
    }
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

    #[test]
    fn batch_acks_count_only_delivered_messages_once() {
        // A batch of 5 where message 1 was acknowledged before this delivery.
        let mut batch = BatchAcks::new(5, &[0, 2, 3, 4]);
        assert_eq!(batch.remaining, 4);
        assert!(batch.is_acked(1));
        batch.mark(2);
        batch.mark(2);
        assert_eq!(batch.remaining, 3);
        for index in [0, 3, 4] {
            batch.mark(index);
        }
        assert_eq!(batch.remaining, 0);
        // Out-of-range and negative indexes count as acknowledged and change nothing.
        assert!(batch.is_acked(64) && batch.is_acked(-1));
        batch.mark(70);
        assert_eq!(batch.remaining, 0);
    }

    #[test]
    fn large_batches_use_several_words() {
        let indexes: Vec<i32> = (0..130).collect();
        let mut batch = BatchAcks::new(130, &indexes);
        assert_eq!(batch.remaining, 130);
        batch.mark(129);
        assert!(batch.is_acked(129) && !batch.is_acked(128));
        assert_eq!(batch.remaining, 129);
    }
}
