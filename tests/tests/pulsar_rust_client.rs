//! The Rust `pulsar` crate, a client nobody here wrote, against `magnetar standalone`:
//! produce 1,000 messages, consume and acknowledge half, kill -9 the process, restart it, and
//! receive the rest with nothing acknowledged lost and order kept.

use std::time::Duration;

use futures::TryStreamExt;
use magnetar_tests::Standalone;
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, Pulsar, SubType, TokioExecutor};

const TOPIC: &str = "persistent://public/default/rust-kill9";
const TOTAL: usize = 1000;
const ACKED: usize = 500;
/// Acks not yet persisted at the kill may come back; never more than this many.
const REDELIVERY_ALLOWANCE: usize = 100;

async fn client(standalone: &Standalone) -> anyhow::Result<Pulsar<TokioExecutor>> {
    Ok(Pulsar::builder(standalone.service_url(), TokioExecutor).build().await?)
}

async fn subscribe(client: &Pulsar<TokioExecutor>) -> anyhow::Result<Consumer<String, TokioExecutor>> {
    Ok(client
        .consumer()
        .with_topic(TOPIC)
        .with_subscription("sub")
        .with_subscription_type(SubType::Exclusive)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await?)
}

async fn next(
    consumer: &mut Consumer<String, TokioExecutor>,
) -> anyhow::Result<(String, pulsar::consumer::Message<String>)> {
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.try_next())
        .await
        .map_err(|_| anyhow::anyhow!("no message within 30 s"))??
        .ok_or_else(|| anyhow::anyhow!("consumer stream ended"))?;
    let body = message.deserialize()?;
    Ok((body, message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_and_acks_survive_kill9() -> anyhow::Result<()> {
    let mut standalone = Standalone::start().await?;
    let pulsar = client(&standalone).await?;
    let mut producer = pulsar.producer().with_topic(TOPIC).with_name("rust-producer").build().await?;
    for i in 0..TOTAL {
        // Each receipt means the broker made the message durable.
        producer.send_non_blocking(format!("msg-{i}")).await?.await?;
    }
    let mut consumer = subscribe(&pulsar).await?;
    for i in 0..ACKED {
        let (body, message) = next(&mut consumer).await?;
        assert_eq!(body, format!("msg-{i}"), "first run delivers in order");
        consumer.ack(&message).await?;
    }
    // Let the client flush its acks to the socket before the kill (the crate sends them
    // asynchronously); the broker may still not have persisted all of them.
    consumer.close().await?;
    drop(producer);
    drop(pulsar);

    standalone.kill9()?;
    standalone.restart().await?;

    let pulsar = client(&standalone).await?;
    let mut consumer = subscribe(&pulsar).await?;
    let (first, message) = next(&mut consumer).await?;
    let first_index: usize = first.trim_start_matches("msg-").parse()?;
    assert!(first_index <= ACKED, "message msg-{ACKED} was skipped: first after restart is {first}");
    assert!(
        ACKED - first_index <= REDELIVERY_ALLOWANCE,
        "{} acknowledged messages came back; at most the few unpersisted acks may",
        ACKED - first_index
    );
    eprintln!("after kill -9: {} acknowledged messages redelivered", ACKED - first_index);
    consumer.ack(&message).await?;
    for i in first_index + 1..TOTAL {
        let (body, message) = next(&mut consumer).await?;
        assert_eq!(body, format!("msg-{i}"), "order kept, nothing missing after restart");
        consumer.ack(&message).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_messages_from_the_rust_crate_round_trip() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let pulsar = client(&standalone).await?;
    let topic = "persistent://public/default/rust-batches";
    let mut consumer: Consumer<String, TokioExecutor> = pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription("batch-sub")
        .with_subscription_type(SubType::Exclusive)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await?;
    let mut producer = pulsar
        .producer()
        .with_topic(topic)
        .with_options(pulsar::ProducerOptions { batch_size: Some(10), ..Default::default() })
        .build()
        .await?;
    let mut receipts = Vec::new();
    for i in 0..30 {
        receipts.push(producer.send_non_blocking(format!("batched-{i}")).await?);
    }
    producer.send_batch().await?;
    for receipt in receipts {
        receipt.await?;
    }
    for i in 0..30 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.try_next()).await??.expect("message");
        assert_eq!(message.deserialize()?, format!("batched-{i}"));
        consumer.ack(&message).await?;
    }
    Ok(())
}
