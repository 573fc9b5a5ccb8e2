//! A topic's stats in Pulsar's shapes: `stats` (TopicStats: rates and counters, publishers,
//! subscriptions with their consumers), `partitioned-stats` (the partitions' stats summed,
//! and each partition's with `perPartition`), and `internalStats` (the managed ledger: ledgers
//! with entries and sizes, cursors with their mark-delete position and individually deleted
//! ranges).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::{redirect_to_owner, ApiError, AppState};
use crate::dispatcher::SubscriptionType;
use crate::error::BrokerError;
use crate::managed_ledger::Position;
use crate::partitions;
use crate::service::BrokerService;
use crate::stats::{Meter, ProducerStats};
use crate::subscription::SubscriptionSnapshot;
use crate::topic::Topic;
use crate::topic_name::{partition_topic_name, TopicName};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v2/persistent/{tenant}/{namespace}/{topic}/stats", get(topic_stats))
        .route("/admin/v2/persistent/{tenant}/{namespace}/{topic}/internalStats", get(internal_stats))
        .route("/admin/v2/persistent/{tenant}/{namespace}/{topic}/partitioned-stats", get(partitioned_stats))
        .route(
            "/admin/v2/persistent/{tenant}/{namespace}/{topic}/compaction",
            get(compaction_status).put(trigger_compaction),
        )
}

/// The persistent topic of an admin path, loaded here: 307 to its owner if another broker
/// serves it, 404 if it was never created.
pub(super) async fn served_topic(
    service: &BrokerService,
    tenant: &str,
    ns: &str,
    topic: &str,
    rest: &str,
) -> Result<Result<std::sync::Arc<Topic>, Response>, ApiError> {
    let name = TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    super::existing_namespace(service, name.namespace_name()).await?;
    if let Some(redirect) =
        redirect_to_owner(service, &name, &format!("/admin/v2/persistent/{tenant}/{ns}/{topic}{rest}")).await?
    {
        return Ok(Err(redirect));
    }
    if !service.topic_exists(&name).await? {
        let what = if partitions::get(service.meta.as_ref(), &name).await?.is_some() {
            format!("{name} is a partitioned topic: ask its partitions, or partitioned-stats")
        } else {
            format!("Topic {name} not found")
        };
        return Err(ApiError(StatusCode::NOT_FOUND, what));
    }
    Ok(Ok(service.topic(&name).await?))
}

/// Rates and counters of a meter, under Pulsar's names for one direction (`In` or `Out`).
fn meter_fields(fields: &mut Map<String, Value>, meter: &Meter, direction: &str) {
    let rates = meter.rates();
    let (messages, bytes) = meter.totals();
    fields.insert(format!("msgRate{direction}"), json!(rates.messages));
    fields.insert(format!("msgThroughput{direction}"), json!(rates.bytes));
    fields.insert(format!("msg{direction}Counter"), json!(messages));
    fields.insert(format!("bytes{direction}Counter"), json!(bytes));
}

fn publisher_json(producer: &ProducerStats) -> Value {
    let rates = producer.published.rates();
    let (messages, bytes) = producer.published.totals();
    json!({
        "accessMode": producer.access_mode,
        "msgRateIn": rates.messages,
        "msgThroughputIn": rates.bytes,
        "averageMsgSize": if rates.messages > 0.0 { rates.bytes / rates.messages } else { 0.0 },
        "producerId": producer.producer_id,
        "producerName": producer.name,
        "address": producer.client.address,
        "connectedSince": producer.client.connected_since,
        "clientVersion": producer.client.client_version,
        "msgInCounter": messages,
        "bytesInCounter": bytes,
        "metadata": {},
    })
}

/// Pulsar's `[(l:e1..l:e2],...]` ranges: each run of individually acknowledged entries as
/// the open interval from the entry before it.
fn deleted_ranges(runs: &[(Position, Position)]) -> String {
    let parts: Vec<String> = runs
        .iter()
        .map(|(first, last)| {
            let before = first.entry_id.checked_sub(1).map_or(-1, |e| e as i64);
            format!("({}:{before}..{last}]", first.ledger_id)
        })
        .collect();
    format!("[{}]", parts.join(","))
}

fn position_text(position: Option<Position>) -> String {
    position.map_or_else(|| "-1:-1".to_owned(), |p| p.to_string())
}

fn subscription_json(snapshot: &SubscriptionSnapshot, dispatched: &Meter, redelivered: &Meter) -> Value {
    let consumers: Vec<Value> = snapshot
        .consumers
        .iter()
        .map(|consumer| {
            let mut fields = Map::new();
            meter_fields(&mut fields, &consumer.stats.dispatched, "Out");
            fields.insert("msgRateRedeliver".into(), json!(consumer.stats.redelivered.rates().messages));
            fields.insert("consumerName".into(), json!(consumer.stats.name));
            fields.insert("availablePermits".into(), json!(consumer.permits));
            fields.insert("unackedMessages".into(), json!(consumer.unacked));
            fields.insert("blockedConsumerOnUnackedMsgs".into(), json!(consumer.blocked));
            fields.insert("address".into(), json!(consumer.stats.client.address));
            fields.insert("connectedSince".into(), json!(consumer.stats.client.connected_since));
            fields.insert("clientVersion".into(), json!(consumer.stats.client.client_version));
            fields.insert("metadata".into(), json!({}));
            Value::Object(fields)
        })
        .collect();
    let mut fields = Map::new();
    meter_fields(&mut fields, dispatched, "Out");
    fields.insert("msgRateRedeliver".into(), json!(redelivered.rates().messages));
    fields.insert("msgBacklog".into(), json!(snapshot.backlog));
    fields.insert("msgBacklogNoDelayed".into(), json!(snapshot.backlog));
    fields.insert("backlogSize".into(), json!(snapshot.backlog_bytes));
    fields.insert("unackedMessages".into(), json!(snapshot.unacked));
    fields.insert("blockedSubscriptionOnUnackedMsgs".into(), json!(snapshot.blocked));
    fields.insert("type".into(), json!(snapshot.sub_type.map_or("None", SubscriptionType::name)));
    if let Some(active) = &snapshot.active_consumer {
        fields.insert("activeConsumerName".into(), json!(active));
    }
    fields.insert("consumers".into(), Value::Array(consumers));
    fields.insert("isDurable".into(), json!(snapshot.durable));
    fields.insert("isReplicated".into(), json!(false));
    fields.insert("markDeletePosition".into(), json!(position_text(snapshot.mark_delete)));
    fields.insert("readPosition".into(), json!(position_text(snapshot.read_after)));
    fields.insert("nonContiguousDeletedMessagesRanges".into(), json!(snapshot.individually_acked.len()));
    Value::Object(fields)
}

/// Pulsar's TopicStats of a topic served here.
pub(super) async fn topic_stats_json(topic: &Topic) -> Value {
    let ledger = topic.ledger();
    let storage = ledger.storage_stats();
    let views = topic.subscription_views().await;
    let idle = Meter::default();
    let mut subscriptions = Map::new();
    let (mut rate_out, mut throughput_out, mut messages_out, mut bytes_out) = (0.0, 0.0, 0u64, 0u64);
    for view in &views {
        // A subscription no consumer opened since the topic loaded has sent nothing.
        let (dispatched, redelivered) =
            view.open.as_ref().map_or((&idle, &idle), |open| (open.dispatched(), open.redelivered()));
        let (rates, (messages, bytes)) = (dispatched.rates(), dispatched.totals());
        (rate_out, throughput_out, messages_out, bytes_out) =
            (rate_out + rates.messages, throughput_out + rates.bytes, messages_out + messages, bytes_out + bytes);
        subscriptions.insert(view.name.clone(), subscription_json(&view.snapshot, dispatched, redelivered));
    }
    let (publishers, waiting) = topic.producer_stats();
    let mut fields = Map::new();
    meter_fields(&mut fields, topic.received(), "In");
    let rate_in = topic.received().rates();
    fields.insert(
        "averageMsgSize".into(),
        json!(if rate_in.messages > 0.0 { rate_in.bytes / rate_in.messages } else { 0.0 }),
    );
    fields.insert("msgRateOut".into(), json!(rate_out));
    fields.insert("msgThroughputOut".into(), json!(throughput_out));
    fields.insert("msgOutCounter".into(), json!(messages_out));
    fields.insert("bytesOutCounter".into(), json!(bytes_out));
    fields.insert("storageSize".into(), json!(storage.size_bytes));
    fields.insert("backlogSize".into(), json!(topic.backlog_size(&views)));
    fields.insert("publishers".into(), Value::Array(publishers.iter().map(|p| publisher_json(p)).collect()));
    fields.insert("waitingPublishers".into(), json!(waiting));
    fields.insert("subscriptions".into(), Value::Object(subscriptions));
    fields.insert("replication".into(), json!({}));
    fields
        .insert("deduplicationStatus".into(), json!(if topic.limits().deduplication { "Enabled" } else { "Disabled" }));
    fields.insert("lastConfirmedEntry".into(), json!(position_text(ledger.last_confirmed())));
    fields.insert("ledgerCount".into(), json!(storage.ledgers));
    fields.insert("compaction".into(), json!(topic.compaction().stats()));
    Value::Object(fields)
}

async fn topic_stats(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    match served_topic(&service, &tenant, &ns, &topic, "/stats").await? {
        Ok(topic) => Ok(Json(topic_stats_json(&topic).await).into_response()),
        Err(redirect) => Ok(redirect),
    }
}

/// `PUT .../compaction`: starts compacting the topic (204); 409 while a compaction runs.
async fn trigger_compaction(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    match served_topic(&service, &tenant, &ns, &topic, "/compaction").await? {
        Ok(topic) => {
            topic.trigger_compaction()?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(redirect) => Ok(redirect),
    }
}

/// `GET .../compaction`: the status of the last compaction since the topic loaded
/// (`NOT_RUN`, `RUNNING`, `SUCCESS`, `ERROR` with `lastError`).
async fn compaction_status(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    match served_topic(&service, &tenant, &ns, &topic, "/compaction").await? {
        Ok(topic) => Ok(Json(topic.compaction().status()).into_response()),
        Err(redirect) => Ok(redirect),
    }
}

/// Pulsar's PersistentTopicInternalStats.
async fn internal_stats(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let topic = match served_topic(&service, &tenant, &ns, &topic, "/internalStats").await? {
        Ok(topic) => topic,
        Err(redirect) => return Ok(redirect),
    };
    let ledger = topic.ledger();
    let storage = ledger.storage_stats();
    let sizes = ledger.ledger_sizes();
    let ledgers: Vec<Value> = sizes
        .iter()
        .map(|(ledger_id, entries, size)| {
            json!({ "ledgerId": ledger_id, "entries": entries, "size": size, "offloaded": false, "underReplicated": false })
        })
        .collect();
    let (current_entries, current_size) = sizes.last().map_or((0, 0), |(_, entries, size)| (*entries, *size));
    let views: BTreeMap<String, SubscriptionSnapshot> =
        topic.subscription_views().await.into_iter().map(|view| (view.name, view.snapshot)).collect();
    let mut cursors = Map::new();
    for (name, cursor) in ledger.cursors() {
        let Some(snapshot) = views.get(&name) else { continue };
        let (mark_delete, ranges, read) = (snapshot.mark_delete, &snapshot.individually_acked, snapshot.read_after);
        let next_read = ledger.next_position(read);
        cursors.insert(
            name,
            json!({
                "markDeletePosition": position_text(mark_delete),
                "readPosition": position_text(next_read.or(read)),
                "individuallyDeletedMessages": deleted_ranges(ranges),
                "totalNonContiguousDeletedMessagesRange": ranges.len(),
                "persistedMarkDeletePosition": position_text(cursor.persisted_mark_delete()),
                "cursorLedger": cursor.ledger_id().map_or(-1, |id| id as i64),
                "messagesConsumedCounter": ledger.entries_after(None).saturating_sub(snapshot.backlog),
                "numberOfEntriesSinceFirstNotAckedMessage": ledger.entries_after(mark_delete),
                "state": "Open",
                "properties": {},
            }),
        );
    }
    Ok(Json(json!({
        "entriesAddedCounter": topic.published(),
        "numberOfEntries": storage.entries,
        "totalSize": storage.size_bytes,
        "currentLedgerEntries": current_entries,
        "currentLedgerSize": current_size,
        "lastConfirmedEntry": position_text(ledger.last_confirmed()),
        "state": if topic.is_fenced() { "Closed" } else { "LedgerOpened" },
        "ledgers": ledgers,
        "cursors": cursors,
    }))
    .into_response())
}

#[derive(serde::Deserialize)]
struct PerPartition {
    #[serde(rename = "perPartition", default = "yes")]
    per_partition: bool,
}

fn yes() -> bool {
    true
}

/// Adds `from`'s numbers into `into` (Pulsar sums partitions' stats: rates, counters,
/// sizes; lists are joined; subscriptions of the same name are summed field by field).
fn add_stats(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (None, value) => {
                into.insert(key.clone(), value.clone());
            }
            (Some(Value::Number(sum)), Value::Number(add)) => {
                let total = match (sum.as_u64(), add.as_u64()) {
                    (Some(a), Some(b)) => json!(a + b),
                    _ => json!(sum.as_f64().unwrap_or(0.0) + add.as_f64().unwrap_or(0.0)),
                };
                into.insert(key.clone(), total);
            }
            (Some(Value::Array(list)), Value::Array(more)) => list.extend(more.iter().cloned()),
            (Some(Value::Object(map)), Value::Object(more)) => add_stats(map, more),
            _ => {}
        }
    }
}

/// Pulsar's PartitionedTopicStats: the partitions' stats summed, `metadata.partitions`, and
/// each partition's own under `partitions` (unless `perPartition=false`). A partition another
/// broker serves is asked of that broker.
async fn partitioned_stats(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    Query(query): Query<PerPartition>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let authorization = headers.get(header::AUTHORIZATION);
    let name = TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    super::existing_namespace(&service, name.namespace_name()).await?;
    let Some(count) = partitions::get(service.meta.as_ref(), &name).await? else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("{name} is not a partitioned topic")));
    };
    let mut total = Map::new();
    let mut per_partition = Map::new();
    for index in 0..count {
        let partition = TopicName::parse(&partition_topic_name(&name, index)).map_err(BrokerError::from)?;
        let stats = partition_stats(&service, &partition, authorization).await?;
        if let Value::Object(fields) = &stats {
            let mut summed = fields.clone();
            summed.remove("lastConfirmedEntry");
            summed.remove("deduplicationStatus");
            add_stats(&mut total, &summed);
        }
        per_partition.insert(partition.to_string(), stats);
    }
    total.insert("metadata".into(), json!({ "partitions": count }));
    if query.per_partition {
        total.insert("partitions".into(), Value::Object(per_partition));
    }
    Ok(Json(Value::Object(total)).into_response())
}

/// One partition's stats: served here, asked of the broker that serves it, or empty (a
/// partition never used yet).
async fn partition_stats(
    service: &BrokerService,
    partition: &TopicName,
    authorization: Option<&HeaderValue>,
) -> Result<Value, ApiError> {
    match super::other_owner(service, partition).await? {
        Some(owner) => {
            let path =
                format!("/admin/v2/persistent/{}/stats", partition.to_string().trim_start_matches("persistent://"));
            super::forward::get_json(&owner.http_url, &path, authorization).await
        }
        _ if service.topic_exists(partition).await? => Ok(topic_stats_json(&*service.topic(partition).await?).await),
        _ => Ok(json!({ "msgRateIn": 0.0, "msgRateOut": 0.0, "publishers": [], "subscriptions": {} })),
    }
}
