//! Partitioned topics: the metadata record that says topic `t` has N partitions. The
//! partitions themselves, `t-partition-0` .. `t-partition-<N-1>`, are ordinary topics created
//! on first use; clients learn N from PARTITIONED_METADATA and route to them.
//!
//! Stored at `/magnetar/admin/partitioned-topics/<tenant>/<namespace>/persistent/<topic>` as
//! `{"partitions": N}` (Pulsar's PartitionedTopicMetadata). Creation is a put-if-absent, so two
//! concurrent creators get one success and one conflict.

use magnetar_meta::{Expected, MetaError, MetadataStore};
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::topic_name::{partition_index, TopicName};

pub const PARTITIONED_TOPICS_PATH: &str = "/magnetar/admin/partitioned-topics";
/// Most partitions one topic may have (Pulsar's `maxNumPartitionsPerPartitionedTopic` is
/// unlimited by default; a bound keeps a typo from creating millions of topics).
pub const MAX_PARTITIONS: u32 = 10_000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionedTopicMetadata {
    pub partitions: u32,
}

fn namespace_prefix(namespace: &str) -> String {
    format!("{PARTITIONED_TOPICS_PATH}/{namespace}/persistent")
}

fn path(topic: &TopicName) -> String {
    format!("{}/{}", namespace_prefix(&topic.namespace_name()), topic.local_name)
}

/// Creates the record; `AlreadyExists` if the topic is already partitioned.
pub async fn create(store: &dyn MetadataStore, topic: &TopicName, partitions: u32) -> Result<(), BrokerError> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(BrokerError::InvalidArgument {
            what: format!("number of partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"),
        });
    }
    if partition_index(&topic.local_name).is_some() {
        return Err(BrokerError::InvalidArgument { what: format!("{topic} is itself a partition") });
    }
    let value = serde_json::to_vec(&PartitionedTopicMetadata { partitions })
        .map_err(|error| BrokerError::Corrupt { what: path(topic), reason: error.to_string() })?;
    match store.put(&path(topic), value, Expected::Absent).await {
        Ok(_) => Ok(()),
        Err(MetaError::BadVersion { .. }) => {
            Err(BrokerError::AlreadyExists { what: format!("partitioned topic {topic} already exists") })
        }
        Err(error) => Err(error.into()),
    }
}

/// The number of partitions, or none for a topic that is not partitioned.
pub async fn get(store: &dyn MetadataStore, topic: &TopicName) -> Result<Option<u32>, BrokerError> {
    let key = path(topic);
    let Some(stored) = store.get(&key).await? else { return Ok(None) };
    let metadata: PartitionedTopicMetadata = serde_json::from_slice(&stored.value)
        .map_err(|error| BrokerError::Corrupt { what: key, reason: error.to_string() })?;
    Ok(Some(metadata.partitions))
}

/// Changes the partition count of an existing partitioned topic (the caller checks it grows).
pub async fn set(store: &dyn MetadataStore, topic: &TopicName, partitions: u32) -> Result<(), BrokerError> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(BrokerError::InvalidArgument {
            what: format!("number of partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"),
        });
    }
    let value = serde_json::to_vec(&PartitionedTopicMetadata { partitions })
        .map_err(|error| BrokerError::Corrupt { what: path(topic), reason: error.to_string() })?;
    store.put(&path(topic), value, Expected::Any).await?;
    Ok(())
}

/// Removes the record; `TopicNotFound` if there was none. The partitions' data stays until
/// each partition topic is deleted.
pub async fn delete(store: &dyn MetadataStore, topic: &TopicName) -> Result<(), BrokerError> {
    if get(store, topic).await?.is_none() {
        return Err(BrokerError::TopicNotFound { topic: topic.to_string() });
    }
    Ok(store.delete(&path(topic), Expected::Any).await?)
}

/// Partitioned topics of a namespace with their partition counts, by full name.
pub async fn list(store: &dyn MetadataStore, namespace: &str) -> Result<Vec<(String, u32)>, BrokerError> {
    let mut found = Vec::new();
    for local in store.list_children(&namespace_prefix(namespace)).await? {
        let name = TopicName::parse(&format!("persistent://{namespace}/{local}"))?;
        if let Some(partitions) = get(store, &name).await? {
            found.push((name.to_string(), partitions));
        }
    }
    Ok(found)
}
