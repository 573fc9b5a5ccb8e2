//! Clusters, tenants and namespaces as stored in metadata. This first version knows that they
//! exist; policies come with the admin API.

use magnetar_meta::{Expected, MetaError, MetadataStore};

use crate::error::BrokerError;

pub const CLUSTERS_PATH: &str = "/magnetar/admin/clusters";
pub const TENANTS_PATH: &str = "/magnetar/admin/tenants";
pub const NAMESPACES_PATH: &str = "/magnetar/admin/namespaces";

pub fn namespace_path(namespace: &str) -> String {
    format!("{NAMESPACES_PATH}/{namespace}")
}

async fn create_if_absent(store: &dyn MetadataStore, key: &str, value: &[u8]) -> Result<(), BrokerError> {
    match store.put(key, value.to_vec(), Expected::Absent).await {
        Ok(_) | Err(MetaError::BadVersion { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Creates the cluster, tenant `public` and namespace `public/default` if they are missing,
/// as Pulsar's standalone does.
pub async fn initialize_defaults(store: &dyn MetadataStore, cluster: &str) -> Result<(), BrokerError> {
    create_if_absent(store, &format!("{CLUSTERS_PATH}/{cluster}"), b"{}").await?;
    create_if_absent(
        store,
        &format!("{TENANTS_PATH}/public"),
        format!(r#"{{"allowedClusters":["{cluster}"]}}"#).as_bytes(),
    )
    .await?;
    create_if_absent(store, &namespace_path("public/default"), b"{}").await?;
    Ok(())
}

pub async fn namespace_exists(store: &dyn MetadataStore, namespace: &str) -> Result<bool, BrokerError> {
    Ok(store.get(&namespace_path(namespace)).await?.is_some())
}

pub async fn clusters(store: &dyn MetadataStore) -> Result<Vec<String>, BrokerError> {
    Ok(store.list_children(CLUSTERS_PATH).await?)
}

pub async fn tenants(store: &dyn MetadataStore) -> Result<Vec<String>, BrokerError> {
    Ok(store.list_children(TENANTS_PATH).await?)
}

pub async fn namespaces(store: &dyn MetadataStore, tenant: &str) -> Result<Vec<String>, BrokerError> {
    Ok(store
        .list_children(&format!("{NAMESPACES_PATH}/{tenant}"))
        .await?
        .into_iter()
        .map(|namespace| format!("{tenant}/{namespace}"))
        .collect())
}
