//! Auto-recovery with real processes: etcd, four `magnetar bookie` processes (each running the
//! auto-recovery worker, as by default, on hosts of their own) and a `magnetar broker` at
//! 3/3/2. A bookie SIGKILLed and never restarted is re-replicated: afterwards no ledger names
//! it, and every entry is on every bookie of its write set.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context};
use magnetar_bookie::client::metadata::{write_set, Ledger};
use magnetar_bookie::client::{self, Bookies};
use magnetar_bookie::EntryId;
use magnetar_client::{Client, InitialPosition, ProducerMessage};
use magnetar_tests::cluster::{Cluster, Replication};
use magnetar_tests::eventually;

const REPLICATION: Replication = Replication { ensemble_size: 3, write_quorum: 3, ack_quorum: 2 };
const TOPICS: [&str; 2] = ["public/default/recovered-0", "public/default/recovered-1"];

fn payload(topic: usize, index: u64) -> String {
    format!("topic-{topic}-message-{index:06}")
}

/// Sends messages `range` to the producer's topic with up to 64 in flight; fails on any error.
async fn produce(
    producer: &mut magnetar_client::Producer,
    topic: usize,
    range: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    let mut receipts = std::collections::VecDeque::new();
    for index in range {
        receipts.push_back(producer.send_async(ProducerMessage::new(payload(topic, index))).await?);
        if receipts.len() >= 64 {
            receipts.pop_front().context("a receipt")?.await?;
        }
    }
    for receipt in receipts {
        receipt.await?;
    }
    Ok(())
}

fn names(ledger: &Ledger, bookie_id: &str) -> bool {
    ledger.names(bookie_id)
}

/// Reads every entry of `ledger` up to `last` from each bookie of its write set.
async fn every_copy_is_there(bookies: &Bookies, ledger: &Ledger, last: Option<EntryId>) -> anyhow::Result<u64> {
    let Some(last) = last else { return Ok(0) };
    let mut copies = 0;
    for entry_id in EntryId::FIRST.through(last) {
        let ensemble = ledger.ensemble_for(entry_id);
        for index in write_set(entry_id, ensemble.len(), ledger.write_quorum()) {
            let bookie_id = &ensemble[index];
            bookies
                .get(bookie_id)
                .await?
                .read_entry(ledger.id(), entry_id, None)
                .await
                .with_context(|| format!("entry {}:{entry_id} on {bookie_id}", ledger.id()))?;
            copies += 1;
        }
    }
    Ok(copies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bookie_removed_for_good_gets_every_ledger_back_to_its_write_quorum() -> anyhow::Result<()> {
    // Grace period 2 s, scans every second; each bookie on its own host.
    let mut cluster = Cluster::start_with(4, REPLICATION, |index| {
        ["--host-name", &format!("host-{index}"), "--lost-bookie-recovery-delay-ms", "2000"]
            .into_iter()
            .chain(["--autorecovery-audit-interval-ms", "1000"])
            .map(str::to_owned)
            .collect()
    })
    .await?;
    let client = Client::connect(&cluster.broker.service_url()).await?;
    let mut producers = Vec::new();
    for (topic, name) in TOPICS.iter().enumerate() {
        let mut producer = client.producer(format!("persistent://{name}")).create().await?;
        produce(&mut producer, topic, 0..500).await?;
        producers.push(producer);
    }

    // The victim is in the first topic's ensemble; killed for good.
    let ledger = cluster.ledgers(TOPICS[0]).await?.last().context("a ledger")?.clone();
    let victim = ledger.last_fragment().bookies[0].clone();
    cluster.bookie_mut(&victim)?.kill9()?;
    // The writers notice on their next adds and move on without it (a new fragment).
    for (topic, producer) in producers.iter_mut().enumerate() {
        produce(producer, topic, 500..1000).await?;
    }

    // Once its registration expired and the grace period passed, the leader copies the
    // fragments that named it: no ledger's fragment names it any more.
    let meta_cluster = &cluster;
    let victim_ref = &victim;
    eventually(Duration::from_secs(90), "no ledger to name the lost bookie", || async move {
        match meta_cluster.all_ledgers().await {
            Ok(ledgers) => !ledgers.is_empty() && ledgers.iter().all(|ledger| !names(ledger, victim_ref)),
            Err(_) => false,
        }
    })
    .await
    .with_context(|| {
        let logs: Vec<String> = cluster.bookies.iter().map(|bookie| bookie.log()).collect();
        format!("bookie logs:\n{}", logs.join("\n---\n"))
    })?;
    let recovered = cluster
        .bookies
        .iter()
        .filter(|bookie| bookie.options().bookie_id != victim)
        .any(|bookie| bookie.log().contains("re-replicated a fragment"));
    ensure!(recovered, "a surviving bookie's worker re-replicated fragments");

    // Every entry is on every bookie of its write set: read each copy directly.
    let bookies = Bookies::new(cluster.meta.clone());
    let mut copies = BTreeMap::new();
    for ledger in cluster.all_ledgers().await? {
        let last = if ledger.is_closed() {
            ledger.last_entry()
        } else {
            EntryId::from_last(client::read_last_add_confirmed(&bookies, &ledger).await?)
        };
        copies.insert(ledger.id(), every_copy_is_there(&bookies, &ledger, last).await?);
    }
    ensure!(copies.values().sum::<u64>() > 0, "entries were checked: {copies:?}");
    bookies.close().await;

    // And every message reads back, in order.
    for producer in producers {
        producer.close().await?;
    }
    for (topic, name) in TOPICS.iter().enumerate() {
        let mut consumer = client
            .consumer(format!("persistent://{name}"), "check")
            .initial_position(InitialPosition::Earliest)
            .subscribe()
            .await?;
        for index in 0..1000u64 {
            let message = tokio::time::timeout(Duration::from_secs(30), consumer.receive())
                .await
                .with_context(|| format!("message {index} of topic {topic} never arrived"))??;
            ensure!(message.payload == payload(topic, index).as_bytes(), "message {index} of topic {topic} in order");
            consumer.ack(&message).await?;
        }
    }
    Ok(())
}
