//! The rest of the Pulsar protocol against `magnetar standalone`, with exact frames and with
//! the Rust `pulsar` crate (a client nobody here wrote): newer commands Magnetar does not
//! implement get a prompt ERROR carrying their own request id; CONNECTED carries the feature
//! flags; CONSUMER_STATS answers; WATCH_TOPIC_LIST reports a topic created later; a regex
//! consumer of the `pulsar` crate picks up a topic created after it subscribed; a
//! non-persistent topic works from the `pulsar` crate and stores nothing.

use std::time::Duration;

use futures::{SinkExt, TryStreamExt};
use magnetar_proto::command;
use magnetar_proto::frame::Frame;
use magnetar_proto::pulsar::{self as pb, base_command::Type, BaseCommand};
use magnetar_tests::{raw_receive, RawConn, Standalone};
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, Pulsar, SubType, TokioExecutor};

async fn connect(standalone: &Standalone) -> anyhow::Result<RawConn> {
    magnetar_tests::raw_connect(standalone.pulsar_port, "protocol-commands-test").await
}

/// The next frame that is not a PING (answered) or a connection-level notice.
async fn answer(conn: &mut RawConn) -> anyhow::Result<Frame> {
    loop {
        let frame = raw_receive(conn).await?;
        match frame.command_type() {
            Some(Type::Ping) => conn.send(Frame::simple(command::pong())).await?,
            _ => return Ok(frame),
        }
    }
}

fn request(command_type: Type, fill: impl FnOnce(&mut BaseCommand)) -> Frame {
    let mut base = BaseCommand { command_type: command_type as i32, ..Default::default() };
    fill(&mut base);
    Frame::simple(base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_commands_get_a_prompt_error_with_their_request_id_and_connected_has_feature_flags() -> anyhow::Result<()>
{
    let standalone = Standalone::start().await?;
    // CONNECTED tells what this broker supports.
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", standalone.pulsar_port)).await?;
    let mut conn = tokio_util::codec::Framed::new(stream, magnetar_proto::frame::FrameCodec::default());
    conn.send(Frame::simple(command::connect("flags-test", None, None))).await?;
    let connected = answer(&mut conn).await?;
    let flags = connected.command.connected.and_then(|c| c.feature_flags).expect("feature flags in CONNECTED");
    assert_eq!(flags.supports_topic_watchers, Some(true));
    assert_eq!(flags.supports_auth_refresh, Some(true));
    assert_eq!(flags.supports_partial_producer, Some(true));

    // Transactions, scalable topics, transaction-coordinator discovery: known to the codec,
    // not implemented, refused at once with the request's own id.
    let refused = [
        request(Type::TcClientConnectRequest, |b| {
            b.tc_client_connect_request =
                Some(Box::new(pb::CommandTcClientConnectRequest { request_id: 4101, ..Default::default() }));
        }),
        request(Type::NewTxn, |b| {
            b.new_txn = Some(Box::new(pb::CommandNewTxn { request_id: 4102, ..Default::default() }));
        }),
        request(Type::EndTxn, |b| {
            b.end_txn = Some(Box::new(pb::CommandEndTxn { request_id: 4103, ..Default::default() }));
        }),
        request(Type::ScalableTopicSubscribe, |b| {
            b.scalable_topic_subscribe =
                Some(Box::new(pb::CommandScalableTopicSubscribe { request_id: 4104, ..Default::default() }));
        }),
    ];
    for (frame, request_id) in refused.into_iter().zip(4101u64..) {
        let started = std::time::Instant::now();
        conn.send(frame).await?;
        let reply = answer(&mut conn).await?;
        let error = reply.command.error.expect("an ERROR");
        assert_eq!(error.request_id, request_id);
        assert!(error.message.contains("not supported"), "{}", error.message);
        assert!(started.elapsed() < Duration::from_secs(5), "answered at once, not by a client timeout");
    }
    // The connection still serves.
    conn.send(Frame::simple(command::lookup("persistent://public/default/after-errors", 9, false))).await?;
    assert_eq!(answer(&mut conn).await?.command_type(), Some(Type::LookupResponse));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_stats_and_topic_list_watchers_answer() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let mut conn = connect(&standalone).await?;
    let topic = "persistent://public/default/watched-a";
    let mut subscribe = command::subscribe(
        topic,
        "s",
        pb::command_subscribe::SubType::Exclusive,
        1,
        1,
        pb::command_subscribe::InitialPosition::Latest,
    );
    if let Some(body) = subscribe.subscribe.as_mut() {
        body.consumer_name = Some("stats-consumer".to_owned());
    }
    conn.send(Frame::simple(subscribe)).await?;
    assert_eq!(answer(&mut conn).await?.command_type(), Some(Type::Success));
    conn.send(Frame::simple(command::flow(1, 25))).await?;
    conn.send(request(Type::ConsumerStats, |b| {
        b.consumer_stats = Some(pb::CommandConsumerStats { request_id: 2, consumer_id: 1 });
    }))
    .await?;
    let stats = answer(&mut conn).await?.command.consumer_stats_response.expect("CONSUMER_STATS_RESPONSE");
    assert_eq!(stats.request_id, 2);
    assert_eq!(stats.consumer_name.as_deref(), Some("stats-consumer"));
    assert_eq!(stats.available_permits, Some(25));
    assert_eq!(stats.consumer_type.as_deref(), Some("Exclusive"));

    // A watcher over `watched-.*` hears of a topic created afterwards.
    conn.send(request(Type::WatchTopicList, |b| {
        b.watch_topic_list = Some(Box::new(pb::CommandWatchTopicList {
            request_id: 3,
            watcher_id: 7,
            namespace: "public/default".to_owned(),
            topics_pattern: "persistent://public/default/watched-.*".to_owned(),
            topics_hash: None,
        }));
    }))
    .await?;
    let success = answer(&mut conn).await?.command.watch_topic_list_success.expect("WATCH_TOPIC_LIST_SUCCESS");
    assert_eq!((success.request_id, success.watcher_id), (3, 7));
    assert_eq!(success.topic, vec![topic.to_owned()]);
    let mut other = connect(&standalone).await?;
    other.send(Frame::simple(command::producer("persistent://public/default/watched-b", 1, 1, None))).await?;
    other.send(Frame::simple(command::producer("persistent://public/default/unwatched", 2, 2, None))).await?;
    let update = answer(&mut conn).await?.command.watch_topic_update.expect("WATCH_TOPIC_UPDATE");
    assert_eq!(update.watcher_id, 7);
    assert_eq!(update.new_topics, vec!["persistent://public/default/watched-b".to_owned()]);
    assert!(update.deleted_topics.is_empty());
    // The hash is Pulsar's over the whole matching list.
    assert_eq!(
        update.topics_hash,
        magnetar_broker::protocol::topic_list::topics_hash(&[topic, "persistent://public/default/watched-b"])
    );
    conn.send(request(Type::WatchTopicListClose, |b| {
        b.watch_topic_list_close = Some(Box::new(pb::CommandWatchTopicListClose { request_id: 4, watcher_id: 7 }));
    }))
    .await?;
    assert_eq!(answer(&mut conn).await?.command.success.map(|s| s.request_id), Some(4));
    Ok(())
}

async fn pulsar_client(standalone: &Standalone) -> anyhow::Result<Pulsar<TokioExecutor>> {
    Ok(Pulsar::builder(standalone.service_url(), TokioExecutor).build().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_crate_regex_consumer_picks_up_a_topic_created_later() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let pulsar = pulsar_client(&standalone).await?;
    let mut first = pulsar.producer().with_topic("persistent://public/default/regex-one").build().await?;
    first.send_non_blocking("one".to_owned()).await?.await?;
    let mut consumer: Consumer<String, TokioExecutor> = pulsar
        .consumer()
        .with_topic_regex(regex::Regex::new("persistent://public/default/regex-.*")?)
        .with_topic_refresh(Duration::from_millis(500))
        .with_subscription("regex-sub")
        .with_subscription_type(SubType::Shared)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await?;
    let mut later = pulsar.producer().with_topic("persistent://public/default/regex-later").build().await?;
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !received.contains(&"later".to_owned()) && tokio::time::Instant::now() < deadline {
        if let Err(error) = later.send_non_blocking("later".to_owned()).await?.await {
            eprintln!("{}", standalone.log());
            anyhow::bail!("send failed: {error}");
        }
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), consumer.try_next()).await? {
            received.push(message.deserialize()?);
            consumer.ack(&message).await?;
        }
    }
    assert!(received.contains(&"one".to_owned()), "{received:?}");
    assert!(received.contains(&"later".to_owned()), "{received:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_crate_non_persistent_topic_delivers_and_stores_nothing() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let pulsar = pulsar_client(&standalone).await?;
    let topic = "non-persistent://public/default/np-rust";
    let mut consumer: Consumer<String, TokioExecutor> = pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription("np")
        .with_subscription_type(SubType::Exclusive)
        .build()
        .await?;
    let mut producer = pulsar.producer().with_topic(topic).build().await?;
    for i in 0..50 {
        producer.send_non_blocking(format!("np-{i}")).await?.await?;
    }
    for i in 0..50 {
        let message = tokio::time::timeout(Duration::from_secs(10), consumer.try_next())
            .await??
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        assert_eq!(message.deserialize()?, format!("np-{i}"));
    }
    // Nothing is in the persistent namespace listing, and stats count what went through.
    let (status, persistent) =
        magnetar_tests::http(standalone.http_port, "GET", "/admin/v2/persistent/public/default", None).await?;
    assert_eq!(status, 200);
    assert!(!persistent.to_string().contains("np-rust"), "{persistent}");
    let (status, stats) = magnetar_tests::http(
        standalone.http_port,
        "GET",
        "/admin/v2/non-persistent/public/default/np-rust/stats",
        None,
    )
    .await?;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["msgInCounter"], 50);
    assert_eq!(stats["subscriptions"]["np"]["msgOutCounter"], 50);
    Ok(())
}
