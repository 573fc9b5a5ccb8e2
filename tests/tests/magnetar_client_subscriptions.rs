//! Our client library against a real `magnetar standalone`, for what needs the broker's
//! subscription types, redelivery, partitioned topics and readers: Shared, Key_Shared,
//! negative acks into a dead-letter topic, ack timeouts redelivering to another Shared
//! consumer while the first is busy, key routing over partitions, a reader at an id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context};
use magnetar_client::{
    partition_for_key, Client, Consumer, DeadLetterPolicy, InitialPosition, Message, ProducerMessage, StartMessageId,
    SubscriptionType,
};
use magnetar_tests::{http, Standalone};

const RECEIVE: Duration = Duration::from_secs(15);

async fn receive(consumer: &mut Consumer) -> anyhow::Result<Message> {
    tokio::time::timeout(RECEIVE, consumer.receive()).await.context("no message within 15 s")?.map_err(Into::into)
}

/// True if nothing arrives within a second.
async fn quiet(consumer: &mut Consumer) -> bool {
    tokio::time::timeout(Duration::from_secs(1), consumer.receive()).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_consumers_split_the_messages_and_key_shared_keeps_each_key_on_one_in_order() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = Client::connect(&standalone.service_url()).await?;

    // Shared: two consumers, every message to exactly one of them.
    let topic = "persistent://public/default/client-shared";
    let mut consumers = Vec::new();
    for name in ["a", "b"] {
        consumers.push(
            client
                .consumer(topic, "shared")
                .subscription_type(SubscriptionType::Shared)
                .consumer_name(name)
                .receiver_queue_size(5)
                .subscribe()
                .await?,
        );
    }
    let mut producer = client.producer(topic).create().await?;
    for i in 0..100 {
        producer.send(format!("s-{i}")).await?;
    }
    let mut received = BTreeMap::new();
    let mut per_consumer = [0usize; 2];
    while received.len() < 100 {
        for (index, consumer) in consumers.iter_mut().enumerate() {
            if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(200), consumer.receive()).await {
                let body = String::from_utf8(message.payload.to_vec())?;
                ensure!(received.insert(body.clone(), index).is_none(), "{body} delivered twice");
                per_consumer[index] += 1;
                consumer.ack(&message).await?;
            }
        }
    }
    ensure!(per_consumer.iter().all(|count| *count > 0), "both consumers got messages: {per_consumer:?}");
    for consumer in &mut consumers {
        ensure!(quiet(consumer).await, "nothing beyond the 100 messages");
    }

    // Key_Shared: each key on one consumer, in order.
    let topic = "persistent://public/default/client-key-shared";
    let mut consumers = Vec::new();
    for name in ["x", "y", "z"] {
        consumers.push(
            client
                .consumer(topic, "keyed")
                .subscription_type(SubscriptionType::KeyShared)
                .consumer_name(name)
                .subscribe()
                .await?,
        );
    }
    let mut producer = client.producer(topic).create().await?;
    for i in 0..300 {
        producer.send_with(ProducerMessage::new(format!("{i}")).key(format!("key-{}", i % 12))).await?;
    }
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    let mut count = 0;
    while count < 300 {
        for (index, consumer) in consumers.iter_mut().enumerate() {
            while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(200), consumer.receive()).await {
                let key = message.key.clone().context("a key")?;
                let value: i64 = std::str::from_utf8(&message.payload)?.parse()?;
                ensure!(*owner.entry(key.clone()).or_insert(index) == index, "{key} went to two consumers");
                let previous = last.insert(key.clone(), value).unwrap_or(-1);
                ensure!(value > previous, "{key}: {value} after {previous}");
                consumer.ack(&message).await?;
                count += 1;
            }
        }
    }
    ensure!(owner.len() == 12, "every key delivered: {owner:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_acks_redeliver_with_counts_until_the_dead_letter_topic() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = Client::connect(&standalone.service_url()).await?;
    let topic = "persistent://public/default/client-nack";
    let mut dead_letters = client
        .consumer(format!("{topic}-work-DLQ"), "inspect")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let mut consumer = client
        .consumer(topic, "work")
        .subscription_type(SubscriptionType::Shared)
        .negative_ack_redelivery_delay(Duration::from_millis(100))
        .dead_letter_policy(DeadLetterPolicy::new(2))
        .subscribe()
        .await?;
    let mut producer = client.producer(topic).create().await?;
    producer.send("poison").await?;
    let mut counts = Vec::new();
    for attempt in 0..3 {
        let message =
            receive(&mut consumer).await.with_context(|| format!("delivery {attempt}, counts so far {counts:?}"))?;
        ensure!(message.payload == "poison".as_bytes());
        counts.push(message.redelivery_count);
        consumer.negative_acknowledge(&message).await?;
    }
    ensure!(counts == vec![0, 1, 2], "redelivery counts {counts:?}");
    // The next redelivery goes to the dead-letter topic instead of the consumer (the client's
    // timer task does it, whether or not the consumer is being called).
    ensure!(quiet(&mut consumer).await, "a dead-lettered message is not delivered again");
    let dead = receive(&mut dead_letters).await.context("the dead letter")?;
    ensure!(dead.payload == "poison".as_bytes(), "the dead letter is the message");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_timeout_redelivers_to_another_shared_consumer_while_the_first_is_busy() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = Client::connect(&standalone.service_url()).await?;
    let topic = "persistent://public/default/client-ack-timeout";
    let subscribe = |name: &'static str| {
        client
            .consumer(topic, "busy")
            .subscription_type(SubscriptionType::Shared)
            .consumer_name(name)
            // One permit: once A holds the message, the broker can only redeliver it to B.
            .receiver_queue_size(1)
            .ack_timeout(Duration::from_secs(1))
            .subscribe()
    };
    let mut busy = subscribe("a").await?;
    let mut producer = client.producer(topic).create().await?;
    producer.send("slow work").await?;
    let held = receive(&mut busy).await.context("consumer A gets the message")?;
    let mut other = subscribe("b").await?;
    // A is stuck processing: no call on it for 3 s. Its ack timeout (1 s) still fires.
    let redelivered = tokio::time::timeout(Duration::from_secs(3), other.receive())
        .await
        .context("consumer B got nothing within 3 s while A was busy")??;
    ensure!(redelivered.payload == "slow work".as_bytes(), "B gets A's message");
    ensure!(redelivered.id == held.id, "the same message: {} and {}", redelivered.id, held.id);
    ensure!(redelivered.redelivery_count >= 1, "counted as a redelivery");
    other.ack(&redelivered).await?;
    drop(busy);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_route_to_their_partition_and_a_reader_starts_at_an_id() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let (status, _) =
        http(standalone.http_port, "PUT", "/admin/v2/persistent/public/default/client-parts/partitions", Some("3"))
            .await?;
    ensure!(status == 204, "create 3 partitions: {status}");
    let client = Client::connect(&standalone.service_url()).await?;
    let topic = "persistent://public/default/client-parts";
    let mut producer = client.producer(topic).create().await?;
    ensure!(producer.partitions() == 3, "the producer sees 3 partitions");
    let mut consumer = client.consumer(topic, "all").initial_position(InitialPosition::Earliest).subscribe().await?;
    let mut expected = BTreeSet::new();
    for i in 0..60 {
        let key = format!("k{}", i % 7);
        let id = producer.send_with(ProducerMessage::new(format!("{key}:{i}")).key(key.clone())).await?;
        ensure!(
            id.partition == partition_for_key(key.as_bytes(), 3) as i32,
            "{key} went to partition {}, Pulsar's hash says {}",
            id.partition,
            partition_for_key(key.as_bytes(), 3)
        );
        expected.insert(format!("{key}:{i}"));
    }
    let mut received = BTreeSet::new();
    for _ in 0..60 {
        let message = receive(&mut consumer).await?;
        received.insert(String::from_utf8(message.payload.to_vec())?);
        consumer.ack(&message).await?;
    }
    ensure!(received == expected, "every message of every partition");

    // A reader on one partition, starting at (inclusive) and after (exclusive) a message.
    let partition = format!("{topic}-partition-0");
    let mut plain = client.producer(&partition).create().await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(plain.send(format!("r-{i}")).await?);
    }
    for (inclusive, first) in [(true, 2), (false, 3)] {
        let mut reader = client
            .reader(&partition)
            .start_message_id(StartMessageId::Id(ids[2]))
            .start_inclusive(inclusive)
            .create()
            .await?;
        let message = tokio::time::timeout(RECEIVE, reader.receive()).await??;
        ensure!(
            message.payload == format!("r-{first}").as_bytes(),
            "inclusive={inclusive}: first is r-{first}, got {:?}",
            String::from_utf8_lossy(&message.payload)
        );
    }
    Ok(())
}

/// Consumers of one subscription from different clients (as several instances of an
/// application are): each client numbers its consumers from the same start, so their
/// consumer ids collide, and the broker must tell them apart by connection. Three clients on
/// one Shared subscription all attach and split the messages; two on one Failover
/// subscription both attach and one of them gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_from_different_clients_share_a_subscription() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let topic = "persistent://public/default/client-instances";
    let mut clients = Vec::new();
    let mut shared = Vec::new();
    for name in ["one", "two", "three"] {
        let client = Client::connect(&standalone.service_url()).await?;
        let consumer = client
            .consumer(topic, "instances")
            .subscription_type(SubscriptionType::Shared)
            .consumer_name(name)
            .subscribe()
            .await
            .with_context(|| format!("Shared consumer {name} from its own client"))?;
        shared.push(consumer);
        clients.push(client);
    }
    let mut failover = Vec::new();
    for (client, name) in clients.iter().zip(["first", "second"]) {
        let consumer = client
            .consumer(topic, "standby")
            .subscription_type(SubscriptionType::Failover)
            .consumer_name(name)
            .subscribe()
            .await
            .with_context(|| format!("Failover consumer {name} from its own client"))?;
        failover.push(consumer);
    }
    let mut producer = clients[0].producer(topic).create().await?;
    for index in 0..30u32 {
        producer.send(format!("m{index}")).await?;
    }
    let mut received = BTreeSet::new();
    let mut per_consumer = Vec::new();
    for consumer in &mut shared {
        let mut count = 0;
        while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.receive()).await {
            ensure!(received.insert(message.payload.clone()), "a message reached two Shared consumers");
            consumer.ack(&message).await?;
            count += 1;
        }
        per_consumer.push(count);
    }
    ensure!(received.len() == 30, "the Shared consumers got {} of 30 ({per_consumer:?})", received.len());
    let mut failover_counts = Vec::new();
    for consumer in &mut failover {
        let mut count = 0;
        while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(2), consumer.receive()).await {
            consumer.ack(&message).await?;
            count += 1;
        }
        failover_counts.push(count);
    }
    failover_counts.sort();
    ensure!(failover_counts == [0, 30], "one Failover consumer gets everything: {failover_counts:?}");
    Ok(())
}
