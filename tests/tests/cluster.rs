//! Cluster mode with real processes: etcd, `magnetar bookie` processes and two or more
//! `magnetar broker` processes. Bundles are owned through lease-held keys; LOOKUP redirects to
//! the owner from any broker; when the owner dies (kill -9), is shut down (SIGTERM) or unloads
//! the bundle, clients move to another broker with nothing acknowledged lost and order kept;
//! the load manager gives a new broker bundles and splits hot ones.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Context};
use magnetar_client::{Client, ClientConfig, InitialPosition, ProducerMessage, SubscriptionType};
use magnetar_tests::cluster::{Cluster, Replication, TEST_BROKER_CONFIG};
use magnetar_tests::{eventually, http};

const REPLICATION: Replication = Replication { ensemble_size: 2, write_quorum: 2, ack_quorum: 2 };
const KEYS: u64 = 8;

fn payload(index: u64) -> String {
    format!("message-{index:06}")
}

fn index_of(payload: &[u8]) -> anyhow::Result<u64> {
    let text = std::str::from_utf8(payload).context("utf-8 payload")?;
    text.strip_prefix("message-").and_then(|n| n.parse().ok()).with_context(|| format!("unexpected payload {text:?}"))
}

/// The owner of `topic` (`tenant/ns/local`) by the HTTP lookup of the broker on `http_port`:
/// its Pulsar URL.
async fn http_owner(http_port: u16, topic: &str) -> anyhow::Result<String> {
    // An unowned bundle's lookup may redirect to the broker chosen for it; `http` follows.
    let (status, body) = http(http_port, "GET", &format!("/lookup/v2/topic/persistent/{topic}"), None).await?;
    ensure!(status == 200, "lookup of {topic} on :{http_port} answered {status}: {body}");
    body["brokerUrl"].as_str().map(str::to_owned).context("lookup answer without brokerUrl")
}

/// Checks what one consumer received against what was acknowledged to the producer: every
/// acknowledged message is there, and leaving out redeliveries of messages seen before,
/// messages come in publish order (so each key's messages in order too).
fn check_delivery(received: &[u64], acknowledged: u64) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let mut last = None;
    let mut per_key: BTreeMap<u64, u64> = BTreeMap::new();
    for &index in received {
        if !seen.insert(index) {
            continue; // redelivered after the move (at-least-once), seen before
        }
        ensure!(last.is_none_or(|last| index > last), "message {index} arrived after {last:?}: order broken");
        if let Some(previous) = per_key.insert(index % KEYS, index) {
            ensure!(previous < index, "key {} out of order: {index} after {previous}", index % KEYS);
        }
        last = Some(index);
    }
    let missing: Vec<u64> = (0..acknowledged).filter(|index| !seen.contains(index)).collect();
    ensure!(
        missing.is_empty(),
        "{} acknowledged messages never arrived, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    Ok(())
}

/// Produces `total` keyed messages (64 in flight) and consumes them on an Exclusive
/// subscription at the same time; `disrupt` runs once `at` messages are acknowledged. Returns
/// the indexes received, in order.
async fn produce_and_consume_through<F, Fut>(
    cluster: &mut Cluster,
    topic: &str,
    total: u64,
    at: u64,
    disrupt: F,
) -> anyhow::Result<Vec<u64>>
where
    F: FnOnce(&mut Cluster) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // A frozen broker answers nothing: PINGs every 2 s find a dead connection well within the
    // send timeout (Pulsar's default keepalive is 30 s, as long as the send timeout).
    let config = ClientConfig { keepalive_interval: Duration::from_secs(2), ..ClientConfig::default() };
    let client = Client::connect_with_config(&cluster.service_url(), config).await?;
    let mut producer = client.producer(topic).create().await?;
    let mut consumer = client
        .consumer(topic, "through")
        .subscription_type(SubscriptionType::Exclusive)
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let consuming = tokio::spawn(async move {
        let mut received = Vec::new();
        let mut highest = None;
        while highest != Some(total - 1) {
            let message = tokio::time::timeout(Duration::from_secs(60), consumer.receive())
                .await
                .with_context(|| format!("nothing arrived for 60 s after {} messages", received.len()))??;
            let index = index_of(&message.payload)?;
            ensure!(
                message.key.as_deref() == Some(format!("key-{}", index % KEYS).as_str()),
                "message {index} keeps its key"
            );
            received.push(index);
            highest = highest.max(Some(index));
            consumer.ack(&message).await?;
        }
        Ok::<_, anyhow::Error>(received)
    });

    let mut disrupt = Some(disrupt);
    let mut receipts = std::collections::VecDeque::new();
    let mut acknowledged = 0u64;
    for index in 0..total {
        let message = ProducerMessage::new(payload(index)).key(format!("key-{}", index % KEYS));
        receipts.push_back(producer.send_async(message).await.with_context(|| format!("send {index}"))?);
        if receipts.len() >= 64 {
            receipts.pop_front().context("a receipt")?.await.with_context(|| format!("receipt before {index}"))?;
            acknowledged += 1;
        }
        if acknowledged == at {
            if let Some(disrupt) = disrupt.take() {
                disrupt(cluster).await?;
            }
        }
    }
    while let Some(receipt) = receipts.pop_front() {
        receipt.await.context("a last receipt")?;
        acknowledged += 1;
    }
    ensure!(acknowledged == total, "every send was acknowledged");
    let received = consuming.await.context("consumer task")??;
    check_delivery(&received, total)?;
    Ok(received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_answers_lookups_with_the_owner_and_bundles_spread() -> anyhow::Result<()> {
    let cluster = Cluster::start_brokers(2, 2, REPLICATION, TEST_BROKER_CONFIG).await?;
    let brokers = cluster.brokers();
    let topics: Vec<String> = (0..16).map(|i| format!("public/default/spread-{i}")).collect();
    let mut owners = HashSet::new();
    for topic in &topics {
        let first = http_owner(brokers[0].http_port, topic).await?;
        let second = http_owner(brokers[1].http_port, topic).await?;
        ensure!(first == second, "both brokers name one owner for {topic}: {first} vs {second}");
        ensure!(cluster.broker_index(&first).is_some(), "the owner {first} is one of the brokers");
        owners.insert(first);
    }
    ensure!(owners.len() == 2, "bundles are spread over both brokers: {owners:?}");

    // Binary LOOKUP through either broker redirects to the owner, and the client follows.
    for broker in &brokers {
        let client = Client::connect(&broker.service_url()).await?;
        for topic in &topics[..4] {
            let owner = http_owner(brokers[0].http_port, topic).await?;
            let found =
                client.lookup(&magnetar_proto::topic_name::TopicName::parse(&format!("persistent://{topic}"))?).await?;
            ensure!(
                owner.ends_with(&format!(":{}", found.port())),
                "LOOKUP via {} found {found:?}, owner {owner}",
                broker.service_url()
            );
        }
    }

    // PARTITIONED_METADATA and the admin API answer on any broker.
    let (status, body) =
        http(brokers[1].http_port, "PUT", "/admin/v2/persistent/public/default/parts/partitions", Some("3")).await?;
    ensure!(status == 204, "create a partitioned topic: {status} {body}");
    let client = Client::connect(&brokers[0].service_url()).await?;
    let partitions =
        client.partitions(&magnetar_proto::topic_name::TopicName::parse("persistent://public/default/parts")?).await?;
    ensure!(partitions == 3, "broker 1 knows the partitions created on broker 2: {partitions}");
    let (status, body) = http(brokers[0].http_port, "GET", "/admin/v2/namespaces/public/default/bundles", None).await?;
    ensure!(status == 200 && body["numBundles"] == 4, "four bundles by default: {status} {body}");
    // A topic's stats from either broker: the non-owner redirects to the owner.
    let mut producer = client.producer("persistent://public/default/spread-0").create().await?;
    producer.send("one").await?;
    for broker in &brokers {
        let (status, body) =
            http(broker.http_port, "GET", "/admin/v2/persistent/public/default/spread-0/stats", None).await?;
        ensure!(status == 200 && body["msgInCounter"] == 1, "stats via :{}: {status} {body}", broker.http_port);
    }
    // The non-owner answers 307; for the web console it asks the owner itself.
    let owner = http_owner(brokers[0].http_port, "public/default/spread-0").await?;
    let owner_index = cluster.broker_index(&owner).context("the owner is one of the brokers")?;
    let other = brokers[1 - owner_index];
    let address = format!("127.0.0.1:{}", other.http_port);
    let path = "/admin/v2/persistent/public/default/spread-0/stats";
    let redirected = magnetar_tests::http_get(&address, path).await?;
    ensure!(redirected.starts_with("HTTP/1.1 307"), "{redirected}");
    let followed = magnetar_tests::http_get_with(&address, path, &[("X-Magnetar-Console", "1")]).await?;
    ensure!(followed.starts_with("HTTP/1.1 200") && followed.contains(r#""msgInCounter":1"#), "{followed}");
    // Partitioned stats from either broker sum every partition, the other broker's included
    // (asked of it over HTTP): 16 partitions over 4 bundles land on both brokers.
    let (status, body) =
        http(brokers[0].http_port, "PUT", "/admin/v2/persistent/public/default/spreadp/partitions", Some("16")).await?;
    ensure!(status == 204, "create a partitioned topic: {status} {body}");
    let mut partition_owners = std::collections::BTreeSet::new();
    for index in 0..16 {
        let partition = format!("persistent://public/default/spreadp-partition-{index}");
        let mut producer = client.producer(partition.as_str()).create().await?;
        producer.send("p").await?;
        producer.close().await?;
        partition_owners
            .insert(http_owner(brokers[0].http_port, &format!("public/default/spreadp-partition-{index}")).await?);
    }
    ensure!(partition_owners.len() == 2, "partitions on both brokers: {partition_owners:?}");
    for broker in &brokers {
        let path = "/admin/v2/persistent/public/default/spreadp/partitioned-stats?perPartition=true";
        let (status, body) = http(broker.http_port, "GET", path, None).await?;
        ensure!(
            status == 200 && body["msgInCounter"] == 16,
            "partitioned stats via :{}: {status} {body}",
            broker.http_port
        );
        ensure!(body["partitions"].as_object().map(|p| p.len()) == Some(16), "every partition: {body}");
    }
    let (status, body) = http(brokers[1].http_port, "GET", "/admin/v2/brokers/test", None).await?;
    ensure!(status == 200 && body.as_array().map(Vec::len) == Some(2), "two live brokers: {status} {body}");
    // Each bookie process with its state and disk, asked over its own HTTP port.
    let (status, body) = http(brokers[0].http_port, "GET", "/admin/v2/bookies/all", None).await?;
    let bookies = body["bookies"].as_array().cloned().unwrap_or_default();
    ensure!(status == 200 && bookies.len() == 2, "two bookies: {status} {body}");
    for bookie in bookies {
        ensure!(bookie["state"] == "read-write" && bookie["readOnly"] == false, "{bookie}");
        ensure!(bookie["totalSpace"].as_u64() > bookie["freeSpace"].as_u64(), "{bookie}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_moves_its_topics_without_losing_acknowledged_messages() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_brokers(3, 2, REPLICATION, TEST_BROKER_CONFIG).await?;
    let topic = "public/default/failover";
    let owner = http_owner(cluster.broker.http_port, topic).await?;
    let victim = cluster.broker_index(&owner).context("owner is a broker")?;
    let survivor = 1 - victim;
    produce_and_consume_through(&mut cluster, &format!("persistent://{topic}"), 3000, 1000, |cluster| {
        let result = cluster.broker_mut(victim).kill9();
        async move { result }
    })
    .await?;
    let survivor_http = cluster.brokers()[survivor].http_port;
    let now = http_owner(survivor_http, topic).await?;
    ensure!(now == cluster.brokers()[survivor].service_url(), "the survivor owns the topic now: {now}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_owner_loses_its_bundles_when_its_lease_expires_and_steps_down() -> anyhow::Result<()> {
    // SIGSTOP: the owner's port still accepts (the kernel queues connections), so nobody can
    // tell it is gone until its 3 s lease expires.
    let mut cluster = Cluster::start_brokers(3, 2, REPLICATION, TEST_BROKER_CONFIG).await?;
    let topic = "public/default/frozen";
    let owner = http_owner(cluster.broker.http_port, topic).await?;
    let frozen = cluster.broker_index(&owner).context("owner is a broker")?;
    let survivor = 1 - frozen;
    produce_and_consume_through(&mut cluster, &format!("persistent://{topic}"), 2000, 700, |cluster| {
        let result = cluster.broker_mut(frozen).signal("STOP");
        async move { result }
    })
    .await?;
    let now = http_owner(cluster.brokers()[survivor].http_port, topic).await?;
    ensure!(now == cluster.brokers()[survivor].service_url(), "the survivor owns the topic: {now}");
    // Thawed, the old owner finds its session gone: it owns nothing and shuts down, as
    // Pulsar's brokers do on an expired metadata session.
    cluster.broker_mut(frozen).signal("CONT")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cluster.broker_mut(frozen).has_exited() {
        ensure!(tokio::time::Instant::now() < deadline, "the thawed broker did not step down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = http_owner(cluster.brokers()[survivor].http_port, topic).await?;
    ensure!(now == cluster.brokers()[survivor].service_url(), "the survivor still owns the topic: {now}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_bundles_over_before_the_broker_exits() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_brokers(2, 2, REPLICATION, TEST_BROKER_CONFIG).await?;
    let topic = "public/default/graceful";
    let owner = http_owner(cluster.broker.http_port, topic).await?;
    let leaving = cluster.broker_index(&owner).context("owner is a broker")?;
    let staying = 1 - leaving;
    produce_and_consume_through(&mut cluster, &format!("persistent://{topic}"), 2000, 700, |cluster| {
        let result = cluster.broker_mut(leaving).terminate().and_then(|status| {
            ensure!(status.success(), "the broker exits cleanly on SIGTERM: {status}");
            Ok(())
        });
        async move { result }
    })
    .await?;
    let now = http_owner(cluster.brokers()[staying].http_port, topic).await?;
    ensure!(now == cluster.brokers()[staying].service_url(), "the other broker owns the topic: {now}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_a_bundle_through_any_broker_moves_it_without_client_errors() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_brokers(2, 2, REPLICATION, TEST_BROKER_CONFIG).await?;
    let topic = "public/default/unloaded";
    let owner = http_owner(cluster.broker.http_port, topic).await?;
    let owner_index = cluster.broker_index(&owner).context("owner is a broker")?;
    let other_http = cluster.brokers()[1 - owner_index].http_port;
    let ownership_before = ownership_versions(&cluster).await?;
    produce_and_consume_through(&mut cluster, &format!("persistent://{topic}"), 2000, 700, move |cluster| {
        let bundles = cluster.meta.clone();
        async move {
            // Ask the broker that does not own it: it forwards to the owner and waits.
            let bundle = bundle_of(&bundles, topic).await?;
            let path = format!("/admin/v2/namespaces/public/default/{bundle}/unload");
            let (status, body) = http(other_http, "PUT", &path, None).await?;
            ensure!(status == 204, "unload answered {status}: {body}");
            Ok(())
        }
    })
    .await?;
    let after = ownership_versions(&cluster).await?;
    let bundle = bundle_of(&cluster.meta, topic).await?;
    ensure!(
        before_and_after_differ(&ownership_before, &after, &bundle),
        "the bundle {bundle} was taken again after the unload: {ownership_before:?} -> {after:?}"
    );
    Ok(())
}

fn before_and_after_differ(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>, bundle: &str) -> bool {
    after.get(bundle).is_some() && before.get(bundle) != after.get(bundle)
}

/// Ownership key versions by bundle range of public/default.
async fn ownership_versions(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut versions = BTreeMap::new();
    for range in cluster.meta.list_children("/magnetar/namespace/public/default").await? {
        if let Some(found) = cluster.meta.get(&format!("/magnetar/namespace/public/default/{range}")).await? {
            versions.insert(range, found.version);
        }
    }
    Ok(versions)
}

/// The bundle range of `topic` (`public/default/<local>`) in the current layout.
async fn bundle_of(meta: &std::sync::Arc<dyn magnetar_meta::MetadataStore>, topic: &str) -> anyhow::Result<String> {
    let name = magnetar_proto::topic_name::TopicName::parse(&format!("persistent://{topic}"))?;
    let layout = magnetar_broker::cluster::bundles::layout(meta.as_ref(), "public/default", 4).await?;
    Ok(layout.bundle_of(&name).range.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_broker_receives_bundles_and_a_hot_bundle_splits() -> anyhow::Result<()> {
    let settings = "metadata_store_session_timeout_millis = 3000\n\
                    load_balancer_report_interval_seconds = 1\n\
                    load_balancer_shedding_interval_seconds = 1\n\
                    load_balancer_shedding_grace_period_seconds = 0\n\
                    load_balancer_namespace_bundle_max_topics = 6\n";
    let mut cluster = Cluster::start_brokers(2, 1, REPLICATION, settings).await?;
    // 24 topics over 4 bundles on the only broker: some bundle has more than 6 topics.
    let client = Client::connect(&cluster.broker.service_url()).await?;
    let mut producers = Vec::new();
    for i in 0..24 {
        let mut producer = client.producer(format!("persistent://public/default/hot-{i}")).create().await?;
        producer.send("x").await?;
        producers.push(producer);
    }
    let meta = cluster.meta.clone();
    eventually(Duration::from_secs(60), "a hot bundle to split", || {
        let meta = meta.clone();
        async move {
            let Ok(Some(found)) = meta.get("/magnetar/bundles/public/default").await else { return false };
            let layout: serde_json::Value = serde_json::from_slice(&found.value).unwrap_or_default();
            layout["numBundles"].as_u64().unwrap_or(0) > 4
        }
    })
    .await?;

    let index = cluster.add_broker(settings).await?;
    let newcomer = cluster.brokers()[index].service_url();
    let http_port = cluster.broker.http_port;
    eventually(Duration::from_secs(60), "the new broker to own a bundle", || {
        let newcomer = newcomer.clone();
        async move {
            for i in 0..24 {
                if let Ok(owner) = http_owner(http_port, &format!("public/default/hot-{i}")).await {
                    if owner == newcomer {
                        return true;
                    }
                }
            }
            false
        }
    })
    .await?;
    // The producers moved with their bundles and still publish.
    for producer in &mut producers {
        tokio::time::timeout(Duration::from_secs(30), producer.send("y")).await.context("a send after the move")??;
    }
    Ok(())
}

/// A broker started while etcd cannot be reached yet (its endpoint refuses connections for
/// the first seconds, as a member that is still starting or electing a leader does) waits
/// for it and then serves, instead of exiting with the first error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_started_before_etcd_answers_waits_for_it() -> anyhow::Result<()> {
    let etcd = magnetar_meta::testing::EtcdServer::start().await?;
    let target = etcd.endpoint().trim_start_matches("http://").to_owned();
    let late_port = magnetar_tests::free_port()?;
    let dir = tempfile::tempdir()?;
    // Nothing listens on the port for 3 s; then it forwards to etcd.
    let opening = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", late_port)).await?;
        loop {
            let (mut client, _) = listener.accept().await?;
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });
    let url = format!("etcd://127.0.0.1:{late_port}");
    let started = std::time::Instant::now();
    let broker = magnetar_tests::cluster::BrokerProcess::start(&url, REPLICATION, dir.path().join("broker")).await;
    opening.abort();
    let broker = broker.context("the broker started")?;
    ensure!(started.elapsed() >= Duration::from_secs(3), "the broker served before etcd could be reached");
    let log = broker.log();
    ensure!(log.contains("connecting to etcd failed; trying again"), "no retry in the broker's log:\n{log}");
    let clusters = http(broker.http_port, "GET", "/admin/v2/clusters", None).await?;
    ensure!(clusters.0 == 200, "the broker answers its admin API: {clusters:?}");
    Ok(())
}

/// A named producer whose publish could not be made durable (a bookie of a two-bookie
/// ensemble died, and no other bookie can replace it) is closed by the broker; once the
/// bookie is back, its client registers it again and the send goes through. The closed
/// producer must be gone from the topic by then, or the name is "already connected" for as
/// long as the connection lives (the chaos harness's seed 100 found that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_closed_after_a_storage_failure_registers_again_and_publishes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(2, REPLICATION).await?;
    let topic = "persistent://public/default/storage-failure";
    let client = Client::connect(&cluster.service_url()).await?;
    // Subscribed first: without a subscription (or retention) the broker keeps nothing.
    let mut consumer = client
        .consumer(topic, "check")
        .subscription_type(SubscriptionType::Exclusive)
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    let mut producer = client.producer(topic).name("steady").create().await?;
    for index in 0..20 {
        producer.send(payload(index)).await.with_context(|| format!("send {index} before the fault"))?;
    }
    cluster.bookies[1].kill9()?;
    let receipt = producer.send_async(ProducerMessage::new(payload(20))).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.bookies[1].restart().await?;
    tokio::time::timeout(Duration::from_secs(60), receipt)
        .await
        .context("the send during the fault was not acknowledged within 60 s of the bookie's return")?
        .map_err(|error| anyhow::anyhow!("the send during the fault: {error:?}"))?;
    let log = cluster.broker.log();
    ensure!(log.contains("closing the producer so its client resends"), "the fault never reached the producer:\n{log}");
    ensure!(!log.contains("is already connected"), "the closed producer kept its name:\n{log}");
    for index in 21..30 {
        producer.send(payload(index)).await.with_context(|| format!("send {index} after the fault"))?;
    }
    let mut received = Vec::new();
    while received.last() != Some(&29) {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.receive())
            .await
            .with_context(|| format!("nothing arrived after {received:?}"))??;
        received.push(index_of(&message.payload)?);
    }
    check_delivery(&received, 30).with_context(|| format!("received {received:?}"))?;
    Ok(())
}
