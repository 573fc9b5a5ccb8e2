//! The schema registry: every topic's history of schemas, kept in the metadata store (etcd in a
//! cluster, RocksDB in standalone) and checked as Pulsar checks them.
//!
//! - [`definition`]: what a schema is on the wire and in the admin API (Pulsar's type numbers
//!   and names), and the checks of a definition before anything is stored (Avro and JSON
//!   definitions parse, primitives carry no data, KeyValue halves are each valid, ...).
//! - [`compat`]: the compatibility strategies (`ALWAYS_INCOMPATIBLE` ... `FULL_TRANSITIVE`)
//!   and the checks between two schemas: Avro schema resolution (apache-avro) for AVRO and
//!   JSON, part by part for KeyValue, the root message for PROTOBUF_NATIVE, equality otherwise.
//! - [`registry`]: storage (one key per version under `/magnetar/schemas/`), registration
//!   that returns the existing version for a schema seen before, deletion as a tombstone
//!   version, and the producer and consumer rules (auto-update, validation enforced).
//!
//! One history serves every partition of a partitioned topic and both domains of a name, as
//! Pulsar's schema id `tenant/namespace/topic` does.

pub mod compat;
pub mod definition;
pub mod registry;

pub use compat::Strategy;
pub use definition::{SchemaData, SchemaType};
pub use registry::{SchemaPolicy, SchemaRegistry, StoredVersion};

use crate::topic_name::TopicName;

/// The schema id of a topic: `tenant/namespace/local name`, without the partition suffix
/// or the domain.
pub fn schema_id(topic: &TopicName) -> String {
    let base = match topic.partition_of() {
        Some((partitioned, _)) => partitioned,
        None => topic.clone(),
    };
    format!("{}/{}/{}", base.tenant(), base.namespace(), base.local_name())
}

/// A version as Pulsar sends it on the wire: 8 bytes, big-endian.
pub fn version_bytes(version: i64) -> Vec<u8> {
    version.to_be_bytes().to_vec()
}

/// A version from the wire; `None` for anything but 8 bytes.
pub fn version_from_bytes(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}
