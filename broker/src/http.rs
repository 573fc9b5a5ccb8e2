//! HTTP on the web port: Prometheus metrics at `/metrics`, and the admin REST API under
//! `/admin/v2` (this version: read-only listings of clusters, tenants, namespaces, topics, and
//! a topic's stats in Pulsar's TopicStats shape, with each subscription's `msgBacklog`).
//! Errors answer with a status and a JSON body `{"reason": ...}`, as Pulsar's admin API does.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::error::BrokerError;
use crate::namespace;
use crate::service::BrokerService;
use crate::topic_name::TopicName;

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

/// Serves HTTP until `cancel` fires.
pub async fn run(service: Arc<BrokerService>, listener: TcpListener, cancel: CancellationToken) -> std::io::Result<()> {
    info!(address = ?listener.local_addr().ok(), "serving HTTP admin and metrics");
    axum::serve(listener, router(service)).with_graceful_shutdown(cancel.cancelled_owned()).await
}
