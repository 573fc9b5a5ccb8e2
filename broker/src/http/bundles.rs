//! Namespace bundles over HTTP: list, unload, split (here or by asking the owner), a
//! namespace's unload, the live brokers and this broker's load report.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use tracing::info;

use super::{existing_namespace, ApiError, AppState};
use crate::cluster::bundles::Bundle;
use crate::cluster::load_manager::{self, Action, LoadCommand};
use crate::cluster::load_report;
use crate::error::BrokerError;
use crate::service::BrokerService;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v2/namespaces/{tenant}/{namespace}/bundles", get(bundles_of_namespace))
        .route("/admin/v2/namespaces/{tenant}/{namespace}/unload", put(unload_namespace))
        .route("/admin/v2/namespaces/{tenant}/{namespace}/{bundle}/unload", put(unload_bundle))
        .route("/admin/v2/namespaces/{tenant}/{namespace}/{bundle}/split", put(split_bundle))
        .route("/admin/v2/brokers/{cluster}", get(active_brokers))
        .route("/admin/v2/broker-stats/load-report", get(load_report))
}

/// How long an admin call waits for another broker to carry out an unload or a split.
const REMOTE_COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn parse_bundle(namespace: &str, range: &str) -> Result<Bundle, ApiError> {
    Bundle::parse(&format!("{namespace}/{range}")).ok_or_else(|| {
        ApiError(StatusCode::PRECONDITION_FAILED, format!("{range:?} is not a bundle range (0x00000000_0x40000000)"))
    })
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
