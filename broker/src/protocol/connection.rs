//! One client connection.
//!
//! Two tasks: this reader, which decodes frames and handles each command in turn, and a
//! writer fed by a bounded queue ([`OUTBOUND_QUEUE`](super::OUTBOUND_QUEUE)) that dispatchers,
//! receipt tasks and the reader all send frames through. Each producer has a receipt task
//! that answers its publishes strictly in order (Pulsar clients require receipts in send
//! order) once each is durable.
//!
//! Bad input never takes the broker down: a frame that cannot be decoded but left the stream
//! in step is answered with an error and the connection goes on; a frame that breaks the
//! stream (oversized, truncated) closes this connection with a log line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use magnetar_proto::command;
use magnetar_proto::frame::{self, FrameCodec, FrameError, Payload};
use magnetar_proto::pulsar::{self as pb, base_command::Type, BaseCommand, ServerError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::consumer::ConnectionConsumer;
use super::convert;
use super::receipts::{self, answer_receipts, PendingReceipt, ReceiptItem};
use super::topic_list;
use super::{Outbound, MAX_PENDING_SENDS_PER_PRODUCER, OUTBOUND_QUEUE};
use crate::cluster::ownership::LookupAnswer;
use crate::dedup::Published;
use crate::dispatcher::{SubscribeOptions, SubscriptionType};
use crate::error::BrokerError;
use crate::managed_ledger::{AddFuture, Position};
use crate::metrics::Metrics;
use crate::non_persistent::NonPersistentTopic;
use crate::security::{Credentials, Identity, TopicAction};
use crate::service::BrokerService;
use crate::stats::{now_rfc3339, ClientInfo, ConsumerStats, Meter, ProducerStats};
use crate::subscription::start::{mark_delete_for_publish_time, start_before};
use crate::subscription::{NewConsumer, StartAt, Subscription};
use crate::topic::{Admission, QuotaVerdict, Topic};
use crate::topic_name::TopicName;

const SERVER_VERSION: &str = concat!("Magnetar ", env!("CARGO_PKG_VERSION"));
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Distinguishes producers across connections when they unregister.
/// Topic list watchers one connection may hold (each is a metadata watch).
const MAX_WATCHERS_PER_CONNECTION: usize = 256;

static NEXT_PRODUCER_KEY: AtomicU64 = AtomicU64::new(1);
/// Consumer ids are the client's, unique on its connection only (every client numbers its
/// consumers from 0): a subscription knows its consumers by a key unique in the broker.
static NEXT_CONSUMER_KEY: AtomicU64 = AtomicU64::new(1);

struct ProducerEntry {
    topic: Arc<Topic>,
    name: String,
    key: u64,
    receipts: mpsc::Sender<ReceiptItem>,
    /// Set once the topic closed under this producer: its publishes are dropped unanswered
    /// (the client resends them after CLOSE_PRODUCER) and its id may be registered again.
    closed: Arc<AtomicBool>,
    /// False while a WaitForExclusive producer waits for its turn; SENDs are refused until then.
    ready: Arc<AtomicBool>,
    /// Sends held by a backlog quota and not yet published; later sends queue behind them.
    held: Arc<AtomicUsize>,
}

struct ConsumerEntry {
    /// How its subscription knows it ([`NEXT_CONSUMER_KEY`]).
    key: u64,
    topic: Arc<Topic>,
    subscription: Arc<Subscription>,
    /// Its counters, as its subscription holds them (CONSUMER_STATS finds it by them).
    stats: Arc<ConsumerStats>,
}

/// A producer on a non-persistent topic ([`super::non_persistent`]).
pub(super) struct NpProducerEntry {
    pub(super) topic: Arc<NonPersistentTopic>,
    pub(super) key: u64,
    pub(super) stats: Arc<ProducerStats>,
    /// Set when the topic closed (unload) or another producer fenced it out.
    pub(super) closed: Arc<AtomicBool>,
}

/// A consumer on a non-persistent topic.
pub(super) struct NpConsumerEntry {
    pub(super) topic: Arc<NonPersistentTopic>,
    pub(super) subscription: String,
    pub(super) key: u64,
    pub(super) stats: Arc<ConsumerStats>,
    pub(super) sub_type: &'static str,
}

pub(super) struct Connection {
    pub(super) service: Arc<BrokerService>,
    pub(super) peer: SocketAddr,
    outbound: mpsc::Sender<Outbound>,
    connected: bool,
    /// Who the client is (set by CONNECT; refreshed by AUTH_RESPONSE).
    pub(super) identity: Identity,
    /// The common name of the client's TLS certificate, on a TLS connection that has one.
    client_common_name: Option<String>,
    /// Set when an AUTH_CHALLENGE went out and no good answer came back yet.
    challenged: bool,
    /// The client said it answers AUTH_CHALLENGE (`FeatureFlags.supports_auth_refresh`);
    /// a client that did not is disconnected when its credentials expire, as Pulsar does.
    refreshes_auth: bool,
    /// Who the client is for stats: its address, its version from CONNECT, when it came.
    client: ClientInfo,
    producers: HashMap<u64, ProducerEntry>,
    consumers: HashMap<u64, ConsumerEntry>,
    /// Topic list watchers (WATCH_TOPIC_LIST) by watcher id; cancelled when closed.
    watchers: HashMap<u64, CancellationToken>,
    /// Producers and consumers on non-persistent topics ([`super::non_persistent`]).
    pub(super) np_producers: HashMap<u64, NpProducerEntry>,
    pub(super) np_consumers: HashMap<u64, NpConsumerEntry>,
}

/// What the listener knows of a connection before its first frame.
pub struct Peer {
    pub address: SocketAddr,
    /// The common name of the TLS client certificate, if the connection is TLS and has one.
    pub client_common_name: Option<String>,
}

/// Serves one connection, given as its two halves, until the client leaves, the stream
/// breaks or `cancel` fires.
pub async fn serve<R, W>(service: Arc<BrokerService>, mut reader: R, writer: W, peer: Peer, cancel: CancellationToken)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    Metrics::add(&service.metrics.connections_opened, 1);
    let Peer { address: peer, client_common_name } = peer;
    let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
    let writer_task = tokio::spawn(write_frames(writer, queue, service.config.max_frame_size(), peer));
    let mut connection = Connection {
        service: service.clone(),
        peer,
        outbound,
        connected: false,
        identity: Identity::unauthenticated(),
        client_common_name,
        challenged: false,
        refreshes_auth: false,
        client: ClientInfo { address: peer.to_string(), client_version: String::new(), connected_since: now_rfc3339() },
        producers: HashMap::new(),
        consumers: HashMap::new(),
        watchers: HashMap::new(),
        np_producers: HashMap::new(),
        np_consumers: HashMap::new(),
    };
    // Credentials that expire are checked this often (Pulsar's authenticationRefreshCheckSeconds).
    let mut refresh = tokio::time::interval(service.security.refresh_check);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh.reset();
    let mut codec = FrameCodec::new(service.config.max_frame_size());
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    'read: loop {
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(mut frame)) => {
                    // The commands of every message take a short way: a `BaseCommand` is
                    // large, and moving it through `handle` costs copies per message.
                    match connection.frequent(&mut frame.command) {
                        Some(Frequent::Send(send)) => connection.on_send(send, frame.payload).await,
                        Some(Frequent::Ack(ack)) => connection.on_ack(ack).await,
                        Some(Frequent::Flow(flow)) => connection.on_flow(&flow),
                        None => {
                            if !connection.handle(frame.command, frame.payload).await {
                                break 'read;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    Metrics::add(&service.metrics.protocol_errors, 1);
                    if !connection.frame_error(error).await {
                        break 'read;
                    }
                }
            }
        }
        buffer.reserve(READ_CHUNK);
        let read = tokio::select! {
            read = reader.read_buf(&mut buffer) => read,
            _ = refresh.tick() => {
                if !connection.check_credentials().await {
                    break;
                }
                continue;
            }
            () = cancel.cancelled() => break,
        };
        match read {
            Ok(0) => {
                if !buffer.is_empty() {
                    warn!(%peer, buffered = buffer.len(), "connection closed inside a frame");
                }
                break;
            }
            Ok(_) => {}
            Err(error) => {
                debug!(%peer, %error, "read failed");
                break;
            }
        }
    }
    connection.cleanup();
    drop(connection);
    let _ = writer_task.await;
    Metrics::add(&service.metrics.connections_closed, 1);
    debug!(%peer, "connection closed");
}

/// Writes what is queued for the connection, gathering every frame waiting into one
/// vectored write: commands (and small payloads) are encoded into one buffer, and a stored
/// entry's payload is written from its own bytes, never copied, however many consumers get it.
/// A command taken the short way (see [`Connection::frequent`]).
enum Frequent {
    Send(pb::CommandSend),
    Ack(pb::CommandAck),
    Flow(pb::CommandFlow),
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Outbound>,
    max_frame_size: usize,
    peer: SocketAddr,
) {
    let mut heads = BytesMut::with_capacity(64 * 1024);
    let mut parts: Vec<Bytes> = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        let mut gathered = 0usize;
        while let Some(frame) = next.take() {
            let payload_len = frame.payload.as_ref().map_or(0, Bytes::len);
            match frame::encode_head(&frame.command, payload_len, max_frame_size, &mut heads) {
                Ok(()) => match frame.payload {
                    Some(payload) if payload.len() >= COPY_PAYLOADS_BELOW => {
                        parts.push(heads.split().freeze());
                        parts.push(payload);
                    }
                    Some(payload) => heads.extend_from_slice(&payload),
                    None => {}
                },
                Err(error) => warn!(%peer, %error, "cannot encode an outgoing frame; dropping it"),
            }
            gathered += payload_len;
            if gathered + heads.len() < 256 * 1024 && parts.len() < MAX_WRITE_PARTS {
                next = queue.try_recv().ok();
            }
        }
        if !heads.is_empty() {
            parts.push(heads.split().freeze());
        }
        if let Err(error) = write_all_parts(&mut writer, &mut parts).await {
            debug!(%peer, %error, "write failed");
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Payloads shorter than this are copied next to their command (cheaper than a separate
/// slice of the vectored write).
const COPY_PAYLOADS_BELOW: usize = 512;
/// Slices in one gathered write (Linux takes at most 1024 per writev).
const MAX_WRITE_PARTS: usize = 1000;

/// Writes every part in order with vectored writes, emptying `parts`.
async fn write_all_parts<W: AsyncWrite + Unpin>(writer: &mut W, parts: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut done = 0;
    while done < parts.len() {
        let slices: Vec<std::io::IoSlice<'_>> =
            parts[done..].iter().take(MAX_WRITE_PARTS).map(|part| std::io::IoSlice::new(part)).collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let part = &mut parts[done];
            let taken = written.min(part.len());
            bytes::Buf::advance(part, taken);
            written -= taken;
            if part.is_empty() {
                done += 1;
            }
        }
        while done < parts.len() && parts[done].is_empty() {
            done += 1;
        }
    }
    parts.clear();
    Ok(())
}

/// Adds the broker's `pulsar+ssl://` URL to a lookup answer.
fn with_tls_url(answer: &mut BaseCommand, url_tls: Option<&str>) {
    if let Some(response) = answer.lookup_topic_response.as_mut() {
        response.broker_service_url_tls = url_tls.map(str::to_owned);
    }
}

/// What this broker supports, told to every client in CONNECTED as Pulsar's broker does:
/// credentials refresh, entry metadata, partial producers (ExclusiveWithFencing, waiting
/// producers) and topic-list watchers (WATCH_TOPIC_LIST for pattern consumers).
fn feature_flags() -> pb::FeatureFlags {
    pb::FeatureFlags {
        supports_auth_refresh: Some(true),
        supports_broker_entry_metadata: Some(true),
        supports_partial_producer: Some(true),
        supports_topic_watchers: Some(true),
        supports_get_partitioned_metadata_without_auto_creation: Some(true),
        ..Default::default()
    }
}

/// The request id a command carries, for error answers.
fn request_id_of(command: &BaseCommand) -> Option<u64> {
    command::request_id(command)
}

impl Connection {
    pub(super) async fn send(&self, command: BaseCommand) {
        // A closed writer means the connection is ending; the reader notices on its own.
        let _ = self.outbound.send(Outbound::command(command)).await;
    }

    /// The connection's writer queue.
    pub(super) fn outbound(&self) -> mpsc::Sender<Outbound> {
        self.outbound.clone()
    }

    /// Who the client is, for stats.
    pub(super) fn client_info(&self) -> ClientInfo {
        self.client.clone()
    }

    pub(super) fn has_producer_id(&self, producer_id: u64) -> bool {
        self.producers.contains_key(&producer_id)
    }

    pub(super) fn has_consumer_id(&self, consumer_id: u64) -> bool {
        self.consumers.contains_key(&consumer_id)
    }

    pub(super) async fn send_error(&self, request_id: u64, error: &BrokerError) {
        self.send(command::error(request_id, error.server_error(), &error.to_string())).await;
    }

    /// Answers a frame that could not be decoded; false closes the connection.
    async fn frame_error(&mut self, error: FrameError) -> bool {
        if error.is_fatal() {
            warn!(peer = %self.peer, %error, "closing connection after a bad frame");
            return false;
        }
        warn!(peer = %self.peer, %error, "bad frame");
        match error {
            FrameError::Checksum { command: Some(command), .. } if command.send.is_some() => {
                if let Some(send) = command.send {
                    Metrics::add(&self.service.metrics.send_errors, 1);
                    self.send(command::send_error(
                        send.producer_id,
                        send.sequence_id,
                        ServerError::ChecksumError,
                        "payload checksum mismatch",
                    ))
                    .await;
                }
                true
            }
            other => {
                // Answer with request id 0: the client cannot match it, but the command was
                // not understood well enough to know its id.
                self.send(command::error(0, ServerError::UnknownError, &other.to_string())).await;
                true
            }
        }
    }

    /// Handles one command; false closes the connection.
    /// Takes SEND (of a persistent topic's producer), ACK and FLOW out of `command` once the
    /// connection is established: the commands every message brings, handled without `handle`
    /// (which sees them only for non-persistent topics, or malformed, without their body).
    fn frequent(&self, command: &mut BaseCommand) -> Option<Frequent> {
        if !self.connected {
            return None;
        }
        match Type::try_from(command.command_type) {
            Ok(Type::Send)
                if command.send.as_ref().is_some_and(|s| !self.np_producers.contains_key(&s.producer_id)) =>
            {
                command.send.take().map(Frequent::Send)
            }
            Ok(Type::Ack) if command.ack.as_ref().is_some_and(|a| !self.np_consumers.contains_key(&a.consumer_id)) => {
                command.ack.take().map(Frequent::Ack)
            }
            Ok(Type::Flow)
                if command.flow.as_ref().is_some_and(|f| !self.np_consumers.contains_key(&f.consumer_id)) =>
            {
                command.flow.take().map(Frequent::Flow)
            }
            _ => None,
        }
    }

    fn on_flow(&self, flow: &pb::CommandFlow) {
        if let Some(consumer) = self.consumers.get(&flow.consumer_id) {
            consumer.subscription.add_permits(consumer.key, flow.message_permits);
        }
    }

    async fn handle(&mut self, command: BaseCommand, payload: Option<Payload>) -> bool {
        let Ok(command_type) = Type::try_from(command.command_type) else {
            // The codec refuses unknown types; this is defensive.
            return true;
        };
        if !self.connected && command_type != Type::Connect {
            warn!(peer = %self.peer, ?command_type, "command before CONNECT; closing");
            self.send(command::error(
                request_id_of(&command).unwrap_or(0),
                ServerError::NotAllowedError,
                "CONNECT first",
            ))
            .await;
            return false;
        }
        // Boxed: its future is large, and inlined it would grow every command's stack frame.
        let Some(command) = Box::pin(self.route_non_persistent(command_type, command, payload)).await else {
            return true;
        };
        match (command_type, command) {
            (Type::Connect, BaseCommand { connect: Some(connect), .. }) => return self.on_connect(connect).await,
            (Type::AuthResponse, BaseCommand { auth_response: Some(response), .. }) => {
                return self.on_auth_response(response).await
            }
            (Type::Ping, _) => self.send(command::pong()).await,
            (Type::Pong, _) => {}
            (Type::Lookup, BaseCommand { lookup_topic: Some(lookup), .. }) => self.on_lookup(lookup).await,
            (Type::PartitionedMetadata, BaseCommand { partition_metadata: Some(request), .. }) => {
                self.on_partitioned_metadata(request).await
            }
            (Type::Producer, BaseCommand { producer: Some(producer), .. }) => self.on_producer(producer).await,
            (Type::CloseProducer, BaseCommand { close_producer: Some(close), .. }) => {
                self.remove_producer(close.producer_id);
                self.send(command::success(close.request_id)).await;
            }
            (Type::Subscribe, BaseCommand { subscribe: Some(subscribe), .. }) => self.on_subscribe(subscribe).await,
            (Type::RedeliverUnacknowledgedMessages, BaseCommand { redeliver_unacknowledged_messages: Some(r), .. }) => {
                if let Some(consumer) = self.consumers.get(&r.consumer_id) {
                    consumer.subscription.redeliver(consumer.key, &convert::positions(&r.message_ids));
                }
            }
            (Type::CloseConsumer, BaseCommand { close_consumer: Some(close), .. }) => {
                // A consumer closed cleanly keeps every ack it sent: answer once they are persisted.
                if let Some(subscription) = self.remove_consumer(close.consumer_id) {
                    subscription.flush().await;
                }
                self.send(command::success(close.request_id)).await;
            }
            (Type::Unsubscribe, BaseCommand { unsubscribe: Some(request), .. }) => self.on_unsubscribe(request).await,
            (Type::Seek, BaseCommand { seek: Some(request), .. }) => self.on_seek(request).await,
            (Type::GetLastMessageId, BaseCommand { get_last_message_id: Some(request), .. }) => {
                self.on_get_last_message_id(request).await
            }
            (Type::ConsumerStats, BaseCommand { consumer_stats: Some(request), .. }) => {
                self.on_consumer_stats(request).await
            }
            (Type::GetSchema, BaseCommand { get_schema: Some(request), .. }) => self.on_get_schema(request).await,
            (Type::GetOrCreateSchema, BaseCommand { get_or_create_schema: Some(request), .. }) => {
                self.on_get_or_create_schema(request).await
            }
            (Type::GetTopicsOfNamespace, BaseCommand { get_topics_of_namespace: Some(request), .. }) => {
                let security = &self.service.security;
                let allowed = security
                    .authorizer
                    .check_namespace_read(&self.service.policies, &self.identity, &request.namespace)
                    .await;
                let answer = match allowed {
                    Ok(()) => topic_list::topics_of_namespace_answer(&self.service, &request).await,
                    Err(error) => Err(error),
                };
                match answer {
                    Ok(answer) => self.send(answer).await,
                    Err(error) => self.send_error(request.request_id, &error).await,
                }
            }
            (Type::WatchTopicList, BaseCommand { watch_topic_list: Some(request), .. }) => {
                self.on_watch_topic_list(*request).await
            }
            (Type::WatchTopicListClose, BaseCommand { watch_topic_list_close: Some(request), .. }) => {
                if let Some(cancel) = self.watchers.remove(&request.watcher_id) {
                    cancel.cancel();
                }
                self.send(command::success(request.request_id)).await;
            }
            (command_type, command) => {
                Metrics::add(&self.service.metrics.protocol_errors, 1);
                let request_id = request_id_of(&command).unwrap_or(0);
                warn!(peer = %self.peer, ?command_type, "unsupported or incomplete command");
                let what = format!("command {command_type:?} is not supported or lacks its body");
                self.send(command::error(request_id, ServerError::NotAllowedError, &what)).await;
            }
        }
        true
    }

    /// Authenticates the client; false (closing the connection) if its credentials are refused.
    async fn on_connect(&mut self, connect: pb::CommandConnect) -> bool {
        let version = connect.protocol_version.unwrap_or(0).min(magnetar_proto::PROTOCOL_VERSION);
        if self.connected {
            let error = BrokerError::NotAllowed { what: "already connected".to_owned() };
            self.send_error(0, &error).await;
            return true;
        }
        let credentials = Credentials {
            method: connect.auth_method_name.as_deref(),
            data: connect.auth_data.as_deref().unwrap_or_default(),
            client_common_name: self.client_common_name.as_deref(),
        };
        self.refreshes_auth = connect.feature_flags.as_ref().and_then(|f| f.supports_auth_refresh).unwrap_or(false);
        match self.service.security.authenticator.authenticate(credentials) {
            Ok(identity) => {
                if self.service.security.authenticator.enabled() {
                    Metrics::add(&self.service.metrics.authentication_successes, 1);
                }
                debug!(peer = %self.peer, client = %connect.client_version, version, role = ?identity.role, "connected");
                self.identity = identity;
            }
            Err(error) => {
                Metrics::add(&self.service.metrics.authentication_failures, 1);
                info!(peer = %self.peer, client = %connect.client_version, %error, "CONNECT refused");
                self.send(command::error(u64::MAX, ServerError::AuthenticationError, &error.0)).await;
                return false;
            }
        }
        self.connected = true;
        self.client.client_version = connect.client_version.clone();
        let max = self.service.config.max_message_size as i32;
        self.send(command::connected(SERVER_VERSION, version, max, Some(feature_flags()))).await;
        true
    }

    /// On each refresh tick: a connection whose credentials expired is challenged (the client
    /// answers with fresh ones); one still expired at the next tick is closed. False closes.
    async fn check_credentials(&mut self) -> bool {
        if !self.identity.is_expired(std::time::SystemTime::now()) {
            return true;
        }
        if self.challenged || !self.refreshes_auth {
            info!(peer = %self.peer, role = ?self.identity.role, "credentials expired and not refreshed; closing");
            Metrics::add(&self.service.metrics.authentication_failures, 1);
            return false;
        }
        debug!(peer = %self.peer, role = ?self.identity.role, "credentials expired; sending AUTH_CHALLENGE");
        self.challenged = true;
        self.send(command::auth_challenge(SERVER_VERSION, self.identity.method, magnetar_proto::PROTOCOL_VERSION))
            .await;
        true
    }

    /// A client's fresh credentials; the role must stay the same. False closes.
    async fn on_auth_response(&mut self, response: pb::CommandAuthResponse) -> bool {
        let Some(data) = response.response else {
            warn!(peer = %self.peer, "AUTH_RESPONSE without data; closing");
            return false;
        };
        let credentials = Credentials {
            method: data.auth_method_name.as_deref(),
            data: data.auth_data.as_deref().unwrap_or_default(),
            client_common_name: self.client_common_name.as_deref(),
        };
        match self.service.security.authenticator.authenticate(credentials) {
            Ok(identity) if identity.role == self.identity.role => {
                debug!(peer = %self.peer, role = ?identity.role, "credentials refreshed");
                self.identity = identity;
                self.challenged = false;
                true
            }
            Ok(identity) => {
                warn!(peer = %self.peer, was = ?self.identity.role, now = ?identity.role, "AUTH_RESPONSE changed the role; closing");
                false
            }
            Err(error) => {
                Metrics::add(&self.service.metrics.authentication_failures, 1);
                info!(peer = %self.peer, %error, "AUTH_RESPONSE refused; closing");
                self.send(command::error(u64::MAX, ServerError::AuthenticationError, &error.0)).await;
                false
            }
        }
    }

    /// `action` on `topic` for this client's role (authorization).
    pub(super) async fn authorize(
        &self,
        topic: &TopicName,
        action: TopicAction,
        subscription: Option<&str>,
    ) -> Result<(), BrokerError> {
        let security = &self.service.security;
        security.authorizer.check_topic(&self.service.policies, &self.identity, topic, action, subscription).await
    }

    /// Answers Connect if this broker serves the topic's bundle, or Redirect to the broker
    /// that does (or is chosen to).
    async fn on_lookup(&self, lookup: pb::CommandLookupTopic) {
        let authoritative = lookup.authoritative.unwrap_or(false);
        let answer = async {
            let name = TopicName::parse(&lookup.topic)?;
            self.authorize(&name, TopicAction::Lookup, None).await?;
            self.service.lookup(&name, authoritative).await
        }
        .await;
        let answer = answer.map(|answer| {
            // The URLs of the listener the client names (Pulsar's advertised listeners).
            let urls = answer.broker().urls_for_listener(lookup.advertised_listener_name.as_deref());
            (answer, urls)
        });
        match answer {
            Ok((LookupAnswer::Connect(_), Ok((url, url_tls)))) => {
                let mut answer = command::lookup_connect(lookup.request_id, &url);
                with_tls_url(&mut answer, url_tls.as_deref());
                self.send(answer).await
            }
            Ok((LookupAnswer::Redirect(_), Ok((url, url_tls)))) => {
                debug!(topic = %lookup.topic, to = %url, "lookup redirected");
                let mut answer = command::lookup_redirect(lookup.request_id, &url, true);
                with_tls_url(&mut answer, url_tls.as_deref());
                self.send(answer).await
            }
            // Pulsar answers an unknown listener name with ServiceNotReady.
            Ok((_, Err(unknown_listener))) => {
                self.send(command::lookup_failed(lookup.request_id, ServerError::ServiceNotReady, &unknown_listener))
                    .await
            }
            Err(error) => {
                self.send(command::lookup_failed(lookup.request_id, error.server_error(), &error.to_string())).await
            }
        }
    }

    async fn on_partitioned_metadata(&self, request: pb::CommandPartitionedTopicMetadata) {
        let partitions = async {
            let name = TopicName::parse(&request.topic)?;
            self.authorize(&name, TopicAction::Lookup, None).await?;
            self.service.partitioned_metadata(&name, request.metadata_auto_creation_enabled.unwrap_or(true)).await
        }
        .await;
        match partitions {
            // A non-partitioned topic answers 0, as Pulsar does.
            Ok(count) => self.send(command::partitioned_metadata_response(request.request_id, count)).await,
            Err(error) => {
                self.send(command::partitioned_metadata_failed(
                    request.request_id,
                    error.server_error(),
                    &error.to_string(),
                ))
                .await
            }
        }
    }

    async fn on_producer(&mut self, request: pb::CommandProducer) {
        if self.producers.get(&request.producer_id).is_some_and(|p| p.closed.load(Ordering::Acquire)) {
            // Closed by the broker (topic moved): the client registers the same id again.
            self.remove_producer(request.producer_id);
        }
        if self.producers.contains_key(&request.producer_id) {
            let error =
                BrokerError::NotAllowed { what: format!("producer id {} is already in use", request.producer_id) };
            return self.send_error(request.request_id, &error).await;
        }
        let mode = match convert::access_mode(request.producer_access_mode) {
            Ok(mode) => mode,
            Err(error) => return self.send_error(request.request_id, &error).await,
        };
        let key = NEXT_PRODUCER_KEY.fetch_add(1, Ordering::Relaxed);
        let topic_and_name = async {
            let name = TopicName::parse(&request.topic)?;
            self.authorize(&name, TopicAction::Produce, None).await?;
            let topic = self.service.topic(&name).await?;
            if topic.ledger().is_terminated() {
                return Err(BrokerError::TopicTerminated { topic: name.to_string() });
            }
            let schema_version = self.producer_schema(&name, request.schema.as_ref()).await?;
            let name = match request.producer_name.as_deref() {
                Some(name) if !name.is_empty() => name.to_owned(),
                // Pulsar's generated names: <cluster>-<broker id>-<n>, unique across brokers.
                _ => format!("{}-{}-{key}", self.service.config.cluster_name, self.service.broker_id().await?),
            };
            Ok::<_, BrokerError>((topic, name, schema_version))
        }
        .await;
        let (topic, name, schema_version) = match topic_and_name {
            Ok(found) => found,
            Err(error) => {
                info!(peer = %self.peer, topic = %request.topic, %error, "producer refused");
                return self.send_error(request.request_id, &error).await;
            }
        };
        let stats = Arc::new(ProducerStats {
            producer_id: request.producer_id,
            name: name.clone(),
            access_mode: mode.name(),
            client: self.client.clone(),
            published: Meter::default(),
        });
        let admission = match topic.admit_producer().and_then(|()| topic.add_producer(stats.clone(), key, mode)) {
            Ok(admission) => admission,
            Err(error) => {
                info!(peer = %self.peer, topic = %request.topic, %error, "producer refused");
                return self.send_error(request.request_id, &error).await;
            }
        };
        let (receipts, queue) = mpsc::channel(MAX_PENDING_SENDS_PER_PRODUCER);
        let counters = receipts::Counters {
            broker: self.service.metrics.clone(),
            topic: topic.clone(),
            producer: stats,
            producer_key: key,
        };
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(answer_receipts(request.producer_id, queue, self.outbound.clone(), counters, closed.clone()));
        let ready = Arc::new(AtomicBool::new(matches!(admission, Admission::Ready)));
        let (close_flag, close_queue) = (closed.clone(), receipts.clone());
        self.producers.insert(
            request.producer_id,
            ProducerEntry {
                topic: topic.clone(),
                name: name.clone(),
                key,
                receipts,
                ready: ready.clone(),
                closed,
                held: Arc::default(),
            },
        );
        match admission {
            Admission::Ready => {
                let last_sequence_id = topic.register_producer(&name);
                let mut answer = command::producer_success(request.request_id, &name, last_sequence_id);
                with_schema_version(&mut answer, schema_version);
                self.send(answer).await;
            }
            Admission::Waiting(turn) => {
                // Pulsar answers twice: not ready now, ready once this producer is exclusive.
                let mut waiting = producer_success_waiting(request.request_id, &name, false, -1);
                with_schema_version(&mut waiting, schema_version.clone());
                self.send(waiting).await;
                let outbound = self.outbound.clone();
                let request_id = request.request_id;
                let topic = topic.clone();
                tokio::spawn(async move {
                    if turn.await.is_ok() {
                        ready.store(true, Ordering::Release);
                        let last_sequence_id = topic.register_producer(&name);
                        let mut answer = producer_success_waiting(request_id, &name, true, last_sequence_id);
                        with_schema_version(&mut answer, schema_version);
                        let _ = outbound.send(Outbound::command(answer)).await;
                    }
                });
            }
        }
        // After PRODUCER_SUCCESS is queued, so a CLOSE_PRODUCER (a topic closing now, or
        // already closed) always reaches the client after it.
        topic.on_close(
            key,
            Box::new(move || {
                close_flag.store(true, Ordering::Release);
                tokio::spawn(async move {
                    let _ = close_queue.send(ReceiptItem::Close).await;
                });
            }),
        );
    }

    async fn on_send(&mut self, send: pb::CommandSend, payload: Option<Payload>) {
        let refuse =
            |error: ServerError, message: &str| command::send_error(send.producer_id, send.sequence_id, error, message);
        let Some(producer) = self.producers.get(&send.producer_id) else {
            Metrics::add(&self.service.metrics.send_errors, 1);
            return self.send(refuse(ServerError::NotAllowedError, "no such producer on this connection")).await;
        };
        if producer.closed.load(Ordering::Acquire) {
            // The topic moved, or an earlier send failed to persist: the client resends this
            // after CLOSE_PRODUCER.
            return;
        }
        if !producer.ready.load(Ordering::Acquire) {
            Metrics::add(&self.service.metrics.send_errors, 1);
            return self.send(refuse(ServerError::NotAllowedError, "producer is waiting for exclusive access")).await;
        }
        let Some(payload) = payload else {
            Metrics::add(&self.service.metrics.send_errors, 1);
            return self.send(refuse(ServerError::NotAllowedError, "SEND without a payload")).await;
        };
        let max_size = producer
            .topic
            .limits()
            .max_message_size
            .map_or(self.service.config.max_message_size, |own| own.min(self.service.config.max_message_size));
        if payload.body().len() > max_size {
            Metrics::add(&self.service.metrics.send_errors, 1);
            let message =
                format!("message of {} bytes exceeds the maximum message size {max_size}", payload.body().len());
            return self.send(refuse(ServerError::NotAllowedError, &message)).await;
        }
        // Under a backlog quota a send is refused (producer_exception) or held until consumers
        // catch up (producer_request_hold): a held send is published by the receipt task when
        // its turn comes, so this connection goes on reading (acks included), and every later
        // send of the producer follows it there to keep the order.
        let verdict = producer.topic.quota_verdict();
        if let QuotaVerdict::Refuse(error) = verdict {
            Metrics::add(&self.service.metrics.send_errors, 1);
            return self.send(refuse(error.server_error(), &error.to_string())).await;
        }
        let messages = u64::from(payload.num_messages());
        let partial_chunk = crate::dedup::is_partial_chunk(payload.metadata());
        // The entry is the payload exactly as the client wrote it: batches, chunks, compressed
        // and encrypted bodies pass through untouched.
        let data: Bytes = payload.into_bytes();
        let bytes = data.len() as u64;
        let highest_sequence_id = send.highest_sequence_id.unwrap_or(0).max(send.sequence_id);
        let sequence_id = send.sequence_id;
        let durable: AddFuture = if matches!(verdict, QuotaVerdict::Hold) || producer.held.load(Ordering::Acquire) > 0 {
            producer.held.fetch_add(1, Ordering::AcqRel);
            let (topic, name, held) = (producer.topic.clone(), producer.name.clone(), producer.held.clone());
            AddFuture::new(async move {
                let published = match topic.wait_out_hold().await {
                    Ok(()) => topic.publish(&name, sequence_id, highest_sequence_id, partial_chunk, data).await,
                    Err(error) => Err(error),
                };
                held.fetch_sub(1, Ordering::AcqRel);
                durable_of(published, sequence_id)?.await
            })
        } else {
            let published =
                producer.topic.publish(&producer.name, sequence_id, highest_sequence_id, partial_chunk, data).await;
            match durable_of(published, sequence_id) {
                Ok(durable) => durable,
                Err(BrokerError::TopicFenced { .. }) => {
                    debug!(topic = %producer.topic.name(), "publish to a closing topic dropped; the client resends it");
                    return;
                }
                Err(error @ BrokerError::Storage(_)) => {
                    // As when a publish fails to persist (receipts.rs): a SEND_ERROR here
                    // would let this producer's next send be stored before this one is sent
                    // again (out of order; with deduplication, this one would then be taken
                    // for a duplicate and lost). Closed now, before its next send is read,
                    // and gone from the topic, the producer is told to go after the receipts
                    // before this one, and its client resends everything from here in order.
                    warn!(topic = %producer.topic.name(), sequence_id, %error, "publish not handed to storage; closing the producer so its client resends");
                    Metrics::add(&self.service.metrics.send_errors, 1);
                    producer.closed.store(true, Ordering::Release);
                    producer.topic.remove_producer(&producer.name, producer.key);
                    let _ = producer.receipts.send(ReceiptItem::Close).await;
                    return;
                }
                Err(error) => {
                    warn!(topic = %producer.topic.name(), %error, "publish failed");
                    Metrics::add(&self.service.metrics.send_errors, 1);
                    return self.send(refuse(error.server_error(), &error.to_string())).await;
                }
            }
        };
        let receipt = PendingReceipt { sequence_id: send.sequence_id, highest_sequence_id, messages, bytes, durable };
        // Waits when the producer has too many publishes in flight: backpressure on the socket.
        let _ = producer.receipts.send(ReceiptItem::Publish(receipt)).await;
        // The publish rate policy: this connection reads on once the topic is within it.
        let wait = producer.topic.publish_throttle(messages, bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    async fn on_subscribe(&mut self, request: pb::CommandSubscribe) {
        let request_id = request.request_id;
        match self.subscribe(request).await {
            Ok(subscription) => {
                self.send(command::success(request_id)).await;
                // After the answer, so the client knows the consumer when it hears who is active.
                subscription.announce_active();
            }
            Err(error) => {
                info!(peer = %self.peer, %error, "subscribe refused");
                self.send_error(request_id, &error).await
            }
        }
    }

    async fn subscribe(&mut self, request: pb::CommandSubscribe) -> Result<Arc<Subscription>, BrokerError> {
        if let Some(existing) = self.consumers.get(&request.consumer_id) {
            if existing.subscription.has_consumer_id(existing.key) {
                // A client repeating a subscribe it already made: answered as done, as Pulsar.
                return Ok(existing.subscription.clone());
            }
            // Closed by the broker (seek): the client subscribes again with the same id.
            self.consumers.remove(&request.consumer_id);
        }
        let sub_type = convert::sub_type(request.sub_type)?;
        if request.subscription.is_empty() || request.subscription.contains('/') {
            return Err(BrokerError::NotAllowed {
                what: "subscription name must be non-empty and hold no '/'".to_owned(),
            });
        }
        let key_shared = convert::key_shared_options(request.key_shared_meta.as_ref(), sub_type)?;
        let durable = request.durable.unwrap_or(true);
        let name = TopicName::parse(&request.topic)?;
        // A reader's subscription is its own, unnamed by the user: only the topic is checked.
        let named = durable.then_some(request.subscription.as_str());
        self.authorize(&name, TopicAction::Consume, named).await?;
        let topic = self.service.topic(&name).await?;
        self.consumer_schema(&name, request.schema.as_ref()).await?;
        let initial = convert::initial_position(request.initial_position());
        let start = if durable {
            StartAt::Initial(initial)
        } else {
            convert::reader_start(topic.ledger(), &request, initial).await?
        };
        let read_compacted = request.read_compacted.unwrap_or(false);
        if read_compacted && !sub_type.single_active() {
            return Err(BrokerError::NotAllowed {
                what: "Read compacted can only be used with exclusive or failover persistent subscriptions".into(),
            });
        }
        let subscription = topic.subscription(&request.subscription, start, durable, sub_type).await?;
        if read_compacted {
            subscription.read_compacted(topic.compaction().clone());
        }
        let stats = Arc::new(ConsumerStats {
            consumer_id: request.consumer_id,
            name: request.consumer_name.clone().unwrap_or_default(),
            client: self.client.clone(),
            ..ConsumerStats::default()
        });
        let key = NEXT_CONSUMER_KEY.fetch_add(1, Ordering::Relaxed);
        let handle = NewConsumer {
            consumer_id: key,
            consumer_name: request.consumer_name.clone().unwrap_or_default(),
            priority_level: request.priority_level.unwrap_or(0),
            sink: Arc::new(ConnectionConsumer {
                consumer_id: request.consumer_id,
                outbound: self.outbound.clone(),
                metrics: self.service.metrics.clone(),
                stats: stats.clone(),
                end_of_topic: super::consumer::understands_end_of_topic(&self.client.client_version),
                partition: name.partition_of().and_then(|(_, index)| i32::try_from(index).ok()),
            }),
            stats: stats.clone(),
        };
        let options = SubscribeOptions { sub_type, key_shared };
        let attached = match consumer_limits(&topic, &subscription).await {
            Ok(()) => subscription.attach(handle, &options),
            Err(error) => Err(error),
        };
        if let Err(error) = attached {
            if !durable {
                topic.remove_if_unused(&request.subscription).await;
            }
            return Err(error);
        }
        self.consumers
            .insert(request.consumer_id, ConsumerEntry { key, topic, subscription: subscription.clone(), stats });
        Ok(subscription)
    }

    async fn on_ack(&self, ack: pb::CommandAck) {
        let Some(consumer) = self.consumers.get(&ack.consumer_id) else {
            debug!(peer = %self.peer, consumer_id = ack.consumer_id, "ack for an unknown consumer");
            return;
        };
        let (ids, cumulative) = convert::ack_ids(&ack);
        let result = consumer.subscription.ack(&ids, cumulative);
        if let Err(error) = &result {
            info!(peer = %self.peer, consumer_id = ack.consumer_id, %error, "ack refused");
        }
        if let Some(request_id) = ack.request_id {
            let (error, message) = match &result {
                Ok(()) => (None, None),
                Err(error) => (Some(error.server_error() as i32), Some(error.to_string())),
            };
            let response = BaseCommand {
                command_type: Type::AckResponse as i32,
                ack_response: Some(pb::CommandAckResponse {
                    consumer_id: ack.consumer_id,
                    request_id: Some(request_id),
                    error,
                    message,
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.send(response).await;
        }
    }

    async fn on_seek(&mut self, request: pb::CommandSeek) {
        let Some(consumer) = self.consumers.get(&request.consumer_id) else {
            let error = BrokerError::NotAllowed { what: format!("no consumer {}", request.consumer_id) };
            return self.send_error(request.request_id, &error).await;
        };
        let ledger = consumer.topic.ledger().clone();
        let subscription = consumer.subscription.clone();
        let target = match (&request.message_id, request.message_publish_time) {
            (Some(id), _) if id.ledger_id == u64::MAX => Ok(None),
            (Some(id), _) => Ok(start_before(&ledger, Position::new(id.ledger_id, id.entry_id))),
            (None, Some(time)) => mark_delete_for_publish_time(&ledger, time).await,
            (None, None) => Err(BrokerError::NotAllowed { what: "SEEK without a message id or time".to_owned() }),
        };
        match target {
            Ok(mark_delete) => {
                info!(peer = %self.peer, subscription = subscription.name(), ?mark_delete, "seek");
                // Every consumer is closed and subscribes again, as with Pulsar.
                let closed = subscription.reset(mark_delete);
                self.consumers.retain(|_, c| !(closed.contains(&c.key) && Arc::ptr_eq(&c.subscription, &subscription)));
                subscription.flush().await;
                self.send(command::success(request.request_id)).await
            }
            Err(error) => self.send_error(request.request_id, &error).await,
        }
    }

    async fn on_unsubscribe(&mut self, request: pb::CommandUnsubscribe) {
        let Some(consumer) = self.consumers.get(&request.consumer_id) else {
            let error = BrokerError::NotAllowed { what: format!("no consumer {}", request.consumer_id) };
            return self.send_error(request.request_id, &error).await;
        };
        match consumer.topic.unsubscribe(consumer.subscription.name(), consumer.key).await {
            Ok(()) => {
                self.consumers.remove(&request.consumer_id);
                self.send(command::success(request.request_id)).await
            }
            Err(error) => self.send_error(request.request_id, &error).await,
        }
    }

    /// CONSUMER_STATS: one consumer's figures as topic stats show them (Pulsar's
    /// `consumer.getStats()` in the Java client).
    async fn on_consumer_stats(&self, request: pb::CommandConsumerStats) {
        let Some(entry) = self.consumers.get(&request.consumer_id) else {
            let error =
                BrokerError::NotAllowed { what: format!("no consumer {} on this connection", request.consumer_id) };
            return self.send_error(request.request_id, &error).await;
        };
        let snapshot = entry.subscription.snapshot();
        let Some(consumer) = snapshot.consumers.iter().find(|c| Arc::ptr_eq(&c.stats, &entry.stats)) else {
            let error = BrokerError::NotAllowed { what: format!("consumer {} is closing", request.consumer_id) };
            return self.send_error(request.request_id, &error).await;
        };
        let own = pb::CommandConsumerStatsResponse {
            available_permits: Some(consumer.permits.max(0) as u64),
            unacked_messages: Some(consumer.unacked.max(0) as u64),
            blocked_consumer_on_unacked_msgs: Some(consumer.blocked),
            msg_backlog: Some(snapshot.backlog),
            ..Default::default()
        };
        let sub_type = snapshot.sub_type.map_or("None", SubscriptionType::name);
        self.send(super::consumer::stats_response(request.request_id, &consumer.stats, sub_type, own)).await;
    }

    async fn on_get_last_message_id(&self, request: pb::CommandGetLastMessageId) {
        let Some(consumer) = self.consumers.get(&request.consumer_id) else {
            let error = BrokerError::NotAllowed { what: format!("no consumer {}", request.consumer_id) };
            return self.send_error(request.request_id, &error).await;
        };
        // An empty topic answers -1:-1, as Pulsar does; a batch entry names its last message.
        let ledger = consumer.topic.ledger();
        let mut last = ledger.last_confirmed();
        let mut read_last = None;
        if let Some(view) = consumer.subscription.compacted_view() {
            // Compacted up to its end: the last message a compacted read gets is the compacted
            // view's last (the topic's own last may have been compacted away), as Pulsar does.
            if last.is_some_and(|last| last <= view.horizon()) {
                let entries = view.read_last(ledger.bookies()).await.ok().flatten();
                last = entries.as_ref().map(|(position, _)| *position);
                read_last = Some(entries);
            }
        }
        let mut last_id =
            last.map_or(command::message_id(u64::MAX, u64::MAX), |p| command::message_id(p.ledger_id, p.entry_id));
        if let Some(position) = last {
            let entries = match read_last {
                Some(found) => Ok(found.into_iter().collect()),
                None => ledger.read_entries(position, 1).await,
            };
            if let Ok(entries) = entries {
                if let Some(payload) = entries.into_iter().next().and_then(|(_, data)| Payload::parse(data).ok()) {
                    if payload.metadata().num_messages_in_batch.is_some() {
                        last_id.batch_index = Some(payload.num_messages() as i32 - 1);
                    }
                }
            }
        }
        let mark_delete = consumer
            .subscription
            .mark_delete()
            .map_or(command::message_id(u64::MAX, u64::MAX), |p| command::message_id(p.ledger_id, p.entry_id));
        let response = BaseCommand {
            command_type: Type::GetLastMessageIdResponse as i32,
            get_last_message_id_response: Some(pb::CommandGetLastMessageIdResponse {
                last_message_id: last_id,
                request_id: request.request_id,
                consumer_mark_delete_position: Some(mark_delete),
            }),
            ..Default::default()
        };
        self.send(response).await;
    }

    fn remove_producer(&mut self, producer_id: u64) {
        if let Some(producer) = self.producers.remove(&producer_id) {
            producer.topic.remove_producer(&producer.name, producer.key);
        }
    }

    /// Detaches the consumer; returns its subscription if it existed.
    fn remove_consumer(&mut self, consumer_id: u64) -> Option<Arc<Subscription>> {
        let consumer = self.consumers.remove(&consumer_id)?;
        consumer.subscription.detach(consumer.key);
        if !consumer.subscription.is_durable() {
            // A reader's subscription goes with its consumer.
            let topic = consumer.topic.clone();
            let name = consumer.subscription.name().to_owned();
            tokio::spawn(async move { topic.remove_if_unused(&name).await });
        }
        Some(consumer.subscription)
    }

    /// WATCH_TOPIC_LIST: the namespace's matching topics now, then each change.
    async fn on_watch_topic_list(&mut self, request: pb::CommandWatchTopicList) {
        let (request_id, watcher_id) = (request.request_id, request.watcher_id);
        let allowed = self
            .service
            .security
            .authorizer
            .check_namespace_read(&self.service.policies, &self.identity, &request.namespace)
            .await;
        if let Err(error) = allowed {
            return self.send_error(request_id, &error).await;
        }
        if self.watchers.contains_key(&watcher_id) {
            let error = BrokerError::NotAllowed { what: format!("watcher id {watcher_id} is already in use") };
            return self.send_error(request_id, &error).await;
        }
        if self.watchers.len() >= MAX_WATCHERS_PER_CONNECTION {
            let error = BrokerError::NotAllowed {
                what: format!("a connection may have at most {MAX_WATCHERS_PER_CONNECTION} topic list watchers"),
            };
            return self.send_error(request_id, &error).await;
        }
        let cancel = CancellationToken::new();
        match topic_list::start_watcher(self.service.clone(), request, self.outbound.clone(), cancel.clone()).await {
            Ok(()) => {
                self.watchers.insert(watcher_id, cancel);
            }
            Err(error) => self.send_error(request_id, &error).await,
        }
    }

    fn cleanup(&mut self) {
        for (_, cancel) in self.watchers.drain() {
            cancel.cancel();
        }
        self.cleanup_non_persistent();
        let producers: Vec<u64> = self.producers.keys().copied().collect();
        for producer_id in producers {
            self.remove_producer(producer_id);
        }
        let consumers: Vec<u64> = self.consumers.keys().copied().collect();
        for consumer_id in consumers {
            self.remove_consumer(consumer_id);
        }
    }
}

/// The topic's and the subscription's max consumers policies, before one more attaches.
async fn consumer_limits(topic: &Topic, subscription: &Subscription) -> Result<(), BrokerError> {
    let limits = topic.limits();
    if let Some(max) = limits.max_consumers {
        if topic.consumer_count().await >= max as usize {
            return Err(BrokerError::TooManyConsumers { what: format!("Topic reached max consumers limit ({max})") });
        }
    }
    if let Some(max) = limits.max_consumers_per_subscription {
        if subscription.consumer_count() >= max as usize {
            return Err(BrokerError::TooManyConsumers {
                what: format!("Subscription reached max consumers limit ({max})"),
            });
        }
    }
    Ok(())
}

/// The receipt future of a publish: durability of a stored entry, -1:-1 for a known duplicate
/// (Pulsar answers so and stores nothing), an error for a duplicate still in flight.
fn durable_of(published: Result<Published, BrokerError>, sequence_id: u64) -> Result<AddFuture, BrokerError> {
    Ok(match published? {
        Published::Stored(durable) => durable,
        Published::Duplicate => AddFuture::new(async { Ok(Position::new(u64::MAX, u64::MAX)) }),
        Published::InFlightDuplicate => {
            let error = BrokerError::DuplicateInFlight { sequence_id };
            AddFuture::new(async move { Err(error) })
        }
    })
}

/// PRODUCER_SUCCESS with an explicit `producer_ready` (WaitForExclusive answers twice).
/// Adds the producer's schema version to PRODUCER_SUCCESS.
fn with_schema_version(answer: &mut BaseCommand, version: Option<Vec<u8>>) {
    if let Some(success) = answer.producer_success.as_mut() {
        success.schema_version = version;
    }
}

fn producer_success_waiting(request_id: u64, producer_name: &str, ready: bool, last_sequence_id: i64) -> BaseCommand {
    let mut answer = command::producer_success(request_id, producer_name, last_sequence_id);
    if let Some(success) = answer.producer_success.as_mut() {
        success.producer_ready = Some(ready);
    }
    answer
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// Takes at most `limit` bytes per write, like a socket with a full buffer.
    struct Trickle {
        written: Vec<u8>,
        limit: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.written.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.limit - n);
                self.written.extend_from_slice(&buf[..take]);
                n += take;
                if n == self.limit {
                    break;
                }
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn gathered_writes_keep_every_byte_in_order_through_short_writes() {
        let parts: Vec<Bytes> =
            vec![Bytes::from_static(b"head-1"), Bytes::from(vec![1u8; 1000]), Bytes::new(), Bytes::from_static(b"h2")];
        let expected: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        for limit in [1, 7, 999, 5000] {
            let mut writer = Trickle { written: Vec::new(), limit, calls: 0 };
            let mut queued = parts.clone();
            write_all_parts(&mut writer, &mut queued).await.expect("written");
            assert_eq!(writer.written, expected, "limit {limit}");
            assert!(queued.is_empty());
            if limit == 5000 {
                assert_eq!(writer.calls, 1, "one gathered write when the socket takes it all");
            }
        }
    }

    #[tokio::test]
    async fn frames_written_from_the_queue_decode_as_sent_with_payloads_uncopied() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let (queue, frames) = mpsc::channel(16);
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let writer = tokio::spawn(write_frames(client, frames, 5 * 1024 * 1024, peer));
        let big = Bytes::from(vec![9u8; 4096]);
        let small = Bytes::from_static(b"tiny payload");
        queue.send(Outbound::command(command::pong())).await.expect("queued");
        queue.send(Outbound { command: command::ping(), payload: Some(big.clone()) }).await.expect("queued");
        queue.send(Outbound { command: command::pong(), payload: Some(small.clone()) }).await.expect("queued");
        drop(queue);
        writer.await.expect("writer");
        let mut bytes = BytesMut::new();
        server.read_buf(&mut bytes).await.expect("read");
        while server.read_buf(&mut bytes).await.expect("read") > 0 {}
        let mut expected = BytesMut::new();
        frame::encode_parts(&command::pong(), None, usize::MAX, &mut expected).expect("encode");
        frame::encode_parts(&command::ping(), Some(&big[..]), usize::MAX, &mut expected).expect("encode");
        frame::encode_parts(&command::pong(), Some(&small[..]), usize::MAX, &mut expected).expect("encode");
        assert_eq!(bytes, expected);
    }
}
