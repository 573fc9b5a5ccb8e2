//! The JSON shapes of Pulsar's admin API for clusters, tenants and namespace and topic
//! policies (`ClusterData`, `TenantInfo`, `Policies`, `TopicPolicies`), under Pulsar's field
//! names, as they are sent, stored and answered.
//!
//! Every field Pulsar's own admin clients send is accepted (so `pulsar-admin` and the Java
//! admin work unchanged); a field nobody defines is refused (`deny_unknown_fields`), so a typo
//! such as `message_ttl_in_second` is a 400 naming it, not a policy silently not set. Values
//! are checked by [`Policies::check`] and friends, which name the field that is out of range.
//! Fields Magnetar keeps but does not enforce are listed in ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A cluster (`/admin/v2/clusters/{cluster}`), Pulsar's `ClusterData`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_url_tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_service_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_service_url_tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_service_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_cluster_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_parameters: Option<String>,
    #[serde(default)]
    pub broker_client_tls_enabled: bool,
    #[serde(default)]
    pub tls_allow_insecure_connection: bool,
    #[serde(default)]
    pub broker_client_tls_enabled_with_key_store: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_tls_trust_store_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_tls_trust_store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_tls_trust_store_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_tls_key_store_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_tls_key_store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_tls_key_store_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_trust_certs_file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_key_file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_certificate_file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_ssl_factory_plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_client_ssl_factory_plugin_params: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_name: Option<String>,
}

impl ClusterData {
    /// URLs must have the scheme their field names.
    pub fn check(&self) -> Result<(), String> {
        let schemes: [(&str, &Option<String>, &[&str]); 4] = [
            ("serviceUrl", &self.service_url, &["http://"]),
            ("serviceUrlTls", &self.service_url_tls, &["https://"]),
            ("brokerServiceUrl", &self.broker_service_url, &["pulsar://"]),
            ("brokerServiceUrlTls", &self.broker_service_url_tls, &["pulsar+ssl://"]),
        ];
        for (field, value, allowed) in schemes {
            if let Some(url) = value.as_deref().filter(|url| !url.is_empty()) {
                if !allowed.iter().any(|scheme| url.starts_with(scheme)) {
                    return Err(format!("{field}: {url:?} must start with {}", allowed.join(" or ")));
                }
            }
        }
        Ok(())
    }
}

/// A tenant (`/admin/v2/tenants/{tenant}`), Pulsar's `TenantInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantInfo {
    #[serde(default)]
    pub admin_roles: BTreeSet<String>,
    #[serde(default)]
    pub allowed_clusters: BTreeSet<String>,
}

/// Who may do what in a namespace: its roles' actions, each topic's, and the roles each
/// subscription is reserved to (enforced by [`crate::security::authz`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicies {
    #[serde(default)]
    pub namespace_auth: BTreeMap<String, BTreeSet<String>>,
    #[serde(default)]
    pub destination_auth: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    #[serde(default)]
    pub subscription_auth_roles: BTreeMap<String, BTreeSet<String>>,
}

/// The actions a permission grant may name (Pulsar's `AuthAction`).
pub const ACTIONS: &[&str] = &["produce", "consume", "functions", "sources", "sinks", "packages"];

impl AuthPolicies {
    /// Every action granted is one Pulsar knows; the error names where.
    pub fn check(&self) -> Result<(), String> {
        let known = |actions: &BTreeSet<String>, at: &str| match actions
            .iter()
            .find(|action| !ACTIONS.contains(&action.as_str()))
        {
            Some(action) => Err(format!("{at}: unknown action {action:?} (known: {})", ACTIONS.join(", "))),
            None => Ok(()),
        };
        for (role, actions) in &self.namespace_auth {
            known(actions, &format!("namespace_auth.{role}"))?;
        }
        for (topic, roles) in &self.destination_auth {
            for (role, actions) in roles {
                known(actions, &format!("destination_auth.{topic}.{role}"))?;
            }
        }
        Ok(())
    }
}

/// A namespace's bundles as created: a count, or explicit boundaries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundlesData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundaries: Option<Vec<String>>,
    #[serde(default)]
    pub num_bundles: i32,
}

/// What a backlog quota limits: bytes of backlog, or the age of its oldest message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BacklogQuotaType {
    DestinationStorage,
    MessageAge,
}

/// What happens once a backlog quota is exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionPolicy {
    /// New sends wait until the backlog shrinks (up to the client's send timeout).
    ProducerRequestHold,
    /// New producers and sends are refused with ProducerBlockedQuotaExceededException.
    ProducerException,
    /// The slowest subscriptions lose their oldest messages until the backlog fits.
    ConsumerBacklogEviction,
}

/// Pulsar's `BacklogQuota`: `limitSize` bytes (`limit` is its old name) or `limitTime`
/// seconds, and the policy applied beyond it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BacklogQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_time: Option<i64>,
    pub policy: RetentionPolicy,
}

impl BacklogQuota {
    /// The size limit in bytes (`limitSize`, else the deprecated `limit`); none when unset
    /// or negative.
    pub fn size_limit(&self) -> Option<u64> {
        self.limit_size.or(self.limit).and_then(|bytes| u64::try_from(bytes).ok())
    }

    /// The time limit in seconds; none when unset or negative.
    pub fn time_limit(&self) -> Option<u64> {
        self.limit_time.and_then(|seconds| u64::try_from(seconds).ok())
    }
}

/// Pulsar's `DispatchRateImpl`: messages and bytes per `ratePeriodInSecond` (-1 or 0: none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DispatchRate {
    #[serde(default = "minus_one_i32")]
    pub dispatch_throttling_rate_in_msg: i32,
    #[serde(default = "minus_one_i64")]
    pub dispatch_throttling_rate_in_byte: i64,
    #[serde(default)]
    pub relative_to_publish_rate: bool,
    #[serde(default = "one_i32")]
    pub rate_period_in_second: i32,
}

/// Pulsar's `PublishRate`: messages and bytes per second (-1 or 0: none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishRate {
    #[serde(default = "minus_one_i32")]
    pub publish_throttling_rate_in_msg: i32,
    #[serde(default = "minus_one_i64")]
    pub publish_throttling_rate_in_byte: i64,
}

/// Pulsar's `SubscribeRate` (kept, not enforced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscribeRate {
    #[serde(default = "minus_one_i32")]
    pub subscribe_throttling_rate_per_consumer: i32,
    #[serde(default = "thirty_i32")]
    pub rate_period_in_second: i32,
}

/// Pulsar's `PersistencePolicies`: the replication of the namespace's new ledgers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistencePolicies {
    pub bookkeeper_ensemble: i32,
    pub bookkeeper_write_quorum: i32,
    pub bookkeeper_ack_quorum: i32,
    #[serde(default)]
    pub managed_ledger_max_mark_delete_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_storage_class_name: Option<String>,
}

/// Pulsar's `AutoTopicCreationOverride`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoTopicCreationOverride {
    pub allow_auto_topic_creation: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_num_partitions: Option<i32>,
}

/// Pulsar's `AutoSubscriptionCreationOverride`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoSubscriptionCreationOverride {
    pub allow_auto_subscription_creation: bool,
}

/// Pulsar's `RetentionPolicies`: how long and how much acknowledged data is kept (-1:
/// without limit, 0: none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionPolicies {
    #[serde(default)]
    pub retention_time_in_minutes: i32,
    #[serde(default, rename = "retentionSizeInMB")]
    pub retention_size_in_mb: i64,
}

/// When an inactive topic is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InactiveTopicDeleteMode {
    DeleteWhenNoSubscriptions,
    DeleteWhenSubscriptionsCaughtUp,
}

/// Pulsar's `InactiveTopicPolicies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InactiveTopicPolicies {
    pub inactive_topic_delete_mode: InactiveTopicDeleteMode,
    pub max_inactive_duration_seconds: i32,
    pub delete_while_inactive: bool,
}

/// A namespace's policies (`/admin/v2/namespaces/{tenant}/{namespace}`), Pulsar's `Policies`:
/// unset fields (`None`, empty maps) fall back to the broker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    #[serde(default)]
    pub auth_policies: AuthPolicies,
    #[serde(default)]
    pub replication_clusters: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundles: Option<BundlesData>,
    #[serde(default)]
    pub backlog_quota_map: BTreeMap<BacklogQuotaType, BacklogQuota>,
    #[serde(default, rename = "clusterDispatchRate")]
    pub cluster_dispatch_rate: BTreeMap<String, DispatchRate>,
    #[serde(default, rename = "topicDispatchRate")]
    pub topic_dispatch_rate: BTreeMap<String, DispatchRate>,
    #[serde(default, rename = "subscriptionDispatchRate")]
    pub subscription_dispatch_rate: BTreeMap<String, DispatchRate>,
    #[serde(default, rename = "replicatorDispatchRate")]
    pub replicator_dispatch_rate: BTreeMap<String, DispatchRate>,
    #[serde(default, rename = "clusterSubscribeRate")]
    pub cluster_subscribe_rate: BTreeMap<String, SubscribeRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<PersistencePolicies>,
    #[serde(default, rename = "deduplicationEnabled", skip_serializing_if = "Option::is_none")]
    pub deduplication_enabled: Option<bool>,
    #[serde(default, rename = "autoTopicCreationOverride", skip_serializing_if = "Option::is_none")]
    pub auto_topic_creation_override: Option<AutoTopicCreationOverride>,
    #[serde(default, rename = "autoSubscriptionCreationOverride", skip_serializing_if = "Option::is_none")]
    pub auto_subscription_creation_override: Option<AutoSubscriptionCreationOverride>,
    #[serde(default, rename = "publishMaxMessageRate")]
    pub publish_max_message_rate: BTreeMap<String, PublishRate>,
    #[serde(default)]
    pub latency_stats_sample_rate: BTreeMap<String, i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ttl_in_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_expiration_time_minutes: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policies: Option<RetentionPolicies>,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub encryption_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed_delivery_policies: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_topic_policies: Option<InactiveTopicPolicies>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_auth_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_producers_per_topic: Option<i32>,
    /// Bytes not yet compacted beyond which the topic is compacted (0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consumers_per_topic: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consumers_per_subscription: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unacked_messages_per_consumer: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unacked_messages_per_subscription: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscriptions_per_topic: Option<i32>,
    #[serde(default = "minus_one_i64")]
    pub offload_threshold: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_deletion_lag_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_topics_per_namespace: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_auto_update_compatibility_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_compatibility_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_allow_auto_update_schema: Option<bool>,
    #[serde(default)]
    pub schema_validation_enforced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_policies: Option<Value>,
    #[serde(default, rename = "deduplicationSnapshotIntervalSeconds", skip_serializing_if = "Option::is_none")]
    pub deduplication_snapshot_interval_seconds: Option<i32>,
    #[serde(default)]
    pub subscription_types_enabled: BTreeSet<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group_name: Option<String>,
    #[serde(default, rename = "entryFilters", skip_serializing_if = "Option::is_none")]
    pub entry_filters: Option<Value>,
    #[serde(default)]
    pub migrated: bool,
    #[serde(default, rename = "dispatcherPauseOnAckStatePersistentEnabled", skip_serializing_if = "Option::is_none")]
    pub dispatcher_pause_on_ack_state_persistent_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_clusters: Option<BTreeSet<String>>,
}

/// A topic's own policies (`/admin/v2/persistent/{tenant}/{ns}/{topic}/<policy>`), each
/// overriding its namespace's; Pulsar's `TopicPolicies` names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicPolicies {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub back_log_quota_map: BTreeMap<BacklogQuotaType, BacklogQuota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policies: Option<RetentionPolicies>,
    #[serde(default, rename = "messageTTLInSeconds", skip_serializing_if = "Option::is_none")]
    pub message_ttl_in_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_producer_per_topic: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consumer_per_topic: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consumers_per_subscription: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unacked_messages_on_consumer: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unacked_messages_on_subscription: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<PublishRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_rate: Option<DispatchRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_dispatch_rate: Option<DispatchRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_topic_policies: Option<InactiveTopicPolicies>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscriptions_per_topic: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_compatibility_strategy: Option<String>,
}

fn minus_one_i32() -> i32 {
    -1
}

fn minus_one_i64() -> i64 {
    -1
}

fn one_i32() -> i32 {
    1
}

fn thirty_i32() -> i32 {
    30
}

/// A limit that must be >= 0 when set (0 means "none allowed" or "unlimited" as the field
/// says); names the field otherwise.
fn non_negative(field: &str, value: Option<i64>) -> Result<(), String> {
    match value {
        Some(value) if value < 0 => Err(format!("{field}: {value} must not be negative")),
        _ => Ok(()),
    }
}

/// -1 (unlimited) or >= 0.
fn minus_one_or_more(field: &str, value: i64) -> Result<(), String> {
    if value < -1 {
        return Err(format!("{field}: {value} must be -1 (no limit) or more"));
    }
    Ok(())
}

impl BacklogQuota {
    pub fn check(&self) -> Result<(), String> {
        if let Some(limit) = self.limit_size.or(self.limit) {
            minus_one_or_more("limitSize", limit)?;
        }
        if let Some(limit) = self.limit_time {
            minus_one_or_more("limitTime", limit)?;
        }
        if self.size_limit().is_none() && self.time_limit().is_none() {
            return Err("limitSize/limitTime: one of them must be set".to_owned());
        }
        Ok(())
    }
}

impl RetentionPolicies {
    pub fn check(&self) -> Result<(), String> {
        minus_one_or_more("retentionTimeInMinutes", i64::from(self.retention_time_in_minutes))?;
        minus_one_or_more("retentionSizeInMB", self.retention_size_in_mb)
    }
}

impl PublishRate {
    pub fn check(&self) -> Result<(), String> {
        minus_one_or_more("publishThrottlingRateInMsg", i64::from(self.publish_throttling_rate_in_msg))?;
        minus_one_or_more("publishThrottlingRateInByte", self.publish_throttling_rate_in_byte)
    }
}

impl DispatchRate {
    pub fn check(&self) -> Result<(), String> {
        minus_one_or_more("dispatchThrottlingRateInMsg", i64::from(self.dispatch_throttling_rate_in_msg))?;
        minus_one_or_more("dispatchThrottlingRateInByte", self.dispatch_throttling_rate_in_byte)?;
        if self.rate_period_in_second < 1 {
            return Err(format!("ratePeriodInSecond: {} must be at least 1", self.rate_period_in_second));
        }
        Ok(())
    }
}

impl InactiveTopicPolicies {
    pub fn check(&self) -> Result<(), String> {
        if self.delete_while_inactive && self.max_inactive_duration_seconds < 1 {
            return Err(format!(
                "maxInactiveDurationSeconds: {} must be at least 1 when deleteWhileInactive is on",
                self.max_inactive_duration_seconds
            ));
        }
        Ok(())
    }
}

impl AutoTopicCreationOverride {
    pub fn check(&self) -> Result<(), String> {
        if !self.allow_auto_topic_creation {
            return Ok(());
        }
        match self.topic_type.as_deref() {
            None | Some("non-partitioned") => Ok(()),
            Some("partitioned") => match self.default_num_partitions {
                Some(count) if count >= 1 => Ok(()),
                other => Err(format!("defaultNumPartitions: {other:?} must be at least 1 for partitioned topics")),
            },
            Some(other) => Err(format!("topicType: {other:?} must be \"partitioned\" or \"non-partitioned\"")),
        }
    }
}

impl Policies {
    /// Checks every value that has a range; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        self.auth_policies.check().map_err(|reason| format!("auth_policies.{reason}"))?;
        if let Some(mode) = &self.subscription_auth_mode {
            if !matches!(mode.as_str(), "None" | "Prefix") {
                return Err(format!("subscription_auth_mode: {mode:?} must be None or Prefix"));
            }
        }
        for (kind, quota) in &self.backlog_quota_map {
            quota.check().map_err(|reason| format!("backlog_quota_map.{kind:?}: {reason}"))?;
        }
        for (cluster, rate) in self.topic_dispatch_rate.iter().chain(&self.subscription_dispatch_rate) {
            rate.check().map_err(|reason| format!("dispatch rate of {cluster}: {reason}"))?;
        }
        for (cluster, rate) in &self.publish_max_message_rate {
            rate.check().map_err(|reason| format!("publishMaxMessageRate.{cluster}: {reason}"))?;
        }
        if let Some(retention) = &self.retention_policies {
            retention.check().map_err(|reason| format!("retention_policies: {reason}"))?;
        }
        if let Some(inactive) = &self.inactive_topic_policies {
            inactive.check().map_err(|reason| format!("inactive_topic_policies: {reason}"))?;
        }
        if let Some(auto) = &self.auto_topic_creation_override {
            auto.check().map_err(|reason| format!("autoTopicCreationOverride: {reason}"))?;
        }
        if let Some(bundles) = &self.bundles {
            if bundles.boundaries.is_none()
                && !(1..=crate::cluster::bundles::MAX_BUNDLES as i32).contains(&bundles.num_bundles)
            {
                return Err(format!(
                    "bundles.numBundles: {} must be between 1 and {}",
                    bundles.num_bundles,
                    crate::cluster::bundles::MAX_BUNDLES
                ));
            }
        }
        if let Some(persistence) = &self.persistence {
            let (e, qw, qa) = (
                persistence.bookkeeper_ensemble,
                persistence.bookkeeper_write_quorum,
                persistence.bookkeeper_ack_quorum,
            );
            if qa < 1 || qw < qa || e < qw {
                return Err(format!(
                    "persistence: bookkeeperEnsemble/WriteQuorum/AckQuorum {e}/{qw}/{qa} must satisfy E >= Qw >= Qa >= 1"
                ));
            }
        }
        for (field, value) in [
            ("message_ttl_in_seconds", self.message_ttl_in_seconds),
            ("subscription_expiration_time_minutes", self.subscription_expiration_time_minutes),
            ("max_producers_per_topic", self.max_producers_per_topic),
            ("max_consumers_per_topic", self.max_consumers_per_topic),
            ("max_consumers_per_subscription", self.max_consumers_per_subscription),
            ("max_unacked_messages_per_consumer", self.max_unacked_messages_per_consumer),
            ("max_unacked_messages_per_subscription", self.max_unacked_messages_per_subscription),
            ("max_subscriptions_per_topic", self.max_subscriptions_per_topic),
            ("max_topics_per_namespace", self.max_topics_per_namespace),
        ] {
            non_negative(field, value.map(i64::from))?;
        }
        non_negative("compaction_threshold", self.compaction_threshold)?;
        Ok(())
    }
}

impl TopicPolicies {
    /// Checks every value that has a range; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        for (kind, quota) in &self.back_log_quota_map {
            quota.check().map_err(|reason| format!("backlogQuota {kind:?}: {reason}"))?;
        }
        if let Some(retention) = &self.retention_policies {
            retention.check()?;
        }
        if let Some(rate) = &self.publish_rate {
            rate.check()?;
        }
        for rate in self.dispatch_rate.iter().chain(&self.subscription_dispatch_rate) {
            rate.check()?;
        }
        if let Some(inactive) = &self.inactive_topic_policies {
            inactive.check()?;
        }
        for (field, value) in [
            ("messageTTLInSeconds", self.message_ttl_in_seconds),
            ("maxProducerPerTopic", self.max_producer_per_topic),
            ("maxConsumerPerTopic", self.max_consumer_per_topic),
            ("maxConsumersPerSubscription", self.max_consumers_per_subscription),
            ("maxUnackedMessagesOnConsumer", self.max_unacked_messages_on_consumer),
            ("maxUnackedMessagesOnSubscription", self.max_unacked_messages_on_subscription),
            ("maxSubscriptionsPerTopic", self.max_subscriptions_per_topic),
            ("maxMessageSize", self.max_message_size),
        ] {
            non_negative(field, value.map(i64::from))?;
        }
        non_negative("compactionThreshold", self.compaction_threshold)?;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == TopicPolicies::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulsar_shaped_bodies_parse_and_typos_are_refused() {
        let policies: Policies = serde_json::from_str(
            r#"{"replication_clusters":["standalone"],"bundles":{"numBundles":8},
                "backlog_quota_map":{"destination_storage":{"limitSize":1048576,"policy":"producer_exception"}},
                "message_ttl_in_seconds":60,"retention_policies":{"retentionTimeInMinutes":-1,"retentionSizeInMB":10},
                "publishMaxMessageRate":{"standalone":{"publishThrottlingRateInMsg":100,"publishThrottlingRateInByte":-1}}}"#,
        )
        .expect("a Pulsar Policies body");
        policies.check().expect("in range");
        assert_eq!(policies.bundles.as_ref().map(|b| b.num_bundles), Some(8));
        let quota = &policies.backlog_quota_map[&BacklogQuotaType::DestinationStorage];
        assert_eq!((quota.size_limit(), quota.policy), (Some(1_048_576), RetentionPolicy::ProducerException));

        let typo = serde_json::from_str::<Policies>(r#"{"message_ttl_in_second":60}"#).expect_err("unknown field");
        assert!(typo.to_string().contains("message_ttl_in_second"), "{typo}");
        let negative: Policies = serde_json::from_str(r#"{"max_producers_per_topic":-3}"#).expect("parses");
        assert!(negative.check().expect_err("out of range").contains("max_producers_per_topic"));
        let bundles: Policies = serde_json::from_str(r#"{"bundles":{"numBundles":0}}"#).expect("parses");
        assert!(bundles.check().expect_err("no bundles").contains("numBundles"));
    }

    #[test]
    fn stored_policies_round_trip() {
        let mut policies = Policies { message_ttl_in_seconds: Some(5), ..Policies::default() };
        policies.topic_dispatch_rate.insert(
            "standalone".to_owned(),
            DispatchRate {
                dispatch_throttling_rate_in_msg: 10,
                dispatch_throttling_rate_in_byte: -1,
                relative_to_publish_rate: false,
                rate_period_in_second: 1,
            },
        );
        let text = serde_json::to_string(&policies).expect("serialize");
        assert_eq!(serde_json::from_str::<Policies>(&text).expect("parse back"), policies);
        let tenant: TenantInfo =
            serde_json::from_str(r#"{"adminRoles":["ops"],"allowedClusters":["c1"]}"#).expect("TenantInfo");
        assert!(tenant.allowed_clusters.contains("c1"));
        let cluster: ClusterData = serde_json::from_str(r#"{"serviceUrl":"pulsar://x:1"}"#).expect("parses");
        assert!(cluster.check().expect_err("wrong scheme").contains("serviceUrl"));
    }
}
