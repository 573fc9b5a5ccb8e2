//! `magnetar-client`: produce and consume messages from the command line, with the verbs and
//! options of Pulsar's `pulsar-client`.
//!
//! ```text
//! magnetar-client produce my-topic -m hello -n 10
//! magnetar-client consume my-topic -s sub -n 10 -p Earliest
//! magnetar-client --url pulsar+ssl://broker:6651 --tls-trust-cert-path ca.pem \
//!     --auth-plugin token --auth-params file:///run/token produce my-topic -m hello
//! magnetar-client --client-conf conf/client.conf consume my-topic -s sub
//! magnetar-client produce orders --schema avro:order.avsc -m '{"id": 1, "item": "book"}' -s ''
//! magnetar-client consume orders -s audit --schema auto -p Earliest
//! ```
//!
//! The service URL is `--url` (or $MAGNETAR_URL), else client.conf's `brokerServiceUrl`,
//! else `pulsar://localhost:6650`; every security flag wins over its client.conf key.
//!
//! Logs go to stderr (filter with RUST_LOG); messages and the summary go to stdout.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use magnetar_client::schema::{
    AutoConsumeSchema, AvroSchema, JsonSchema, Schema, SchemaInfo, StringSchema, TypedConsumer, TypedProducer,
};
use magnetar_client::{
    Client, ClientConfig, ConnectionArgs, InitialPosition, Message, ProducerMessage, SubscriptionType,
    DEFAULT_MAX_PENDING_MESSAGES,
};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "magnetar-client", version, about = "Produce and consume messages on a Magnetar (or Pulsar) cluster")]
struct Cli {
    /// The cluster's service URL: pulsar://host:6650, or pulsar+ssl://host:6651 for TLS
    /// [default: client.conf's brokerServiceUrl, else pulsar://localhost:6650].
    #[arg(long, global = true, env = "MAGNETAR_URL")]
    url: Option<String>,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce messages to a topic.
    Produce(ProduceArgs),
    /// Consume messages from a subscription, acknowledging each.
    Consume(ConsumeArgs),
}

#[derive(Debug, clap::Args)]
struct ProduceArgs {
    /// Topic name (a short name means persistent://public/default/<name>).
    topic: String,

    /// Message bodies to send; each value is split on the separator.
    #[arg(short = 'm', long = "messages", required = true, num_args = 1..)]
    messages: Vec<String>,

    /// What splits a --messages value into several messages; empty for no splitting.
    #[arg(short = 's', long, default_value = ",")]
    separator: String,

    /// How many times to send each message.
    #[arg(short = 'n', long = "num-produce", default_value_t = 1)]
    num_produce: u64,

    /// Partition key of every message.
    #[arg(short = 'k', long)]
    key: Option<String>,

    /// Properties of every message, as key=value (repeat, or separate with commas).
    #[arg(short = 'p', long = "properties", value_delimiter = ',')]
    properties: Vec<String>,

    /// Messages per second; 0 means as fast as possible.
    #[arg(short = 'r', long = "rate", default_value_t = 0.0)]
    rate: f64,

    /// The messages' schema: bytes, string, json:FILE.avsc or avro:FILE.avsc (an Avro
    /// record definition; each message is then a JSON object of that record).
    #[arg(long, default_value = "bytes")]
    schema: SchemaArg,
}

#[derive(Debug, clap::Args)]
struct ConsumeArgs {
    /// Topic name (a short name means persistent://public/default/<name>).
    topic: String,

    /// Subscription name.
    #[arg(short = 's', long = "subscription-name", required = true)]
    subscription: String,

    /// How many messages to consume; 0 means until interrupted.
    #[arg(short = 'n', long = "num-messages", default_value_t = 1)]
    num_messages: u64,

    /// Subscription type.
    #[arg(short = 't', long = "subscription-type", value_enum, default_value = "Exclusive", ignore_case = true)]
    subscription_type: SubscriptionTypeArg,

    /// Where a new subscription starts.
    #[arg(short = 'p', long = "subscription-position", value_enum, default_value = "Latest", ignore_case = true)]
    subscription_position: PositionArg,

    /// Print the content as hexadecimal.
    #[arg(long)]
    hex: bool,

    /// Messages per second; 0 means as fast as possible.
    #[arg(short = 'r', long = "rate", default_value_t = 0.0)]
    rate: f64,

    /// Subscribe with a schema (bytes, string, json:FILE.avsc, avro:FILE.avsc) or `auto`
    /// (AUTO_CONSUME); typed messages print as JSON, decoded with their writer's schema.
    #[arg(long, default_value = "bytes")]
    schema: SchemaArg,
}

/// A `--schema` value.
#[derive(Debug, Clone, PartialEq)]
enum SchemaArg {
    Bytes,
    String,
    Json(std::path::PathBuf),
    Avro(std::path::PathBuf),
    Auto,
}

impl std::str::FromStr for SchemaArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            None if text.eq_ignore_ascii_case("bytes") => Ok(SchemaArg::Bytes),
            None if text.eq_ignore_ascii_case("string") => Ok(SchemaArg::String),
            None if text.eq_ignore_ascii_case("auto") => Ok(SchemaArg::Auto),
            Some((kind, path)) if kind.eq_ignore_ascii_case("json") && !path.is_empty() => {
                Ok(SchemaArg::Json(path.into()))
            }
            Some((kind, path)) if kind.eq_ignore_ascii_case("avro") && !path.is_empty() => {
                Ok(SchemaArg::Avro(path.into()))
            }
            _ => Err(format!("{text:?}: expected bytes, string, json:FILE.avsc, avro:FILE.avsc or auto")),
        }
    }
}

/// A loaded `--schema`.
enum CliSchema {
    Bytes,
    String,
    Json(JsonSchema<serde_json::Value>),
    Avro(AvroSchema<serde_json::Value>),
    Auto,
}

impl SchemaArg {
    fn load(&self) -> anyhow::Result<CliSchema> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).with_context(|| format!("read the schema file {}", path.display()))
        };
        Ok(match self {
            SchemaArg::Bytes => CliSchema::Bytes,
            SchemaArg::String => CliSchema::String,
            SchemaArg::Auto => CliSchema::Auto,
            SchemaArg::Json(path) => {
                CliSchema::Json(JsonSchema::new(&read(path)?).with_context(|| path.display().to_string())?)
            }
            SchemaArg::Avro(path) => {
                CliSchema::Avro(AvroSchema::new(&read(path)?).with_context(|| path.display().to_string())?)
            }
        })
    }
}

impl CliSchema {
    /// The message for one command-line body.
    fn message(&self, body: &str) -> anyhow::Result<ProducerMessage> {
        let json = || serde_json::from_str::<serde_json::Value>(body).with_context(|| format!("{body:?} is not JSON"));
        Ok(match self {
            CliSchema::Bytes => ProducerMessage::new(body.as_bytes().to_vec()),
            CliSchema::String => StringSchema.message(&body.to_owned())?,
            CliSchema::Json(schema) => schema.message(&json()?)?,
            CliSchema::Avro(schema) => schema.message(&json()?)?,
            CliSchema::Auto => bail!("--schema auto is for consume"),
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SubscriptionTypeArg {
    #[value(name = "Exclusive")]
    Exclusive,
    #[value(name = "Shared")]
    Shared,
    #[value(name = "Failover")]
    Failover,
    #[value(name = "Key_Shared")]
    KeyShared,
}

impl From<SubscriptionTypeArg> for SubscriptionType {
    fn from(arg: SubscriptionTypeArg) -> Self {
        match arg {
            SubscriptionTypeArg::Exclusive => SubscriptionType::Exclusive,
            SubscriptionTypeArg::Shared => SubscriptionType::Shared,
            SubscriptionTypeArg::Failover => SubscriptionType::Failover,
            SubscriptionTypeArg::KeyShared => SubscriptionType::KeyShared,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PositionArg {
    #[value(name = "Latest")]
    Latest,
    #[value(name = "Earliest")]
    Earliest,
}

impl From<PositionArg> for InitialPosition {
    fn from(arg: PositionArg) -> Self {
        match arg {
            PositionArg::Latest => InitialPosition::Latest,
            PositionArg::Earliest => InitialPosition::Earliest,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let (url, config) =
        cli.connection.resolve(cli.url.as_deref(), DEFAULT_URL).await.context("read the connection settings")?;
    match cli.command {
        Command::Produce(args) => produce(&url, config, args).await,
        Command::Consume(args) => consume(&url, config, args).await,
    }
}

/// Where to connect when neither --url nor client.conf says.
const DEFAULT_URL: &str = "pulsar://localhost:6650";

async fn produce(url: &str, config: ClientConfig, args: ProduceArgs) -> anyhow::Result<()> {
    let bodies: Vec<String> = args
        .messages
        .iter()
        .flat_map(|value| {
            if args.separator.is_empty() {
                vec![value.clone()]
            } else {
                value.split(args.separator.as_str()).map(str::to_owned).collect()
            }
        })
        .collect();
    let properties = args
        .properties
        .iter()
        .map(|pair| pair.split_once('=').with_context(|| format!("property {pair:?} is not key=value")))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut pacer = Pacer::new(args.rate)?;
    let client = Client::connect_with_config(url, config).await.with_context(|| format!("connect to {url}"))?;
    let schema = args.schema.load()?;
    let builder = client.producer(&args.topic);
    let created = match &schema {
        CliSchema::Bytes => builder.create().await,
        CliSchema::String => builder.with_schema(StringSchema).create().await.map(TypedProducer::into_inner),
        CliSchema::Json(json) => builder.with_schema(json.clone()).create().await.map(TypedProducer::into_inner),
        CliSchema::Avro(avro) => builder.with_schema(avro.clone()).create().await.map(TypedProducer::into_inner),
        CliSchema::Auto => bail!("--schema auto is for consume"),
    };
    let mut producer = created.with_context(|| format!("create a producer on {}", args.topic))?;

    // Pipelined: queue up to the producer's pending limit, then wait for the oldest receipt.
    let mut receipts = VecDeque::new();
    let mut produced = 0u64;
    for _ in 0..args.num_produce {
        for body in &bodies {
            let mut message = schema.message(body)?;
            if let Some(key) = &args.key {
                message = message.key(key.clone());
            }
            for (key, value) in &properties {
                message = message.property(*key, *value);
            }
            pacer.wait().await;
            if receipts.len() >= DEFAULT_MAX_PENDING_MESSAGES {
                if let Some(receipt) = receipts.pop_front() {
                    receipt_done(receipt).await?;
                    produced += 1;
                }
            }
            receipts.push_back(producer.send_async(message).await.context("send a message")?);
        }
    }
    for receipt in receipts {
        receipt_done(receipt).await?;
        produced += 1;
    }
    producer.close().await.context("close the producer")?;
    println!("{produced} messages successfully produced");
    Ok(())
}

async fn receipt_done(receipt: magnetar_client::SendReceipt) -> anyhow::Result<()> {
    let id = receipt.await.context("wait for a send receipt")?;
    tracing::debug!(%id, "message stored");
    Ok(())
}

/// Paces a loop to a rate: the n-th call returns no earlier than n / rate seconds after the
/// first, so a slow moment is caught up rather than lost.
struct Pacer {
    interval: Option<std::time::Duration>,
    next: tokio::time::Instant,
}

impl Pacer {
    fn new(rate: f64) -> anyhow::Result<Pacer> {
        if !rate.is_finite() || rate < 0.0 {
            bail!("--rate must be a non-negative number, got {rate}");
        }
        let interval = (rate > 0.0).then(|| std::time::Duration::from_secs_f64(1.0 / rate));
        Ok(Pacer { interval, next: tokio::time::Instant::now() })
    }

    async fn wait(&mut self) {
        if let Some(interval) = self.interval {
            tokio::time::sleep_until(self.next).await;
            self.next += interval;
        }
    }
}

async fn consume(url: &str, config: ClientConfig, args: ConsumeArgs) -> anyhow::Result<()> {
    let mut pacer = Pacer::new(args.rate)?;
    let client = Client::connect_with_config(url, config).await.with_context(|| format!("connect to {url}"))?;
    let builder = client
        .consumer(&args.topic, &args.subscription)
        .subscription_type(args.subscription_type.into())
        .initial_position(args.subscription_position.into());
    let schema = args.schema.load()?;
    let subscribed = match &schema {
        CliSchema::Bytes => builder.subscribe().await,
        CliSchema::String => builder.with_schema(StringSchema).subscribe().await.map(TypedConsumer::into_inner),
        CliSchema::Json(json) => builder.with_schema(json.clone()).subscribe().await.map(TypedConsumer::into_inner),
        CliSchema::Avro(avro) => builder.with_schema(avro.clone()).subscribe().await.map(TypedConsumer::into_inner),
        CliSchema::Auto => builder.with_schema(AutoConsumeSchema).subscribe().await.map(TypedConsumer::into_inner),
    };
    let mut consumer = subscribed.with_context(|| format!("subscribe {} to {}", args.subscription, args.topic))?;
    let typed = !matches!(schema, CliSchema::Bytes);
    let mut writers = std::collections::HashMap::new();

    let mut consumed = 0u64;
    let stdout = std::io::stdout();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while args.num_messages == 0 || consumed < args.num_messages {
        pacer.wait().await;
        let received = tokio::select! {
            // receive() is cancel-safe: an interrupt loses no message.
            received = consumer.receive() => received,
            _ = &mut interrupted => break,
        };
        let message = match received {
            Ok(message) => message,
            Err(error) if error.is_message_error() => {
                let error = anyhow::Error::from(error);
                tracing::error!("skipping a message that cannot be read: {error:#}");
                continue;
            }
            Err(error) => return Err(error).context("receive a message"),
        };
        {
            let mut out = stdout.lock();
            writeln!(out, "----- got message -----")?;
            let content = if typed { Some(decoded(&client, &mut writers, &message).await) } else { None };
            writeln!(out, "{}", describe(&message, args.hex, content.as_deref()))?;
        }
        consumer.ack(&message).await.context("acknowledge a message")?;
        consumed += 1;
    }
    if let Err(error) = consumer.close().await {
        tracing::warn!(%error, "could not close the consumer cleanly");
    }
    println!("{consumed} messages successfully consumed");
    if args.num_messages != 0 && consumed < args.num_messages {
        bail!("interrupted after {consumed} of {} messages", args.num_messages);
    }
    Ok(())
}

/// A typed message's value as JSON, decoded with the schema it was written with (fetched once
/// per version), or why it cannot be.
async fn decoded(
    client: &Client,
    writers: &mut std::collections::HashMap<Vec<u8>, Option<SchemaInfo>>,
    message: &Message,
) -> String {
    let writer = match &message.schema_version {
        None => None,
        Some(version) => match writers.get(version) {
            Some(found) => found.clone(),
            None => match client.get_schema(&message.topic, Some(version)).await {
                Ok(found) => writers.entry(version.clone()).or_insert(found).clone(),
                Err(error) => return format!("<schema version not found: {error}>"),
            },
        },
    };
    match AutoConsumeSchema.value_of(message, writer.as_ref()) {
        Ok(value) => value.to_string(),
        Err(error) => format!("<cannot decode: {error}>"),
    }
}

/// One message as Pulsar's CLI prints it: `key:[...], properties:[...], content:...`.
fn describe(message: &Message, hex: bool, decoded: Option<&str>) -> String {
    let key = message.key.as_deref().unwrap_or("null");
    let properties: Vec<String> = message.properties.iter().map(|(key, value)| format!("{key}={value}")).collect();
    let content = if let Some(decoded) = decoded {
        decoded.to_owned()
    } else if hex {
        message.payload.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(" ")
    } else {
        String::from_utf8_lossy(&message.payload).into_owned()
    };
    format!("key:[{key}], properties:[{}], content:{content}", properties.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn consume_defaults_match_pulsar() {
        let cli = Cli::parse_from(["magnetar-client", "consume", "t", "-s", "sub"]);
        let Command::Consume(args) = cli.command else { panic!("consume expected") };
        assert_eq!(args.num_messages, 1);
        assert!(matches!(args.subscription_type, SubscriptionTypeArg::Exclusive));
        assert!(matches!(args.subscription_position, PositionArg::Latest));
        assert_eq!(cli.connection, ConnectionArgs::default());
    }

    #[test]
    fn produce_accepts_several_messages_and_url_after_the_verb() {
        let cli = Cli::parse_from([
            "magnetar-client",
            "produce",
            "t",
            "-m",
            "a,b",
            "-m",
            "c",
            "-n",
            "3",
            "--url",
            "pulsar://x:1",
        ]);
        let Command::Produce(args) = cli.command else { panic!("produce expected") };
        assert_eq!(args.messages, ["a,b", "c"]);
        assert_eq!(args.num_produce, 3);
        assert_eq!(cli.url.as_deref(), Some("pulsar://x:1"));
    }

    #[test]
    fn security_flags_are_spelled_as_in_pulsar_and_go_before_or_after_the_verb() {
        let cli = Cli::parse_from([
            "magnetar-client",
            "--url",
            "pulsar+ssl://broker:6651",
            "--auth-plugin",
            "org.apache.pulsar.client.impl.auth.AuthenticationToken",
            "produce",
            "t",
            "-m",
            "x",
            "--auth-params",
            "file:///run/token",
            "--tls-trust-cert-path",
            "/ca.pem",
            "--tls-allow-insecure",
            "--client-conf",
            "/client.conf",
        ]);
        let connection = &cli.connection;
        assert_eq!(connection.auth_plugin.as_deref(), Some("org.apache.pulsar.client.impl.auth.AuthenticationToken"));
        assert_eq!(connection.auth_params.as_deref(), Some("file:///run/token"));
        assert_eq!(connection.tls_trust_cert_path.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert!(connection.tls_allow_insecure);
        assert_eq!(connection.client_conf.as_deref(), Some(std::path::Path::new("/client.conf")));
        let cli = Cli::parse_from(["magnetar-client", "consume", "t", "-s", "s", "--trust-cert-file", "/ca.pem"]);
        assert_eq!(cli.connection.tls_trust_cert_path.as_deref(), Some(std::path::Path::new("/ca.pem")));
    }

    #[test]
    fn rate_flags_are_spelled_as_in_pulsar() {
        let cli = Cli::parse_from(["magnetar-client", "produce", "t", "-m", "x", "-r", "50", "-k", "k1"]);
        let Command::Produce(args) = cli.command else { panic!("produce expected") };
        assert_eq!((args.rate, args.key.as_deref()), (50.0, Some("k1")));
        let cli = Cli::parse_from(["magnetar-client", "consume", "t", "-s", "s", "--rate", "2.5", "-t", "Shared"]);
        let Command::Consume(args) = cli.command else { panic!("consume expected") };
        assert_eq!(args.rate, 2.5);
        assert!(Pacer::new(-1.0).is_err());
    }

    #[tokio::test]
    async fn pacer_spaces_calls_by_the_rate() {
        // 200/s: the 11th call is due 50 ms after the first, never earlier.
        let mut pacer = Pacer::new(200.0).expect("pacer");
        let start = tokio::time::Instant::now();
        for _ in 0..11 {
            pacer.wait().await;
        }
        assert!(start.elapsed() >= std::time::Duration::from_millis(50), "{:?}", start.elapsed());
        let mut unpaced = Pacer::new(0.0).expect("pacer");
        unpaced.wait().await;
        assert!(unpaced.interval.is_none());
    }

    #[test]
    fn key_shared_is_spelled_as_in_pulsar() {
        let cli = Cli::parse_from(["magnetar-client", "consume", "t", "-s", "s", "-t", "Key_Shared", "-p", "earliest"]);
        let Command::Consume(args) = cli.command else { panic!("consume expected") };
        assert!(matches!(args.subscription_type, SubscriptionTypeArg::KeyShared));
        assert!(matches!(args.subscription_position, PositionArg::Earliest));
    }

    #[test]
    fn message_is_described_like_pulsar_cli() {
        let message = Message {
            id: magnetar_client::MessageId::entry(1, 2),
            topic: "persistent://public/default/t".into(),
            payload: bytes::Bytes::from_static(b"hello"),
            key: None,
            properties: [("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())].into(),
            publish_time: 0,
            event_time: None,
            producer_name: "p".into(),
            redelivery_count: 0,
            schema_version: None,
            key_is_base64: false,
            null_value: false,
            chunk_ids: Vec::new(),
        };
        assert_eq!(describe(&message, false, None), "key:[null], properties:[a=1, b=2], content:hello");
        assert_eq!(describe(&message, true, None), "key:[null], properties:[a=1, b=2], content:68 65 6c 6c 6f");
    }
}
