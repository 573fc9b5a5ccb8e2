//! Pulsar's own config files (`broker.conf`, `standalone.conf`) as they are: Java properties
//! with Pulsar's key spellings, turned into the settings Magnetar reads from TOML.
//!
//! Each key Magnetar implements maps to its snake-case setting ([`KEYS`]) and its value is
//! parsed as that setting's type, an error naming the key if it does not parse. An empty value
//! means Pulsar's default, as in Pulsar. Keys Magnetar does not implement (Pulsar's files carry
//! hundreds: ZooKeeper, BookKeeper client tuning, functions, ...) are returned to be reported
//! once, never taken to mean something else.

use anyhow::bail;
use toml::{Table, Value};

/// How a value is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Text,
    Integer,
    Float,
    Bool,
}

/// Pulsar key, Magnetar setting (`section.key` for the `[managed_ledger]` section), type.
pub(crate) const KEYS: &[(&str, &str, Kind)] = &[
    ("metadataStoreUrl", "metadata_store_url", Kind::Text),
    ("clusterName", "cluster_name", Kind::Text),
    ("bindAddress", "bind_address", Kind::Text),
    ("brokerServicePort", "broker_service_port", Kind::Integer),
    ("webServicePort", "web_service_port", Kind::Integer),
    ("advertisedAddress", "advertised_address", Kind::Text),
    ("advertisedListeners", "advertised_listeners", Kind::Text),
    ("brokerServiceCompactionThresholdInBytes", "broker_service_compaction_threshold_in_bytes", Kind::Integer),
    (
        "brokerServiceCompactionMonitorIntervalInSeconds",
        "broker_service_compaction_monitor_interval_in_seconds",
        Kind::Integer,
    ),
    ("internalListenerName", "internal_listener_name", Kind::Text),
    ("managedLedgerDefaultEnsembleSize", "managed_ledger_default_ensemble_size", Kind::Integer),
    ("managedLedgerDefaultWriteQuorum", "managed_ledger_default_write_quorum", Kind::Integer),
    ("managedLedgerDefaultAckQuorum", "managed_ledger_default_ack_quorum", Kind::Integer),
    ("metadataStoreSessionTimeoutMillis", "metadata_store_session_timeout_millis", Kind::Integer),
    ("defaultNumberOfNamespaceBundles", "default_number_of_namespace_bundles", Kind::Integer),
    ("loadBalancerEnabled", "load_balancer_enabled", Kind::Bool),
    ("loadBalancerAutoBundleSplitEnabled", "load_balancer_auto_bundle_split_enabled", Kind::Bool),
    ("loadBalancerNamespaceBundleMaxTopics", "load_balancer_namespace_bundle_max_topics", Kind::Integer),
    ("loadBalancerNamespaceBundleMaxMsgRate", "load_balancer_namespace_bundle_max_msg_rate", Kind::Float),
    ("maxMessageSize", "max_message_size", Kind::Integer),
    ("exposeTopicLevelMetricsInPrometheus", "expose_topic_level_metrics_in_prometheus", Kind::Bool),
    ("allowAutoTopicCreation", "allow_auto_topic_creation", Kind::Bool),
    ("allowAutoTopicCreationType", "allow_auto_topic_creation_type", Kind::Text),
    ("defaultNumPartitions", "default_num_partitions", Kind::Integer),
    ("brokerDeduplicationEnabled", "broker_deduplication_enabled", Kind::Bool),
    ("ttlDurationDefaultInSeconds", "ttl_duration_default_in_seconds", Kind::Integer),
    ("backlogQuotaDefaultLimitBytes", "backlog_quota_default_limit_bytes", Kind::Integer),
    ("backlogQuotaDefaultLimitGB", "backlog_quota_default_limit_gb", Kind::Float),
    ("backlogQuotaDefaultLimitSecond", "backlog_quota_default_limit_second", Kind::Integer),
    ("backlogQuotaDefaultRetentionPolicy", "backlog_quota_default_retention_policy", Kind::Text),
    ("backlogQuotaCheckIntervalInSeconds", "backlog_quota_check_interval_in_seconds", Kind::Integer),
    ("messageExpiryCheckIntervalInMinutes", "message_expiry_check_interval_in_minutes", Kind::Integer),
    ("maxProducersPerTopic", "max_producers_per_topic", Kind::Integer),
    ("maxConsumersPerTopic", "max_consumers_per_topic", Kind::Integer),
    ("maxConsumersPerSubscription", "max_consumers_per_subscription", Kind::Integer),
    ("maxUnackedMessagesPerConsumer", "max_unacked_messages_per_consumer", Kind::Integer),
    ("maxUnackedMessagesPerSubscription", "max_unacked_messages_per_subscription", Kind::Integer),
    ("maxSubscriptionsPerTopic", "max_subscriptions_per_topic", Kind::Integer),
    ("maxTopicsPerNamespace", "max_topics_per_namespace", Kind::Integer),
    ("dispatchThrottlingRatePerTopicInMsg", "dispatch_throttling_rate_per_topic_in_msg", Kind::Integer),
    ("dispatchThrottlingRatePerTopicInByte", "dispatch_throttling_rate_per_topic_in_byte", Kind::Integer),
    ("dispatchThrottlingRatePerSubscriptionInMsg", "dispatch_throttling_rate_per_subscription_in_msg", Kind::Integer),
    ("dispatchThrottlingRatePerSubscriptionInByte", "dispatch_throttling_rate_per_subscription_in_byte", Kind::Integer),
    ("subscriptionExpirationTimeMinutes", "subscription_expiration_time_minutes", Kind::Integer),
    ("dispatcherMaxReadBatchSize", "dispatcher_max_read_batch_size", Kind::Integer),
    ("brokerDeleteInactiveTopicsEnabled", "broker_delete_inactive_topics_enabled", Kind::Bool),
    ("brokerDeleteInactiveTopicsMode", "broker_delete_inactive_topics_mode", Kind::Text),
    (
        "brokerDeleteInactiveTopicsMaxInactiveDurationSeconds",
        "broker_delete_inactive_topics_max_inactive_duration_seconds",
        Kind::Integer,
    ),
    ("brokerDeleteInactiveTopicsFrequencySeconds", "broker_delete_inactive_topics_frequency_seconds", Kind::Integer),
    ("managedLedgerMaxEntriesPerLedger", "managed_ledger.managed_ledger_max_entries_per_ledger", Kind::Integer),
    ("managedLedgerMaxSizePerLedgerMbytes", "managed_ledger.managed_ledger_max_size_per_ledger_mb", Kind::Integer),
    (
        "managedLedgerMinLedgerRolloverTimeMinutes",
        "managed_ledger.managed_ledger_min_ledger_rollover_time_minutes",
        Kind::Integer,
    ),
    (
        "managedLedgerMaxLedgerRolloverTimeMinutes",
        "managed_ledger.managed_ledger_max_ledger_rollover_time_minutes",
        Kind::Integer,
    ),
    (
        "managedLedgerCursorMaxEntriesPerLedger",
        "managed_ledger.managed_ledger_cursor_max_entries_per_ledger",
        Kind::Integer,
    ),
    ("defaultRetentionTimeInMinutes", "managed_ledger.default_retention_time_in_minutes", Kind::Integer),
    ("defaultRetentionSizeInMB", "managed_ledger.default_retention_size_in_mb", Kind::Integer),
    ("retentionCheckIntervalInSeconds", "managed_ledger.retention_check_interval_in_seconds", Kind::Integer),
    ("managedLedgerCacheSizeMB", "managed_ledger.managed_ledger_cache_size_mb", Kind::Integer),
    (
        "bookkeeperClientSpeculativeReadTimeoutInMillis",
        "managed_ledger.bookkeeper_client_speculative_read_timeout_in_millis",
        Kind::Integer,
    ),
    ("managedLedgerCacheEvictionWatermark", "managed_ledger.managed_ledger_cache_eviction_watermark", Kind::Float),
    (
        "managedLedgerCacheEvictionTimeThresholdMillis",
        "managed_ledger.managed_ledger_cache_eviction_time_threshold_millis",
        Kind::Integer,
    ),
    ("brokerServicePortTls", "broker_service_port_tls", Kind::Integer),
    ("webServicePortTls", "web_service_port_tls", Kind::Integer),
    ("tlsCertificateFilePath", "tls_certificate_file_path", Kind::Text),
    ("tlsKeyFilePath", "tls_key_file_path", Kind::Text),
    ("tlsTrustCertsFilePath", "tls_trust_certs_file_path", Kind::Text),
    ("tlsAllowInsecureConnection", "tls_allow_insecure_connection", Kind::Bool),
    ("tlsRequireTrustedClientCertOnConnect", "tls_require_trusted_client_cert_on_connect", Kind::Bool),
    ("tlsProtocols", "tls_protocols", Kind::Text),
    ("tlsCiphers", "tls_ciphers", Kind::Text),
    ("tlsCertRefreshCheckDurationSec", "tls_cert_refresh_check_duration_sec", Kind::Integer),
    ("authenticationEnabled", "authentication_enabled", Kind::Bool),
    ("authenticationProviders", "authentication_providers", Kind::Text),
    ("anonymousUserRole", "anonymous_user_role", Kind::Text),
    ("tokenSecretKey", "token_secret_key", Kind::Text),
    ("tokenPublicKey", "token_public_key", Kind::Text),
    ("tokenAuthClaim", "token_auth_claim", Kind::Text),
    ("tokenAudience", "token_audience", Kind::Text),
    ("tokenAudienceClaim", "token_audience_claim", Kind::Text),
    ("tokenAllowedClockSkewSeconds", "token_allowed_clock_skew_seconds", Kind::Integer),
    ("tokenPublicAlg", "token_public_alg", Kind::Text),
    ("basicAuthConf", "basic_auth_conf", Kind::Text),
    ("authenticationRefreshCheckSeconds", "authentication_refresh_check_seconds", Kind::Integer),
    ("authorizationEnabled", "authorization_enabled", Kind::Bool),
    ("superUserRoles", "super_user_roles", Kind::Text),
    ("schemaCompatibilityStrategy", "schema_compatibility_strategy", Kind::Text),
    ("isAllowAutoUpdateSchemaEnabled", "is_allow_auto_update_schema_enabled", Kind::Bool),
    ("isSchemaValidationEnforced", "is_schema_validation_enforced", Kind::Bool),
    ("bookkeeperClientAuthenticationPlugin", "bookkeeper_client_authentication_plugin", Kind::Text),
    ("bookkeeperClientAuthenticationParameters", "bookkeeper_client_authentication_parameters", Kind::Text),
    ("bookkeeperTLSTrustCertsFilePath", "bookkeeper_tls_trust_certs_file_path", Kind::Text),
];

/// Ports Pulsar switches off with an empty value, and the Magnetar setting that says so.
const PORTS_OFF_WHEN_EMPTY: &[(&str, &str)] =
    &[("brokerServicePort", "broker_service_port_enabled"), ("webServicePort", "web_service_port_enabled")];

/// The key/value pairs of a Java properties text: `key=value`, `key: value` or `key value`;
/// `#` and `!` comment lines; a trailing `\` continues a value on the next line.
fn properties(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((number, line)) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
            continue;
        }
        let mut logical = trimmed.to_owned();
        while logical.ends_with('\\') {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(next.trim_start()),
                None => break,
            }
        }
        let split = logical.find(['=', ':', ' ', '\t']).unwrap_or(logical.len());
        let key = logical[..split].trim().to_owned();
        let rest = logical[split..].trim_start();
        let value = rest.strip_prefix(['=', ':']).unwrap_or(rest).trim().to_owned();
        out.push((number + 1, key, value));
    }
    out
}

fn typed(key: &str, line: usize, value: &str, kind: Kind) -> anyhow::Result<Value> {
    let bad = |what: &str| anyhow::anyhow!("line {line}: {key}={value}: {what}");
    Ok(match kind {
        Kind::Text => Value::String(value.to_owned()),
        Kind::Integer => Value::Integer(value.parse().map_err(|_| bad("not an integer"))?),
        Kind::Float => Value::Float(value.parse().map_err(|_| bad("not a number"))?),
        Kind::Bool => match value {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => return Err(bad("must be true or false")),
        },
    })
}

/// The settings table of a Pulsar properties file, and the keys Magnetar does not implement.
pub fn to_settings(text: &str) -> anyhow::Result<(Table, Vec<String>)> {
    let mut table = Table::new();
    let mut ignored = Vec::new();
    for (line, key, value) in properties(text) {
        let Some((_, setting, kind)) = KEYS.iter().find(|(pulsar, _, _)| *pulsar == key) else {
            ignored.push(key);
            continue;
        };
        if value.is_empty() {
            if let Some((_, enabled)) = PORTS_OFF_WHEN_EMPTY.iter().find(|(pulsar, _)| *pulsar == key) {
                table.insert((*enabled).to_owned(), Value::Boolean(false));
            }
            continue; // Pulsar's default
        }
        let value = typed(&key, line, &value, *kind)?;
        match setting.split_once('.') {
            Some((section, name)) => {
                let entry = table.entry(section.to_owned()).or_insert_with(|| Value::Table(Table::new()));
                let Value::Table(section) = entry else { bail!("{section} is not a section") };
                section.insert(name.to_owned(), value);
            }
            None => {
                table.insert((*setting).to_owned(), value);
            }
        }
    }
    ignored.sort();
    ignored.dedup();
    Ok((table, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::BrokerSettings;

    #[test]
    fn a_pulsar_conf_sets_what_magnetar_implements_and_names_the_rest() {
        let text = "# Pulsar standalone.conf excerpt\n\
                    clusterName=standalone\n\
                    brokerServicePort=6650\n\
                    webServicePort: 8080\n\
                    advertisedAddress=\n\
                    zookeeperServers=localhost:2181\n\
                    managedLedgerDefaultEnsembleSize=1\n\
                    backlogQuotaDefaultLimitGB=0.5\n\
                    defaultRetentionTimeInMinutes=-1\n\
                    allowAutoTopicCreation=false\n\
                    bookkeeperClientTimeoutInSeconds=30\n\
                    brokerDeleteInactiveTopicsMode=delete_when_no_subscriptions\n";
        let (table, ignored) = to_settings(text).expect("parses");
        assert_eq!(ignored, ["bookkeeperClientTimeoutInSeconds", "zookeeperServers"]);
        let settings: BrokerSettings = table.try_into().expect("settings");
        assert_eq!(settings.cluster_name.as_deref(), Some("standalone"));
        assert_eq!(settings.web_service_port, Some(8080));
        assert_eq!(settings.advertised_address, None, "an empty value keeps the default");
        assert_eq!(settings.allow_auto_topic_creation, Some(false));
        let defaults = settings.policy_defaults().expect("valid");
        assert_eq!(defaults.backlog_quota_limit_bytes, 512 * 1024 * 1024);
        assert!(!defaults.allow_auto_topic_creation);
        assert_eq!(settings.managed_ledger_config().expect("valid").retention.time, None);
    }

    #[test]
    fn a_malformed_value_is_refused_naming_the_key() {
        let error = to_settings("brokerServicePort=sixty\n").expect_err("not a number").to_string();
        assert!(error.contains("brokerServicePort") && error.contains("line 1"), "{error}");
        let error = to_settings("\n\nallowAutoTopicCreation=yes\n").expect_err("not a bool").to_string();
        assert!(error.contains("allowAutoTopicCreation") && error.contains("line 3"), "{error}");
    }
}
