//! One connection to one broker: TCP, or TLS over TCP (stream.rs), authenticated in CONNECT
//! when the client has an [`Authentication`].
//!
//! A single task owns the socket and all routing state; everything else holds a cloneable
//! [`Connection`] and talks to the task through one bounded command channel
//! ([`ConnectionConfig::command_queue_size`]; when full, callers wait). The task:
//!
//! - writes what callers queue, giving each request a slot keyed by its request id whose
//!   oneshot receives the broker's answer (an ERROR answer becomes [`ClientError::Server`]);
//! - routes SEND_RECEIPT / SEND_ERROR to the pending send keyed by (producer id, sequence id)
//!   (the chunks of a chunked message share a sequence id: their receipts are answered in
//!   send order);
//! - keeps a producer's PRODUCER request open without a timeout once the broker answered
//!   `producer_ready = false` (WaitForExclusive: a second PRODUCER_SUCCESS follows);
//! - routes WATCH_TOPIC_UPDATE to the topic list watcher by watcher id;
//! - routes MESSAGE frames to the consumer by consumer id through that consumer's bounded
//!   channel (capacity: its receiver queue size, which is also the most permits it grants, so
//!   a broker that keeps to flow control can never fill it; a broker that overruns it has the
//!   consumer's channel closed, so nothing is dropped silently and the connection never
//!   waits on a slow application);
//! - answers PING with PONG and sends its own PING every keepalive interval; a connection
//!   that received nothing for a whole interval after a PING is considered dead;
//! - answers AUTH_CHALLENGE (the broker wants fresh credentials, say because a token expired)
//!   with AUTH_RESPONSE carrying fresh data from the provider. The provider runs as a future
//!   polled by the task itself, so the connection keeps reading and writing meanwhile; a
//!   provider that fails ends the connection (its producers and consumers reconnect).
//!
//! Reads never wait on writes: the socket is split, outgoing frames are encoded into a buffer
//! that is written in the same `select!` as reads, and new commands are taken from the
//! channel only while that buffer is below a high-water mark.
//!
//! When the connection ends, for whatever reason, every pending request and send fails with
//! [`ClientError::Disconnected`] carrying the reason, and every consumer's channel is closed.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::StreamExt;
use magnetar_proto::command;
use magnetar_proto::pulsar::{self as pb, base_command::Type, BaseCommand, ServerError};
use magnetar_proto::{Frame, FrameCodec, FrameError, Payload};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::codec::{Encoder, FramedRead};
use tracing::{debug, info, warn};

use crate::address::BrokerAddress;
use crate::auth::{AuthData, Authentication};
use crate::error::{error_chain, ClientError};
use crate::stream::{BrokerStream, ReadHalf, WriteHalf};

/// What this client says it is in CONNECT.
pub(crate) const CLIENT_VERSION: &str = concat!("magnetar-client/", env!("CARGO_PKG_VERSION"));

/// The largest message size a broker may announce that this client accepts; a larger one is
/// capped, so a broker cannot make the client buffer arbitrarily large frames.
const MAX_ACCEPTED_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// Stop taking new commands while this much is waiting to be written.
const WRITE_BUFFER_HIGH_WATER: usize = 1024 * 1024;

/// Past this, even control answers (PONG) are not buffered: the broker is not reading.
const WRITE_BUFFER_HARD_LIMIT: usize = 4 * WRITE_BUFFER_HIGH_WATER;

/// How long a closing connection may take to write what it still has buffered.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of one connection.
#[derive(Clone)]
pub(crate) struct ConnectionConfig {
    /// TCP connect plus the CONNECT/CONNECTED handshake.
    pub connection_timeout: Duration,
    /// How long a request waits for its answer.
    pub operation_timeout: Duration,
    /// How often a PING is sent; the connection is dead after a silent interval.
    pub keepalive_interval: Duration,
    /// Commands queued for the connection task; when full, callers wait.
    pub command_queue_size: usize,
    /// Sent in CONNECT and asked again on AUTH_CHALLENGE; `None` sends no credentials.
    pub authentication: Option<Arc<dyn Authentication>>,
    /// Set for TLS connections (a `pulsar+ssl://` client).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The TLS configuration holds the client's private key: shown as present or not.
        f.debug_struct("ConnectionConfig")
            .field("connection_timeout", &self.connection_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("command_queue_size", &self.command_queue_size)
            .field("authentication", &self.authentication)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A handle to one broker connection. Cheap to clone; the connection lives while any handle
/// (or a producer or consumer using it) does.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    broker: BrokerAddress,
    commands: mpsc::Sender<Outgoing>,
    next_request_id: AtomicU64,
    next_producer_id: AtomicU64,
    next_consumer_id: AtomicU64,
    next_watcher_id: AtomicU64,
    /// CONNECTED's feature flag: the broker answers WATCH_TOPIC_LIST.
    supports_topic_watchers: bool,
    /// The broker's limit from CONNECTED (Pulsar's default when it gives none).
    max_message_size: usize,
    operation_timeout: Duration,
    /// Why the connection ended; written once by the task before it fails what is pending.
    close_reason: Arc<Mutex<Option<String>>>,
}

/// What a consumer's channel carries.
#[derive(Debug)]
pub(crate) enum ConsumerEvent {
    Message {
        command: pb::CommandMessage,
        payload: Box<Payload>,
    },
    /// A MESSAGE whose payload failed its checksum or was missing.
    Corrupt {
        message_id: pb::MessageIdData,
        error: FrameError,
    },
    /// The broker closed the consumer, or the connection ended.
    Closed {
        reason: String,
    },
}

/// The broker's answer to a send: the stored message's id.
pub(crate) type ReceiptResult = Result<pb::MessageIdData, ClientError>;

/// A send waiting for its SEND_RECEIPT.
#[derive(Debug)]
pub(crate) struct PendingReceipt {
    pub reply: oneshot::Sender<ReceiptResult>,
    /// The producer's in-flight allowance, given back when the receipt arrives.
    #[allow(dead_code, reason = "held, never read: dropping it gives the permit back")]
    pub permit: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
enum Outgoing {
    // Commands are boxed: a BaseCommand holds every command type inline (kilobytes).
    Request {
        request_id: u64,
        command: Box<BaseCommand>,
        reply: oneshot::Sender<Result<BaseCommand, ClientError>>,
        /// For PRODUCER: told when the broker queued the producer (`producer_ready = false`).
        queued: Option<oneshot::Sender<()>>,
    },
    Send {
        producer_id: u64,
        sequence_id: u64,
        frame: Box<Frame>,
        receipt: PendingReceipt,
    },
    /// A command with no answer (FLOW, ACK) or whose answer nobody waits for.
    Command(Box<BaseCommand>),
    /// Adds a producer's routing slot, or renames it once the broker named the producer.
    AddProducer {
        producer_id: u64,
        label: String,
        topic: String,
    },
    RemoveProducer {
        producer_id: u64,
        reason: String,
    },
    /// Sends CLOSE_PRODUCER and removes the routing when the broker answers.
    CloseProducer {
        producer_id: u64,
        request_id: u64,
    },
    AddConsumer {
        consumer_id: u64,
        events: mpsc::Sender<ConsumerEvent>,
    },
    RemoveConsumer {
        consumer_id: u64,
    },
    /// Routes a topic list watcher's WATCH_TOPIC_UPDATEs to `updates`.
    AddWatcher {
        watcher_id: u64,
        updates: mpsc::Sender<pb::CommandWatchTopicUpdate>,
    },
    RemoveWatcher {
        watcher_id: u64,
    },
}

impl Connection {
    /// Opens a connection to `broker` (TLS when the config has a TLS setup) and performs the
    /// CONNECT handshake with the config's credentials.
    pub(crate) async fn connect(broker: BrokerAddress, config: &ConnectionConfig) -> Result<Connection, ClientError> {
        let (reader, writer, connected) = tokio::time::timeout(config.connection_timeout, handshake(&broker, config))
            .await
            .map_err(|_| ClientError::Timeout {
                broker: broker.to_string(),
                operation: "connect and CONNECT handshake".into(),
                after: config.connection_timeout,
            })??;
        let max_message_size = connected
            .max_message_size
            .and_then(|size| usize::try_from(size).ok())
            .filter(|&size| size > 0)
            .unwrap_or(magnetar_proto::DEFAULT_MAX_MESSAGE_SIZE)
            .min(MAX_ACCEPTED_MESSAGE_SIZE);
        let supports_topic_watchers =
            connected.feature_flags.as_ref().and_then(|flags| flags.supports_topic_watchers).unwrap_or(false);
        info!(
            %broker,
            supports_topic_watchers,
            server_version = %connected.server_version,
            protocol_version = connected.protocol_version.unwrap_or(0),
            max_message_size,
            "connected"
        );

        let codec = FrameCodec::new(max_message_size + magnetar_proto::FRAME_OVERHEAD);
        let mut reader = reader;
        *reader.decoder_mut() = codec.clone();
        let (commands, command_receiver) = mpsc::channel(config.command_queue_size.max(1));
        let close_reason = Arc::new(Mutex::new(None));
        let task = ConnectionTask {
            broker: broker.clone(),
            reader,
            writer,
            codec,
            out: BytesMut::new(),
            commands: command_receiver,
            keepalive_interval: config.keepalive_interval,
            waiting_for_pong: false,
            authentication: config.authentication.clone(),
            auth_refresh: None,
            auth_refused: None,
            pending: HashMap::new(),
            producers: HashMap::new(),
            closing_producers: HashMap::new(),
            consumers: HashMap::new(),
            queued_producers: HashMap::new(),
            watchers: HashMap::new(),
            close_reason: close_reason.clone(),
        };
        tokio::spawn(task.run());
        Ok(Connection {
            shared: Arc::new(Shared {
                broker,
                commands,
                next_request_id: AtomicU64::new(0),
                next_producer_id: AtomicU64::new(0),
                next_consumer_id: AtomicU64::new(0),
                next_watcher_id: AtomicU64::new(0),
                supports_topic_watchers,
                max_message_size,
                operation_timeout: config.operation_timeout,
                close_reason,
            }),
        })
    }

    pub(crate) fn broker(&self) -> &BrokerAddress {
        &self.shared.broker
    }

    /// True once the connection has ended; a pool should then open a new one.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.commands.is_closed()
    }

    pub(crate) fn max_message_size(&self) -> usize {
        self.shared.max_message_size
    }

    pub(crate) fn operation_timeout(&self) -> Duration {
        self.shared.operation_timeout
    }

    pub(crate) fn new_request_id(&self) -> u64 {
        self.shared.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_producer_id(&self) -> u64 {
        self.shared.next_producer_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_consumer_id(&self) -> u64 {
        self.shared.next_consumer_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_watcher_id(&self) -> u64 {
        self.shared.next_watcher_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the broker said in CONNECTED that it answers WATCH_TOPIC_LIST.
    pub(crate) fn supports_topic_watchers(&self) -> bool {
        self.shared.supports_topic_watchers
    }

    /// Routes WATCH_TOPIC_UPDATEs of `watcher_id` to `updates` (bounded; a watcher that does
    /// not keep up is dropped, its channel closed).
    pub(crate) async fn add_watcher(
        &self,
        watcher_id: u64,
        updates: mpsc::Sender<pb::CommandWatchTopicUpdate>,
    ) -> Result<(), ClientError> {
        self.enqueue(Outgoing::AddWatcher { watcher_id, updates }).await
    }

    pub(crate) async fn remove_watcher(&self, watcher_id: u64) {
        let _ = self.enqueue(Outgoing::RemoveWatcher { watcher_id }).await;
    }

    /// PRODUCER: like [`Connection::request`], except that once the broker answered
    /// `producer_ready = false` (the producer waits for exclusive access) the answer is
    /// awaited without a timeout, as Pulsar's clients do.
    pub(crate) async fn request_producer(
        &self,
        build: impl FnOnce(u64) -> BaseCommand,
    ) -> Result<BaseCommand, ClientError> {
        let request_id = self.new_request_id();
        let command = build(request_id);
        let operation = command_name(command.command_type);
        let (reply, mut answer) = oneshot::channel();
        let (queued, mut queued_signal) = oneshot::channel();
        self.enqueue(Outgoing::Request { request_id, command: Box::new(command), reply, queued: Some(queued) }).await?;
        let first = tokio::time::timeout(self.shared.operation_timeout, async {
            tokio::select! {
                biased;
                answer = &mut answer => Some(answer),
                Ok(()) = &mut queued_signal => None,
            }
        })
        .await;
        let answer = match first {
            Err(_) => {
                return Err(ClientError::Timeout {
                    broker: self.shared.broker.to_string(),
                    operation,
                    after: self.shared.operation_timeout,
                })
            }
            Ok(Some(answer)) => answer,
            Ok(None) => {
                debug!(broker = %self.shared.broker, request_id, "producer queued by the broker; waiting for exclusive access");
                answer.await
            }
        };
        answer.map_err(|_| self.disconnected())?
    }

    /// The error for an operation that found the connection gone.
    pub(crate) fn disconnected(&self) -> ClientError {
        let reason =
            self.shared.close_reason.lock().clone().unwrap_or_else(|| "the connection task stopped".to_owned());
        ClientError::Disconnected { broker: self.shared.broker.to_string(), reason }
    }

    /// Sends the command `build` makes with a fresh request id and waits for the answer (at
    /// most the operation timeout). An ERROR answer is returned as [`ClientError::Server`].
    pub(crate) async fn request(&self, build: impl FnOnce(u64) -> BaseCommand) -> Result<BaseCommand, ClientError> {
        let request_id = self.new_request_id();
        let command = build(request_id);
        let operation = command_name(command.command_type);
        let (reply, answer) = oneshot::channel();
        self.enqueue(Outgoing::Request { request_id, command: Box::new(command), reply, queued: None }).await?;
        match tokio::time::timeout(self.shared.operation_timeout, answer).await {
            Err(_) => Err(ClientError::Timeout {
                broker: self.shared.broker.to_string(),
                operation,
                after: self.shared.operation_timeout,
            }),
            Ok(Err(_)) => Err(self.disconnected()),
            Ok(Ok(result)) => result,
        }
    }

    /// Queues a SEND frame; the returned receiver gets the broker's receipt or error.
    /// Cancel-safe: if the future is dropped, nothing was queued.
    pub(crate) async fn send_message(
        &self,
        producer_id: u64,
        sequence_id: u64,
        frame: Frame,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<oneshot::Receiver<ReceiptResult>, ClientError> {
        let (reply, receipt) = oneshot::channel();
        let pending = PendingReceipt { reply, permit };
        self.enqueue(Outgoing::Send { producer_id, sequence_id, frame: Box::new(frame), receipt: pending }).await?;
        Ok(receipt)
    }

    /// Queues a command that has no answer (FLOW, ACK). Cancel-safe.
    pub(crate) async fn send_command(&self, command: BaseCommand) -> Result<(), ClientError> {
        self.enqueue(Outgoing::Command(Box::new(command))).await
    }

    pub(crate) async fn add_producer(&self, producer_id: u64, label: String, topic: String) -> Result<(), ClientError> {
        self.enqueue(Outgoing::AddProducer { producer_id, label, topic }).await
    }

    /// Removes a producer's routing; its pending sends fail with `reason`.
    pub(crate) async fn remove_producer(&self, producer_id: u64, reason: String) {
        // A closed connection has already failed everything.
        let _ = self.enqueue(Outgoing::RemoveProducer { producer_id, reason }).await;
    }

    pub(crate) async fn add_consumer(
        &self,
        consumer_id: u64,
        events: mpsc::Sender<ConsumerEvent>,
    ) -> Result<(), ClientError> {
        self.enqueue(Outgoing::AddConsumer { consumer_id, events }).await
    }

    pub(crate) async fn remove_consumer(&self, consumer_id: u64) {
        let _ = self.enqueue(Outgoing::RemoveConsumer { consumer_id }).await;
    }

    /// For `Drop` of a producer that was not closed: tells the broker without waiting. Sends
    /// already queued still get their receipts (the broker answers the close after them);
    /// the routing is removed with that answer. If the command queue is full, the broker
    /// learns when the connection ends.
    pub(crate) fn abandon_producer(&self, producer_id: u64) {
        let request_id = self.new_request_id();
        let _ = self.shared.commands.try_send(Outgoing::CloseProducer { producer_id, request_id });
    }

    /// For `Drop` of a consumer that was not closed; see [`Connection::abandon_producer`].
    pub(crate) fn abandon_consumer(&self, consumer_id: u64) {
        let request_id = self.new_request_id();
        let _ = self.shared.commands.try_send(Outgoing::RemoveConsumer { consumer_id });
        let _ = self
            .shared
            .commands
            .try_send(Outgoing::Command(Box::new(command::close_consumer(consumer_id, request_id))));
    }

    async fn enqueue(&self, outgoing: Outgoing) -> Result<(), ClientError> {
        self.shared.commands.send(outgoing).await.map_err(|_| self.disconnected())
    }
}

/// Connects (with TLS when configured) and exchanges CONNECT / CONNECTED, answering any
/// AUTH_CHALLENGE on the way.
async fn handshake(
    broker: &BrokerAddress,
    config: &ConnectionConfig,
) -> Result<(FramedRead<ReadHalf, FrameCodec>, WriteHalf, pb::CommandConnected), ClientError> {
    let connect_error = |source| ClientError::Connect { broker: broker.to_string(), source };
    let (host, port) = broker.socket_target();
    let tcp = TcpStream::connect((host, port)).await.map_err(connect_error)?;
    if let Err(error) = tcp.set_nodelay(true) {
        debug!(%broker, %error, "cannot set TCP_NODELAY");
    }
    let stream = match &config.tls {
        None => BrokerStream::Plain(tcp),
        Some(tls) => {
            let server_name = crate::tls::server_name(host)?;
            let connector = tokio_rustls::TlsConnector::from(tls.clone());
            let stream = connector.connect(server_name, tcp).await.map_err(|source| {
                // rustls reports its verdicts (untrusted certificate, alert from the broker)
                // as InvalidData; anything else is the network, which may heal.
                if source.kind() == std::io::ErrorKind::InvalidData {
                    ClientError::TlsHandshake { broker: broker.to_string(), source }
                } else {
                    ClientError::Connect { broker: broker.to_string(), source }
                }
            })?;
            BrokerStream::Tls(Box::new(stream))
        }
    };
    let (read_half, mut writer) = stream.into_split();
    let mut reader = FramedRead::new(read_half, FrameCodec::default());
    let mut out = BytesMut::new();
    let mut codec = FrameCodec::default();
    let authentication = config.authentication.as_deref();
    let method = authentication.map(|auth| auth.method_name().to_owned());
    let mut connect = command::connect(CLIENT_VERSION, None, None);
    if let (Some(body), Some(authentication)) = (connect.connect.as_mut(), authentication) {
        body.auth_method_name = Some(authentication.method_name().to_owned());
        body.auth_data = Some(authentication.auth_data().await?.into_bytes());
        // Without this flag Pulsar brokers close the connection when credentials expire,
        // instead of sending AUTH_CHALLENGE.
        body.feature_flags = Some(pb::FeatureFlags { supports_auth_refresh: Some(true), ..Default::default() });
    }
    encode(&mut codec, Frame::simple(connect), &mut out, broker)?;
    write_and_flush(&mut writer, &out).await.map_err(connect_error)?;
    let disconnected = |reason: String| ClientError::Disconnected { broker: broker.to_string(), reason };
    loop {
        let frame = match reader.next().await {
            None => return Err(disconnected("the broker closed the connection during the handshake".into())),
            Some(Err(error)) => return Err(disconnected(format!("during the handshake: {error}"))),
            Some(Ok(frame)) => frame,
        };
        match frame.command_type() {
            Some(Type::Connected) => {
                let connected = frame
                    .command
                    .connected
                    .ok_or_else(|| unexpected(broker, "CONNECTED", "CONNECTED without its body"))?;
                return Ok((reader, writer, connected));
            }
            Some(Type::Error) => {
                let error = frame.command.error.unwrap_or_default();
                if error.error == ServerError::AuthenticationError as i32 {
                    return Err(ClientError::AuthenticationFailed {
                        broker: broker.to_string(),
                        method: method.unwrap_or_else(|| "none".to_owned()),
                        message: error.message,
                    });
                }
                return Err(ClientError::from_server(error.error, error.message));
            }
            Some(Type::Ping) => {
                out.clear();
                encode(&mut codec, Frame::simple(command::pong()), &mut out, broker)?;
                write_and_flush(&mut writer, &out).await.map_err(connect_error)?;
            }
            Some(Type::AuthChallenge) => {
                // A multi-step method (or a broker refreshing at once): answer with fresh data.
                let Some(authentication) = authentication else {
                    return Err(ClientError::AuthenticationFailed {
                        broker: broker.to_string(),
                        method: "none".into(),
                        message: "the broker asks for credentials and the client has no authentication set".into(),
                    });
                };
                let data = authentication.auth_data().await?;
                out.clear();
                encode(&mut codec, Frame::simple(auth_response(authentication.method_name(), data)), &mut out, broker)?;
                write_and_flush(&mut writer, &out).await.map_err(connect_error)?;
            }
            _ => return Err(unexpected(broker, "CONNECTED", &command_name(frame.command.command_type))),
        }
    }
}

async fn write_and_flush(writer: &mut WriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// AUTH_RESPONSE with fresh credentials, as Pulsar's client builds it.
fn auth_response(method: &str, data: AuthData) -> BaseCommand {
    BaseCommand {
        command_type: Type::AuthResponse as i32,
        auth_response: Some(pb::CommandAuthResponse {
            client_version: Some(CLIENT_VERSION.to_owned()),
            response: Some(pb::AuthData {
                auth_method_name: Some(method.to_owned()),
                auth_data: Some(data.into_bytes()),
            }),
            protocol_version: Some(magnetar_proto::PROTOCOL_VERSION),
        }),
        ..Default::default()
    }
}

fn encode(codec: &mut FrameCodec, frame: Frame, out: &mut BytesMut, broker: &BrokerAddress) -> Result<(), ClientError> {
    codec.encode(frame, out).map_err(|source| ClientError::Encode { broker: broker.to_string(), source })
}

fn unexpected(broker: &BrokerAddress, expected: &'static str, got: &str) -> ClientError {
    ClientError::UnexpectedResponse { broker: broker.to_string(), expected, got: got.to_owned() }
}

/// A command's name for errors and logs, e.g. `LOOKUP`.
pub(crate) fn command_name(command_type: i32) -> String {
    Type::try_from(command_type).map_or_else(|_| format!("command type {command_type}"), |t| t.as_str_name().to_owned())
}

/// Routing state of one producer.
struct ProducerSlot {
    /// The producer's name once the broker confirmed it, else its id.
    label: String,
    topic: String,
    /// Set when the broker closed the producer: later sends fail with it.
    closed: Option<String>,
    /// By sequence id; several for the chunks of one message, answered in send order.
    receipts: HashMap<u64, VecDeque<PendingReceipt>>,
}

impl ProducerSlot {
    fn closed_error(&self, reason: &str) -> ClientError {
        ClientError::ProducerClosed {
            producer: self.label.clone(),
            topic: self.topic.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// The task that owns the socket. See the module documentation.
struct ConnectionTask {
    broker: BrokerAddress,
    reader: FramedRead<ReadHalf, FrameCodec>,
    writer: WriteHalf,
    codec: FrameCodec,
    /// Encoded frames not yet written.
    out: BytesMut,
    commands: mpsc::Receiver<Outgoing>,
    keepalive_interval: Duration,
    /// A PING went out and nothing has come in since.
    waiting_for_pong: bool,
    authentication: Option<Arc<dyn Authentication>>,
    /// Fresh credentials being fetched to answer an AUTH_CHALLENGE; at most one at a time
    /// (a challenge arriving meanwhile is answered by the same fresh data).
    auth_refresh: Option<BoxFuture<'static, Result<AuthData, ClientError>>>,
    /// The broker's message when it refused credentials outside any request (a failed
    /// refresh); it names the reason when the broker then closes the connection.
    auth_refused: Option<String>,
    pending: HashMap<u64, oneshot::Sender<Result<BaseCommand, ClientError>>>,
    producers: HashMap<u64, ProducerSlot>,
    /// CLOSE_PRODUCER requests of dropped producers: request id to producer id.
    closing_producers: HashMap<u64, u64>,
    consumers: HashMap<u64, mpsc::Sender<ConsumerEvent>>,
    /// PRODUCER requests to tell when the broker queues them (WaitForExclusive).
    queued_producers: HashMap<u64, oneshot::Sender<()>>,
    /// Topic list watchers by watcher id.
    watchers: HashMap<u64, mpsc::Sender<pb::CommandWatchTopicUpdate>>,
    close_reason: Arc<Mutex<Option<String>>>,
}

/// Why the task loop ended.
enum Exit {
    /// Every handle was dropped: a normal end.
    Released,
    Failed(String),
}

impl ConnectionTask {
    async fn run(mut self) {
        let exit = self.serve().await;
        let reason = match exit {
            Exit::Released => {
                debug!(broker = %self.broker, "connection released");
                // Best effort: the last commands (closes of dropped producers) may still be buffered.
                let _ = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, self.writer.write_all(&self.out)).await;
                let _ = self.writer.shutdown().await;
                "the client released the connection".to_owned()
            }
            Exit::Failed(reason) => {
                warn!(broker = %self.broker, %reason, "connection lost");
                reason
            }
        };
        *self.close_reason.lock() = Some(reason.clone());
        self.fail_everything(&reason);
    }

    async fn serve(&mut self) -> Exit {
        let start = tokio::time::Instant::now() + self.keepalive_interval;
        let mut keepalive = tokio::time::interval_at(start, self.keepalive_interval);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                frame = self.reader.next() => match frame {
                    None => {
                        return Exit::Failed(match self.auth_refused.take() {
                            Some(message) => format!("the broker refused the refreshed credentials: {message}"),
                            None => "the broker closed the connection".into(),
                        })
                    }
                    Some(Ok(frame)) => {
                        self.waiting_for_pong = false;
                        self.handle_frame(frame);
                    }
                    Some(Err(error)) if error.is_fatal() => return Exit::Failed(format!("cannot read a frame: {error}")),
                    Some(Err(error)) => {
                        self.waiting_for_pong = false;
                        self.handle_bad_frame(error);
                    }
                },
                written = write_or_flush(&mut self.writer, &mut self.out),
                    if !self.out.is_empty() || self.writer.needs_flush() => match written {
                    Ok(Some(0)) => return Exit::Failed("the socket no longer accepts writes".into()),
                    Ok(_) => {}
                    Err(error) => return Exit::Failed(format!("cannot write: {error}")),
                },
                refreshed = next_auth_data(&mut self.auth_refresh), if self.auth_refresh.is_some() => {
                    self.auth_refresh = None;
                    match refreshed {
                        Ok(data) => self.answer_auth_challenge(data),
                        Err(error) => {
                            return Exit::Failed(format!(
                                "cannot get fresh credentials for the broker's AUTH_CHALLENGE: {}",
                                error_chain(&error)
                            ))
                        }
                    }
                }
                outgoing = self.commands.recv(), if self.out.len() < WRITE_BUFFER_HIGH_WATER => match outgoing {
                    None => return Exit::Released,
                    Some(outgoing) => self.handle_outgoing(outgoing),
                },
                _ = keepalive.tick() => {
                    if self.waiting_for_pong {
                        return Exit::Failed(format!("no answer to a keepalive PING within {:?}", self.keepalive_interval));
                    }
                    self.queue_control(command::ping());
                    self.waiting_for_pong = true;
                    self.forget_abandoned();
                }
            }
        }
    }

    fn handle_outgoing(&mut self, outgoing: Outgoing) {
        match outgoing {
            Outgoing::Request { request_id, command, reply, queued } => {
                match encode(&mut self.codec, Frame::simple(*command), &mut self.out, &self.broker) {
                    Ok(()) => {
                        self.pending.insert(request_id, reply);
                        if let Some(queued) = queued {
                            self.queued_producers.insert(request_id, queued);
                        }
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Outgoing::Send { producer_id, sequence_id, frame, receipt } => {
                let Some(slot) = self.producers.get_mut(&producer_id) else {
                    let error = ClientError::ProducerClosed {
                        producer: format!("#{producer_id}"),
                        topic: String::new(),
                        reason: "it is not open on this connection".into(),
                    };
                    let _ = receipt.reply.send(Err(error));
                    return;
                };
                if let Some(reason) = &slot.closed {
                    let _ = receipt.reply.send(Err(slot.closed_error(reason)));
                    return;
                }
                match encode(&mut self.codec, *frame, &mut self.out, &self.broker) {
                    Ok(()) => {
                        slot.receipts.entry(sequence_id).or_default().push_back(receipt);
                    }
                    Err(error) => {
                        let _ = receipt.reply.send(Err(error));
                    }
                }
            }
            Outgoing::Command(command) => {
                let name = command_name(command.command_type);
                if let Err(error) = encode(&mut self.codec, Frame::simple(*command), &mut self.out, &self.broker) {
                    warn!(broker = %self.broker, command = %name, error = %error_chain(&error), "cannot send a command");
                }
            }
            Outgoing::AddProducer { producer_id, label, topic } => {
                let slot = self.producers.entry(producer_id).or_insert_with(|| ProducerSlot {
                    label: String::new(),
                    topic: String::new(),
                    closed: None,
                    receipts: HashMap::new(),
                });
                slot.label = label;
                slot.topic = topic;
            }
            Outgoing::RemoveProducer { producer_id, reason } => self.remove_producer(producer_id, &reason),
            Outgoing::CloseProducer { producer_id, request_id } => {
                let close = command::close_producer(producer_id, request_id);
                match encode(&mut self.codec, Frame::simple(close), &mut self.out, &self.broker) {
                    Ok(()) => {
                        self.closing_producers.insert(request_id, producer_id);
                    }
                    Err(error) => {
                        warn!(broker = %self.broker, error = %error_chain(&error), "cannot close a dropped producer");
                        self.remove_producer(producer_id, "the producer was dropped");
                    }
                }
            }
            Outgoing::AddConsumer { consumer_id, events } => {
                self.consumers.insert(consumer_id, events);
            }
            Outgoing::RemoveConsumer { consumer_id } => {
                self.consumers.remove(&consumer_id);
            }
            Outgoing::AddWatcher { watcher_id, updates } => {
                self.watchers.insert(watcher_id, updates);
            }
            Outgoing::RemoveWatcher { watcher_id } => {
                self.watchers.remove(&watcher_id);
            }
        }
    }

    fn handle_frame(&mut self, frame: Frame) {
        let Frame { command, payload } = frame;
        let Ok(kind) = Type::try_from(command.command_type) else {
            // The codec refuses unknown types before they get here.
            return;
        };
        match kind {
            Type::Ping => self.queue_control(command::pong()),
            Type::Pong => {}
            Type::Success => {
                let request_id = command::request_id(&command);
                self.complete(request_id, command);
            }
            Type::Error => {
                let request_id = command::request_id(&command);
                let pending = request_id.is_some_and(|id| self.pending.contains_key(&id));
                match &command.error {
                    // Pulsar brokers send this (request id -1) when a refreshed credential is
                    // refused, then close the connection.
                    Some(error) if !pending && error.error == ServerError::AuthenticationError as i32 => {
                        warn!(broker = %self.broker, message = %error.message, "the broker refused the refreshed credentials");
                        self.auth_refused = Some(error.message.clone());
                    }
                    _ => self.complete(request_id, command),
                }
            }
            Type::ProducerSuccess => {
                let Some(success) = &command.producer_success else {
                    return self.malformed(kind);
                };
                if success.producer_ready == Some(false) {
                    // The broker answers again when the producer gets its exclusive access.
                    info!(broker = %self.broker, producer = %success.producer_name, "producer waits for exclusive access");
                    if let Some(queued) = self.queued_producers.remove(&success.request_id) {
                        let _ = queued.send(());
                    }
                    return;
                }
                let request_id = command::request_id(&command);
                self.complete(request_id, command);
            }
            Type::LookupResponse => {
                let request_id = command::request_id(&command);
                self.complete(request_id, command);
            }
            Type::PartitionedMetadataResponse => {
                let request_id = command::request_id(&command);
                self.complete(request_id, command);
            }
            Type::GetLastMessageIdResponse => {
                let request_id = command::request_id(&command);
                self.complete(request_id, command);
            }
            Type::GetTopicsOfNamespaceResponse => {
                let request_id = command::request_id(&command);
                self.complete(request_id, command);
            }
            Type::GetSchemaResponse => {
                let request_id = command::request_id(&command);
                self.complete(request_id, command);
            }
            Type::GetOrCreateSchemaResponse => {
                let request_id = command::request_id(&command);
                self.complete(request_id, command);
            }
            Type::ConsumerStatsResponse => {
                let request_id = command::request_id(&command);
                self.complete(request_id, command);
            }
            Type::WatchTopicListSuccess => {
                let request_id = command::request_id(&command);
                self.complete(request_id, command);
            }
            Type::WatchTopicUpdate => {
                let Some(update) = command.watch_topic_update else { return self.malformed(kind) };
                let watcher_id = update.watcher_id;
                let Some(updates) = self.watchers.get(&watcher_id) else {
                    return debug!(broker = %self.broker, watcher_id, "topic list update for no watcher");
                };
                if updates.try_send(*update).is_err() {
                    // Full or gone: the watcher's owner polls and sees its channel closed.
                    warn!(broker = %self.broker, watcher_id, "topic list watcher does not keep up; dropping it");
                    self.watchers.remove(&watcher_id);
                }
            }
            Type::AckResponse => {
                // Only acks that carry a request id are answered; this client sends none.
                let request_id = command::request_id(&command);
                if request_id.is_some() {
                    self.complete(request_id, command);
                }
            }
            Type::SendReceipt => {
                let Some(receipt) = command.send_receipt else { return self.malformed(kind) };
                let result = receipt.message_id.ok_or_else(|| {
                    unexpected(&self.broker, "SEND_RECEIPT with a message id", "SEND_RECEIPT without one")
                });
                self.complete_send(receipt.producer_id, receipt.sequence_id, result);
            }
            Type::SendError => {
                let Some(error) = command.send_error else { return self.malformed(kind) };
                let result = Err(ClientError::from_server(error.error, error.message));
                self.complete_send(error.producer_id, error.sequence_id, result);
            }
            Type::Message => {
                let Some(message) = command.message else { return self.malformed(kind) };
                let consumer_id = message.consumer_id;
                let event = match payload {
                    Some(payload) => ConsumerEvent::Message { command: message, payload: Box::new(payload) },
                    None => ConsumerEvent::Corrupt {
                        message_id: message.message_id,
                        error: FrameError::Malformed { reason: "MESSAGE without a payload" },
                    },
                };
                self.deliver(consumer_id, event);
            }
            Type::CloseProducer => {
                let Some(close) = command.close_producer else { return self.malformed(kind) };
                if let Some(slot) = self.producers.get_mut(&close.producer_id) {
                    let reason = "the broker closed the producer".to_owned();
                    info!(broker = %self.broker, producer = %slot.label, topic = %slot.topic, "{reason}");
                    for receipt in slot.receipts.drain().flat_map(|(_, receipts)| receipts) {
                        let error = ClientError::ProducerClosed {
                            producer: slot.label.clone(),
                            topic: slot.topic.clone(),
                            reason: reason.clone(),
                        };
                        let _ = receipt.reply.send(Err(error));
                    }
                    slot.closed = Some(reason);
                }
            }
            Type::CloseConsumer => {
                let Some(close) = command.close_consumer else { return self.malformed(kind) };
                if let Some(events) = self.consumers.remove(&close.consumer_id) {
                    info!(broker = %self.broker, consumer_id = close.consumer_id, "the broker closed the consumer");
                    let _ = events.try_send(ConsumerEvent::Closed { reason: "the broker closed the consumer".into() });
                }
            }
            Type::ReachedEndOfTopic => {
                let consumer_id = command.reached_end_of_topic.map(|c| c.consumer_id);
                info!(broker = %self.broker, ?consumer_id, "the topic was terminated: no more messages will arrive");
            }
            Type::ActiveConsumerChange => {
                let change = command.active_consumer_change;
                debug!(broker = %self.broker, ?change, "active consumer changed");
            }
            Type::AuthChallenge => self.start_auth_refresh(),
            other => {
                warn!(broker = %self.broker, command = other.as_str_name(), "unexpected command from the broker; ignored");
            }
        }
    }

    /// Starts fetching fresh credentials for an AUTH_CHALLENGE; the task's loop answers once
    /// they arrive.
    fn start_auth_refresh(&mut self) {
        let Some(authentication) = self.authentication.clone() else {
            return warn!(broker = %self.broker, "the broker sent AUTH_CHALLENGE but the client has no authentication set");
        };
        if self.auth_refresh.is_some() {
            return debug!(broker = %self.broker, "AUTH_CHALLENGE while fresh credentials are on their way");
        }
        debug!(broker = %self.broker, method = authentication.method_name(), "AUTH_CHALLENGE: fetching fresh credentials");
        self.auth_refresh = Some(Box::pin(async move { authentication.auth_data().await }));
    }

    fn answer_auth_challenge(&mut self, data: AuthData) {
        let Some(authentication) = &self.authentication else { return };
        let response = auth_response(authentication.method_name(), data);
        // Queued even above the high-water mark: the broker closes a connection whose
        // challenge goes unanswered.
        if let Err(error) = encode(&mut self.codec, Frame::simple(response), &mut self.out, &self.broker) {
            warn!(broker = %self.broker, error = %error_chain(&error), "cannot encode AUTH_RESPONSE");
        } else {
            debug!(broker = %self.broker, "answered AUTH_CHALLENGE");
        }
    }

    /// A frame that could be read but not decoded; the stream is still in step.
    fn handle_bad_frame(&mut self, error: FrameError) {
        if let FrameError::Checksum { command: Some(command), .. } = &error {
            if let Some(message) = &command.message {
                let consumer_id = message.consumer_id;
                let message_id = message.message_id.clone();
                self.deliver(consumer_id, ConsumerEvent::Corrupt { message_id, error });
                return;
            }
        }
        warn!(broker = %self.broker, %error, "skipped a frame that could not be decoded");
    }

    /// Removes a producer's routing; sends still waiting for receipts fail with `reason`.
    fn remove_producer(&mut self, producer_id: u64, reason: &str) {
        if let Some(mut slot) = self.producers.remove(&producer_id) {
            for receipt in std::mem::take(&mut slot.receipts).into_values().flatten() {
                let _ = receipt.reply.send(Err(slot.closed_error(reason)));
            }
        }
    }

    /// Answers the request `request_id`; an ERROR answer becomes a server error.
    fn complete(&mut self, request_id: Option<u64>, command: BaseCommand) {
        let kind = command.command_type;
        let Some(request_id) = request_id else {
            return warn!(broker = %self.broker, command = %command_name(kind), "answer without its body; ignored");
        };
        if let Some(producer_id) = self.closing_producers.remove(&request_id) {
            return self.remove_producer(producer_id, "the producer was dropped");
        }
        self.queued_producers.remove(&request_id);
        let Some(reply) = self.pending.remove(&request_id) else {
            return debug!(broker = %self.broker, request_id, command = %command_name(kind), "answer to no pending request");
        };
        let result = match command.error {
            Some(error) if kind == Type::Error as i32 => Err(ClientError::from_server(error.error, error.message)),
            _ => Ok(command),
        };
        let _ = reply.send(result);
    }

    fn complete_send(&mut self, producer_id: u64, sequence_id: u64, result: ReceiptResult) {
        let receipt = self.producers.get_mut(&producer_id).and_then(|slot| {
            let receipts = slot.receipts.get_mut(&sequence_id)?;
            let receipt = receipts.pop_front();
            if receipts.is_empty() {
                slot.receipts.remove(&sequence_id);
            }
            receipt
        });
        match receipt {
            Some(receipt) => {
                let _ = receipt.reply.send(result);
            }
            None => debug!(broker = %self.broker, producer_id, sequence_id, "receipt for no pending send"),
        }
    }

    fn deliver(&mut self, consumer_id: u64, event: ConsumerEvent) {
        let Some(events) = self.consumers.get(&consumer_id) else {
            return debug!(broker = %self.broker, consumer_id, "message for no open consumer; dropped");
        };
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(
                    broker = %self.broker,
                    consumer_id,
                    "the broker sent more messages than the consumer's permits; closing the consumer's queue \
                     (its unacknowledged messages are redelivered after it closes)"
                );
                self.consumers.remove(&consumer_id);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.consumers.remove(&consumer_id);
            }
        }
    }

    /// Queues a small control command (PING, PONG) even above the high-water mark, but not
    /// without bound.
    fn queue_control(&mut self, command: BaseCommand) {
        if self.out.len() > WRITE_BUFFER_HARD_LIMIT {
            return debug!(broker = %self.broker, "write buffer full; control command skipped");
        }
        if let Err(error) = encode(&mut self.codec, Frame::simple(command), &mut self.out, &self.broker) {
            warn!(broker = %self.broker, error = %error_chain(&error), "cannot encode a control command");
        }
    }

    fn malformed(&self, kind: Type) {
        warn!(broker = %self.broker, command = kind.as_str_name(), "command without its body; ignored");
    }

    /// Drops slots whose caller gave up (timed out or dropped the future).
    fn forget_abandoned(&mut self) {
        self.pending.retain(|_, reply| !reply.is_closed());
        self.queued_producers.retain(|_, queued| !queued.is_closed());
        for slot in self.producers.values_mut() {
            for receipts in slot.receipts.values_mut() {
                receipts.retain(|receipt| !receipt.reply.is_closed());
            }
            slot.receipts.retain(|_, receipts| !receipts.is_empty());
        }
        self.consumers.retain(|_, events| !events.is_closed());
        self.watchers.retain(|_, updates| !updates.is_closed());
    }

    fn fail_everything(&mut self, reason: &str) {
        let disconnected = || ClientError::Disconnected { broker: self.broker.to_string(), reason: reason.to_owned() };
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(disconnected()));
        }
        self.watchers.clear();
        self.queued_producers.clear();
        for (_, slot) in self.producers.drain() {
            for receipt in slot.receipts.into_values().flatten() {
                let _ = receipt.reply.send(Err(disconnected()));
            }
        }
        for (_, events) in self.consumers.drain() {
            let _ = events
                .try_send(ConsumerEvent::Closed { reason: format!("connection to {} lost: {reason}", self.broker) });
        }
        self.commands.close();
        while let Ok(outgoing) = self.commands.try_recv() {
            match outgoing {
                Outgoing::Request { reply, .. } => {
                    let _ = reply.send(Err(disconnected()));
                }
                Outgoing::Send { receipt, .. } => {
                    let _ = receipt.reply.send(Err(disconnected()));
                }
                _ => {}
            }
        }
    }
}

/// The fresh credentials being fetched; pending forever when there is no fetch (the task's
/// `select!` polls it only when there is).
async fn next_auth_data(
    refresh: &mut Option<BoxFuture<'static, Result<AuthData, ClientError>>>,
) -> Result<AuthData, ClientError> {
    match refresh {
        Some(refresh) => refresh.await,
        None => std::future::pending().await,
    }
}

/// Writes some of `out`; with nothing left there, flushes what a TLS session still holds
/// (only TLS needs it, see stream.rs). `Some(bytes written)` or `None` after a flush.
async fn write_or_flush(writer: &mut WriteHalf, out: &mut BytesMut) -> std::io::Result<Option<usize>> {
    if out.is_empty() {
        writer.flush().await.map(|()| None)
    } else {
        writer.write_buf(out).await.map(Some)
    }
}
