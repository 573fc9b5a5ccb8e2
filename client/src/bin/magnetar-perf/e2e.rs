//! `magnetar-perf e2e`: producers and consumers at the same time against a running broker.
//!
//! Topics: `--topics 1` uses `--topic` itself; `--topics M` uses `T-0` .. `T-{M-1}`. Each topic
//! has `--producers` producers and `--subscriptions` subscriptions `sub-0` .. `sub-{N-1}`, each
//! with `--consumers` consumers. `--rate` is the total over all topics and producers, paced as
//! `produce` paces (no coordinated omission: a message's publish latency runs from when it was
//! due); 0 is full speed.
//!
//! Producers and consumers each use a client (connection) of their own.
//!
//! Order: the subscriptions are created first (at Latest, then moved past anything already
//! stored, so that one an earlier run left behind starts empty; their consumers are closed
//! again), then the producers; then the consumers subscribe, and then the producers start.
//! After `--warmup-seconds` the measured window of `--seconds` opens; every figure counts only
//! what happened inside it:
//!
//! - published: messages whose SEND_RECEIPT arrived in the window (msgs/s, MB/s; MB = 10^6
//!   bytes); publish latency (due time to receipt) of the messages due in the window;
//! - consumed: messages each subscription received in the window (consumers acknowledge
//!   every message, one by one); `keep_up` of a subscription is that count over the messages
//!   published to its topic in the window (about 1 when it keeps up: the window's two edges
//!   are each off by the messages of a millisecond or so); end-to-end latency (the message's
//!   publish time to its arrival, millisecond resolution) of the messages received in it;
//! - CPU (see `host.rs`): the server processes' and this process's CPU time in the window,
//!   and the server's microseconds per published and per delivered message.
//!
//! `--backlog K` (catch-up): after the subscriptions exist, and before any consumer is
//! connected, every topic gets K messages at full speed (its producers share them). Then the
//! consumers subscribe and read; the catch-up of a subscription ends when it has received all
//! of its topic's backlog messages (known by their ids), and the catch-up as a whole when every
//! subscription has (or after `--catch-up-timeout`). During it the producers publish at
//! `--rate`; with `--rate 0` they do not publish during the catch-up (at full speed they would
//! race the readers and the catch-up might never end) and start, at full speed, when it ends.
//! The warmup and the measured window follow the catch-up, so the run reports both.
//!
//! Afterwards (not during the load, which it would disturb) the disk baseline times 2000 4 KiB
//! write + fdatasync steps in `--disk-dir`, as a journal reusing its file (see
//! `crate::journal_fdatasync_latencies`), and expresses the publish latency in fdatasyncs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use magnetar_client::{Client, Consumer, InitialPosition, Message, Producer, SubscriptionType};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::consume::{parse_subscription_type, run_consumer, ConsumerRun};
use crate::host::{CpuUse, DiskBaseline, HostArgs};
use crate::produce::{check_batch_fits, run_producer, Pacing, Payloads, ProducerRun, SendPlan};
use crate::{non_negative_number, positive_number, quantile_ms, sorted_latencies, Sample};

/// Subscribes and producer creations under way at once while setting up.
const SETUP_CONCURRENCY: usize = 32;
/// Most subscriptions the figures list one by one (more: only min, mean and max).
const LISTED_SUBSCRIPTIONS: usize = 16;
/// Most producers, and most consumers, of one run.
const MAX_CLIENTS: u64 = 100_000;

/// `magnetar-perf e2e` flags.
#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Topic (`my-topic` is `persistent://public/default/my-topic`); with --topics M > 1 the
    /// topics are T-0 .. T-{M-1}.
    #[arg(long, default_value = "perf-e2e")]
    topic: String,
    /// Topics, each with its own producers and subscriptions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    topics: u32,
    /// Producers per topic.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    producers: u32,
    /// Subscriptions per topic, named sub-0 .. sub-{N-1}.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    subscriptions: u32,
    /// Consumers per subscription, each its own task.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    consumers: u32,
    /// Exclusive, Shared, Failover or Key_Shared.
    #[arg(long, default_value = "Exclusive", value_parser = parse_subscription_type)]
    subscription_type: SubscriptionType,
    /// Bytes per message.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=5 * 1024 * 1024))]
    size: u32,
    /// Messages per second over all topics and producers (each topic gets an even share);
    /// 0: as fast as possible.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_number)]
    rate: f64,
    /// Length of the measured window.
    #[arg(long, default_value_t = 10.0, value_parser = positive_number)]
    seconds: f64,
    /// Load before the measured window opens (not counted).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_number)]
    warmup_seconds: f64,
    /// Most messages in one batch entry (1: no batching).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_max_messages: u32,
    /// Messages one producer keeps waiting for receipts.
    #[arg(long, default_value_t = magnetar_client::DEFAULT_MAX_PENDING_MESSAGES as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_pending: u32,
    /// Messages the broker may push ahead of each consumer.
    #[arg(long, default_value_t = magnetar_client::DEFAULT_RECEIVER_QUEUE_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    receiver_queue_size: u32,
    /// Catch-up mode: messages published to each topic, at full speed, before the consumers
    /// connect; the run then measures how fast each subscription reads them, while the
    /// producers publish at --rate (--rate 0: they do not publish during the catch-up and start
    /// at full speed when it ends). The warmup and the measured window follow the catch-up.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    backlog: u64,
    /// Longest the catch-up may take; the run goes on after it either way.
    #[arg(long, default_value_t = 300.0, value_parser = positive_number)]
    catch_up_timeout: f64,
    /// Broker to connect to: pulsar://host:6650, or pulsar+ssl://host:6651 for TLS
    /// [default: client.conf's brokerServiceUrl, else pulsar://127.0.0.1:6650].
    #[arg(short = 'u', long)]
    service_url: Option<String>,
    #[command(flatten)]
    connection: magnetar_client::ConnectionArgs,
    #[command(flatten)]
    host: HostArgs,
    /// Print exactly one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl E2eArgs {
    /// Topic `index`: --topic itself when there is one.
    fn topic_name(&self, index: usize) -> String {
        if self.topics == 1 {
            self.topic.clone()
        } else {
            format!("{}-{index}", self.topic)
        }
    }

    fn topic_names(&self) -> Vec<String> {
        (0..self.topics as usize).map(|index| self.topic_name(index)).collect()
    }

    /// Subscriptions over all topics; subscription `s` is `sub-{s % N}` of topic `s / N`.
    fn subscription_count(&self) -> usize {
        self.topics as usize * self.subscriptions as usize
    }

    fn subscription_name(&self, subscription: usize) -> String {
        format!("sub-{}", subscription % self.subscriptions as usize)
    }

    fn topic_of(&self, subscription: usize) -> usize {
        subscription / self.subscriptions as usize
    }

    fn check(&self) -> anyhow::Result<()> {
        check_batch_fits(self.batch_max_messages, self.max_pending)?;
        if self.subscription_type == SubscriptionType::Exclusive && self.consumers > 1 {
            bail!(
                "--subscription-type Exclusive takes one consumer per subscription, not {}: use Shared, Failover or \
                 Key_Shared",
                self.consumers
            );
        }
        let producers = u64::from(self.topics) * u64::from(self.producers);
        let consumers = self.subscription_count() as u64 * u64::from(self.consumers);
        if producers > MAX_CLIENTS || consumers > MAX_CLIENTS {
            bail!("{producers} producers and {consumers} consumers: at most {MAX_CLIENTS} of each");
        }
        Ok(())
    }
}

pub async fn e2e_benchmark(args: E2eArgs) -> anyhow::Result<()> {
    args.check()?;
    // Producers and consumers each have a client (a connection) of their own, as separate
    // applications would: the consumers' reads do not queue ahead of the producers' receipts.
    let (client, service_url) = crate::connect_client(&args.connection, args.service_url.as_deref()).await?;
    let (consumer_client, _) = crate::connect_client(&args.connection, args.service_url.as_deref()).await?;
    let topics = args.topic_names();
    let payloads = Payloads::raw(args.size);
    let clock = Instant::now();
    let mut cpu = args.host.cpu_meter()?;

    info!(topics = topics.len(), subscriptions = args.subscription_count(), "creating the subscriptions");
    create_subscriptions(&consumer_client, &args, &topics).await?;
    let fill =
        if args.backlog > 0 { Some(fill_backlog(&client, &args, &topics, &payloads, clock).await?) } else { None };
    let producers = create_producers(&client, &args, &topics).await?;
    let catch_up = fill.as_ref().map(|fill| Arc::new(CatchUp::new(&args, fill)));

    // The consumers subscribe, then the producers start, except during a catch-up with
    // --rate 0 (they start when it ends).
    let stop_producers = CancellationToken::new();
    let stop_consumers = CancellationToken::new();
    let consumers_start = Instant::now();
    cpu.lap()?;
    info!(backlog = args.backlog, "subscribing the consumers and starting");
    let consumer_tasks =
        subscribe_consumers(&consumer_client, &args, &topics, clock, &stop_consumers, catch_up.clone()).await?;
    let subscribe_seconds = consumers_start.elapsed().as_secs_f64();
    let mut waiting_producers = Some(producers);
    let mut producer_tasks = Vec::new();
    if catch_up.is_none() || args.rate > 0.0 {
        producer_tasks = spawn_producers(&args, waiting_producers.take(), &payloads, clock, &stop_producers);
    }

    let mut catch_up_phase = None;
    if let Some(tracker) = &catch_up {
        let finished =
            tokio::time::timeout(Duration::from_secs_f64(args.catch_up_timeout), tracker.wait()).await.is_ok();
        if !finished {
            warn!(timeout = args.catch_up_timeout, "the subscriptions did not catch up in time: going on");
        }
        let window = Window::new(clock, consumers_start, Instant::now());
        catch_up_phase = Some((window, cpu.lap()?, finished));
    }
    producer_tasks.extend(spawn_producers(&args, waiting_producers.take(), &payloads, clock, &stop_producers));

    tokio::time::sleep(Duration::from_secs_f64(args.warmup_seconds)).await;
    cpu.lap()?;
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let window = Window::new(clock, window_start, Instant::now());
    let window_cpu = cpu.lap()?;
    stop_producers.cancel();
    stop_consumers.cancel();

    let mut producer_runs = Vec::with_capacity(producer_tasks.len());
    for task in producer_tasks {
        producer_runs.push(task.await.context("producer task")?);
    }
    let mut consumer_runs = Vec::with_capacity(consumer_tasks.len());
    for task in consumer_tasks {
        consumer_runs.push(task.await.context("consumer task")??);
    }
    client.close();
    consumer_client.close();
    let runs = Runs { args: &args, producers: producer_runs, consumers: consumer_runs };
    let steady = runs.figures(&window, window_cpu);
    let catch_up = match (catch_up_phase, &catch_up, fill) {
        (Some((window, cpu, finished)), Some(tracker), Some(fill)) => {
            Some(CatchUpFigures::new(&runs, &window, cpu, finished, tracker, consumers_start, fill))
        }
        _ => None,
    };
    let disk = match args.host.disk_dir(true) {
        Some(dir) => {
            info!(dir = %dir.display(), "disk baseline");
            Some(DiskBaseline::measure(dir).await?)
        }
        None => None,
    };
    let report = Report { args: &args, service_url: &service_url, steady, catch_up, disk, subscribe_seconds };
    report.print()?;
    if report.steady.published == 0 {
        bail!(
            "no message was published in the measured window{}",
            report.steady.first_error.as_ref().map(|error| format!(": {error}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Creates every subscription at Latest, moves it past anything stored before (a subscription
/// an earlier run left behind starts empty too), and closes its consumer: the subscription
/// stays and retains what is published from now on.
async fn create_subscriptions(client: &Client, args: &E2eArgs, topics: &[String]) -> anyhow::Result<()> {
    let now_ms = magnetar_proto::clock::now_ms();
    futures::stream::iter(0..args.subscription_count())
        .map(|subscription| async move {
            let topic = &topics[args.topic_of(subscription)];
            let name = args.subscription_name(subscription);
            let mut consumer = subscribe(client, args, topic, &name, 0).await?;
            consumer.seek_by_time(now_ms).await.with_context(|| format!("move {name} of {topic} to its end"))?;
            consumer.close().await.with_context(|| format!("close the first consumer of {name} on {topic}"))
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}

async fn subscribe(
    client: &Client,
    args: &E2eArgs,
    topic: &str,
    subscription: &str,
    index: u32,
) -> anyhow::Result<Consumer> {
    client
        .consumer(topic, subscription)
        .subscription_type(args.subscription_type)
        .initial_position(InitialPosition::Latest)
        .receiver_queue_size(args.receiver_queue_size)
        .consumer_name(format!("magnetar-perf-{index}"))
        .subscribe()
        .await
        .with_context(|| format!("subscribe consumer {index} of {subscription} to {topic}"))
}

/// The producers of every topic, topic by topic: producer `i` is of topic `i / P`.
async fn create_producers(client: &Client, args: &E2eArgs, topics: &[String]) -> anyhow::Result<Vec<Producer>> {
    futures::stream::iter(0..topics.len() * args.producers as usize)
        .map(|index| {
            let topic = &topics[index / args.producers as usize];
            async move {
                client
                    .producer(topic.clone())
                    .max_pending_messages(args.max_pending as usize)
                    .create()
                    .await
                    .with_context(|| format!("create producer {index} on {topic}"))
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}

/// Starts `producers` (none: nothing) at --rate, due from now on.
fn spawn_producers(
    args: &E2eArgs,
    producers: Option<Vec<Producer>>,
    payloads: &Payloads,
    clock: Instant,
    stop: &CancellationToken,
) -> Vec<JoinHandle<ProducerRun>> {
    let producers = producers.unwrap_or_default();
    let pacing = Pacing { rate: args.rate, producers: producers.len() as u32 };
    let start = Instant::now();
    let plan = |index: usize| SendPlan {
        index: index as u32,
        pacing,
        batch_max_messages: args.batch_max_messages as usize,
        max_pending: args.max_pending as usize,
        start,
        clock,
        stop: stop.clone(),
        limit: None,
    };
    producers
        .into_iter()
        .enumerate()
        .map(|(index, producer)| tokio::spawn(run_producer(producer, plan(index), payloads.clone())))
        .collect()
}

/// Subscribes every consumer and starts it receiving until `stop`; each task answers with its
/// subscription and what it measured.
async fn subscribe_consumers(
    client: &Client,
    args: &E2eArgs,
    topics: &[String],
    clock: Instant,
    stop: &CancellationToken,
    catch_up: Option<Arc<CatchUp>>,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<(usize, ConsumerRun)>>>> {
    let consumers_per_subscription = args.consumers as usize;
    futures::stream::iter(0..args.subscription_count() * consumers_per_subscription)
        .map(|index| {
            let subscription = index / consumers_per_subscription;
            let topic = args.topic_of(subscription);
            let name = args.subscription_name(subscription);
            let catch_up = catch_up.clone();
            async move {
                let consumer =
                    subscribe(client, args, &topics[topic], &name, (index % consumers_per_subscription) as u32).await?;
                let on_message = move |message: &Message, now: Instant| {
                    if let Some(catch_up) = &catch_up {
                        catch_up.received(subscription, topic, message, now);
                    }
                };
                let run = run_consumer(consumer, clock, None, stop.clone(), on_message);
                Ok::<_, anyhow::Error>(tokio::spawn(async move { run.await.map(|run| (subscription, run)) }))
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}

/// What the backlog fill stored.
struct Fill {
    /// Per topic: how many messages, and the first and last entry (ledger, entry) holding them.
    topics: Vec<(u64, Option<((u64, u64), (u64, u64))>)>,
    seconds: f64,
    errors: u64,
}

/// Publishes --backlog messages to every topic at full speed, its producers sharing them.
async fn fill_backlog(
    client: &Client,
    args: &E2eArgs,
    topics: &[String],
    payloads: &Payloads,
    clock: Instant,
) -> anyhow::Result<Fill> {
    let producers = create_producers(client, args, topics).await?;
    info!(messages = args.backlog, topics = topics.len(), "publishing the backlog");
    let per_topic = args.producers as usize;
    let share = |index: usize| {
        let place = (index % per_topic) as u64;
        args.backlog / per_topic as u64 + u64::from(place < args.backlog % per_topic as u64)
    };
    let start = Instant::now();
    let stop = CancellationToken::new();
    let tasks: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(index, producer)| {
            let plan = SendPlan {
                index: index as u32,
                pacing: Pacing { rate: 0.0, producers: 1 },
                batch_max_messages: args.batch_max_messages as usize,
                max_pending: args.max_pending as usize,
                start,
                clock,
                stop: stop.clone(),
                limit: Some(share(index)),
            };
            tokio::spawn(run_producer(producer, plan, payloads.clone()))
        })
        .collect();
    let mut fill = Fill { topics: vec![(0, None); topics.len()], seconds: 0.0, errors: 0 };
    for (index, task) in tasks.into_iter().enumerate() {
        let run = task.await.context("backlog producer task")?;
        let (stored, range) = &mut fill.topics[index / per_topic];
        *stored += run.messages;
        fill.errors += run.errors;
        if let Some(error) = run.first_error {
            warn!(%error, topic = %topics[index / per_topic], "backlog producer");
        }
        if let Some((first, last)) = run.ids {
            let (first, last) = ((first.ledger_id, first.entry_id), (last.ledger_id, last.entry_id));
            *range = Some(match *range {
                None => (first, last),
                Some((low, high)) => (low.min(first), high.max(last)),
            });
        }
    }
    fill.seconds = start.elapsed().as_secs_f64();
    Ok(fill)
}

/// Which backlog messages each subscription has received, while it catches up.
struct CatchUp {
    /// Backlog messages of each topic, and the entries that hold them.
    topics: Vec<(u64, Option<((u64, u64), (u64, u64))>)>,
    /// Per subscription.
    received: Vec<AtomicU64>,
    /// Per subscription: when it had all of its topic's backlog.
    done_at: Vec<OnceLock<Instant>>,
    /// Subscriptions not done yet.
    remaining: AtomicUsize,
    all_done: Notify,
}

impl CatchUp {
    fn new(args: &E2eArgs, fill: &Fill) -> CatchUp {
        let count = args.subscription_count();
        let empty = (0..count).filter(|&subscription| fill.topics[args.topic_of(subscription)].0 == 0).count();
        CatchUp {
            topics: fill.topics.clone(),
            received: (0..count).map(|_| AtomicU64::new(0)).collect(),
            done_at: (0..count).map(|_| OnceLock::new()).collect(),
            remaining: AtomicUsize::new(count - empty),
            all_done: Notify::new(),
        }
    }

    /// Counts `message` if it is one of the backlog's.
    fn received(&self, subscription: usize, topic: usize, message: &Message, now: Instant) {
        let (backlog, Some((first, last))) = self.topics[topic] else { return };
        let entry = (message.id.ledger_id, message.id.entry_id);
        if entry < first || entry > last {
            return;
        }
        if self.received[subscription].fetch_add(1, Ordering::Relaxed) + 1 == backlog {
            let _ = self.done_at[subscription].set(now);
            if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.all_done.notify_one();
            }
        }
    }

    /// Returns once every subscription has its backlog.
    async fn wait(&self) {
        while self.remaining.load(Ordering::Acquire) > 0 {
            self.all_done.notified().await;
        }
    }

    /// Seconds from `start` until `subscription` had its backlog (None: it never had).
    fn seconds(&self, subscription: usize, start: Instant) -> Option<f64> {
        self.done_at[subscription].get().map(|done| (*done - start).as_secs_f64())
    }
}

/// A span of the run, on its clock (milliseconds: what samples carry).
struct Window {
    from_ms: u32,
    to_ms: u32,
    seconds: f64,
}

impl Window {
    fn new(clock: Instant, from: Instant, to: Instant) -> Window {
        let ms = |at: Instant| u32::try_from((at - clock).as_millis()).unwrap_or(u32::MAX);
        Window { from_ms: ms(from), to_ms: ms(to), seconds: (to - from).as_secs_f64().max(f64::MIN_POSITIVE) }
    }

    /// Inclusive at both ends: whatever happened between the two instants is in.
    fn contains(&self, at_ms: u32) -> bool {
        (self.from_ms..=self.to_ms).contains(&at_ms)
    }

    /// A producer sample's message was stored (its receipt arrived) in the window.
    fn stored(&self, sample: &Sample) -> bool {
        self.contains(sample.at_ms.saturating_add(sample.latency_us / 1000))
    }
}

/// What every producer and consumer measured.
struct Runs<'a> {
    args: &'a E2eArgs,
    /// Producer `i` is of topic `i / P` (the fill's are not here).
    producers: Vec<ProducerRun>,
    /// Each with its subscription.
    consumers: Vec<(usize, ConsumerRun)>,
}

/// The figures of one window.
struct WindowFigures {
    seconds: f64,
    /// Messages stored in the window, in total and per topic.
    published: u64,
    published_per_topic: Vec<u64>,
    /// Publish latencies of the messages due in the window, sorted.
    publish_latencies: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    /// Messages each subscription received in the window.
    received: Vec<u64>,
    /// End-to-end latencies of the messages received in the window, sorted.
    e2e_latencies: Vec<u32>,
    cpu: CpuUse,
}

impl Runs<'_> {
    fn figures(&self, window: &Window, cpu: CpuUse) -> WindowFigures {
        let producers_per_topic = self.args.producers as usize;
        let mut published_per_topic = vec![0; self.args.topics as usize];
        for (index, run) in self.producers.iter().enumerate() {
            published_per_topic[index / producers_per_topic] +=
                run.samples.iter().filter(|sample| window.stored(sample)).count() as u64;
        }
        let due = self.producers.iter().flat_map(|run| &run.samples).filter(|sample| window.contains(sample.at_ms));
        let mut received = vec![0; self.args.subscription_count()];
        for (subscription, run) in &self.consumers {
            received[*subscription] += run.samples.iter().filter(|sample| window.contains(sample.at_ms)).count() as u64;
        }
        let arrived =
            self.consumers.iter().flat_map(|(_, run)| &run.samples).filter(|sample| window.contains(sample.at_ms));
        WindowFigures {
            seconds: window.seconds,
            published: published_per_topic.iter().sum(),
            published_per_topic,
            publish_latencies: sorted_latencies(due),
            errors: self.producers.iter().map(|run| run.errors).sum(),
            first_error: self.producers.iter().find_map(|run| run.first_error.clone()),
            received,
            e2e_latencies: sorted_latencies(arrived),
            cpu,
        }
    }
}

impl WindowFigures {
    fn delivered(&self) -> u64 {
        self.received.iter().sum()
    }

    fn per_sec(&self, messages: u64) -> f64 {
        messages as f64 / self.seconds
    }

    fn mb_per_sec(&self, messages: u64, size: u32) -> f64 {
        messages as f64 * f64::from(size) / 1e6 / self.seconds
    }

    /// Each subscription's received messages over its topic's published ones (subscriptions
    /// of a topic that published nothing in the window have none).
    fn keep_up(&self, args: &E2eArgs) -> Vec<Option<f64>> {
        let published = |subscription: usize| self.published_per_topic[args.topic_of(subscription)];
        self.received
            .iter()
            .enumerate()
            .map(|(subscription, &received)| {
                let published = published(subscription);
                (published > 0).then(|| received as f64 / published as f64)
            })
            .collect()
    }

    fn publish_ms(&self, quantile: f64) -> f64 {
        quantile_ms(&self.publish_latencies, quantile)
    }

    fn e2e_ms(&self, quantile: f64) -> f64 {
        quantile_ms(&self.e2e_latencies, quantile)
    }
}

/// Min, mean and max of `values` (zeros without any).
fn spread(values: impl IntoIterator<Item = f64>) -> (f64, f64, f64) {
    let (mut min, mut max, mut sum, mut count) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize);
    for value in values {
        min = min.min(value);
        max = max.max(value);
        sum += value;
        count += 1;
    }
    if count == 0 {
        return (0.0, 0.0, 0.0);
    }
    (min, sum / count as f64, max)
}

/// The catch-up's figures.
struct CatchUpFigures {
    /// From the consumers' start until every subscription had its backlog (or the timeout).
    window: WindowFigures,
    finished: bool,
    /// Per subscription: its backlog and the seconds it took to receive it.
    subscriptions: Vec<(u64, Option<f64>)>,
    fill: Fill,
}

impl CatchUpFigures {
    fn new(
        runs: &Runs,
        window: &Window,
        cpu: CpuUse,
        finished: bool,
        tracker: &CatchUp,
        start: Instant,
        fill: Fill,
    ) -> CatchUpFigures {
        let args = runs.args;
        let subscriptions = (0..args.subscription_count())
            .map(|subscription| (fill.topics[args.topic_of(subscription)].0, tracker.seconds(subscription, start)))
            .collect();
        CatchUpFigures { window: runs.figures(window, cpu), finished, subscriptions, fill }
    }

    /// Backlog messages over all subscriptions.
    fn backlog_messages(&self) -> u64 {
        self.subscriptions.iter().map(|(backlog, _)| backlog).sum()
    }

    /// Until every subscription had its backlog (the whole catch-up window when one never did).
    fn seconds(&self) -> f64 {
        if self.finished {
            self.subscriptions.iter().filter_map(|(_, seconds)| *seconds).fold(0.0, f64::max)
        } else {
            self.window.seconds
        }
        .max(f64::MIN_POSITIVE)
    }

    /// The quickest subscription's catch-up.
    fn seconds_min(&self) -> f64 {
        spread(self.subscriptions.iter().filter_map(|(_, seconds)| *seconds)).0
    }

    /// Backlog messages read per second, over all subscriptions.
    fn msgs_per_sec(&self) -> f64 {
        self.backlog_messages() as f64 / self.seconds()
    }

    /// The slowest subscription's backlog messages per second (0 for one that never finished).
    fn msgs_per_sec_min(&self) -> f64 {
        let rates =
            self.subscriptions.iter().filter(|(backlog, _)| *backlog > 0).map(|(backlog, seconds)| {
                seconds.map_or(0.0, |seconds| *backlog as f64 / seconds.max(f64::MIN_POSITIVE))
            });
        spread(rates).0
    }

    fn fill_msgs_per_sec(&self) -> f64 {
        self.fill.topics.iter().map(|(stored, _)| stored).sum::<u64>() as f64 / self.fill.seconds.max(f64::MIN_POSITIVE)
    }
}

/// Everything the run prints.
struct Report<'a> {
    args: &'a E2eArgs,
    service_url: &'a str,
    steady: WindowFigures,
    catch_up: Option<CatchUpFigures>,
    disk: Option<DiskBaseline>,
    subscribe_seconds: f64,
}

impl Report<'_> {
    fn print(&self) -> anyhow::Result<()> {
        if self.args.json {
            println!("{}", self.json());
            Ok(())
        } else {
            self.text(&mut std::io::stdout().lock())
        }
    }

    fn json(&self) -> serde_json::Value {
        let (args, steady) = (self.args, &self.steady);
        let keep_up = steady.keep_up(args);
        let (keep_up_min, keep_up_mean, _) = spread(keep_up.iter().flatten().copied());
        let per_subscription = steady.received.iter().map(|&received| steady.per_sec(received));
        let (consumed_min, consumed_mean, consumed_max) = spread(per_subscription);
        let mut object = serde_json::json!({
            "published_msgs_per_sec": steady.per_sec(steady.published),
            "published_mb_per_sec": steady.mb_per_sec(steady.published, args.size),
            "published_messages": steady.published,
            "publish_p50_ms": steady.publish_ms(0.50),
            "publish_p99_ms": steady.publish_ms(0.99),
            "publish_p999_ms": steady.publish_ms(0.999),
            "publish_max_ms": steady.publish_ms(1.0),
            "publish_errors": steady.errors,
            "first_error": steady.first_error,
            "consumed_msgs_per_sec": steady.per_sec(steady.delivered()),
            "consumed_mb_per_sec": steady.mb_per_sec(steady.delivered(), args.size),
            "consumed_messages": steady.delivered(),
            "consumed_msgs_per_sec_per_subscription_min": consumed_min,
            "consumed_msgs_per_sec_per_subscription_mean": consumed_mean,
            "consumed_msgs_per_sec_per_subscription_max": consumed_max,
            "keep_up_min": keep_up_min,
            "keep_up_mean": keep_up_mean,
            "e2e_p50_ms": steady.e2e_ms(0.50),
            "e2e_p99_ms": steady.e2e_ms(0.99),
            "e2e_p999_ms": steady.e2e_ms(0.999),
            "e2e_max_ms": steady.e2e_ms(1.0),
            "window_seconds": steady.seconds,
            "consumers_subscribe_seconds": self.subscribe_seconds,
            "topic": args.topic,
            "topics": args.topics,
            "producers": args.producers,
            "subscriptions": args.subscriptions,
            "consumers": args.consumers,
            "subscription_type": args.subscription_type.as_str(),
            "size": args.size,
            "rate": args.rate,
            "rate_per_topic": args.rate / f64::from(args.topics),
            "seconds": args.seconds,
            "warmup_seconds": args.warmup_seconds,
            "batch_max_messages": args.batch_max_messages,
            "max_pending": args.max_pending,
            "receiver_queue_size": args.receiver_queue_size,
            "backlog": args.backlog,
            "catch_up_timeout": args.catch_up_timeout,
            "service_url": self.service_url,
        });
        let Some(fields) = object.as_object_mut() else { return object };
        fields.extend(steady.cpu.json_fields(steady.published, Some(steady.delivered())));
        if let Some(disk) = &self.disk {
            fields.extend(disk.json_fields(steady.publish_ms(0.50), steady.publish_ms(0.99)));
        }
        if keep_up.len() <= LISTED_SUBSCRIPTIONS {
            let listed: Vec<serde_json::Value> = (0..keep_up.len())
                .map(|subscription| {
                    let catch_up = self.catch_up.as_ref().and_then(|catch_up| catch_up.subscriptions[subscription].1);
                    serde_json::json!({
                        "topic": self.topic_name(subscription),
                        "subscription": args.subscription_name(subscription),
                        "consumed_msgs_per_sec": steady.per_sec(steady.received[subscription]),
                        "keep_up": keep_up[subscription],
                        "catch_up_seconds": catch_up,
                    })
                })
                .collect();
            fields.insert("per_subscription".to_owned(), listed.into());
        }
        if let Some(catch_up) = &self.catch_up {
            let during = &catch_up.window;
            let catch_up_fields = serde_json::json!({
                "catch_up_complete": catch_up.finished,
                "catch_up_seconds": catch_up.seconds(),
                "catch_up_seconds_min": catch_up.seconds_min(),
                "catch_up_msgs_per_sec": catch_up.msgs_per_sec(),
                "catch_up_mb_per_sec": catch_up.msgs_per_sec() * f64::from(args.size) / 1e6,
                "catch_up_msgs_per_sec_min": catch_up.msgs_per_sec_min(),
                "catch_up_backlog_messages": catch_up.backlog_messages(),
                "catch_up_consumed_messages": during.delivered(),
                "catch_up_published_msgs_per_sec": during.per_sec(during.published),
                "catch_up_publish_p50_ms": during.publish_ms(0.50),
                "catch_up_publish_p99_ms": during.publish_ms(0.99),
                "catch_up_publish_p999_ms": during.publish_ms(0.999),
                "catch_up_publish_max_ms": during.publish_ms(1.0),
                "backlog_fill_seconds": catch_up.fill.seconds,
                "backlog_fill_msgs_per_sec": catch_up.fill_msgs_per_sec(),
                "backlog_fill_errors": catch_up.fill.errors,
            });
            if let Some(catch_up_fields) = catch_up_fields.as_object() {
                fields.extend(catch_up_fields.clone());
            }
            let cpu = during.cpu.json_fields(during.published, Some(during.delivered()));
            fields.extend(cpu.into_iter().map(|(key, value)| (format!("catch_up_{key}"), value)));
        }
        object
    }

    fn topic_name(&self, subscription: usize) -> String {
        self.args.topic_name(self.args.topic_of(subscription))
    }

    fn text(&self, out: &mut impl std::io::Write) -> anyhow::Result<()> {
        let (args, steady) = (self.args, &self.steady);
        let rate = if args.rate == 0.0 { "unpaced".to_owned() } else { format!("{} msgs/s target", args.rate) };
        writeln!(
            out,
            "e2e {} on {}: {} topics, each with {} producers and {} {} subscriptions of {} consumers; {} B \
             messages, batches of up to {}, {rate}, {:.1} s after {} s warmup",
            args.topic,
            self.service_url,
            args.topics,
            args.producers,
            args.subscriptions,
            args.subscription_type,
            args.consumers,
            args.size,
            args.batch_max_messages,
            steady.seconds,
            args.warmup_seconds
        )?;
        if let Some(catch_up) = &self.catch_up {
            let during = &catch_up.window;
            writeln!(
                out,
                "backlog     {:>12}   messages per topic, published at {:.0} msgs/s in {:.1} s ({} errors)",
                args.backlog,
                catch_up.fill_msgs_per_sec(),
                catch_up.fill.seconds,
                catch_up.fill.errors
            )?;
            writeln!(
                out,
                "catch-up    {:>12.2} s{}  ({:.0} msgs/s, {:.2} MB/s over all subscriptions; slowest subscription \
                 {:.0} msgs/s, quickest done in {:.2} s)",
                catch_up.seconds(),
                if catch_up.finished { "" } else { " (NOT complete: timed out)" },
                catch_up.msgs_per_sec(),
                catch_up.msgs_per_sec() * f64::from(args.size) / 1e6,
                catch_up.msgs_per_sec_min(),
                catch_up.seconds_min()
            )?;
            if during.published == 0 && args.rate == 0.0 {
                writeln!(out, "  no publishing during it (--rate 0)")?;
            } else {
                writeln!(
                    out,
                    "  publishing during it: {:.0} msgs/s, latency ms p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                    during.per_sec(during.published),
                    during.publish_ms(0.50),
                    during.publish_ms(0.99),
                    during.publish_ms(0.999),
                    during.publish_ms(1.0)
                )?;
            }
            during.cpu.write_text(out, "  ", during.published, Some(during.delivered()))?;
        }
        writeln!(
            out,
            "published   {:>12.0}   msgs/s, {:.2} MB/s ({} messages, {} errors)",
            steady.per_sec(steady.published),
            steady.mb_per_sec(steady.published, args.size),
            steady.published,
            steady.errors
        )?;
        writeln!(
            out,
            "publish ms  p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}   (from the due time to the receipt)",
            steady.publish_ms(0.50),
            steady.publish_ms(0.99),
            steady.publish_ms(0.999),
            steady.publish_ms(1.0)
        )?;
        let keep_up = steady.keep_up(args);
        let (keep_up_min, keep_up_mean, _) = spread(keep_up.iter().flatten().copied());
        let (consumed_min, consumed_mean, consumed_max) =
            spread(steady.received.iter().map(|&received| steady.per_sec(received)));
        writeln!(
            out,
            "consumed    {:>12.0}   msgs/s over {} subscriptions (per subscription min {consumed_min:.0}, mean \
             {consumed_mean:.0}, max {consumed_max:.0})",
            steady.per_sec(steady.delivered()),
            keep_up.len()
        )?;
        writeln!(
            out,
            "keep up     {keep_up_min:>12.3}   min, {keep_up_mean:.3} mean (received / published in the window)"
        )?;
        if keep_up.len() <= LISTED_SUBSCRIPTIONS && keep_up.len() > 1 {
            for (subscription, keep_up) in keep_up.iter().enumerate() {
                writeln!(
                    out,
                    "  {} {}: {:.0} msgs/s, keep up {}",
                    self.topic_name(subscription),
                    args.subscription_name(subscription),
                    steady.per_sec(steady.received[subscription]),
                    keep_up.map_or("n/a".to_owned(), |keep_up| format!("{keep_up:.3}"))
                )?;
            }
        }
        writeln!(
            out,
            "e2e ms      p50 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}   (publish time to receipt, ms resolution)",
            steady.e2e_ms(0.50),
            steady.e2e_ms(0.99),
            steady.e2e_ms(0.999),
            steady.e2e_ms(1.0)
        )?;
        steady.cpu.write_text(out, "", steady.published, Some(steady.delivered()))?;
        if let Some(disk) = &self.disk {
            disk.write_text(out, steady.publish_ms(0.50))?;
        }
        if let Some(error) = &steady.first_error {
            writeln!(out, "first error: {error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<E2eArgs, clap::Error> {
        crate::parse_flags(flags)
    }

    #[test]
    fn topics_subscriptions_and_bad_flags() {
        let args = parse(&["--topic", "t", "--topics", "3", "--subscriptions", "2"]).expect("parses");
        assert_eq!(args.topic_names(), ["t-0", "t-1", "t-2"]);
        assert_eq!(args.subscription_count(), 6);
        assert_eq!((args.topic_of(5), args.subscription_name(5)), (2, "sub-1".to_owned()));
        assert_eq!(parse(&[]).expect("defaults").topic_names(), ["perf-e2e"]);

        for bad in [&["--rate", "-1"][..], &["--seconds", "0"], &["--seconds", "nan"], &["--topics", "0"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--consumers", "2"]).expect("parses").check().is_err(), "Exclusive with 2 consumers");
        assert!(parse(&["--consumers", "2", "--subscription-type", "Shared"]).expect("parses").check().is_ok());
        assert!(parse(&["--batch-max-messages", "10", "--max-pending", "5"]).expect("parses").check().is_err());
        assert!(parse(&["--disk-baseline", "--no-disk-baseline"]).is_err());
    }

    #[test]
    fn catch_up_counts_only_backlog_entries() {
        let args = parse(&["--subscriptions", "2", "--backlog", "2"]).expect("parses");
        let fill = Fill { topics: vec![(2, Some(((7, 10), (7, 11))))], seconds: 1.0, errors: 0 };
        let catch_up = CatchUp::new(&args, &fill);
        let message = |entry_id| Message {
            id: magnetar_client::MessageId::entry(7, entry_id),
            topic: String::new(),
            payload: bytes::Bytes::new(),
            key: None,
            properties: Default::default(),
            publish_time: 0,
            event_time: None,
            producer_name: String::new(),
            redelivery_count: 0,
            schema_version: None,
            key_is_base64: false,
            null_value: false,
            chunk_ids: Vec::new(),
        };
        let start = Instant::now();
        for entry in [9, 10, 11, 12] {
            catch_up.received(0, 0, &message(entry), start);
        }
        catch_up.received(1, 0, &message(10), start);
        assert!(catch_up.seconds(0, start).is_some());
        assert!(catch_up.seconds(1, start).is_none());
        assert_eq!(catch_up.remaining.load(Ordering::Acquire), 1);
        catch_up.received(1, 0, &message(11), start);
        assert_eq!(catch_up.remaining.load(Ordering::Acquire), 0);
    }

    #[test]
    fn windows_count_receipts_and_due_times() {
        let clock = Instant::now();
        let window = Window::new(clock, clock + Duration::from_secs(1), clock + Duration::from_secs(2));
        // Due before the window, stored in it: published in the window, its latency is not.
        let early = Sample { at_ms: 990, latency_us: 20_000 };
        assert!(window.stored(&early) && !window.contains(early.at_ms));
        // Due in the window, stored after it.
        let late = Sample { at_ms: 1990, latency_us: 20_000 };
        assert!(!window.stored(&late) && window.contains(late.at_ms));
        assert_eq!(spread([3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread(std::iter::empty()), (0.0, 0.0, 0.0));
    }
}
