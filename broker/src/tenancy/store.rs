//! Clusters, tenants, namespaces and topic policies in the metadata store (etcd in a cluster,
//! RocksDB in standalone), each a JSON value under Pulsar's names ([`super::model`]):
//!
//! - `/magnetar/admin/clusters/<cluster>`: `ClusterData`;
//! - `/magnetar/admin/tenants/<tenant>`: `TenantInfo`;
//! - `/magnetar/admin/namespaces/<tenant>/<namespace>`: `Policies`;
//! - `/magnetar/admin/topic-policies/<tenant>/<namespace>/persistent/<topic>`: `TopicPolicies`.
//!
//! Creation is put-if-absent (409 for the loser of a race), every change a read-modify-write
//! by compare-and-set, so two admins changing two policies of one namespace both land.

use magnetar_meta::{Expected, MetaError, MetadataStore, Version};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::model::{ClusterData, Policies, TenantInfo, TopicPolicies};
use crate::error::BrokerError;
use crate::topic_name::TopicName;

pub const ADMIN_PATH: &str = "/magnetar/admin";
pub const CLUSTERS_PATH: &str = "/magnetar/admin/clusters";
pub const TENANTS_PATH: &str = "/magnetar/admin/tenants";
pub const NAMESPACES_PATH: &str = "/magnetar/admin/namespaces";
pub const TOPIC_POLICIES_PATH: &str = "/magnetar/admin/topic-policies";

pub fn cluster_path(cluster: &str) -> String {
    format!("{CLUSTERS_PATH}/{cluster}")
}

pub fn tenant_path(tenant: &str) -> String {
    format!("{TENANTS_PATH}/{tenant}")
}

pub fn namespace_path(namespace: &str) -> String {
    format!("{NAMESPACES_PATH}/{namespace}")
}

pub fn topic_policies_path(topic: &TopicName) -> String {
    format!("{TOPIC_POLICIES_PATH}/{}/persistent/{}", topic.namespace_name(), topic.local_name)
}

/// A name of a cluster, tenant or namespace part: Pulsar's `[-=:.\w]+`.
pub fn check_name(what: &str, name: &str) -> Result<(), BrokerError> {
    let valid = !name.is_empty()
        && name.len() <= 256
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | ':' | '.'));
    if !valid {
        return Err(BrokerError::InvalidArgument {
            what: format!("{what} name {name:?} is invalid: use letters, digits and - _ = : ."),
        });
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(path: &str, value: &[u8]) -> Result<T, BrokerError> {
    serde_json::from_slice(value)
        .map_err(|error| BrokerError::Corrupt { what: path.to_owned(), reason: error.to_string() })
}

fn encode<T: Serialize>(path: &str, value: &T) -> Result<Vec<u8>, BrokerError> {
    serde_json::to_vec(value).map_err(|error| BrokerError::Corrupt { what: path.to_owned(), reason: error.to_string() })
}

/// The value at `path` and its version, if any.
pub async fn read<T: DeserializeOwned>(
    store: &dyn MetadataStore,
    path: &str,
) -> Result<Option<(T, Version)>, BrokerError> {
    match store.get(path).await? {
        Some(found) => Ok(Some((decode(path, &found.value)?, found.version))),
        None => Ok(None),
    }
}

/// Creates `path` with `value`; `AlreadyExists` (409) if it is there.
async fn create<T: Serialize>(
    store: &dyn MetadataStore,
    path: &str,
    value: &T,
    what: String,
) -> Result<(), BrokerError> {
    match store.put(path, encode(path, value)?, Expected::Absent).await {
        Ok(_) => Ok(()),
        Err(MetaError::BadVersion { .. }) => Err(BrokerError::AlreadyExists { what }),
        Err(error) => Err(error.into()),
    }
}

/// Applies `change` to the value at `path` by compare-and-set, retrying lost races; `missing`
/// if there is no value. Returns the value written.
async fn update<T, F>(
    store: &dyn MetadataStore,
    path: &str,
    missing: impl Fn() -> BrokerError,
    change: F,
) -> Result<T, BrokerError>
where
    T: Serialize + DeserializeOwned,
    F: Fn(&mut T) -> Result<(), BrokerError>,
{
    loop {
        let Some((mut value, version)) = read::<T>(store, path).await? else { return Err(missing()) };
        change(&mut value)?;
        match store.put(path, encode(path, &value)?, Expected::Version(version)).await {
            Ok(_) => return Ok(value),
            Err(MetaError::BadVersion { .. }) => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

// ---- clusters --------------------------------------------------------------------------

pub async fn clusters(store: &dyn MetadataStore) -> Result<Vec<String>, BrokerError> {
    Ok(store.list_children(CLUSTERS_PATH).await?)
}

pub async fn cluster(store: &dyn MetadataStore, cluster: &str) -> Result<ClusterData, BrokerError> {
    read(store, &cluster_path(cluster))
        .await?
        .map(|(data, _)| data)
        .ok_or_else(|| BrokerError::NotFound { what: format!("cluster {cluster} does not exist") })
}

pub async fn create_cluster(store: &dyn MetadataStore, cluster: &str, data: &ClusterData) -> Result<(), BrokerError> {
    check_name("cluster", cluster)?;
    data.check().map_err(|what| BrokerError::InvalidArgument { what })?;
    create(store, &cluster_path(cluster), data, format!("cluster {cluster} already exists")).await
}

pub async fn update_cluster(store: &dyn MetadataStore, cluster: &str, data: &ClusterData) -> Result<(), BrokerError> {
    data.check().map_err(|what| BrokerError::InvalidArgument { what })?;
    let missing = || BrokerError::NotFound { what: format!("cluster {cluster} does not exist") };
    update::<ClusterData, _>(store, &cluster_path(cluster), missing, |stored| {
        *stored = data.clone();
        Ok(())
    })
    .await
    .map(drop)
}

/// Deletes a cluster no tenant allows (Pulsar refuses while one does: 412).
pub async fn delete_cluster(store: &dyn MetadataStore, cluster: &str) -> Result<(), BrokerError> {
    self::cluster(store, cluster).await?;
    for tenant in tenants(store).await? {
        if let Some((info, _)) = read::<TenantInfo>(store, &tenant_path(&tenant)).await? {
            if info.allowed_clusters.contains(cluster) {
                return Err(BrokerError::NotAllowed {
                    what: format!("cluster {cluster} is still allowed by tenant {tenant}"),
                });
            }
        }
    }
    Ok(store.delete(&cluster_path(cluster), Expected::Any).await?)
}

// ---- tenants ---------------------------------------------------------------------------

pub async fn tenants(store: &dyn MetadataStore) -> Result<Vec<String>, BrokerError> {
    Ok(store.list_children(TENANTS_PATH).await?)
}

pub async fn tenant(store: &dyn MetadataStore, tenant: &str) -> Result<TenantInfo, BrokerError> {
    read(store, &tenant_path(tenant))
        .await?
        .map(|(info, _)| info)
        .ok_or_else(|| BrokerError::NotFound { what: format!("tenant {tenant} does not exist") })
}

/// Every cluster a tenant allows must exist (Pulsar answers 412 otherwise).
async fn check_allowed_clusters(store: &dyn MetadataStore, info: &TenantInfo) -> Result<(), BrokerError> {
    let known = clusters(store).await?;
    if let Some(unknown) = info.allowed_clusters.iter().find(|cluster| !known.contains(cluster)) {
        return Err(BrokerError::NotAllowed { what: format!("allowedClusters: cluster {unknown} does not exist") });
    }
    Ok(())
}

pub async fn create_tenant(store: &dyn MetadataStore, tenant: &str, info: &TenantInfo) -> Result<(), BrokerError> {
    check_name("tenant", tenant)?;
    check_allowed_clusters(store, info).await?;
    create(store, &tenant_path(tenant), info, format!("tenant {tenant} already exists")).await
}

pub async fn update_tenant(store: &dyn MetadataStore, tenant: &str, info: &TenantInfo) -> Result<(), BrokerError> {
    check_allowed_clusters(store, info).await?;
    let missing = || BrokerError::NotFound { what: format!("tenant {tenant} does not exist") };
    update::<TenantInfo, _>(store, &tenant_path(tenant), missing, |stored| {
        *stored = info.clone();
        Ok(())
    })
    .await
    .map(drop)
}

/// Deletes a tenant; with namespaces only when `force` (they are deleted by the caller
/// first), otherwise 409 as Pulsar answers.
pub async fn delete_tenant(store: &dyn MetadataStore, tenant: &str) -> Result<(), BrokerError> {
    self::tenant(store, tenant).await?;
    if !namespaces(store, tenant).await?.is_empty() {
        return Err(BrokerError::Conflict { what: format!("tenant {tenant} still has namespaces") });
    }
    Ok(store.delete(&tenant_path(tenant), Expected::Any).await?)
}

// ---- namespaces ------------------------------------------------------------------------

/// The namespaces of `tenant` as `tenant/namespace`.
pub async fn namespaces(store: &dyn MetadataStore, tenant: &str) -> Result<Vec<String>, BrokerError> {
    Ok(store
        .list_children(&format!("{NAMESPACES_PATH}/{tenant}"))
        .await?
        .into_iter()
        .map(|namespace| format!("{tenant}/{namespace}"))
        .collect())
}

pub async fn namespace_exists(store: &dyn MetadataStore, namespace: &str) -> Result<bool, BrokerError> {
    Ok(store.get(&namespace_path(namespace)).await?.is_some())
}

pub async fn policies(store: &dyn MetadataStore, namespace: &str) -> Result<Policies, BrokerError> {
    read(store, &namespace_path(namespace))
        .await?
        .map(|(policies, _)| policies)
        .ok_or_else(|| BrokerError::NamespaceNotFound { namespace: namespace.to_owned() })
}

/// Creates `tenant/name` with `policies`: the tenant must exist and every replication
/// cluster must be one it allows.
pub async fn create_namespace(
    store: &dyn MetadataStore,
    namespace: &str,
    policies: &Policies,
) -> Result<(), BrokerError> {
    let Some((tenant, local)) = namespace.split_once('/') else {
        return Err(BrokerError::InvalidArgument { what: format!("namespace {namespace:?} must be tenant/namespace") });
    };
    check_name("namespace", local)?;
    policies.check().map_err(|what| BrokerError::InvalidArgument { what })?;
    let info = self::tenant(store, tenant).await?;
    if let Some(cluster) = policies.replication_clusters.iter().find(|c| !info.allowed_clusters.contains(*c)) {
        return Err(BrokerError::NotAllowed {
            what: format!("replication_clusters: cluster {cluster} is not allowed for tenant {tenant}"),
        });
    }
    create(store, &namespace_path(namespace), policies, format!("namespace {namespace} already exists")).await
}

/// Changes a namespace's policies with `change`, which must leave them valid.
pub async fn update_policies(
    store: &dyn MetadataStore,
    namespace: &str,
    change: impl Fn(&mut Policies) -> Result<(), BrokerError>,
) -> Result<Policies, BrokerError> {
    let missing = || BrokerError::NamespaceNotFound { namespace: namespace.to_owned() };
    update(store, &namespace_path(namespace), missing, |policies: &mut Policies| {
        change(policies)?;
        policies.check().map_err(|what| BrokerError::InvalidArgument { what })
    })
    .await
}

/// Removes a namespace's record and its topics' policies (its topics are deleted by the caller
/// first).
pub async fn delete_namespace(store: &dyn MetadataStore, namespace: &str) -> Result<(), BrokerError> {
    if !namespace_exists(store, namespace).await? {
        return Err(BrokerError::NamespaceNotFound { namespace: namespace.to_owned() });
    }
    let prefix = format!("{TOPIC_POLICIES_PATH}/{namespace}/persistent");
    for topic in store.list_children(&prefix).await? {
        store.delete(&format!("{prefix}/{topic}"), Expected::Any).await?;
    }
    Ok(store.delete(&namespace_path(namespace), Expected::Any).await?)
}

// ---- topic policies --------------------------------------------------------------------

pub async fn topic_policies(store: &dyn MetadataStore, topic: &TopicName) -> Result<TopicPolicies, BrokerError> {
    Ok(read(store, &topic_policies_path(topic)).await?.map(|(policies, _)| policies).unwrap_or_default())
}

/// Changes a topic's own policies with `change`; an empty result removes the record.
pub async fn update_topic_policies(
    store: &dyn MetadataStore,
    topic: &TopicName,
    change: impl Fn(&mut TopicPolicies) -> Result<(), BrokerError>,
) -> Result<TopicPolicies, BrokerError> {
    let path = topic_policies_path(topic);
    loop {
        let (mut policies, expected) = match read::<TopicPolicies>(store, &path).await? {
            Some((policies, version)) => (policies, Expected::Version(version)),
            None => (TopicPolicies::default(), Expected::Absent),
        };
        change(&mut policies)?;
        policies.check().map_err(|what| BrokerError::InvalidArgument { what })?;
        let result = if policies.is_empty() {
            match expected {
                Expected::Absent => return Ok(policies),
                _ => store.delete(&path, expected).await,
            }
        } else {
            store.put(&path, encode(&path, &policies)?, expected).await.map(drop)
        };
        match result {
            Ok(()) => return Ok(policies),
            Err(MetaError::BadVersion { .. }) => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

pub async fn delete_topic_policies(store: &dyn MetadataStore, topic: &TopicName) -> Result<(), BrokerError> {
    Ok(store.delete(&topic_policies_path(topic), Expected::Any).await?)
}

// ---- defaults --------------------------------------------------------------------------

async fn create_if_absent<T: Serialize>(store: &dyn MetadataStore, path: &str, value: &T) -> Result<(), BrokerError> {
    match store.put(path, encode(path, value)?, Expected::Absent).await {
        Ok(_) | Err(MetaError::BadVersion { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Creates the cluster (with this broker's URLs), tenant `public` and namespace
/// `public/default` if they are missing, as Pulsar's standalone and cluster initialization do.
pub async fn initialize_defaults(
    store: &dyn MetadataStore,
    cluster: &str,
    data: &ClusterData,
) -> Result<(), BrokerError> {
    initialize_cluster(store, cluster, data).await?;
    let public = TenantInfo { allowed_clusters: [cluster.to_owned()].into(), ..TenantInfo::default() };
    create_if_absent(store, &tenant_path("public"), &public).await?;
    let policies = Policies { replication_clusters: [cluster.to_owned()].into(), ..Policies::default() };
    create_if_absent(store, &namespace_path("public/default"), &policies).await?;
    Ok(())
}

/// Creates the cluster (with this broker's URLs) if it is missing.
pub async fn initialize_cluster(
    store: &dyn MetadataStore,
    cluster: &str,
    data: &ClusterData,
) -> Result<(), BrokerError> {
    create_if_absent(store, &cluster_path(cluster), data).await
}
