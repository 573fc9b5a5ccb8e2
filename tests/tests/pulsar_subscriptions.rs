//! Subscription types with the Rust `pulsar` crate (a client nobody here wrote) against a
//! real `magnetar standalone`, and bad input on the consumer side in raw frames: a cumulative
//! ack on Shared, a second Exclusive consumer, acks for ids never delivered, overlapping
//! STICKY ranges and a seek past the end each get Pulsar's answer and disturb nobody else.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{SinkExt, TryStreamExt};
use magnetar_proto::command;
use magnetar_proto::frame::Frame;
use magnetar_proto::pulsar::command_subscribe::{InitialPosition as PbInitial, SubType as PbSubType};
use magnetar_proto::pulsar::{self as pb, base_command::Type, ServerError};
use magnetar_tests::{raw_receive, RawConn, Standalone};
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, Pulsar, SubType, TokioExecutor};

type Client = Pulsar<TokioExecutor>;
type StringConsumer = Consumer<String, TokioExecutor>;

async fn client(standalone: &Standalone) -> anyhow::Result<Client> {
    Ok(Pulsar::builder(standalone.service_url(), TokioExecutor).build().await?)
}

async fn consumer(
    client: &Client,
    topic: &str,
    subscription: &str,
    sub_type: SubType,
    name: &str,
    queue: u32,
) -> anyhow::Result<StringConsumer> {
    Ok(client
        .consumer()
        .with_topic(topic)
        .with_subscription(subscription)
        .with_subscription_type(sub_type)
        .with_consumer_name(name)
        .with_batch_size(queue)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await?)
}

/// Publishes `count` messages `<prefix>-<i>`, each with key `key(i)` if given.
async fn produce(
    client: &Client,
    topic: &str,
    count: usize,
    prefix: &str,
    key: Option<&dyn Fn(usize) -> String>,
) -> anyhow::Result<()> {
    let mut producer = client.producer().with_topic(topic).build().await?;
    for i in 0..count {
        let mut message = producer.create_message().with_content(format!("{prefix}-{i}"));
        if let Some(key) = key {
            message = message.with_partition_key(key(i));
        }
        message.send_non_blocking().await?.await?;
    }
    Ok(())
}

/// The next message within `wait`, `None` if none comes.
async fn next_within(
    consumer: &mut StringConsumer,
    wait: Duration,
) -> anyhow::Result<Option<pulsar::consumer::Message<String>>> {
    match tokio::time::timeout(wait, consumer.try_next()).await {
        Err(_) => Ok(None),
        Ok(message) => Ok(message?),
    }
}

/// Receives from every consumer until `total` messages came or none came for 5 s; acks each.
/// Returns (consumer index, body, key) in arrival order per consumer.
async fn receive_all(consumers: &mut [StringConsumer], total: usize) -> anyhow::Result<Vec<(usize, String, String)>> {
    let mut received = Vec::new();
    let mut idle = Duration::ZERO;
    while received.len() < total && idle < Duration::from_secs(5) {
        let mut progressed = false;
        for (index, consumer) in consumers.iter_mut().enumerate() {
            while let Some(message) = next_within(consumer, Duration::from_millis(50)).await? {
                let body = message.deserialize()?;
                let key = message.key().unwrap_or_default();
                consumer.ack(&message).await?;
                received.push((index, body, key));
                progressed = true;
            }
        }
        idle = if progressed { Duration::ZERO } else { idle + Duration::from_millis(50) * consumers.len() as u32 };
    }
    Ok(received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_consumers_split_the_messages_and_lose_none() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let pulsar = client(&standalone).await?;
    let topic = "persistent://public/default/rust-shared";
    let mut consumers = vec![
        consumer(&pulsar, topic, "shared", SubType::Shared, "a", 10).await?,
        consumer(&pulsar, topic, "shared", SubType::Shared, "b", 10).await?,
    ];
    produce(&pulsar, topic, 100, "s", None).await?;
    let received = receive_all(&mut consumers, 100).await?;
    let bodies: BTreeSet<String> = received.iter().map(|(_, body, _)| body.clone()).collect();
    assert_eq!(received.len(), 100, "each message exactly once");
    assert_eq!(bodies, (0..100).map(|i| format!("s-{i}")).collect::<BTreeSet<_>>());
    for index in 0..2 {
        assert!(received.iter().any(|(c, _, _)| *c == index), "consumer {index} got messages");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_shared_consumers_keep_each_key_on_one_consumer_in_order() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let pulsar = client(&standalone).await?;
    let topic = "persistent://public/default/rust-key-shared";
    let mut consumers = vec![
        consumer(&pulsar, topic, "ks", SubType::KeyShared, "a", 10).await?,
        consumer(&pulsar, topic, "ks", SubType::KeyShared, "b", 10).await?,
    ];
    let key = |i: usize| format!("key-{}", i % 10);
    produce(&pulsar, topic, 200, "k", Some(&key)).await?;
    let received = receive_all(&mut consumers, 200).await?;
    assert_eq!(received.len(), 200);
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut sequences: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (index, body, key) in &received {
        assert_eq!(*owner.entry(key.clone()).or_insert(*index), *index, "{key} went to two consumers");
        let sequence: usize = body.trim_start_matches("k-").parse()?;
        sequences.entry(key.clone()).or_default().push(sequence);
    }
    for (key, sequence) in &sequences {
        assert_eq!(sequence.len(), 20);
        assert!(sequence.windows(2).all(|w| w[0] < w[1]), "{key} out of order: {sequence:?}");
    }
    assert_eq!(owner.values().collect::<BTreeSet<_>>().len(), 2, "keys spread over both consumers: {owner:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_standby_takes_over_when_the_active_consumer_closes() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let pulsar = client(&standalone).await?;
    let topic = "persistent://public/default/rust-failover";
    let mut active = consumer(&pulsar, topic, "fo", SubType::Failover, "first", 100).await?;
    let mut standby = consumer(&pulsar, topic, "fo", SubType::Failover, "second", 100).await?;
    produce(&pulsar, topic, 20, "f", None).await?;
    for i in 0..10 {
        let message = next_within(&mut active, Duration::from_secs(10))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no message {i}"))?;
        assert_eq!(message.deserialize()?, format!("f-{i}"));
        active.ack(&message).await?;
    }
    assert!(next_within(&mut standby, Duration::from_secs(1)).await?.is_none(), "standby gets nothing");
    active.close().await?;
    for i in 10..20 {
        let message = next_within(&mut standby, Duration::from_secs(10))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no message {i} after failover"))?;
        assert_eq!(message.deserialize()?, format!("f-{i}"), "the rest, in order");
        standby.ack(&message).await?;
    }
    assert!(next_within(&mut standby, Duration::from_secs(1)).await?.is_none(), "nothing acked comes again");
    Ok(())
}

type Conn = RawConn;

async fn raw_connect(standalone: &Standalone) -> anyhow::Result<Conn> {
    magnetar_tests::raw_connect(standalone.pulsar_port, "subscriptions-test").await
}

async fn receive(conn: &mut Conn) -> anyhow::Result<Frame> {
    raw_receive(conn).await
}

/// The next frame of `kind`, skipping others (messages, consumer changes).
async fn receive_kind(conn: &mut Conn, kind: Type) -> anyhow::Result<Frame> {
    loop {
        let frame = receive(conn).await?;
        if frame.command_type() == Some(kind) {
            return Ok(frame);
        }
        if frame.command_type() == Some(Type::Error) {
            anyhow::bail!("expected {kind:?}, got {frame:?}");
        }
    }
}

async fn raw_subscribe(
    conn: &mut Conn,
    topic: &str,
    subscription: &str,
    sub_type: PbSubType,
    consumer_id: u64,
    edit: impl FnOnce(&mut pb::CommandSubscribe),
) -> anyhow::Result<Frame> {
    let mut request = command::subscribe(topic, subscription, sub_type, consumer_id, consumer_id, PbInitial::Earliest);
    if let Some(subscribe) = request.subscribe.as_mut() {
        edit(subscribe);
    }
    conn.send(Frame::simple(request)).await?;
    loop {
        let frame = receive(conn).await?;
        if matches!(frame.command_type(), Some(Type::Success) | Some(Type::Error)) {
            return Ok(frame);
        }
    }
}

fn error_code(frame: &Frame) -> Option<ServerError> {
    frame.command.error.as_ref().and_then(|e| ServerError::try_from(e.error).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_side_bad_input_gets_pulsar_errors_and_disturbs_nobody() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let pulsar = client(&standalone).await?;
    let topic = "persistent://public/default/raw-consumer-bad-input";
    produce(&pulsar, topic, 5, "r", None).await?;
    let mut conn = raw_connect(&standalone).await?;

    // Shared consumer: cumulative acks are refused with NotAllowedError.
    let answer = raw_subscribe(&mut conn, topic, "shared", PbSubType::Shared, 1, |_| {}).await?;
    anyhow::ensure!(answer.command_type() == Some(Type::Success), "subscribe answered {answer:?}");
    // One permit: exactly one message comes until the next FLOW.
    conn.send(Frame::simple(command::flow(1, 1))).await?;
    let first = receive_kind(&mut conn, Type::Message).await?;
    let first_id = first.command.message.as_ref().map(|m| m.message_id.clone()).unwrap_or_default();
    let mut cumulative = command::ack(1, pb::command_ack::AckType::Cumulative, vec![first_id.clone()]);
    if let Some(ack) = cumulative.ack.as_mut() {
        ack.request_id = Some(77);
    }
    conn.send(Frame::simple(cumulative)).await?;
    let response = receive_kind(&mut conn, Type::AckResponse).await?;
    let ack_response = response.command.ack_response.clone().unwrap_or_default();
    assert_eq!(ack_response.request_id, Some(77));
    assert_eq!(ack_response.error, Some(ServerError::NotAllowedError as i32), "cumulative ack on Shared: {response:?}");

    // Acks for ids that are no entry of the topic are ignored.
    let bogus = vec![command::message_id(999_999, 0), command::message_id(first_id.ledger_id, 1_000_000)];
    conn.send(Frame::simple(command::ack(1, pb::command_ack::AckType::Individual, bogus))).await?;

    // A second Exclusive consumer, or another type on an Exclusive subscription: ConsumerBusy.
    let owner = raw_subscribe(&mut conn, topic, "excl", PbSubType::Exclusive, 2, |_| {}).await?;
    anyhow::ensure!(owner.command_type() == Some(Type::Success), "subscribe answered {owner:?}");
    let second = raw_subscribe(&mut conn, topic, "excl", PbSubType::Exclusive, 3, |_| {}).await?;
    assert_eq!(error_code(&second), Some(ServerError::ConsumerBusy), "{second:?}");
    let other_type = raw_subscribe(&mut conn, topic, "excl", PbSubType::Shared, 4, |_| {}).await?;
    assert_eq!(error_code(&other_type), Some(ServerError::ConsumerBusy), "{other_type:?}");

    // STICKY Key_Shared ranges overlapping another consumer's are refused.
    let sticky = |start: i32, end: i32| {
        move |request: &mut pb::CommandSubscribe| {
            request.key_shared_meta = Some(pb::KeySharedMeta {
                key_shared_mode: pb::KeySharedMode::Sticky as i32,
                hash_ranges: vec![pb::IntRange { start, end }],
                allow_out_of_order_delivery: None,
            });
        }
    };
    let left = raw_subscribe(&mut conn, topic, "sticky", PbSubType::KeyShared, 5, sticky(0, 30_000)).await?;
    anyhow::ensure!(left.command_type() == Some(Type::Success), "subscribe answered {left:?}");
    let overlapping =
        raw_subscribe(&mut conn, topic, "sticky", PbSubType::KeyShared, 6, sticky(20_000, 65_535)).await?;
    assert_eq!(error_code(&overlapping), Some(ServerError::ConsumerAssignError), "{overlapping:?}");

    // The Shared consumer still gets its other four messages, the bogus acks changed nothing.
    conn.send(Frame::simple(command::flow(1, 10))).await?;
    let mut delivered = BTreeSet::new();
    delivered.insert(first_id.entry_id);
    while delivered.len() < 5 {
        let frame = receive_kind(&mut conn, Type::Message).await?;
        if let Some(message) = frame.command.message.as_ref().filter(|m| m.consumer_id == 1) {
            delivered.insert(message.message_id.entry_id);
        }
    }

    // A seek past the end puts the subscription at the end: the consumer is closed, and
    // once subscribed again it gets only what is published afterwards.
    let seek = pb::BaseCommand {
        command_type: Type::Seek as i32,
        seek: Some(pb::CommandSeek {
            consumer_id: 2,
            request_id: 90,
            message_id: Some(command::message_id(i64::MAX as u64, i64::MAX as u64)),
            message_publish_time: None,
        }),
        ..Default::default()
    };
    conn.send(Frame::simple(seek)).await?;
    let closed = receive_kind(&mut conn, Type::CloseConsumer).await?;
    assert_eq!(closed.command.close_consumer.as_ref().map(|c| c.consumer_id), Some(2));
    let done = receive_kind(&mut conn, Type::Success).await?;
    assert_eq!(done.command.success.as_ref().map(|s| s.request_id), Some(90));
    let again = raw_subscribe(&mut conn, topic, "excl", PbSubType::Exclusive, 2, |_| {}).await?;
    anyhow::ensure!(again.command_type() == Some(Type::Success), "subscribe again answered {again:?}");
    conn.send(Frame::simple(command::flow(2, 10))).await?;
    produce(&pulsar, topic, 1, "after-seek", None).await?;
    loop {
        let frame = receive_kind(&mut conn, Type::Message).await?;
        if let Some(message) = frame.command.message.as_ref().filter(|m| m.consumer_id == 2) {
            let last = frame.payload.as_ref().map(|p| p.body()).unwrap_or_default();
            assert_eq!(&last[..], b"after-seek-0", "after a seek to the end only new messages come");
            assert!(message.message_id.entry_id >= 5);
            break;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_with_rollback_duration_starts_at_messages_published_within_it() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let pulsar = client(&standalone).await?;
    let topic = "persistent://public/default/raw-reader-rollback";
    produce(&pulsar, topic, 3, "old", None).await?;
    let mut conn = raw_connect(&standalone).await?;
    // Without a start id a non-durable subscription starts at its initial position (latest).
    let latest = raw_subscribe(&mut conn, topic, "reader-latest", PbSubType::Exclusive, 1, |request| {
        request.durable = Some(false);
        request.initial_position = Some(PbInitial::Latest as i32);
    })
    .await?;
    anyhow::ensure!(latest.command_type() == Some(Type::Success), "subscribe answered {latest:?}");
    let rollback = raw_subscribe(&mut conn, topic, "reader-rollback", PbSubType::Exclusive, 2, |request| {
        request.durable = Some(false);
        request.initial_position = Some(PbInitial::Latest as i32);
        request.start_message_rollback_duration_sec = Some(3600);
    })
    .await?;
    anyhow::ensure!(rollback.command_type() == Some(Type::Success), "subscribe answered {rollback:?}");
    conn.send(Frame::simple(command::flow(1, 10))).await?;
    conn.send(Frame::simple(command::flow(2, 10))).await?;
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        let frame = receive_kind(&mut conn, Type::Message).await?;
        let consumer_id = frame.command.message.as_ref().map(|m| m.consumer_id);
        assert_eq!(consumer_id, Some(2), "the reader at latest gets no old message");
        bodies.push(String::from_utf8(frame.payload.map(|p| p.body().to_vec()).unwrap_or_default())?);
    }
    assert_eq!(bodies, vec!["old-0", "old-1", "old-2"]);
    // Readers store no cursor: stats show them as non-durable, internal stats have no cursor.
    let stats: serde_json::Value = admin_stats(&standalone, "raw-reader-rollback").await?;
    let subscriptions = stats["subscriptions"].as_object().cloned().unwrap_or_default();
    assert!(subscriptions.values().all(|sub| sub["isDurable"] == false), "{stats}");
    let path = "/admin/v2/persistent/public/default/raw-reader-rollback/internalStats";
    let (_, internal) = magnetar_tests::http(standalone.http_port, "GET", path, None).await?;
    assert_eq!(internal["cursors"], serde_json::json!({}), "{internal}");
    Ok(())
}

/// GET the admin stats of a topic in public/default.
async fn admin_stats(standalone: &Standalone, topic: &str) -> anyhow::Result<serde_json::Value> {
    let path = format!("/admin/v2/persistent/public/default/{topic}/stats");
    let (status, stats) = magnetar_tests::http(standalone.http_port, "GET", &path, None).await?;
    anyhow::ensure!(status == 200, "stats answered {status}");
    Ok(stats)
}

/// The next ACTIVE_CONSUMER_CHANGE as (consumer id, active).
async fn active_change(conn: &mut Conn) -> anyhow::Result<(u64, bool)> {
    let frame = receive_kind(conn, Type::ActiveConsumerChange).await?;
    let change = frame.command.active_consumer_change.ok_or_else(|| anyhow::anyhow!("no body"))?;
    Ok((change.consumer_id, change.is_active.unwrap_or(false)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_tells_consumers_who_is_active_and_partitions_pick_by_index() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let pulsar = client(&standalone).await?;
    let topic = "persistent://public/default/raw-failover";
    produce(&pulsar, topic, 3, "f", None).await?;
    let mut first = raw_connect(&standalone).await?;
    let mut second = raw_connect(&standalone).await?;
    let name = |n: &'static str| move |r: &mut pb::CommandSubscribe| r.consumer_name = Some(n.to_owned());
    // Non-partitioned: the first to subscribe is active, whatever the names.
    raw_subscribe(&mut first, topic, "fo", PbSubType::Failover, 1, name("zed")).await?;
    assert_eq!(active_change(&mut first).await?, (1, true));
    raw_subscribe(&mut second, topic, "fo", PbSubType::Failover, 2, name("alpha")).await?;
    assert_eq!(active_change(&mut second).await?, (2, false));
    second.send(Frame::simple(command::flow(2, 10))).await?;
    first.send(Frame::simple(command::flow(1, 10))).await?;
    let message = receive_kind(&mut first, Type::Message).await?;
    let id = message.command.message.as_ref().map(|m| m.message_id.clone()).unwrap_or_default();
    first.send(Frame::simple(command::ack(1, pb::command_ack::AckType::Cumulative, vec![id.clone()]))).await?;

    // GET_LAST_MESSAGE_ID names the last entry and the subscription's mark-delete position.
    let mut mark_delete = None;
    for request_id in 100..200 {
        let request = pb::BaseCommand {
            command_type: Type::GetLastMessageId as i32,
            get_last_message_id: Some(pb::CommandGetLastMessageId { consumer_id: 1, request_id }),
            ..Default::default()
        };
        first.send(Frame::simple(request)).await?;
        let answer = receive_kind(&mut first, Type::GetLastMessageIdResponse).await?;
        let response = answer.command.get_last_message_id_response.unwrap_or_default();
        assert_eq!(response.last_message_id.entry_id, id.entry_id + 2, "three entries");
        mark_delete = response.consumer_mark_delete_position.map(|p| p.entry_id);
        if mark_delete == Some(id.entry_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mark_delete, Some(id.entry_id), "the cumulative ack moved the mark-delete position");

    // The active consumer leaves: the standby becomes active and gets the unacked rest.
    drop(first);
    assert_eq!(active_change(&mut second).await?, (2, true));
    let rest = receive_kind(&mut second, Type::Message).await?;
    assert_eq!(rest.command.message.map(|m| m.message_id.entry_id), Some(id.entry_id + 1));

    // A partition: consumers sorted by name, partition index modulo their count.
    let partition = "persistent://public/default/raw-failover-partition-1";
    let mut third = raw_connect(&standalone).await?;
    raw_subscribe(&mut third, partition, "fo", PbSubType::Failover, 3, name("b")).await?;
    assert_eq!(active_change(&mut third).await?, (3, true));
    raw_subscribe(&mut third, partition, "fo", PbSubType::Failover, 4, name("a")).await?;
    let mut states = BTreeMap::new();
    while states.len() < 2 {
        let (consumer_id, active) = active_change(&mut third).await?;
        states.insert(consumer_id, active);
    }
    assert_eq!(states, BTreeMap::from([(3, true), (4, false)]), "partition 1 of [a, b] is b");
    Ok(())
}

/// A terminated topic (admin `POST .../terminate`): the answer is the last message id, a new
/// producer gets TopicTerminatedError, and a consumer reads every message, then gets
/// REACHED_END_OF_TOPIC; terminating again answers the same id, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_topic_refuses_producers_and_tells_consumers_the_end() -> anyhow::Result<()> {
    let mut standalone = Standalone::start().await?;
    let pulsar = client(&standalone).await?;
    let topic = "persistent://public/default/terminated";
    produce(&pulsar, topic, 3, "t", None).await?;
    // A producer attached while the topic is terminated is told to go (CLOSE_PRODUCER).
    let mut attached = raw_connect(&standalone).await?;
    attached.send(Frame::simple(command::producer(topic, 9, 2, Some("attached".to_owned())))).await?;
    receive_kind(&mut attached, Type::ProducerSuccess).await?;
    let path = "/admin/v2/persistent/public/default/terminated/terminate";
    let (status, last) = magnetar_tests::http(standalone.http_port, "POST", path, None).await?;
    anyhow::ensure!(status == 200 && last["entryId"] == 2, "terminate answered {status} {last}");
    let closed = receive_kind(&mut attached, Type::CloseProducer).await?;
    anyhow::ensure!(closed.command.close_producer.map(|c| c.producer_id) == Some(9), "closed producer 9");

    let mut conn = raw_connect(&standalone).await?;
    conn.send(Frame::simple(command::producer(topic, 1, 1, Some("late".to_owned())))).await?;
    let refused = receive(&mut conn).await?;
    anyhow::ensure!(error_code(&refused) == Some(ServerError::TopicTerminatedError), "producer got {refused:?}");

    let answer = raw_subscribe(&mut conn, topic, "reader", PbSubType::Exclusive, 7, |_| {}).await?;
    anyhow::ensure!(answer.command_type() == Some(Type::Success), "subscribe answered {answer:?}");
    conn.send(Frame::simple(command::flow(7, 100))).await?;
    for _ in 0..3 {
        receive_kind(&mut conn, Type::Message).await?;
    }
    let end = receive_kind(&mut conn, Type::ReachedEndOfTopic).await?;
    anyhow::ensure!(end.command.reached_end_of_topic.map(|e| e.consumer_id) == Some(7), "end for consumer 7");

    standalone.restart().await?;
    let (status, again) = magnetar_tests::http(standalone.http_port, "POST", path, None).await?;
    anyhow::ensure!(status == 200 && again == last, "terminated again after a restart: {status} {again}");
    let mut conn = raw_connect(&standalone).await?;
    conn.send(Frame::simple(command::producer(topic, 1, 1, Some("later".to_owned())))).await?;
    let refused = receive(&mut conn).await?;
    anyhow::ensure!(error_code(&refused) == Some(ServerError::TopicTerminatedError), "after restart: {refused:?}");
    Ok(())
}
