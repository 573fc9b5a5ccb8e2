//! `magnetar-perf consume`: receives through our client library from a running broker and
//! measures messages/s, MB/s and end-to-end latency (from the message's publish time, set
//! by its producer's clock, to its arrival here; the two clocks are the same machine's when
//! `magnetar-perf produce` runs beside it, otherwise their skew is part of the figure).
//!
//! Each of `--consumers` consumers runs in its own task on one shared [`Client`] with the
//! same subscription (so `--subscription-type Shared` or `Key_Shared` spreads the messages
//! over them), acknowledges every message, and with `--rate R` the consumers together take
//! at most `R` messages/s (each `R / N`).

use std::time::Duration;

use anyhow::{bail, Context};
use magnetar_client::{Consumer, InitialPosition, Message, SubscriptionType};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{quantile_ms, Sample};

/// `magnetar-perf consume` flags.
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Topic to consume (`my-topic` is `persistent://public/default/my-topic`).
    #[arg(long)]
    topic: String,
    /// Subscription name.
    #[arg(long, default_value = "magnetar-perf")]
    subscription: String,
    /// Exclusive, Shared, Failover or Key_Shared.
    #[arg(long, default_value = "Exclusive", value_parser = parse_subscription_type)]
    subscription_type: SubscriptionType,
    /// Consumers on the subscription, each its own task.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    consumers: u32,
    /// Messages per second over all consumers; 0 takes them as fast as they come.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long consumers keep receiving.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Where a new subscription starts: Latest or Earliest.
    #[arg(long, default_value = "Latest", value_parser = parse_position)]
    subscription_position: InitialPosition,
    /// Messages the broker may push ahead of each consumer.
    #[arg(long, default_value_t = magnetar_client::DEFAULT_RECEIVER_QUEUE_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    receiver_queue_size: u32,
    /// Broker to connect to: pulsar://host:6650, or pulsar+ssl://host:6651 for TLS
    /// [default: client.conf's brokerServiceUrl, else pulsar://127.0.0.1:6650].
    #[arg(short = 'u', long)]
    service_url: Option<String>,
    #[command(flatten)]
    connection: magnetar_client::ConnectionArgs,
    /// Print exactly one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn parse_subscription_type(text: &str) -> Result<SubscriptionType, String> {
    text.parse().map_err(|error: magnetar_client::ClientError| error.to_string())
}

fn parse_position(text: &str) -> Result<InitialPosition, String> {
    text.parse().map_err(|error: magnetar_client::ClientError| error.to_string())
}

/// What one consumer measured.
#[derive(Default)]
pub(crate) struct ConsumerRun {
    pub messages: u64,
    pub bytes: u64,
    /// One per message: when it arrived on the run's clock, and its end-to-end latency
    /// (millisecond resolution: publish times are ms).
    pub samples: Vec<Sample>,
}

pub async fn consume_benchmark(args: ConsumeArgs) -> anyhow::Result<()> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number, not {}", args.seconds);
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be zero or a positive number, not {}", args.rate);
    }
    let (client, service_url) = crate::connect_client(&args.connection, args.service_url.as_deref()).await?;
    let mut consumers = Vec::new();
    for index in 0..args.consumers {
        let consumer = client
            .consumer(&args.topic, &args.subscription)
            .subscription_type(args.subscription_type)
            .initial_position(args.subscription_position)
            .receiver_queue_size(args.receiver_queue_size)
            .consumer_name(format!("magnetar-perf-{index}"))
            .subscribe()
            .await
            .with_context(|| format!("subscribe consumer {index} to {}", args.topic))?;
        consumers.push(consumer);
    }
    let start = Instant::now();
    let stop = crate::cancel_at(start + Duration::from_secs_f64(args.seconds));
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(f64::from(args.consumers) / args.rate));
    let mut tasks = Vec::new();
    for consumer in consumers {
        tasks.push(tokio::spawn(run_consumer(consumer, start, interval, stop.clone(), |_, _| {})));
    }
    let mut total = ConsumerRun::default();
    for task in tasks {
        let run = task.await.context("consumer task")??;
        total.messages += run.messages;
        total.bytes += run.bytes;
        total.samples.extend(run.samples);
    }
    let elapsed = start.elapsed();
    print_figures(&args, &service_url, &total, elapsed)
}

/// Receives and acknowledges (one by one) every message until `stop`, with `interval` at most
/// one per interval from `clock` on, calling `on_message` with each message and its arrival;
/// then closes the consumer.
pub(crate) async fn run_consumer(
    mut consumer: Consumer,
    clock: Instant,
    interval: Option<Duration>,
    stop: CancellationToken,
    mut on_message: impl FnMut(&Message, Instant),
) -> anyhow::Result<ConsumerRun> {
    let mut run = ConsumerRun::default();
    let mut next = clock;
    loop {
        if let Some(interval) = interval {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.cancelled() => break,
            }
            next += interval;
        }
        let received = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            received = consumer.receive() => received,
        };
        let message = match received {
            Ok(message) => message,
            Err(error) if error.is_message_error() => continue,
            Err(error) => return Err(anyhow::Error::from(error).context("receive")),
        };
        let now = Instant::now();
        let latency_ms = magnetar_proto::clock::now_ms().saturating_sub(message.publish_time);
        run.samples.push(Sample::new(clock, now, Duration::from_millis(latency_ms)));
        run.messages += 1;
        run.bytes += message.payload.len() as u64;
        on_message(&message, now);
        consumer.ack(&message).await.context("acknowledge")?;
    }
    let _ = consumer.close().await;
    Ok(run)
}

fn print_figures(args: &ConsumeArgs, service_url: &str, run: &ConsumerRun, elapsed: Duration) -> anyhow::Result<()> {
    use std::io::Write;
    let seconds = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let msgs_per_sec = run.messages as f64 / seconds;
    let mb_per_sec = run.bytes as f64 / seconds / (1024.0 * 1024.0);
    let latencies = crate::sorted_latencies(&run.samples);
    let latency = |quantile| quantile_ms(&latencies, quantile);
    let mut out = std::io::stdout().lock();
    if args.json {
        let object = serde_json::json!({
            "msgs_per_sec": msgs_per_sec,
            "mb_per_sec": mb_per_sec,
            "e2e_p50_ms": latency(0.50),
            "e2e_p95_ms": latency(0.95),
            "e2e_p99_ms": latency(0.99),
            "e2e_p999_ms": latency(0.999),
            "e2e_max_ms": latency(1.0),
            "messages": run.messages,
            "bytes": run.bytes,
            "seconds": seconds,
            "topic": args.topic,
            "subscription": args.subscription,
            "subscription_type": args.subscription_type.as_str(),
            "consumers": args.consumers,
            "rate": args.rate,
            "service_url": service_url,
        });
        writeln!(out, "{object}")?;
        return Ok(());
    }
    writeln!(
        out,
        "consume {} on {} ({} subscription {}, {} consumers), {seconds:.1} s",
        args.topic, service_url, args.subscription_type, args.subscription, args.consumers
    )?;
    writeln!(out, "  {} messages, {msgs_per_sec:.0} msgs/s, {mb_per_sec:.2} MB/s", run.messages)?;
    writeln!(
        out,
        "  end-to-end latency ms: p50 {:.0}  p95 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
        latency(0.50),
        latency(0.95),
        latency(0.99),
        latency(0.999),
        latency(1.0)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: super::ConsumeArgs,
    }

    #[test]
    fn subscription_types_parse_with_pulsar_names() {
        let parsed =
            Wrapper::parse_from(["x", "--topic", "t", "--subscription-type", "Key_Shared", "--consumers", "3"]);
        assert_eq!(parsed.args.subscription_type, magnetar_client::SubscriptionType::KeyShared);
        assert_eq!(parsed.args.consumers, 3);
        assert!(Wrapper::try_parse_from(["x", "--topic", "t", "--subscription-type", "Round"]).is_err());
    }
}
