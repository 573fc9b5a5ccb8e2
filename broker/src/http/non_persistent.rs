//! Non-persistent topics over HTTP, as Pulsar's admin API: the namespace's non-persistent
//! topics served by this broker (`GET /admin/v2/non-persistent/{tenant}/{ns}`) and one
//! topic's stats with its drop counters (307 to the owner from other brokers; 404 when no
//! producer or consumer uses it, as it then does not exist).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::{existing_namespace, redirect_to_owner, ApiError, AppState};
use crate::error::BrokerError;
use crate::topic_name::TopicName;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v2/non-persistent/{tenant}/{namespace}", get(topics))
        .route("/admin/v2/non-persistent/{tenant}/{namespace}/{topic}/stats", get(stats))
}

async fn topics(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<Json<Vec<String>>, ApiError> {
    let name = existing_namespace(&service, format!("{tenant}/{ns}")).await?;
    Ok(Json(service.non_persistent_topics_of(&name).await?))
}

async fn stats(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let name = TopicName::parse(&format!("non-persistent://{tenant}/{ns}/{topic}")).map_err(BrokerError::from)?;
    existing_namespace(&service, name.namespace_name()).await?;
    let path = format!("/admin/v2/non-persistent/{tenant}/{ns}/{topic}/stats");
    if let Some(redirect) = redirect_to_owner(&service, &name, &path).await? {
        return Ok(redirect);
    }
    match service.loaded_non_persistent_topics().into_iter().find(|loaded| *loaded.name() == name) {
        Some(topic) => Ok(Json(topic.stats_json()).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("Topic {name} not found"))),
    }
}
