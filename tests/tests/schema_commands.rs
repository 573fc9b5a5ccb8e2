//! The schema commands on the wire, as exact frames: GET_OR_CREATE_SCHEMA registers and
//! answers the version, the same schema again the same version; GET_SCHEMA answers the latest
//! or a given version, and TopicNotFound for a topic without one or an unknown version; a
//! malformed definition or an unknown schema type gets IncompatibleSchema naming why, and the
//! broker keeps serving.

use futures::SinkExt;
use magnetar_proto::frame::Frame;
use magnetar_proto::pulsar::{self as pb, base_command::Type, BaseCommand, ServerError};
use magnetar_tests::{raw_connect, raw_receive, RawConn, Standalone};

const TOPIC: &str = "persistent://public/default/wire-schema";
const V0: &str = r#"{"type":"record","name":"W","fields":[{"name":"a","type":"int"}]}"#;
const V1: &str =
    r#"{"type":"record","name":"W","fields":[{"name":"a","type":"int"},{"name":"b","type":"long","default":0}]}"#;

fn avro(definition: &str) -> pb::Schema {
    pb::Schema { name: "W".into(), schema_data: definition.as_bytes().to_vec(), schema_type: 4, properties: Vec::new() }
}

async fn get_or_create(
    conn: &mut RawConn,
    request_id: u64,
    schema: pb::Schema,
) -> anyhow::Result<pb::CommandGetOrCreateSchemaResponse> {
    let command = BaseCommand {
        command_type: Type::GetOrCreateSchema as i32,
        get_or_create_schema: Some(pb::CommandGetOrCreateSchema { request_id, topic: TOPIC.into(), schema }),
        ..Default::default()
    };
    conn.send(Frame::simple(command)).await?;
    let answer = raw_receive(conn).await?;
    let shown = format!("{answer:?}");
    answer
        .command
        .get_or_create_schema_response
        .ok_or_else(|| anyhow::anyhow!("expected GET_OR_CREATE_SCHEMA_RESPONSE: {shown}"))
}

async fn get(
    conn: &mut RawConn,
    request_id: u64,
    topic: &str,
    version: Option<i64>,
) -> anyhow::Result<pb::CommandGetSchemaResponse> {
    let command = BaseCommand {
        command_type: Type::GetSchema as i32,
        get_schema: Some(pb::CommandGetSchema {
            request_id,
            topic: topic.into(),
            schema_version: version.map(|v| v.to_be_bytes().to_vec()),
        }),
        ..Default::default()
    };
    conn.send(Frame::simple(command)).await?;
    let answer = raw_receive(conn).await?;
    let shown = format!("{answer:?}");
    answer.command.get_schema_response.ok_or_else(|| anyhow::anyhow!("expected GET_SCHEMA_RESPONSE: {shown}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_commands_answer_as_pulsar_does() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let mut conn = raw_connect(standalone.pulsar_port, "schema-wire").await?;

    let missing = get(&mut conn, 1, TOPIC, None).await?;
    assert_eq!(missing.error_code, Some(ServerError::TopicNotFound as i32), "{missing:?}");

    let created = get_or_create(&mut conn, 2, avro(V0)).await?;
    assert_eq!(created.error_code, None, "{created:?}");
    assert_eq!(created.schema_version.as_deref(), Some(&0i64.to_be_bytes()[..]));
    let again = get_or_create(&mut conn, 3, avro(V0)).await?;
    assert_eq!(again.schema_version, created.schema_version, "the same schema, the same version");
    let next = get_or_create(&mut conn, 4, avro(V1)).await?;
    assert_eq!(next.schema_version.as_deref(), Some(&1i64.to_be_bytes()[..]));

    let latest = get(&mut conn, 5, TOPIC, None).await?;
    assert_eq!(latest.schema_version.as_deref(), Some(&1i64.to_be_bytes()[..]));
    assert_eq!(latest.schema.as_ref().map(|s| s.schema_data.as_slice()), Some(V1.as_bytes()));
    let first = get(&mut conn, 6, TOPIC, Some(0)).await?;
    assert_eq!(first.schema.as_ref().map(|s| s.schema_data.as_slice()), Some(V0.as_bytes()));
    let unknown = get(&mut conn, 7, TOPIC, Some(42)).await?;
    assert_eq!(unknown.error_code, Some(ServerError::TopicNotFound as i32), "{unknown:?}");
    // A partition asks for its partitioned topic's history.
    let partition = get(&mut conn, 8, &format!("{TOPIC}-partition-3"), None).await?;
    assert_eq!(partition.schema_version, latest.schema_version);

    let malformed = get_or_create(&mut conn, 9, avro("{\"type\":\"record\"")).await?;
    assert_eq!(malformed.error_code, Some(ServerError::IncompatibleSchema as i32), "{malformed:?}");
    assert!(malformed.error_message.unwrap_or_default().contains("AVRO schema definition"));
    let unknown_type = get_or_create(&mut conn, 10, pb::Schema { schema_type: 77, ..avro(V0) }).await?;
    assert!(unknown_type.error_message.unwrap_or_default().contains("unknown schema type 77"));
    let incompatible =
        get_or_create(&mut conn, 11, avro(r#"{"type":"record","name":"W","fields":[{"name":"a","type":"string"}]}"#))
            .await?;
    assert_eq!(incompatible.error_code, Some(ServerError::IncompatibleSchema as i32), "{incompatible:?}");
    // Still serving.
    let latest = get(&mut conn, 12, TOPIC, None).await?;
    assert_eq!(latest.schema_version.as_deref(), Some(&1i64.to_be_bytes()[..]));
    Ok(())
}
