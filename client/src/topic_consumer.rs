//! [`TopicConsumer`]: one subscription on one topic (or one partition): subscribe, flow
//! control, batch acknowledgement state, and resubscribing after the connection is lost.
//! The public [`Consumer`](crate::Consumer) and [`Reader`](crate::Reader) hold one per topic.
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
//!
//! Grouped acks (Pulsar's `acknowledgementsGroupTime`, `maxAcknowledgmentGroupSize`): with a
//! group time set, individual acks are collected in the [`AckHandle`] and a cumulative ack
//! keeps only the furthest; they go out in one ACK when `max_group_size` acks are collected,
//! when the owner's timer calls [`AckHandle::flush`] every group time, and before a close,
//! seek or redelivery. Collected acks of a lost connection are sent on the next one (ids
//! name positions of the subscription, not of a consumer id).
//!
//! Reconnect: when the connection ends (or the broker closes the consumer, as when a topic
//! moves), the next `receive` subscribes again with backoff under the same subscription and
//! consumer name, with fresh permits. Messages queued but not handed out are dropped: the
//! broker redelivers everything unacknowledged to the new consumer. A non-durable (reader)
//! subscription restarts after the last message handed out.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use magnetar_proto::command;
use magnetar_proto::pulsar::{self as pb, command_ack::AckType, command_subscribe};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::chunks::{ChunkAssembler, ChunkSettings};
use crate::client::Client;
use crate::connection::{Connection, ConsumerEvent};
use crate::entry::{decode_entry, DecodedEntry};
use crate::error::{error_chain, ClientError};
use crate::message::{Message, MessageId};
use crate::topic::TopicName;

/// What a SUBSCRIBE says; kept to subscribe again after a reconnect.
#[derive(Debug, Clone)]
pub(crate) struct SubscribeSettings {
    pub subscription: String,
    pub sub_type: command_subscribe::SubType,
    pub initial_position: command_subscribe::InitialPosition,
    pub receiver_queue_size: u32,
    pub consumer_name: Option<String>,
    /// False for a reader: the broker keeps no cursor.
    pub durable: bool,
    /// A reader's start; `None` for a durable subscription.
    pub start_message_id: Option<pb::MessageIdData>,
    /// A reader that starts at a specific id, inclusive of it.
    pub start_inclusive: bool,
    /// The schema sent in SUBSCRIBE (typed consumers).
    pub schema: Option<pb::Schema>,
    /// Read the compacted view of the topic (table views, compacted readers).
    pub read_compacted: bool,
    /// How chunked messages are collected.
    pub chunks: ChunkSettings,
    /// How acks are grouped; [`AckGrouping::IMMEDIATE`] for readers.
    pub ack_grouping: AckGrouping,
}

/// Acknowledgement state of one batch entry whose messages are not all acknowledged.
#[derive(Debug)]
pub(crate) struct BatchAcks {
    /// One bit per message of the batch: set once acknowledged (or never delivered).
    acked: Vec<u64>,
    remaining: u32,
}

impl BatchAcks {
    pub(crate) fn new(size: u32, delivered: &[i32]) -> Self {
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

/// What acknowledging and redelivering need, shared between a [`TopicConsumer`] and the
/// [`AckHandle`]s given to the consumer's timer task: the current connection and consumer id
/// (both change on a reconnect or seek) and the batch acknowledgement state.
#[derive(Debug)]
struct Route {
    connection: Connection,
    consumer_id: u64,
    /// Batch entries with messages not yet acknowledged, by (ledger, entry).
    batches: HashMap<(u64, u64), BatchAcks>,
    /// Chunked messages handed out and not acknowledged: the last chunk's (ledger, entry) to
    /// every chunk's id, so that acking or redelivering the message covers all its chunks.
    chunked: HashMap<(u64, u64), Vec<MessageId>>,
    /// Grouped acks not sent yet; `grouping` off sends each at once.
    grouping: AckGrouping,
    grouped: Vec<pb::MessageIdData>,
    grouped_cumulative: Option<MessageId>,
}

/// How acks are grouped (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckGrouping {
    /// Zero: every ack goes out at once.
    pub group_time: std::time::Duration,
    pub max_group_size: usize,
}

impl AckGrouping {
    pub(crate) const IMMEDIATE: AckGrouping = AckGrouping { group_time: std::time::Duration::ZERO, max_group_size: 1 };

    fn enabled(self) -> bool {
        !self.group_time.is_zero() && self.max_group_size > 1
    }
}

/// Acknowledges and redelivers on a topic consumer's current connection and consumer id,
/// from outside it (the timer task of [`Consumer`](crate::Consumer)).
#[derive(Debug, Clone)]
pub(crate) struct AckHandle {
    route: Arc<Mutex<Route>>,
}

impl AckHandle {
    fn route(&self) -> MutexGuard<'_, Route> {
        self.route.lock()
    }

    /// Acknowledges one message. For a message of a batch, the broker is told once every
    /// message of the batch was acknowledged. An error means the connection is lost.
    pub(crate) async fn ack(&self, id: MessageId) -> Result<(), ClientError> {
        let (connection, consumer_id, wire_ids) = {
            let mut route = self.route();
            if id.is_batched() {
                let entry = (id.ledger_id, id.entry_id);
                let Some(batch) = route.batches.get_mut(&entry) else {
                    // The whole entry was acknowledged already (cumulatively, or by its other
                    // messages), or redelivered.
                    return Ok(());
                };
                if batch.is_acked(id.batch_index) {
                    return Ok(());
                }
                if batch.remaining > 1 {
                    batch.mark(id.batch_index);
                    return Ok(());
                }
            }
            let wire_ids = match route.chunked.get(&(id.ledger_id, id.entry_id)) {
                Some(chunks) => chunks.iter().map(|chunk| chunk.to_wire()).collect(),
                None => vec![id.entry_id_only().to_wire()],
            };
            (route.connection.clone(), route.consumer_id, wire_ids)
        };
        let grouped = {
            let mut route = self.route();
            if route.grouping.enabled() {
                route.grouped.extend(wire_ids.iter().cloned());
                if id.is_batched() {
                    route.batches.remove(&(id.ledger_id, id.entry_id));
                }
                route.chunked.remove(&(id.ledger_id, id.entry_id));
                Some(route.grouped.len() >= route.grouping.max_group_size)
            } else {
                None
            }
        };
        match grouped {
            Some(true) => return self.flush().await,
            Some(false) => return Ok(()),
            None => {}
        }
        // The last one of a batch: tell the broker first, so a cancelled call can be repeated.
        connection.send_command(command::ack(consumer_id, AckType::Individual, wire_ids)).await?;
        let mut route = self.route();
        if id.is_batched() {
            route.batches.remove(&(id.ledger_id, id.entry_id));
        }
        route.chunked.remove(&(id.ledger_id, id.entry_id));
        Ok(())
    }

    /// Acknowledges the entry of `id` and everything before it (grouped: the furthest is
    /// kept until the next flush).
    pub(crate) async fn ack_cumulative(&self, id: MessageId) -> Result<(), ClientError> {
        let entry = id.entry_id_only();
        let position = (entry.ledger_id, entry.entry_id);
        let (connection, consumer_id) = {
            let mut route = self.route();
            route.batches.retain(|&batch_entry, _| batch_entry > position);
            route.chunked.retain(|&last_chunk, _| last_chunk > position);
            if route.grouping.enabled() {
                if route.grouped_cumulative.is_none_or(|kept| kept < entry) {
                    route.grouped_cumulative = Some(entry);
                }
                return Ok(());
            }
            (route.connection.clone(), route.consumer_id)
        };
        connection.send_command(command::ack(consumer_id, AckType::Cumulative, vec![entry.to_wire()])).await
    }

    /// Sends the grouped acks now. An error means the connection is lost (the acks are kept
    /// for the next flush).
    pub(crate) async fn flush(&self) -> Result<(), ClientError> {
        let (connection, consumer_id, individual, cumulative) = {
            let mut route = self.route();
            if route.grouped.is_empty() && route.grouped_cumulative.is_none() {
                return Ok(());
            }
            let individual = std::mem::take(&mut route.grouped);
            let cumulative = route.grouped_cumulative.take();
            (route.connection.clone(), route.consumer_id, individual, cumulative)
        };
        let mut result = Ok(());
        if let Some(cumulative) = cumulative {
            let ack = command::ack(consumer_id, AckType::Cumulative, vec![cumulative.to_wire()]);
            if let Err(error) = connection.send_command(ack).await {
                let mut route = self.route();
                route.grouped_cumulative = route.grouped_cumulative.max(Some(cumulative));
                result = Err(error);
            }
        }
        if !individual.is_empty() {
            let ack = command::ack(consumer_id, AckType::Individual, individual.clone());
            if let Err(error) = connection.send_command(ack).await {
                self.route().grouped.extend(individual);
                result = Err(error);
            }
        }
        result
    }

    /// Acknowledges chunks the assembler gave up on or did not need.
    pub(crate) async fn ack_entries(&self, ids: &[MessageId]) -> Result<(), ClientError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (connection, consumer_id) = {
            let route = self.route();
            (route.connection.clone(), route.consumer_id)
        };
        let wire = ids.iter().map(|id| id.entry_id_only().to_wire()).collect();
        connection.send_command(command::ack(consumer_id, AckType::Individual, wire)).await
    }

    /// Asks the broker to deliver these messages again (whole entries). An error means the
    /// connection is lost.
    pub(crate) async fn redeliver(&self, ids: &[MessageId]) -> Result<(), ClientError> {
        // Acks first, so the broker does not redeliver what was acknowledged meanwhile.
        self.flush().await?;
        let (connection, consumer_id, entries) = {
            let mut route = self.route();
            let mut entries = Vec::with_capacity(ids.len());
            for id in ids {
                match route.chunked.remove(&(id.ledger_id, id.entry_id)) {
                    Some(chunks) => entries.extend(chunks),
                    None => entries.push(id.entry_id_only()),
                }
            }
            entries.sort();
            entries.dedup();
            for entry in &entries {
                // Redelivered messages of a batch come back with a fresh ack state.
                route.batches.remove(&(entry.ledger_id, entry.entry_id));
            }
            (route.connection.clone(), route.consumer_id, entries)
        };
        let wire = entries.into_iter().map(MessageId::to_wire).collect();
        connection.send_command(command::redeliver_unacknowledged_messages(consumer_id, wire)).await
    }
}

/// One subscription on one topic or partition.
#[derive(Debug)]
pub(crate) struct TopicConsumer {
    client: Client,
    connection: Connection,
    topic: TopicName,
    /// The topic's name as messages carry it.
    topic_name: String,
    /// The partition index written into message ids, or -1.
    partition: i32,
    settings: SubscribeSettings,
    consumer_id: u64,
    /// Entries from the connection task; capacity: the receiver queue size.
    events: mpsc::Receiver<ConsumerEvent>,
    /// Messages of an entry already split, waiting for `receive`.
    ready: VecDeque<Message>,
    /// Chunks of chunked messages being put together.
    assembler: ChunkAssembler,
    /// Chunks to acknowledge that the application never sees (expired, duplicates).
    chunk_acks: Vec<MessageId>,
    /// Shared with the [`AckHandle`]s: kept in step with `connection` and `consumer_id`.
    route: AckHandle,
    /// Permits used since the last FLOW.
    unsent_permits: u32,
    /// Send FLOW once this many permits were used: half the queue.
    refill_threshold: u32,
    /// The last message handed out: where a reader resumes after a reconnect, and what
    /// `has_message_available` compares with.
    pub last_received: Option<MessageId>,
    /// Set when the connection was lost: the next `receive` subscribes again.
    lost: Option<String>,
    /// Why the consumer can receive no more, once `close` was called.
    closed: Option<String>,
}

impl TopicConsumer {
    pub(crate) async fn subscribe(
        client: Client,
        topic: &str,
        partition: i32,
        settings: SubscribeSettings,
    ) -> Result<TopicConsumer, ClientError> {
        let (topic, connection, consumer_id, events) = client
            .retry_while_unreachable(|| async {
                let (topic, connection) = client.topic_connection(topic).await?;
                let (consumer_id, events) = register(&connection, &topic, &settings).await?;
                Ok((topic, connection, consumer_id, events))
            })
            .await?;
        debug!(%topic, subscription = %settings.subscription, consumer_id, "subscribed");
        let settings_grouping = settings.ack_grouping;
        Ok(TopicConsumer {
            client,
            connection: connection.clone(),
            topic_name: topic.to_string(),
            topic,
            partition,
            refill_threshold: (settings.receiver_queue_size / 2).max(1),
            assembler: ChunkAssembler::new(settings.chunks),
            settings,
            consumer_id,
            events,
            ready: VecDeque::new(),
            chunk_acks: Vec::new(),
            route: AckHandle {
                route: Arc::new(Mutex::new(Route {
                    connection,
                    consumer_id,
                    batches: HashMap::new(),
                    chunked: HashMap::new(),
                    grouping: settings_grouping,
                    grouped: Vec::new(),
                    grouped_cumulative: None,
                })),
            },
            unsent_permits: 0,
            last_received: None,
            lost: None,
            closed: None,
        })
    }

    pub(crate) fn topic_name(&self) -> &str {
        &self.topic_name
    }

    /// A handle that acknowledges and redelivers on this consumer's current connection.
    pub(crate) fn ack_handle(&self) -> AckHandle {
        self.route.clone()
    }

    /// Points the consumer (and its handles) at a new connection or consumer id.
    fn set_route(&mut self, connection: Connection, consumer_id: u64) {
        let mut route = self.route.route();
        route.connection = connection.clone();
        route.consumer_id = consumer_id;
        route.batches.clear();
        drop(route);
        self.connection = connection;
        self.consumer_id = consumer_id;
    }

    /// Waits for the next message. Cancel-safe, except that a reconnect cancelled half-way
    /// starts over.
    pub(crate) async fn receive(&mut self) -> Result<Message, ClientError> {
        loop {
            if let Some(reason) = &self.closed {
                return Err(self.closed_error(reason.clone()));
            }
            if self.lost.is_some() {
                self.resubscribe().await;
                continue;
            }
            if self.unsent_permits >= self.refill_threshold {
                // Cancelling here loses nothing: the count is reset only once FLOW is queued.
                if self.connection.send_command(command::flow(self.consumer_id, self.unsent_permits)).await.is_err() {
                    self.lost = Some(self.connection.disconnected().to_string());
                    continue;
                }
                self.unsent_permits = 0;
            }
            if !self.chunk_acks.is_empty() {
                let ids = std::mem::take(&mut self.chunk_acks);
                if let Err(error) = self.route.ack_entries(&ids).await {
                    self.note_send_result(Err(error));
                    continue;
                }
            }
            if let Some(message) = self.ready.pop_front() {
                self.unsent_permits += 1;
                self.last_received = Some(message.id);
                return Ok(message);
            }
            let event = match self.assembler.next_expiry() {
                None => self.events.recv().await,
                Some(expiry) => match tokio::time::timeout_at(expiry, self.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        let step = self.assembler.expire(tokio::time::Instant::now());
                        self.chunk_acks.extend(step.ack);
                        continue;
                    }
                },
            };
            match event {
                None => self.lost = Some(self.end_reason()),
                Some(ConsumerEvent::Closed { reason }) => self.lost = Some(reason),
                Some(ConsumerEvent::Message { command, payload }) => match decode_entry(&command, &payload) {
                    Ok(decoded) => self.accept(decoded)?,
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

    /// Subscribes again after the connection was lost, with backoff, until it works or the
    /// consumer is closed.
    async fn resubscribe(&mut self) {
        let reason = self.lost.clone().unwrap_or_default();
        info!(topic = %self.topic, subscription = %self.settings.subscription, %reason, "consumer lost its broker; subscribing again");
        self.connection.remove_consumer(self.consumer_id).await;
        self.ready.clear();
        self.assembler.clear();
        self.chunk_acks.clear();
        self.route.route().batches.clear();
        self.unsent_permits = 0;
        if !self.settings.durable {
            if let Some(last) = self.last_received {
                self.settings.start_message_id = Some(last.to_wire());
                self.settings.start_inclusive = false;
            }
        }
        let mut attempt = 0;
        loop {
            self.client.backoff(attempt).await;
            attempt = attempt.saturating_add(1);
            let connection = match self.client.lookup_connection(&self.topic).await {
                Ok(connection) => connection,
                Err(error) => {
                    // Credentials do not heal by themselves: said at warn, on attempts 1, 2, 4, 8, ...
                    if error.is_security_error() && attempt.is_power_of_two() {
                        warn!(topic = %self.topic, attempt, error = %error_chain(&error), "resubscribe: lookup failed; retrying");
                    } else {
                        debug!(topic = %self.topic, attempt, error = %error_chain(&error), "resubscribe: lookup failed");
                    }
                    continue;
                }
            };
            match register(&connection, &self.topic, &self.settings).await {
                Ok((consumer_id, events)) => {
                    info!(topic = %self.topic, subscription = %self.settings.subscription, attempt, "consumer subscribed again");
                    self.set_route(connection, consumer_id);
                    self.events = events;
                    self.lost = None;
                    return;
                }
                Err(error) => {
                    // Credentials do not heal by themselves: said at warn, on attempts 1, 2, 4, 8, ...
                    if error.is_security_error() && attempt.is_power_of_two() {
                        warn!(topic = %self.topic, attempt, error = %error_chain(&error), "resubscribe: SUBSCRIBE failed; retrying");
                    } else {
                        debug!(topic = %self.topic, attempt, error = %error_chain(&error), "resubscribe: SUBSCRIBE failed");
                    }
                }
            }
        }
    }

    /// Acknowledges one message. For a message of a batch, the broker is told once every
    /// message of the batch was acknowledged.
    pub(crate) async fn ack(&mut self, id: MessageId) -> Result<(), ClientError> {
        if self.lost.is_some() {
            debug!(topic = %self.topic, "connection lost: the ack is dropped, the broker redelivers");
            return Ok(());
        }
        let result = self.route.ack(id).await;
        self.note_send_result(result);
        Ok(())
    }

    /// Acknowledges the entry of `id` and everything before it.
    pub(crate) async fn ack_cumulative(&mut self, id: MessageId) -> Result<(), ClientError> {
        if self.lost.is_some() {
            debug!(topic = %self.topic, "connection lost: the ack is dropped, the broker redelivers");
            return Ok(());
        }
        let result = self.route.ack_cumulative(id).await;
        self.note_send_result(result);
        Ok(())
    }

    /// The id of the last message stored in the topic (GET_LAST_MESSAGE_ID).
    pub(crate) async fn last_message_id(&self) -> Result<MessageId, ClientError> {
        let consumer_id = self.consumer_id;
        let answer =
            self.connection.request(|request_id| command::get_last_message_id(consumer_id, request_id)).await?;
        let response = answer.get_last_message_id_response.ok_or_else(|| ClientError::UnexpectedResponse {
            broker: self.connection.broker().to_string(),
            expected: "GET_LAST_MESSAGE_ID_RESPONSE",
            got: crate::connection::command_name(answer.command_type),
        })?;
        let mut id = MessageId::from(&response.last_message_id);
        id.partition = self.partition;
        Ok(id)
    }

    /// Whether a message is queued here already.
    pub(crate) fn has_queued(&self) -> bool {
        !self.ready.is_empty()
    }

    /// SEEK: the subscription moves to `id` (or to the first message published at or after
    /// `publish_time`). Then, as Pulsar's broker makes its clients do by disconnecting them,
    /// the consumer starts over with a fresh consumer id: whatever was in flight belongs to
    /// the old position and is dropped with the old id's channel.
    pub(crate) async fn seek(&mut self, id: Option<MessageId>, publish_time: Option<u64>) -> Result<(), ClientError> {
        // Acks of messages before the seek go out first, as Pulsar's clients flush them.
        if let Err(error) = self.route.flush().await {
            debug!(topic = %self.topic, error = %error_chain(&error), "cannot flush acks before a seek");
        }
        let consumer_id = self.consumer_id;
        let wire = id.map(MessageId::to_wire);
        self.connection.request(|request_id| command::seek(consumer_id, request_id, wire, publish_time)).await?;
        self.connection.abandon_consumer(consumer_id);
        self.ready.clear();
        self.assembler.clear();
        self.chunk_acks.clear();
        self.route.route().batches.clear();
        self.unsent_permits = 0;
        self.last_received = None;
        if !self.settings.durable {
            if let Some(id) = id {
                let mut start = id.to_wire();
                // With a batch index the broker starts at the entry itself: inclusive.
                start.batch_index = Some(id.batch_index);
                self.settings.start_message_id = Some(start);
                self.settings.start_inclusive = true;
            }
        }
        match register(&self.connection, &self.topic, &self.settings).await {
            Ok((consumer_id, events)) => {
                self.set_route(self.connection.clone(), consumer_id);
                self.events = events;
                Ok(())
            }
            Err(error) => {
                // The next receive subscribes again with backoff.
                self.lost = Some(error.to_string());
                Ok(())
            }
        }
    }

    pub(crate) async fn close(&mut self) -> Result<(), ClientError> {
        if self.closed.is_some() {
            return Ok(());
        }
        self.closed = Some("close() was called".into());
        if let Err(error) = self.route.flush().await {
            debug!(topic = %self.topic, error = %error_chain(&error), "cannot flush acks before closing");
        }
        let consumer_id = self.consumer_id;
        let result = self.connection.request(|request_id| command::close_consumer(consumer_id, request_id)).await;
        self.connection.remove_consumer(consumer_id).await;
        result.map(|_| ())
    }

    /// Queues the messages of a decoded entry; a chunk goes to the assembler, and the message
    /// is queued once complete. An error concerns this entry's message only.
    fn accept(&mut self, decoded: DecodedEntry) -> Result<(), ClientError> {
        let DecodedEntry { mut messages, permits, batch_size, chunk } = decoded;
        if let Some(chunk) = chunk {
            // The entry's permit is used now; the whole message, once complete, takes none.
            self.unsent_permits = self.unsent_permits.saturating_add(permits);
            let step = self.assembler.add(chunk, tokio::time::Instant::now());
            let step = match step {
                Ok(step) => step,
                Err(error) => return Err(error),
            };
            self.chunk_acks.extend(step.ack);
            if !step.dropped.is_empty() {
                debug!(topic = %self.topic, dropped = step.dropped.len(), "chunks dropped unacknowledged; the broker redelivers them");
            }
            let Some(assembled) = step.complete else { return Ok(()) };
            let mut message = crate::entry::assembled_message(assembled)?;
            message.id.partition = self.partition;
            for id in &mut message.chunk_ids {
                id.partition = self.partition;
            }
            message.topic.clone_from(&self.topic_name);
            self.route.route().chunked.insert((message.id.ledger_id, message.id.entry_id), message.chunk_ids.clone());
            // Popping it from `ready` counts a permit again: take it back here.
            self.unsent_permits = self.unsent_permits.saturating_sub(1);
            self.ready.push_back(message);
            return Ok(());
        }
        let delivered = u32::try_from(messages.len()).unwrap_or(u32::MAX);
        // Messages charged for but not delivered use their permits now.
        self.unsent_permits = self.unsent_permits.saturating_add(permits.saturating_sub(delivered));
        // A reader starting at a batch message gets the whole entry; skip what is before its
        // start (and the start itself unless inclusive), as Pulsar's client does.
        if let Some(start) = self.settings.start_message_id.as_ref().filter(|_| !self.settings.durable) {
            let start = MessageId::from(start);
            let before = messages.len();
            messages.retain(|message| {
                let id = message.id;
                if (id.ledger_id, id.entry_id) != (start.ledger_id, start.entry_id) {
                    return true;
                }
                if self.settings.start_inclusive {
                    id.batch_index >= start.batch_index
                } else {
                    start.batch_index >= 0 && id.batch_index > start.batch_index
                }
            });
            let skipped = u32::try_from(before - messages.len()).unwrap_or(0);
            self.unsent_permits = self.unsent_permits.saturating_add(skipped);
        }
        for message in &mut messages {
            message.id.partition = self.partition;
            message.topic.clone_from(&self.topic_name);
        }
        if let (Some(size), Some(first)) = (batch_size, messages.first()) {
            let indexes: Vec<i32> = messages.iter().map(|message| message.id.batch_index).collect();
            self.route.route().batches.insert((first.id.ledger_id, first.id.entry_id), BatchAcks::new(size, &indexes));
        }
        self.ready.extend(messages);
        Ok(())
    }

    fn note_send_result(&mut self, result: Result<(), ClientError>) {
        if let Err(error) = result {
            debug!(topic = %self.topic, error = %error_chain(&error), "connection lost while sending a command");
            self.lost = Some(error.to_string());
        }
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
        ClientError::ConsumerClosed {
            subscription: self.settings.subscription.clone(),
            topic: self.topic.to_string(),
            reason,
        }
    }
}

impl Drop for TopicConsumer {
    fn drop(&mut self) {
        if self.closed.is_none() {
            self.connection.abandon_consumer(self.consumer_id);
        }
    }
}

/// Registers a consumer on `connection`: routing, SUBSCRIBE, then the first FLOW.
async fn register(
    connection: &Connection,
    topic: &TopicName,
    settings: &SubscribeSettings,
) -> Result<(u64, mpsc::Receiver<ConsumerEvent>), ClientError> {
    let consumer_id = connection.new_consumer_id();
    let (sender, events) = mpsc::channel(settings.receiver_queue_size as usize);
    connection.add_consumer(consumer_id, sender).await?;
    let topic_name = topic.to_string();
    let subscribe = |request_id| {
        let mut subscribe = command::subscribe(
            &topic_name,
            &settings.subscription,
            settings.sub_type,
            consumer_id,
            request_id,
            settings.initial_position,
        );
        if let Some(body) = subscribe.subscribe.as_mut() {
            body.consumer_name = settings.consumer_name.clone();
            body.schema = settings.schema.clone();
            if settings.sub_type == command_subscribe::SubType::KeyShared {
                body.key_shared_meta = Some(pb::KeySharedMeta {
                    key_shared_mode: pb::KeySharedMode::AutoSplit as i32,
                    hash_ranges: Vec::new(),
                    allow_out_of_order_delivery: Some(false),
                });
            }
            if !settings.durable {
                body.durable = Some(false);
                body.start_message_id = settings.start_message_id.clone();
            }
            if settings.read_compacted {
                body.read_compacted = Some(true);
            }
        }
        subscribe
    };
    if let Err(error) = connection.request(subscribe).await {
        connection.remove_consumer(consumer_id).await;
        return Err(error);
    }
    connection.send_command(command::flow(consumer_id, settings.receiver_queue_size)).await?;
    Ok((consumer_id, events))
}

#[cfg(test)]
mod tests {
    use super::*;

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
