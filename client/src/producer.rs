//! [`Producer`]: publishes messages to one topic.
//!
//! Sequence ids increase by one per message, starting after the `last_sequence_id` the broker
//! reports in PRODUCER_SUCCESS (so a named producer continues where its previous incarnation
//! stopped and the broker can drop duplicates). Sends take `&mut self`, which keeps sequence
//! ids in wire order.
//!
//! Several sends may be in flight: [`Producer::send_async`] queues the message and returns a
//! [`SendReceipt`] future for the broker's answer. At most
//! [`ProducerBuilder::max_pending_messages`] messages wait for receipts; past that,
//! `send_async` waits for one to arrive.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use magnetar_proto::pulsar as pb;
use magnetar_proto::{command, Frame, Payload};
use tokio::sync::{oneshot, Semaphore};
use tracing::debug;

use crate::client::Client;
use crate::connection::{Connection, ReceiptResult};
use crate::error::ClientError;
use crate::message::MessageId;
use crate::topic::TopicName;

/// Pulsar's default for messages waiting for their receipts.
pub const DEFAULT_MAX_PENDING_MESSAGES: usize = 1000;

/// Builds a [`Producer`]; from [`Client::producer`].
#[derive(Debug)]
pub struct ProducerBuilder {
    client: Client,
    topic: String,
    name: Option<String>,
    max_pending_messages: usize,
}

impl ProducerBuilder {
    pub(crate) fn new(client: Client, topic: String) -> Self {
        ProducerBuilder { client, topic, name: None, max_pending_messages: DEFAULT_MAX_PENDING_MESSAGES }
    }

    /// The producer's name; the broker picks a unique one when none is given. At most one
    /// producer of a name may be connected to a topic.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How many messages may wait for their receipts (default 1000).
    pub fn max_pending_messages(mut self, max: usize) -> Self {
        self.max_pending_messages = max;
        self
    }

    /// Looks the topic up and registers the producer with the broker that owns it.
    pub async fn create(self) -> Result<Producer, ClientError> {
        if self.max_pending_messages == 0 {
            return Err(ClientError::InvalidConfig { setting: "max_pending_messages", reason: "must be at least 1" });
        }
        let (topic, connection) = self.client.topic_connection(&self.topic).await?;
        let producer_id = connection.new_producer_id();
        let topic_name = topic.to_string();
        let label = self.name.clone().unwrap_or_else(|| format!("#{producer_id}"));
        // Routing first, so that a CLOSE_PRODUCER right after the broker's answer finds it.
        connection.add_producer(producer_id, label, topic_name.clone()).await?;
        let answer = connection
            .request(|request_id| command::producer(&topic_name, producer_id, request_id, self.name.clone()))
            .await;
        let success = match answer.map(|answer| answer.producer_success) {
            Ok(Some(success)) => success,
            Ok(None) => {
                connection.remove_producer(producer_id, "creation failed".into()).await;
                return Err(ClientError::UnexpectedResponse {
                    broker: connection.broker().to_string(),
                    expected: "PRODUCER_SUCCESS",
                    got: "another answer".into(),
                });
            }
            Err(error) => {
                connection.remove_producer(producer_id, "creation failed".into()).await;
                return Err(error);
            }
        };
        connection.add_producer(producer_id, success.producer_name.clone(), topic_name).await?;
        let last_sequence_id = success.last_sequence_id.unwrap_or(-1);
        let next_sequence_id = u64::try_from(last_sequence_id.saturating_add(1)).unwrap_or(0);
        debug!(%topic, producer = %success.producer_name, next_sequence_id, "producer created");
        Ok(Producer {
            send_timeout: connection.operation_timeout(),
            connection,
            topic,
            producer_id,
            name: success.producer_name,
            next_sequence_id,
            in_flight: Arc::new(Semaphore::new(self.max_pending_messages)),
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
}

impl ProducerMessage {
    pub fn new(payload: impl Into<Bytes>) -> Self {
        ProducerMessage { payload: payload.into(), key: None, properties: BTreeMap::new(), event_time: None }
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

    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}

/// Publishes to one topic. Close it with [`Producer::close`]; dropping it closes it without
/// waiting.
#[derive(Debug)]
pub struct Producer {
    connection: Connection,
    topic: TopicName,
    producer_id: u64,
    name: String,
    next_sequence_id: u64,
    /// One permit per message that may wait for its receipt.
    in_flight: Arc<Semaphore>,
    /// The permits `in_flight` started with: the largest batch that can ever be sent.
    max_pending_messages: usize,
    send_timeout: Duration,
    closed: bool,
}

impl Producer {
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The producer's name, as the broker confirmed it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sequence id the next message gets.
    pub fn next_sequence_id(&self) -> u64 {
        self.next_sequence_id
    }

    /// Sends one message and waits until the broker has stored it.
    pub async fn send(&mut self, payload: impl Into<Bytes>) -> Result<MessageId, ClientError> {
        self.send_with(ProducerMessage::new(payload)).await
    }

    /// Sends a message with key and properties and waits until the broker has stored it.
    pub async fn send_with(&mut self, message: ProducerMessage) -> Result<MessageId, ClientError> {
        self.send_async(message).await?.await
    }

    /// Queues a message and returns at once (once there is room for it among the pending
    /// ones); the returned receipt resolves when the broker has stored it. Messages are
    /// stored in the order they were queued.
    ///
    /// Cancel-safe: if this future is dropped before it completes, the message was not sent.
    pub async fn send_async(&mut self, message: ProducerMessage) -> Result<SendReceipt, ClientError> {
        if self.closed {
            return Err(self.closed_error("close() was called"));
        }
        let size = message.payload.len();
        let max = self.connection.max_message_size();
        if size > max {
            return Err(ClientError::MessageTooLarge { size, max });
        }
        let permit =
            self.in_flight.clone().acquire_owned().await.map_err(|_| self.closed_error("its send queue was closed"))?;
        let sequence_id = self.next_sequence_id;
        let metadata = pb::MessageMetadata {
            producer_name: self.name.clone(),
            sequence_id,
            publish_time: now_millis(),
            properties: message.properties.into_iter().map(|(key, value)| pb::KeyValue { key, value }).collect(),
            partition_key: message.key,
            event_time: message.event_time,
            uncompressed_size: Some(u32::try_from(size).unwrap_or(u32::MAX)),
            ..Default::default()
        };
        let frame = Frame {
            command: command::send(self.producer_id, sequence_id, 1),
            payload: Some(Payload::new(metadata, &message.payload)),
        };
        let receipt = self.connection.send_message(self.producer_id, sequence_id, frame, Some(permit)).await?;
        self.next_sequence_id += 1;
        Ok(SendReceipt {
            receipt: Box::pin(tokio::time::timeout(self.send_timeout, receipt)),
            connection: self.connection.clone(),
            send_timeout: self.send_timeout,
        })
    }

    /// Queues `messages` as one batch: one entry in Pulsar's batch format, stored and
    /// acknowledged as a whole (every consumer, ours or Pulsar's, splits it into the single
    /// messages again). Each message takes its own sequence id and counts against
    /// [`ProducerBuilder::max_pending_messages`]; the receipt resolves to the entry's id.
    ///
    /// Cancel-safe as [`Producer::send_async`]. A batch of one is sent as a batch too.
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
        let body = crate::batch::encode_body(&messages);
        let max = self.connection.max_message_size();
        if body.len() > max {
            return Err(ClientError::MessageTooLarge { size: body.len(), max });
        }
        let permits = u32::try_from(count).unwrap_or(u32::MAX);
        let permit = self
            .in_flight
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| self.closed_error("its send queue was closed"))?;
        let sequence_id = self.next_sequence_id;
        let highest_sequence_id = sequence_id + count as u64 - 1;
        let metadata = pb::MessageMetadata {
            producer_name: self.name.clone(),
            sequence_id,
            highest_sequence_id: Some(highest_sequence_id),
            publish_time: now_millis(),
            num_messages_in_batch: Some(i32::try_from(count).unwrap_or(i32::MAX)),
            uncompressed_size: Some(u32::try_from(body.len()).unwrap_or(u32::MAX)),
            ..Default::default()
        };
        let mut command = command::send(self.producer_id, sequence_id, i32::try_from(count).unwrap_or(i32::MAX));
        if let Some(send) = command.send.as_mut() {
            send.highest_sequence_id = Some(highest_sequence_id);
        }
        let frame = Frame { command, payload: Some(Payload::new(metadata, &body)) };
        let receipt = self.connection.send_message(self.producer_id, sequence_id, frame, Some(permit)).await?;
        self.next_sequence_id = highest_sequence_id + 1;
        Ok(SendReceipt {
            receipt: Box::pin(tokio::time::timeout(self.send_timeout, receipt)),
            connection: self.connection.clone(),
            send_timeout: self.send_timeout,
        })
    }

    /// Closes the producer: the broker answers once the messages sent before are stored.
    /// Sends still waiting for receipts after that fail.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.closed = true;
        let producer_id = self.producer_id;
        let result = self.connection.request(|request_id| command::close_producer(producer_id, request_id)).await;
        self.connection.remove_producer(producer_id, "the producer was closed".into()).await;
        result.map(|_| ())
    }

    fn closed_error(&self, reason: &str) -> ClientError {
        ClientError::ProducerClosed {
            producer: self.name.clone(),
            topic: self.topic.to_string(),
            reason: reason.to_owned(),
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if !self.closed {
            self.connection.abandon_producer(self.producer_id);
        }
    }
}

/// The broker's answer to one send: resolves to the stored message's id, or to the error
/// that kept it from being stored (including no answer within the operation timeout).
#[derive(Debug)]
pub struct SendReceipt {
    receipt: Pin<Box<tokio::time::Timeout<oneshot::Receiver<ReceiptResult>>>>,
    connection: Connection,
    send_timeout: Duration,
}

impl Future for SendReceipt {
    type Output = Result<MessageId, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outcome = match this.receipt.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(outcome) => outcome,
        };
        Poll::Ready(match outcome {
            Err(_) => Err(ClientError::Timeout {
                broker: this.connection.broker().to_string(),
                operation: "SEND (waiting for its receipt)".into(),
                after: this.send_timeout,
            }),
            Ok(Err(_)) => Err(this.connection.disconnected()),
            Ok(Ok(result)) => result.map(|id| MessageId::from(&id)),
        })
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}
