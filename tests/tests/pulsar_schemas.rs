//! The schema registry with the Rust `pulsar` crate, a client nobody here wrote: a JSON-schema
//! producer and consumer round trip and the version stamped on each message; the schema
//! survives a kill -9 of `magnetar standalone` (a later incompatible producer is still refused,
//! a compatible one gets the next version); in a cluster, a schema registered through one
//! broker is what another broker answers.

use std::time::Duration;

use futures::TryStreamExt;
use magnetar_tests::cluster::{Cluster, Replication, TEST_BROKER_CONFIG};
use magnetar_tests::{http, Standalone};
use pulsar::consumer::InitialPosition;
use pulsar::message::proto::{schema::Type as SchemaType, Schema};
use pulsar::message::Payload;
use pulsar::{
    producer, ConsumerOptions, DeserializeMessage, Error as PulsarError, OperationRetryOptions, ProducerOptions,
    Pulsar, SerializeMessage, TokioExecutor,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    value: i32,
}

impl SerializeMessage for Reading {
    fn serialize_message(input: Self) -> Result<producer::Message, PulsarError> {
        let payload = serde_json::to_vec(&input).map_err(|error| PulsarError::Custom(error.to_string()))?;
        Ok(producer::Message { payload, ..Default::default() })
    }
}

impl DeserializeMessage for Reading {
    type Output = Result<Reading, serde_json::Error>;

    fn deserialize_message(payload: &Payload) -> Self::Output {
        serde_json::from_slice(&payload.data)
    }
}

/// A JSON schema as Pulsar's clients describe one: an Avro record.
fn json_schema(fields: serde_json::Value) -> Schema {
    let definition = serde_json::json!({"type": "record", "name": "Reading", "namespace": "test", "fields": fields});
    Schema {
        name: "Reading".to_owned(),
        schema_data: serde_json::to_vec(&definition).expect("json"),
        r#type: SchemaType::Json as i32,
        properties: Vec::new(),
    }
}

fn v1() -> Schema {
    json_schema(serde_json::json!([{"name": "sensor", "type": "string"}, {"name": "value", "type": "int"}]))
}

/// v1 plus a field with a default: FULL-compatible.
fn v2() -> Schema {
    json_schema(serde_json::json!([
        {"name": "sensor", "type": "string"}, {"name": "value", "type": "int"},
        {"name": "unit", "type": "string", "default": "C"}
    ]))
}

/// `value` changed to a string: incompatible with v1 either way.
fn broken() -> Schema {
    json_schema(serde_json::json!([{"name": "sensor", "type": "string"}, {"name": "value", "type": "string"}]))
}

async fn client(url: String) -> anyhow::Result<Pulsar<TokioExecutor>> {
    let no_retries = OperationRetryOptions { max_retries: Some(0), ..OperationRetryOptions::default() };
    Ok(Pulsar::builder(url, TokioExecutor).with_operation_retry_options(no_retries).build().await?)
}

async fn producer(
    pulsar: &Pulsar<TokioExecutor>,
    topic: &str,
    schema: Schema,
) -> Result<producer::Producer<TokioExecutor>, PulsarError> {
    pulsar
        .producer()
        .with_topic(topic)
        .with_options(ProducerOptions { schema: Some(schema), ..ProducerOptions::default() })
        .build()
        .await
}

/// The versions the admin API lists for `topic` (`public/default/x`).
async fn versions(http_port: u16, topic: &str) -> anyhow::Result<Vec<i64>> {
    let (status, body) = http(http_port, "GET", &format!("/admin/v2/schemas/{topic}/schemas"), None).await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    Ok(body["getSchemaResponses"].as_array().into_iter().flatten().filter_map(|v| v["version"].as_i64()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_round_trip_survives_a_restart() -> anyhow::Result<()> {
    let mut standalone = Standalone::start().await?;
    let topic = "persistent://public/default/rust-schema";
    let pulsar = client(standalone.service_url()).await?;
    let mut consumer: pulsar::Consumer<Reading, TokioExecutor> = pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription("readings")
        .with_options(ConsumerOptions::default().with_schema(v1()).with_initial_position(InitialPosition::Earliest))
        .build()
        .await?;
    let mut typed = producer(&pulsar, topic, v1()).await?;
    let sent: Vec<Reading> = (0..10).map(|i| Reading { sensor: format!("s{i}"), value: i }).collect();
    for reading in &sent {
        typed.send_non_blocking(reading.clone()).await?.await?;
    }
    for expected in &sent {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.try_next())
            .await??
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        assert_eq!(message.deserialize()?, *expected);
        assert_eq!(message.metadata().schema_version.as_deref(), Some(&0i64.to_be_bytes()[..]), "version 0 stamped");
        consumer.ack(&message).await?;
    }
    drop(consumer);
    drop(typed);
    assert_eq!(versions(standalone.http_port, "public/default/rust-schema").await?, [0]);

    standalone.restart().await?;
    let pulsar = client(standalone.service_url()).await?;
    let refused = producer(&pulsar, topic, broken()).await.err().expect("the incompatible schema is refused");
    assert!(format!("{refused:?}").contains("IncompatibleSchema"), "{refused:?}");
    producer(&pulsar, topic, v2()).await?;
    assert_eq!(versions(standalone.http_port, "public/default/rust-schema").await?, [0, 1], "kept across the restart");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_of_a_cluster_sees_one_schema_history() -> anyhow::Result<()> {
    let replication = Replication { ensemble_size: 1, write_quorum: 1, ack_quorum: 1 };
    let cluster = Cluster::start_brokers(1, 2, replication, TEST_BROKER_CONFIG).await?;
    let brokers = cluster.brokers();
    let topic = "persistent://public/default/cluster-schema";
    let pulsar = client(brokers[0].service_url()).await?;
    let mut typed = producer(&pulsar, topic, v1()).await?;
    typed.send_non_blocking(Reading { sensor: "a".into(), value: 1 }).await?.await?;
    for broker in &brokers {
        assert_eq!(
            versions(broker.http_port, "public/default/cluster-schema").await?,
            [0],
            "via :{}",
            broker.http_port
        );
    }
    // Whichever broker serves the topic refuses an incompatible schema.
    let other = client(brokers[1].service_url()).await?;
    let refused = producer(&other, topic, broken()).await.err().expect("refused through the other broker");
    assert!(format!("{refused:?}").contains("IncompatibleSchema"), "{refused:?}");
    Ok(())
}
