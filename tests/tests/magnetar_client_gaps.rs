//! Our client library's Pulsar features beyond plain produce and consume, against a real
//! `magnetar standalone`: chunked messages, ZLIB and SNAPPY (also with Pulsar's Python
//! client), producer access modes, a custom router, interceptors, grouped acks, batch
//! receive, negative-ack backoff, a reader over every partition, pattern subscriptions and
//! table views.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use magnetar_client::{
    Client, ClientError, CompressionType, InitialPosition, Message, MessageId, MessageRouter, ProducerAccessMode,
    ProducerInterceptor, ProducerMessage, TopicName,
};
use magnetar_tests::{eventually, http, Standalone};

/// A client that retries quickly, so the tests wait for the broker, not for backoff.
async fn client(standalone: &Standalone) -> anyhow::Result<Client> {
    client_with_timeout(standalone, Duration::from_secs(30)).await
}

async fn client_with_timeout(standalone: &Standalone, operation_timeout: Duration) -> anyhow::Result<Client> {
    magnetar_tests::fast_retry_client(&standalone.service_url(), operation_timeout).await
}

async fn receive(consumer: &mut magnetar_client::Consumer) -> anyhow::Result<Message> {
    Ok(tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await??)
}

async fn create_partitioned(standalone: &Standalone, topic: &str, partitions: u32) -> anyhow::Result<()> {
    let path = format!("/admin/v2/persistent/public/default/{topic}/partitions");
    let (status, body) = http(standalone.http_port, "PUT", &path, Some(&partitions.to_string())).await?;
    anyhow::ensure!(status == 204 || status == 200, "create {topic}: {status} {body}");
    Ok(())
}

/// Bytes that do not compress, so a message of this size needs that many bytes on the wire.
fn incompressible(size: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_12_mb_message_is_chunked_and_put_together_again() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    let topic = "persistent://public/default/chunked-big";
    let mut consumer = client.consumer(topic, "sub").initial_position(InitialPosition::Earliest).subscribe().await?;
    let mut producer = client.producer(topic).name("big").chunking(true).create().await?;
    let big = incompressible(12 * 1024 * 1024, 7);
    // Without chunking the broker's 5 MB limit refuses it before it is sent.
    let mut plain = client.producer(topic).create().await?;
    assert!(matches!(plain.send(big.clone()).await, Err(ClientError::MessageTooLarge { .. })));
    let sent = producer.send_async(ProducerMessage::new(big.clone()).key("big-one")).await?.sent_id().await?;
    let after = producer.send("small after").await?;
    let first_chunk = sent.first_chunk_id.expect("a chunked message has a first chunk id");
    assert!(first_chunk < sent.id && sent.id < after);

    let message = receive(&mut consumer).await?;
    assert_eq!(message.payload.len(), big.len());
    assert!(message.payload == big, "the payload came back different");
    assert_eq!(message.key.as_deref(), Some("big-one"));
    assert_eq!(message.id, sent.id);
    assert_eq!(message.first_chunk_id(), Some(first_chunk));
    assert_eq!(message.chunk_ids.len(), 3, "12 MB in chunks of at most 5 MB");
    consumer.ack(&message).await?;
    let small = receive(&mut consumer).await?;
    assert_eq!(small.payload, Bytes::from_static(b"small after"));
    consumer.ack(&small).await?;
    consumer.close().await?;

    // Every chunk was acknowledged: a new consumer of the subscription gets nothing.
    let mut again = client.consumer(topic, "sub").subscribe().await?;
    let redelivered = tokio::time::timeout(Duration::from_secs(2), again.receive()).await;
    assert!(redelivered.is_err(), "acknowledged chunks came back: {redelivered:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zlib_and_snappy_round_trip_through_the_broker() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    for codec in [CompressionType::Zlib, CompressionType::Snappy] {
        let topic = format!("persistent://public/default/codec-{codec}");
        let mut consumer =
            client.consumer(&topic, "sub").initial_position(InitialPosition::Earliest).subscribe().await?;
        let mut single = client.producer(&topic).compression(codec).create().await?;
        let mut batching = client
            .producer(&topic)
            .compression(codec)
            .batching_max_messages(10)
            .batching_max_publish_delay(Duration::from_millis(10))
            .create()
            .await?;
        let filler = "magnetar ".repeat(100);
        single.send(format!("single {filler}")).await?;
        let mut receipts = Vec::new();
        for n in 0..20 {
            receipts.push(batching.send_async(ProducerMessage::new(format!("{n} {filler}"))).await?);
        }
        for receipt in receipts {
            receipt.await?;
        }
        assert_eq!(receive(&mut consumer).await?.payload, format!("single {filler}").as_bytes(), "{codec}");
        for n in 0..20 {
            assert_eq!(receive(&mut consumer).await?.payload, format!("{n} {filler}").as_bytes(), "{codec}");
        }
    }
    Ok(())
}

/// Pulsar's Python client (the C++ client underneath) reads our ZLIB and SNAPPY messages and
/// writes its own, which we read. Skipped when the project's virtualenv has no `pulsar`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zlib_and_snappy_interoperate_with_pulsars_python_client() -> anyhow::Result<()> {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let available = std::process::Command::new(&python).args(["-c", "import pulsar"]).output();
    if !available.is_ok_and(|output| output.status.success()) {
        eprintln!("skipped: no Pulsar Python client at {}", python.display());
        return Ok(());
    }
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    for codec in [CompressionType::Zlib, CompressionType::Snappy] {
        let ours = format!("persistent://public/default/interop-ours-{codec}");
        let theirs = format!("persistent://public/default/interop-theirs-{codec}");
        let mut producer = client.producer(&ours).compression(codec).create().await?;
        let body = format!("from rust with {codec} ").repeat(50);
        producer.send(body.clone()).await?;
        let mut consumer =
            client.consumer(&theirs, "sub").initial_position(InitialPosition::Earliest).subscribe().await?;
        let script = format!(
            r#"
import pulsar
client = pulsar.Client("{url}")
consumer = client.subscribe("{ours}", "py", initial_position=pulsar.InitialPosition.Earliest)
message = consumer.receive(timeout_millis=20000)
assert message.data().decode() == {body:?}, message.data()[:100]
consumer.acknowledge(message)
producer = client.create_producer("{theirs}", compression_type=pulsar.CompressionType.{python_codec}, batching_enabled=False)
producer.send(("from python with {codec} " * 50).encode())
client.close()
"#,
            url = standalone.service_url(),
            // The Python client spells them ZLib and SNAPPY.
            python_codec = if codec == CompressionType::Zlib { "ZLib" } else { "SNAPPY" },
        );
        let output = tokio::process::Command::new(&python).args(["-c", &script]).output().await?;
        anyhow::ensure!(output.status.success(), "{codec}: python failed: {}", String::from_utf8_lossy(&output.stderr));
        let message = receive(&mut consumer).await?;
        assert_eq!(message.payload, format!("from python with {codec} ").repeat(50).as_bytes());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_access_modes_behave_as_pulsars() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client_with_timeout(&standalone, Duration::from_secs(5)).await?;

    // Shared: any number.
    let topic = "persistent://public/default/access-shared";
    let mut one = client.producer(topic).create().await?;
    let mut two = client.producer(topic).access_mode(ProducerAccessMode::Shared).create().await?;
    one.send("1").await?;
    two.send("2").await?;
    // An exclusive producer is refused while shared ones are there.
    assert!(client.producer(topic).access_mode(ProducerAccessMode::Exclusive).create().await.is_err());

    // Exclusive: the second one is refused.
    let topic = "persistent://public/default/access-exclusive";
    let mut exclusive = client.producer(topic).access_mode(ProducerAccessMode::Exclusive).create().await?;
    let refused = client.producer(topic).access_mode(ProducerAccessMode::Exclusive).create().await;
    assert!(refused.is_err(), "a second exclusive producer was accepted");
    assert!(client.producer(topic).create().await.is_err(), "a shared producer got in beside an exclusive one");
    exclusive.send("still mine").await?;

    // WaitForExclusive: created once the exclusive producer has gone.
    let waiting_client = client.clone();
    let waiting = tokio::spawn(async move {
        waiting_client.producer(topic).access_mode(ProducerAccessMode::WaitForExclusive).create().await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "WaitForExclusive did not wait");
    exclusive.close().await?;
    let mut successor = tokio::time::timeout(Duration::from_secs(30), waiting).await???;
    successor.send("my turn").await?;

    // ExclusiveWithFencing: takes over; the producer there before is fenced out.
    let mut fencer = client.producer(topic).access_mode(ProducerAccessMode::ExclusiveWithFencing).create().await?;
    fencer.send("fenced you").await?;
    let fenced = tokio::time::timeout(Duration::from_secs(30), successor.send("after the fence")).await?;
    assert!(fenced.is_err(), "the fenced producer could still send");
    Ok(())
}

/// Routes by the `to` property; unrouted messages go to the last partition.
struct ByProperty;

impl MessageRouter for ByProperty {
    fn choose_partition(&self, message: &ProducerMessage, partitions: u32) -> u32 {
        message.properties().get("to").and_then(|to| to.parse().ok()).unwrap_or(partitions - 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_router_puts_messages_on_the_partitions_it_chooses() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    create_partitioned(&standalone, "routed", 4).await?;
    let client = client(&standalone).await?;
    let mut producer = client.producer("routed").message_router(ByProperty).create().await?;
    let plan = [(0, 3), (1, 1), (2, 0), (3, 2)];
    for (partition, count) in plan {
        for n in 0..count {
            producer
                .send_with(ProducerMessage::new(format!("{partition}/{n}")).property("to", partition.to_string()))
                .await?;
        }
    }
    for (partition, count) in plan {
        let mut reader = client
            .reader(format!("persistent://public/default/routed-partition-{partition}"))
            .start_message_id(magnetar_client::StartMessageId::Earliest)
            .create()
            .await?;
        let mut bodies = Vec::new();
        while reader.has_message_available().await? {
            bodies.push(String::from_utf8(reader.receive().await?.payload.to_vec())?);
        }
        let expected: Vec<String> = (0..count).map(|n| format!("{partition}/{n}")).collect();
        assert_eq!(bodies, expected, "partition {partition}");
    }
    Ok(())
}

#[derive(Default)]
struct Seen {
    before_send: Mutex<Vec<String>>,
    acknowledged: Mutex<Vec<MessageId>>,
}

struct Tagging(Arc<Seen>);

impl ProducerInterceptor for Tagging {
    fn before_send(&self, _topic: &TopicName, message: ProducerMessage) -> ProducerMessage {
        self.0
            .before_send
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(String::from_utf8_lossy(message.payload()).into_owned());
        message.property("intercepted", "yes")
    }

    fn on_send_acknowledgement(
        &self,
        _topic: &TopicName,
        _message: &ProducerMessage,
        result: Result<&MessageId, &ClientError>,
    ) {
        if let Ok(id) = result {
            self.0.acknowledged.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(*id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_interceptors_see_every_message() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    let topic = "persistent://public/default/intercepted";
    let seen = Arc::new(Seen::default());
    let mut consumer = client.consumer(topic, "sub").initial_position(InitialPosition::Earliest).subscribe().await?;
    let mut producer =
        client.producer(topic).batching_max_messages(7).interceptor(Tagging(seen.clone())).create().await?;
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(producer.send_async(ProducerMessage::new(format!("m{n}"))).await?);
    }
    let mut stored = BTreeSet::new();
    for receipt in ids {
        stored.insert(receipt.await?);
    }
    eventually(Duration::from_secs(10), "every acknowledgement", || {
        let seen = seen.clone();
        async move { seen.acknowledged.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() == 30 }
    })
    .await?;
    assert_eq!(seen.before_send.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len(), 30);
    assert_eq!(
        seen.acknowledged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        stored
    );
    for _ in 0..30 {
        let message = receive(&mut consumer).await?;
        assert_eq!(message.properties.get("intercepted").map(String::as_str), Some("yes"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_acks_persist_and_nothing_is_redelivered_after_a_restart_of_the_consumer() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    let topic = "persistent://public/default/grouped-acks";
    let mut producer = client.producer(topic).create().await?;
    let mut consumer = client
        .consumer(topic, "sub")
        .subscription_type(magnetar_client::SubscriptionType::Shared)
        .initial_position(InitialPosition::Earliest)
        .acknowledgement_group_time(Duration::from_millis(100))
        .max_acknowledgement_group_size(1000)
        .subscribe()
        .await?;
    for n in 0..250 {
        producer.send(format!("m{n}")).await?;
    }
    for _ in 0..250 {
        let message = receive(&mut consumer).await?;
        consumer.ack(&message).await?;
    }
    // Wait past the group time, then drop the consumer without closing it: the acks went
    // out on the timer, not on close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(consumer);
    let mut again =
        client.consumer(topic, "sub").subscription_type(magnetar_client::SubscriptionType::Shared).subscribe().await?;
    let redelivered = tokio::time::timeout(Duration::from_secs(2), again.receive()).await;
    assert!(redelivered.is_err(), "an acknowledged message came back: {redelivered:?}");
    producer.send("after").await?;
    assert_eq!(receive(&mut again).await?.payload, Bytes::from_static(b"after"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_receive_returns_full_batches_then_what_is_left() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    let topic = "persistent://public/default/batch-receive";
    let mut producer = client.producer(topic).create().await?;
    for n in 0..25 {
        producer.send(format!("m{n}")).await?;
    }
    let mut consumer = client
        .consumer(topic, "sub")
        .initial_position(InitialPosition::Earliest)
        .batch_receive_policy(magnetar_client::BatchReceivePolicy {
            max_num_messages: Some(10),
            max_num_bytes: None,
            timeout: Duration::from_secs(2),
        })
        .subscribe()
        .await?;
    let mut sizes = Vec::new();
    let mut bodies = Vec::new();
    while bodies.len() < 25 {
        let batch = consumer.batch_receive().await?;
        sizes.push(batch.len());
        for message in batch {
            bodies.push(String::from_utf8(message.payload.to_vec())?);
            consumer.ack(&message).await?;
        }
    }
    assert!(sizes.iter().all(|&size| size <= 10), "{sizes:?}");
    let expected: Vec<String> = (0..25).map(|n| format!("m{n}")).collect();
    assert_eq!(bodies, expected);
    assert!(consumer.batch_receive().await?.is_empty(), "the timeout gives an empty batch");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_ack_backoff_delays_grow_with_the_redelivery_count() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    let topic = "persistent://public/default/nack-backoff";
    let backoff = magnetar_client::MultiplierRedeliveryBackoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut consumer = client
        .consumer(topic, "sub")
        .subscription_type(magnetar_client::SubscriptionType::Shared)
        .negative_ack_redelivery_backoff(backoff)
        .subscribe()
        .await?;
    client.producer(topic).create().await?.send("flaky").await?;
    let mut message = receive(&mut consumer).await?;
    for count in 0..3u32 {
        assert_eq!(message.redelivery_count, count);
        let nacked_at = std::time::Instant::now();
        consumer.negative_acknowledge(&message).await?;
        message = receive(&mut consumer).await?;
        let waited = nacked_at.elapsed();
        let expected = magnetar_client::RedeliveryBackoff::next(&backoff, count);
        assert!(waited >= expected, "redelivery {count} came after {waited:?}, the backoff is {expected:?}");
    }
    consumer.ack(&message).await?;
    Ok(())
}

#[derive(Default)]
struct ConsumerSeen {
    consumed: Mutex<Vec<MessageId>>,
    acked: Mutex<Vec<MessageId>>,
}

struct Counting(Arc<ConsumerSeen>);

impl magnetar_client::ConsumerInterceptor for Counting {
    fn before_consume(&self, message: Message) -> Message {
        self.0.consumed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(message.id);
        message
    }

    fn on_acknowledge(&self, id: &MessageId, _result: Result<(), &ClientError>) {
        self.0.acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(*id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_interceptors_see_every_message_and_ack() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    let topic = "persistent://public/default/intercepted-consumer";
    let seen = Arc::new(ConsumerSeen::default());
    let mut consumer = client
        .consumer(topic, "sub")
        .initial_position(InitialPosition::Earliest)
        .interceptor(Counting(seen.clone()))
        .subscribe()
        .await?;
    let mut producer = client.producer(topic).batching_max_messages(5).create().await?;
    let mut receipts = Vec::new();
    for n in 0..20 {
        receipts.push(producer.send_async(ProducerMessage::new(format!("m{n}"))).await?);
    }
    let mut ids = Vec::new();
    for receipt in receipts {
        ids.push(receipt.await?);
    }
    for _ in 0..20 {
        let message = receive(&mut consumer).await?;
        consumer.ack(&message).await?;
    }
    assert_eq!(*seen.consumed.lock().unwrap_or_else(std::sync::PoisonError::into_inner), ids);
    assert_eq!(*seen.acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner), ids);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_consumer_picks_up_a_topic_created_after_it_subscribed() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    client.producer("persistent://public/default/orders-eu").create().await?.send("eu 1").await?;
    client.producer("persistent://public/default/payments").create().await?.send("not an order").await?;
    create_partitioned(&standalone, "orders-parted", 2).await?;
    let mut consumer = client
        .consumer("", "sub")
        .topics_pattern("persistent://public/default/orders-.*")
        .initial_position(InitialPosition::Earliest)
        .pattern_auto_discovery_period(Duration::from_millis(200))
        .subscribe()
        .await?;
    let mut topics = consumer.topics();
    topics.sort();
    assert_eq!(
        topics,
        [
            "persistent://public/default/orders-eu",
            "persistent://public/default/orders-parted-partition-0",
            "persistent://public/default/orders-parted-partition-1",
        ]
    );
    assert_eq!(receive(&mut consumer).await?.payload, Bytes::from_static(b"eu 1"));

    // A topic created after the subscription (by its first producer).
    let mut late = client.producer("persistent://public/default/orders-us").create().await?;
    late.send("us 1").await?;
    let message = receive(&mut consumer).await?;
    assert_eq!(message.payload, Bytes::from_static(b"us 1"));
    assert_eq!(message.topic, "persistent://public/default/orders-us");
    consumer.ack(&message).await?;
    let mut parted = client.producer("orders-parted").create().await?;
    parted.send_with(ProducerMessage::new("parted").key("k")).await?;
    assert_eq!(receive(&mut consumer).await?.payload, Bytes::from_static(b"parted"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_a_partitioned_topic_reads_every_partition() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    create_partitioned(&standalone, "read-all", 3).await?;
    let client = client(&standalone).await?;
    let mut producer = client.producer("read-all").create().await?;
    let mut sent = BTreeSet::new();
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(producer.send_with(ProducerMessage::new(format!("m{n}")).key(format!("key-{n}"))).await?);
        sent.insert(format!("m{n}"));
    }
    assert!(ids.iter().map(|id| id.partition).collect::<BTreeSet<_>>().len() > 1, "keys spread over partitions");
    let mut reader =
        client.reader("read-all").start_message_id(magnetar_client::StartMessageId::Earliest).create().await?;
    assert_eq!(reader.partitions(), 3);
    let mut read = BTreeSet::new();
    while reader.has_message_available().await? {
        let message = tokio::time::timeout(Duration::from_secs(30), reader.receive()).await??;
        read.insert(String::from_utf8(message.payload.to_vec())?);
    }
    assert_eq!(read, sent);

    // Seek one partition back to one of its messages: from there it is read again.
    let target = ids[10];
    reader.seek(target).await?;
    assert!(reader.has_message_available().await?);
    let again = tokio::time::timeout(Duration::from_secs(30), reader.receive()).await??;
    assert_eq!(again.id, target);
    assert_eq!(again.payload, Bytes::from_static(b"m10"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_view_sees_the_latest_values_and_tombstones() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    create_partitioned(&standalone, "table", 2).await?;
    let client = client(&standalone).await?;
    let mut producer = client.producer("table").create().await?;
    for (key, value) in [("a", "1"), ("b", "1"), ("a", "2"), ("c", "1")] {
        producer.send_with(ProducerMessage::new(value).key(key)).await?;
    }
    producer.send_with(ProducerMessage::tombstone("b")).await?;
    let view = client.table_view("table").create().await?;
    let mut keys = view.keys();
    keys.sort();
    assert_eq!(keys, ["a", "c"]);
    assert_eq!(view.get("a"), Some(Bytes::from_static(b"2")));
    assert_eq!(view.get("b"), None);

    let updates = Arc::new(Mutex::new(Vec::new()));
    let log = updates.clone();
    view.listen(move |key, value| {
        log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((key.to_owned(), value.cloned()))
    });
    producer.send_with(ProducerMessage::new("3").key("a")).await?;
    producer.send_with(ProducerMessage::tombstone("c")).await?;
    producer.send_with(ProducerMessage::new("1").key("d")).await?;
    eventually(Duration::from_secs(30), "the view to follow new messages", || {
        let ready =
            view.get("a") == Some(Bytes::from_static(b"3")) && !view.contains_key("c") && view.contains_key("d");
        async move { ready }
    })
    .await?;
    let seen = updates.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert!(seen.contains(&("c".to_owned(), None)), "{seen:?}");
    assert!(seen.contains(&("a".to_owned(), Some(Bytes::from_static(b"3")))), "{seen:?}");
    Ok(())
}
