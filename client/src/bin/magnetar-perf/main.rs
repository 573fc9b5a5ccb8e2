//! `magnetar-perf`: benchmarks that print figures (never timed tests).
//!
//! ```text
//! magnetar-perf bookie --size 1024 --writers 64 --seconds 10 [--bookie ADDR] [--dir DIR] [--json]
//! magnetar-perf produce --topic T --size 1024 --rate 0 --seconds 10 [--producers N]
//!     [--batch-max-messages M] [--max-pending P] [--service-url pulsar://127.0.0.1:6650] [--json]
//! magnetar-perf produce --topic T -u pulsar+ssl://broker:6651 --trust-cert-file ca.pem \
//!     --auth-plugin org.apache.pulsar.client.impl.auth.AuthenticationToken --auth-params token:...
//! magnetar-perf consume --topic T --client-conf conf/client.conf
//! magnetar-perf e2e [--topic perf-e2e] [--topics 1] [--producers 1] [--subscriptions 1]
//!     [--consumers 1] [--subscription-type Exclusive] [--size 1024] [--rate 0] [--seconds 10]
//!     [--warmup-seconds 1] [--batch-max-messages 1] [--max-pending P] [--receiver-queue-size Q]
//!     [--backlog K [--catch-up-timeout 300]] [--server-pid PID]... [--disk-dir DIR |
//!     --no-disk-baseline] [-u pulsar://127.0.0.1:6650] [--json]
//! magnetar-perf e2e -u pulsar://127.0.0.1:6650 --rate 5000 --subscriptions 4 --seconds 5 --json
//! magnetar-perf e2e --topics 1000 --rate 2000          # 2 msgs/s on each of 1000 topics
//! magnetar-perf e2e --backlog 50000 --rate 1000        # catch-up reads while publishing
//! ```
//!
//! `e2e` runs producers and consumers together (subscriptions first) and reports, over a
//! measured window after a warmup: published msgs/s and MB/s, publish latency, consumed msgs/s
//! per subscription, `keep_up` (received over published), end-to-end latency, server and own
//! CPU per message, and the disk's 4 KiB fdatasync latency; with `--backlog` also how fast the
//! subscriptions read a backlog: see `e2e.rs`. `produce` reports the same CPU figures, and the
//! disk baseline with `--disk-baseline` (see `host.rs`).
//!
//! `produce`, `consume`, `compact` and `e2e` take Pulsar's security flags (`--auth-plugin`,
//! `--auth-params`, `--trust-cert-file` or `--tls-trust-cert-path`, `--tls-allow-insecure`,
//! `--client-conf`); flags win over client.conf, whose `brokerServiceUrl` is used when
//! `--service-url` is not given.
//!
//! `produce` publishes through our client library to a running broker: see `produce.rs`.
//!
//! `bookie` writes entries straight to one bookie over BookieService (gRPC), each writer its
//! own ledger on its own add stream with up to `--max-outstanding` adds in flight, and measures
//! adds/s, MB/s and add latency. Without `--bookie` it runs a `magnetar bookie` process of its
//! own on a temporary directory (inside `--dir` if given), kills it at the end and removes the
//! directory. In the same run it measures the disk's own limit on the same file system:
//! sequential 1 MiB writes each followed by fdatasync, as many bytes as the bookie took, and
//! reports `ratio` = bookie MB/s over raw MB/s. MB is 10^6 bytes. Before the writers start and
//! again before the baseline it pauses `--settle-seconds`: a disk (a virtual one above all) is
//! slower for a while after absorbing gigabytes, and neither side should pay for the other's.
//!
//! Figures go to stdout (one JSON object with `--json`); logs go to stderr (RUST_LOG).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use magnetar_proto::bookie::bookie_service_client::BookieServiceClient;
use magnetar_proto::bookie::{AddEntryBatch, AddEntryRequest, Status};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tracing::info;
use tracing_subscriber::EnvFilter;

mod compact;
mod consume;
mod e2e;
mod host;
mod produce;

/// The line `magnetar bookie` prints on stderr once it serves, followed by its address.
const LISTENING_LINE: &str = "magnetar bookie listening on ";
/// Longest a spawned bookie may take to start serving.
const BOOKIE_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the in-flight adds may take to be answered after the run's end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest gRPC message the client sends (an entry plus headers, as the bookie accepts).
const MAX_GRPC_MESSAGE: usize = 6 * 1024 * 1024 + 64 * 1024;
/// Size of one raw-baseline write.
const RAW_CHUNK: usize = 1024 * 1024;
/// Connects the client of `produce`, `consume`, `compact` and `e2e`: --service-url, else
/// client.conf's brokerServiceUrl, else [`DEFAULT_SERVICE_URL`], with the security flags.
pub(crate) async fn connect_client(
    connection: &magnetar_client::ConnectionArgs,
    service_url: Option<&str>,
) -> anyhow::Result<(magnetar_client::Client, String)> {
    let (service_url, config) =
        connection.resolve(service_url, DEFAULT_SERVICE_URL).await.context("read the connection settings")?;
    let client = magnetar_client::Client::connect_with_config(&service_url, config)
        .await
        .with_context(|| format!("connect to {service_url}"))?;
    Ok((client, service_url))
}

/// Where `produce` and `consume` connect when neither --service-url nor client.conf says.
const DEFAULT_SERVICE_URL: &str = "pulsar://127.0.0.1:6650";
/// Secret every benchmark ledger is written with.
const MASTER_KEY: &[u8] = b"magnetar-perf";

#[derive(Debug, Parser)]
#[command(name = "magnetar-perf", version, about = "Magnetar benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: PerfCommand,
}

#[derive(Debug, Subcommand)]
enum PerfCommand {
    /// Write entries straight to a bookie over BookieService and compare with the raw disk.
    Bookie(BookieArgs),
    /// Publish to a broker through the Rust client and measure throughput and publish latency.
    Produce(produce::ProduceArgs),
    /// Consume from a broker through the Rust client and measure throughput and end-to-end
    /// latency.
    Consume(consume::ConsumeArgs),
    /// Fill a topic with keyed messages, compact it, and measure compaction against a plain
    /// read of the same topic.
    Compact(compact::CompactArgs),
    /// Publish and consume at the same time (subscriptions first) and measure throughput,
    /// publish and end-to-end latency, whether consumers keep up, catch-up reads of a backlog,
    /// server CPU per message and the disk's fdatasync latency.
    E2e(e2e::E2eArgs),
}

#[derive(Debug, clap::Args)]
struct BookieArgs {
    /// Bytes per entry.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=5 * 1024 * 1024))]
    size: u32,
    /// Concurrent writers, each its own ledger and add stream.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    writers: u32,
    /// How long writers keep adding.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Address (host:port) of a running bookie; without it, a `magnetar bookie` of its own is
    /// started ($MAGNETAR_BIN, or `magnetar` next to this executable).
    #[arg(long)]
    bookie: Option<String>,
    /// Directory for the bookie's data (own bookie) and the raw-disk baseline; default: the
    /// system temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Adds one writer keeps in flight. The default (512 adds in flight with 64 writers) is
    /// where throughput and p99 latency are both near their goals on a 2-core machine (see
    /// ARCHITECTURE.md); more in flight raises both throughput and latency.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_outstanding: u32,
    /// Pause before the writers start and before the raw baseline, so that neither runs while
    /// the disk is still absorbing what the other (or an earlier run) wrote.
    #[arg(long, default_value_t = 10.0)]
    settle_seconds: f64,
    /// gRPC connections the writers share (a broker keeps one per bookie).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// The token a bookie with `[auth] enabled` wants, as Pulsar's token parameters
    /// (`token:<jwt>`, `file:///path/to/token`); sent as `authorization: Bearer` on every call.
    #[arg(long)]
    bookie_auth_params: Option<String>,
    /// Print exactly one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    // On Ctrl-C, return so that destructors kill the spawned bookie and remove temp dirs.
    tokio::select! {
        result = async {
            match cli.command {
                PerfCommand::Bookie(args) => bookie_benchmark(args).await,
                PerfCommand::Produce(args) => produce::produce_benchmark(args).await,
                PerfCommand::Consume(args) => consume::consume_benchmark(args).await,
                PerfCommand::Compact(args) => compact::compact_benchmark(args).await,
                PerfCommand::E2e(args) => e2e::e2e_benchmark(args).await,
            }
        } => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

/// Everything one `bookie` run measured: what the writers did and the raw-disk baseline.
struct BookieFigures {
    run: WriteRun,
    raw_bytes: u64,
    raw_elapsed: Duration,
}

impl BookieFigures {
    fn adds_per_sec(&self) -> f64 {
        self.run.adds as f64 / self.run.elapsed.as_secs_f64()
    }

    fn mb_per_sec(&self) -> f64 {
        self.run.bytes as f64 / 1e6 / self.run.elapsed.as_secs_f64()
    }

    fn raw_mb_per_sec(&self) -> f64 {
        self.raw_bytes as f64 / 1e6 / self.raw_elapsed.as_secs_f64()
    }

    fn ratio(&self) -> f64 {
        self.mb_per_sec() / self.raw_mb_per_sec()
    }

    /// Mean time of one raw-baseline step (1 MiB write + fdatasync), in milliseconds.
    fn raw_sync_ms(&self) -> f64 {
        let steps = (self.raw_bytes / RAW_CHUNK as u64).max(1);
        self.raw_elapsed.as_secs_f64() * 1000.0 / steps as f64
    }

    /// The p99 add latency in raw-baseline steps (the goal is at most 3).
    fn p99_in_syncs(&self) -> f64 {
        self.latency_ms(0.99) / self.raw_sync_ms()
    }

    /// The `quantile` latency in milliseconds (0 without samples).
    fn latency_ms(&self, quantile: f64) -> f64 {
        quantile_ms(&self.run.latencies_us, quantile)
    }
}

/// The `quantile` (0..=1) of `sorted` microsecond latencies, in milliseconds (0 without
/// samples).
fn quantile_ms(sorted: &[u32], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

/// One timed message of `produce`, `consume` or `e2e`: when (milliseconds after the run's
/// clock: a producer's due time, a consumer's receipt) and its latency in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub at_ms: u32,
    pub latency_us: u32,
}

impl Sample {
    /// The sample of an event at `at` with `latency`, on the run's `clock`.
    pub(crate) fn new(clock: tokio::time::Instant, at: tokio::time::Instant, latency: Duration) -> Sample {
        Sample {
            at_ms: u32::try_from(at.saturating_duration_since(clock).as_millis()).unwrap_or(u32::MAX),
            latency_us: u32::try_from(latency.as_micros()).unwrap_or(u32::MAX),
        }
    }
}

/// The latencies of `samples`, sorted for [`quantile_ms`].
pub(crate) fn sorted_latencies<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Vec<u32> {
    let mut latencies: Vec<u32> = samples.into_iter().map(|sample| sample.latency_us).collect();
    latencies.sort_unstable();
    latencies
}

/// A token cancelled at `deadline` (the end of a timed run).
pub(crate) fn cancel_at(deadline: tokio::time::Instant) -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        cancel.cancel();
    });
    token
}

/// Parses one command's flags (tests).
#[cfg(test)]
pub(crate) fn parse_flags<T: clap::Args>(flags: &[&str]) -> Result<T, clap::Error> {
    #[derive(Parser)]
    struct Wrapper<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    Wrapper::<T>::try_parse_from(std::iter::once("magnetar-perf").chain(flags.iter().copied()))
        .map(|wrapper| wrapper.args)
}

/// A flag of seconds or messages/s that must be a finite number of at least zero.
pub(crate) fn non_negative_number(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value >= 0.0 && value.is_finite() => Ok(value),
        _ => Err(format!("{text:?} is not a number of at least 0")),
    }
}

/// A flag of seconds that must be a finite number above zero.
pub(crate) fn positive_number(text: &str) -> Result<f64, String> {
    match non_negative_number(text) {
        Ok(value) if value > 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a number above 0")),
    }
}

async fn bookie_benchmark(args: BookieArgs) -> anyhow::Result<()> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number, not {}", args.seconds);
    }
    if !(args.settle_seconds >= 0.0 && args.settle_seconds.is_finite()) {
        bail!("--settle-seconds must be zero or a positive number, not {}", args.settle_seconds);
    }
    let settle = Duration::from_secs_f64(args.settle_seconds);
    let duration = Duration::from_secs_f64(args.seconds);
    let parent = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create --dir {}", dir.display()))?;
            dir.clone()
        }
        None => std::env::temp_dir(),
    };
    let work_dir = tempfile::Builder::new()
        .prefix("magnetar-perf-")
        .tempdir_in(&parent)
        .with_context(|| format!("create a temp dir in {}", parent.display()))?;

    let mut own_bookie = None;
    let address = match &args.bookie {
        Some(address) => address.clone(),
        None => {
            let bookie = OwnBookie::start(work_dir.path()).await?;
            let address = bookie.address.clone();
            own_bookie = Some(bookie);
            address
        }
    };
    info!(?settle, "letting the disk settle before the writers start");
    tokio::time::sleep(settle).await;
    info!(%address, size = args.size, writers = args.writers, "benchmark starting");

    let run = write_entries(&address, &args, duration).await;
    if let Some(bookie) = own_bookie.take() {
        bookie.kill();
    }
    let run = run?;
    info!(?settle, "letting the disk settle before the raw baseline");
    tokio::time::sleep(settle).await;

    let raw_bytes = run.bytes.max(1);
    let raw_file = work_dir.path().join("raw-baseline");
    let raw_elapsed = tokio::task::spawn_blocking(move || raw_sequential_fdatasync(&raw_file, raw_bytes))
        .await
        .context("raw baseline thread")??;

    let figures =
        BookieFigures { run, raw_bytes: raw_bytes.div_ceil(RAW_CHUNK as u64) * RAW_CHUNK as u64, raw_elapsed };
    let bookie_label = args.bookie.clone().unwrap_or_else(|| format!("own ({address})"));
    print_figures(&args, &figures, &bookie_label, work_dir.path())?;
    if figures.run.adds == 0 {
        bail!("no add succeeded{}", figures.run.first_error.map(|error| format!(": {error}")).unwrap_or_default());
    }
    Ok(())
}

fn print_figures(args: &BookieArgs, figures: &BookieFigures, bookie: &str, dir: &Path) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        let object = serde_json::json!({
            "adds_per_sec": figures.adds_per_sec(),
            "mb_per_sec": figures.mb_per_sec(),
            "p50_ms": figures.latency_ms(0.50),
            "p99_ms": figures.latency_ms(0.99),
            "raw_mb_per_sec": figures.raw_mb_per_sec(),
            "ratio": figures.ratio(),
            "raw_sync_ms": figures.raw_sync_ms(),
            "p99_in_syncs": figures.p99_in_syncs(),
            "p999_ms": figures.latency_ms(0.999),
            "max_ms": figures.latency_ms(1.0),
            "adds": figures.run.adds,
            "errors": figures.run.errors,
            "first_error": figures.run.first_error,
            "bytes": figures.run.bytes,
            "seconds": figures.run.elapsed.as_secs_f64(),
            "raw_bytes": figures.raw_bytes,
            "raw_seconds": figures.raw_elapsed.as_secs_f64(),
            "size": args.size,
            "writers": args.writers,
            "max_outstanding": args.max_outstanding,
            "connections": args.connections,
            "settle_seconds": args.settle_seconds,
            "bookie": bookie,
            "dir": dir.parent().unwrap_or(dir).display().to_string(),
        });
        writeln!(out, "{object}")?;
        return Ok(());
    }
    writeln!(
        out,
        "bookie {bookie}: {} writers, {} B entries, {} in flight per writer, {:.1} s ({} s settling before the run and the baseline)",
        args.writers,
        args.size,
        args.max_outstanding,
        figures.run.elapsed.as_secs_f64(),
        args.settle_seconds
    )?;
    writeln!(
        out,
        "adds/s      {:>12.0}   ({} adds, {} errors)",
        figures.adds_per_sec(),
        figures.run.adds,
        figures.run.errors
    )?;
    writeln!(out, "MB/s        {:>12.2}", figures.mb_per_sec())?;
    writeln!(
        out,
        "latency ms  p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        figures.latency_ms(0.50),
        figures.latency_ms(0.99),
        figures.latency_ms(0.999),
        figures.latency_ms(1.0)
    )?;
    writeln!(
        out,
        "raw MB/s    {:>12.2}   (1 MiB write + fdatasync, {} MiB in {})",
        figures.raw_mb_per_sec(),
        figures.raw_bytes / RAW_CHUNK as u64,
        dir.parent().unwrap_or(dir).display()
    )?;
    writeln!(out, "ratio       {:>12.3}   (bookie MB/s / raw MB/s)", figures.ratio())?;
    writeln!(
        out,
        "p99/sync    {:>12.2}   (p99 add latency / {:.3} ms, one raw 1 MiB write + fdatasync)",
        figures.p99_in_syncs(),
        figures.raw_sync_ms()
    )?;
    if let Some(error) = &figures.run.first_error {
        writeln!(out, "first error: {error}")?;
    }
    Ok(())
}

/// What the writers did, together.
#[derive(Default)]
struct WriteRun {
    adds: u64,
    errors: u64,
    first_error: Option<String>,
    bytes: u64,
    elapsed: Duration,
    /// Add latencies in microseconds, sorted once the run is over.
    latencies_us: Vec<u32>,
}

async fn connect(address: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("bookie address {address:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    endpoint.connect().await.with_context(|| format!("connect to bookie {address}"))
}

/// Sends a bookie token on every call.
#[derive(Clone)]
struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type BookieClient = BookieServiceClient<InterceptedService<Channel, BearerToken>>;

/// The token from `--bookie-auth-params`, read with the client's token provider.
async fn bearer_token(params: Option<&str>) -> anyhow::Result<BearerToken> {
    let Some(params) = params else { return Ok(BearerToken(None)) };
    let provider = magnetar_client::authentication_from_plugin("token", params).context("--bookie-auth-params")?;
    let token = provider.auth_data().await.context("read the bookie token")?;
    let mut value: MetadataValue<Ascii> = format!("Bearer {}", String::from_utf8_lossy(token.as_bytes()))
        .parse()
        .map_err(|_| anyhow::anyhow!("--bookie-auth-params: the token holds characters gRPC metadata cannot carry"))?;
    value.set_sensitive(true);
    Ok(BearerToken(Some(value)))
}

async fn write_entries(address: &str, args: &BookieArgs, duration: Duration) -> anyhow::Result<WriteRun> {
    let token = bearer_token(args.bookie_auth_params.as_deref()).await?;
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(connect(address).await?);
    }
    // Ledger ids of this run: unlikely to meet another run's on a shared bookie.
    let base_ledger_id =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_micros() as u64).unwrap_or(1) << 16;
    let payload = Bytes::from((0..args.size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let start = Instant::now();
    let deadline = start + duration;
    let mut writers = Vec::new();
    for index in 0..args.writers {
        let client =
            BookieServiceClient::with_interceptor(channels[index as usize % channels.len()].clone(), token.clone())
                .max_encoding_message_size(MAX_GRPC_MESSAGE)
                .max_decoding_message_size(MAX_GRPC_MESSAGE);
        let ledger_id = base_ledger_id + u64::from(index);
        writers.push(tokio::spawn(writer(client, ledger_id, payload.clone(), args.max_outstanding as usize, deadline)));
    }
    let mut run = WriteRun::default();
    for writer in writers {
        let done = writer.await.context("writer task")??;
        run.adds += done.adds;
        run.errors += done.errors;
        run.bytes += done.adds * payload.len() as u64;
        if run.first_error.is_none() {
            run.first_error = done.first_error;
        }
        run.latencies_us.extend(done.latencies_us);
    }
    run.elapsed = start.elapsed();
    run.latencies_us.sort_unstable();
    Ok(run)
}

/// One writer's results.
struct WriterRun {
    adds: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

/// The last-add-confirmed a writer sends: the highest entry id up to which every add was
/// answered OK.
struct Confirmed {
    last: i64,
    /// Entries answered OK above a gap.
    ahead: BTreeSet<u64>,
}

impl Confirmed {
    fn ack(&mut self, entry_id: u64) {
        if entry_id as i64 == self.last + 1 {
            self.last += 1;
            while self.ahead.remove(&((self.last + 1) as u64)) {
                self.last += 1;
            }
        } else {
            self.ahead.insert(entry_id);
        }
    }
}

/// Most adds one AddEntryBatch message carries.
const MAX_BATCH: usize = 64;

/// Adds entries to `ledger_id` until `deadline`, keeping up to `max_outstanding` in flight,
/// then waits for the answers still due.
async fn writer(
    mut client: BookieClient,
    ledger_id: u64,
    payload: Bytes,
    max_outstanding: usize,
    deadline: Instant,
) -> anyhow::Result<WriterRun> {
    let (sender, requests) = mpsc::channel::<AddEntryBatch>(max_outstanding);
    let mut responses = client
        .add_entry_batches(ReceiverStream::new(requests))
        .await
        .with_context(|| format!("open the add stream of ledger {ledger_id}"))?
        .into_inner();
    let mut sender = Some(sender);
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut confirmed = Confirmed { last: -1, ahead: BTreeSet::new() };
    let mut run = WriterRun { adds: 0, errors: 0, first_error: None, latencies_us: Vec::new() };
    let mut in_flight = 0usize;
    let mut drain_deadline = None;
    loop {
        if sender.is_some() && Instant::now() >= deadline {
            // Closing the request stream tells the bookie no more adds come.
            sender = None;
            drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
        }
        if sender.is_none() && in_flight == 0 {
            break;
        }
        let can_send = sender.is_some() && in_flight < max_outstanding;
        let next_entry = sent_at.len() as u64;
        tokio::select! {
            biased;
            message = responses.message() => {
                let batch = match message {
                    Ok(Some(batch)) => batch,
                    Ok(None) => bail!("ledger {ledger_id}: the bookie closed the add stream with {in_flight} adds unanswered"),
                    Err(status) => bail!("ledger {ledger_id}: add stream failed: {status}"),
                };
                let now = Instant::now();
                for response in batch.responses {
                in_flight = in_flight.saturating_sub(1);
                let Some(sent) = sent_at.get(response.entry_id as usize) else {
                    bail!("ledger {ledger_id}: answer for entry {} that was never sent", response.entry_id);
                };
                if response.status == Status::Ok as i32 {
                    run.adds += 1;
                    let latency = now.saturating_duration_since(*sent);
                    run.latencies_us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                    confirmed.ack(response.entry_id);
                } else {
                    run.errors += 1;
                    if run.first_error.is_none() {
                        let status = Status::try_from(response.status).map(|s| s.as_str_name()).unwrap_or("UNKNOWN");
                        run.first_error = Some(format!("{status}: {}", response.message));
                    }
                }
                }
            }
            sent = async {
                match &sender {
                    Some(sender) => {
                        // Everything the window allows goes in one message, up to MAX_BATCH.
                        let count = (max_outstanding - in_flight).min(MAX_BATCH) as u64;
                        let adds = (next_entry..next_entry + count)
                            .map(|entry_id| AddEntryRequest {
                                ledger_id,
                                entry_id,
                                master_key: Bytes::from_static(MASTER_KEY),
                                last_add_confirmed: confirmed.last,
                                payload: payload.clone(),
                                recovery: false,
                            })
                            .collect();
                        sender.send(AddEntryBatch { adds }).await.is_ok().then_some(count as usize)
                    }
                    None => std::future::pending().await,
                }
            }, if can_send => {
                let Some(count) = sent else {
                    bail!("ledger {ledger_id}: the add stream closed while sending");
                };
                let now = Instant::now();
                sent_at.extend(std::iter::repeat_n(now, count));
                in_flight += count;
            }
            _ = tokio::time::sleep_until(deadline.into()), if sender.is_some() => {}
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)), if drain_deadline.is_some() => {
                bail!("ledger {ledger_id}: {in_flight} adds unanswered {DRAIN_TIMEOUT:?} after the run ended");
            }
        }
    }
    Ok(run)
}

/// The disk's own limit: `bytes` (rounded up to whole MiB) written sequentially to a new file
/// in 1 MiB writes, each followed by fdatasync. Blocking.
fn raw_sequential_fdatasync(path: &Path, bytes: u64) -> anyhow::Result<Duration> {
    let chunk: Vec<u8> = (0..RAW_CHUNK).map(|i| (i % 253) as u8).collect();
    let chunks = bytes.div_ceil(RAW_CHUNK as u64);
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let start = Instant::now();
    fdatasync_steps(&file, path, &chunk, chunks)?;
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(path).with_context(|| format!("remove {}", path.display()))?;
    Ok(elapsed)
}

/// Size of one write of the journal baseline.
const JOURNAL_WRITE: usize = 4096;

/// The disk's fdatasync latency as a journal that reuses its file pays it: `writes` 4 KiB
/// writes one after the other over a new file in `dir`, each followed by fdatasync. The file is
/// written in full and synced first, so that the timed steps flush data only (no file size or
/// extent metadata), and removed at the end. The step latencies in microseconds, sorted.
/// Blocking.
pub(crate) fn journal_fdatasync_latencies(dir: &Path, writes: u64) -> anyhow::Result<Vec<u32>> {
    let file = tempfile::Builder::new()
        .prefix("magnetar-perf-fdatasync-")
        .tempfile_in(dir)
        .with_context(|| format!("create a file in {}", dir.display()))?;
    let region = writes * JOURNAL_WRITE as u64;
    fdatasync_steps(file.as_file(), file.path(), &vec![0; RAW_CHUNK], region.div_ceil(RAW_CHUNK as u64))?;
    let block: Vec<u8> = (0..JOURNAL_WRITE).map(|i| (i % 253) as u8).collect();
    let steps = fdatasync_steps(file.as_file(), file.path(), &block, writes)?;
    let mut latencies_us: Vec<u32> =
        steps.iter().map(|step| u32::try_from(step.as_micros()).unwrap_or(u32::MAX)).collect();
    latencies_us.sort_unstable();
    Ok(latencies_us)
}

/// Writes `chunk` `count` times to `file` at offsets 0, len, 2 len, ..., each write followed by
/// fdatasync; how long each step took. Blocking.
fn fdatasync_steps(file: &File, path: &Path, chunk: &[u8], count: u64) -> anyhow::Result<Vec<Duration>> {
    let mut steps = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for index in 0..count {
        let started = Instant::now();
        file.write_all_at(chunk, index * chunk.len() as u64).with_context(|| format!("write {}", path.display()))?;
        file.sync_data().with_context(|| format!("fdatasync {}", path.display()))?;
        steps.push(started.elapsed());
    }
    Ok(steps)
}

/// A `magnetar bookie` process of this run, on local metadata in a temp dir; SIGKILLed when
/// dropped.
struct OwnBookie {
    child: Option<Child>,
    address: String,
}

impl OwnBookie {
    async fn start(dir: &Path) -> anyhow::Result<OwnBookie> {
        let binary = magnetar_binary()?;
        let log_path = dir.join("bookie.log");
        let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let child = Command::new(&binary)
            .arg("bookie")
            .arg("--metadata-url")
            .arg(format!("local:{}", dir.join("meta").display()))
            .arg("--data-dir")
            .arg(dir.join("bookie"))
            .args(["--listen", "127.0.0.1:0", "--bookie-id", "perf-bookie"])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicate the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} bookie", binary.display()))?;
        let mut bookie = OwnBookie { child: Some(child), address: String::new() };
        let started = Instant::now();
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(address) = log.lines().find_map(|line| line.strip_prefix(LISTENING_LINE)) {
                bookie.address = address.trim().to_owned();
                info!(address = %bookie.address, "own bookie started");
                return Ok(bookie);
            }
            if let Some(child) = bookie.child.as_mut() {
                if let Some(status) = child.try_wait().context("check on the bookie")? {
                    bail!("the bookie exited during startup ({status}); its log:\n{log}");
                }
            }
            if started.elapsed() > BOOKIE_STARTUP_TIMEOUT {
                bail!("the bookie did not start within {BOOKIE_STARTUP_TIMEOUT:?}; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already gone is fine; anything else leaves a process that dies with the machine.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBookie {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `$MAGNETAR_BIN`, else `magnetar` next to this executable.
fn magnetar_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("MAGNETAR_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locate magnetar-perf's executable")?;
    let path = exe.parent().map(|dir| dir.join("magnetar")).context("magnetar-perf's executable has no directory")?;
    if !path.is_file() {
        bail!(
            "{} not found: build it (cargo build --bin magnetar), set MAGNETAR_BIN, or pass --bookie ADDR",
            path.display()
        );
    }
    Ok(path)
}
