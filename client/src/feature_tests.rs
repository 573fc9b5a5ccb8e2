//! End-to-end tests of the client's Pulsar features beyond plain produce and consume, against
//! the fake broker (fake_broker.rs): chunking, compression codecs, producer access modes,
//! custom routers, interceptors, ack grouping, batch receive, negative-ack backoff, readers
//! over partitions, pattern subscriptions and table views.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use magnetar_proto::pulsar as pb;
use magnetar_proto::Payload;
use parking_lot::Mutex;

use crate::fake_broker::{FakeBroker, Options};
use crate::{
    Client, ClientConfig, ClientError, InitialPosition, MessageId, MessageRouter, ProducerAccessMode,
    ProducerInterceptor, ProducerMessage, TopicName,
};

const TOPIC: &str = "persistent://public/default/my-topic";

async fn start(options: Options) -> (FakeBroker, Client) {
    let broker = FakeBroker::start(options).await;
    let client = fast_client(&broker, Duration::from_secs(5)).await;
    (broker, client)
}

async fn fast_client(broker: &FakeBroker, operation_timeout: Duration) -> Client {
    let config = ClientConfig {
        operation_timeout,
        initial_backoff_interval: Duration::from_millis(10),
        max_backoff_interval: Duration::from_millis(50),
        ..Default::default()
    };
    Client::connect_with_config(&broker.url, config).await.expect("connect")
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future).await.expect("timed out")
}

fn payload_of(size: usize) -> Bytes {
    (0..size).map(|n| (n % 251) as u8).collect::<Vec<u8>>().into()
}

// ---- chunking ----

#[tokio::test]
async fn large_message_is_sent_in_chunks_and_received_as_one() {
    let (broker, client) = start(Options::default()).await;
    let mut producer = client
        .producer("my-topic")
        .name("chunker")
        .chunking(true)
        .chunk_max_message_size(1000)
        .create()
        .await
        .expect("producer");
    let body = payload_of(4500);
    let receipt =
        producer.send_async(ProducerMessage::new(body.clone()).key("k").property("p", "v")).await.expect("send");
    let sent = within(receipt.sent_id()).await.expect("stored");
    let small = producer.send("small").await.expect("send small");

    let chunks: Vec<Payload> = broker.state().entries[TOPIC].clone();
    assert_eq!(chunks.len(), 6, "5 chunks and the small message");
    for (index, chunk) in chunks[..5].iter().enumerate() {
        let metadata = chunk.metadata();
        assert_eq!(metadata.uuid.as_deref(), Some("chunker-0"));
        assert_eq!(metadata.chunk_id, Some(index as i32));
        assert_eq!(metadata.num_chunks_from_msg, Some(5));
        assert_eq!(metadata.total_chunk_msg_size, Some(4500));
        assert_eq!(metadata.sequence_id, 0);
        assert!(chunk.body().len() + prost::Message::encoded_len(metadata) <= 1000);
    }
    assert_eq!(chunks[5].metadata().num_chunks_from_msg, None);
    // The id is the last chunk's; the first chunk's comes with it.
    assert_eq!(sent.id, MessageId::entry(1, 4));
    assert_eq!(sent.first_chunk_id, Some(MessageId::entry(1, 0)));
    assert_eq!(small, MessageId::entry(1, 5));
    let chunk_sends = broker.state().sends.iter().filter(|(_, _, sequence_id)| *sequence_id == 0).count();
    assert_eq!(chunk_sends, 5, "every chunk goes out with the message's sequence id");

    let mut consumer =
        client.consumer("my-topic", "sub").initial_position(InitialPosition::Earliest).subscribe().await.expect("sub");
    let message = within(consumer.receive()).await.expect("receive");
    assert_eq!(message.payload, body);
    assert_eq!(message.key.as_deref(), Some("k"));
    assert_eq!(message.properties.get("p").map(String::as_str), Some("v"));
    assert_eq!(message.id, MessageId::entry(1, 4));
    assert_eq!(message.chunk_ids.len(), 5);
    assert_eq!(message.first_chunk_id(), Some(MessageId::entry(1, 0)));
    consumer.ack(&message).await.expect("ack");
    let next = within(consumer.receive()).await.expect("receive");
    assert_eq!(next.payload, Bytes::from_static(b"small"));
    broker.eventually("the chunked message's ack", |state| !state.acks.is_empty()).await;
    let acked: Vec<u64> = broker.state().acks[0].message_id.iter().map(|id| id.entry_id).collect();
    assert_eq!(acked, [0, 1, 2, 3, 4], "acking the message acks every chunk");
}

#[tokio::test]
async fn chunking_needs_batching_off_and_messages_over_the_limit_fail_without_it() {
    let (_broker, client) = start(Options { max_message_size: Some(2000), ..Default::default() }).await;
    let refused = client.producer("my-topic").chunking(true).batching(true).create().await;
    assert!(matches!(refused, Err(ClientError::InvalidConfig { setting: "chunking", .. })));
    let mut plain = client.producer("my-topic").create().await.expect("producer");
    let too_large = plain.send(payload_of(3000)).await;
    assert!(matches!(too_large, Err(ClientError::MessageTooLarge { size: 3000, max: 2000 })));
    // With chunking, the broker's own limit decides the chunk size.
    let mut chunking = client
        .producer("my-topic")
        .chunking(true)
        .compression(crate::CompressionType::Zlib)
        .create()
        .await
        .expect("producer");
    let random: Vec<u8> = (0..6000u32).map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    within(chunking.send(random)).await.expect("chunked");
}

fn chunk(uuid: &str, chunk_id: i32, num_chunks: i32, total: i32, body: &[u8]) -> Payload {
    let metadata = pb::MessageMetadata {
        producer_name: "injected".into(),
        publish_time: 1,
        uuid: Some(uuid.into()),
        chunk_id: Some(chunk_id),
        num_chunks_from_msg: Some(num_chunks),
        total_chunk_msg_size: Some(total),
        ..Default::default()
    };
    Payload::new(metadata, body)
}

#[tokio::test]
async fn interleaved_chunks_are_put_together_and_incomplete_ones_expire_and_are_acked() {
    let (broker, client) = start(Options::default()).await;
    broker.append(TOPIC, chunk("a", 0, 2, 6, b"aaa"));
    broker.append(TOPIC, chunk("b", 0, 2, 4, b"bb"));
    broker.append(TOPIC, chunk("lost", 0, 3, 9, b"xxx"));
    broker.append(TOPIC, chunk("b", 1, 2, 4, b"BB"));
    broker.append(TOPIC, chunk("a", 1, 2, 6, b"AAA"));
    let mut consumer = client
        .consumer("my-topic", "sub")
        .initial_position(InitialPosition::Earliest)
        .expire_time_of_incomplete_chunked_message(Duration::from_millis(200))
        .subscribe()
        .await
        .expect("subscribe");
    let first = within(consumer.receive()).await.expect("b");
    assert_eq!(first.payload, Bytes::from_static(b"bbBB"));
    assert_eq!(first.chunk_ids, [MessageId::entry(1, 1), MessageId::entry(1, 3)]);
    let second = within(consumer.receive()).await.expect("a");
    assert_eq!(second.payload, Bytes::from_static(b"aaaAAA"));
    // The lost message's only chunk expires while the consumer waits, and is acknowledged.
    let waiting = tokio::time::timeout(Duration::from_millis(600), consumer.receive()).await;
    assert!(waiting.is_err(), "nothing else to receive");
    broker
        .eventually("the expired chunk's ack", |state| {
            state.acks.iter().any(|ack| ack.message_id.iter().any(|id| id.entry_id == 2))
        })
        .await;
}

#[tokio::test]
async fn impossible_chunk_is_an_error_for_that_message_only() {
    let (broker, client) = start(Options::default()).await;
    broker.append(TOPIC, chunk("evil", 0, i32::MAX, 10, b"x"));
    broker.append(TOPIC, chunk("evil2", 0, 2, i32::MAX, b"x"));
    broker
        .append(TOPIC, Payload::new(pb::MessageMetadata { producer_name: "p".into(), ..Default::default() }, b"fine"));
    let mut consumer =
        client.consumer("my-topic", "sub").initial_position(InitialPosition::Earliest).subscribe().await.expect("sub");
    for _ in 0..2 {
        let error = within(consumer.receive()).await.expect_err("malformed");
        assert!(error.is_message_error(), "{error}");
    }
    assert_eq!(within(consumer.receive()).await.expect("next").payload, Bytes::from_static(b"fine"));
}

// ---- null values ----

#[tokio::test]
async fn tombstones_carry_null_value_alone_and_in_batches() {
    let (broker, client) = start(Options::default()).await;
    let mut producer = client.producer("my-topic").create().await.expect("producer");
    producer.send_with(ProducerMessage::tombstone("gone")).await.expect("tombstone");
    producer
        .send_batch_async(vec![ProducerMessage::new("v").key("k"), ProducerMessage::tombstone("k")])
        .await
        .expect("batch");
    producer.flush().await.expect("flush");
    assert_eq!(broker.state().entries[TOPIC][0].metadata().null_value, Some(true));
    let mut consumer =
        client.consumer("my-topic", "sub").initial_position(InitialPosition::Earliest).subscribe().await.expect("sub");
    let tombstone = within(consumer.receive()).await.expect("receive");
    assert!(tombstone.is_null_value() && tombstone.payload.is_empty());
    assert_eq!(tombstone.key.as_deref(), Some("gone"));
    let value = within(consumer.receive()).await.expect("receive");
    assert!(!value.is_null_value());
    let batched_tombstone = within(consumer.receive()).await.expect("receive");
    assert!(batched_tombstone.is_null_value());
}

// ---- access modes ----

#[tokio::test]
async fn access_mode_goes_in_producer_and_wait_for_exclusive_outlasts_the_operation_timeout() {
    let broker = FakeBroker::start(Options { exclusive_wait: Duration::from_millis(1500), ..Default::default() }).await;
    let client = fast_client(&broker, Duration::from_millis(500)).await;
    let shared = client.producer("my-topic").create().await.expect("shared");
    let exclusive = client.producer("my-topic").access_mode(ProducerAccessMode::Exclusive).create().await.expect("x");
    let fencing =
        client.producer("my-topic").access_mode(ProducerAccessMode::ExclusiveWithFencing).create().await.expect("f");
    // Queued by the broker, then ready 1.5 s later: longer than the 0.5 s operation timeout.
    let mut waiting = within(client.producer("my-topic").access_mode(ProducerAccessMode::WaitForExclusive).create())
        .await
        .expect("ready after the wait");
    within(waiting.send("mine")).await.expect("send once ready");
    let modes: Vec<Option<i32>> = broker.state().producer_commands.iter().map(|p| p.producer_access_mode).collect();
    assert_eq!(
        modes,
        [
            None,
            Some(pb::ProducerAccessMode::Exclusive as i32),
            Some(pb::ProducerAccessMode::ExclusiveWithFencing as i32),
            Some(pb::ProducerAccessMode::WaitForExclusive as i32),
        ]
    );
    drop((shared, exclusive, fencing));
}

// ---- custom router ----

#[derive(Debug)]
struct ByProperty;

impl MessageRouter for ByProperty {
    fn choose_partition(&self, message: &ProducerMessage, partitions: u32) -> u32 {
        message.properties().get("to").and_then(|to| to.parse().ok()).unwrap_or(partitions)
    }
}

#[tokio::test]
async fn custom_router_picks_every_partition_and_an_impossible_choice_fails_the_send() {
    let (broker, client) = start(Options::default()).await;
    let mut producer =
        client.producer("partitioned-routed").message_router(ByProperty).create().await.expect("producer");
    for to in [3, 1, 1, 0] {
        // Keys do not matter to a custom router.
        let message = ProducerMessage::new(format!("to {to}")).property("to", to.to_string()).key("some-key");
        let id = producer.send_with(message).await.expect("send");
        assert_eq!(id.partition, to);
    }
    let error = producer.send("nowhere").await.expect_err("no such partition");
    assert!(matches!(error, ClientError::InvalidPartition { partition: 4, partitions: 4 }), "{error}");
    let state = broker.state();
    let count = |partition: u32| {
        state
            .entries
            .get(&format!("persistent://public/default/partitioned-routed-partition-{partition}"))
            .map_or(0, Vec::len)
    };
    assert_eq!([count(0), count(1), count(2), count(3)], [1, 2, 0, 1]);
}

// ---- producer interceptors ----

#[derive(Default)]
struct Recording {
    sent: Mutex<Vec<String>>,
    acknowledged: Mutex<Vec<(String, Result<MessageId, String>)>>,
}

struct Stamp(Arc<Recording>);

impl ProducerInterceptor for Stamp {
    fn before_send(&self, topic: &TopicName, message: ProducerMessage) -> ProducerMessage {
        self.0.sent.lock().push(format!("{topic}"));
        message.property("stamped", "yes")
    }

    fn on_send_acknowledgement(
        &self,
        _topic: &TopicName,
        message: &ProducerMessage,
        result: Result<&MessageId, &ClientError>,
    ) {
        let body = String::from_utf8_lossy(message.payload()).into_owned();
        self.0.acknowledged.lock().push((body, result.map(|id| *id).map_err(|error| error.to_string())));
    }
}

#[tokio::test]
async fn producer_interceptors_change_messages_and_see_every_outcome() {
    let (broker, client) = start(Options::default()).await;
    let recording = Arc::new(Recording::default());
    let mut producer = client.producer("my-topic").interceptor(Stamp(recording.clone())).create().await.expect("p");
    let mut receipts = Vec::new();
    for n in 0..5 {
        receipts.push(producer.send_async(ProducerMessage::new(format!("m{n}"))).await.expect("queue"));
    }
    // The receipts are dropped unawaited: the interceptor still hears of every outcome.
    drop(receipts);
    let mut rejected =
        client.producer("rejected-topic").interceptor(Stamp(recording.clone())).create().await.expect("p");
    assert!(rejected.send("refused").await.is_err());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while recording.acknowledged.lock().len() < 6 {
        assert!(tokio::time::Instant::now() < deadline, "outcomes missing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acknowledged = recording.acknowledged.lock().clone();
    for n in 0..5 {
        assert!(acknowledged.contains(&(format!("m{n}"), Ok(MessageId::entry(1, n)))), "{acknowledged:?}");
    }
    assert!(acknowledged.iter().any(|(body, result)| body == "refused" && result.is_err()));
    assert_eq!(recording.sent.lock().len(), 6);
    assert!(broker.state().entries[TOPIC].iter().all(|entry| entry
        .metadata()
        .properties
        .iter()
        .any(|p| p.key == "stamped")));
}

// ---- consumer side ----

fn produce(broker: &FakeBroker, topic: &str, bodies: &[&str]) {
    for body in bodies {
        let metadata = pb::MessageMetadata { producer_name: "injected".into(), publish_time: 1, ..Default::default() };
        broker.append(topic, Payload::new(metadata, body.as_bytes()));
    }
}

fn acked_entries(broker: &FakeBroker) -> Vec<Vec<u64>> {
    broker.state().acks.iter().map(|ack| ack.message_id.iter().map(|id| id.entry_id).collect()).collect()
}

#[tokio::test]
async fn acks_are_grouped_by_time_and_count_and_flushed_on_close() {
    let (broker, client) = start(Options::default()).await;
    produce(&broker, TOPIC, &["0", "1", "2", "3", "4", "5", "6"]);
    let mut consumer = client
        .consumer("my-topic", "sub")
        .initial_position(InitialPosition::Earliest)
        .acknowledgement_group_time(Duration::from_millis(300))
        .max_acknowledgement_group_size(3)
        .subscribe()
        .await
        .expect("subscribe");
    let mut messages = Vec::new();
    for _ in 0..7 {
        messages.push(within(consumer.receive()).await.expect("receive"));
    }
    // Three acks fill a group: sent at once, in one ACK.
    for message in &messages[..3] {
        consumer.ack(message).await.expect("ack");
    }
    broker.eventually("a full group", |state| state.acks.len() == 1).await;
    assert_eq!(acked_entries(&broker), [vec![0, 1, 2]]);
    // Two more wait for the group time.
    consumer.ack(&messages[3]).await.expect("ack");
    consumer.ack(&messages[4]).await.expect("ack");
    assert_eq!(broker.state().acks.len(), 1, "sent before the group time");
    broker.eventually("the timed group", |state| state.acks.len() == 2).await;
    assert_eq!(acked_entries(&broker)[1], [3, 4]);
    // What is left goes out when the consumer closes.
    consumer.ack(&messages[5]).await.expect("ack");
    consumer.close().await.expect("close");
    assert_eq!(acked_entries(&broker).last().expect("an ack"), &[5]);
}

#[tokio::test]
async fn grouped_acks_are_flushed_before_a_redelivery_request() {
    let (broker, client) = start(Options::default()).await;
    produce(&broker, TOPIC, &["a", "b"]);
    let mut consumer = client
        .consumer("my-topic", "sub")
        .subscription_type(crate::SubscriptionType::Shared)
        .initial_position(InitialPosition::Earliest)
        .acknowledgement_group_time(Duration::from_secs(3600))
        .subscribe()
        .await
        .expect("subscribe");
    let a = within(consumer.receive()).await.expect("a");
    let _b = within(consumer.receive()).await.expect("b");
    consumer.ack(&a).await.expect("ack");
    assert!(broker.state().acks.is_empty());
    consumer.redeliver_unacknowledged_messages().await.expect("redeliver");
    broker.eventually("the ack before the redelivery", |state| !state.acks.is_empty()).await;
    assert_eq!(acked_entries(&broker), [vec![0]]);
}

#[tokio::test]
async fn batch_receive_stops_at_the_message_and_byte_limits_and_the_timeout() {
    let (broker, client) = start(Options::default()).await;
    produce(&broker, TOPIC, &["0123456789", "0123456789", "0123456789", "0123456789", "0123456"]);
    let mut by_count = client
        .consumer("my-topic", "by-count")
        .initial_position(InitialPosition::Earliest)
        .batch_receive_policy(crate::BatchReceivePolicy {
            max_num_messages: Some(3),
            max_num_bytes: None,
            timeout: Duration::from_secs(10),
        })
        .subscribe()
        .await
        .expect("subscribe");
    assert_eq!(within(by_count.batch_receive()).await.expect("batch").len(), 3);
    let rest = within(by_count.batch_receive()).await.expect("batch");
    assert_eq!(rest.len(), 2, "the timeout returns what arrived");

    let mut by_bytes = client
        .consumer("my-topic", "by-bytes")
        .initial_position(InitialPosition::Earliest)
        .batch_receive_policy(crate::BatchReceivePolicy {
            max_num_messages: None,
            max_num_bytes: Some(25),
            timeout: Duration::from_secs(10),
        })
        .subscribe()
        .await
        .expect("subscribe");
    let first = within(by_bytes.batch_receive()).await.expect("batch");
    assert_eq!(first.len(), 2, "a third message of 10 bytes would pass 25");
    let second = within(by_bytes.batch_receive()).await.expect("batch");
    let ids: Vec<u64> = second.iter().map(|m| m.id.entry_id).collect();
    assert_eq!(ids, [2, 3], "the held-back message starts the next batch");
    let third = within(by_bytes.batch_receive()).await.expect("batch");
    assert_eq!(third.len(), 1);

    let mut empty = client
        .consumer("my-topic", "empty")
        .batch_receive_policy(crate::BatchReceivePolicy { timeout: Duration::from_millis(100), ..Default::default() })
        .subscribe()
        .await
        .expect("subscribe");
    assert!(within(empty.batch_receive()).await.expect("batch").is_empty());
}

#[tokio::test]
async fn negative_ack_backoff_waits_longer_with_every_redelivery() {
    let (broker, client) = start(Options::default()).await;
    produce(&broker, TOPIC, &["again and again"]);
    let backoff = crate::MultiplierRedeliveryBackoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut consumer = client
        .consumer("my-topic", "sub")
        .subscription_type(crate::SubscriptionType::Shared)
        .initial_position(InitialPosition::Earliest)
        .negative_ack_redelivery_backoff(backoff)
        .subscribe()
        .await
        .expect("subscribe");
    for count in 0..4u32 {
        let message = within(consumer.receive()).await.expect("receive");
        assert_eq!(message.redelivery_count, count);
        let nacked_at = tokio::time::Instant::now();
        consumer.negative_acknowledge(&message).await.expect("nack");
        let redeliveries = count as usize + 1;
        broker.eventually("the redelivery", |state| state.redeliveries.len() == redeliveries).await;
        let waited = nacked_at.elapsed();
        let expected = crate::RedeliveryBackoff::next(&backoff, count);
        assert!(waited >= expected, "redelivery {count} after {waited:?}, backoff says {expected:?}");
    }
}

#[derive(Default)]
struct ConsumerLog {
    consumed: Mutex<Vec<MessageId>>,
    acked: Mutex<Vec<MessageId>>,
    nacked: Mutex<Vec<MessageId>>,
}

struct Watching(Arc<ConsumerLog>);

impl crate::ConsumerInterceptor for Watching {
    fn before_consume(&self, mut message: crate::Message) -> crate::Message {
        self.0.consumed.lock().push(message.id);
        message.properties.insert("seen".into(), "yes".into());
        message
    }

    fn on_acknowledge(&self, id: &MessageId, result: Result<(), &ClientError>) {
        assert!(result.is_ok());
        self.0.acked.lock().push(*id);
    }

    fn on_negative_acks_send(&self, ids: &[MessageId]) {
        self.0.nacked.lock().extend_from_slice(ids);
    }
}

#[tokio::test]
async fn consumer_interceptors_see_consumes_acks_and_negative_acks() {
    let (broker, client) = start(Options::default()).await;
    produce(&broker, TOPIC, &["a", "b"]);
    let log = Arc::new(ConsumerLog::default());
    let mut consumer = client
        .consumer("my-topic", "sub")
        .subscription_type(crate::SubscriptionType::Shared)
        .initial_position(InitialPosition::Earliest)
        .negative_ack_redelivery_delay(Duration::from_millis(50))
        .interceptor(Watching(log.clone()))
        .subscribe()
        .await
        .expect("subscribe");
    let a = within(consumer.receive()).await.expect("a");
    assert_eq!(a.properties.get("seen").map(String::as_str), Some("yes"));
    let b = within(consumer.receive()).await.expect("b");
    consumer.ack(&a).await.expect("ack");
    consumer.negative_acknowledge(&b).await.expect("nack");
    let again = within(consumer.receive()).await.expect("b again");
    assert_eq!(again.id, b.id);
    assert_eq!(*log.consumed.lock(), [a.id, b.id, b.id]);
    assert_eq!(*log.acked.lock(), [a.id]);
    assert_eq!(*log.nacked.lock(), [b.id]);
}

// ---- pattern subscriptions ----

fn full(name: &str) -> String {
    format!("persistent://public/default/{name}")
}

async fn pattern_consumer_follows_new_and_deleted_topics(watchers: bool) {
    let (broker, client) = start(Options { topic_watchers: watchers, ..Default::default() }).await;
    broker.state().namespace_topics = vec![full("orders-a"), full("payments"), full("orders-p-partition-0")];
    let mut consumer = client
        .consumer("", "sub")
        .topics_pattern("persistent://public/default/orders-.*")
        .initial_position(InitialPosition::Earliest)
        .pattern_auto_discovery_period(if watchers { Duration::from_secs(3600) } else { Duration::from_millis(100) })
        .subscribe()
        .await
        .expect("subscribe");
    assert_eq!(consumer.topics(), [full("orders-a"), full("orders-p-partition-0")]);
    produce(&broker, &full("payments"), &["not for us"]);
    produce(&broker, &full("orders-a"), &["a1"]);
    assert_eq!(within(consumer.receive()).await.expect("a1").payload, Bytes::from_static(b"a1"));
    produce(&broker, &full("orders-p-partition-0"), &["p1"]);
    let p1 = within(consumer.receive()).await.expect("p1");
    assert_eq!(p1.id.partition, 0);

    // A topic created after the subscription is picked up.
    broker.topics_changed(&[&full("orders-b")], &[]);
    produce(&broker, &full("orders-b"), &["b1"]);
    let b1 = within(consumer.receive()).await.expect("b1");
    assert_eq!((b1.payload.as_ref(), b1.topic.as_str()), (b"b1".as_slice(), full("orders-b").as_str()));
    consumer.ack(&b1).await.expect("ack on the new topic");

    // A deleted one is dropped.
    broker.topics_changed(&[], &[&full("orders-a")]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while consumer.topics().contains(&full("orders-a")) {
        assert!(tokio::time::Instant::now() < deadline, "the deleted topic is still subscribed");
        let _ = tokio::time::timeout(Duration::from_millis(50), consumer.receive()).await;
    }
    let state = broker.state();
    assert_eq!(state.watch_requests.is_empty(), !watchers, "WATCH_TOPIC_LIST goes to watching brokers only");
    let first = &state.topic_list_requests[0];
    assert_eq!(first.namespace, "public/default");
    assert_eq!(first.topics_pattern.as_deref(), Some("persistent://public/default/orders-.*"));
    assert_eq!(first.mode, Some(pb::command_get_topics_of_namespace::Mode::Persistent as i32));
}

#[tokio::test]
async fn pattern_consumer_follows_topics_by_polling() {
    pattern_consumer_follows_new_and_deleted_topics(false).await;
}

#[tokio::test]
async fn pattern_consumer_follows_topics_through_a_watcher() {
    pattern_consumer_follows_new_and_deleted_topics(true).await;
}

#[tokio::test]
async fn pattern_consumer_without_watchers_never_sends_watch_topic_list_and_polls() {
    let (broker, client) = start(Options::default()).await;
    let mut consumer = client
        .consumer("", "sub")
        .topics_pattern("public/default/late-.*")
        .pattern_auto_discovery_period(Duration::from_millis(100))
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await
        .expect("subscribe");
    assert!(consumer.topics().is_empty());
    broker.topics_changed(&[&full("late-1")], &[]);
    produce(&broker, &full("late-1"), &["finally"]);
    assert_eq!(within(consumer.receive()).await.expect("late").payload, Bytes::from_static(b"finally"));
    assert!(broker.state().watch_requests.is_empty(), "no watcher without the CONNECTED flag");
    assert!(broker.state().topic_list_requests.len() >= 2);
}

// ---- readers over partitions ----

fn partition(name: &str, index: u32) -> String {
    format!("persistent://public/default/{name}-partition-{index}")
}

#[tokio::test]
async fn reader_of_a_partitioned_topic_reads_every_partition_and_seeks_one() {
    let (broker, client) = start(Options::default()).await;
    let mut expected = std::collections::BTreeSet::new();
    for index in 0..4u32 {
        for n in 0..=index {
            let body = format!("p{index}-{n}");
            produce(&broker, &partition("partitioned-r", index), &[&body]);
            expected.insert(body);
        }
    }
    let refused = client
        .reader("partitioned-r")
        .start_message_id(crate::StartMessageId::Id(MessageId::entry(1, 0)))
        .create()
        .await;
    assert!(matches!(refused, Err(ClientError::InvalidConfig { setting: "start_message_id", .. })));
    let mut reader = client
        .reader("partitioned-r")
        .start_message_id(crate::StartMessageId::Earliest)
        .create()
        .await
        .expect("reader");
    assert_eq!(reader.partitions(), 4);
    let mut read = std::collections::BTreeSet::new();
    let mut third_of_partition_2 = None;
    while within(reader.has_message_available()).await.expect("available") {
        let message = within(reader.receive()).await.expect("receive");
        let body = String::from_utf8(message.payload.to_vec()).expect("utf-8");
        assert!(body.starts_with(&format!("p{}-", message.id.partition)), "{body} has id {}", message.id);
        if body == "p2-1" {
            third_of_partition_2 = Some(message.id);
        }
        read.insert(body);
    }
    assert_eq!(read, expected);
    // Seek moves partition 2 only: its messages from there come again, and nothing else.
    let id = third_of_partition_2.expect("p2-1 read");
    within(reader.seek(id)).await.expect("seek");
    assert!(within(reader.has_message_available()).await.expect("available"));
    let again: Vec<String> = [within(reader.receive()).await, within(reader.receive()).await]
        .into_iter()
        .map(|message| String::from_utf8(message.expect("receive").payload.to_vec()).expect("utf-8"))
        .collect();
    assert_eq!(again, ["p2-1", "p2-2"]);
    assert!(!within(reader.has_message_available()).await.expect("available"));
}

// ---- table views ----

fn keyed(key: Option<&str>, value: &[u8], null_value: bool) -> Payload {
    let metadata = pb::MessageMetadata {
        producer_name: "injected".into(),
        publish_time: 1,
        partition_key: key.map(str::to_owned),
        null_value: null_value.then_some(true),
        ..Default::default()
    };
    Payload::new(metadata, value)
}

#[tokio::test]
async fn table_view_keeps_the_latest_value_per_key_and_drops_tombstoned_keys() {
    let (broker, client) = start(Options::default()).await;
    broker.append(TOPIC, keyed(Some("k1"), b"a", false));
    broker.append(TOPIC, keyed(Some("k2"), b"b", false));
    broker.append(TOPIC, keyed(Some("k1"), b"c", false));
    broker.append(TOPIC, keyed(Some("k2"), b"", true));
    broker.append(TOPIC, keyed(Some("k3"), b"x", false));
    broker.append(TOPIC, keyed(Some("k3"), b"", false));
    broker.append(TOPIC, keyed(None, b"keyless", false));
    let view = within(client.table_view("my-topic").create()).await.expect("table view");
    // Loaded before create returns.
    assert_eq!(view.get("k1"), Some(Bytes::from_static(b"c")));
    assert_eq!(view.get("k2"), None, "tombstone with null_value");
    assert_eq!(view.get("k3"), None, "tombstone as an empty payload");
    assert_eq!(view.keys(), ["k1"]);
    assert_eq!(view.len(), 1);
    let subscribe = broker.state().subscribes.last().cloned().expect("a subscribe");
    assert_eq!(subscribe.read_compacted, Some(true));
    assert_eq!(subscribe.durable, Some(false));

    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    view.for_each_and_listen(move |key, value| log.lock().push((key.to_owned(), value.cloned())));
    broker.append(TOPIC, keyed(Some("k4"), b"d", false));
    broker.append(TOPIC, keyed(Some("k1"), b"", true));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while view.get("k4").is_none() || view.contains_key("k1") {
        assert!(tokio::time::Instant::now() < deadline, "updates not applied: {view:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        *seen.lock(),
        [
            ("k1".to_owned(), Some(Bytes::from_static(b"c"))),
            ("k4".to_owned(), Some(Bytes::from_static(b"d"))),
            ("k1".to_owned(), None),
        ]
    );
}

#[tokio::test]
async fn table_view_reads_every_partition() {
    let (broker, client) = start(Options::default()).await;
    for index in 0..4u32 {
        broker.append(&partition("partitioned-t", index), keyed(Some(&format!("key-{index}")), b"v", false));
    }
    let view = within(client.table_view("partitioned-t").create()).await.expect("table view");
    let mut keys = view.keys();
    keys.sort();
    assert_eq!(keys, ["key-0", "key-1", "key-2", "key-3"]);
}
