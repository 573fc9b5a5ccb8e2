//! `magnetar-perf produce`: publishes through our client library (`magnetar_client`) to a
//! running broker and measures messages/s, MB/s and publish latency (queueing the message to
//! its SEND_RECEIPT).
//!
//! Each of `--producers` producers runs in its own task on one shared [`Client`], keeps up to
//! `--max-pending` messages waiting for receipts, and groups up to `--batch-max-messages`
//! messages into one batch entry (1: every message its own entry). A second task per producer
//! awaits the receipts in send order (the broker answers in that order) and records each
//! message's latency.
//!
//! Pacing: with `--rate 0` producers send as fast as the pending window allows, and a
//! message's latency starts when it is handed to the client. With `--rate R` message `k` of
//! producer `i` (of `N`) is due at `start + (k * N + i) / R` seconds, so the producers
//! together send `R` messages/s, evenly interleaved; latency starts at the due time, not at
//! the moment the send actually happened. A producer that falls behind (a full window, a slow
//! broker) sends the overdue messages as soon as it can and their wait counts in their
//! latency: no coordinated omission. Producers wait for due times to within the OS's sleep
//! precision ([`wait_until`]), not tokio's whole milliseconds.
//!
//! It also reports the CPU time the server processes and this process spent while sending
//! (`--server-pid`, see `host.rs`) and, with `--disk-baseline` or `--disk-dir`, the disk's
//! 4 KiB fdatasync latency measured after the run.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use magnetar_client::schema::{JsonSchema, Schema, TypedProducer};
use magnetar_client::{ClientError, MessageId, Producer, ProducerMessage, SendReceipt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::host::{CpuUse, DiskBaseline, HostArgs};
use crate::{quantile_ms, Sample};

/// `magnetar-perf produce` flags.
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Topic to publish to (`my-topic` is `persistent://public/default/my-topic`).
    #[arg(long)]
    topic: String,
    /// Bytes per message.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=5 * 1024 * 1024))]
    size: u32,
    /// Messages per second over all producers; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long producers keep sending.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Producers, each its own task and producer on the topic.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    producers: u32,
    /// Most messages in one batch entry (1: no batching).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_max_messages: u32,
    /// Messages one producer keeps waiting for receipts (Pulsar's default is 1000).
    #[arg(long, default_value_t = magnetar_client::DEFAULT_MAX_PENDING_MESSAGES as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_pending: u32,
    /// Compression of every entry: NONE, LZ4, ZSTD, ZLIB or SNAPPY (the payloads are random bytes, so
    /// this measures the codec's cost more than its gain).
    #[arg(long, default_value = "NONE", value_parser = parse_compression)]
    compression: magnetar_client::CompressionType,
    /// Broker to connect to: pulsar://host:6650, or pulsar+ssl://host:6651 for TLS
    /// [default: client.conf's brokerServiceUrl, else pulsar://127.0.0.1:6650].
    #[arg(short = 'u', long)]
    service_url: Option<String>,
    #[command(flatten)]
    connection: magnetar_client::ConnectionArgs,
    /// Print exactly one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// `bytes` (the payload as is) or `json`: each message a record `{seq, sent_at_us, body}`
    /// of about --size bytes, encoded by a typed producer with a JSON schema (what a typed
    /// application pays: one serde encoding per message, the schema registered once).
    #[arg(long, default_value = "bytes", value_parser = ["bytes", "json"])]
    schema: String,
    #[command(flatten)]
    host: HostArgs,
}

/// The record `--schema json` sends.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct PerfRecord {
    seq: i64,
    sent_at_us: i64,
    body: String,
}

const PERF_RECORD: &str = r#"{"type":"record","name":"PerfRecord","namespace":"magnetar.perf","fields":[
    {"name":"seq","type":"long"},{"name":"sent_at_us","type":"long"},{"name":"body","type":"string"}]}"#;

/// What each message is: the same bytes, or a record encoded per message.
#[derive(Clone)]
pub(crate) enum Payloads {
    Raw(Bytes),
    Json { schema: JsonSchema<PerfRecord>, body: Arc<str>, start: Instant },
}

impl Payloads {
    /// `size` bytes, the same in every message.
    pub(crate) fn raw(size: u32) -> Payloads {
        Payloads::Raw(Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))
    }

    fn message(&self, seq: u64) -> Result<ProducerMessage, ClientError> {
        match self {
            Payloads::Raw(payload) => Ok(ProducerMessage::new(payload.clone())),
            Payloads::Json { schema, body, start } => {
                let record = PerfRecord {
                    seq: seq as i64,
                    sent_at_us: start.elapsed().as_micros() as i64,
                    body: body.to_string(),
                };
                schema.message(&record)
            }
        }
    }
}

fn parse_compression(text: &str) -> Result<magnetar_client::CompressionType, String> {
    text.parse().map_err(|error: ClientError| error.to_string())
}

/// What one producer measured.
#[derive(Default)]
pub(crate) struct ProducerRun {
    pub messages: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// One per stored message, in receipt order: its due time on the plan's clock and its
    /// publish latency.
    pub samples: Vec<Sample>,
    /// The lowest and the highest id stored (of a batch, the entry's id).
    pub ids: Option<(MessageId, MessageId)>,
}

impl ProducerRun {
    fn stored(&mut self, id: MessageId) {
        self.ids = Some(match self.ids {
            None => (id, id),
            Some((first, last)) => (first.min(id), last.max(id)),
        });
    }

    fn failed(&mut self, messages: u64, error: &ClientError) {
        self.errors += messages;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }
}

/// Everything one `produce` run measured.
struct ProduceFigures {
    messages: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// Publish latencies in microseconds, sorted.
    latencies_us: Vec<u32>,
}

impl ProduceFigures {
    fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_sec(&self, size: u32) -> f64 {
        self.messages as f64 * f64::from(size) / 1e6 / self.elapsed.as_secs_f64()
    }

    fn latency_ms(&self, quantile: f64) -> f64 {
        quantile_ms(&self.latencies_us, quantile)
    }
}

pub async fn produce_benchmark(args: ProduceArgs) -> anyhow::Result<()> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number, not {}", args.seconds);
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be 0 (as fast as possible) or a positive number of messages/s, not {}", args.rate);
    }
    check_batch_fits(args.batch_max_messages, args.max_pending)?;
    let (client, service_url) = crate::connect_client(&args.connection, args.service_url.as_deref()).await?;
    let start = Instant::now();
    let payloads = match args.schema.as_str() {
        "json" => {
            // The record's fields and JSON punctuation take about 60 bytes of --size.
            let body: String = "x".repeat((args.size as usize).saturating_sub(60).max(1));
            Payloads::Json { schema: JsonSchema::new(PERF_RECORD)?, body: body.into(), start }
        }
        _ => Payloads::raw(args.size),
    };
    let mut producers = Vec::with_capacity(args.producers as usize);
    for index in 0..args.producers {
        let builder = client
            .producer(args.topic.clone())
            .max_pending_messages(args.max_pending as usize)
            .compression(args.compression);
        let created = match &payloads {
            Payloads::Raw(_) => builder.create().await,
            Payloads::Json { schema, .. } => {
                builder.with_schema(schema.clone()).create().await.map(TypedProducer::into_inner)
            }
        };
        producers.push(created.with_context(|| format!("create producer {index} on {}", args.topic))?);
    }
    info!(topic = %args.topic, producers = args.producers, size = args.size, rate = args.rate, schema = %args.schema,
        "benchmark starting");

    let pacing = Pacing { rate: args.rate, producers: args.producers };
    let mut cpu = args.host.cpu_meter()?;
    let start = Instant::now();
    let stop = crate::cancel_at(start + Duration::from_secs_f64(args.seconds));
    let mut tasks = Vec::with_capacity(producers.len());
    for (index, producer) in producers.into_iter().enumerate() {
        let plan = SendPlan {
            index: index as u32,
            pacing,
            batch_max_messages: args.batch_max_messages as usize,
            max_pending: args.max_pending as usize,
            start,
            clock: start,
            stop: stop.clone(),
            limit: None,
        };
        tasks.push(tokio::spawn(run_producer(producer, plan, payloads.clone())));
    }
    let mut figures =
        ProduceFigures { messages: 0, errors: 0, first_error: None, elapsed: Duration::ZERO, latencies_us: Vec::new() };
    for task in tasks {
        let run = task.await.context("producer task")?;
        figures.messages += run.messages;
        figures.errors += run.errors;
        if figures.first_error.is_none() {
            figures.first_error = run.first_error;
        }
        figures.latencies_us.extend(run.samples.iter().map(|sample| sample.latency_us));
    }
    figures.elapsed = start.elapsed();
    figures.latencies_us.sort_unstable();
    let cpu = cpu.lap()?;
    client.close();
    let disk = match args.host.disk_dir(false) {
        Some(dir) => Some(DiskBaseline::measure(dir).await?),
        None => None,
    };

    print_figures(&args, &service_url, &figures, &cpu, disk.as_ref())?;
    if figures.messages == 0 {
        bail!("no message was stored{}", figures.first_error.map(|error| format!(": {error}")).unwrap_or_default());
    }
    Ok(())
}

/// A batch must fit in the producer's pending window.
pub(crate) fn check_batch_fits(batch_max_messages: u32, max_pending: u32) -> anyhow::Result<()> {
    if batch_max_messages > max_pending {
        bail!(
            "--batch-max-messages {batch_max_messages} exceeds --max-pending {max_pending}: a batch must fit in the \
             pending window"
        );
    }
    Ok(())
}

/// Waits until `at`, to within the OS's sleep precision (tens of microseconds). Tokio's timer
/// wakes on whole milliseconds: a paced producer waiting on it sends each message up to 1 ms
/// after it is due, and since latency counts from the due time, every paced figure would carry
/// about half a millisecond that is the benchmark's own. The last stretch is slept on a
/// blocking thread instead.
pub(crate) async fn wait_until(at: Instant) {
    let coarse = Duration::from_millis(2);
    if at.saturating_duration_since(Instant::now()) > coarse {
        tokio::time::sleep_until(at - coarse / 2).await;
    }
    let rest = at.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

/// When messages are due (see the module doc).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    /// Messages/s over all producers; 0: unpaced.
    pub rate: f64,
    pub producers: u32,
}

impl Pacing {
    /// When message `k` of producer `index` is due; `None` when unpaced.
    pub(crate) fn due(&self, start: Instant, index: u32, k: u64) -> Option<Instant> {
        if self.rate == 0.0 {
            return None;
        }
        let slot = k as f64 * f64::from(self.producers) + f64::from(index);
        Some(start + Duration::from_secs_f64(slot / self.rate))
    }
}

/// One sent entry: its receipt and when each of its messages was due.
struct InFlight {
    receipt: SendReceipt,
    due: Vec<Instant>,
}

/// How one producer sends.
#[derive(Debug, Clone)]
pub(crate) struct SendPlan {
    /// This producer's place among `pacing.producers`.
    pub index: u32,
    pub pacing: Pacing,
    pub batch_max_messages: usize,
    /// The producer's window (its max pending messages).
    pub max_pending: usize,
    /// When the first messages are due.
    pub start: Instant,
    /// The origin of the samples' times.
    pub clock: Instant,
    /// Sending stops once this is cancelled...
    pub stop: CancellationToken,
    /// ... or after this many messages.
    pub limit: Option<u64>,
}

/// Sends until `plan.stop` (or `plan.limit`), then waits for the receipts still due and closes
/// the producer.
pub(crate) async fn run_producer(mut producer: Producer, plan: SendPlan, payloads: Payloads) -> ProducerRun {
    // At most `max_pending` messages wait for receipts (the producer's window), so this queue
    // never holds more entries than that: sends wait on the window, not on the queue.
    let (in_flight, mut receipts) = mpsc::channel::<InFlight>(plan.max_pending);
    let clock = plan.clock;
    let collector = tokio::spawn(async move {
        let mut run = ProducerRun::default();
        while let Some(InFlight { receipt, due }) = receipts.recv().await {
            match receipt.await {
                Ok(id) => {
                    let now = Instant::now();
                    run.messages += due.len() as u64;
                    run.stored(id);
                    run.samples.extend(due.iter().map(|due| Sample::new(clock, *due, now - *due)));
                }
                Err(error) => run.failed(due.len() as u64, &error),
            }
        }
        run
    });

    let mut send_error = None;
    let mut next = 0u64;
    let limit = plan.limit.unwrap_or(u64::MAX);
    while next < limit && !plan.stop.is_cancelled() {
        let now = Instant::now();
        // The messages of the next entry: every due one up to the batch size (unpaced: a full
        // batch, due now).
        let mut due = Vec::with_capacity(plan.batch_max_messages);
        while due.len() < plan.batch_max_messages && next < limit {
            match plan.pacing.due(plan.start, plan.index, next) {
                None => due.push(now),
                Some(at) if at <= now => due.push(at),
                Some(_) => break,
            }
            next += 1;
        }
        if due.is_empty() {
            let Some(at) = plan.pacing.due(plan.start, plan.index, next) else { continue };
            tokio::select! {
                () = wait_until(at) => continue,
                _ = plan.stop.cancelled() => break,
            }
        }
        let first = next - due.len() as u64;
        let messages: Result<Vec<ProducerMessage>, ClientError> =
            (first..next).map(|seq| payloads.message(seq)).collect();
        let sent = match messages {
            Ok(mut messages) if plan.batch_max_messages == 1 => match messages.pop() {
                Some(message) => producer.send_async(message).await,
                None => continue,
            },
            Ok(messages) => producer.send_batch_async(messages).await,
            Err(error) => Err(error),
        };
        match sent {
            Ok(receipt) => {
                if in_flight.send(InFlight { receipt, due }).await.is_err() {
                    break;
                }
            }
            Err(error) => {
                send_error = Some((due.len() as u64, error));
                break;
            }
        }
    }
    drop(in_flight);
    let mut run = collector.await.unwrap_or_else(|error| {
        let mut run = ProducerRun::default();
        run.errors += 1;
        run.first_error = Some(format!("receipt task: {error}"));
        run
    });
    if let Some((messages, error)) = send_error {
        run.failed(messages, &error);
    }
    if let Err(error) = producer.close().await {
        if run.first_error.is_none() {
            run.first_error = Some(format!("close the producer: {error}"));
        }
    }
    run
}

fn print_figures(
    args: &ProduceArgs,
    service_url: &str,
    figures: &ProduceFigures,
    cpu: &CpuUse,
    disk: Option<&DiskBaseline>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut object = serde_json::json!({
            "msgs_per_sec": figures.msgs_per_sec(),
            "mb_per_sec": figures.mb_per_sec(args.size),
            "p50_ms": figures.latency_ms(0.50),
            "p99_ms": figures.latency_ms(0.99),
            "p999_ms": figures.latency_ms(0.999),
            "max_ms": figures.latency_ms(1.0),
            "messages": figures.messages,
            "errors": figures.errors,
            "first_error": figures.first_error,
            "seconds": figures.elapsed.as_secs_f64(),
            "topic": args.topic,
            "size": args.size,
            "schema": args.schema,
            "rate": args.rate,
            "producers": args.producers,
            "batch_max_messages": args.batch_max_messages,
            "max_pending": args.max_pending,
            "compression": args.compression.as_str(),
            "service_url": service_url,
        });
        if let Some(fields) = object.as_object_mut() {
            fields.extend(cpu.json_fields(figures.messages, None));
            if let Some(disk) = disk {
                fields.extend(disk.json_fields(figures.latency_ms(0.50), figures.latency_ms(0.99)));
            }
        }
        writeln!(out, "{object}")?;
        return Ok(());
    }
    let rate = if args.rate == 0.0 { "unpaced".to_owned() } else { format!("{} msgs/s target", args.rate) };
    writeln!(
        out,
        "produce {} on {}: {} producers, {} B messages, batches of up to {}, {} pending per producer, {rate}, {:.1} s",
        args.topic,
        service_url,
        args.producers,
        args.size,
        args.batch_max_messages,
        args.max_pending,
        figures.elapsed.as_secs_f64()
    )?;
    writeln!(
        out,
        "msgs/s      {:>12.0}   ({} messages, {} errors)",
        figures.msgs_per_sec(),
        figures.messages,
        figures.errors
    )?;
    writeln!(out, "MB/s        {:>12.2}", figures.mb_per_sec(args.size))?;
    writeln!(
        out,
        "latency ms  p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}   (send to receipt{})",
        figures.latency_ms(0.50),
        figures.latency_ms(0.99),
        figures.latency_ms(0.999),
        figures.latency_ms(1.0),
        if args.rate == 0.0 { "" } else { ", from the intended send time" }
    )?;
    cpu.write_text(&mut out, "", figures.messages, None)?;
    if let Some(disk) = disk {
        disk.write_text(&mut out, figures.latency_ms(0.50))?;
    }
    if let Some(error) = &figures.first_error {
        writeln!(out, "first error: {error}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_producers_interleave_at_the_aggregate_rate() {
        let start = Instant::now();
        let pacing = Pacing { rate: 1000.0, producers: 4 };
        // 1000 msgs/s over 4 producers: producer 1's k-th message at (4k + 1) ms.
        assert_eq!(pacing.due(start, 1, 0), Some(start + Duration::from_millis(1)));
        assert_eq!(pacing.due(start, 1, 10), Some(start + Duration::from_millis(41)));
        assert_eq!(pacing.due(start, 3, 2), Some(start + Duration::from_millis(11)));
        assert_eq!(Pacing { rate: 0.0, producers: 4 }.due(start, 1, 10), None);
    }
}
