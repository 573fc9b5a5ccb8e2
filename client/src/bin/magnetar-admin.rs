//! `magnetar-admin`: the admin REST API from the command line, with pulsar-admin's verbs and
//! flags (`tenants list`, `topics stats persistent://t/ns/x`, `topics peek-messages -s sub
//! -n 3 ...`). Human tables by default, `--output json` for scripts. The admin URL and
//! authentication come from flags, `MAGNETAR_ADMIN_URL`, or a client.conf (`--client-conf`
//! or `PULSAR_CLIENT_CONF`: webServiceUrl, authPlugin, authParams, tlsTrustCertsFilePath).
//! A refused call prints the server's reason and exits 1.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use hyper::Method;
use magnetar_client::admin::{AdminAnswer, AdminClient};
use magnetar_client::{ClientError, ConnectionArgs, MessageId, ParseMessageIdError};
use serde_json::{json, Value};

const DEFAULT_ADMIN_URL: &str = "http://localhost:8080";

#[derive(Debug, Parser)]
#[command(name = "magnetar-admin", version, about = "Administer a Magnetar (or Pulsar) cluster")]
struct Cli {
    /// The admin API (Pulsar's webServiceUrl).
    #[arg(global = true, long = "admin-url", env = "MAGNETAR_ADMIN_URL", value_name = "URL")]
    admin_url: Option<String>,
    /// How answers are printed.
    #[arg(global = true, long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Clusters: list, get.
    Clusters {
        #[command(subcommand)]
        command: Clusters,
    },
    /// Tenants: list, get, create, delete.
    Tenants {
        #[command(subcommand)]
        command: Tenants,
    },
    /// Namespaces: list, create, delete, policies.
    Namespaces {
        #[command(subcommand)]
        command: Namespaces,
    },
    /// Topics, their subscriptions and messages.
    Topics {
        #[command(subcommand)]
        command: Topics,
    },
    /// A topic's schemas.
    Schemas {
        #[command(subcommand)]
        command: Schemas,
    },
    /// The cluster's brokers.
    Brokers {
        #[command(subcommand)]
        command: Brokers,
    },
    /// The cluster's bookies.
    Bookies {
        #[command(subcommand)]
        command: Bookies,
    },
}

#[derive(Debug, Subcommand)]
enum Clusters {
    List,
    Get { cluster: String },
}

#[derive(Debug, Subcommand)]
enum Tenants {
    List,
    Get {
        tenant: String,
    },
    Create {
        tenant: String,
        /// Roles that administer the tenant, comma separated.
        #[arg(long = "admin-roles", short = 'r', value_delimiter = ',')]
        admin_roles: Vec<String>,
        /// Clusters the tenant may use, comma separated (default: every cluster).
        #[arg(long = "allowed-clusters", short = 'c', value_delimiter = ',')]
        allowed_clusters: Vec<String>,
    },
    Delete {
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
enum Namespaces {
    /// The namespaces of a tenant.
    List { tenant: String },
    Create {
        /// tenant/namespace
        namespace: String,
    },
    Delete {
        namespace: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Every policy of a namespace.
    Policies { namespace: String },
}

#[derive(Debug, Subcommand)]
enum Topics {
    /// The topics of a namespace (partitions included).
    List {
        namespace: String,
    },
    /// The partitioned topics of a namespace.
    ListPartitionedTopics {
        namespace: String,
    },
    /// Creates a non-partitioned topic.
    Create {
        topic: String,
    },
    CreatePartitionedTopic {
        topic: String,
        #[arg(long, short = 'p')]
        partitions: u32,
    },
    Delete {
        topic: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    DeletePartitionedTopic {
        topic: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Closes the topic on its broker; clients reconnect.
    Unload {
        topic: String,
    },
    /// Rates, counters, publishers, subscriptions and consumers.
    Stats {
        topic: String,
    },
    /// Ledgers and cursors.
    StatsInternal {
        topic: String,
    },
    /// The partitions' stats summed.
    PartitionedStats {
        topic: String,
        /// Also each partition's own stats.
        #[arg(long = "per-partition")]
        per_partition: bool,
    },
    Subscriptions {
        topic: String,
    },
    CreateSubscription {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
        /// Where it starts: latest, earliest, or a message id ledger:entry.
        #[arg(long = "messageId", short = 'm', default_value = "latest")]
        message_id: StartPosition,
    },
    /// Deletes a subscription.
    Unsubscribe {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
        /// Disconnects its consumers first.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Skips N messages of a subscription.
    Skip {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
        #[arg(long = "count", short = 'n')]
        count: u64,
    },
    /// Skips every message of a subscription.
    ClearBacklog {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
    },
    /// Moves a subscription to a time (`-t 10m`: ten minutes ago) or a message (`-m L:E`).
    ResetCursor {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
        #[arg(long = "time", short = 't', conflicts_with = "message_id")]
        time: Option<String>,
        #[arg(long = "messageId", short = 'm')]
        message_id: Option<MessageId>,
    },
    /// Acknowledges messages older than T seconds for a subscription (or all with --all).
    ExpireMessages {
        topic: String,
        #[arg(long, short = 's', required_unless_present = "all")]
        subscription: Option<String>,
        #[arg(long = "expireTime", short = 't')]
        expire_time: u64,
        #[arg(long = "all", short = 'a')]
        all: bool,
    },
    /// The next N messages of a subscription, without consuming them.
    PeekMessages {
        topic: String,
        #[arg(long, short = 's')]
        subscription: String,
        #[arg(long = "count", short = 'n', default_value_t = 1)]
        count: u64,
    },
    /// The Nth message from the start or the end of the topic.
    ExamineMessage {
        topic: String,
        #[arg(long = "initialPosition", short = 'i', default_value = "latest")]
        initial_position: String,
        #[arg(long = "messagePosition", short = 'm', default_value_t = 1)]
        message_position: u64,
    },
    GetMessageById {
        topic: String,
        #[arg(long = "ledgerId", short = 'l')]
        ledger_id: u64,
        #[arg(long = "entryId", short = 'e')]
        entry_id: u64,
    },
    LastMessageId {
        topic: String,
    },
    /// No more publishes, ever; consumers get REACHED_END_OF_TOPIC at the end.
    Terminate {
        topic: String,
    },
    /// Starts compacting the topic (each key's latest value, read with read_compacted).
    Compact {
        topic: String,
    },
    /// The status of the topic's last compaction (NOT_RUN, RUNNING, SUCCESS, ERROR).
    CompactionStatus {
        topic: String,
    },
}

#[derive(Debug, Subcommand)]
enum Schemas {
    /// The latest schema, or one version.
    Get {
        topic: String,
        #[arg(long)]
        version: Option<u64>,
    },
    Delete {
        topic: String,
    },
}

#[derive(Debug, Subcommand)]
enum Brokers {
    /// The live brokers of a cluster.
    List {
        cluster: String,
    },
    LeaderBroker,
    Healthcheck,
}

#[derive(Debug, Subcommand)]
enum Bookies {
    ListBookies,
}

/// `persistent://t/ns/x` or `t/ns/x` as the admin path's `persistent/t/ns/x`.
fn topic_path(topic: &str) -> Result<String, ClientError> {
    let (domain, rest) = match topic.split_once("://") {
        Some((domain, rest)) => (domain, rest),
        None => ("persistent", topic),
    };
    if rest.split('/').count() != 3 || rest.split('/').any(str::is_empty) {
        return Err(ClientError::InvalidTopic {
            topic: topic.to_owned(),
            reason: "a topic is persistent://tenant/namespace/name or tenant/namespace/name",
        });
    }
    Ok(format!("/admin/v2/{domain}/{rest}"))
}

/// Where a new subscription starts (`--messageId`).
#[derive(Debug, Clone)]
enum StartPosition {
    Latest,
    Earliest,
    At(MessageId),
}

impl std::str::FromStr for StartPosition {
    type Err = ParseMessageIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "latest" => Ok(StartPosition::Latest),
            "earliest" => Ok(StartPosition::Earliest),
            id => id.parse().map(StartPosition::At),
        }
    }
}

/// A message id as the API's body.
fn message_id_body(id: &MessageId) -> Value {
    json!({ "ledgerId": id.ledger_id, "entryId": id.entry_id, "partitionIndex": id.partition })
}

/// `10m`, `2h`, `1d`, `30s` or plain seconds, as pulsar-admin's relative times.
fn relative_seconds(text: &str) -> Result<u64, ClientError> {
    let bad = || ClientError::InvalidUrl { url: text.to_owned(), reason: "a time is N, Ns, Nm, Nh, Nd or Nw" };
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    Ok(number * unit)
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        Value::Number(number) => match number.as_f64() {
            Some(float) if number.is_f64() => format!("{float:.3}"),
            _ => number.to_string(),
        },
        other => other.to_string(),
    }
}

/// Prints a JSON answer as tables: scalars of an object as a two-column table, lists of
/// objects as one row each, nested objects under their name.
fn print_table(value: &Value, title: Option<&str>) {
    match value {
        Value::Null => {}
        Value::Array(items) if items.iter().all(|item| !item.is_object()) => {
            if let Some(title) = title {
                println!("{title}:");
            }
            for item in items {
                println!("{}", scalar(item));
            }
        }
        Value::Array(items) => {
            if let Some(title) = title {
                println!("{title}:");
            }
            let mut columns: Vec<String> = Vec::new();
            for item in items {
                for (key, field) in item.as_object().into_iter().flatten() {
                    if !field.is_object() && !field.is_array() && !columns.contains(key) {
                        columns.push(key.clone());
                    }
                }
            }
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED).set_header(columns.clone());
            for item in items {
                table.add_row(columns.iter().map(|column| item.get(column).map(scalar).unwrap_or_default()));
            }
            println!("{table}");
        }
        Value::Object(fields) => {
            let scalars: Vec<_> = fields.iter().filter(|(_, v)| !v.is_object() && !v.is_array()).collect();
            if !scalars.is_empty() {
                if let Some(title) = title {
                    println!("{title}:");
                }
                let mut table = Table::new();
                table.load_preset(UTF8_FULL_CONDENSED);
                for (key, field) in scalars {
                    table.add_row(vec![key.clone(), scalar(field)]);
                }
                println!("{table}");
            }
            for (key, field) in fields.iter().filter(|(_, v)| v.is_object() || v.is_array()) {
                let name = title.map_or_else(|| key.clone(), |title| format!("{title} / {key}"));
                let empty =
                    field.as_array().is_some_and(Vec::is_empty) || field.as_object().is_some_and(|o| o.is_empty());
                if empty {
                    println!("{name}: (none)");
                } else {
                    print_table(field, Some(&name));
                }
            }
        }
        other => println!("{}", scalar(other)),
    }
}

fn print(output: Output, value: &Value) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Output::Table => print_table(value, None),
    }
}

/// A message answer (peek, examine, by id) as JSON: its id, its `X-Pulsar-*` metadata and its
/// payload (text if it is UTF-8, base64 otherwise).
fn message_json(answer: &AdminAnswer) -> Value {
    use base64::Engine;
    let mut properties = serde_json::Map::new();
    let mut metadata = serde_json::Map::new();
    for (name, value) in &answer.headers {
        let lower = name.to_ascii_lowercase();
        if let Some(property) = lower.strip_prefix("x-pulsar-property-") {
            let original = &name[name.len() - property.len()..];
            properties.insert(original.to_owned(), json!(value));
        } else if let Some(field) = lower.strip_prefix("x-pulsar-") {
            if field != "message-id" {
                metadata.insert(field.to_owned(), json!(value));
            }
        }
    }
    let payload = match std::str::from_utf8(&answer.body) {
        Ok(text) => json!(text),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(&answer.body) }),
    };
    json!({
        "messageId": answer.header("x-pulsar-message-id").unwrap_or_default(),
        "properties": properties,
        "metadata": metadata,
        "payload": payload,
    })
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let mut connection = cli.connection.clone();
    if connection.client_conf.is_none() {
        connection.client_conf = std::env::var_os("PULSAR_CLIENT_CONF").map(Into::into);
    }
    let conf = connection.resolve_admin(cli.admin_url.as_deref(), DEFAULT_ADMIN_URL).await?;
    let admin = AdminClient::new(&conf).await?;
    let output = cli.output;
    let done = |what: String| {
        if output == Output::Json {
            println!("{}", json!({ "done": what }));
        } else {
            println!("{what}");
        }
    };
    match cli.command {
        Command::Clusters { command } => match command {
            Clusters::List => print(output, &admin.get("/admin/v2/clusters").await?),
            Clusters::Get { cluster } => print(output, &admin.get(&format!("/admin/v2/clusters/{cluster}")).await?),
        },
        Command::Tenants { command } => match command {
            Tenants::List => print(output, &admin.get("/admin/v2/tenants").await?),
            Tenants::Get { tenant } => print(output, &admin.get(&format!("/admin/v2/tenants/{tenant}")).await?),
            Tenants::Create { tenant, admin_roles, allowed_clusters } => {
                let allowed = if allowed_clusters.is_empty() {
                    admin.get("/admin/v2/clusters").await?
                } else {
                    json!(allowed_clusters)
                };
                let body = json!({ "adminRoles": admin_roles, "allowedClusters": allowed });
                admin.call(Method::PUT, &format!("/admin/v2/tenants/{tenant}"), Some(body)).await?;
                done(format!("tenant {tenant} created"));
            }
            Tenants::Delete { tenant } => {
                admin.call(Method::DELETE, &format!("/admin/v2/tenants/{tenant}"), None).await?;
                done(format!("tenant {tenant} deleted"));
            }
        },
        Command::Namespaces { command } => match command {
            Namespaces::List { tenant } => print(output, &admin.get(&format!("/admin/v2/namespaces/{tenant}")).await?),
            Namespaces::Create { namespace } => {
                admin.call(Method::PUT, &format!("/admin/v2/namespaces/{namespace}"), None).await?;
                done(format!("namespace {namespace} created"));
            }
            Namespaces::Delete { namespace, force } => {
                let path = format!("/admin/v2/namespaces/{namespace}{}", if force { "?force=true" } else { "" });
                admin.call(Method::DELETE, &path, None).await?;
                done(format!("namespace {namespace} deleted"));
            }
            Namespaces::Policies { namespace } => {
                print(output, &admin.get(&format!("/admin/v2/namespaces/{namespace}")).await?)
            }
        },
        Command::Topics { command } => topics(&admin, output, command, &done).await?,
        Command::Schemas { command } => match command {
            Schemas::Get { topic, version } => {
                let base = topic_path(&topic)?.replacen("/admin/v2/persistent/", "/admin/v2/schemas/", 1);
                let path = match version {
                    Some(version) => format!("{base}/schema/{version}"),
                    None => format!("{base}/schema"),
                };
                print(output, &admin.get(&path).await?);
            }
            Schemas::Delete { topic } => {
                let base = topic_path(&topic)?.replacen("/admin/v2/persistent/", "/admin/v2/schemas/", 1);
                admin.call(Method::DELETE, &format!("{base}/schema"), None).await?;
                done(format!("schema of {topic} deleted"));
            }
        },
        Command::Brokers { command } => match command {
            Brokers::List { cluster } => print(output, &admin.get(&format!("/admin/v2/brokers/{cluster}")).await?),
            Brokers::LeaderBroker => print(output, &admin.get("/admin/v2/brokers/leaderBroker").await?),
            Brokers::Healthcheck => {
                let answer = admin.call(Method::GET, "/admin/v2/brokers/health", None).await?;
                done(String::from_utf8_lossy(&answer.body).into_owned());
            }
        },
        Command::Bookies { command } => match command {
            Bookies::ListBookies => print(output, &admin.get("/admin/v2/bookies/all").await?),
        },
    }
    Ok(())
}

async fn topics(
    admin: &AdminClient,
    output: Output,
    command: Topics,
    done: &dyn Fn(String),
) -> Result<(), ClientError> {
    match command {
        Topics::List { namespace } => print(output, &admin.get(&format!("/admin/v2/persistent/{namespace}")).await?),
        Topics::ListPartitionedTopics { namespace } => {
            print(output, &admin.get(&format!("/admin/v2/persistent/{namespace}/partitioned")).await?)
        }
        Topics::Create { topic } => {
            admin.call(Method::PUT, &topic_path(&topic)?, None).await?;
            done(format!("topic {topic} created"));
        }
        Topics::CreatePartitionedTopic { topic, partitions } => {
            admin.call(Method::PUT, &format!("{}/partitions", topic_path(&topic)?), Some(json!(partitions))).await?;
            done(format!("partitioned topic {topic} created with {partitions} partitions"));
        }
        Topics::Delete { topic, force } => {
            let path = format!("{}{}", topic_path(&topic)?, if force { "?force=true" } else { "" });
            admin.call(Method::DELETE, &path, None).await?;
            done(format!("topic {topic} deleted"));
        }
        Topics::DeletePartitionedTopic { topic, force } => {
            let path = format!("{}/partitions{}", topic_path(&topic)?, if force { "?force=true" } else { "" });
            admin.call(Method::DELETE, &path, None).await?;
            done(format!("partitioned topic {topic} deleted"));
        }
        Topics::Unload { topic } => {
            admin.call(Method::PUT, &format!("{}/unload", topic_path(&topic)?), None).await?;
            done(format!("topic {topic} unloaded"));
        }
        Topics::Stats { topic } => print(output, &admin.get(&format!("{}/stats", topic_path(&topic)?)).await?),
        Topics::StatsInternal { topic } => {
            print(output, &admin.get(&format!("{}/internalStats", topic_path(&topic)?)).await?)
        }
        Topics::PartitionedStats { topic, per_partition } => {
            let path = format!("{}/partitioned-stats?perPartition={per_partition}", topic_path(&topic)?);
            print(output, &admin.get(&path).await?)
        }
        Topics::Subscriptions { topic } => {
            print(output, &admin.get(&format!("{}/subscriptions", topic_path(&topic)?)).await?)
        }
        Topics::CreateSubscription { topic, subscription, message_id } => {
            let body = match message_id {
                StartPosition::Latest => None,
                StartPosition::Earliest => Some(json!({ "ledgerId": -1, "entryId": -1, "partitionIndex": -1 })),
                StartPosition::At(id) => Some(message_id_body(&id)),
            };
            let path = format!("{}/subscription/{subscription}", topic_path(&topic)?);
            admin.call(Method::PUT, &path, body).await?;
            done(format!("subscription {subscription} created on {topic}"));
        }
        Topics::Unsubscribe { topic, subscription, force } => {
            let path = format!(
                "{}/subscription/{subscription}{}",
                topic_path(&topic)?,
                if force { "?force=true" } else { "" }
            );
            admin.call(Method::DELETE, &path, None).await?;
            done(format!("subscription {subscription} deleted from {topic}"));
        }
        Topics::Skip { topic, subscription, count } => {
            let path = format!("{}/subscription/{subscription}/skip/{count}", topic_path(&topic)?);
            admin.call(Method::POST, &path, None).await?;
            done(format!("skipped {count} messages of {subscription}"));
        }
        Topics::ClearBacklog { topic, subscription } => {
            let path = format!("{}/subscription/{subscription}/skip_all", topic_path(&topic)?);
            admin.call(Method::POST, &path, None).await?;
            done(format!("backlog of {subscription} cleared"));
        }
        Topics::ResetCursor { topic, subscription, time, message_id } => {
            let base = format!("{}/subscription/{subscription}/resetcursor", topic_path(&topic)?);
            match (time, message_id) {
                (Some(time), _) => {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |since| since.as_millis() as u64);
                    let at = now_ms.saturating_sub(relative_seconds(&time)? * 1000);
                    admin.call(Method::POST, &format!("{base}/{at}"), None).await?;
                }
                (None, Some(id)) => {
                    admin.call(Method::POST, &base, Some(message_id_body(&id))).await?;
                }
                (None, None) => {
                    return Err(ClientError::InvalidUrl { url: String::new(), reason: "give --time or --messageId" })
                }
            }
            done(format!("cursor of {subscription} reset"));
        }
        Topics::ExpireMessages { topic, subscription, expire_time, all } => {
            let path = match (all, subscription) {
                (false, Some(subscription)) => {
                    format!("{}/subscription/{subscription}/expireMessages/{expire_time}", topic_path(&topic)?)
                }
                _ => format!("{}/all_subscription/expireMessages/{expire_time}", topic_path(&topic)?),
            };
            admin.call(Method::POST, &path, None).await?;
            done(format!("messages older than {expire_time} s expired"));
        }
        Topics::PeekMessages { topic, subscription, count } => {
            let mut messages = Vec::new();
            for n in 1..=count {
                let path = format!("{}/subscription/{subscription}/position/{n}", topic_path(&topic)?);
                match admin.call(Method::GET, &path, None).await {
                    Ok(answer) => messages.push(message_json(&answer)),
                    // Fewer messages than asked: what there is.
                    Err(ClientError::Admin { status: 404, .. }) if !messages.is_empty() => break,
                    Err(error) => return Err(error),
                }
            }
            print_messages(output, &messages);
        }
        Topics::ExamineMessage { topic, initial_position, message_position } => {
            let path = format!(
                "{}/examinemessage?initialPosition={initial_position}&messagePosition={message_position}",
                topic_path(&topic)?
            );
            print_messages(output, &[message_json(&admin.call(Method::GET, &path, None).await?)]);
        }
        Topics::GetMessageById { topic, ledger_id, entry_id } => {
            let path = format!("{}/ledger/{ledger_id}/entry/{entry_id}", topic_path(&topic)?);
            print_messages(output, &[message_json(&admin.call(Method::GET, &path, None).await?)]);
        }
        Topics::Terminate { topic } => {
            let answer = admin.call(Method::POST, &format!("{}/terminate", topic_path(&topic)?), None).await?;
            print(output, &answer.json()?);
        }
        Topics::LastMessageId { topic } => {
            print(output, &admin.get(&format!("{}/lastMessageId", topic_path(&topic)?)).await?)
        }
        Topics::Compact { topic } => {
            admin.call(Method::PUT, &format!("{}/compaction", topic_path(&topic)?), None).await?;
            println!("Topic compaction requested for {topic}");
        }
        Topics::CompactionStatus { topic } => {
            print(output, &admin.get(&format!("{}/compaction", topic_path(&topic)?)).await?)
        }
    }
    Ok(())
}

fn print_messages(output: Output, messages: &[Value]) {
    if output == Output::Json {
        return print(output, &json!(messages));
    }
    for message in messages {
        println!("Message ID: {}", scalar(&message["messageId"]));
        for (section, title) in [("properties", "Properties"), ("metadata", "Metadata")] {
            if let Some(fields) = message[section].as_object().filter(|fields| !fields.is_empty()) {
                let text: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", scalar(v))).collect();
                println!("{title}: {}", text.join(", "));
            }
        }
        println!("{}\n", scalar(&message["payload"]));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
