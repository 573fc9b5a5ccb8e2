//! Subscriptions and messages of a topic over HTTP, in pulsar-admin's paths: list, create at a
//! position, delete; skip N, skip all (clear backlog), reset the cursor to a time or a
//! message id, expire messages older than T (one subscription or all, and clear backlog for a
//! whole namespace); terminate a topic; peek the Nth message of a subscription, examine a message by position,
//! get a message by id, and the last message id. Messages are answered as Pulsar's admin API
//! answers them: the payload as the body, the metadata in `X-Pulsar-*` headers.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use magnetar_proto::frame::Payload;
use magnetar_proto::pulsar::CompressionType;
use serde_json::json;
use tracing::info;

use super::topic_stats::served_topic;
use super::{json_body, ApiError, AppState, ForceQuery};
use crate::dispatcher::SubscriptionType;
use crate::managed_ledger::{ManagedLedger, Position};
use crate::service::BrokerService;
use crate::subscription::start::{mark_delete_for_publish_time, published_before, start_before};
use crate::subscription::{InitialPosition, StartAt, Subscription};
use crate::topic::Topic;

const TOPIC: &str = "/admin/v2/persistent/{tenant}/{namespace}/{topic}";

pub(super) fn routes() -> Router<AppState> {
    let path = |rest: &str| format!("{TOPIC}{rest}");
    Router::new()
        .route(&path("/subscriptions"), get(list))
        .route(&path("/subscription/{subscription}"), put(create).delete(delete))
        .route(&path("/subscription/{subscription}/skip/{count}"), post(skip))
        .route(&path("/subscription/{subscription}/skip_all"), post(skip_all))
        .route(&path("/subscription/{subscription}/resetcursor/{timestamp}"), post(reset_to_time))
        .route(&path("/subscription/{subscription}/resetcursor"), post(reset_to_message))
        .route(&path("/subscription/{subscription}/expireMessages/{seconds}"), post(expire))
        .route(&path("/all_subscription/expireMessages/{seconds}"), post(expire_all))
        .route(&path("/subscription/{subscription}/position/{n}"), get(peek))
        .route(&path("/examinemessage"), get(examine))
        .route(&path("/ledger/{ledger}/entry/{entry}"), get(message_by_id))
        .route(&path("/lastMessageId"), get(last_message_id))
        .route(&path("/terminate"), post(terminate))
        .route("/admin/v2/namespaces/{tenant}/{namespace}/clearBacklog", post(clear_namespace_backlog))
        .route(
            "/admin/v2/namespaces/{tenant}/{namespace}/clearBacklog/{subscription}",
            post(clear_namespace_subscription_backlog),
        )
}

type TopicPath = Path<(String, String, String)>;
type SubscriptionPath = Path<(String, String, String, String)>;

/// The topic of the path served here, or the redirect to its owner.
macro_rules! topic_or_redirect {
    ($service:expr, $tenant:expr, $ns:expr, $topic:expr, $rest:expr) => {
        match served_topic(&$service, &$tenant, &$ns, &$topic, &$rest).await? {
            Ok(topic) => topic,
            Err(redirect) => return Ok(redirect),
        }
    };
}

fn not_found_subscription(name: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("Subscription {name} not found"))
}

/// An existing durable subscription of `topic`, opened (without consumers) if it is not.
async fn existing(topic: &Topic, name: &str) -> Result<Arc<Subscription>, ApiError> {
    if let Some(found) = topic.loaded_subscription(name).await {
        return Ok(found);
    }
    if !topic.ledger().cursors().iter().any(|(cursor, _)| cursor == name) {
        return Err(not_found_subscription(name));
    }
    Ok(topic.subscription(name, StartAt::After(None), true, SubscriptionType::Exclusive).await?)
}

async fn list(State(service): State<AppState>, Path((tenant, ns, topic)): TopicPath) -> Result<Response, ApiError> {
    let topic = topic_or_redirect!(service, tenant, ns, topic, "/subscriptions");
    let mut names: Vec<String> = topic.ledger().cursors().into_iter().map(|(name, _)| name).collect();
    for subscription in topic.subscriptions().await {
        if !names.iter().any(|name| name == subscription.name()) {
            names.push(subscription.name().to_owned());
        }
    }
    names.sort();
    Ok(Json(names).into_response())
}

/// A message id body as pulsar-admin sends it (`MessageIdImpl`).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageIdBody {
    ledger_id: i64,
    entry_id: i64,
    #[serde(default)]
    #[allow(dead_code)]
    partition_index: i64,
}

/// The mark-delete position that makes `id` the next message delivered: `-1:-1` and
/// earlier is the start, the largest id (`Long.MAX_VALUE`) the end.
fn mark_delete_before(ledger: &ManagedLedger, id: &MessageIdBody) -> Option<Position> {
    if id.ledger_id < 0 || id.entry_id < 0 {
        return None;
    }
    if id.ledger_id == i64::MAX {
        return ledger.last_confirmed();
    }
    start_before(ledger, Position::new(id.ledger_id as u64, id.entry_id as u64))
}

/// `PUT .../subscription/{sub}` with an optional message id body (the latest message if
/// none): creates a durable subscription starting there; 409 if it exists.
async fn create(
    State(service): State<AppState>,
    Path((tenant, ns, topic, name)): SubscriptionPath,
    body: String,
) -> Result<Response, ApiError> {
    let topic = topic_or_redirect!(service, tenant, ns, topic, format!("/subscription/{name}"));
    if name.is_empty() || name.contains('/') {
        return Err(ApiError(StatusCode::BAD_REQUEST, "subscription name must be non-empty and hold no '/'".into()));
    }
    let start = if body.trim().is_empty() {
        StartAt::Initial(InitialPosition::Latest)
    } else {
        let id: MessageIdBody = json_body(&body, "a message id {\"ledgerId\": L, \"entryId\": E}")?;
        StartAt::After(mark_delete_before(topic.ledger(), &id))
    };
    let exists = topic.loaded_subscription(&name).await.is_some()
        || topic.ledger().cursors().iter().any(|(cursor, _)| *cursor == name);
    if exists {
        return Err(ApiError(StatusCode::CONFLICT, format!("Subscription {name} already exists")));
    }
    let subscription = topic.subscription(&name, start, true, SubscriptionType::Exclusive).await?;
    subscription.flush().await;
    info!(topic = %topic.name(), subscription = %name, "subscription created (admin)");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE .../subscription/{sub}[?force=true]`: 412 while consumers are connected unless
/// forced (they are disconnected).
async fn delete(
    State(service): State<AppState>,
    Path((tenant, ns, topic, name)): SubscriptionPath,
    Query(query): Query<ForceQuery>,
) -> Result<Response, ApiError> {
    let rest = format!("/subscription/{name}{}", if query.force { "?force=true" } else { "" });
    let topic = topic_or_redirect!(service, tenant, ns, topic, rest);
    let loaded = topic.loaded_subscription(&name).await;
    let stored = topic.ledger().cursors().iter().any(|(cursor, _)| *cursor == name);
    if loaded.is_none() && !stored {
        return Err(not_found_subscription(&name));
    }
    if !query.force && loaded.as_ref().is_some_and(|s| s.has_consumer()) {
        return Err(ApiError(
            StatusCode::PRECONDITION_FAILED,
            format!("Subscription {name} has active connected consumers"),
        ));
    }
    topic.delete_subscription(&name).await?;
    info!(topic = %topic.name(), subscription = %name, "subscription deleted (admin)");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Acknowledges everything through `position` for the subscription and waits until that is
/// persisted.
async fn acknowledge_through(subscription: &Subscription, position: Option<Position>) {
    if let Some(position) = position {
        subscription.skip_through(position);
    }
    subscription.flush().await;
}

async fn skip(
    State(service): State<AppState>,
    Path((tenant, ns, topic, name, count)): Path<(String, String, String, String, String)>,
) -> Result<Response, ApiError> {
    let count = number(&count, "number of messages to skip")?;
    let topic = topic_or_redirect!(service, tenant, ns, topic, format!("/subscription/{name}/skip/{count}"));
    let subscription = existing(&topic, &name).await?;
    acknowledge_through(&subscription, subscription.nth_unacked(count)).await;
    info!(topic = %topic.name(), subscription = %name, count, "messages skipped (admin)");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn skip_all(
    State(service): State<AppState>,
    Path((tenant, ns, topic, name)): SubscriptionPath,
) -> Result<Response, ApiError> {
    let topic = topic_or_redirect!(service, tenant, ns, topic, format!("/subscription/{name}/skip_all"));
    let subscription = existing(&topic, &name).await?;
    acknowledge_through(&subscription, topic.ledger().last_confirmed()).await;
    info!(topic = %topic.name(), subscription = %name, "backlog cleared (admin)");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Moves the subscription (its consumers are closed and subscribe again, as with a seek).
async fn reset(subscription: &Subscription, mark_delete: Option<Position>) {
    subscription.reset(mark_delete);
    subscription.flush().await;
}

async fn reset_to_time(
    State(service): State<AppState>,
    Path((tenant, ns, topic, name, timestamp)): Path<(String, String, String, String, String)>,
) -> Result<Response, ApiError> {
    let time = number(&timestamp, "timestamp (ms since the epoch)")?;
    let topic = topic_or_redirect!(service, tenant, ns, topic, format!("/subscription/{name}/resetcursor/{time}"));
    let subscription = existing(&topic, &name).await?;
    let mark_delete = mark_delete_for_publish_time(topic.ledger(), time).await?;
    reset(&subscription, mark_delete).await;
    info!(topic = %topic.name(), subscription = %name, time, ?mark_delete, "cursor reset to a time (admin)");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset_to_message(
    State(service): State<AppState>,
    Path((tenant, ns, topic, name)): SubscriptionPath,
    body: String,
) -> Result<Response, ApiError> {
    let id: MessageIdBody = json_body(&body, "a message id {\"ledgerId\": L, \"entryId\": E}")?;
    let topic = topic_or_redirect!(service, tenant, ns, topic, format!("/subscription/{name}/resetcursor"));
    let subscription = existing(&topic, &name).await?;
    let mark_delete = mark_delete_before(topic.ledger(), &id);
    reset(&subscription, mark_delete).await;
    info!(topic = %topic.name(), subscription = %name, ?mark_delete, "cursor reset to a message (admin)");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A number from the path; a 400 naming `what` otherwise.
fn number(text: &str, what: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{what} {text:?} is not a number")))
}

/// Acknowledges every message of `subscription` published more than `seconds` ago.
async fn expire_older(topic: &Topic, subscription: &Subscription, seconds: u64) -> Result<(), ApiError> {
    let cutoff = magnetar_proto::clock::now_ms().saturating_sub(seconds.saturating_mul(1000));
    let through = published_before(topic.ledger(), subscription.mark_delete(), cutoff, u32::MAX).await?;
    acknowledge_through(subscription, through).await;
    Ok(())
}

async fn expire(
    State(service): State<AppState>,
    Path((tenant, ns, topic, name, secs)): Path<(String, String, String, String, String)>,
) -> Result<Response, ApiError> {
    let secs = number(&secs, "expire time (seconds)")?;
    let topic = topic_or_redirect!(service, tenant, ns, topic, format!("/subscription/{name}/expireMessages/{secs}"));
    let subscription = existing(&topic, &name).await?;
    expire_older(&topic, &subscription, secs).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn expire_all(
    State(service): State<AppState>,
    Path((tenant, ns, topic, secs)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let secs = number(&secs, "expire time (seconds)")?;
    let topic = topic_or_redirect!(service, tenant, ns, topic, format!("/all_subscription/expireMessages/{secs}"));
    for (name, _) in topic.ledger().cursors() {
        let subscription = existing(&topic, &name).await?;
        expire_older(&topic, &subscription, secs).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Clears the backlog of every subscription (or the one named) of every topic of the
/// namespace that this broker serves, as Pulsar does per bundle on its owner.
async fn clear_backlog(service: &BrokerService, namespace: &str, only: Option<&str>) -> Result<(), ApiError> {
    super::existing_namespace(service, namespace.to_owned()).await?;
    for topic in service.loaded_topics() {
        if topic.name().namespace_name() != namespace {
            continue;
        }
        for (name, _) in topic.ledger().cursors() {
            if only.is_some_and(|only| only != name) {
                continue;
            }
            let subscription = existing(&topic, &name).await?;
            acknowledge_through(&subscription, topic.ledger().last_confirmed()).await;
        }
    }
    info!(%namespace, subscription = ?only, "namespace backlog cleared (admin)");
    Ok(())
}

async fn clear_namespace_backlog(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    clear_backlog(&service, &format!("{tenant}/{ns}"), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_namespace_subscription_backlog(
    State(service): State<AppState>,
    Path((tenant, ns, subscription)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    clear_backlog(&service, &format!("{tenant}/{ns}"), Some(&subscription)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn header(headers: &mut HeaderMap, name: &str, value: impl ToString) {
    if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value.to_string())) {
        headers.insert(name, value);
    }
}

/// One stored entry as Pulsar's admin API answers a message: the payload (a whole batch for a
/// batch entry, compressed as the producer sent it) with the metadata in `X-Pulsar-*` headers.
fn message_response(position: Position, data: Bytes) -> Result<Response, ApiError> {
    let payload = Payload::parse(data).map_err(|error| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("entry {position} does not parse as a message: {error}"))
    })?;
    let metadata = payload.metadata();
    let mut headers = HeaderMap::new();
    header(&mut headers, "X-Pulsar-Message-ID", position);
    header(&mut headers, "X-Pulsar-publish-time", metadata.publish_time);
    header(&mut headers, "X-Pulsar-producer-name", &metadata.producer_name);
    header(&mut headers, "X-Pulsar-sequence-id", metadata.sequence_id);
    if let Some(time) = metadata.event_time.filter(|time| *time > 0) {
        header(&mut headers, "X-Pulsar-event-time", time);
    }
    if let Some(key) = &metadata.partition_key {
        header(&mut headers, "X-Pulsar-partition-key", key);
    }
    for property in &metadata.properties {
        header(&mut headers, &format!("X-Pulsar-PROPERTY-{}", property.key), &property.value);
    }
    if let Some(count) = metadata.num_messages_in_batch {
        header(&mut headers, "X-Pulsar-num-batch-message", count);
        header(&mut headers, "X-Pulsar-batch-size", payload.body().len());
    }
    if let Some(compression) = metadata.compression.filter(|c| *c != CompressionType::None as i32) {
        let name = CompressionType::try_from(compression).map_or("UNKNOWN".to_owned(), |c| c.as_str_name().to_owned());
        header(&mut headers, "X-Pulsar-compression", name);
        header(&mut headers, "X-Pulsar-uncompressed-size", metadata.uncompressed_size.unwrap_or(0));
    }
    if metadata.null_value == Some(true) {
        header(&mut headers, "X-Pulsar-null-value", true);
    }
    if let Some(version) = metadata.schema_version.as_deref().and_then(crate::schema::version_from_bytes) {
        header(&mut headers, "X-Pulsar-Schema-Version", version);
    }
    header(&mut headers, "Content-Type", "application/octet-stream");
    Ok((StatusCode::OK, headers, payload.body()).into_response())
}

async fn read_one(ledger: &ManagedLedger, position: Position) -> Result<Option<Bytes>, ApiError> {
    Ok(ledger.read_entries(position, 1).await?.into_iter().find(|(at, _)| *at == position).map(|(_, data)| data))
}

/// `GET .../subscription/{sub}/position/{n}`: the nth unacknowledged message (1 is the
/// first), what pulsar-admin's `peek-messages` asks for each message.
async fn peek(
    State(service): State<AppState>,
    Path((tenant, ns, topic, name, n)): Path<(String, String, String, String, String)>,
) -> Result<Response, ApiError> {
    let n = Some(number(&n, "message position")?)
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "message position must be a number from 1".to_owned()))?;
    let topic = topic_or_redirect!(service, tenant, ns, topic, format!("/subscription/{name}/position/{n}"));
    let subscription = existing(&topic, &name).await?;
    let found = subscription.nth_unacked(n).filter(|_| subscription.backlog() >= n);
    let Some(position) = found else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("No message at position {n} of subscription {name}")));
    };
    let data = read_one(topic.ledger(), position).await?.ok_or_else(|| not_found_message(position))?;
    message_response(position, data)
}

fn not_found_message(position: Position) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("Message {position} not found"))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExamineQuery {
    #[serde(default = "latest")]
    initial_position: String,
    #[serde(default = "first")]
    message_position: u64,
}

fn latest() -> String {
    "latest".to_owned()
}

fn first() -> u64 {
    1
}

/// `GET .../examinemessage?initialPosition=earliest|latest&messagePosition=N`: the Nth
/// message from the start or from the end of the topic.
async fn examine(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): TopicPath,
    Query(query): Query<ExamineQuery>,
) -> Result<Response, ApiError> {
    let rest = format!(
        "/examinemessage?initialPosition={}&messagePosition={}",
        query.initial_position, query.message_position
    );
    let topic = topic_or_redirect!(service, tenant, ns, topic, rest);
    let ledger = topic.ledger();
    let n = query.message_position.max(1);
    let total = ledger.entries_after(None);
    if n > total {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("Could not examine message {n}: the topic has {total}")));
    }
    let index = match query.initial_position.as_str() {
        "earliest" => n - 1,
        "latest" => total - n,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("initialPosition {other:?} is not earliest or latest"),
            ))
        }
    };
    let mut at = None;
    for _ in 0..=index {
        at = ledger.next_position(at);
    }
    let position = at.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("No message {n}")))?;
    let data = read_one(ledger, position).await?.ok_or_else(|| not_found_message(position))?;
    message_response(position, data)
}

async fn message_by_id(
    State(service): State<AppState>,
    Path((tenant, ns, topic, ledger_id, entry_id)): Path<(String, String, String, String, String)>,
) -> Result<Response, ApiError> {
    let position = Position::new(number(&ledger_id, "ledger id")?, number(&entry_id, "entry id")?);
    let topic = topic_or_redirect!(service, tenant, ns, topic, format!("/ledger/{ledger_id}/entry/{entry_id}"));
    if !crate::managed_ledger::PositionView::contains(&topic.ledger().positions(), position) {
        return Err(not_found_message(position));
    }
    let data = read_one(topic.ledger(), position).await?.ok_or_else(|| not_found_message(position))?;
    message_response(position, data)
}

/// `POST .../terminate`: no more publishes, ever; answers the last message id, as
/// `lastMessageId` does.
async fn terminate(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): TopicPath,
) -> Result<Response, ApiError> {
    let topic = topic_or_redirect!(service, tenant, ns, topic, "/terminate");
    topic.terminate().await?;
    Ok(Json(message_id_json(&topic)).into_response())
}

fn message_id_json(topic: &Topic) -> serde_json::Value {
    let partition = topic.name().partition_of().map_or(-1, |(_, index)| i64::from(index));
    match topic.ledger().last_confirmed() {
        Some(last) => json!({ "ledgerId": last.ledger_id, "entryId": last.entry_id, "partitionIndex": partition }),
        None => json!({ "ledgerId": -1, "entryId": -1, "partitionIndex": partition }),
    }
}

/// `GET .../lastMessageId`: `{"ledgerId", "entryId", "partitionIndex"}` (`-1`s for an empty
/// topic, as Pulsar answers).
async fn last_message_id(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): TopicPath,
) -> Result<Response, ApiError> {
    let topic = topic_or_redirect!(service, tenant, ns, topic, "/lastMessageId");
    Ok(Json(message_id_json(&topic)).into_response())
}
