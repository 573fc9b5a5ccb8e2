//! Clusters, tenants and namespaces as stored in metadata. A namespace's value is its policies
//! as a JSON object under Pulsar's names (`deduplicationEnabled`); fields this version does not
//! know are kept as they are when one policy changes (read-modify-write by compare-and-set).

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

/// The namespace's policies object; `NamespaceNotFound` if it does not exist.
async fn policies(
    store: &dyn MetadataStore,
    namespace: &str,
) -> Result<(serde_json::Map<String, serde_json::Value>, magnetar_meta::Version), BrokerError> {
    let path = namespace_path(namespace);
    let Some(stored) = store.get(&path).await? else {
        return Err(BrokerError::NamespaceNotFound { namespace: namespace.to_owned() });
    };
    let policies = match serde_json::from_slice::<serde_json::Value>(&stored.value) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) => return Err(BrokerError::Corrupt { what: path, reason: "policies are not a JSON object".to_owned() }),
        Err(error) => return Err(BrokerError::Corrupt { what: path, reason: error.to_string() }),
    };
    Ok((policies, stored.version))
}

/// Whether the namespace's policies turn message deduplication on (off when unset, as
/// Pulsar's `brokerDeduplicationEnabled` default).
pub async fn deduplication_enabled(store: &dyn MetadataStore, namespace: &str) -> Result<bool, BrokerError> {
    let (policies, _) = policies(store, namespace).await?;
    Ok(policies.get("deduplicationEnabled").and_then(serde_json::Value::as_bool).unwrap_or(false))
}

/// Sets the namespace's deduplication policy, keeping its other policies.
pub async fn set_deduplication(store: &dyn MetadataStore, namespace: &str, enabled: bool) -> Result<(), BrokerError> {
    loop {
        let (mut policies, version) = policies(store, namespace).await?;
        policies.insert("deduplicationEnabled".to_owned(), serde_json::Value::Bool(enabled));
        let value = serde_json::to_vec(&policies)
            .map_err(|error| BrokerError::Corrupt { what: namespace_path(namespace), reason: error.to_string() })?;
        match store.put(&namespace_path(namespace), value, Expected::Version(version)).await {
            Ok(_) => return Ok(()),
            Err(MetaError::BadVersion { .. }) => continue,
            Err(error) => return Err(error.into()),
        }
    }
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
