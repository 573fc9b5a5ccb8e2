//! HTTP on the web port: Prometheus metrics at `/metrics`, the admin REST API under
//! `/admin/v2` (listings of clusters, tenants, namespaces, topics and partitioned topics; a
//! topic's stats in Pulsar's TopicStats shape, with each subscription's `msgBacklog`; the
//! namespace deduplication policy; partitioned topic create/get/delete) and the HTTP lookup
//! `/lookup/v2/topic/persistent/...`.
//! Errors answer with a status and a JSON body `{"reason": ...}`, as Pulsar's admin API does.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::error::BrokerError;
use crate::service::BrokerService;
use crate::topic_name::TopicName;
use crate::{namespace, partitions};

type AppState = Arc<BrokerService>;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "reason": self.1 }))).into_response()
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        let status = match error {
            BrokerError::InvalidTopicName { .. } => StatusCode::PRECONDITION_FAILED,
            BrokerError::NamespaceNotFound { .. } | BrokerError::TopicNotFound { .. } => StatusCode::NOT_FOUND,
            BrokerError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            BrokerError::AlreadyExists { .. } => StatusCode::CONFLICT,
            BrokerError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, error.to_string())
    }
}

pub fn router(service: Arc<BrokerService>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/", get(metrics))
        .route("/admin/v2/clusters", get(clusters))
        .route("/admin/v2/tenants", get(tenants))
        .route("/admin/v2/namespaces/{tenant}", get(namespaces))
        .route("/admin/v2/persistent/{tenant}/{namespace}", get(topics))
        .route("/admin/v2/persistent/{tenant}/{namespace}/{topic}/stats", get(topic_stats))
        .route("/admin/v2/persistent/{tenant}/{namespace}/partitioned", get(partitioned_topics))
        .route(
            "/admin/v2/persistent/{tenant}/{namespace}/{topic}/partitions",
            put(create_partitioned_topic).get(partitioned_metadata).delete(delete_partitioned_topic),
        )
        .route("/admin/v2/namespaces/{tenant}/{namespace}/deduplication", get(deduplication).post(set_deduplication))
        .route("/lookup/v2/topic/persistent/{tenant}/{namespace}/{topic}", get(lookup))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such resource".to_owned()) })
        .with_state(service)
}

async fn metrics(State(service): State<AppState>) -> impl IntoResponse {
    let gauges = service.gauges().await;
    let body = service.metrics.render(&service.config.cluster_name, gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn clusters(State(service): State<AppState>) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(namespace::clusters(service.meta.as_ref()).await?))
}

async fn tenants(State(service): State<AppState>) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(namespace::tenants(service.meta.as_ref()).await?))
}

async fn namespaces(
    State(service): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<String>>, ApiError> {
    if service.meta.get(&format!("{}/{tenant}", namespace::TENANTS_PATH)).await.map_err(BrokerError::from)?.is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("tenant {tenant} does not exist")));
    }
    Ok(Json(namespace::namespaces(service.meta.as_ref(), &tenant).await?))
}

async fn topics(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<Json<Vec<String>>, ApiError> {
    let name = format!("{tenant}/{ns}");
    if !namespace::namespace_exists(service.meta.as_ref(), &name).await? {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("namespace {name} does not exist")));
    }
    Ok(Json(service.topics_of_namespace(&name).await?))
}

/// Pulsar's TopicStats for a persistent topic, loading it here if it exists and is not loaded.
async fn topic_stats(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    let stored = service
        .meta
        .get(&crate::managed_ledger::info_path(&name.persistence_name()))
        .await
        .map_err(BrokerError::from)?;
    if stored.is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("topic {name} not found")));
    }
    let topic = service.topic(&name).await?;
    let ledger = topic.ledger();
    let storage = ledger.storage_stats();
    let attached: std::collections::HashMap<String, bool> =
        topic.subscriptions().await.iter().map(|s| (s.name().to_owned(), s.has_consumer())).collect();
    let mut subscriptions = serde_json::Map::new();
    let mut backlog_total = 0;
    for (sub_name, cursor) in ledger.cursors() {
        let backlog = cursor.backlog(ledger);
        backlog_total += backlog;
        let state = cursor.state();
        subscriptions.insert(
            sub_name.clone(),
            json!({
                "msgBacklog": backlog,
                "type": "Exclusive",
                "isDurable": true,
                "markDeletePosition": state.mark_delete.map(|p| p.to_string()),
                "individuallyAckedCount": state.individually_acked.len(),
                "consumers": if attached.get(&sub_name).copied().unwrap_or(false) { 1 } else { 0 },
            }),
        );
    }
    Ok(Json(json!({
        "storageSize": storage.size_bytes,
        "backlogSize": backlog_total,
        "msgInCounter": storage.entries,
        "ledgerCount": storage.ledgers,
        "publishers": [],
        "subscriptions": subscriptions,
        "lastConfirmedEntry": ledger.last_confirmed().map(|p| p.to_string()),
    })))
}

/// The topic named by an admin path, in a namespace that must exist (404 otherwise).
async fn existing_namespace_topic(
    service: &BrokerService,
    tenant: &str,
    ns: &str,
    topic: &str,
) -> Result<TopicName, ApiError> {
    let name = TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    if !namespace::namespace_exists(service.meta.as_ref(), &name.namespace_name()).await? {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("namespace {} does not exist", name.namespace_name())));
    }
    Ok(name)
}

/// A JSON body that must be one value of type `T` (Pulsar's admin sends `4`, `true`).
fn json_body<T: serde::de::DeserializeOwned>(body: &str, what: &str) -> Result<T, ApiError> {
    serde_json::from_str(body.trim())
        .map_err(|error| ApiError(StatusCode::BAD_REQUEST, format!("body must be {what}: {error}")))
}

/// `PUT .../{topic}/partitions` with body N: 204, 409 if it exists, 400 for N < 1.
async fn create_partitioned_topic(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    let requested: i64 = json_body(&body, "the number of partitions")?;
    let partitions = u32::try_from(requested).map_err(|_| {
        ApiError(StatusCode::BAD_REQUEST, format!("number of partitions must be at least 1, got {requested}"))
    })?;
    partitions::create(service.meta.as_ref(), &name, partitions).await?;
    info!(topic = %name, partitions, "partitioned topic created");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET .../{topic}/partitions`: `{"partitions": N}`, 0 for a topic that is not partitioned.
async fn partitioned_metadata(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    let partitions = partitions::get(service.meta.as_ref(), &name).await?.unwrap_or(0);
    Ok(Json(json!({ "partitions": partitions })))
}

/// `DELETE .../{topic}/partitions`: 204, 404 if it is not a partitioned topic.
async fn delete_partitioned_topic(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    partitions::delete(service.meta.as_ref(), &name).await?;
    info!(topic = %name, "partitioned topic deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /admin/v2/persistent/{tenant}/{ns}/partitioned`: the partitioned topics' names.
async fn partitioned_topics(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<Json<Vec<String>>, ApiError> {
    let name = format!("{tenant}/{ns}");
    if !namespace::namespace_exists(service.meta.as_ref(), &name).await? {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("namespace {name} does not exist")));
    }
    let topics = partitions::list(service.meta.as_ref(), &name).await?;
    Ok(Json(topics.into_iter().map(|(topic, _)| topic).collect()))
}

async fn deduplication(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<Json<bool>, ApiError> {
    Ok(Json(namespace::deduplication_enabled(service.meta.as_ref(), &format!("{tenant}/{ns}")).await?))
}

/// `POST .../deduplication` with body `true`/`false`: stored in the namespace's policies and
/// applied to its loaded topics before answering 204.
async fn set_deduplication(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let enabled: bool = json_body(&body, "true or false")?;
    let name = format!("{tenant}/{ns}");
    namespace::set_deduplication(service.meta.as_ref(), &name, enabled).await?;
    service.apply_deduplication(&name, enabled).await?;
    info!(namespace = %name, enabled, "deduplication policy set");
    Ok(StatusCode::NO_CONTENT)
}

/// Pulsar's HTTP lookup answer: this broker serves every topic (one broker per cluster until
/// bundle ownership exists).
async fn lookup(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    service.check_topic(&name).await?;
    let broker_url = service.config.broker_service_url();
    Ok(Json(json!({
        "brokerUrl": broker_url,
        "brokerUrlTls": "",
        "httpUrl": service.config.web_service_url(),
        "httpUrlTls": "",
        "nativeUrl": broker_url,
    })))
}

/// Serves HTTP until `cancel` fires.
pub async fn run(service: Arc<BrokerService>, listener: TcpListener, cancel: CancellationToken) -> std::io::Result<()> {
    info!(address = ?listener.local_addr().ok(), "serving HTTP admin and metrics");
    axum::serve(listener, router(service)).with_graceful_shutdown(cancel.cancelled_owned()).await
}
