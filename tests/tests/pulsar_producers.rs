//! Producer features with the Rust `pulsar` crate against `magnetar standalone`: a partitioned
//! topic created over HTTP (PARTITIONED_METADATA, GET_TOPICS_OF_NAMESPACE, produce to every
//! partition, consume all), LZ4-compressed batches arriving intact, and the admin and lookup
//! HTTP routes' status codes and JSON bodies.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::TryStreamExt;
use magnetar_tests::Standalone;
use pulsar::compression::{Compression, CompressionLz4};
use pulsar::consumer::InitialPosition;
use pulsar::proto::command_get_topics_of_namespace::Mode;
use pulsar::{Consumer, ConsumerOptions, ProducerOptions, Pulsar, SubType, TokioExecutor};

async fn http(
    standalone: &Standalone,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    magnetar_tests::http(standalone.http_port, method, path, body).await
}

async fn next(consumer: &mut Consumer<String, TokioExecutor>) -> anyhow::Result<pulsar::consumer::Message<String>> {
    tokio::time::timeout(Duration::from_secs(30), consumer.try_next())
        .await
        .map_err(|_| anyhow::anyhow!("no message within 30 s"))??
        .ok_or_else(|| anyhow::anyhow!("consumer stream ended"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_lookup_routes_answer_pulsar_status_codes_and_bodies() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let path = "/admin/v2/persistent/public/default/orders/partitions";

    assert_eq!(http(&standalone, "GET", path, None).await?, (200, serde_json::json!({"partitions": 0})));
    assert_eq!(http(&standalone, "PUT", path, Some("4")).await?.0, 204);
    assert_eq!(http(&standalone, "GET", path, None).await?, (200, serde_json::json!({"partitions": 4})));

    let (status, body) = http(&standalone, "PUT", path, Some("2")).await?;
    assert_eq!(status, 409, "re-creating answers Conflict: {body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("already exists")), "{body}");

    let (status, body) =
        http(&standalone, "PUT", "/admin/v2/persistent/public/default/none/partitions", Some("0")).await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        http(&standalone, "PUT", "/admin/v2/persistent/public/default/neg/partitions", Some("-3")).await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        http(&standalone, "PUT", "/admin/v2/persistent/public/default/nan/partitions", Some("x")).await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        http(&standalone, "PUT", "/admin/v2/persistent/public/missing/t/partitions", Some("2")).await?;
    assert_eq!(status, 404, "{body}");
    assert!(body["reason"].is_string());

    let (status, listed) = http(&standalone, "GET", "/admin/v2/persistent/public/default/partitioned", None).await?;
    assert_eq!((status, listed), (200, serde_json::json!(["persistent://public/default/orders"])));

    let (status, lookup) = http(&standalone, "GET", "/lookup/v2/topic/persistent/public/default/orders", None).await?;
    assert_eq!(status, 200);
    assert_eq!(lookup["brokerUrl"], standalone.service_url());
    assert_eq!(lookup["httpUrl"], standalone.http_url());
    let (status, _) = http(&standalone, "GET", "/lookup/v2/topic/persistent/public/missing/orders", None).await?;
    assert_eq!(status, 404);

    assert_eq!(
        http(&standalone, "GET", "/admin/v2/namespaces/public/default/deduplication", None).await?,
        (200, false.into())
    );
    assert_eq!(
        http(&standalone, "POST", "/admin/v2/namespaces/public/default/deduplication", Some("true")).await?.0,
        204
    );
    assert_eq!(
        http(&standalone, "GET", "/admin/v2/namespaces/public/default/deduplication", None).await?,
        (200, true.into())
    );
    let (status, _) =
        http(&standalone, "POST", "/admin/v2/namespaces/public/default/deduplication", Some("yes")).await?;
    assert_eq!(status, 400);
    let (status, _) = http(&standalone, "GET", "/admin/v2/namespaces/public/missing/deduplication", None).await?;
    assert_eq!(status, 404);

    assert_eq!(http(&standalone, "DELETE", path, None).await?.0, 204);
    assert_eq!(http(&standalone, "GET", path, None).await?, (200, serde_json::json!({"partitions": 0})));
    assert_eq!(http(&standalone, "DELETE", path, None).await?.0, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_topic_spreads_messages_and_consumer_gets_them_all() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let topic = "persistent://public/default/rust-parts";
    let (status, _) =
        http(&standalone, "PUT", "/admin/v2/persistent/public/default/rust-parts/partitions", Some("4")).await?;
    assert_eq!(status, 204);

    let pulsar: Pulsar<TokioExecutor> = Pulsar::builder(standalone.service_url(), TokioExecutor).build().await?;
    assert_eq!(pulsar.lookup_partitioned_topic_number(topic).await?, 4);
    assert_eq!(pulsar.lookup_partitioned_topic_number("persistent://public/default/plain").await?, 0);
    let listed: BTreeSet<String> =
        pulsar.get_topics_of_namespace("public/default".to_owned(), Mode::Persistent).await?.into_iter().collect();
    let partitions: BTreeSet<String> = (0..4).map(|i| format!("{topic}-partition-{i}")).collect();
    assert!(partitions.is_subset(&listed), "GET_TOPICS_OF_NAMESPACE lists the partitions: {listed:?}");

    let mut consumer: Consumer<String, TokioExecutor> = pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription("sub")
        .with_subscription_type(SubType::Exclusive)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await?;
    let mut producer = pulsar.producer().with_topic(topic).build().await?;
    assert_eq!(producer.partitions().map(|p| p.len()), Some(4));
    let expected: BTreeSet<String> = (0..40).map(|i| format!("part-{i}")).collect();
    for body in &expected {
        producer.send_non_blocking(body.clone()).await?.await?;
    }

    let mut received = BTreeSet::new();
    let mut topics_seen = BTreeSet::new();
    while received.len() < expected.len() {
        let message = next(&mut consumer).await?;
        topics_seen.insert(message.topic.clone());
        received.insert(message.deserialize()?);
        consumer.ack(&message).await?;
    }
    assert_eq!(received, expected);
    assert_eq!(topics_seen, partitions, "every partition received messages");
    for index in 0..4 {
        let (status, stats) = http(
            &standalone,
            "GET",
            &format!("/admin/v2/persistent/public/default/rust-parts-partition-{index}/stats"),
            None,
        )
        .await?;
        assert_eq!(status, 200);
        assert!(stats["msgInCounter"].as_u64().is_some_and(|n| n > 0), "partition {index}: {stats}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_compressed_batches_arrive_intact() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let topic = "persistent://public/default/rust-lz4";
    let pulsar: Pulsar<TokioExecutor> = Pulsar::builder(standalone.service_url(), TokioExecutor).build().await?;
    let mut consumer: Consumer<String, TokioExecutor> = pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription("sub")
        .with_subscription_type(SubType::Exclusive)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await?;
    let mut producer = pulsar
        .producer()
        .with_topic(topic)
        .with_options(ProducerOptions {
            batch_size: Some(10),
            compression: Some(Compression::Lz4(CompressionLz4::default())),
            ..ProducerOptions::default()
        })
        .build()
        .await?;
    let expected: Vec<String> = (0..100).map(|i| format!("lz4-{i}-{}", "y".repeat(300))).collect();
    let mut receipts = Vec::new();
    for body in &expected {
        receipts.push(producer.send_non_blocking(body.clone()).await?);
    }
    producer.send_batch().await?;
    for receipt in receipts {
        receipt.await?;
    }
    // Ten messages per entry: the stored entries are the client's compressed batches.
    let (_, stats) = http(&standalone, "GET", "/admin/v2/persistent/public/default/rust-lz4/stats", None).await?;
    assert_eq!(stats["msgInCounter"], 100, "messages, a batch counting each: {stats}");
    let (_, internal) =
        http(&standalone, "GET", "/admin/v2/persistent/public/default/rust-lz4/internalStats", None).await?;
    assert_eq!(internal["numberOfEntries"], 10, "entries: {internal}");

    let mut received = Vec::new();
    while received.len() < expected.len() {
        let message = next(&mut consumer).await?;
        received.push(message.deserialize()?);
        consumer.ack(&message).await?;
    }
    assert_eq!(received, expected);
    Ok(())
}
