//! `magnetar-perf compact`: topic compaction throughput against a running broker. Publishes
//! `--messages` messages over `--keys` keys (batched, keys in rotation), then measures in the
//! same run:
//!
//! - the baseline: a plain reader reading the whole topic once (what compaction must read
//!   twice: its phase one finds each key's latest message, phase two writes them);
//! - the compaction itself, triggered and polled over the admin API (`PUT`/`GET
//!   .../compaction`): messages and keys per second, and its time over the baseline's;
//! - a `read_compacted` reader of the result: how many messages, how fast.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use magnetar_client::admin::AdminClient;
use magnetar_client::{Client, ClientConf, ProducerMessage, StartMessageId};
use tokio::time::Instant;

/// `magnetar-perf compact` flags.
#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// Topic to fill and compact (`my-topic` is `persistent://public/default/my-topic`); it
    /// should be new.
    #[arg(long)]
    topic: String,
    /// Messages published before compacting.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    messages: u64,
    /// Distinct keys, used in rotation.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    keys: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1024 * 1024))]
    size: u32,
    /// Most messages in one batch entry.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_max_messages: u32,
    /// Broker to publish to and read from [default: client.conf's brokerServiceUrl, else
    /// pulsar://127.0.0.1:6650].
    #[arg(short = 'u', long)]
    service_url: Option<String>,
    /// The broker's admin API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    admin_url: String,
    #[command(flatten)]
    connection: magnetar_client::ConnectionArgs,
    /// Print exactly one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn compact_benchmark(args: CompactArgs) -> anyhow::Result<()> {
    let (client, service_url) = crate::connect_client(&args.connection, args.service_url.as_deref()).await?;
    let topic = magnetar_client::TopicName::parse(&args.topic).context("--topic")?;
    let admin = AdminClient::new(&ClientConf { web_service_url: Some(args.admin_url.clone()), ..Default::default() })
        .await
        .context("--admin-url")?;

    // Fill the topic.
    let started = Instant::now();
    let mut producer = client
        .producer(topic.to_string())
        .batching(true)
        .batching_max_messages(args.batch_max_messages)
        .batching_max_publish_delay(Duration::from_millis(5))
        .create()
        .await?;
    let payload = Bytes::from(vec![b'v'; args.size as usize]);
    let mut receipts = std::collections::VecDeque::new();
    for i in 0..args.messages {
        let message = ProducerMessage::new(payload.clone()).key(format!("key-{}", i % args.keys));
        receipts.push_back(producer.send_async(message).await?);
        while receipts.len() > 10_000 {
            receipts.pop_front().expect("not empty").await?;
        }
    }
    for receipt in receipts {
        receipt.await?;
    }
    producer.close().await?;
    let publish_seconds = started.elapsed().as_secs_f64();

    // Baseline: one plain read of everything.
    let (read, read_seconds) = read_all(&client, &topic.to_string(), false).await?;
    if read != args.messages {
        bail!("the plain read got {read} messages of {}", args.messages);
    }

    // Compaction.
    let path =
        format!("/admin/v2/persistent/{}/{}/{}/compaction", topic.tenant(), topic.namespace(), topic.local_name());
    let started = Instant::now();
    let answer = admin.request(hyper::Method::PUT, &path, None).await?;
    if answer.status != 204 {
        bail!("PUT {path} answered {}: {}", answer.status, String::from_utf8_lossy(&answer.body));
    }
    loop {
        let status = admin.get(&path).await?;
        match status["status"].as_str() {
            Some("SUCCESS") => break,
            Some("ERROR") => bail!("compaction failed: {}", status["lastError"]),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let compact_seconds = started.elapsed().as_secs_f64();
    let (compacted, compacted_read_seconds) = read_all(&client, &topic.to_string(), true).await?;
    client.close();

    let figures = serde_json::json!({
        "service_url": service_url,
        "topic": topic.to_string(),
        "messages": args.messages,
        "keys": args.keys,
        "size": args.size,
        "batch_max_messages": args.batch_max_messages,
        "publish_seconds": publish_seconds,
        "baseline_plain_read_seconds": read_seconds,
        "baseline_plain_read_msgs_per_sec": args.messages as f64 / read_seconds,
        "compaction_seconds": compact_seconds,
        "compaction_msgs_per_sec": args.messages as f64 / compact_seconds,
        "compaction_keys_per_sec": args.keys as f64 / compact_seconds,
        "compaction_over_plain_read": compact_seconds / read_seconds,
        "compacted_read_messages": compacted,
        "compacted_read_seconds": compacted_read_seconds,
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "published {} messages over {} keys in {publish_seconds:.1} s\n\
             plain read (baseline): {read_seconds:.2} s, {:.0} msgs/s\n\
             compaction: {compact_seconds:.2} s, {:.0} msgs/s, {:.0} keys/s, {:.2}x the plain read's time\n\
             compacted read: {compacted} messages in {compacted_read_seconds:.3} s",
            args.messages,
            args.keys,
            args.messages as f64 / read_seconds,
            args.messages as f64 / compact_seconds,
            args.keys as f64 / compact_seconds,
            compact_seconds / read_seconds,
        );
    }
    Ok(())
}

/// Reads the topic from the earliest message to its end; the message count and seconds.
async fn read_all(client: &Client, topic: &str, compacted: bool) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut reader = client
        .reader(topic.to_owned())
        .start_message_id(StartMessageId::Earliest)
        .read_compacted(compacted)
        .receiver_queue_size(10_000)
        .create()
        .await?;
    let mut count = 0u64;
    while reader.has_message_available().await? {
        let message = reader.receive().await?;
        if !message.payload.is_empty() {
            count += 1;
        }
    }
    reader.close().await?;
    Ok((count, started.elapsed().as_secs_f64()))
}
