//! The cluster's brokers and bookies over HTTP, in pulsar-admin's paths: the load manager's
//! leader, this broker's health check and readiness, and the bookies registered with their
//! addresses, state and disk space.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{ApiError, AppState};
use crate::cluster::load_manager::LEADER_PATH;
use crate::error::BrokerError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v2/brokers/leaderBroker", get(leader))
        .route("/admin/v2/brokers/health", get(health))
        .route("/admin/v2/brokers/ready", get(ready))
        .route("/admin/v2/bookies/all", get(bookies))
}

/// `{"brokerId", "serviceUrl"}` of the broker leading the load manager (404 while none does).
async fn leader(State(service): State<AppState>) -> Result<Response, ApiError> {
    let Some(found) = service.meta.get(LEADER_PATH).await.map_err(BrokerError::from)? else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no broker leads the load manager now".to_owned()));
    };
    let broker = String::from_utf8_lossy(&found.value).into_owned();
    Ok(Json(json!({ "brokerId": broker, "serviceUrl": format!("http://{broker}") })).into_response())
}

/// `ok` when this broker can serve: not shutting down or draining, the metadata store
/// answers, and enough bookies are registered for a new ledger's ensemble. 503 with the
/// reason otherwise.
async fn health(State(service): State<AppState>) -> Result<Response, ApiError> {
    let unhealthy = |why: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, why);
    if service.shutdown.is_cancelled() || service.ownership.is_draining() {
        return Err(unhealthy("the broker is shutting down".to_owned()));
    }
    let bookies = magnetar_bookie::registration::available(service.meta.as_ref())
        .await
        .map_err(|error| unhealthy(format!("the metadata store does not answer: {error}")))?;
    let needed = service.config.ledger.ensemble_size as usize;
    if bookies.len() < needed {
        return Err(unhealthy(format!("{} bookies available, new ledgers need {needed}", bookies.len())));
    }
    Ok("ok".into_response())
}

/// `ok` while the broker accepts work (Pulsar's readiness probe).
async fn ready(State(service): State<AppState>) -> Result<Response, ApiError> {
    if service.shutdown.is_cancelled() {
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "the broker is shutting down".to_owned()));
    }
    Ok("ok".into_response())
}

/// How long `bookies/all` waits for a bookie's HTTP server.
const BOOKIE_STATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `{"bookies": [...]}`: the bookies registered now, each with `bookieId`, `address`, `tls`
/// and, read from its HTTP server, `state` (`read-write`, `read-only`, or `unreachable`
/// with `error`), `readOnly`, `freeSpace` and `totalSpace` in bytes. A bookie without an
/// HTTP server shows `state: "unknown"`.
async fn bookies(State(service): State<AppState>) -> Result<Response, ApiError> {
    let bookies = magnetar_bookie::registration::available(service.meta.as_ref())
        .await
        .map_err(|error| ApiError(StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
    let list = futures::future::join_all(bookies.iter().map(|bookie| async move {
        let mut entry = json!({ "bookieId": bookie.bookie_id, "address": bookie.address, "tls": bookie.tls });
        if bookie.http_address.is_empty() {
            entry["state"] = json!("unknown");
            return entry;
        }
        let base = format!("http://{}", bookie.http_address);
        let asked = tokio::time::timeout(BOOKIE_STATE_TIMEOUT, async {
            let state = super::forward::get_json(&base, "/api/v1/bookie/state", None).await?;
            let info = super::forward::get_json(&base, "/api/v1/bookie/info", None).await?;
            Ok::<_, ApiError>((state, info))
        })
        .await;
        match asked {
            Ok(Ok((state, info))) => {
                let read_only = state["readOnly"].as_bool().unwrap_or(false);
                entry["state"] = json!(if read_only { "read-only" } else { "read-write" });
                entry["readOnly"] = json!(read_only);
                entry["freeSpace"] = info["freeSpace"].clone();
                entry["totalSpace"] = info["totalSpace"].clone();
            }
            Ok(Err(ApiError(_, reason))) => {
                entry["state"] = json!("unreachable");
                entry["error"] = json!(reason);
            }
            Err(_) => {
                entry["state"] = json!("unreachable");
                entry["error"] = json!(format!("{base}: no answer in {BOOKIE_STATE_TIMEOUT:?}"));
            }
        }
        entry
    }))
    .await;
    Ok(Json(json!({ "bookies": list })).into_response())
}
