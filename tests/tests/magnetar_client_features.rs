//! Our client library's producer and consumer features against a real `magnetar standalone`:
//! compressed batches, and reconnecting across a broker crash (kill -9 and restart on the
//! same data and ports).

use std::collections::BTreeSet;
use std::time::Duration;

use magnetar_client::{Client, CompressionType, InitialPosition, Message, ProducerMessage, SendReceipt};
use magnetar_tests::{http, Standalone};

/// A client that retries quickly, so the tests wait for the broker, not for backoff.
async fn client(standalone: &Standalone) -> anyhow::Result<Client> {
    magnetar_tests::fast_retry_client(&standalone.service_url(), Duration::from_secs(30)).await
}

async fn receive(consumer: &mut magnetar_client::Consumer) -> anyhow::Result<Message> {
    Ok(tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_round_trip_through_the_broker() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    for codec in [CompressionType::Lz4, CompressionType::Zstd] {
        let topic = format!("persistent://public/default/compressed-{codec}");
        let mut consumer =
            client.consumer(&topic, "sub").initial_position(InitialPosition::Earliest).subscribe().await?;
        let mut producer = client
            .producer(&topic)
            .compression(codec)
            .batching_max_messages(10)
            .batching_max_publish_delay(Duration::from_millis(10))
            .create()
            .await?;
        let filler = "magnetar ".repeat(50);
        let mut receipts: Vec<SendReceipt> = Vec::new();
        for n in 0..100 {
            let message =
                ProducerMessage::new(format!("{n} {filler}")).key(format!("k{}", n % 7)).property("n", n.to_string());
            receipts.push(producer.send_async(message).await?);
        }
        let mut ids = Vec::new();
        for receipt in receipts {
            ids.push(receipt.await?);
        }
        assert!(ids.iter().any(|id| id.batch_index > 0), "{codec}: messages were not batched: {ids:?}");
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{codec}: ids out of order");
        for (n, id) in ids.iter().enumerate() {
            let message = receive(&mut consumer).await?;
            assert_eq!(message.payload, format!("{n} {filler}").as_bytes(), "{codec}: message {n}");
            assert_eq!(message.key.as_deref(), Some(format!("k{}", n % 7).as_str()));
            assert_eq!(message.properties.get("n"), Some(&n.to_string()));
            assert_eq!(&message.id, id);
            consumer.ack(&message).await?;
        }
        producer.close().await?;
        consumer.close().await?;
    }
    Ok(())
}

/// Sends 220 messages to `topic` while standalone is SIGKILLed and restarted; every send must
/// succeed. Then reads the topic from the start: every message is there in order. With
/// `exactly_once` (the namespace deduplicates), no message may appear twice; without, a
/// message stored just before the crash but not acknowledged may come twice (it does in about
/// one run of three).
async fn produce_across_a_crash(standalone: &mut Standalone, topic: &str, exactly_once: bool) -> anyhow::Result<()> {
    let client = client(standalone).await?;
    let mut producer = client.producer(topic).name("survivor").batching_max_messages(5).create().await?;
    for n in 0..20 {
        producer.send(format!("m-{n}")).await?;
    }
    // Keep sending from a task while the broker dies and comes back.
    let sender = tokio::spawn(async move {
        let mut receipts = Vec::new();
        for n in 20..220 {
            receipts.push((n, producer.send_async(ProducerMessage::new(format!("m-{n}"))).await?));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut stored = Vec::new();
        for (n, receipt) in receipts {
            stored.push((n, receipt.await));
        }
        producer.close().await?;
        anyhow::Ok(stored)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    standalone.kill9()?;
    standalone.restart().await?;
    let stored = sender.await??;
    let failed: Vec<_> = stored.iter().filter(|(_, result)| result.is_err()).map(|(n, _)| *n).collect();
    assert!(failed.is_empty(), "sends failed across the restart: {failed:?}");

    let mut consumer = client.consumer(topic, "audit").initial_position(InitialPosition::Earliest).subscribe().await?;
    let mut next = 0;
    let mut seen = BTreeSet::new();
    let mut duplicates = Vec::new();
    while next < 220 {
        let message = receive(&mut consumer).await?;
        let body = String::from_utf8(message.payload.to_vec())?;
        let n: usize = body.trim_start_matches("m-").parse()?;
        assert!(n <= next, "message {n} arrived before message {next}");
        if n == next {
            next += 1;
        } else {
            duplicates.push(n);
        }
        seen.insert(n);
        consumer.ack(&message).await?;
    }
    assert_eq!(seen.len(), 220);
    if exactly_once {
        assert!(duplicates.is_empty(), "deduplication let duplicates through: {duplicates:?}");
        let extra = tokio::time::timeout(Duration::from_secs(1), consumer.receive()).await;
        assert!(extra.is_err(), "a message beyond the 220: {extra:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_reconnects_across_a_broker_crash_and_loses_no_acknowledged_message() -> anyhow::Result<()> {
    let mut standalone = Standalone::start().await?;
    produce_across_a_crash(&mut standalone, "persistent://public/default/producer-crash", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_deduplication_a_producer_resending_after_a_crash_stores_each_message_once() -> anyhow::Result<()> {
    let mut standalone = Standalone::start().await?;
    let (status, _) =
        http(standalone.http_port, "POST", "/admin/v2/namespaces/public/default/deduplication", Some("true")).await?;
    assert_eq!(status, 204, "enable deduplication");
    produce_across_a_crash(&mut standalone, "persistent://public/default/producer-crash-dedup", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consumer_subscribes_again_after_a_broker_crash() -> anyhow::Result<()> {
    let mut standalone = Standalone::start().await?;
    let topic = "persistent://public/default/consumer-crash";
    let client = client(&standalone).await?;
    let mut consumer = client
        .consumer(topic, "steady")
        .consumer_name("only-one")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let mut producer = client.producer(topic).create().await?;
    for n in 0..10 {
        producer.send(format!("m-{n}")).await?;
    }
    for n in 0..5 {
        let message = receive(&mut consumer).await?;
        assert_eq!(message.payload, format!("m-{n}").as_bytes());
        consumer.ack(&message).await?;
    }
    drop(producer);
    standalone.kill9()?;
    standalone.restart().await?;
    // The same consumer handle goes on: it subscribes again and gets what is unacknowledged
    // (at most the acks not yet persisted before the crash come back too).
    let mut producer = client.producer(topic).create().await?;
    for n in 10..15 {
        producer.send(format!("m-{n}")).await?;
    }
    let mut received = BTreeSet::new();
    while received.len() < 15 && !received.contains(&14) {
        let message = receive(&mut consumer).await?;
        let n: usize = String::from_utf8(message.payload.to_vec())?.trim_start_matches("m-").parse()?;
        received.insert(n);
        consumer.ack(&message).await?;
    }
    for n in 5..15 {
        assert!(received.contains(&n), "message {n} was not delivered after the reconnect: {received:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_consume_reports_what_it_received_as_json() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = client(&standalone).await?;
    let mut producer = client.producer("perf-consume").batching_max_messages(20).create().await?;
    let mut receipts = Vec::new();
    for n in 0..100 {
        receipts.push(producer.send_async(ProducerMessage::new(vec![n as u8; 100])).await?);
    }
    for receipt in receipts {
        receipt.await?;
    }
    let output = std::process::Command::new(magnetar_tests::binary("magnetar-perf")?)
        .args(["consume", "--topic", "perf-consume", "--seconds", "3", "--subscription-position", "Earliest"])
        .args(["--service-url", &standalone.service_url(), "--json"])
        .output()?;
    assert!(output.status.success(), "perf consume failed: {}", String::from_utf8_lossy(&output.stderr));
    let figures: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(figures["messages"], 100, "{figures}");
    assert_eq!(figures["bytes"], 100 * 100, "{figures}");
    assert!(figures["e2e_max_ms"].as_f64().is_some_and(|max| max >= figures["e2e_p50_ms"].as_f64().unwrap_or(0.0)));
    Ok(())
}
