//! Topics over HTTP: list a namespace's topics, create and delete a non-partitioned topic,
//! create, grow, read and delete a partitioned topic, unload a topic. Calls about one topic
//! go to the broker that owns it (307 from others).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;
use tracing::info;

use super::{
    existing_namespace, existing_namespace_topic, json_body, redirect_to_owner, ApiError, AppState, ForceQuery,
};
use crate::error::BrokerError;
use crate::partitions;
use crate::topic_name::TopicName;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v2/persistent/{tenant}/{namespace}", get(topics))
        .route("/admin/v2/namespaces/{tenant}/{namespace}/topics", get(topics))
        .route("/admin/v2/persistent/{tenant}/{namespace}/partitioned", get(partitioned_topics))
        .route("/admin/v2/persistent/{tenant}/{namespace}/{topic}", put(create_topic).delete(delete_topic))
        .route(
            "/admin/v2/persistent/{tenant}/{namespace}/{topic}/partitions",
            put(create_partitioned_topic)
                .get(partitioned_metadata)
                .post(update_partitioned_topic)
                .delete(delete_partitioned_topic),
        )
        .route("/admin/v2/persistent/{tenant}/{namespace}/{topic}/unload", put(unload_topic))
}

/// The namespace's persistent topics, partitions of partitioned topics included, as Pulsar
/// lists them.
async fn topics(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<Json<Vec<String>>, ApiError> {
    let name = existing_namespace(&service, format!("{tenant}/{ns}")).await?;
    Ok(Json(service.topics_of_namespace(&name).await?))
}

/// `PUT .../persistent/{t}/{ns}/{topic}`: creates a non-partitioned topic (409 if it exists).
async fn create_topic(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    if let Some(redirect) =
        redirect_to_owner(&service, &name, &format!("/admin/v2/persistent/{tenant}/{ns}/{topic}")).await?
    {
        return Ok(redirect);
    }
    service.create_topic(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE .../persistent/{t}/{ns}/{topic}[?force=true]`: deletes a non-partitioned topic and
/// its data (412 while it has producers or consumers, unless forced).
async fn delete_topic(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    Query(query): Query<ForceQuery>,
) -> Result<Response, ApiError> {
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    if partitions::get(service.meta.as_ref(), &name).await?.is_some() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("{name} is a partitioned topic: delete it at .../{topic}/partitions"),
        ));
    }
    let path = format!("/admin/v2/persistent/{tenant}/{ns}/{topic}{}", if query.force { "?force=true" } else { "" });
    if let Some(redirect) = redirect_to_owner(&service, &name, &path).await? {
        return Ok(redirect);
    }
    service.delete_topic(&name, query.force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A partition count body: a positive integer (400 otherwise).
fn partitions_body(body: &str) -> Result<u32, ApiError> {
    let requested: i64 = json_body(body, "the number of partitions")?;
    u32::try_from(requested).ok().filter(|count| *count >= 1).ok_or_else(|| {
        ApiError(StatusCode::BAD_REQUEST, format!("number of partitions must be at least 1, got {requested}"))
    })
}

/// `PUT .../{topic}/partitions` with body N: 204, 409 if it exists, 400 for N < 1.
async fn create_partitioned_topic(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    let partitions = partitions_body(&body)?;
    let namespace = service.check_topic(&name).await?;
    if service.topic_exists(&name).await? {
        return Err(ApiError(StatusCode::CONFLICT, format!("topic {name} already exists as a non-partitioned topic")));
    }
    service.check_max_topics(&name.namespace_name(), &namespace, partitions).await?;
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

/// `DELETE .../{topic}/partitions[?force=true]`: every partition's data, then the
/// partitioned topic; 404 if it is not a partitioned topic.
async fn delete_partitioned_topic(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    Query(query): Query<ForceQuery>,
) -> Result<StatusCode, ApiError> {
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    service.delete_partitioned_topic(&name, query.force).await?;
    info!(topic = %name, "partitioned topic deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST .../{topic}/partitions` with body N: grows a partitioned topic to N partitions (409
/// if N is not more than it has).
async fn update_partitioned_topic(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    let partitions = partitions_body(&body)?;
    service.update_partitions(&name, partitions).await?;
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
