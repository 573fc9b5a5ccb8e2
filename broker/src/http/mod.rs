//! HTTP on the web port: Prometheus metrics at `/metrics`, the admin REST API under
//! `/admin/v2` in Pulsar's paths and JSON shapes, and the HTTP lookup
//! `/lookup/v2/topic/persistent/...`.
//!
//! - [`tenancy`]: clusters, tenants and namespaces (list, get, create, update, delete);
//! - [`policies`]: namespace policies and each topic's own (get, set, remove);
//! - [`topics`]: topics (create, delete, list, partitions, unload);
//! - [`topic_stats`]: a topic's stats, partitioned stats and internal stats;
//! - [`subscriptions`]: subscriptions (list, create, delete, skip, clear, reset, expire) and
//!   messages (peek, examine, by id, last id);
//! - [`bundles`]: namespace bundles (list, unload, split), brokers and load reports;
//! - [`brokers`]: the leader, health and readiness, the bookies;
//! - [`permissions`]: who may produce and consume where (namespace, topic, subscription);
//! - [`partitioned`]: subscription verbs on a partitioned topic, applied to each partition;
//! - [`console`]: the web console's files under `/console`;
//! - [`auth`]: every request authenticated (401) and checked against its role (403), and the
//!   HTTPS listener.
//!
//! Errors answer with a status and a JSON body `{"reason": ...}`, as Pulsar's admin API does:
//! 400 for a body that does not parse or a value out of range (naming the field), 404 for
//! what does not exist, 409 for what already exists or conflicts, 412 for a precondition
//! (a cluster a tenant does not allow, a cluster still in use).

pub mod auth;
mod brokers;
mod bundles;
mod console;
mod forward;
mod non_persistent;
mod partitioned;
mod permissions;
mod policies;
mod schemas;
mod subscriptions;
mod tenancy;
mod topic_stats;
mod topics;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cluster::broker_info::BrokerInfo;
use crate::cluster::ownership::LookupAnswer;
use crate::error::BrokerError;
use crate::security::TlsAcceptor;
use crate::service::BrokerService;
use crate::tenancy::store;
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
            BrokerError::NamespaceNotFound { .. }
            | BrokerError::TopicNotFound { .. }
            | BrokerError::NotFound { .. } => StatusCode::NOT_FOUND,
            BrokerError::ShuttingDown | BrokerError::ServiceUnitNotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            BrokerError::NotAllowed { .. } => StatusCode::PRECONDITION_FAILED,
            BrokerError::AlreadyExists { .. } | BrokerError::Conflict { .. } => StatusCode::CONFLICT,
            BrokerError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            BrokerError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            BrokerError::Unauthorized { .. } => StatusCode::FORBIDDEN,
            BrokerError::IncompatibleSchema { .. } => StatusCode::CONFLICT,
            BrokerError::TopicTerminated { .. } => StatusCode::CONFLICT,
            BrokerError::InvalidSchema { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, error.to_string())
    }
}

pub fn router(service: Arc<BrokerService>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/", get(metrics))
        .route("/lookup/v2/topic/persistent/{tenant}/{namespace}/{topic}", get(lookup))
        .merge(tenancy::routes())
        .merge(policies::routes())
        .merge(topics::routes())
        .merge(non_persistent::routes())
        .merge(topic_stats::routes())
        .merge(subscriptions::routes())
        .merge(brokers::routes())
        .merge(bundles::routes())
        .merge(permissions::routes())
        .merge(schemas::routes())
        .merge(console::routes())
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such resource".to_owned()) })
        .layer(axum::middleware::from_fn_with_state(service.clone(), partitioned::fan_out))
        .layer(axum::middleware::from_fn_with_state(service.clone(), auth::guard))
        // Outside the guard: the guard of the broker it forwards to checks the forwarded call.
        .layer(axum::middleware::from_fn(forward::follow_for_console))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(service)
}

/// Every error answers as the admin API's own do, `{"reason": ...}`: axum's refusals (a body
/// that is not UTF-8 or over the limit, a path parameter that does not parse, a method a route
/// does not take) come as plain text or empty, and a client reading `reason` would find none.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if status.as_u16() < 400 || json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let reason = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    let mut answer = ApiError(status, reason).into_response();
    // What else the refusal said (`Allow` of a 405, `WWW-Authenticate`) stays.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    answer
}

async fn metrics(State(service): State<AppState>) -> impl IntoResponse {
    let gauges = service.gauges().await;
    let mut body = service.metrics.render(&service.config.cluster_name, gauges);
    let bookies = service.local_bookies.read().clone();
    if !bookies.is_empty() {
        let families = futures::future::join_all(bookies.iter().map(|bookie| bookie.families())).await;
        body.push_str(&magnetar_bookie::metrics::encode(families));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// A JSON body that must be one value of type `T` (Pulsar's admin sends `4`, `true`, or an
/// object); unknown fields and values of the wrong type are a 400 naming them.
fn json_body<T: serde::de::DeserializeOwned>(body: &str, what: &str) -> Result<T, ApiError> {
    serde_json::from_str(body.trim())
        .map_err(|error| ApiError(StatusCode::BAD_REQUEST, format!("body must be {what}: {error}")))
}

/// `namespace`, if it exists (404 otherwise).
async fn existing_namespace(service: &BrokerService, namespace: String) -> Result<String, ApiError> {
    if !store::namespace_exists(service.meta.as_ref(), &namespace).await? {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("namespace {namespace} does not exist")));
    }
    Ok(namespace)
}

/// The persistent topic named by an admin path, in a namespace that must exist (404
/// otherwise).
async fn existing_namespace_topic(
    service: &BrokerService,
    tenant: &str,
    ns: &str,
    topic: &str,
) -> Result<TopicName, ApiError> {
    let name = TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    existing_namespace(service, name.namespace_name()).await?;
    Ok(name)
}

/// The broker that owns `name`'s bundle, if that is another broker.
async fn other_owner(service: &BrokerService, name: &TopicName) -> Result<Option<BrokerInfo>, ApiError> {
    let bundle = service.ownership.bundle_of(name).await?;
    if service.ownership.is_active(&bundle) {
        return Ok(None);
    }
    Ok(match service.ownership.read_owner(&bundle).await? {
        Some((owner, _)) if owner.info.broker != service.ownership.me().broker => Some(owner.info),
        _ => None,
    })
}

/// A 307 to the same path on the broker that owns `name`'s bundle, if that is another broker
/// (Pulsar's admin API redirects the same way).
async fn redirect_to_owner(
    service: &BrokerService,
    name: &TopicName,
    path: &str,
) -> Result<Option<Response>, ApiError> {
    Ok(other_owner(service, name).await?.map(|owner| {
        let location = format!("{}{path}", owner.http_url);
        (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response()
    }))
}

/// Pulsar's HTTP lookup answer: the broker that owns the topic's bundle (assigned now to
/// the least loaded broker if nobody owns it), on any broker.
async fn lookup(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    Query(query): Query<LookupQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let name = TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    let answer = service.lookup(&name, query.authoritative).await?;
    if let LookupAnswer::Redirect(target) = &answer {
        if service.ownership.read_owner(&service.ownership.bundle_of(&name).await?).await?.is_none() {
            // Chosen, not yet owned: the chosen broker takes it when asked authoritatively
            // (Pulsar's lookup redirects the same way).
            let location =
                format!("{}/lookup/v2/topic/persistent/{tenant}/{ns}/{topic}?authoritative=true", target.http_url);
            return Ok((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response());
        }
    }
    let broker = answer.broker();
    // The listener a client names (`?listenerName=` or the `X-Pulsar-ListenerName` header).
    let header = headers.get("X-Pulsar-ListenerName").and_then(|value| value.to_str().ok());
    let listener = query.listener_name.as_deref().or(header);
    let (url, url_tls) =
        broker.urls_for_listener(listener).map_err(|message| ApiError(StatusCode::SERVICE_UNAVAILABLE, message))?;
    Ok(Json(json!({
        "brokerUrl": url,
        "brokerUrlTls": url_tls.as_deref().unwrap_or_default(),
        "httpUrl": broker.http_url,
        "httpUrlTls": broker.http_url_tls.as_deref().unwrap_or_default(),
        "nativeUrl": url,
    }))
    .into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct LookupQuery {
    authoritative: bool,
    #[serde(rename = "listenerName")]
    listener_name: Option<String>,
}

/// `?force=true` on deletes.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ForceQuery {
    force: bool,
}

/// Serves HTTP (or HTTPS, with a TLS acceptor) until `cancel` fires.
pub async fn run(
    service: Arc<BrokerService>,
    listener: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = router(service).into_make_service_with_connect_info::<auth::HttpPeer>();
    match tls {
        None => {
            info!(address = ?listener.local_addr().ok(), "serving HTTP admin and metrics");
            axum::serve(listener, app).with_graceful_shutdown(cancel.clone().cancelled_owned()).await
        }
        Some(tls) => {
            info!(address = ?listener.local_addr().ok(), "serving HTTPS admin and metrics");
            let listener = auth::TlsListener::spawn(listener, tls, cancel.clone())?;
            axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await
        }
    }
}
