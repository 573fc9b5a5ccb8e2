//! Our client's typed producers and consumers against a real `magnetar standalone`: JSON and
//! Avro records, an Avro evolution read back by the newer schema (the older messages decoded
//! with the schema they were written with, fetched by GET_SCHEMA), KeyValue in both
//! encodings, a primitive, AUTO_CONSUME reading what typed producers wrote, and an
//! incompatible schema refused with IncompatibleSchema.

use std::time::Duration;

use magnetar_client::schema::{
    AutoConsumeSchema, AvroSchema, Int64Schema, JsonSchema, KeyValueEncoding, KeyValueSchema, Schema, StringSchema,
    TypedConsumer,
};
use magnetar_client::{Client, ClientError, InitialPosition};
use magnetar_proto::pulsar::ServerError;
use magnetar_tests::Standalone;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: i64,
    item: String,
}

const ORDER: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"long"},{"name":"item","type":"string"}]}"#;

/// ORDER plus a field with a default: FULL-compatible.
const ORDER_V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"long"},{"name":"item","type":"string"},{"name":"quantity","type":"int","default":1}]}"#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderV2 {
    id: i64,
    item: String,
    quantity: i32,
}

async fn next<S: Schema>(consumer: &mut TypedConsumer<S>) -> anyhow::Result<S::Value> {
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await??;
    consumer.ack(&message).await?;
    Ok(message.value)
}

async fn subscribe<S: Schema>(client: &Client, topic: &str, name: &str, schema: S) -> anyhow::Result<TypedConsumer<S>> {
    Ok(client
        .consumer(topic, name)
        .with_schema(schema)
        .configure(|builder| builder.initial_position(InitialPosition::Earliest))
        .subscribe()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_messages_round_trip_and_evolve() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = Client::connect(&standalone.service_url()).await?;

    // JSON.
    let topic = "persistent://public/default/typed-json";
    let mut producer = client.producer(topic).with_schema(JsonSchema::<Order>::new(ORDER)?).create().await?;
    let orders: Vec<Order> = (0..5).map(|id| Order { id, item: format!("item-{id}") }).collect();
    for order in &orders {
        producer.send(order).await?;
    }
    let mut consumer = subscribe(&client, topic, "json", JsonSchema::<Order>::new(ORDER)?).await?;
    for order in &orders {
        assert_eq!(next(&mut consumer).await?, *order);
    }
    let schema = client.get_schema(topic, None).await?.expect("the topic has a schema");
    assert_eq!(schema.schema_type, magnetar_client::schema::SchemaType::Json);

    // Avro, then a second version; a v2 consumer reads both (v1 data resolved with its default).
    let topic = "persistent://public/default/typed-avro";
    let mut v1 = client.producer(topic).with_schema(AvroSchema::<Order>::new(ORDER)?).create().await?;
    v1.send(&Order { id: 1, item: "old".into() }).await?;
    let mut v2 = client.producer(topic).with_schema(AvroSchema::<OrderV2>::new(ORDER_V2)?).create().await?;
    v2.send(&OrderV2 { id: 2, item: "new".into(), quantity: 5 }).await?;
    let mut reader = subscribe(&client, topic, "v2", AvroSchema::<OrderV2>::new(ORDER_V2)?).await?;
    assert_eq!(next(&mut reader).await?, OrderV2 { id: 1, item: "old".into(), quantity: 1 });
    assert_eq!(next(&mut reader).await?, OrderV2 { id: 2, item: "new".into(), quantity: 5 });

    // AUTO_CONSUME: whatever each message was written with.
    let mut auto = subscribe(&client, topic, "auto", AutoConsumeSchema).await?;
    assert_eq!(next(&mut auto).await?, serde_json::json!({"id": 1, "item": "old"}));
    assert_eq!(next(&mut auto).await?, serde_json::json!({"id": 2, "item": "new", "quantity": 5}));

    // An incompatible schema is refused by the broker.
    let refused = match client.producer(topic).with_schema(StringSchema).create().await {
        Ok(_) => panic!("a STRING producer on an AVRO topic was created"),
        Err(error) => error,
    };
    assert!(matches!(&refused, ClientError::Server { code: ServerError::IncompatibleSchema, .. }), "{refused:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_and_primitive_messages_round_trip() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let client = Client::connect(&standalone.service_url()).await?;
    for encoding in [KeyValueEncoding::Inline, KeyValueEncoding::Separated] {
        let topic = format!("persistent://public/default/typed-kv-{encoding:?}").to_lowercase();
        let schema =
            || Ok::<_, ClientError>(KeyValueSchema::new(StringSchema, AvroSchema::<Order>::new(ORDER)?, encoding));
        let mut producer = client.producer(&topic).with_schema(schema()?).create().await?;
        for id in 0..3 {
            producer.send(&(format!("key-{id}"), Order { id, item: format!("kv-{id}") })).await?;
        }
        let mut consumer = subscribe(&client, &topic, "kv", schema()?).await?;
        for id in 0..3 {
            let (key, order) = next(&mut consumer).await?;
            assert_eq!(key, format!("key-{id}"), "{encoding:?}");
            assert_eq!(order, Order { id, item: format!("kv-{id}") });
        }
        let mut auto = subscribe(&client, &topic, "auto", AutoConsumeSchema).await?;
        assert_eq!(next(&mut auto).await?, serde_json::json!({"key": "key-0", "value": {"id": 0, "item": "kv-0"}}));
    }
    let topic = "persistent://public/default/typed-int64";
    let mut producer = client.producer(topic).with_schema(Int64Schema).create().await?;
    producer.send(&-42).await?;
    let mut consumer = subscribe(&client, topic, "int", Int64Schema).await?;
    assert_eq!(next(&mut consumer).await?, -42);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_produces_avro_records_and_consumes_them_with_auto_consume() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let cli = magnetar_tests::binary("magnetar-client")?;
    let url = standalone.service_url();
    let dir = tempfile::tempdir()?;
    let definition = dir.path().join("order.avsc");
    std::fs::write(&definition, ORDER)?;
    let schema = format!("avro:{}", definition.display());
    let run = |args: &[&str]| std::process::Command::new(&cli).arg("--url").arg(&url).args(args).output();
    let produce = run(&["produce", "cli-orders", "--schema", &schema, "-s", "", "-m", r#"{"id": 7, "item": "lamp"}"#])?;
    assert!(produce.status.success(), "produce: {}", String::from_utf8_lossy(&produce.stderr));
    let consume = run(&["consume", "cli-orders", "-s", "audit", "-p", "Earliest", "--schema", "auto"])?;
    assert!(consume.status.success(), "consume: {}", String::from_utf8_lossy(&consume.stderr));
    let stdout = String::from_utf8_lossy(&consume.stdout);
    assert!(stdout.contains(r#"content:{"id":7,"item":"lamp"}"#), "{stdout}");
    // A body that is not a record of the schema is refused before anything is sent.
    let bad = run(&["produce", "cli-orders", "--schema", &schema, "-s", "", "-m", r#"{"id": "x"}"#])?;
    assert!(!bad.status.success(), "a body that does not fit the schema was sent");
    Ok(())
}

/// A prost message and the descriptors protoc would give for it (`shop.proto`, package `shop`).
#[derive(Clone, PartialEq, prost::Message)]
struct Receipt {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(string, tag = "2")]
    item: String,
}

fn receipt_descriptors(message: &str) -> Vec<u8> {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};
    let field = |name: &str, number: i32, kind: Type| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(kind as i32),
        ..FieldDescriptorProto::default()
    };
    let file = FileDescriptorProto {
        name: Some("shop.proto".into()),
        package: Some("shop".into()),
        syntax: Some("proto3".into()),
        message_type: vec![DescriptorProto {
            name: Some(message.into()),
            field: vec![field("id", 1, Type::Int64), field("item", 2, Type::String)],
            ..DescriptorProto::default()
        }],
        ..FileDescriptorProto::default()
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prost_messages_travel_as_protobuf_native() -> anyhow::Result<()> {
    use magnetar_client::schema::ProtobufSchema;
    let standalone = Standalone::start().await?;
    let client = Client::connect(&standalone.service_url()).await?;
    let topic = "persistent://public/default/typed-protobuf";
    let schema = || ProtobufSchema::<Receipt>::new(receipt_descriptors("Receipt"), "shop.Receipt", "shop.proto");
    let mut producer = client.producer(topic).with_schema(schema()).create().await?;
    let mut consumer = subscribe(&client, topic, "proto", schema()).await?;
    producer.send(&Receipt { id: 3, item: "pen".into() }).await?;
    assert_eq!(next(&mut consumer).await?, Receipt { id: 3, item: "pen".into() });
    let stored = client.get_schema(topic, None).await?.expect("registered");
    assert_eq!(stored.schema_type, magnetar_client::schema::SchemaType::ProtobufNative);
    let definition: serde_json::Value = serde_json::from_slice(&stored.data)?;
    assert_eq!(definition["rootMessageTypeName"], "shop.Receipt");
    // Another root message is not the same schema (Pulsar's PROTOBUF_NATIVE check).
    let other = ProtobufSchema::<Receipt>::new(receipt_descriptors("Invoice"), "shop.Invoice", "shop.proto");
    let refused = client.producer(topic).with_schema(other).create().await.err().expect("refused");
    assert!(matches!(&refused, ClientError::Server { code: ServerError::IncompatibleSchema, .. }), "{refused:?}");
    Ok(())
}
