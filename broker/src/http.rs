//! HTTP on the web port: Prometheus metrics at `/metrics`, the admin REST API under
//! `/admin/v2` (listings of clusters, tenants, namespaces, topics and partitioned topics; a
//! topic's stats in Pulsar's TopicStats shape, with each subscription's `msgBacklog`; the
//! namespace deduplication policy; partitioned topic create/get/delete) and the HTTP lookup
//! `/lookup/v2/topic/persistent/...`.
//! Errors answer with a status and a JSON body `{"reason": ...}`, as Pulsar's admin API does.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cluster::bundles::Bundle;
use crate::cluster::load_manager::{self, Action, LoadCommand};
use crate::cluster::load_report;
use crate::cluster::ownership::LookupAnswer;
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
            BrokerError::ShuttingDown | BrokerError::ServiceUnitNotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            BrokerError::NotAllowed { .. } => StatusCode::PRECONDITION_FAILED,
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
        .route("/admin/v2/persistent/{tenant}/{namespace}/{topic}/unload", put(unload_topic))
        .route("/admin/v2/namespaces/{tenant}/{namespace}/bundles", get(bundles_of_namespace))
        .route("/admin/v2/namespaces/{tenant}/{namespace}/unload", put(unload_namespace))
        .route("/admin/v2/namespaces/{tenant}/{namespace}/{bundle}/unload", put(unload_bundle))
        .route("/admin/v2/namespaces/{tenant}/{namespace}/{bundle}/split", put(split_bundle))
        .route("/admin/v2/brokers/{cluster}", get(active_brokers))
        .route("/admin/v2/broker-stats/load-report", get(load_report))
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
    let name = existing_namespace(&service, format!("{tenant}/{ns}")).await?;
    Ok(Json(service.topics_of_namespace(&name).await?))
}

/// A 307 to the same path on the broker that owns `name`'s bundle, if that is another broker
/// (Pulsar's admin API redirects the same way).
async fn redirect_to_owner(
    service: &BrokerService,
    name: &TopicName,
    path: &str,
) -> Result<Option<Response>, ApiError> {
    let bundle = service.ownership.bundle_of(name).await?;
    if service.ownership.is_active(&bundle) {
        return Ok(None);
    }
    match service.ownership.read_owner(&bundle).await? {
        Some((owner, _)) if owner.info.broker != service.ownership.me().broker => {
            let location = format!("{}{path}", owner.info.http_url);
            Ok(Some((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response()))
        }
        _ => Ok(None),
    }
}

/// Pulsar's TopicStats for a persistent topic, loading it here if it exists and is not loaded
/// (307 to its owner if another broker serves it).
async fn topic_stats(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let name = TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    if let Some(redirect) =
        redirect_to_owner(&service, &name, &format!("/admin/v2/persistent/{tenant}/{ns}/{topic}/stats")).await?
    {
        return Ok(redirect);
    }
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
        let (mark_delete, individually_acked) = cursor.summary();
        subscriptions.insert(
            sub_name.clone(),
            json!({
                "msgBacklog": backlog,
                "type": "Exclusive",
                "isDurable": true,
                "markDeletePosition": mark_delete.map(|p| p.to_string()),
                "individuallyAckedCount": individually_acked,
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
    }))
    .into_response())
}

/// The topic named by an admin path, in a namespace that must exist (404 otherwise).
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
    let name = existing_namespace(&service, format!("{tenant}/{ns}")).await?;
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

/// Pulsar's HTTP lookup answer: the broker that owns the topic's bundle (assigned now to
/// the least loaded broker if nobody owns it), on any broker.
async fn lookup(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    Query(query): Query<LookupQuery>,
) -> Result<Response, ApiError> {
    let name = TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    service.check_topic(&name).await?;
    let answer = service.ownership.lookup(&name, query.authoritative).await?;
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
    Ok(Json(json!({
        "brokerUrl": broker.native_url,
        "brokerUrlTls": "",
        "httpUrl": broker.http_url,
        "httpUrlTls": "",
        "nativeUrl": broker.native_url,
    }))
    .into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct LookupQuery {
    authoritative: bool,
}

/// How long an admin call waits for another broker to carry out an unload or a split.
const REMOTE_COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn parse_bundle(namespace: &str, range: &str) -> Result<Bundle, ApiError> {
    Bundle::parse(&format!("{namespace}/{range}")).ok_or_else(|| {
        ApiError(StatusCode::PRECONDITION_FAILED, format!("{range:?} is not a bundle range (0x00000000_0x40000000)"))
    })
}

/// `namespace`, if it exists (404 otherwise).
async fn existing_namespace(service: &BrokerService, namespace: String) -> Result<String, ApiError> {
    if !namespace::namespace_exists(service.meta.as_ref(), &namespace).await? {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("namespace {namespace} does not exist")));
    }
    Ok(namespace)
}

/// Checks the namespace exists and `bundle` is one of its bundles now.
async fn check_bundle(service: &BrokerService, bundle: &Bundle) -> Result<(), ApiError> {
    existing_namespace(service, bundle.namespace.clone()).await?;
    if !service.ownership.layout(&bundle.namespace).await?.contains(bundle) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("bundle {bundle} does not exist (split, or never was)")));
    }
    Ok(())
}

/// Unloads or splits `bundle` here if this broker owns it, or asks its owner and waits
/// until it is done. An unowned bundle has nothing to unload; to split it, this broker takes
/// it first.
async fn bundle_command(service: &BrokerService, bundle: &Bundle, action: Action) -> Result<StatusCode, ApiError> {
    let ownership = &service.ownership;
    let owner = ownership.read_owner(bundle).await?;
    let mine = ownership.is_active(bundle);
    match (owner, action) {
        (None, Action::Unload) => return Ok(StatusCode::NO_CONTENT),
        (None, Action::Split) if !ownership.try_acquire(bundle).await? => {
            return Err(ApiError(StatusCode::CONFLICT, format!("bundle {bundle} was just taken; try again")));
        }
        (None, Action::Split) => {}
        (Some(_), _) if mine => {}
        (Some((owner, version)), action) => {
            let command = LoadCommand { action, bundle: bundle.to_string() };
            load_manager::send_command(ownership, &owner.info.broker, &command).await?;
            let done = async {
                loop {
                    ownership.wait_for_change(bundle, version).await?;
                    match ownership.read_owner(bundle).await? {
                        Some((_, now)) if now == version => continue,
                        _ => return Ok::<_, BrokerError>(()),
                    }
                }
            };
            return match tokio::time::timeout(REMOTE_COMMAND_WAIT, done).await {
                Ok(result) => result.map(|()| StatusCode::NO_CONTENT).map_err(ApiError::from),
                Err(_) => Err(ApiError(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "broker {} did not {action:?} bundle {bundle} within {REMOTE_COMMAND_WAIT:?}",
                        owner.info.broker
                    ),
                )),
            };
        }
    }
    match action {
        Action::Unload => service.unload_bundle(bundle).await?,
        Action::Split => service.split_bundle(bundle).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT .../namespaces/{t}/{ns}/{bundle}/unload`: the owner closes the bundle's topics and
/// gives it up; the next lookup assigns it (Pulsar's `unloadNamespaceBundle`).
async fn unload_bundle(
    State(service): State<AppState>,
    Path((tenant, ns, range)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    bundle_route(&service, &tenant, &ns, &range, Action::Unload).await
}

/// An admin unload or split of the bundle `range` of `tenant/ns`.
async fn bundle_route(
    service: &BrokerService,
    tenant: &str,
    ns: &str,
    range: &str,
    action: Action,
) -> Result<StatusCode, ApiError> {
    let bundle = parse_bundle(&format!("{tenant}/{ns}"), range)?;
    check_bundle(service, &bundle).await?;
    let status = bundle_command(service, &bundle, action).await?;
    info!(%bundle, ?action, "bundle command done (admin)");
    Ok(status)
}

/// `PUT .../namespaces/{t}/{ns}/unload`: every bundle of the namespace.
async fn unload_namespace(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let name = existing_namespace(&service, format!("{tenant}/{ns}")).await?;
    for bundle in service.ownership.layout(&name).await?.bundles() {
        bundle_command(&service, &bundle, Action::Unload).await?;
    }
    info!(namespace = %name, "namespace unloaded (admin)");
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT .../namespaces/{t}/{ns}/{bundle}/split`: halves the bundle (range_equally_divide).
async fn split_bundle(
    State(service): State<AppState>,
    Path((tenant, ns, range)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    bundle_route(&service, &tenant, &ns, &range, Action::Split).await
}

/// Pulsar's `BundlesData` of a namespace, as stored.
async fn bundles_of_namespace(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = existing_namespace(&service, format!("{tenant}/{ns}")).await?;
    let layout = service.ownership.layout(&name).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], layout.encode()).into_response())
}

/// `PUT .../persistent/{t}/{ns}/{topic}/unload`: closes the topic on its owner (clients
/// reconnect; the bundle stays owned). Another broker's topic answers 307 to its owner.
async fn unload_topic(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let name = TopicName::parse(&format!("persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    service.check_topic(&name).await?;
    if let Some(redirect) =
        redirect_to_owner(&service, &name, &format!("/admin/v2/persistent/{tenant}/{ns}/{topic}/unload")).await?
    {
        return Ok(redirect);
    }
    service.close_topics(|loaded| *loaded == name).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The live brokers of the cluster (`host:http port`), as Pulsar's `brokers/{cluster}`.
async fn active_brokers(
    State(service): State<AppState>,
    Path(cluster): Path<String>,
) -> Result<Json<Vec<String>>, ApiError> {
    if cluster != service.config.cluster_name {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("cluster {cluster} is not this broker's cluster")));
    }
    Ok(Json(service.meta.list_children(load_report::REPORTS_PATH).await.map_err(BrokerError::from)?))
}

/// This broker's last load report.
async fn load_report(State(service): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let path = load_report::report_path(&service.ownership.me().broker);
    let Some(found) = service.meta.get(&path).await.map_err(BrokerError::from)? else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no load report written yet".to_owned()));
    };
    let report: serde_json::Value = serde_json::from_slice(&found.value)
        .map_err(|error| ApiError(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
    Ok(Json(report))
}

/// Serves HTTP until `cancel` fires.
pub async fn run(service: Arc<BrokerService>, listener: TcpListener, cancel: CancellationToken) -> std::io::Result<()> {
    info!(address = ?listener.local_addr().ok(), "serving HTTP admin and metrics");
    axum::serve(listener, router(service)).with_graceful_shutdown(cancel.cancelled_owned()).await
}
