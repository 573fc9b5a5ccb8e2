//! Subscription verbs on a partitioned topic's own name, applied to every partition as
//! Pulsar's admin API does: list the subscriptions (their union), create and delete one,
//! clear its backlog (`skip_all`), reset it to a time, expire its messages or every
//! subscription's. Each partition is asked over HTTP at the broker that serves it (this
//! one included), with the caller's credentials, so each partition's own checks and
//! redirects apply; the first failure is the answer.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::Value;

use super::{forward, other_owner, ApiError, AppState};
use crate::error::BrokerError;
use crate::partitions;
use crate::topic_name::{partition_topic_name, TopicName};

/// Largest request body taken (these verbs take none or a small JSON position).
const MAX_BODY: usize = 64 * 1024;

/// The topic and the rest of the path if `method path` is a verb applied per partition.
fn fanned_out(method: &Method, path: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
    let ["admin", "v2", "persistent", tenant, ns, topic, rest @ ..] = parts.as_slice() else { return None };
    let per_partition = match (method, rest) {
        (&Method::GET, ["subscriptions"]) => true,
        (&Method::PUT | &Method::DELETE, ["subscription", _]) => true,
        (&Method::POST, ["subscription", _, "skip_all"]) => true,
        (&Method::POST, ["subscription", _, "resetcursor", _]) => true,
        (&Method::POST, ["subscription", _, "expireMessages", _]) => true,
        (&Method::POST, ["all_subscription", "expireMessages", _]) => true,
        _ => false,
    };
    per_partition.then(|| (format!("persistent://{tenant}/{ns}/{topic}"), format!("/{}", rest.join("/"))))
}

/// Middleware: a per-partition verb on a partitioned topic goes to each partition; anything
/// else passes through.
pub async fn fan_out(State(service): State<AppState>, request: Request, next: Next) -> Response {
    let Some((topic, rest)) = fanned_out(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let Ok(name) = TopicName::parse(&topic) else { return next.run(request).await };
    let count = match partitions::get(service.meta.as_ref(), &name).await {
        Ok(Some(count)) if name.partition_of().is_none() => count,
        Ok(_) => return next.run(request).await,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().map(|query| format!("?{query}")).unwrap_or_default();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(error) => return ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {error}")).into_response(),
    };
    match each_partition(&service, &name, count, &parts.method, &parts.headers, &format!("{rest}{query}"), body).await {
        Ok(answer) => answer,
        Err(error) => error.into_response(),
    }
}

async fn each_partition(
    service: &AppState,
    name: &TopicName,
    count: u32,
    method: &Method,
    headers: &HeaderMap,
    rest: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut union: Vec<Value> = Vec::new();
    for index in 0..count {
        let partition = TopicName::parse(&partition_topic_name(name, index)).map_err(BrokerError::from)?;
        let base = match other_owner(service, &partition).await? {
            Some(owner) => owner.http_url,
            None => service.ownership.me().http_url.clone(),
        };
        let local = partition.to_string();
        let local = local.strip_prefix("persistent://").unwrap_or(&local);
        let url = format!("{base}/admin/v2/persistent/{local}{rest}");
        let (status, _, answer) = forward::send(method.clone(), &url, headers, body.clone()).await?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<Value>(&answer)
                .ok()
                .and_then(|value| value["reason"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
            return Err(ApiError(status, format!("partition {index}: {reason}")));
        }
        if let Ok(Value::Array(names)) = serde_json::from_slice::<Value>(&answer) {
            for found in names {
                if !union.contains(&found) {
                    union.push(found);
                }
            }
        }
    }
    Ok(if method == Method::GET { Json(union).into_response() } else { StatusCode::NO_CONTENT.into_response() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subscription_verbs_fan_out() {
        let base = "/admin/v2/persistent/t/ns/x";
        let topic = || "persistent://t/ns/x".to_owned();
        assert_eq!(
            fanned_out(&Method::GET, &format!("{base}/subscriptions")),
            Some((topic(), "/subscriptions".into()))
        );
        assert_eq!(
            fanned_out(&Method::POST, &format!("{base}/subscription/s/resetcursor/123")),
            Some((topic(), "/subscription/s/resetcursor/123".into()))
        );
        assert!(fanned_out(&Method::DELETE, &format!("{base}/subscription/s")).is_some());
        assert!(fanned_out(&Method::GET, &format!("{base}/stats")).is_none());
        assert!(fanned_out(&Method::POST, &format!("{base}/subscription/s/skip/3")).is_none());
        assert!(fanned_out(&Method::GET, "/admin/v2/namespaces/t/ns").is_none());
    }
}
