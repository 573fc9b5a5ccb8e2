//! A tiny in-process broker for the client's end-to-end tests, and those tests.
//!
//! It speaks just enough of the protocol (CONNECT, PING/PONG, LOOKUP, PARTITIONED_METADATA,
//! PRODUCER, SEND, SUBSCRIBE, FLOW, ACK, CLOSE_*) over real TCP on 127.0.0.1:0 with the shared
//! FrameCodec. Every topic is one ledger (id 1) whose entry ids are the indexes of its
//! entries. Subscriptions live in the connection that made them and honour FLOW permits, so
//! the tests also check the client's flow control. Special topic names trigger failures:
//! `missing-*` (lookup fails), `elsewhere-*` (lookup redirects), `partitioned-*`,
//! `blackhole-*` (the connection drops on SEND), `rejected-*` (SEND_ERROR).
//!
//! For the security tests it can serve TLS (recording the client certificates it saw),
//! refuse credentials in CONNECT and AUTH_RESPONSE as Pulsar's broker does (ERROR
//! AuthenticationError with request id -1, then close), and send AUTH_CHALLENGE on every open
//! connection ([`FakeBroker::challenge`]).
//!
//! For the newer client features (feature_tests.rs): a smaller maximum message size
//! (chunking), WaitForExclusive producers answered `producer_ready = false` first and ready
//! later, the namespace's topic list (GET_TOPICS_OF_NAMESPACE) and, when announced in
//! CONNECTED, topic list watchers (WATCH_TOPIC_LIST, then WATCH_TOPIC_UPDATE on
//! [`FakeBroker::topics_changed`]); without the flag, WATCH_TOPIC_LIST gets ERROR.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use magnetar_proto::command;
use magnetar_proto::pulsar::{self as pb, base_command::Type, command_lookup_topic_response::LookupType, ServerError};
use magnetar_proto::{Frame, FrameCodec, Payload};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::codec::Framed;

/// What the fake broker saw and holds.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub connections: usize,
    pub connects: Vec<pb::CommandConnect>,
    pub pongs: usize,
    pub entries: HashMap<String, Vec<Payload>>,
    pub flows: Vec<u32>,
    pub acks: Vec<pb::CommandAck>,
    pub closed_producers: usize,
    pub closed_consumers: usize,
    /// Every SEND as (topic, producer name from the metadata, sequence id), in arrival order.
    pub sends: Vec<(String, String, u64)>,
    pub subscribes: Vec<pb::CommandSubscribe>,
    pub redeliveries: Vec<pb::CommandRedeliverUnacknowledgedMessages>,
    /// Connections closed by `drop_connections`.
    pub dropped: usize,
    /// Durable subscriptions moved by SEEK: (topic, subscription) -> next entry.
    pub seeks: HashMap<(String, String), usize>,
    /// While set, SENDs are stored but not answered.
    pub hold_receipts: bool,
    /// Every AUTH_RESPONSE, in arrival order.
    pub auth_responses: Vec<pb::CommandAuthResponse>,
    /// The first certificate (DER) of each TLS client that presented one.
    pub client_certificates: Vec<Vec<u8>>,
    /// TLS handshakes that failed, with rustls' reason.
    pub tls_failures: Vec<String>,
    /// While set, connections wait a millisecond after each frame they read.
    pub slow_reads: bool,
    /// Every PRODUCER, in arrival order.
    pub producer_commands: Vec<pb::CommandProducer>,
    /// What GET_TOPICS_OF_NAMESPACE and WATCH_TOPIC_LIST answer (full names).
    pub namespace_topics: Vec<String>,
    /// Every GET_TOPICS_OF_NAMESPACE, in arrival order.
    pub topic_list_requests: Vec<pb::CommandGetTopicsOfNamespace>,
    /// Every WATCH_TOPIC_LIST, in arrival order.
    pub watch_requests: Vec<pb::CommandWatchTopicList>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Where `elsewhere-*` lookups are redirected.
    pub redirect_to: Option<String>,
    /// `last_sequence_id` to report for producers of these names.
    pub last_sequence_ids: HashMap<String, i64>,
    /// Answer CONNECT, then never send anything again (not even PONG).
    pub mute_after_connect: bool,
    /// Serve TLS with this configuration (the URL is then `pulsar+ssl://localhost:<port>`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Which credentials (method, data) CONNECT and AUTH_RESPONSE must carry; `None` takes any.
    pub accept_auth: Option<fn(&str, &[u8]) -> bool>,
    /// The maximum message size CONNECTED announces (default 5 MB).
    pub max_message_size: Option<i32>,
    /// Announce `supports_topic_watchers` and answer WATCH_TOPIC_LIST.
    pub topic_watchers: bool,
    /// How long a WaitForExclusive producer waits between its two PRODUCER_SUCCESS answers.
    pub exclusive_wait: Duration,
}

pub(crate) struct FakeBroker {
    pub url: String,
    state: Arc<Mutex<State>>,
    /// Bumped whenever an entry is added, so connections dispatch to their consumers.
    appended: watch::Sender<u64>,
    /// Bumped to make every open connection drop.
    kill: watch::Sender<u64>,
    /// Bumped to make every open connection send AUTH_CHALLENGE.
    challenge: watch::Sender<u64>,
    /// Topic list changes (new, deleted) for the watchers of every connection.
    topics: watch::Sender<(Vec<String>, Vec<String>)>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl FakeBroker {
    pub async fn start(options: Options) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let url = match options.tls {
            Some(_) => format!("pulsar+ssl://localhost:{}", address.port()),
            None => format!("pulsar://{address}"),
        };
        let state = Arc::new(Mutex::new(State::default()));
        let (appended, _) = watch::channel(0);
        let (kill, _) = watch::channel(0);
        let (challenge, _) = watch::channel(0);
        let (topics, _) = watch::channel((Vec::new(), Vec::new()));
        let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let shared = Shared {
            url: url.clone(),
            options,
            state: state.clone(),
            appended: appended.clone(),
            kill: kill.clone(),
            challenge: challenge.clone(),
            topics: topics.clone(),
        };
        let accept_loop = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().connections += 1;
                let shared = shared.clone();
                let Some(acceptor) = acceptor.clone() else {
                    tokio::spawn(serve(stream, shared));
                    continue;
                };
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(stream) => {
                            if let Some(certificate) = stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                                shared.lock().client_certificates.push(certificate.to_vec());
                            }
                            serve(stream, shared).await;
                        }
                        Err(error) => shared.lock().tls_failures.push(error.to_string()),
                    }
                });
            }
        });
        FakeBroker { url, state, appended, kill, challenge, topics, accept_loop }
    }

    /// Adds and removes topics of the namespace's list and tells every watcher.
    pub fn topics_changed(&self, new: &[&str], deleted: &[&str]) {
        {
            let mut state = self.state();
            state.namespace_topics.retain(|topic| !deleted.contains(&topic.as_str()));
            state.namespace_topics.extend(new.iter().map(|topic| (*topic).to_owned()));
        }
        let owned = |names: &[&str]| names.iter().map(|name| (*name).to_owned()).collect();
        self.topics.send_replace((owned(new), owned(deleted)));
    }

    /// Sends AUTH_CHALLENGE on every open connection, as a broker whose client's credentials
    /// expired does.
    pub fn challenge(&self) {
        self.challenge.send_modify(|generation| *generation += 1);
    }

    /// Closes every open connection, as a broker crash would.
    pub fn drop_connections(&self) {
        self.kill.send_modify(|generation| *generation += 1);
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Stores an entry as if a producer had sent it.
    pub fn append(&self, topic: &str, payload: Payload) {
        self.state().entries.entry(topic.to_owned()).or_default().push(payload);
        self.appended.send_modify(|count| *count += 1);
    }

    /// Waits (bounded) until `condition` holds for the state.
    pub async fn eventually(&self, what: &str, condition: impl Fn(&State) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !condition(&self.state()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[derive(Clone)]
struct Shared {
    url: String,
    options: Options,
    state: Arc<Mutex<State>>,
    appended: watch::Sender<u64>,
    kill: watch::Sender<u64>,
    challenge: watch::Sender<u64>,
    topics: watch::Sender<(Vec<String>, Vec<String>)>,
}

impl Shared {
    /// True when `options.accept_auth` takes these credentials.
    fn accepts(&self, method: Option<&str>, data: Option<&[u8]>) -> bool {
        self.options.accept_auth.is_none_or(|accept| accept(method.unwrap_or_default(), data.unwrap_or_default()))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

struct Subscription {
    topic: String,
    name: String,
    next_entry: usize,
    permits: i64,
    /// Entries asked for again (REDELIVER_UNACKNOWLEDGED_MESSAGES), sent before new ones.
    redeliver: std::collections::VecDeque<usize>,
    /// How often each entry was delivered.
    deliveries: HashMap<usize, u32>,
}

async fn serve(stream: impl AsyncRead + AsyncWrite + Unpin, shared: Shared) {
    let mut framed = Framed::new(stream, FrameCodec::default());
    let mut appended = shared.appended.subscribe();
    let mut kill = shared.kill.subscribe();
    let mut challenge = shared.challenge.subscribe();
    let mut topic_changes = shared.topics.subscribe();
    // Watchers of this connection; frames to send later (WaitForExclusive's second answer).
    let mut watchers: Vec<u64> = Vec::new();
    let mut delayed: Vec<(tokio::time::Instant, Frame)> = Vec::new();
    let mut producers: HashMap<u64, String> = HashMap::new();
    let mut subscriptions: HashMap<u64, Subscription> = HashMap::new();
    let mut muted = false;
    loop {
        if shared.lock().slow_reads {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let frame = tokio::select! {
            frame = framed.next() => match frame {
                Some(Ok(frame)) => Some(frame),
                _ => return,
            },
            changed = appended.changed() => {
                if changed.is_err() {
                    return;
                }
                None
            }
            _ = kill.changed() => {
                shared.lock().dropped += 1;
                return;
            }
            _ = challenge.changed() => {
                if framed.send(Frame::simple(auth_challenge())).await.is_err() {
                    return;
                }
                None
            }
            _ = topic_changes.changed() => {
                let (new_topics, deleted_topics) = topic_changes.borrow_and_update().clone();
                for &watcher_id in &watchers {
                    let update = pb::BaseCommand {
                        command_type: Type::WatchTopicUpdate as i32,
                        watch_topic_update: Some(Box::new(pb::CommandWatchTopicUpdate {
                            watcher_id,
                            new_topics: new_topics.clone(),
                            deleted_topics: deleted_topics.clone(),
                            topics_hash: String::new(),
                        })),
                        ..Default::default()
                    };
                    if framed.send(Frame::simple(update)).await.is_err() {
                        return;
                    }
                }
                None
            }
            () = tokio::time::sleep_until(delayed.iter().map(|(at, _)| *at).min().unwrap_or_else(tokio::time::Instant::now)),
                if !delayed.is_empty() => {
                let now = tokio::time::Instant::now();
                let (due, later): (Vec<_>, Vec<_>) = delayed.drain(..).partition(|(at, _)| *at <= now);
                delayed = later;
                for (_, frame) in due {
                    if framed.send(frame).await.is_err() {
                        return;
                    }
                }
                None
            }
        };
        let mut replies = Vec::new();
        if let Some(frame) = frame {
            if muted {
                continue;
            }
            let Some(kind) = frame.command_type() else { continue };
            let command = frame.command;
            match kind {
                Type::Connect => {
                    let connect = command.connect.expect("connect");
                    let accepted = shared.accepts(connect.auth_method_name.as_deref(), connect.auth_data.as_deref());
                    shared.lock().connects.push(connect);
                    if !accepted {
                        return refuse_credentials(&mut framed).await;
                    }
                    let flags = shared
                        .options
                        .topic_watchers
                        .then(|| pb::FeatureFlags { supports_topic_watchers: Some(true), ..Default::default() });
                    let max_message_size = shared.options.max_message_size.unwrap_or(5 * 1024 * 1024);
                    replies.push(Frame::simple(command::connected("fake-broker", 19, max_message_size, flags)));
                    if shared.options.mute_after_connect {
                        muted = true;
                    } else {
                        replies.push(Frame::simple(command::ping()));
                    }
                }
                Type::AuthResponse => {
                    let response = command.auth_response.expect("auth response");
                    let data = response.response.clone().unwrap_or_default();
                    shared.lock().auth_responses.push(response);
                    if !shared.accepts(data.auth_method_name.as_deref(), data.auth_data.as_deref()) {
                        return refuse_credentials(&mut framed).await;
                    }
                }
                Type::Ping => replies.push(Frame::simple(command::pong())),
                Type::Pong => shared.lock().pongs += 1,
                Type::Lookup => {
                    let lookup = command.lookup_topic.expect("lookup");
                    let local = local_name(&lookup.topic);
                    let reply = if local.starts_with("missing") {
                        command::lookup_failed(lookup.request_id, ServerError::TopicNotFound, "no such topic")
                    } else if let (true, Some(target)) = (local.starts_with("elsewhere"), &shared.options.redirect_to) {
                        let mut redirect = command::lookup_connect(lookup.request_id, target);
                        if let Some(response) = redirect.lookup_topic_response.as_mut() {
                            response.response = Some(LookupType::Redirect as i32);
                        }
                        redirect
                    } else if shared.options.tls.is_some() {
                        // The plain URL leads nowhere: a TLS client must take the TLS one.
                        let mut answer = command::lookup_connect(lookup.request_id, "pulsar://127.0.0.1:1");
                        if let Some(response) = answer.lookup_topic_response.as_mut() {
                            response.broker_service_url_tls = Some(shared.url.clone());
                        }
                        answer
                    } else {
                        command::lookup_connect(lookup.request_id, &shared.url)
                    };
                    replies.push(Frame::simple(reply));
                }
                Type::PartitionedMetadata => {
                    let request = command.partition_metadata.expect("partitioned metadata");
                    let partitions = if local_name(&request.topic).starts_with("partitioned") { 4 } else { 0 };
                    replies.push(Frame::simple(command::partitioned_metadata_response(request.request_id, partitions)));
                }
                Type::Producer => {
                    let producer = command.producer.expect("producer");
                    shared.lock().producer_commands.push(producer.clone());
                    let waits = producer.producer_access_mode == Some(pb::ProducerAccessMode::WaitForExclusive as i32);
                    if producer.producer_name.as_deref() == Some("busy") {
                        replies.push(Frame::simple(command::error(
                            producer.request_id,
                            ServerError::ProducerBusy,
                            "taken",
                        )));
                    } else {
                        let name =
                            producer.producer_name.clone().unwrap_or_else(|| format!("fake-{}", producer.producer_id));
                        let last = shared.options.last_sequence_ids.get(&name).copied().unwrap_or(-1);
                        producers.insert(producer.producer_id, producer.topic);
                        let ready = command::producer_success(producer.request_id, &name, last);
                        if waits {
                            let mut queued = ready.clone();
                            if let Some(success) = queued.producer_success.as_mut() {
                                success.producer_ready = Some(false);
                            }
                            replies.push(Frame::simple(queued));
                            let at = tokio::time::Instant::now() + shared.options.exclusive_wait;
                            delayed.push((at, Frame::simple(ready)));
                        } else {
                            replies.push(Frame::simple(ready));
                        }
                    }
                }
                Type::Send => {
                    let send = command.send.expect("send");
                    let topic = producers.get(&send.producer_id).cloned().unwrap_or_default();
                    let local = local_name(&topic);
                    if local.starts_with("blackhole") {
                        return;
                    }
                    let sent_by =
                        frame.payload.as_ref().map(|p| p.metadata().producer_name.clone()).unwrap_or_default();
                    shared.lock().sends.push((topic.clone(), sent_by, send.sequence_id));
                    if local.starts_with("rejected") {
                        let error = command::send_error(
                            send.producer_id,
                            send.sequence_id,
                            ServerError::PersistenceError,
                            "disk full",
                        );
                        replies.push(Frame::simple(error));
                    } else {
                        let entry_id = {
                            let mut state = shared.lock();
                            let entries = state.entries.entry(topic).or_default();
                            entries.push(frame.payload.expect("payload"));
                            entries.len() as u64 - 1
                        };
                        shared.appended.send_modify(|count| *count += 1);
                        if shared.lock().hold_receipts {
                            continue;
                        }
                        let receipt =
                            command::send_receipt(send.producer_id, send.sequence_id, send.sequence_id, 1, entry_id);
                        replies.push(Frame::simple(receipt));
                    }
                }
                Type::Subscribe => {
                    let subscribe = command.subscribe.expect("subscribe");
                    shared.lock().subscribes.push(subscribe.clone());
                    let existing = shared.lock().entries.get(&subscribe.topic).map_or(0, Vec::len);
                    let earliest =
                        subscribe.initial_position == Some(pb::command_subscribe::InitialPosition::Earliest as i32);
                    // A reader's start as Pulsar's broker takes it: after the id, or at it when
                    // the id carries a batch index.
                    let reader_start =
                        subscribe.start_message_id.as_ref().filter(|_| subscribe.durable == Some(false)).map(|id| {
                            match id.ledger_id {
                                u64::MAX => 0,
                                ledger if ledger == i64::MAX as u64 => existing,
                                _ if id.batch_index.is_some() => id.entry_id as usize,
                                _ => id.entry_id as usize + 1,
                            }
                        });
                    let sought = shared.lock().seeks.remove(&(subscribe.topic.clone(), subscribe.subscription.clone()));
                    subscriptions.insert(
                        subscribe.consumer_id,
                        Subscription {
                            name: subscribe.subscription.clone(),
                            topic: subscribe.topic,
                            next_entry: reader_start.or(sought).unwrap_or(if earliest { 0 } else { existing }),
                            permits: 0,
                            redeliver: Default::default(),
                            deliveries: HashMap::new(),
                        },
                    );
                    replies.push(Frame::simple(command::success(subscribe.request_id)));
                }
                Type::Flow => {
                    let flow = command.flow.expect("flow");
                    shared.lock().flows.push(flow.message_permits);
                    if let Some(subscription) = subscriptions.get_mut(&flow.consumer_id) {
                        subscription.permits += i64::from(flow.message_permits);
                    }
                }
                Type::Ack => shared.lock().acks.push(command.ack.expect("ack")),
                Type::RedeliverUnacknowledgedMessages => {
                    let redeliver = command.redeliver_unacknowledged_messages.expect("redeliver");
                    if let Some(subscription) = subscriptions.get_mut(&redeliver.consumer_id) {
                        for id in &redeliver.message_ids {
                            subscription.redeliver.push_back(id.entry_id as usize);
                        }
                    }
                    shared.lock().redeliveries.push(redeliver);
                }
                Type::GetLastMessageId => {
                    let request = command.get_last_message_id.expect("get last message id");
                    let count = subscriptions
                        .get(&request.consumer_id)
                        .and_then(|subscription| shared.lock().entries.get(&subscription.topic).map(Vec::len))
                        .unwrap_or(0);
                    let last = if count == 0 { u64::MAX } else { count as u64 - 1 };
                    replies.push(Frame::simple(command::get_last_message_id_response(request.request_id, 1, last)));
                }
                Type::Seek => {
                    let seek = command.seek.expect("seek");
                    if let (Some(subscription), Some(id)) = (subscriptions.get(&seek.consumer_id), &seek.message_id) {
                        let key = (subscription.topic.clone(), subscription.name.clone());
                        shared.lock().seeks.insert(key, id.entry_id as usize);
                    }
                    replies.push(Frame::simple(command::success(seek.request_id)));
                }
                Type::GetTopicsOfNamespace => {
                    let request = command.get_topics_of_namespace.expect("get topics of namespace");
                    let topics = {
                        let mut state = shared.lock();
                        state.topic_list_requests.push(request.clone());
                        state.namespace_topics.clone()
                    };
                    replies.push(Frame::simple(command::topics_of_namespace_response(request.request_id, topics)));
                }
                Type::WatchTopicList => {
                    let request = command.watch_topic_list.expect("watch topic list");
                    let topics = {
                        let mut state = shared.lock();
                        state.watch_requests.push((*request).clone());
                        state.namespace_topics.clone()
                    };
                    if shared.options.topic_watchers {
                        watchers.push(request.watcher_id);
                        let success = pb::BaseCommand {
                            command_type: Type::WatchTopicListSuccess as i32,
                            watch_topic_list_success: Some(Box::new(pb::CommandWatchTopicListSuccess {
                                request_id: request.request_id,
                                watcher_id: request.watcher_id,
                                topic: topics,
                                topics_hash: String::new(),
                            })),
                            ..Default::default()
                        };
                        replies.push(Frame::simple(success));
                    } else {
                        let error =
                            command::error(request.request_id, ServerError::NotAllowedError, "no watchers here");
                        replies.push(Frame::simple(error));
                    }
                }
                Type::WatchTopicListClose => {
                    let close = command.watch_topic_list_close.expect("watch topic list close");
                    watchers.retain(|&id| id != close.watcher_id);
                    replies.push(Frame::simple(command::success(close.request_id)));
                }
                Type::CloseProducer => {
                    let close = command.close_producer.expect("close producer");
                    producers.remove(&close.producer_id);
                    shared.lock().closed_producers += 1;
                    replies.push(Frame::simple(command::success(close.request_id)));
                }
                Type::CloseConsumer => {
                    let close = command.close_consumer.expect("close consumer");
                    subscriptions.remove(&close.consumer_id);
                    shared.lock().closed_consumers += 1;
                    replies.push(Frame::simple(command::success(close.request_id)));
                }
                other => panic!("the fake broker does not handle {other:?}"),
            }
        }
        if !muted {
            // Dispatch what the permits allow, a batch counting as its number of messages.
            let state = shared.lock();
            for (&consumer_id, subscription) in subscriptions.iter_mut() {
                let Some(entries) = state.entries.get(&subscription.topic) else { continue };
                while subscription.permits > 0 {
                    let index = match subscription.redeliver.pop_front() {
                        Some(index) => index,
                        None if subscription.next_entry < entries.len() => {
                            subscription.next_entry += 1;
                            subscription.next_entry - 1
                        }
                        None => break,
                    };
                    let Some(payload) = entries.get(index).cloned() else { continue };
                    subscription.permits -= i64::from(payload.num_messages());
                    let deliveries = subscription.deliveries.entry(index).or_insert(0);
                    let message = command::message(consumer_id, 1, index as u64, *deliveries);
                    *deliveries += 1;
                    replies.push(Frame { command: message, payload: Some(payload) });
                }
            }
        }
        for reply in replies {
            if framed.send(reply).await.is_err() {
                return;
            }
        }
    }
}

/// AUTH_CHALLENGE as Pulsar's broker sends it when credentials expire.
fn auth_challenge() -> pb::BaseCommand {
    pb::BaseCommand {
        command_type: Type::AuthChallenge as i32,
        auth_challenge: Some(pb::CommandAuthChallenge {
            server_version: Some("fake-broker".into()),
            challenge: Some(pb::AuthData {
                auth_method_name: Some("token".into()),
                auth_data: Some(b"PulsarAuthRefresh".to_vec()),
            }),
            protocol_version: Some(19),
        }),
        ..Default::default()
    }
}

/// As Pulsar's broker: ERROR AuthenticationError with request id -1, then close.
async fn refuse_credentials(framed: &mut Framed<impl AsyncRead + AsyncWrite + Unpin, FrameCodec>) {
    let error = command::error(u64::MAX, ServerError::AuthenticationError, "Unable to authenticate: invalid token");
    let _ = framed.send(Frame::simple(error)).await;
}

fn local_name(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or(topic)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::entry::{encode_batch, BatchedMessage};
    use crate::{Client, ClientConfig, ClientError, InitialPosition, MessageId, ProducerMessage, SubscriptionType};

    const TOPIC: &str = "persistent://public/default/my-topic";

    fn metadata(batch: Option<i32>) -> pb::MessageMetadata {
        pb::MessageMetadata {
            producer_name: "injected".into(),
            sequence_id: 0,
            publish_time: 1_700_000_000_000,
            num_messages_in_batch: batch,
            ..Default::default()
        }
    }

    fn batch_payload(bodies: &[&str]) -> Payload {
        let messages: Vec<BatchedMessage> = bodies
            .iter()
            .map(|body| BatchedMessage {
                metadata: Default::default(),
                payload: Bytes::copy_from_slice(body.as_bytes()),
            })
            .collect();
        Payload::new(metadata(Some(bodies.len() as i32)), &encode_batch(&messages))
    }

    async fn start() -> (FakeBroker, Client) {
        let broker = FakeBroker::start(Options::default()).await;
        let client = Client::connect(&broker.url).await.expect("connect");
        (broker, client)
    }

    async fn with_timeout<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), future).await.expect("timed out")
    }

    #[tokio::test]
    async fn handshake_names_the_client_and_pings_are_answered() {
        let (broker, _client) = start().await;
        broker.eventually("a PONG", |state| state.pongs >= 1).await;
        let state = broker.state();
        let connect = &state.connects[0];
        assert_eq!(connect.client_version, format!("magnetar-client/{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(connect.protocol_version, Some(magnetar_proto::PROTOCOL_VERSION));
    }

    #[tokio::test]
    async fn send_returns_the_id_from_the_receipt_and_writes_metadata() {
        let (broker, client) = start().await;
        let mut producer = client.producer("my-topic").create().await.expect("producer");
        assert_eq!(producer.name(), "fake-0");
        assert_eq!(producer.send("hello").await.expect("send"), MessageId::entry(1, 0));
        let message = ProducerMessage::new("keyed").key("k").property("a", "1");
        assert_eq!(producer.send_with(message).await.expect("send"), MessageId::entry(1, 1));

        let state = broker.state();
        let entries = &state.entries[TOPIC];
        assert_eq!(entries[0].body(), Bytes::from_static(b"hello"));
        assert_eq!(entries[0].metadata().sequence_id, 0);
        assert_eq!(entries[0].metadata().producer_name, "fake-0");
        assert_eq!(entries[0].metadata().num_messages_in_batch, None);
        assert_eq!(entries[1].metadata().sequence_id, 1);
        assert_eq!(entries[1].metadata().partition_key.as_deref(), Some("k"));
        assert_eq!(entries[1].metadata().properties, [pb::KeyValue { key: "a".into(), value: "1".into() }]);
    }

    #[tokio::test]
    async fn sequence_ids_continue_after_the_brokers_last_sequence_id() {
        let options = Options { last_sequence_ids: [("resumed".to_owned(), 41)].into(), ..Default::default() };
        let broker = FakeBroker::start(options).await;
        let client = Client::connect(&broker.url).await.expect("connect");
        let mut producer = client.producer("my-topic").name("resumed").create().await.expect("producer");
        assert_eq!(producer.next_sequence_id(), 42);
        producer.send("x").await.expect("send");
        assert_eq!(broker.state().entries[TOPIC][0].metadata().sequence_id, 42);
    }

    #[tokio::test]
    async fn pipelined_sends_resolve_in_order() {
        let (broker, client) = start().await;
        let mut producer = client.producer("my-topic").max_pending_messages(16).create().await.expect("producer");
        let mut receipts = Vec::new();
        for n in 0..100 {
            receipts.push(producer.send_async(ProducerMessage::new(format!("m{n}"))).await.expect("queue"));
            // Keep within the pending limit, as the CLI does.
            if receipts.len() >= 16 {
                let receipt: crate::SendReceipt = receipts.remove(0);
                with_timeout(receipt).await.expect("receipt");
            }
        }
        for receipt in receipts {
            with_timeout(receipt).await.expect("receipt");
        }
        let state = broker.state();
        let bodies: Vec<Bytes> = state.entries[TOPIC].iter().map(Payload::body).collect();
        let expected: Vec<Bytes> = (0..100).map(|n| Bytes::from(format!("m{n}"))).collect();
        assert_eq!(bodies, expected);
        let sequence_ids: Vec<u64> = state.entries[TOPIC].iter().map(|p| p.metadata().sequence_id).collect();
        assert_eq!(sequence_ids, (0..100).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn consumer_receives_messages_and_acknowledges_them() {
        let (broker, client) = start().await;
        let mut producer = client.producer("my-topic").create().await.expect("producer");
        for body in ["one", "two", "three"] {
            producer.send(body).await.expect("send");
        }
        let mut consumer = client
            .consumer("my-topic", "sub")
            .initial_position(InitialPosition::Earliest)
            .acknowledgement_group_time(Duration::ZERO)
            .subscribe()
            .await
            .expect("subscribe");
        for (index, body) in ["one", "two", "three"].into_iter().enumerate() {
            let message = with_timeout(consumer.receive()).await.expect("receive");
            assert_eq!(message.payload, Bytes::from(body));
            assert_eq!(message.id, MessageId::entry(1, index as u64));
            assert_eq!(message.producer_name, "fake-0");
            consumer.ack(&message).await.expect("ack");
        }
        broker.eventually("three acks", |state| state.acks.len() == 3).await;
        let state = broker.state();
        assert_eq!(state.flows[0], crate::DEFAULT_RECEIVER_QUEUE_SIZE);
        let acked: Vec<u64> = state.acks.iter().map(|ack| ack.message_id[0].entry_id).collect();
        assert_eq!(acked, [0, 1, 2]);
        assert!(state.acks.iter().all(|ack| ack.ack_type == pb::command_ack::AckType::Individual as i32));
    }

    #[tokio::test]
    async fn latest_subscription_sees_only_new_messages() {
        let (broker, client) = start().await;
        broker.append(TOPIC, Payload::new(metadata(None), b"old"));
        let mut consumer = client.consumer("my-topic", "sub").subscribe().await.expect("subscribe");
        broker.append(TOPIC, Payload::new(metadata(None), b"new"));
        let message = with_timeout(consumer.receive()).await.expect("receive");
        assert_eq!(message.payload, Bytes::from_static(b"new"));
    }

    #[tokio::test]
    async fn batch_is_split_and_acknowledged_once_every_message_was() {
        let (broker, client) = start().await;
        broker.append(TOPIC, batch_payload(&["a", "b", "c"]));
        broker.append(TOPIC, Payload::new(metadata(None), b"single"));
        let mut consumer = client
            .consumer("my-topic", "sub")
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await
            .expect("subscribe");
        let mut batch = Vec::new();
        for _ in 0..3 {
            batch.push(with_timeout(consumer.receive()).await.expect("receive"));
        }
        let ids: Vec<String> = batch.iter().map(|m| m.id.to_string()).collect();
        assert_eq!(ids, ["1:0:-1:0", "1:0:-1:1", "1:0:-1:2"]);
        assert_eq!(batch[1].payload, Bytes::from_static(b"b"));

        consumer.ack(&batch[0]).await.expect("ack");
        consumer.ack(&batch[2]).await.expect("ack");
        consumer.ack(&batch[2]).await.expect("ack twice");
        let single = with_timeout(consumer.receive()).await.expect("receive");
        // This ack arriving proves the partial batch acks sent nothing before it.
        consumer.ack(&single).await.expect("ack");
        broker.eventually("the single message's ack", |state| !state.acks.is_empty()).await;
        assert_eq!(broker.state().acks.len(), 1);
        assert_eq!(broker.state().acks[0].message_id[0].entry_id, 1);

        consumer.ack(&batch[1]).await.expect("ack");
        broker.eventually("the batch's ack", |state| state.acks.len() == 2).await;
        let state = broker.state();
        let batch_ack = &state.acks[1].message_id[0];
        assert_eq!((batch_ack.ledger_id, batch_ack.entry_id, batch_ack.batch_index), (1, 0, None));
    }

    #[tokio::test]
    async fn cumulative_ack_sends_the_entry_id() {
        let (broker, client) = start().await;
        broker.append(TOPIC, batch_payload(&["a", "b"]));
        let mut consumer = client
            .consumer("my-topic", "sub")
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await
            .expect("subscribe");
        let first = with_timeout(consumer.receive()).await.expect("receive");
        consumer.ack_cumulative(&first).await.expect("ack");
        broker.eventually("the cumulative ack", |state| state.acks.len() == 1).await;
        let state = broker.state();
        assert_eq!(state.acks[0].ack_type, pb::command_ack::AckType::Cumulative as i32);
        assert_eq!(state.acks[0].message_id[0].batch_index, None);
    }

    #[tokio::test]
    async fn cumulative_ack_is_refused_on_shared_subscriptions() {
        let (broker, client) = start().await;
        broker.append(TOPIC, Payload::new(metadata(None), b"x"));
        let mut consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await
            .expect("subscribe");
        let message = with_timeout(consumer.receive()).await.expect("receive");
        assert!(matches!(consumer.ack_cumulative(&message).await, Err(ClientError::NotAllowed { .. })));
    }

    #[tokio::test]
    async fn permits_are_granted_again_when_half_the_queue_is_used() {
        let (broker, client) = start().await;
        for n in 0..10 {
            broker.append(TOPIC, Payload::new(metadata(None), format!("m{n}").as_bytes()));
        }
        let mut consumer = client
            .consumer("my-topic", "sub")
            .initial_position(InitialPosition::Earliest)
            .receiver_queue_size(4)
            .subscribe()
            .await
            .expect("subscribe");
        for n in 0..10 {
            let message = with_timeout(consumer.receive()).await.expect("receive");
            assert_eq!(message.payload, Bytes::from(format!("m{n}")));
        }
        let flows = broker.state().flows.clone();
        assert_eq!(flows[0], 4);
        assert!(flows[1..].iter().all(|&permits| permits == 2), "{flows:?}");
    }

    #[tokio::test]
    async fn undecodable_compressed_message_is_an_error_and_the_next_one_arrives() {
        let (broker, client) = start().await;
        let mut compressed = metadata(None);
        compressed.compression = Some(pb::CompressionType::Zstd as i32);
        broker.append(TOPIC, Payload::new(compressed, b"\x28\xb5\x2f\xfd"));
        broker.append(TOPIC, Payload::new(metadata(None), b"plain"));
        let mut consumer = client
            .consumer("my-topic", "sub")
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await
            .expect("subscribe");
        let error = with_timeout(consumer.receive()).await.expect_err("compressed");
        assert!(matches!(&error, ClientError::UnsupportedCompression { compression, .. } if compression == "ZSTD"));
        assert!(error.is_message_error());
        let message = with_timeout(consumer.receive()).await.expect("receive");
        assert_eq!(message.payload, Bytes::from_static(b"plain"));
    }

    async fn fast_client(broker: &FakeBroker) -> Client {
        let config = ClientConfig {
            initial_backoff_interval: Duration::from_millis(10),
            max_backoff_interval: Duration::from_millis(50),
            ..Default::default()
        };
        Client::connect_with_config(&broker.url, config).await.expect("connect")
    }

    fn produce(broker: &FakeBroker, topic: &str, bodies: &[&str]) {
        for body in bodies {
            broker.append(topic, Payload::new(metadata(None), body.as_bytes()));
        }
    }

    #[tokio::test]
    async fn negative_ack_asks_for_a_redelivery_after_the_delay() {
        let (broker, client) = start().await;
        produce(&broker, TOPIC, &["retry me", "fine"]);
        let mut consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .negative_ack_redelivery_delay(Duration::from_millis(50))
            .subscribe()
            .await
            .expect("subscribe");
        let first = with_timeout(consumer.receive()).await.expect("receive");
        consumer.negative_acknowledge(&first).await.expect("nack");
        assert!(broker.state().redeliveries.is_empty(), "redelivered before the delay");
        let second = with_timeout(consumer.receive()).await.expect("receive");
        assert_eq!(second.payload, Bytes::from_static(b"fine"));
        consumer.ack(&second).await.expect("ack");
        let again = with_timeout(consumer.receive()).await.expect("redelivered");
        assert_eq!(again.payload, Bytes::from_static(b"retry me"));
        assert_eq!(again.redelivery_count, 1);
        let state = broker.state();
        assert_eq!(state.redeliveries.len(), 1);
        assert_eq!(state.redeliveries[0].message_ids, [command::message_id(1, 0)]);
    }

    #[tokio::test]
    async fn unacknowledged_message_is_redelivered_after_the_ack_timeout() {
        let (broker, client) = start().await;
        produce(&broker, TOPIC, &["slow"]);
        let mut consumer = client
            .consumer("my-topic", "sub")
            .initial_position(InitialPosition::Earliest)
            .ack_timeout(Duration::from_millis(100))
            .subscribe()
            .await
            .expect("subscribe");
        let first = with_timeout(consumer.receive()).await.expect("receive");
        let again = with_timeout(consumer.receive()).await.expect("redelivered after the ack timeout");
        assert_eq!((again.id, again.redelivery_count), (first.id, 1));
        consumer.ack(&again).await.expect("ack");
        // Acknowledged: no further redelivery.
        assert!(tokio::time::timeout(Duration::from_millis(300), consumer.receive()).await.is_err());
        assert_eq!(broker.state().redeliveries.len(), 1);
    }

    #[tokio::test]
    async fn message_goes_to_the_dead_letter_topic_after_max_redeliveries() {
        let (broker, client) = start().await;
        produce(&broker, TOPIC, &["poison"]);
        let mut consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .negative_ack_redelivery_delay(Duration::from_millis(10))
            .dead_letter_policy(crate::DeadLetterPolicy::new(2))
            .subscribe()
            .await
            .expect("subscribe");
        // Delivered with redelivery counts 0, 1 and 2; the nack of the last sends it away.
        for expected_count in 0..=2 {
            let message = with_timeout(consumer.receive()).await.expect("receive");
            assert_eq!(message.redelivery_count, expected_count);
            consumer.negative_acknowledge(&message).await.expect("nack");
        }
        assert!(tokio::time::timeout(Duration::from_millis(200), consumer.receive()).await.is_err());
        let dlq = "persistent://public/default/my-topic-sub-DLQ";
        broker.eventually("the dead letter", |state| state.entries.get(dlq).is_some_and(|e| e.len() == 1)).await;
        let state = broker.state();
        let letter = &state.entries[dlq][0];
        assert_eq!(letter.body(), Bytes::from_static(b"poison"));
        let properties: BTreeMap<_, _> =
            letter.metadata().properties.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
        assert_eq!(properties.get("REAL_TOPIC"), Some(&TOPIC));
        assert_eq!(properties.get("ORIGIN_MESSAGE_ID"), Some(&"1:0:-1:-1"));
        assert_eq!(state.redeliveries.len(), 2);
        let acked: Vec<u64> = state.acks.iter().flat_map(|ack| ack.message_id.iter().map(|id| id.entry_id)).collect();
        assert_eq!(acked, [0]);
    }

    #[tokio::test]
    async fn nack_redelivery_is_sent_by_the_timer_without_further_calls() {
        let (broker, client) = start().await;
        produce(&broker, TOPIC, &["retry me"]);
        let mut consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .negative_ack_redelivery_delay(Duration::from_millis(100))
            .subscribe()
            .await
            .expect("subscribe");
        let first = with_timeout(consumer.receive()).await.expect("receive");
        consumer.negative_acknowledge(&first).await.expect("nack");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(broker.state().redeliveries.is_empty(), "redelivered before the delay");
        // No call on the consumer from here on.
        broker.eventually("the nack redelivery", |state| !state.redeliveries.is_empty()).await;
        let state = broker.state();
        assert_eq!(state.redeliveries.len(), 1);
        assert_eq!(state.redeliveries[0].message_ids, [command::message_id(1, 0)]);
        assert_eq!(state.redeliveries[0].consumer_id, state.subscribes[0].consumer_id);
    }

    #[tokio::test]
    async fn ack_timeout_redelivery_is_sent_by_the_timer_without_further_calls() {
        let (broker, client) = start().await;
        produce(&broker, TOPIC, &["slow"]);
        let mut consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .ack_timeout(Duration::from_millis(100))
            .subscribe()
            .await
            .expect("subscribe");
        let _first = with_timeout(consumer.receive()).await.expect("receive");
        // The worker is busy: no ack, no call.
        broker.eventually("the ack-timeout redelivery", |state| !state.redeliveries.is_empty()).await;
        assert_eq!(broker.state().redeliveries[0].message_ids, [command::message_id(1, 0)]);
        drop(consumer);
    }

    #[tokio::test]
    async fn acknowledged_messages_are_not_redelivered_by_the_timer() {
        let (broker, client) = start().await;
        produce(&broker, TOPIC, &["acked", "left", "nacked then acked"]);
        let mut consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .ack_timeout(Duration::from_millis(100))
            .negative_ack_redelivery_delay(Duration::from_millis(50))
            .subscribe()
            .await
            .expect("subscribe");
        let acked = with_timeout(consumer.receive()).await.expect("receive");
        let _left = with_timeout(consumer.receive()).await.expect("receive");
        let third = with_timeout(consumer.receive()).await.expect("receive");
        consumer.negative_acknowledge(&third).await.expect("nack");
        consumer.ack(&acked).await.expect("ack");
        consumer.ack(&third).await.expect("ack");
        broker.eventually("the ack-timeout redelivery", |state| !state.redeliveries.is_empty()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let state = broker.state();
        let redelivered: Vec<u64> = state
            .redeliveries
            .iter()
            .flat_map(|redeliver| redeliver.message_ids.iter().map(|id| id.entry_id))
            .collect();
        assert_eq!(redelivered, [1], "only the unacknowledged message is redelivered");
    }

    #[tokio::test]
    async fn timer_sends_a_message_at_max_redeliveries_to_the_dead_letter_topic() {
        let (broker, client) = start().await;
        produce(&broker, TOPIC, &["poison"]);
        let mut consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .ack_timeout(Duration::from_millis(100))
            .dead_letter_policy(crate::DeadLetterPolicy::new(1))
            .subscribe()
            .await
            .expect("subscribe");
        let first = with_timeout(consumer.receive()).await.expect("receive");
        let again = with_timeout(consumer.receive()).await.expect("redelivered after the ack timeout");
        assert_eq!((again.id, again.redelivery_count), (first.id, 1));
        // At max redeliveries; no more calls: the timer alone dead-letters it.
        let dlq = "persistent://public/default/my-topic-sub-DLQ";
        broker.eventually("the dead letter", |state| state.entries.get(dlq).is_some_and(|e| e.len() == 1)).await;
        broker.eventually("the ack of the original", |state| !state.acks.is_empty()).await;
        let state = broker.state();
        assert_eq!(state.entries[dlq][0].body(), Bytes::from_static(b"poison"));
        assert_eq!(state.redeliveries.len(), 1);
        let acked: Vec<u64> = state.acks.iter().flat_map(|ack| ack.message_id.iter().map(|id| id.entry_id)).collect();
        assert_eq!(acked, [0]);
    }

    #[tokio::test]
    async fn timer_redelivers_on_the_consumer_id_of_the_current_connection() {
        let broker = FakeBroker::start(Options::default()).await;
        let client = fast_client(&broker).await;
        produce(&broker, TOPIC, &["m"]);
        let mut consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .negative_ack_redelivery_delay(Duration::from_millis(50))
            .subscribe()
            .await
            .expect("subscribe");
        let _first = with_timeout(consumer.receive()).await.expect("receive");
        broker.drop_connections();
        broker.eventually("the connection dropped", |state| state.dropped == 1).await;
        // The fake broker forgets subscriptions with their connection: Earliest replays.
        let replayed = with_timeout(consumer.receive()).await.expect("receive after the reconnect");
        consumer.negative_acknowledge(&replayed).await.expect("nack");
        broker.eventually("the nack redelivery", |state| !state.redeliveries.is_empty()).await;
        let state = broker.state();
        assert_eq!(state.subscribes.len(), 2);
        // Only the new connection is alive: the redelivery reached the broker through it.
        assert_eq!(state.redeliveries[0].consumer_id, state.subscribes[1].consumer_id);
    }

    #[tokio::test]
    async fn reconsume_later_produces_to_the_retry_topic_with_a_delay_and_acks() {
        let (broker, client) = start().await;
        produce(&broker, TOPIC, &["later"]);
        let mut consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .enable_retry(true)
            .subscribe()
            .await
            .expect("subscribe");
        let retry = "persistent://public/default/my-topic-sub-RETRY";
        assert_eq!(consumer.topics(), [TOPIC, retry]);
        let message = with_timeout(consumer.receive()).await.expect("receive");
        let before = magnetar_proto::clock::now_ms() as i64;
        consumer.reconsume_later(&message, Duration::from_secs(10)).await.expect("reconsume later");
        broker.eventually("the original acked", |state| state.acks.len() == 1).await;
        {
            let state = broker.state();
            let retried = &state.entries[retry][0];
            let deliver_at = retried.metadata().deliver_at_time.expect("deliver_at_time");
            assert!(deliver_at >= before + 10_000 && deliver_at < before + 20_000, "{deliver_at}");
            assert_eq!(state.acks.len(), 1);
        }
        // The fake broker does not delay: the retry arrives through the retry topic.
        let retried = with_timeout(consumer.receive()).await.expect("retried message");
        assert_eq!(retried.topic, retry);
        assert_eq!(retried.properties.get("RECONSUMETIMES").map(String::as_str), Some("1"));
        assert_eq!(retried.properties.get("ORIGIN_MESSAGE_ID").map(String::as_str), Some("1:0:-1:-1"));
        assert_eq!(retried.properties.get("REAL_TOPIC").map(String::as_str), Some(TOPIC));
        consumer.ack(&retried).await.expect("ack the retried message");
        broker.eventually("the retried message acked", |state| state.acks.len() == 2).await;
        let state = broker.state();
        assert_eq!(state.acks.len(), 2);
        assert_ne!(state.acks[0].consumer_id, state.acks[1].consumer_id, "acks must go to each topic's consumer");
    }

    #[tokio::test]
    async fn message_retried_too_often_goes_to_the_dead_letter_topic() {
        let (broker, client) = start().await;
        let mut retried = metadata(None);
        retried.properties = vec![
            pb::KeyValue { key: "RECONSUMETIMES".into(), value: "3".into() },
            pb::KeyValue { key: "ORIGIN_MESSAGE_ID".into(), value: "7:7:-1:-1".into() },
        ];
        broker.append(TOPIC, Payload::new(retried, b"tired"));
        let mut consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .enable_retry(true)
            .dead_letter_policy(crate::DeadLetterPolicy::new(3))
            .subscribe()
            .await
            .expect("subscribe");
        let message = with_timeout(consumer.receive()).await.expect("receive");
        consumer.reconsume_later(&message, Duration::from_secs(1)).await.expect("reconsume later");
        broker.eventually("the original acked", |state| state.acks.len() == 1).await;
        let state = broker.state();
        assert!(!state.entries.contains_key("persistent://public/default/my-topic-sub-RETRY"));
        let letter = &state.entries["persistent://public/default/my-topic-sub-DLQ"][0];
        assert_eq!(letter.body(), Bytes::from_static(b"tired"));
        // The first origin is kept through retries.
        assert!(letter.metadata().properties.iter().any(|p| p.key == "ORIGIN_MESSAGE_ID" && p.value == "7:7:-1:-1"));
    }

    #[tokio::test]
    async fn consumer_over_several_topics_and_partitions_receives_from_all() {
        let (broker, client) = start().await;
        produce(&broker, TOPIC, &["from a"]);
        for index in 0..4 {
            produce(&broker, &format!("persistent://public/default/partitioned-t-partition-{index}"), &["p"]);
        }
        let mut consumer = client
            .consumer("my-topic", "sub")
            .topic("partitioned-t")
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await
            .expect("subscribe");
        assert_eq!(consumer.topics().len(), 5);
        let mut partitions = Vec::new();
        for _ in 0..5 {
            let message = with_timeout(consumer.receive()).await.expect("receive");
            consumer.ack(&message).await.expect("ack");
            partitions.push(message.id.partition);
        }
        partitions.sort();
        assert_eq!(partitions, [-1, 0, 1, 2, 3]);
        broker.eventually("five acks", |state| state.acks.len() == 5).await;
        let consumers: std::collections::HashSet<u64> = broker.state().acks.iter().map(|a| a.consumer_id).collect();
        assert_eq!(consumers.len(), 5);
    }

    #[tokio::test]
    async fn key_shared_subscribes_with_auto_split() {
        let (broker, client) = start().await;
        let _consumer = client
            .consumer("my-topic", "sub")
            .subscription_type(SubscriptionType::KeyShared)
            .subscribe()
            .await
            .expect("subscribe");
        let state = broker.state();
        let meta = state.subscribes[0].key_shared_meta.as_ref().expect("KeySharedMeta");
        assert_eq!(meta.key_shared_mode, pb::KeySharedMode::AutoSplit as i32);
        assert_eq!(state.subscribes[0].sub_type, pb::command_subscribe::SubType::KeyShared as i32);
    }

    #[tokio::test]
    async fn consumer_subscribes_again_after_losing_the_broker() {
        let broker = FakeBroker::start(Options::default()).await;
        let client = fast_client(&broker).await;
        produce(&broker, TOPIC, &["before"]);
        let mut consumer = client
            .consumer("my-topic", "sub")
            .consumer_name("steady")
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await
            .expect("subscribe");
        let first = with_timeout(consumer.receive()).await.expect("receive");
        assert_eq!(first.payload, Bytes::from_static(b"before"));
        broker.drop_connections();
        broker.eventually("the connection dropped", |state| state.dropped == 1).await;
        produce(&broker, TOPIC, &["after"]);
        // The fake broker forgets subscriptions with their connection: Earliest replays.
        let mut seen = Vec::new();
        while seen.last() != Some(&Bytes::from_static(b"after")) {
            seen.push(with_timeout(consumer.receive()).await.expect("receive after the reconnect").payload);
        }
        let state = broker.state();
        assert_eq!(state.subscribes.len(), 2);
        assert_eq!(state.subscribes[1].consumer_name.as_deref(), Some("steady"));
        assert!(state.flows.len() >= 2, "no permits after the reconnect");
    }

    #[tokio::test]
    async fn reader_starts_where_asked_and_knows_when_it_is_done() {
        let (broker, client) = start().await;
        produce(&broker, TOPIC, &["m0", "m1", "m2"]);
        let mut earliest =
            client.reader("my-topic").start_message_id(crate::StartMessageId::Earliest).create().await.expect("reader");
        let mut bodies = Vec::new();
        while earliest.has_message_available().await.expect("has message") {
            bodies.push(with_timeout(earliest.receive()).await.expect("receive").payload);
        }
        assert_eq!(bodies, [Bytes::from_static(b"m0"), Bytes::from_static(b"m1"), Bytes::from_static(b"m2")]);

        let start = crate::StartMessageId::Id(MessageId::entry(1, 1));
        let mut after = client.reader("my-topic").start_message_id(start).create().await.expect("reader");
        assert_eq!(with_timeout(after.receive()).await.expect("receive").payload, Bytes::from_static(b"m2"));
        let mut at = client.reader("my-topic").start_message_id(start).start_inclusive(true).create().await.expect("r");
        assert_eq!(with_timeout(at.receive()).await.expect("receive").payload, Bytes::from_static(b"m1"));
        let mut latest = client.reader("my-topic").create().await.expect("reader");
        assert!(!latest.has_message_available().await.expect("has message"));
        latest.seek(MessageId::entry(1, 0)).await.expect("seek");
        assert_eq!(with_timeout(latest.receive()).await.expect("receive").payload, Bytes::from_static(b"m0"));
        drop(latest);
        let mut consumer = client
            .consumer("my-topic", "durable")
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await
            .expect("subscribe");
        assert_eq!(with_timeout(consumer.receive()).await.expect("receive").payload, Bytes::from_static(b"m0"));
        consumer.seek(MessageId::entry(1, 2)).await.expect("seek");
        assert_eq!(with_timeout(consumer.receive()).await.expect("receive").payload, Bytes::from_static(b"m2"));
        let state = broker.state();
        let durable: Vec<Option<bool>> = state.subscribes.iter().map(|subscribe| subscribe.durable).collect();
        // Each seek subscribes again, as after Pulsar's broker disconnects the consumer.
        assert_eq!(durable, [Some(false), Some(false), Some(false), Some(false), Some(false), None, None]);
    }

    #[tokio::test]
    async fn json_messages_round_trip() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Order {
            id: u32,
            item: String,
        }
        let (_broker, client) = start().await;
        let mut producer = client.producer("my-topic").create().await.expect("producer");
        let order = Order { id: 7, item: "lamp".into() };
        producer.send_json(&order).await.expect("send");
        let mut consumer = client
            .consumer("my-topic", "sub")
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await
            .expect("subscribe");
        let (_, received): (_, Order) = with_timeout(consumer.receive_json()).await.expect("receive");
        assert_eq!(received, order);
        producer.send("not json").await.expect("send");
        assert!(matches!(with_timeout(consumer.receive_json::<Order>()).await, Err(ClientError::Json { .. })));
    }

    #[tokio::test]
    async fn failed_lookup_carries_the_server_error() {
        let (_broker, client) = start().await;
        let error = client.producer("missing-topic").create().await.expect_err("lookup fails");
        assert_eq!(error.server_code(), Some(ServerError::TopicNotFound));
        assert!(error.to_string().contains("no such topic"));
    }

    #[tokio::test]
    async fn broker_error_on_producer_is_reported() {
        let (_broker, client) = start().await;
        let error = client.producer("my-topic").name("busy").create().await.expect_err("busy");
        assert_eq!(error.server_code(), Some(ServerError::ProducerBusy));
    }

    #[tokio::test]
    async fn partitioned_producer_routes_keys_by_murmur3_and_others_round_robin() {
        let (broker, client) = start().await;
        let mut producer = client.producer("partitioned-topic").create().await.expect("producer");
        assert_eq!(producer.partitions(), 4);
        let keyed = producer.send_with(ProducerMessage::new("k").key("customer-7")).await.expect("send");
        assert_eq!(keyed.partition, crate::partition_for_key(b"customer-7", 4) as i32);
        let mut unkeyed = Vec::new();
        for n in 0..8 {
            unkeyed.push(producer.send(format!("m{n}")).await.expect("send").partition);
        }
        // Round robin: consecutive partitions, each used twice in 8 messages.
        for pair in unkeyed.windows(2) {
            assert_eq!(pair[1], (pair[0] + 1) % 4, "{unkeyed:?}");
        }
        let state = broker.state();
        let key_topic = format!("persistent://public/default/partitioned-topic-partition-{}", keyed.partition);
        assert_eq!(state.entries[&key_topic][0].metadata().partition_key.as_deref(), Some("customer-7"));
        for index in 0..4 {
            let topic = format!("persistent://public/default/partitioned-topic-partition-{index}");
            assert!(state.entries[&topic].len() >= 2, "partition {index} got too few messages");
        }
    }

    #[tokio::test]
    async fn single_routing_mode_uses_one_partition() {
        let (_broker, client) = start().await;
        let mut producer =
            client.producer("partitioned-single").routing_mode(crate::RoutingMode::Single).create().await.expect("p");
        let first = producer.send("a").await.expect("send").partition;
        for _ in 0..5 {
            assert_eq!(producer.send("b").await.expect("send").partition, first);
        }
    }

    #[tokio::test]
    async fn batching_producer_sends_full_batches_with_per_message_ids() {
        let (broker, client) = start().await;
        let mut producer = client
            .producer("batched")
            .batching_max_messages(4)
            .batching_max_publish_delay(Duration::from_secs(60))
            .create()
            .await
            .expect("producer");
        let mut receipts = Vec::new();
        for n in 0..8 {
            receipts.push(producer.send_async(ProducerMessage::new(format!("m{n}"))).await.expect("queue"));
        }
        let mut ids = Vec::new();
        for receipt in receipts {
            ids.push(with_timeout(receipt).await.expect("receipt"));
        }
        let expected: Vec<String> = (0..8).map(|n| format!("1:{}:-1:{}", n / 4, n % 4)).collect();
        assert_eq!(ids.iter().map(ToString::to_string).collect::<Vec<_>>(), expected);
        let state = broker.state();
        let entries = &state.entries["persistent://public/default/batched"];
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].metadata().sequence_id, 4);
        assert_eq!(entries[1].metadata().highest_sequence_id, Some(7));
        assert_eq!(entries[1].metadata().num_messages_in_batch, Some(4));
    }

    #[tokio::test]
    async fn batch_is_sent_after_the_publish_delay_and_by_size() {
        let (broker, client) = start().await;
        let mut producer = client
            .producer("delayed-batch")
            .batching_max_messages(1000)
            .batching_max_bytes(1000)
            .batching_max_publish_delay(Duration::from_millis(20))
            .create()
            .await
            .expect("producer");
        // Two messages, well below the count: the delay sends them as one entry.
        let first = producer.send_async(ProducerMessage::new("a")).await.expect("queue");
        let second = producer.send_async(ProducerMessage::new("b")).await.expect("queue");
        with_timeout(first).await.expect("receipt");
        with_timeout(second).await.expect("receipt");
        // 600 + 600 bytes exceed max bytes: the second message starts a new batch.
        let big = producer.send_async(ProducerMessage::new(vec![1u8; 600])).await.expect("queue");
        let bigger = producer.send_async(ProducerMessage::new(vec![2u8; 600])).await.expect("queue");
        let (big, bigger) = (with_timeout(big).await.expect("r"), with_timeout(bigger).await.expect("r"));
        assert_ne!(big.entry_id, bigger.entry_id);
        let state = broker.state();
        let entries = &state.entries["persistent://public/default/delayed-batch"];
        assert_eq!(entries[0].metadata().num_messages_in_batch, Some(2));
        assert_eq!(entries.len(), 3);
    }

    #[tokio::test]
    async fn compressed_batches_round_trip_through_a_consumer() {
        for codec in [
            crate::CompressionType::Lz4,
            crate::CompressionType::Zstd,
            crate::CompressionType::Zlib,
            crate::CompressionType::Snappy,
        ] {
            let (broker, client) = start().await;
            let mut producer = client
                .producer("compressed")
                .compression(codec)
                .batching_max_messages(10)
                .batching_max_publish_delay(Duration::from_millis(5))
                .create()
                .await
                .expect("producer");
            let body = "compress me ".repeat(100);
            let mut receipts = Vec::new();
            for n in 0..10 {
                let message = ProducerMessage::new(format!("{n}:{body}")).key(format!("k{n}"));
                receipts.push(producer.send_async(message).await.expect("queue"));
            }
            for receipt in receipts {
                with_timeout(receipt).await.expect("receipt");
            }
            {
                let state = broker.state();
                let entry = &state.entries["persistent://public/default/compressed"][0];
                assert_eq!(entry.metadata().compression, codec.to_wire());
                assert!(entry.body().len() < body.len(), "{codec}: the batch was not compressed");
            }
            let mut consumer = client
                .consumer("compressed", "sub")
                .initial_position(InitialPosition::Earliest)
                .subscribe()
                .await
                .expect("subscribe");
            for n in 0..10 {
                let message = with_timeout(consumer.receive()).await.expect("receive");
                assert_eq!(message.payload, Bytes::from(format!("{n}:{body}")));
                assert_eq!(message.key, Some(format!("k{n}")));
            }
        }
    }

    #[tokio::test]
    async fn producer_reconnects_and_resends_pending_messages_with_their_sequence_ids() {
        let broker = FakeBroker::start(Options::default()).await;
        let config = ClientConfig {
            initial_backoff_interval: Duration::from_millis(10),
            max_backoff_interval: Duration::from_millis(50),
            ..Default::default()
        };
        let client = Client::connect_with_config(&broker.url, config).await.expect("connect");
        let mut producer = client.producer("resent").name("steady").create().await.expect("producer");
        producer.send("stored").await.expect("send");
        broker.state().hold_receipts = true;
        let mut receipts = Vec::new();
        for n in 1..=3 {
            receipts.push(producer.send_async(ProducerMessage::new(format!("m{n}"))).await.expect("queue"));
        }
        broker.eventually("three held sends", |state| state.sends.len() == 4).await;
        broker.state().hold_receipts = false;
        broker.drop_connections();
        for receipt in receipts {
            with_timeout(receipt).await.expect("receipt after the reconnect");
        }
        let state = broker.state();
        assert!(state.connections >= 2, "the producer did not reconnect");
        let resent: Vec<(String, u64)> =
            state.sends[4..].iter().map(|(_, name, sequence_id)| (name.clone(), *sequence_id)).collect();
        assert_eq!(resent, [("steady".to_owned(), 1), ("steady".to_owned(), 2), ("steady".to_owned(), 3)]);
    }

    #[tokio::test]
    async fn send_times_out_when_the_broker_drops_every_send() {
        let broker = FakeBroker::start(Options::default()).await;
        let config = ClientConfig {
            operation_timeout: Duration::from_millis(300),
            initial_backoff_interval: Duration::from_millis(10),
            max_backoff_interval: Duration::from_millis(50),
            ..Default::default()
        };
        let client = Client::connect_with_config(&broker.url, config).await.expect("connect");
        let mut producer = client.producer("blackhole-topic").create().await.expect("producer");
        let error = with_timeout(producer.send("lost")).await.expect_err("never stored");
        assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
        assert!(broker.state().connections >= 2, "the producer did not try again");
    }

    #[tokio::test]
    async fn lookup_follows_a_redirect_to_the_owning_broker() {
        let owner = FakeBroker::start(Options::default()).await;
        let front = FakeBroker::start(Options { redirect_to: Some(owner.url.clone()), ..Default::default() }).await;
        let client = Client::connect(&front.url).await.expect("connect");
        let mut producer = client.producer("elsewhere-topic").create().await.expect("producer");
        producer.send("moved").await.expect("send");
        assert_eq!(owner.state().entries["persistent://public/default/elsewhere-topic"].len(), 1);
        assert!(front.state().entries.is_empty());
        assert_eq!(client.lookup(producer.topic()).await.expect("lookup").to_string(), owner.url);
    }

    #[tokio::test]
    async fn producers_and_consumers_on_one_broker_share_a_connection() {
        let (broker, client) = start().await;
        let _first = client.producer("a").create().await.expect("producer");
        let _second = client.producer("b").create().await.expect("producer");
        let _consumer = client.consumer("c", "sub").subscribe().await.expect("subscribe");
        assert_eq!(broker.state().connections, 1);
    }

    #[tokio::test]
    async fn send_error_carries_the_server_error() {
        let (_broker, client) = start().await;
        let mut producer = client.producer("rejected-topic").create().await.expect("producer");
        let error = with_timeout(producer.send("no")).await.expect_err("rejected");
        assert_eq!(error.server_code(), Some(ServerError::PersistenceError));
    }

    #[tokio::test]
    async fn silent_broker_is_detected_by_keepalive_and_pending_requests_fail() {
        let broker = FakeBroker::start(Options { mute_after_connect: true, ..Default::default() }).await;
        let config = ClientConfig {
            keepalive_interval: Duration::from_millis(50),
            operation_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let client = Client::connect_with_config(&broker.url, config).await.expect("connect");
        let error = with_timeout(client.producer("my-topic").create()).await.expect_err("no answer");
        // Creation tried again on fresh connections until the operation timeout.
        assert!(broker.state().connections >= 2);
        assert!(matches!(&error, ClientError::Disconnected { reason, .. } if reason.contains("keepalive")), "{error}");
    }

    #[tokio::test]
    async fn close_tells_the_broker() {
        let (broker, client) = start().await;
        let producer = client.producer("my-topic").create().await.expect("producer");
        let consumer = client.consumer("my-topic", "sub").subscribe().await.expect("subscribe");
        producer.close().await.expect("close producer");
        consumer.close().await.expect("close consumer");
        let state = broker.state();
        assert_eq!((state.closed_producers, state.closed_consumers), (1, 1));
    }

    #[tokio::test]
    async fn dropped_producer_is_closed_at_the_broker() {
        let (broker, client) = start().await;
        drop(client.producer("my-topic").create().await.expect("producer"));
        broker.eventually("the producer closed", |state| state.closed_producers == 1).await;
    }

    #[tokio::test]
    async fn receipt_arrives_after_its_producer_was_dropped() {
        let (broker, client) = start().await;
        let mut producer = client.producer("my-topic").create().await.expect("producer");
        let receipt = producer.send_async(ProducerMessage::new("last words")).await.expect("queue");
        drop(producer);
        assert_eq!(with_timeout(receipt).await.expect("receipt"), MessageId::entry(1, 0));
        broker.eventually("the producer closed", |state| state.closed_producers == 1).await;
    }

    #[tokio::test]
    async fn too_large_message_is_refused_before_sending() {
        let (_broker, client) = start().await;
        let mut producer = client.producer("my-topic").create().await.expect("producer");
        let error = producer.send(vec![0u8; 5 * 1024 * 1024 + 1]).await.expect_err("too large");
        assert!(matches!(error, ClientError::MessageTooLarge { .. }));
    }

    #[tokio::test]
    async fn unreachable_service_url_fails_to_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let error = Client::connect(&format!("pulsar://{address}")).await.expect_err("nothing listens");
        assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    }
}
