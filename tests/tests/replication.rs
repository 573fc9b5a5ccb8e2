//! Replication with real processes: etcd, `magnetar bookie` processes and a `magnetar broker`.
//! Losing a bookie during a produce run changes the ledger's ensemble and the producer goes on;
//! restarting the broker during a run loses nothing and consumers resume where they acked.

use std::time::Duration;

use anyhow::{ensure, Context};
use magnetar_client::{Client, InitialPosition, MessageId, ProducerMessage};
use magnetar_tests::cluster::{Cluster, Replication};

const REPLICATION: Replication = Replication { ensemble_size: 3, write_quorum: 3, ack_quorum: 2 };

fn payload(index: u64) -> String {
    format!("message-{index:06}")
}

/// Sends messages `range` with up to 64 in flight; returns their ids in order. Fails on the
/// first send error: the producer must never notice a bookie loss.
async fn produce(
    producer: &mut magnetar_client::Producer,
    range: std::ops::Range<u64>,
) -> anyhow::Result<Vec<MessageId>> {
    let mut receipts = std::collections::VecDeque::new();
    let mut ids = Vec::new();
    for index in range {
        receipts.push_back(producer.send_async(ProducerMessage::new(payload(index))).await?);
        if receipts.len() >= 64 {
            let receipt = receipts.pop_front().context("a receipt")?;
            ids.push(receipt.await?);
        }
    }
    for receipt in receipts {
        ids.push(receipt.await?);
    }
    Ok(ids)
}

/// Produces 3,000 messages to `topic`, SIGKILLing one bookie of the current ledger's ensemble
/// after the first 1,000; then consumes everything from the start and checks that every
/// acknowledged message is there, once, in order, with the id its receipt gave. Returns the
/// ledger written during the loss and the bookie killed.
async fn produce_through_a_bookie_loss(
    cluster: &mut Cluster,
    topic: &str,
) -> anyhow::Result<(magnetar_bookie::client::metadata::Ledger, String)> {
    let client = Client::connect(&cluster.broker.service_url()).await?;
    let mut producer = client.producer(format!("persistent://{topic}")).create().await?;
    let mut ids = produce(&mut producer, 0..1000).await?;

    let ledgers = cluster.ledgers(topic).await?;
    let current = ledgers.last().context("the topic has a ledger")?.clone();
    ensure!(
        (current.ensemble_size(), current.write_quorum(), current.ack_quorum()) == (3, 3, 2),
        "new ledgers use 3/3/2: {current:?}"
    );
    let ensemble = current.last_fragment().bookies.clone();
    ensure!(ensemble.len() == 3, "an ensemble of three: {ensemble:?}");
    let victim = ensemble[1].clone();
    cluster.bookie_mut(&victim)?.kill9()?;

    // Keep producing while the writer notices the loss: no send may fail.
    ids.extend(produce(&mut producer, 1000..3000).await?);
    producer.close().await?;
    ensure!(ids.windows(2).all(|pair| pair[0] < pair[1]), "receipts come in order");

    let mut consumer = client
        .consumer(format!("persistent://{topic}"), "check")
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    for (index, id) in ids.iter().enumerate() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.receive())
            .await
            .with_context(|| format!("message {index} never arrived"))??;
        ensure!(
            message.payload == payload(index as u64).as_bytes(),
            "message {index} in order: got {:?}",
            String::from_utf8_lossy(&message.payload)
        );
        ensure!(&message.id == id, "message {index} has the id its receipt gave");
        consumer.ack(&message).await?;
    }
    let ledgers = cluster.ledgers(topic).await?;
    let written = ledgers.into_iter().find(|ledger| ledger.id() == current.id()).context("the ledger")?;
    Ok((written, victim))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_bookie_changes_the_ensemble_and_the_producer_goes_on() -> anyhow::Result<()> {
    // Four bookies: the ensemble of three has a replacement when one of them stops.
    let mut cluster = Cluster::start(4, REPLICATION).await?;
    let (ledger, victim) = produce_through_a_bookie_loss(&mut cluster, "public/default/replaced").await?;
    ensure!(ledger.fragments().len() >= 2, "the bookie loss started a new fragment: {:?}", ledger.fragments());
    let last_fragment = ledger.last_fragment();
    ensure!(
        !last_fragment.bookies.contains(&victim) && last_fragment.bookies.len() == 3,
        "the new fragment replaced {victim}: {:?}",
        ledger.fragments()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_bookies_at_3_3_2_the_producer_goes_on_without_one() -> anyhow::Result<()> {
    // No bookie can replace the lost one; two copies still make the ack quorum.
    let mut cluster = Cluster::start(3, REPLICATION).await?;
    let (ledger, victim) = produce_through_a_bookie_loss(&mut cluster, "public/default/degraded").await?;
    ensure!(
        ledger.fragments().iter().all(|fragment| fragment.bookies.len() == 3),
        "the ensemble keeps its size ({victim} lost): {:?}",
        ledger.fragments()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_during_a_run_resumes_consumers_at_their_acks() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, REPLICATION).await?;
    let topic = "persistent://public/default/restarted";
    let produced = {
        let client = Client::connect(&cluster.broker.service_url()).await?;
        let mut producer = client.producer(topic).create().await?;
        let mut consumer =
            client.consumer(topic, "resume").initial_position(InitialPosition::Earliest).subscribe().await?;
        let ids = produce(&mut producer, 0..1000).await?;
        for index in 0..500u64 {
            let message = consumer.receive().await?;
            ensure!(message.payload == payload(index).as_bytes(), "message {index} in order before the restart");
            consumer.ack(&message).await?;
        }
        // Closing the consumer answers once its acks are persisted; the broker is then killed
        // without any shutdown, in the middle of a producer's run.
        consumer.close().await?;
        ids.len() as u64
    };
    cluster.broker.restart().await?;

    let client = Client::connect(&cluster.broker.service_url()).await?;
    let mut producer = client.producer(topic).create().await?;
    let more = produce(&mut producer, produced..produced + 500).await?;
    ensure!(more.len() == 500, "the restarted broker takes new messages");
    let mut consumer = client.consumer(topic, "resume").subscribe().await?;
    for index in 500..produced + 500 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.receive())
            .await
            .with_context(|| format!("message {index} never arrived"))??;
        ensure!(
            message.payload == payload(index).as_bytes(),
            "resumes right after the last ack and keeps order: expected {index}, got {:?}",
            String::from_utf8_lossy(&message.payload)
        );
        consumer.ack(&message).await?;
    }
    Ok(())
}
