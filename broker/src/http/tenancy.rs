//! Clusters, tenants and namespaces over HTTP, in Pulsar's paths and JSON shapes
//! (`ClusterData`, `TenantInfo`, `Policies`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tracing::info;

use super::{json_body, ApiError, AppState, ForceQuery};
use crate::cluster::bundles;
use crate::tenancy::model::{BundlesData, ClusterData, Policies, TenantInfo};
use crate::tenancy::store;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v2/clusters", get(clusters))
        .route(
            "/admin/v2/clusters/{cluster}",
            get(cluster).put(create_cluster).post(update_cluster).delete(delete_cluster),
        )
        .route("/admin/v2/tenants", get(tenants))
        .route("/admin/v2/tenants/{tenant}", get(tenant).put(create_tenant).post(update_tenant).delete(delete_tenant))
        .route("/admin/v2/namespaces/{tenant}", get(namespaces))
        .route(
            "/admin/v2/namespaces/{tenant}/{namespace}",
            get(namespace_policies).put(create_namespace).delete(delete_namespace),
        )
}

/// A body that may be empty (then the default value).
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &str, what: &str) -> Result<T, ApiError> {
    if body.trim().is_empty() {
        return Ok(T::default());
    }
    json_body(body, what)
}

async fn clusters(State(service): State<AppState>) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(store::clusters(service.meta.as_ref()).await?))
}

async fn cluster(State(service): State<AppState>, Path(cluster): Path<String>) -> Result<Json<ClusterData>, ApiError> {
    Ok(Json(store::cluster(service.meta.as_ref(), &cluster).await?))
}

async fn create_cluster(
    State(service): State<AppState>,
    Path(cluster): Path<String>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let data: ClusterData = optional_body(&body, "a ClusterData object")?;
    store::create_cluster(service.meta.as_ref(), &cluster, &data).await?;
    info!(%cluster, "cluster created");
    Ok(StatusCode::NO_CONTENT)
}

async fn update_cluster(
    State(service): State<AppState>,
    Path(cluster): Path<String>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let data: ClusterData = json_body(&body, "a ClusterData object")?;
    store::update_cluster(service.meta.as_ref(), &cluster, &data).await?;
    info!(%cluster, "cluster updated");
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_cluster(State(service): State<AppState>, Path(cluster): Path<String>) -> Result<StatusCode, ApiError> {
    if cluster == service.config.cluster_name {
        return Err(ApiError(StatusCode::PRECONDITION_FAILED, format!("cluster {cluster} is this broker's own")));
    }
    store::delete_cluster(service.meta.as_ref(), &cluster).await?;
    info!(%cluster, "cluster deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn tenants(State(service): State<AppState>) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(store::tenants(service.meta.as_ref()).await?))
}

async fn tenant(State(service): State<AppState>, Path(tenant): Path<String>) -> Result<Json<TenantInfo>, ApiError> {
    Ok(Json(store::tenant(service.meta.as_ref(), &tenant).await?))
}

/// A `TenantInfo` body; a tenant must allow at least one cluster (nothing of it could be
/// served otherwise).
fn tenant_body(body: &str) -> Result<TenantInfo, ApiError> {
    let info: TenantInfo = json_body(body, "a TenantInfo object")?;
    if info.allowed_clusters.is_empty() {
        return Err(ApiError(
            StatusCode::PRECONDITION_FAILED,
            "allowedClusters: a tenant needs at least one allowed cluster".to_owned(),
        ));
    }
    Ok(info)
}

async fn create_tenant(
    State(service): State<AppState>,
    Path(tenant): Path<String>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let info = tenant_body(&body)?;
    store::create_tenant(service.meta.as_ref(), &tenant, &info).await?;
    service.policies.refresh(&store::tenant_path(&tenant)).await?;
    info!(%tenant, "tenant created");
    Ok(StatusCode::NO_CONTENT)
}

async fn update_tenant(
    State(service): State<AppState>,
    Path(tenant): Path<String>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let info = tenant_body(&body)?;
    store::update_tenant(service.meta.as_ref(), &tenant, &info).await?;
    service.policies.refresh(&store::tenant_path(&tenant)).await?;
    info!(%tenant, "tenant updated");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /admin/v2/tenants/{tenant}[?force=true]`: 409 while it has namespaces, unless
/// forced (then they are deleted with their topics).
async fn delete_tenant(
    State(service): State<AppState>,
    Path(tenant): Path<String>,
    Query(query): Query<ForceQuery>,
) -> Result<StatusCode, ApiError> {
    store::tenant(service.meta.as_ref(), &tenant).await?;
    if query.force {
        for namespace in store::namespaces(service.meta.as_ref(), &tenant).await? {
            service.delete_namespace(&namespace, true).await?;
        }
    }
    store::delete_tenant(service.meta.as_ref(), &tenant).await?;
    service.policies.refresh(&store::tenant_path(&tenant)).await?;
    info!(%tenant, force = query.force, "tenant deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn namespaces(
    State(service): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<String>>, ApiError> {
    store::tenant(service.meta.as_ref(), &tenant).await?;
    Ok(Json(store::namespaces(service.meta.as_ref(), &tenant).await?))
}

/// The namespace's policies, with its bundles as they are now.
async fn namespace_policies(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<Json<Policies>, ApiError> {
    let namespace = format!("{tenant}/{ns}");
    let mut policies = store::policies(service.meta.as_ref(), &namespace).await?;
    let layout = service.ownership.layout(&namespace).await?;
    policies.bundles = serde_json::from_slice::<BundlesData>(&layout.encode()).ok();
    Ok(Json(policies))
}

/// `PUT /admin/v2/namespaces/{tenant}/{namespace}` with an optional `Policies` body: 409 if it
/// exists, 404 without its tenant, 412 for a replication cluster the tenant does not allow.
async fn create_namespace(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let namespace = format!("{tenant}/{ns}");
    let mut policies: Policies = optional_body(&body, "a Policies object")?;
    if policies.replication_clusters.is_empty() {
        policies.replication_clusters.insert(service.config.cluster_name.clone());
    }
    let bundle_count = policies.bundles.as_ref().map(|b| b.num_bundles);
    store::create_namespace(service.meta.as_ref(), &namespace, &policies).await?;
    let count = bundle_count.and_then(|n| u32::try_from(n).ok()).unwrap_or(service.config.cluster.default_bundles);
    bundles::layout(service.meta.as_ref(), &namespace, count).await?;
    service.policies.refresh(&store::namespace_path(&namespace)).await?;
    info!(%namespace, bundles = count, "namespace created");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /admin/v2/namespaces/{tenant}/{namespace}[?force=true]`: 409 while it has topics,
/// unless forced (then its topics and their data are deleted first).
async fn delete_namespace(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
    Query(query): Query<ForceQuery>,
) -> Result<StatusCode, ApiError> {
    let namespace = format!("{tenant}/{ns}");
    service.delete_namespace(&namespace, query.force).await?;
    Ok(StatusCode::NO_CONTENT)
}
