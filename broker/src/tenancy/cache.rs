//! Every broker's in-memory copy of tenants, namespace policies and topic policies, kept
//! current by a metadata watch on `/magnetar/admin/`, so that a policy set through any broker
//! applies on every broker within the watch's delay (well under a second), with no restart.
//!
//! The watch starts before the first full read, so nothing written in between is missed;
//! each key keeps the version it was read at and an older event never overwrites a newer
//! value. A watch cut off (the store dropped a slow watcher) is re-established and followed
//! by a full re-read. Every change is announced on [`PolicyCache::changes`]: the broker
//! re-resolves the limits of its loaded topics in that namespace.
//!
//! Reads that decide whether something exists (a namespace for a new topic) fall back to the
//! store when the cache does not know the key, so a namespace created through another broker a
//! moment ago is never refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use magnetar_meta::{MetadataStore, Version, WatchEvent};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::model::{Policies, TenantInfo, TopicPolicies};
use super::store::{self, NAMESPACES_PATH, TENANTS_PATH, TOPIC_POLICIES_PATH};
use crate::error::BrokerError;
use crate::topic_name::TopicName;

/// What changed: the namespace whose topics' limits must be resolved again (a topic policy
/// names its namespace too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Tenant(String),
    Namespace(String),
    Topic { namespace: String, topic: String },
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, (Arc<TenantInfo>, Version)>,
    namespaces: HashMap<String, (Arc<Policies>, Version)>,
    /// By topic name (`persistent://t/ns/topic`).
    topics: HashMap<String, (Arc<TopicPolicies>, Version)>,
}

pub struct PolicyCache {
    store: Arc<dyn MetadataStore>,
    state: RwLock<State>,
    changes: broadcast::Sender<Change>,
}

/// Where a key under `/magnetar/admin/` belongs.
enum Key {
    Tenant(String),
    Namespace(String),
    Topic { namespace: String, topic: String },
}

fn classify(key: &str) -> Option<Key> {
    if let Some(tenant) = key.strip_prefix(TENANTS_PATH).and_then(|rest| rest.strip_prefix('/')) {
        return (!tenant.contains('/')).then(|| Key::Tenant(tenant.to_owned()));
    }
    if let Some(namespace) = key.strip_prefix(NAMESPACES_PATH).and_then(|rest| rest.strip_prefix('/')) {
        return (namespace.matches('/').count() == 1).then(|| Key::Namespace(namespace.to_owned()));
    }
    if let Some(rest) = key.strip_prefix(TOPIC_POLICIES_PATH).and_then(|rest| rest.strip_prefix('/')) {
        let mut parts = rest.splitn(4, '/');
        let (tenant, ns, domain, local) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        return Some(Key::Topic {
            namespace: format!("{tenant}/{ns}"),
            topic: format!("{domain}://{tenant}/{ns}/{local}"),
        });
    }
    None
}

fn parse<T: DeserializeOwned>(key: &str, value: &[u8]) -> Option<Arc<T>> {
    match serde_json::from_slice(value) {
        Ok(parsed) => Some(Arc::new(parsed)),
        Err(error) => {
            warn!(%key, %error, "stored policy record does not parse; ignored");
            None
        }
    }
}

impl PolicyCache {
    /// Reads everything and starts following changes until `cancel`.
    pub async fn start(store: Arc<dyn MetadataStore>, cancel: CancellationToken) -> Result<Arc<Self>, BrokerError> {
        let (changes, _) = broadcast::channel(1024);
        let cache = Arc::new(PolicyCache { store, state: RwLock::default(), changes });
        let watch = cache.store.watch(&format!("{}/", store::ADMIN_PATH)).await?;
        cache.reload().await?;
        tokio::spawn(cache.clone().follow(watch, cancel));
        Ok(cache)
    }

    /// Announces every change applied to the cache.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn follow(self: Arc<Self>, mut watch: magnetar_meta::Watch, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                event = watch.recv() => match event {
                    Some(event) => self.apply(event),
                    None => {
                        // Cut off: watch again, then read everything (changes in between
                        // are in the new read).
                        loop {
                            if cancel.is_cancelled() {
                                return;
                            }
                            match self.store.watch(&format!("{}/", store::ADMIN_PATH)).await {
                                Ok(renewed) => match self.reload().await {
                                    Ok(()) => {
                                        watch = renewed;
                                        break;
                                    }
                                    Err(error) => warn!(%error, "policy cache: re-reading after a lost watch failed"),
                                },
                                Err(error) => warn!(%error, "policy cache: watching again failed"),
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                },
            }
        }
    }

    /// Reads every tenant, namespace and topic policy record.
    async fn reload(&self) -> Result<(), BrokerError> {
        let mut fresh = State::default();
        for tenant in self.store.list_children(TENANTS_PATH).await? {
            let key = store::tenant_path(&tenant);
            if let Some(found) = self.store.get(&key).await? {
                if let Some(info) = parse(&key, &found.value) {
                    fresh.tenants.insert(tenant.clone(), (info, found.version));
                }
            }
            for namespace in store::namespaces(self.store.as_ref(), &tenant).await? {
                let key = store::namespace_path(&namespace);
                if let Some(found) = self.store.get(&key).await? {
                    if let Some(policies) = parse(&key, &found.value) {
                        fresh.namespaces.insert(namespace.clone(), (policies, found.version));
                    }
                }
                let prefix = format!("{TOPIC_POLICIES_PATH}/{namespace}/persistent");
                for local in self.store.list_children(&prefix).await? {
                    let key = format!("{prefix}/{local}");
                    if let Some(found) = self.store.get(&key).await? {
                        if let Some(policies) = parse(&key, &found.value) {
                            fresh.topics.insert(format!("persistent://{namespace}/{local}"), (policies, found.version));
                        }
                    }
                }
            }
        }
        let namespaces: Vec<String> = fresh.namespaces.keys().cloned().collect();
        *self.state.write() = fresh;
        for namespace in namespaces {
            let _ = self.changes.send(Change::Namespace(namespace));
        }
        Ok(())
    }

    /// Takes one change seen by the watch (or written by this broker).
    pub fn apply(&self, event: WatchEvent) {
        let (key, value) = match &event {
            WatchEvent::Put { key, value, version } => (key.as_str(), Some((value.as_slice(), *version))),
            WatchEvent::Delete { key } => (key.as_str(), None),
        };
        let Some(kind) = classify(key) else { return };
        let change = {
            let mut state = self.state.write();
            match kind {
                Key::Tenant(name) => {
                    let changed = Self::set(&mut state.tenants, &name, key, value);
                    changed.then_some(Change::Tenant(name))
                }
                Key::Namespace(name) => {
                    let changed = Self::set(&mut state.namespaces, &name, key, value);
                    changed.then_some(Change::Namespace(name))
                }
                Key::Topic { namespace, topic } => {
                    let changed = Self::set(&mut state.topics, &topic, key, value);
                    changed.then_some(Change::Topic { namespace, topic })
                }
            }
        };
        if let Some(change) = change {
            debug!(?change, "policy change applied");
            let _ = self.changes.send(change);
        }
    }

    /// Sets or removes one entry unless the stored one is newer; whether it changed.
    fn set<T: DeserializeOwned>(
        map: &mut HashMap<String, (Arc<T>, Version)>,
        name: &str,
        key: &str,
        value: Option<(&[u8], Version)>,
    ) -> bool {
        match value {
            Some((bytes, version)) => {
                if map.get(name).is_some_and(|(_, seen)| *seen >= version) {
                    return false;
                }
                match parse(key, bytes) {
                    Some(parsed) => {
                        map.insert(name.to_owned(), (parsed, version));
                        true
                    }
                    None => false,
                }
            }
            None => map.remove(name).is_some(),
        }
    }

    /// Records a value this broker just wrote, so that its own next request sees it before
    /// the watch delivers it.
    pub async fn refresh(&self, key: &str) -> Result<(), BrokerError> {
        let event = match self.store.get(key).await? {
            Some(found) => WatchEvent::Put { key: key.to_owned(), value: found.value, version: found.version },
            None => WatchEvent::Delete { key: key.to_owned() },
        };
        self.apply(event);
        Ok(())
    }

    pub fn tenant(&self, tenant: &str) -> Option<Arc<TenantInfo>> {
        self.state.read().tenants.get(tenant).map(|(info, _)| info.clone())
    }

    /// A namespace's policies as this broker last saw them.
    pub fn namespace(&self, namespace: &str) -> Option<Arc<Policies>> {
        self.state.read().namespaces.get(namespace).map(|(policies, _)| policies.clone())
    }

    pub fn topic(&self, topic: &TopicName) -> Option<Arc<TopicPolicies>> {
        self.state.read().topics.get(&topic.to_string()).map(|(policies, _)| policies.clone())
    }

    /// The namespace's policies, read from the store when the cache does not know it yet (a
    /// namespace just created through another broker); `NamespaceNotFound` if it does not
    /// exist.
    pub async fn existing_namespace(&self, namespace: &str) -> Result<Arc<Policies>, BrokerError> {
        if let Some(found) = self.namespace(namespace) {
            return Ok(found);
        }
        self.refresh(&store::namespace_path(namespace)).await?;
        self.namespace(namespace).ok_or_else(|| BrokerError::NamespaceNotFound { namespace: namespace.to_owned() })
    }

    /// The tenant, from the store when the cache does not know it yet.
    pub async fn existing_tenant(&self, tenant: &str) -> Result<Arc<TenantInfo>, BrokerError> {
        if let Some(found) = self.tenant(tenant) {
            return Ok(found);
        }
        self.refresh(&store::tenant_path(tenant)).await?;
        self.tenant(tenant).ok_or_else(|| BrokerError::NotFound { what: format!("tenant {tenant} does not exist") })
    }
}

#[cfg(test)]
mod tests {
    use magnetar_meta::LocalStore;

    use super::*;

    #[tokio::test]
    async fn a_change_written_anywhere_reaches_the_cache_and_is_announced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn MetadataStore> = Arc::new(LocalStore::open(dir.path()).expect("open LocalStore"));
        store::initialize_defaults(store.as_ref(), "c", &Default::default()).await.expect("defaults");
        let cancel = CancellationToken::new();
        let cache = PolicyCache::start(store.clone(), cancel.clone()).await.expect("start");
        assert!(cache.namespace("public/default").is_some());
        let mut changes = cache.changes();
        store::update_policies(store.as_ref(), "public/default", |p| {
            p.max_producers_per_topic = Some(3);
            Ok(())
        })
        .await
        .expect("update");
        let change =
            tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.expect("in time").expect("change");
        assert_eq!(change, Change::Namespace("public/default".to_owned()));
        assert_eq!(cache.namespace("public/default").and_then(|p| p.max_producers_per_topic), Some(3));
        // A namespace the cache has not seen yet is read from the store.
        store::create_namespace(store.as_ref(), "public/fresh", &Policies::default()).await.expect("create");
        assert!(cache.existing_namespace("public/fresh").await.is_ok());
        assert!(matches!(cache.existing_namespace("public/none").await, Err(BrokerError::NamespaceNotFound { .. })));
        cancel.cancel();
    }
}
