//! Topic and namespace lifecycles on admin request: creating a topic explicitly, deleting a
//! topic with its data, deleting a namespace with its topics.

use magnetar_meta::{Expected, MetaError};
use magnetar_proto::clock::now_ms;
use magnetar_proto::records::ManagedLedgerInfo;
use prost::Message;
use tracing::info;

use super::BrokerService;
use crate::dedup::Deduplication;
use crate::error::BrokerError;
use crate::managed_ledger::{self, info_path};
use crate::partitions;
use crate::tenancy::store;
use crate::topic_name::{partition_topic_name, TopicName};

impl BrokerService {
    /// Creates a non-partitioned topic (opens it here); `AlreadyExists` if it or a
    /// partitioned topic of that name exists.
    pub async fn create_topic(&self, name: &TopicName) -> Result<(), BrokerError> {
        let namespace = self.check_topic(name).await?;
        if self.topic_exists(name).await? || partitions::get(self.meta.as_ref(), name).await?.is_some() {
            return Err(BrokerError::AlreadyExists { what: format!("topic {name} already exists") });
        }
        self.check_max_topics(&name.namespace_name(), &namespace, 1).await?;
        // Creating a topic is storing its (empty) ledger list: from then on it exists, auto
        // creation or not, and opening it here starts its first ledger.
        let info = ManagedLedgerInfo { ledgers: Vec::new(), created_at_ms: now_ms(), terminated: false };
        match self.meta.put(&info_path(&name.persistence_name()), info.encode_to_vec(), Expected::Absent).await {
            Ok(_) => {}
            Err(MetaError::BadVersion { .. }) => {
                return Err(BrokerError::AlreadyExists { what: format!("topic {name} already exists") })
            }
            Err(error) => return Err(error.into()),
        }
        self.topic(name).await?;
        info!(topic = %name, "topic created (admin)");
        Ok(())
    }

    /// Deletes a non-partitioned topic (or one partition) and its data: its ledgers, its
    /// subscriptions' cursors, its dedup state, its own policies and (not for a partition) its
    /// schema history, as Pulsar deletes a deleted topic's schema. Refused while producers
    /// or consumers are connected unless `force` (they are disconnected).
    pub async fn delete_topic(&self, name: &TopicName, force: bool) -> Result<(), BrokerError> {
        if self.meta.get(&info_path(&name.persistence_name())).await?.is_none() {
            return Err(BrokerError::TopicNotFound { topic: name.to_string() });
        }
        if let Some(topic) = self.loaded_topics().into_iter().find(|topic| topic.name() == name) {
            if !force && (topic.producer_count() > 0 || topic.consumer_count().await > 0) {
                return Err(BrokerError::NotAllowed {
                    what: format!("Topic {name} has active producers/subscriptions"),
                });
            }
        }
        self.close_topics(|loaded| loaded == name).await;
        let persistence = name.persistence_name();
        managed_ledger::delete_stored(&persistence, &self.bookies).await?;
        crate::compaction::Compaction::delete(&self.bookies, &persistence).await?;
        Deduplication::delete_snapshot(self.meta.as_ref(), &persistence).await?;
        store::delete_topic_policies(self.meta.as_ref(), name).await?;
        // A partition shares its partitioned topic's schema, which goes with that topic.
        if name.partition_of().is_none() {
            self.schemas.remove_history(&crate::schema::schema_id(name)).await?;
        }
        info!(topic = %name, "topic deleted");
        Ok(())
    }

    /// Deletes a partitioned topic: every partition's data, then its metadata.
    pub async fn delete_partitioned_topic(&self, name: &TopicName, force: bool) -> Result<(), BrokerError> {
        let Some(count) = partitions::get(self.meta.as_ref(), name).await? else {
            return Err(BrokerError::TopicNotFound { topic: name.to_string() });
        };
        for index in 0..count {
            let partition = TopicName::parse(&partition_topic_name(name, index))?;
            match self.delete_topic(&partition, force).await {
                Ok(()) | Err(BrokerError::TopicNotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        store::delete_topic_policies(self.meta.as_ref(), name).await?;
        self.schemas.remove_history(&crate::schema::schema_id(name)).await?;
        partitions::delete(self.meta.as_ref(), name).await
    }

    /// Grows a partitioned topic to `count` partitions (never shrinks, as Pulsar).
    pub async fn update_partitions(&self, name: &TopicName, count: u32) -> Result<(), BrokerError> {
        let namespace = self.check_topic(name).await?;
        let Some(current) = partitions::get(self.meta.as_ref(), name).await? else {
            return Err(BrokerError::TopicNotFound { topic: format!("partitioned topic {name}") });
        };
        if count <= current {
            return Err(BrokerError::Conflict {
                what: format!("partitions can only grow: {name} has {current}, asked for {count}"),
            });
        }
        self.check_max_topics(&name.namespace_name(), &namespace, count - current).await?;
        partitions::set(self.meta.as_ref(), name, count).await?;
        info!(topic = %name, from = current, to = count, "partitioned topic grown");
        Ok(())
    }

    /// Deletes a namespace: refused while it has topics unless `force`, which deletes them
    /// (and their data) first.
    pub async fn delete_namespace(&self, namespace: &str, force: bool) -> Result<(), BrokerError> {
        if !store::namespace_exists(self.meta.as_ref(), namespace).await? {
            return Err(BrokerError::NamespaceNotFound { namespace: namespace.to_owned() });
        }
        let partitioned = partitions::list(self.meta.as_ref(), namespace).await?;
        let stored = self.meta.list_children(&format!("/magnetar/managed-ledgers/{namespace}/persistent")).await?;
        if !force && (!partitioned.is_empty() || !stored.is_empty()) {
            return Err(BrokerError::Conflict { what: format!("Cannot delete non empty namespace {namespace}") });
        }
        for (name, _) in partitioned {
            self.delete_partitioned_topic(&TopicName::parse(&name)?, true).await?;
        }
        for local in self.meta.list_children(&format!("/magnetar/managed-ledgers/{namespace}/persistent")).await? {
            self.delete_topic(&TopicName::parse(&format!("persistent://{namespace}/{local}"))?, true).await?;
        }
        store::delete_namespace(self.meta.as_ref(), namespace).await?;
        let layout = crate::cluster::bundles::layout_path(namespace);
        self.meta.delete(&layout, magnetar_meta::Expected::Any).await?;
        self.policies.refresh(&store::namespace_path(namespace)).await?;
        info!(%namespace, force, "namespace deleted");
        Ok(())
    }
}
