//! Bad input on the Pulsar port: garbage, an unknown command, an oversized frame and invalid
//! topic names each get a Pulsar error or a closed connection, and the broker keeps serving
//! everyone else.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use magnetar_proto::command;
use magnetar_proto::frame::{Frame, FrameCodec};
use magnetar_proto::pulsar::{base_command::Type, ServerError};
use magnetar_tests::{raw_receive, RawConn, Standalone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Conn = RawConn;

async fn connect(standalone: &Standalone) -> anyhow::Result<Conn> {
    magnetar_tests::raw_connect(standalone.pulsar_port, "bad-input-test").await
}

async fn receive(conn: &mut Conn) -> anyhow::Result<Frame> {
    raw_receive(conn).await
}

/// The broker still answers a fresh client.
async fn still_serving(standalone: &Standalone) -> anyhow::Result<()> {
    let mut conn = connect(standalone).await?;
    conn.send(Frame::simple(command::lookup("persistent://public/default/ok", 1, false))).await?;
    let answer = receive(&mut conn).await?;
    anyhow::ensure!(answer.command_type() == Some(Type::LookupResponse), "lookup answered {answer:?}");
    Ok(())
}

/// Reads until the peer closes; fails if it does not within 10 s.
async fn closed_by_peer(mut stream: TcpStream) -> anyhow::Result<()> {
    let mut sink = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut sink)).await {
            Err(_) => anyhow::bail!("connection still open after 10 s"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_and_the_broker_keeps_serving() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;

    // Garbage: an HTTP request on the Pulsar port reads as a frame of ~1.2 GB.
    let mut garbage = TcpStream::connect(("127.0.0.1", standalone.pulsar_port)).await?;
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    closed_by_peer(garbage).await?;
    still_serving(&standalone).await?;

    // An oversized frame header is refused before anything is buffered.
    let mut oversized = TcpStream::connect(("127.0.0.1", standalone.pulsar_port)).await?;
    oversized.write_all(&(64u32 * 1024 * 1024).to_be_bytes()).await?;
    oversized.write_all(&[0u8; 64]).await?;
    closed_by_peer(oversized).await?;
    still_serving(&standalone).await?;

    // An unknown command is answered with an error and the connection goes on.
    let mut conn = connect(&standalone).await?;
    let mut unknown = command::ping();
    unknown.command_type = 999;
    conn.send(Frame::simple(unknown)).await?;
    let answer = receive(&mut conn).await?;
    assert_eq!(answer.command_type(), Some(Type::Error), "unknown command answered {answer:?}");
    conn.send(Frame::simple(command::ping())).await?;
    assert_eq!(receive(&mut conn).await?.command_type(), Some(Type::Pong), "connection still usable");

    // Invalid topic names: lookup fails with InvalidTopicName, producer creation too.
    conn.send(Frame::simple(command::lookup("persistent://public/default/bad name", 2, false))).await?;
    let answer = receive(&mut conn).await?;
    let lookup = answer.command.lookup_topic_response.expect("lookup response");
    assert_eq!(lookup.error, Some(ServerError::InvalidTopicName as i32));
    conn.send(Frame::simple(command::producer("persistent://only-two/parts", 1, 3, None))).await?;
    let answer = receive(&mut conn).await?;
    let error = answer.command.error.expect("error response");
    assert_eq!((error.request_id, error.error), (3, ServerError::InvalidTopicName as i32));

    // A topic in a namespace that does not exist is not auto-created.
    conn.send(Frame::simple(command::producer("persistent://nobody/nowhere/t", 2, 4, None))).await?;
    let error = receive(&mut conn).await?.command.error.expect("error response");
    assert_eq!((error.request_id, error.error), (4, ServerError::TopicNotFound as i32));

    // Commands before CONNECT close the connection.
    let stream = TcpStream::connect(("127.0.0.1", standalone.pulsar_port)).await?;
    let mut early = Framed::new(stream, FrameCodec::default());
    early.send(Frame::simple(command::lookup("my-topic", 1, false))).await?;
    let answer = receive(&mut early).await?;
    assert_eq!(answer.command_type(), Some(Type::Error));
    assert!(tokio::time::timeout(Duration::from_secs(10), early.next()).await?.is_none(), "closed after the error");

    still_serving(&standalone).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_clusters_metrics_and_json_errors() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let address = format!("127.0.0.1:{}", standalone.http_port);
    let get = |path: &'static str| magnetar_tests::http_get(&address, path);
    let clusters = get("/admin/v2/clusters").await?;
    assert!(clusters.starts_with("HTTP/1.1 200"), "{clusters}");
    assert!(clusters.ends_with(r#"["standalone"]"#), "{clusters}");
    let metrics = get("/metrics").await?;
    assert!(metrics.contains("pulsar_broker_topics_count"), "{metrics}");
    let missing = get("/admin/v2/nothing-here").await?;
    assert!(missing.starts_with("HTTP/1.1 404") && missing.contains(r#""reason""#), "{missing}");
    Ok(())
}
