//! Storage of schema histories and the rules producers and consumers meet.
//!
//! A topic's versions live at `/magnetar/schemas/<tenant>/<namespace>/<topic>/<version>`,
//! one protobuf `StoredSchema` each, numbered from 0. A new version is written with
//! compare-and-set on its absent key, so two brokers registering at once get different numbers
//! (the loser reads again and retries). Deleting a schema writes a tombstone version; the
//! versions after the last tombstone are the *active* ones that lookups and compatibility see.
//! Deleting a topic removes its history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use magnetar_meta::{Expected, MetaError, MetadataStore};
use magnetar_proto::records::StoredSchema;
use prost::Message;
use sha2::{Digest, Sha256};
use tracing::info;

use super::compat::{check_new, check_reader, Strategy};
use super::definition::{SchemaData, SchemaType};
use crate::error::BrokerError;
use crate::tenancy::model::{Policies, TopicPolicies};
use crate::tenancy::PolicyDefaults;

/// Where schema histories live.
pub const SCHEMAS_PATH: &str = "/magnetar/schemas";
/// Attempts at registering when other brokers register on the same topic at the same time.
const REGISTER_ATTEMPTS: usize = 8;

/// One stored version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVersion {
    pub version: i64,
    pub schema: SchemaData,
    pub timestamp_ms: u64,
    /// A tombstone: the schema was deleted at this version.
    pub deleted: bool,
    pub user: String,
}

/// What a topic's policies say about schemas, resolved topic, then namespace, then broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaPolicy {
    pub strategy: Strategy,
    /// `isAllowAutoUpdateSchema`: false lets clients use only versions an admin registered.
    pub allow_auto_update: bool,
    /// `schemaValidationEnforced`: a producer without a schema is refused on a topic that has
    /// one.
    pub validation_enforced: bool,
}

impl SchemaPolicy {
    /// The topic's policy wins over the namespace's, which wins over the broker's (Pulsar's
    /// order; the namespace's older `schema_auto_update_compatibility_strategy` counts when
    /// its `schema_compatibility_strategy` is UNDEFINED).
    pub fn resolve(defaults: &PolicyDefaults, namespace: Option<&Policies>, topic: Option<&TopicPolicies>) -> Self {
        let parse = |name: Option<&String>| name.and_then(|name| Strategy::parse_policy(name).ok().flatten());
        let strategy = parse(topic.and_then(|t| t.schema_compatibility_strategy.as_ref()))
            .or_else(|| parse(namespace.and_then(|n| n.schema_compatibility_strategy.as_ref())))
            .or_else(|| parse(namespace.and_then(|n| n.schema_auto_update_compatibility_strategy.as_ref())))
            .unwrap_or(defaults.schema_compatibility_strategy);
        SchemaPolicy {
            strategy,
            allow_auto_update: namespace
                .and_then(|n| n.is_allow_auto_update_schema)
                .unwrap_or(defaults.allow_auto_update_schema),
            validation_enforced: namespace.is_some_and(|n| n.schema_validation_enforced)
                || defaults.schema_validation_enforced,
        }
    }
}

/// The schema registry over a metadata store.
#[derive(Clone)]
pub struct SchemaRegistry {
    meta: Arc<dyn MetadataStore>,
}

fn topic_path(id: &str) -> String {
    format!("{SCHEMAS_PATH}/{id}")
}

fn version_path(id: &str, version: i64) -> String {
    format!("{SCHEMAS_PATH}/{id}/{version:020}")
}

/// SHA-256 of a schema's type, definition and properties.
fn hash(schema: &SchemaData) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(schema.schema_type.number().to_be_bytes());
    hasher.update((schema.data.len() as u64).to_be_bytes());
    hasher.update(&schema.data);
    for (key, value) in &schema.properties {
        for part in [key, value] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hasher.finalize().to_vec()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

fn decode(key: &str, bytes: &[u8]) -> Result<StoredVersion, BrokerError> {
    let corrupt = |reason: String| BrokerError::Corrupt { what: key.to_owned(), reason };
    let stored = StoredSchema::decode(bytes).map_err(|error| corrupt(error.to_string()))?;
    let schema_type = SchemaType::from_number(stored.schema_type)
        .ok_or_else(|| corrupt(format!("unknown schema type {}", stored.schema_type)))?;
    Ok(StoredVersion {
        version: stored.version,
        schema: SchemaData { schema_type, data: stored.data, properties: stored.properties.into_iter().collect() },
        timestamp_ms: stored.timestamp_ms,
        deleted: stored.deleted,
        user: stored.user,
    })
}

/// The versions after the last tombstone.
fn active(history: &[StoredVersion]) -> &[StoredVersion] {
    let start = history.iter().rposition(|version| version.deleted).map_or(0, |tombstone| tombstone + 1);
    &history[start..]
}

fn schemas(versions: &[StoredVersion]) -> Vec<SchemaData> {
    versions.iter().map(|version| version.schema.clone()).collect()
}

impl SchemaRegistry {
    pub fn new(meta: Arc<dyn MetadataStore>) -> Self {
        SchemaRegistry { meta }
    }

    /// Every stored version of `id`, tombstones included, oldest first.
    pub async fn history(&self, id: &str) -> Result<Vec<StoredVersion>, BrokerError> {
        let mut versions = Vec::new();
        for child in self.meta.list_children(&topic_path(id)).await? {
            let key = format!("{}/{child}", topic_path(id));
            if let Some(found) = self.meta.get(&key).await? {
                versions.push(decode(&key, &found.value)?);
            }
        }
        versions.sort_by_key(|version| version.version);
        Ok(versions)
    }

    /// The active versions (after the last deletion), oldest first.
    pub async fn active(&self, id: &str) -> Result<Vec<StoredVersion>, BrokerError> {
        Ok(active(&self.history(id).await?).to_vec())
    }

    /// The latest active version, if the topic has a schema.
    pub async fn latest(&self, id: &str) -> Result<Option<StoredVersion>, BrokerError> {
        Ok(self.active(id).await?.pop())
    }

    /// Version `version` unless it is a tombstone.
    pub async fn version(&self, id: &str, version: i64) -> Result<Option<StoredVersion>, BrokerError> {
        let key = version_path(id, version);
        match self.meta.get(&key).await? {
            Some(found) => Ok(Some(decode(&key, &found.value)?).filter(|stored| !stored.deleted)),
            None => Ok(None),
        }
    }

    /// The active version identical to `schema`, if any.
    pub async fn find(&self, id: &str, schema: &SchemaData) -> Result<Option<i64>, BrokerError> {
        Ok(self.active(id).await?.iter().rev().find(|stored| stored.schema == *schema).map(|stored| stored.version))
    }

    /// Registers `schema` unless an identical active version exists (whose number is
    /// returned), after checking it against the active versions under `strategy`.
    pub async fn register(
        &self,
        id: &str,
        schema: &SchemaData,
        strategy: Strategy,
        user: &str,
    ) -> Result<i64, BrokerError> {
        schema.validate()?;
        for _ in 0..REGISTER_ATTEMPTS {
            let history = self.history(id).await?;
            let live = active(&history);
            if let Some(existing) = live.iter().rev().find(|stored| stored.schema == *schema) {
                return Ok(existing.version);
            }
            check_new(&schemas(live), schema, strategy)?;
            let version = history.last().map_or(0, |last| last.version + 1);
            match self.write(id, version, schema, false, user).await {
                Ok(()) => {
                    info!(schema = %id, version, schema_type = %schema.schema_type, %user, "schema registered");
                    return Ok(version);
                }
                Err(BrokerError::Meta(MetaError::BadVersion { .. })) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(BrokerError::Conflict { what: format!("schema of {id} is changing too often to register; retry") })
    }

    async fn write(
        &self,
        id: &str,
        version: i64,
        schema: &SchemaData,
        deleted: bool,
        user: &str,
    ) -> Result<(), BrokerError> {
        let record = StoredSchema {
            version,
            schema_type: schema.schema_type.number(),
            data: schema.data.clone(),
            properties: schema.properties.clone().into_iter().collect(),
            timestamp_ms: now_ms(),
            hash: hash(schema),
            deleted,
            user: user.to_owned(),
        };
        self.meta.put(&version_path(id, version), record.encode_to_vec(), Expected::Absent).await?;
        Ok(())
    }

    /// Checks `schema` against the active versions without registering it (the admin API's
    /// compatibility test).
    pub async fn check(&self, id: &str, schema: &SchemaData, strategy: Strategy) -> Result<(), BrokerError> {
        schema.validate()?;
        let live = self.active(id).await?;
        if live.iter().any(|stored| stored.schema == *schema) {
            return Ok(());
        }
        check_new(&schemas(&live), schema, strategy)
    }

    /// Deletes the topic's schema: a tombstone version after the active ones. Returns its
    /// number, or `None` when the topic had no schema.
    pub async fn delete(&self, id: &str, user: &str) -> Result<Option<i64>, BrokerError> {
        for _ in 0..REGISTER_ATTEMPTS {
            let history = self.history(id).await?;
            let Some(last) = history.last() else { return Ok(None) };
            if last.deleted {
                return Ok(None);
            }
            let version = last.version + 1;
            let tombstone =
                SchemaData { schema_type: last.schema.schema_type, data: Vec::new(), properties: BTreeMap::new() };
            match self.write(id, version, &tombstone, true, user).await {
                Ok(()) => {
                    info!(schema = %id, version, %user, "schema deleted");
                    return Ok(Some(version));
                }
                Err(BrokerError::Meta(MetaError::BadVersion { .. })) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(BrokerError::Conflict { what: format!("schema of {id} is changing too often to delete; retry") })
    }

    /// Removes every version (the topic itself is deleted).
    pub async fn remove_history(&self, id: &str) -> Result<(), BrokerError> {
        for child in self.meta.list_children(&topic_path(id)).await? {
            self.meta.delete(&format!("{}/{child}", topic_path(id)), Expected::Any).await?;
        }
        Ok(())
    }

    /// What a producer gets: its schema's version (registered if new and allowed), `None`
    /// without a schema. Refused with IncompatibleSchema: an incompatible schema, a new one
    /// while auto-update is off, none where validation is enforced and the topic has one.
    pub async fn for_producer(
        &self,
        id: &str,
        schema: Option<&SchemaData>,
        policy: SchemaPolicy,
        user: &str,
    ) -> Result<Option<i64>, BrokerError> {
        let Some(schema) = schema else {
            if policy.validation_enforced && self.latest(id).await?.is_some() {
                return Err(BrokerError::IncompatibleSchema {
                    what: format!(
                        "producers cannot connect without a schema to topic {id}, which has one \
                         (schemaValidationEnforced)"
                    ),
                });
            }
            return Ok(None);
        };
        self.for_client(id, schema, policy, user).await.map(Some)
    }

    /// What a consumer gets: with a schema, it must read the topic's (or becomes the topic's
    /// first); without one (or AUTO_CONSUME), anything goes.
    pub async fn for_consumer(
        &self,
        id: &str,
        schema: Option<&SchemaData>,
        policy: SchemaPolicy,
        user: &str,
    ) -> Result<(), BrokerError> {
        let Some(schema) = schema else { return Ok(()) };
        let live = self.active(id).await?;
        if live.is_empty() {
            self.for_client(id, schema, policy, user).await?;
            return Ok(());
        }
        check_reader(&schemas(&live), schema, policy.strategy)
    }

    async fn for_client(
        &self,
        id: &str,
        schema: &SchemaData,
        policy: SchemaPolicy,
        user: &str,
    ) -> Result<i64, BrokerError> {
        if policy.allow_auto_update {
            return self.register(id, schema, policy.strategy, user).await;
        }
        self.find(id, schema).await?.ok_or_else(|| BrokerError::IncompatibleSchema {
            what: format!("schema not found on {id} and schema auto-updating is disabled (isAllowAutoUpdateSchema)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magnetar_meta::LocalStore;

    fn avro(fields: &str) -> SchemaData {
        let text = format!(r#"{{"type":"record","name":"User","fields":[{fields}]}}"#);
        SchemaData { schema_type: SchemaType::Avro, data: text.into_bytes(), properties: BTreeMap::new() }
    }

    const NAME: &str = r#"{"name":"name","type":"string"}"#;
    const AGE: &str = r#"{"name":"age","type":"int"}"#;

    fn registry() -> (SchemaRegistry, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let meta: Arc<dyn MetadataStore> = Arc::new(LocalStore::open(dir.path()).expect("store"));
        (SchemaRegistry::new(meta), dir)
    }

    const POLICY: SchemaPolicy =
        SchemaPolicy { strategy: Strategy::Full, allow_auto_update: true, validation_enforced: false };

    #[tokio::test]
    async fn the_same_schema_gets_the_same_version_and_a_new_one_the_next() {
        let (registry, _dir) = registry();
        let v0 = registry.register("t/n/a", &avro(NAME), Strategy::Full, "app").await.expect("v0");
        assert_eq!(v0, 0);
        assert_eq!(registry.register("t/n/a", &avro(NAME), Strategy::Full, "app").await.expect("again"), 0);
        let with_default = avro(&format!(r#"{NAME},{{"name":"age","type":"int","default":1}}"#));
        assert_eq!(registry.register("t/n/a", &with_default, Strategy::Full, "app").await.expect("v1"), 1);
        // An incompatible change stores nothing.
        let refused = registry.register("t/n/a", &avro(AGE), Strategy::Full, "app").await.unwrap_err();
        assert!(matches!(refused, BrokerError::IncompatibleSchema { .. }), "{refused}");
        assert_eq!(registry.history("t/n/a").await.expect("history").len(), 2);
        assert_eq!(registry.latest("t/n/a").await.expect("latest").map(|v| v.version), Some(1));
        assert_eq!(registry.version("t/n/a", 0).await.expect("v0").map(|v| v.schema), Some(avro(NAME)));
    }

    #[tokio::test]
    async fn deletion_is_a_tombstone_and_a_new_history_starts_after_it() {
        let (registry, _dir) = registry();
        registry.register("t/n/b", &avro(NAME), Strategy::Full, "app").await.expect("v0");
        assert_eq!(registry.delete("t/n/b", "admin").await.expect("delete"), Some(1));
        assert_eq!(registry.delete("t/n/b", "admin").await.expect("again"), None);
        assert!(registry.latest("t/n/b").await.expect("latest").is_none());
        // Anything may follow a deletion, and versions keep counting.
        assert_eq!(registry.register("t/n/b", &avro(AGE), Strategy::Full, "app").await.expect("v2"), 2);
        registry.remove_history("t/n/b").await.expect("remove");
        assert!(registry.history("t/n/b").await.expect("history").is_empty());
    }

    #[tokio::test]
    async fn producer_and_consumer_rules() {
        let (registry, _dir) = registry();
        assert_eq!(registry.for_producer("t/n/c", None, POLICY, "app").await.expect("no schema"), None);
        let locked = SchemaPolicy { allow_auto_update: false, ..POLICY };
        let refused = registry.for_producer("t/n/c", Some(&avro(NAME)), locked, "app").await.unwrap_err();
        assert!(refused.to_string().contains("auto-updating is disabled"), "{refused}");
        registry.register("t/n/c", &avro(NAME), Strategy::Full, "admin").await.expect("admin registers");
        assert_eq!(registry.for_producer("t/n/c", Some(&avro(NAME)), locked, "app").await.expect("found"), Some(0));
        let enforced = SchemaPolicy { validation_enforced: true, ..POLICY };
        assert!(registry.for_producer("t/n/c", None, enforced, "app").await.is_err());
        // A consumer reading fewer fields is fine; one needing a field the topic lacks is not.
        registry.for_consumer("t/n/c", Some(&avro(NAME)), POLICY, "app").await.expect("same");
        assert!(registry.for_consumer("t/n/c", Some(&avro(&format!("{NAME},{AGE}"))), POLICY, "app").await.is_err());
        // The first consumer of a topic without a schema gives it its schema.
        registry.for_consumer("t/n/d", Some(&avro(NAME)), POLICY, "app").await.expect("first");
        assert_eq!(registry.latest("t/n/d").await.expect("latest").map(|v| v.version), Some(0));
    }

    #[test]
    fn policies_resolve_topic_then_namespace_then_broker() {
        let defaults = PolicyDefaults::default();
        assert_eq!(SchemaPolicy::resolve(&defaults, None, None).strategy, Strategy::Full);
        let namespace = Policies {
            schema_compatibility_strategy: Some("BACKWARD".into()),
            is_allow_auto_update_schema: Some(false),
            schema_validation_enforced: true,
            ..Policies::default()
        };
        let policy = SchemaPolicy::resolve(&defaults, Some(&namespace), None);
        assert_eq!(
            policy,
            SchemaPolicy { strategy: Strategy::Backward, allow_auto_update: false, validation_enforced: true }
        );
        let topic = TopicPolicies { schema_compatibility_strategy: Some("FORWARD".into()), ..TopicPolicies::default() };
        assert_eq!(SchemaPolicy::resolve(&defaults, Some(&namespace), Some(&topic)).strategy, Strategy::Forward);
        let undefined = Policies { schema_compatibility_strategy: Some("UNDEFINED".into()), ..Policies::default() };
        assert_eq!(SchemaPolicy::resolve(&defaults, Some(&undefined), None).strategy, Strategy::Full);
    }
}
