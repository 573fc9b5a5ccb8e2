//! The task behind one partition's producer: it owns the broker connection, the open batch
//! and the messages waiting for their receipts, and is driven by [`TaskCommand`]s from the
//! [`Producer`](crate::Producer) handle through a bounded channel (when full, the handle
//! waits; the handle's semaphore already bounds what is queued).
//!
//! Every entry sent stays in `pending`, with its encoded frame, until its receipt arrives.
//! Receipts arrive in send order. When the connection is lost (or the broker closes the
//! producer), the task reconnects with backoff, registers again under the name the broker
//! confirmed the first time, and resends every pending frame in order with its original
//! sequence ids, so a broker with deduplication drops what it had stored already. Entries
//! older than the send timeout are failed instead of resent: their callers got a timeout
//! from their [`SendReceipt`](crate::SendReceipt) already.
//!
//! Receipts from before a reconnect are told apart by an epoch and ignored.
//!
//! A chunked message is one pending entry with several frames (chunks.rs), one receipt each:
//! it is answered once every chunk's receipt arrived, with the last chunk's id. Its chunks
//! are resent together. The topic epoch from PRODUCER_SUCCESS goes into every later PRODUCER
//! (exclusive access modes); a broker that answers a reconnect with ProducerFenced ends the
//! producer: its sends fail from then on, as Pulsar's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use magnetar_proto::clock::now_ms;
use magnetar_proto::pulsar as pb;
use magnetar_proto::pulsar::ServerError;
use magnetar_proto::{command, Frame, Payload};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::connection::{Connection, ReceiptResult};
use crate::error::{error_chain, ClientError};
use crate::message::MessageId;
use crate::producer::{PartitionHandle, ProducerConfig, ProducerMessage, SendResult, SentMessageId};
use crate::topic::TopicName;

/// Commands queued from the handle to the task; capacity of the channel.
const COMMAND_QUEUE_SIZE: usize = 256;

type Reply = oneshot::Sender<SendResult>;

#[derive(Debug)]
pub(crate) enum TaskCommand {
    Send { message: ProducerMessage, sequence_id: u64, permit: OwnedSemaphorePermit, reply: Reply },
    SendBatch { messages: Vec<ProducerMessage>, sequence_id: u64, permit: OwnedSemaphorePermit, reply: Reply },
    Flush { reply: oneshot::Sender<()> },
    Close { reply: oneshot::Sender<Result<(), ClientError>> },
}

/// A message in the open batch.
struct Queued {
    message: ProducerMessage,
    sequence_id: u64,
    reply: Reply,
    permit: OwnedSemaphorePermit,
}

/// One entry sent (or to be resent) and waiting for its receipt; a chunked message's
/// chunks are one such entry.
struct InFlight {
    sequence_id: u64,
    /// One frame, or one per chunk.
    frames: Vec<Frame>,
    /// The chunks' ids received so far (chunked messages only).
    chunk_ids: Vec<MessageId>,
    /// Who learns the id: one reply per message of an implicit batch (with its index), or
    /// one for the whole entry.
    replies: Vec<(Option<i32>, Reply)>,
    /// The handle's allowance, given back when the entry is answered.
    _permits: Vec<OwnedSemaphorePermit>,
    first_sent: Instant,
}

type ReceiptFuture = BoxFuture<'static, (u64, u64, Result<ReceiptResult, oneshot::error::RecvError>)>;

pub(crate) struct ProducerTask {
    client: Client,
    topic: TopicName,
    /// This partition's index, or -1; written into the ids handed out.
    partition: i32,
    name: String,
    producer_id: u64,
    connection: Connection,
    config: Arc<ProducerConfig>,
    /// Batches are closed at this size at the latest (the broker's limit, or less).
    max_batch_bytes: usize,
    next_sequence_id: Arc<AtomicU64>,
    send_timeout: Duration,
    commands: mpsc::Receiver<TaskCommand>,
    batch: Vec<Queued>,
    batch_bytes: usize,
    batch_deadline: Option<Instant>,
    pending: VecDeque<InFlight>,
    receipts: FuturesUnordered<ReceiptFuture>,
    /// Bumped on every reconnect; receipts of an older epoch are stale.
    epoch: u64,
    /// Flush calls waiting until every entry up to a sequence id is answered.
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// The handle is gone: finish what is pending, then stop.
    draining: bool,
    /// The version of the producer's schema, from PRODUCER_SUCCESS; stamped on every entry.
    schema_version: Option<Vec<u8>>,
    /// Set once the broker refused to take the producer back because its topic was
    /// terminated or another producer fenced it out: every send fails with this error from
    /// then on, as Pulsar's clients do.
    terminated: Option<(ServerError, String)>,
    /// The topic epoch from PRODUCER_SUCCESS, sent in every later PRODUCER.
    topic_epoch: Option<u64>,
}

impl ProducerTask {
    /// Registers the producer for `topic` and starts its task.
    pub(crate) async fn start(
        client: Client,
        topic: &str,
        partition: i32,
        name: Option<String>,
        config: Arc<ProducerConfig>,
        max_pending_messages: usize,
    ) -> Result<PartitionHandle, ClientError> {
        let (topic, connection, producer_id, success) = client
            .retry_while_unreachable(|| async {
                let (topic, connection) = client.topic_connection(topic).await?;
                let (producer_id, success) = register(&connection, &topic, name.clone(), &config, None).await?;
                Ok((topic, connection, producer_id, success))
            })
            .await?;
        let next_sequence_id = Arc::new(AtomicU64::new(
            u64::try_from(success.last_sequence_id.unwrap_or(-1).saturating_add(1)).unwrap_or(0),
        ));
        let max_message_size = connection.max_message_size();
        let max_batch_bytes =
            config.batching.map_or(max_message_size, |batching| batching.max_bytes.min(max_message_size));
        let send_timeout = connection.operation_timeout();
        let (commands, command_receiver) = mpsc::channel(COMMAND_QUEUE_SIZE);
        let handle = PartitionHandle {
            topic: topic.clone(),
            name: success.producer_name.clone(),
            next_sequence_id: next_sequence_id.clone(),
            commands,
            in_flight: Arc::new(Semaphore::new(max_pending_messages)),
            max_message_size,
            send_timeout,
        };
        let task = ProducerTask {
            client,
            topic,
            partition,
            name: success.producer_name,
            producer_id,
            connection,
            config,
            max_batch_bytes,
            next_sequence_id,
            send_timeout,
            commands: command_receiver,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_deadline: None,
            pending: VecDeque::new(),
            receipts: FuturesUnordered::new(),
            epoch: 0,
            flush_waiters: Vec::new(),
            draining: false,
            schema_version: success.schema_version,
            terminated: None,
            topic_epoch: success.topic_epoch,
        };
        tokio::spawn(task.run());
        Ok(handle)
    }

    async fn run(mut self) {
        loop {
            if self.draining && self.batch.is_empty() && self.pending.is_empty() {
                self.connection.abandon_producer(self.producer_id);
                return;
            }
            let deadline = self.batch_deadline;
            tokio::select! {
                command = self.commands.recv(), if !self.draining => match command {
                    Some(TaskCommand::Close { reply }) => {
                        let _ = reply.send(self.close().await);
                        return;
                    }
                    Some(command) => self.handle(command).await,
                    None => {
                        self.draining = true;
                        self.flush_batch().await;
                    }
                },
                Some((sequence_id, epoch, outcome)) = self.receipts.next(), if !self.receipts.is_empty() => {
                    if epoch == self.epoch {
                        self.on_receipt(sequence_id, outcome).await;
                    }
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.flush_batch().await;
                }
            }
        }
    }

    async fn handle(&mut self, command: TaskCommand) {
        if let Some((code, reason)) = &self.terminated {
            let refused = || ClientError::Server { code: *code, message: reason.clone() };
            match command {
                TaskCommand::Send { reply, .. } | TaskCommand::SendBatch { reply, .. } => {
                    let _ = reply.send(Err(refused()));
                }
                TaskCommand::Flush { reply } => {
                    let _ = reply.send(());
                }
                TaskCommand::Close { reply } => {
                    let _ = reply.send(Ok(()));
                }
            }
            return;
        }
        match command {
            TaskCommand::Send { message, sequence_id, permit, reply } => {
                let Some(batching) = self.config.batching.filter(|_| message.deliver_at_time.is_none()) else {
                    // Delayed messages go alone, as in Pulsar: the broker delays whole entries.
                    self.flush_batch().await;
                    match self.single_entry(sequence_id, &message) {
                        Ok(frames) => self.dispatch(sequence_id, frames, vec![(None, reply)], vec![permit]).await,
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                    return;
                };
                let size = message.payload.len();
                if !self.batch.is_empty() && self.batch_bytes + size > self.max_batch_bytes {
                    self.flush_batch().await;
                }
                if self.batch.is_empty() {
                    self.batch_deadline = Some(Instant::now() + batching.max_publish_delay);
                }
                self.batch_bytes += size;
                self.batch.push(Queued { message, sequence_id, reply, permit });
                if self.batch.len() >= batching.max_messages as usize || self.batch_bytes >= self.max_batch_bytes {
                    self.flush_batch().await;
                }
            }
            TaskCommand::SendBatch { messages, sequence_id, permit, reply } => {
                self.flush_batch().await;
                match self.batch_entry(sequence_id, &messages) {
                    Ok(frame) => self.dispatch(sequence_id, vec![frame], vec![(None, reply)], vec![permit]).await,
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            TaskCommand::Flush { reply } => {
                self.flush_batch().await;
                match self.pending.back() {
                    None => {
                        let _ = reply.send(());
                    }
                    Some(last) => self.flush_waiters.push((last.sequence_id, reply)),
                }
            }
            TaskCommand::Close { reply } => {
                // `run` handles Close before calling here; answer anyway rather than hang.
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Sends the open batch as one entry.
    async fn flush_batch(&mut self) {
        self.batch_deadline = None;
        self.batch_bytes = 0;
        if self.batch.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.batch);
        let sequence_id = queued[0].sequence_id;
        let mut messages = Vec::with_capacity(queued.len());
        let mut replies = Vec::with_capacity(queued.len());
        let mut permits = Vec::with_capacity(queued.len());
        for (index, item) in queued.into_iter().enumerate() {
            messages.push(item.message);
            replies.push((Some(index as i32), item.reply));
            permits.push(item.permit);
        }
        match self.batch_entry(sequence_id, &messages) {
            Ok(frame) => self.dispatch(sequence_id, vec![frame], replies, permits).await,
            Err(error) => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(copy_error(&error)));
                }
            }
        }
    }

    /// The SEND frame of one message on its own, or with chunking, one per chunk.
    fn single_entry(&self, sequence_id: u64, message: &ProducerMessage) -> Result<Vec<Frame>, ClientError> {
        let body = self.config.compression.compress(&message.payload)?;
        let metadata = pb::MessageMetadata {
            producer_name: self.name.clone(),
            sequence_id,
            publish_time: now_ms(),
            properties: message.wire_properties(),
            partition_key: message.key.clone(),
            partition_key_b64_encoded: message.key_is_base64.then_some(true),
            event_time: message.event_time,
            deliver_at_time: message.deliver_at_time,
            schema_version: self.schema_version.clone(),
            compression: self.config.compression.to_wire(),
            uncompressed_size: Some(u32::try_from(message.payload.len()).unwrap_or(u32::MAX)),
            null_value: message.null_value.then_some(true),
            ..Default::default()
        };
        let max = self.connection.max_message_size();
        let chunk_limit = self.config.chunk_max_message_size.map_or(max, |own| own.min(max));
        // As Pulsar, the metadata's room is kept free in every chunk; here with the chunk
        // fields at their longest, so a chunk never exceeds the limit.
        let uuid = format!("{}-{sequence_id}", self.name);
        let widest = i32::MAX as usize;
        let chunk_size = chunk_limit
            .saturating_sub(crate::chunks::chunk_metadata(&metadata, &uuid, widest, widest, widest).encoded_len());
        if !self.config.chunking || body.len() <= chunk_size.max(1) {
            if body.len() > max {
                return Err(ClientError::MessageTooLarge { size: body.len(), max });
            }
            return Ok(vec![Frame {
                command: command::send(self.producer_id, sequence_id, 1),
                payload: Some(Payload::new(metadata, &body)),
            }]);
        }
        if chunk_size == 0 {
            return Err(ClientError::InvalidConfig {
                setting: "chunk_max_message_size",
                reason: "leaves no room for a payload after the message metadata",
            });
        }
        let pieces = crate::chunks::split(&body, chunk_size);
        let count = pieces.len();
        Ok(pieces
            .into_iter()
            .enumerate()
            .map(|(chunk_id, piece)| {
                let chunk = crate::chunks::chunk_metadata(&metadata, &uuid, chunk_id, count, body.len());
                let mut command = command::send(self.producer_id, sequence_id, 1);
                if let Some(send) = command.send.as_mut() {
                    send.is_chunk = Some(true);
                }
                Frame { command, payload: Some(Payload::new(chunk, &piece)) }
            })
            .collect())
    }

    /// The SEND frame of `messages` as one batch entry with sequence ids from `sequence_id`.
    fn batch_entry(&self, sequence_id: u64, messages: &[ProducerMessage]) -> Result<Frame, ClientError> {
        let count = messages.len();
        let body = crate::batch::encode_body(messages);
        let compressed = self.config.compression.compress(&body)?;
        let max = self.connection.max_message_size();
        if compressed.len() > max {
            return Err(ClientError::MessageTooLarge { size: compressed.len(), max });
        }
        let highest_sequence_id = sequence_id + count as u64 - 1;
        let metadata = pb::MessageMetadata {
            producer_name: self.name.clone(),
            sequence_id,
            highest_sequence_id: Some(highest_sequence_id),
            publish_time: now_ms(),
            num_messages_in_batch: Some(i32::try_from(count).unwrap_or(i32::MAX)),
            schema_version: self.schema_version.clone(),
            compression: self.config.compression.to_wire(),
            uncompressed_size: Some(u32::try_from(body.len()).unwrap_or(u32::MAX)),
            ..Default::default()
        };
        let mut command = command::send(self.producer_id, sequence_id, i32::try_from(count).unwrap_or(i32::MAX));
        if let Some(send) = command.send.as_mut() {
            send.highest_sequence_id = Some(highest_sequence_id);
        }
        Ok(Frame { command, payload: Some(Payload::new(metadata, &compressed)) })
    }

    /// Records an entry as pending and sends it; a failed send reconnects, which resends it.
    async fn dispatch(
        &mut self,
        sequence_id: u64,
        frames: Vec<Frame>,
        replies: Vec<(Option<i32>, Reply)>,
        permits: Vec<OwnedSemaphorePermit>,
    ) {
        self.pending.push_back(InFlight {
            sequence_id,
            frames,
            chunk_ids: Vec::new(),
            replies,
            _permits: permits,
            first_sent: Instant::now(),
        });
        let frames = self.pending.back().map(|entry| entry.frames.clone()).unwrap_or_default();
        for frame in frames {
            if let Err(error) = self.send_frame(sequence_id, frame).await {
                debug!(topic = %self.topic, error = %error_chain(&error), "send failed; reconnecting");
                self.reconnect().await;
                return;
            }
        }
    }

    async fn send_frame(&mut self, sequence_id: u64, frame: Frame) -> Result<(), ClientError> {
        let receipt = self.connection.send_message(self.producer_id, sequence_id, frame, None).await?;
        let epoch = self.epoch;
        self.receipts.push(receipt.map(move |outcome| (sequence_id, epoch, outcome)).boxed());
        Ok(())
    }

    async fn on_receipt(&mut self, sequence_id: u64, outcome: Result<ReceiptResult, oneshot::error::RecvError>) {
        match outcome {
            Ok(Ok(id)) => {
                let Some(position) = self.pending.iter().position(|entry| entry.sequence_id == sequence_id) else {
                    return debug!(topic = %self.topic, sequence_id, "receipt for no pending entry");
                };
                let mut id = MessageId::from(&id);
                id.partition = self.partition;
                if let Some(entry) = self.pending.get_mut(position).filter(|entry| entry.frames.len() > 1) {
                    entry.chunk_ids.push(id);
                    if entry.chunk_ids.len() < entry.frames.len() {
                        return;
                    }
                }
                // Receipts come in order: anything before it was answered too (or is stale).
                let Some(entry) = self.pending.remove(position) else { return };
                let first_chunk_id = entry.chunk_ids.first().copied();
                for (batch_index, reply) in entry.replies {
                    let id = MessageId { batch_index: batch_index.unwrap_or(-1), ..id };
                    let _ = reply.send(Ok(SentMessageId { id, first_chunk_id }));
                }
            }
            Ok(Err(error)) if needs_reconnect(&error) => {
                info!(topic = %self.topic, producer = %self.name, error = %error_chain(&error), "lost the broker; reconnecting");
                self.reconnect().await;
            }
            Ok(Err(error)) => {
                if let Some(position) = self.pending.iter().position(|entry| entry.sequence_id == sequence_id) {
                    if let Some(entry) = self.pending.remove(position) {
                        for (_, reply) in entry.replies {
                            let _ = reply.send(Err(copy_error(&error)));
                        }
                    }
                }
            }
            Err(_) => {
                info!(topic = %self.topic, producer = %self.name, "connection task ended; reconnecting");
                self.reconnect().await;
            }
        }
        self.answer_flush_waiters();
    }

    fn answer_flush_waiters(&mut self) {
        let oldest = self.pending.front().map(|entry| entry.sequence_id);
        let waiters = std::mem::take(&mut self.flush_waiters);
        for (up_to, reply) in waiters {
            if oldest.is_none_or(|oldest| oldest > up_to) {
                let _ = reply.send(());
            } else {
                self.flush_waiters.push((up_to, reply));
            }
        }
    }

    /// Reconnects with backoff, registers again under the same name and resends every
    /// pending entry in order. Gives up only when nothing is left to send and the handle is
    /// gone.
    async fn reconnect(&mut self) {
        self.epoch += 1;
        self.receipts = FuturesUnordered::new();
        self.connection.remove_producer(self.producer_id, "reconnecting".into()).await;
        let mut attempt = 0;
        loop {
            self.expire_pending();
            if self.draining && self.pending.is_empty() && self.batch.is_empty() {
                return;
            }
            self.client.backoff(attempt).await;
            attempt = attempt.saturating_add(1);
            let connection = match self.client.lookup_connection(&self.topic).await {
                Ok(connection) => connection,
                Err(error) => {
                    // Credentials do not heal by themselves: said at warn, on attempts 1, 2, 4, 8, ...
                    if error.is_security_error() && attempt.is_power_of_two() {
                        warn!(topic = %self.topic, attempt, error = %error_chain(&error), "reconnect: lookup failed; retrying");
                    } else {
                        debug!(topic = %self.topic, attempt, error = %error_chain(&error), "reconnect: lookup failed");
                    }
                    continue;
                }
            };
            match register(&connection, &self.topic, Some(self.name.clone()), &self.config, self.topic_epoch).await {
                Ok((producer_id, success)) => {
                    self.schema_version = success.schema_version.clone();
                    self.topic_epoch = success.topic_epoch.or(self.topic_epoch);
                    let last = success.last_sequence_id.unwrap_or(-1);
                    if let Ok(next) = u64::try_from(last.saturating_add(1)) {
                        self.next_sequence_id.fetch_max(next, Ordering::Relaxed);
                    }
                    info!(topic = %self.topic, producer = %self.name, attempt, last_sequence_id = last,
                        pending = self.pending.len(), "producer reconnected; resending pending messages");
                    self.connection = connection;
                    self.producer_id = producer_id;
                    break;
                }
                Err(error) if error.server_code() == Some(ServerError::TopicTerminatedError) => {
                    info!(topic = %self.topic, producer = %self.name, "the topic was terminated: sends fail from now on");
                    self.terminate(ServerError::TopicTerminatedError, &error);
                    return;
                }
                Err(error) if error.server_code() == Some(ServerError::ProducerFenced) => {
                    info!(topic = %self.topic, producer = %self.name, "another producer fenced this one out: sends fail from now on");
                    self.terminate(ServerError::ProducerFenced, &error);
                    return;
                }
                Err(error) => {
                    // Credentials do not heal by themselves: said at warn, on attempts 1, 2, 4, 8, ...
                    if error.is_security_error() && attempt.is_power_of_two() {
                        warn!(topic = %self.topic, attempt, error = %error_chain(&error), "reconnect: PRODUCER failed; retrying");
                    } else {
                        debug!(topic = %self.topic, attempt, error = %error_chain(&error), "reconnect: PRODUCER failed");
                    }
                }
            }
        }
        let frames: Vec<(u64, Frame)> = self
            .pending
            .iter_mut()
            .flat_map(|entry| {
                entry.chunk_ids.clear();
                for frame in &mut entry.frames {
                    if let Some(send) = frame.command.send.as_mut() {
                        send.producer_id = self.producer_id;
                    }
                }
                let sequence_id = entry.sequence_id;
                entry.frames.iter().map(move |frame| (sequence_id, frame.clone())).collect::<Vec<_>>()
            })
            .collect();
        for (sequence_id, frame) in frames {
            if let Err(error) = self.send_frame(sequence_id, frame).await {
                warn!(topic = %self.topic, error = %error_chain(&error), "resend failed; the next receipt error reconnects");
                // The receipts of what was queued fail with the connection and bring us back.
                break;
            }
        }
    }

    /// The topic was terminated (or the producer fenced): what is pending or batched fails
    /// with `error`, and so will every later send.
    fn terminate(&mut self, code: ServerError, error: &ClientError) {
        self.terminated = Some((code, error.to_string()));
        self.batch_deadline = None;
        self.batch_bytes = 0;
        for queued in self.batch.drain(..) {
            let _ = queued.reply.send(Err(copy_error(error)));
        }
        for entry in self.pending.drain(..) {
            for (_, reply) in entry.replies {
                let _ = reply.send(Err(copy_error(error)));
            }
        }
        self.answer_flush_waiters();
    }

    /// Fails entries older than the send timeout: their callers have had a timeout already.
    fn expire_pending(&mut self) {
        let timeout = self.send_timeout;
        while let Some(entry) = self.pending.front() {
            if entry.first_sent.elapsed() < timeout {
                break;
            }
            if let Some(entry) = self.pending.pop_front() {
                warn!(topic = %self.topic, sequence_id = entry.sequence_id, "send timed out while reconnecting; dropped");
                for (_, reply) in entry.replies {
                    let _ = reply.send(Err(ClientError::Timeout {
                        broker: self.topic.to_string(),
                        operation: "SEND (reconnecting)".into(),
                        after: timeout,
                    }));
                }
            }
        }
        self.answer_flush_waiters();
    }

    async fn close(&mut self) -> Result<(), ClientError> {
        self.flush_batch().await;
        let producer_id = self.producer_id;
        let result = self.connection.request(|request_id| command::close_producer(producer_id, request_id)).await;
        // Receipts for everything sent before the close arrived before its answer.
        while let Some(Some((sequence_id, epoch, outcome))) = self.receipts.next().now_or_never() {
            if epoch == self.epoch {
                self.on_receipt(sequence_id, outcome).await;
            }
        }
        self.connection.remove_producer(producer_id, "the producer was closed".into()).await;
        for entry in self.pending.drain(..) {
            for (_, reply) in entry.replies {
                let _ = reply.send(Err(ClientError::ProducerClosed {
                    producer: self.name.clone(),
                    topic: self.topic.to_string(),
                    reason: "close() was called before the receipt arrived".into(),
                }));
            }
        }
        result.map(|_| ())
    }
}

/// Registers a producer on `connection`: PRODUCER, answered by PRODUCER_SUCCESS.
async fn register(
    connection: &Connection,
    topic: &TopicName,
    name: Option<String>,
    config: &ProducerConfig,
    topic_epoch: Option<u64>,
) -> Result<(u64, pb::CommandProducerSuccess), ClientError> {
    let producer_id = connection.new_producer_id();
    let topic_name = topic.to_string();
    let label = name.clone().unwrap_or_else(|| format!("#{producer_id}"));
    // Routing first, so that a CLOSE_PRODUCER right after the broker's answer finds it.
    connection.add_producer(producer_id, label, topic_name.clone()).await?;
    let answer = connection
        .request_producer(|request_id| {
            let mut producer = command::producer(&topic_name, producer_id, request_id, name);
            if let Some(body) = producer.producer.as_mut() {
                body.schema = config.schema.clone();
                if config.access_mode != crate::ProducerAccessMode::Shared {
                    body.producer_access_mode = Some(config.access_mode.to_wire() as i32);
                }
                body.topic_epoch = topic_epoch;
            }
            producer
        })
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
    Ok((producer_id, success))
}

/// Errors after which the producer reconnects rather than fail the send.
fn needs_reconnect(error: &ClientError) -> bool {
    matches!(error, ClientError::Disconnected { .. } | ClientError::ProducerClosed { .. })
}

/// The same error for another waiter (errors are not `Clone`: some hold an `io::Error`).
fn copy_error(error: &ClientError) -> ClientError {
    match error {
        ClientError::Server { code, message } => ClientError::Server { code: *code, message: message.clone() },
        ClientError::MessageTooLarge { size, max } => ClientError::MessageTooLarge { size: *size, max: *max },
        ClientError::Timeout { broker, operation, after } => {
            ClientError::Timeout { broker: broker.clone(), operation: operation.clone(), after: *after }
        }
        other => ClientError::SendFailed { reason: error_chain(other) },
    }
}
