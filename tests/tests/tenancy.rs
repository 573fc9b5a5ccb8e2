//! Tenants, namespaces and their policies with the Rust `pulsar` crate, a client nobody here
//! wrote: against `magnetar standalone`, and against a cluster of two brokers on etcd, where a
//! policy set through one broker is enforced by the other within a second.

use std::time::Duration;

use futures::TryStreamExt;
use magnetar_tests::cluster::{Cluster, Replication, TEST_BROKER_CONFIG};
use magnetar_tests::{http, Standalone};
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, OperationRetryOptions, Pulsar, SubType, TokioExecutor};
use serde_json::json;

/// A client that reports a refusal at once: the crate retries ProducerBusy and ConsumerBusy
/// forever by default.
async fn client(url: String) -> anyhow::Result<Pulsar<TokioExecutor>> {
    let no_retries = OperationRetryOptions { max_retries: Some(0), ..OperationRetryOptions::default() };
    Ok(Pulsar::builder(url, TokioExecutor).with_operation_retry_options(no_retries).build().await?)
}

async fn ok(port: u16, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let (status, answer) = http(port, method, path, body).await?;
    anyhow::ensure!(status == 200 || status == 204, "{method} {path}: {status} {answer}");
    Ok(answer)
}

async fn consumer(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    name: &str,
) -> Result<Consumer<String, TokioExecutor>, pulsar::Error> {
    client
        .consumer()
        .with_topic(topic)
        .with_subscription("workers")
        .with_consumer_name(name)
        .with_subscription_type(SubType::Shared)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_namespace_and_its_limits_work_for_the_rust_client() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let port = standalone.http_port;
    ok(port, "PUT", "/admin/v2/tenants/rust-team", Some(r#"{"allowedClusters":["standalone"]}"#)).await?;
    let policies = json!({"max_consumers_per_subscription": 1, "bundles": {"numBundles": 2}}).to_string();
    ok(port, "PUT", "/admin/v2/namespaces/rust-team/events", Some(&policies)).await?;
    let stored = ok(port, "GET", "/admin/v2/namespaces/rust-team/events", None).await?;
    assert_eq!(stored["max_consumers_per_subscription"], 1);
    assert_eq!(stored["bundles"]["numBundles"], 2);

    let client = client(standalone.service_url()).await?;
    let topic = "persistent://rust-team/events/clicks";
    let mut first = consumer(&client, topic, "a").await?;
    assert!(consumer(&client, topic, "b").await.is_err(), "max_consumers_per_subscription = 1 refuses the second");
    let mut producer = client.producer().with_topic(topic).build().await?;
    for i in 0..20 {
        producer.send_non_blocking(format!("click-{i}")).await?.await?;
    }
    for i in 0..20 {
        let message = tokio::time::timeout(Duration::from_secs(30), first.try_next())
            .await??
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        assert_eq!(message.deserialize()?, format!("click-{i}"));
        first.ack(&message).await?;
    }

    // Bad bodies change nothing.
    let (status, answer) =
        http(port, "POST", "/admin/v2/namespaces/rust-team/events/messageTTL", Some("\"x\"")).await?;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let (status, _) = http(port, "PUT", "/admin/v2/namespaces/rust-team/other", Some(r#"{"bundle":{}}"#)).await?;
    assert_eq!(status, 400, "unknown field");
    assert_eq!(ok(port, "GET", "/admin/v2/namespaces/rust-team", None).await?, json!(["rust-team/events"]));

    // A topic in a namespace that does not exist is refused.
    assert!(client.producer().with_topic("persistent://rust-team/nowhere/t").build().await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_set_through_one_broker_is_enforced_by_the_other_within_a_second() -> anyhow::Result<()> {
    let replication = Replication { ensemble_size: 1, write_quorum: 1, ack_quorum: 1 };
    let cluster = Cluster::start_brokers(1, 2, replication, TEST_BROKER_CONFIG).await?;
    let brokers = cluster.brokers();
    let first = brokers[0].http_port;
    ok(first, "PUT", "/admin/v2/tenants/shared", Some(r#"{"allowedClusters":["test"]}"#)).await?;
    ok(first, "PUT", "/admin/v2/namespaces/shared/ns", None).await?;

    let topic = "persistent://shared/ns/orders";
    let client = client(brokers[0].service_url()).await?;
    let mut producer = client.producer().with_topic(topic).with_name("p1").build().await?;
    producer.send_non_blocking("one".to_owned()).await?.await?;
    // Who serves the topic, and the other broker, through which the policy is set.
    let lookup = ok(first, "GET", "/lookup/v2/topic/persistent/shared/ns/orders", None).await?;
    let owner_url = lookup["brokerUrl"].as_str().ok_or_else(|| anyhow::anyhow!("no brokerUrl: {lookup}"))?;
    let owner = cluster.broker_index(owner_url).ok_or_else(|| anyhow::anyhow!("unknown owner {owner_url}"))?;
    let other = brokers[1 - owner].http_port;
    ok(other, "POST", "/admin/v2/namespaces/shared/ns/maxProducersPerTopic", Some("1")).await?;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = client.producer().with_topic(topic).with_name("p2").build().await;
    assert!(second.is_err(), "the owner refuses a second producer a second after the change elsewhere");
    assert_eq!(
        ok(brokers[owner].http_port, "GET", "/admin/v2/namespaces/shared/ns/maxProducersPerTopic", None).await?,
        1
    );

    // Removed through the other broker again: the owner takes it back just as fast.
    ok(other, "DELETE", "/admin/v2/namespaces/shared/ns/maxProducersPerTopic", None).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    client.producer().with_topic(topic).with_name("p3").build().await?;
    Ok(())
}
