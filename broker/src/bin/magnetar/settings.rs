//! The broker's settings file (`magnetar broker|standalone --config broker.toml`): Pulsar's
//! broker.conf names in snake case, read and checked into the library's configuration;
//! errors name the file and the field. A Pulsar `.conf` file (Java properties, Pulsar's own
//! key spellings) is read too ([`super::pulsar_conf`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use magnetar_bookie::client::LedgerConfig;
use magnetar_bookie::config::BookieClientConfig;
use magnetar_bookie::security::ClientSecurity;
use magnetar_broker::cluster::broker_info::{parse_advertised_listeners, AdvertisedListeners};
use magnetar_broker::cluster::bundles;
use magnetar_broker::cluster::config::LoadManagerConfig;
use magnetar_broker::config::ClusterConfig;
use magnetar_broker::managed_ledger::config::ManagedLedgerSettings;
use magnetar_broker::managed_ledger::ManagedLedgerConfig;
use magnetar_broker::schema::Strategy;
use magnetar_broker::security::{Provider, Security, SecurityConfig, TlsSettings, TokenSettings};
use magnetar_broker::tenancy::effective::{AutoTopicType, InactiveRule, PolicyDefaults, Rate};
use magnetar_broker::tenancy::model::{InactiveTopicDeleteMode, RetentionPolicy};
use magnetar_meta::EtcdOptions;
use serde::Deserialize;

/// What a broker's TOML file (`magnetar broker|standalone --config broker.toml`) may set,
/// under Pulsar's broker.conf names in snake case; unknown sections and fields are an error.
/// Top-level keys: where the broker serves and its cluster (command-line flags override them),
/// replication of new ledgers, bundles and the load manager. The `[managed_ledger]` section:
/// ledger rollover, cursor ledgers, retention. Unset keys keep the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// `etcd://host:port[,host:port]` or `local:/path` (`magnetar broker` only).
    pub metadata_store_url: Option<String>,
    pub cluster_name: Option<String>,
    pub bind_address: Option<String>,
    /// Pulsar protocol port (6650).
    pub broker_service_port: Option<u16>,
    /// HTTP admin, lookup and metrics port (8080).
    pub web_service_port: Option<u16>,
    pub advertised_address: Option<String>,
    /// Pulsar's `advertisedListeners`: `internal:pulsar://10.0.0.1:6650,external:pulsar://...`;
    /// clients that name a listener (`listenerName`) are answered with its URLs.
    pub advertised_listeners: Option<String>,
    /// The listener lookups without a listener name answer (default: the first one).
    pub internal_listener_name: Option<String>,
    pub managed_ledger_default_ensemble_size: Option<u32>,
    pub managed_ledger_default_write_quorum: Option<u32>,
    pub managed_ledger_default_ack_quorum: Option<u32>,
    /// How long the broker's bundles stay owned after it stops answering the store (its
    /// lease): the failover time after a broker dies. Pulsar's default is 30000; ours 10000.
    pub metadata_store_session_timeout_millis: Option<u64>,
    /// Bundles of a namespace when it is first used (4).
    pub default_number_of_namespace_bundles: Option<u32>,
    /// Whether the elected leader moves and splits bundles (true).
    pub load_balancer_enabled: Option<bool>,
    /// Seconds between a broker's load reports (5).
    pub load_balancer_report_interval_seconds: Option<u64>,
    /// Seconds between the leader's shedding rounds (60; Pulsar's is in minutes).
    pub load_balancer_shedding_interval_seconds: Option<u64>,
    /// Seconds a moved bundle stays put (300).
    pub load_balancer_shedding_grace_period_seconds: Option<u64>,
    pub load_balancer_auto_bundle_split_enabled: Option<bool>,
    /// A bundle with more topics splits (1000).
    pub load_balancer_namespace_bundle_max_topics: Option<u64>,
    /// A bundle with more published entries per second splits (30000).
    pub load_balancer_namespace_bundle_max_msg_rate: Option<f64>,
    /// Largest message a producer may send (5 MiB).
    pub max_message_size: Option<usize>,
    /// Metrics per topic (true, Pulsar's default) or per namespace only.
    pub expose_topic_level_metrics_in_prometheus: Option<bool>,
    // Policy defaults, for namespaces and topics whose policies say nothing.
    pub allow_auto_topic_creation: Option<bool>,
    /// `non-partitioned` or `partitioned`.
    pub allow_auto_topic_creation_type: Option<String>,
    pub default_num_partitions: Option<u32>,
    pub broker_deduplication_enabled: Option<bool>,
    pub ttl_duration_default_in_seconds: Option<u64>,
    pub backlog_quota_default_limit_bytes: Option<i64>,
    /// Pulsar's older spelling of the size quota, in GiB (fractions allowed).
    pub backlog_quota_default_limit_gb: Option<f64>,
    pub backlog_quota_default_limit_second: Option<i64>,
    /// `producer_request_hold`, `producer_exception` or `consumer_backlog_eviction`.
    pub backlog_quota_default_retention_policy: Option<String>,
    pub backlog_quota_check_interval_in_seconds: Option<u64>,
    pub message_expiry_check_interval_in_minutes: Option<u64>,
    /// Magnetar's finer form of `message_expiry_check_interval_in_minutes` (tests, small
    /// TTLs); wins over it when both are set.
    pub message_expiry_check_interval_in_seconds: Option<u64>,
    /// Bytes not yet compacted beyond which a topic is compacted (0, the default: never).
    pub broker_service_compaction_threshold_in_bytes: Option<u64>,
    /// How often topics check that threshold [default: 60].
    pub broker_service_compaction_monitor_interval_in_seconds: Option<u64>,
    pub max_producers_per_topic: Option<u32>,
    pub max_consumers_per_topic: Option<u32>,
    pub max_consumers_per_subscription: Option<u32>,
    pub max_unacked_messages_per_consumer: Option<u32>,
    pub max_unacked_messages_per_subscription: Option<u32>,
    pub max_subscriptions_per_topic: Option<u32>,
    pub max_topics_per_namespace: Option<u32>,
    pub dispatch_throttling_rate_per_topic_in_msg: Option<u64>,
    pub dispatch_throttling_rate_per_topic_in_byte: Option<u64>,
    pub dispatch_throttling_rate_per_subscription_in_msg: Option<u64>,
    pub dispatch_throttling_rate_per_subscription_in_byte: Option<u64>,
    pub subscription_expiration_time_minutes: Option<u64>,
    /// Most entries a subscription reads at a time [default: 100].
    pub dispatcher_max_read_batch_size: Option<u32>,
    pub broker_delete_inactive_topics_enabled: Option<bool>,
    /// `delete_when_no_subscriptions` or `delete_when_subscriptions_caught_up`.
    pub broker_delete_inactive_topics_mode: Option<String>,
    pub broker_delete_inactive_topics_max_inactive_duration_seconds: Option<u64>,
    pub broker_delete_inactive_topics_frequency_seconds: Option<u64>,
    pub managed_ledger: ManagedLedgerSettings,
    /// False switches the plain `pulsar://` port off (Pulsar: an empty `brokerServicePort`).
    pub broker_service_port_enabled: Option<bool>,
    /// False switches the plain HTTP port off (Pulsar: an empty `webServicePort`).
    pub web_service_port_enabled: Option<bool>,
    /// `pulsar+ssl://` port (off unless set; Pulsar's is 6651).
    pub broker_service_port_tls: Option<u16>,
    /// HTTPS port (off unless set; Pulsar's is 8443).
    pub web_service_port_tls: Option<u16>,
    pub tls_certificate_file_path: Option<String>,
    pub tls_key_file_path: Option<String>,
    pub tls_trust_certs_file_path: Option<String>,
    pub tls_allow_insecure_connection: Option<bool>,
    pub tls_require_trusted_client_cert_on_connect: Option<bool>,
    /// `TLSv1.3`, `TLSv1.2` (a list, or comma-separated as in Pulsar's file).
    pub tls_protocols: Option<NameList>,
    pub tls_ciphers: Option<NameList>,
    /// How often the TLS files are checked for changes [default: 300].
    pub tls_cert_refresh_check_duration_sec: Option<u64>,
    pub authentication_enabled: Option<bool>,
    /// Provider class names (Pulsar's) or `token`, `tls`, `basic`.
    pub authentication_providers: Option<NameList>,
    pub anonymous_user_role: Option<String>,
    pub token_secret_key: Option<String>,
    pub token_public_key: Option<String>,
    pub token_auth_claim: Option<String>,
    pub token_audience: Option<String>,
    pub token_audience_claim: Option<String>,
    pub token_allowed_clock_skew_seconds: Option<u64>,
    pub token_public_alg: Option<String>,
    pub basic_auth_conf: Option<String>,
    /// How often connections' credentials are checked for expiry [default: 60].
    pub authentication_refresh_check_seconds: Option<u64>,
    pub authorization_enabled: Option<bool>,
    pub super_user_roles: Option<NameList>,
    /// Schema registry defaults: `FULL`, true, false.
    pub schema_compatibility_strategy: Option<String>,
    pub is_allow_auto_update_schema_enabled: Option<bool>,
    pub is_schema_validation_enforced: Option<bool>,
    // Inside the cluster (`magnetar broker`): how this broker calls its bookies.
    /// `org.apache.pulsar.client.impl.auth.AuthenticationToken` (or `token`).
    pub bookkeeper_client_authentication_plugin: Option<String>,
    /// `token:<jwt>` or `file:///path/to/token`: the token sent to bookies.
    pub bookkeeper_client_authentication_parameters: Option<String>,
    /// PEM CA that signed the bookies' certificates (TLS bookies).
    pub bookkeeper_tls_trust_certs_file_path: Option<PathBuf>,
    // How it reaches etcd: an etcd user, and TLS.
    pub metadata_store_user: Option<String>,
    pub metadata_store_password: Option<String>,
    pub metadata_store_password_file: Option<PathBuf>,
    pub metadata_store_tls_trust_certs_file_path: Option<PathBuf>,
    pub metadata_store_tls_certificate_file_path: Option<PathBuf>,
    pub metadata_store_tls_key_file_path: Option<PathBuf>,
}

/// A list of names: a TOML array, or one comma-separated string as Pulsar's files write it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum NameList {
    List(Vec<String>),
    Text(String),
}

impl NameList {
    pub fn names(&self) -> Vec<String> {
        let split = |text: &str| -> Vec<String> {
            text.split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_owned).collect()
        };
        match self {
            NameList::List(names) => names.iter().flat_map(|name| split(name)).collect(),
            NameList::Text(text) => split(text),
        }
    }
}

impl BrokerSettings {
    /// Reads and checks a settings file; errors name the file and the field.
    /// A `.conf` or `.properties` file is read as Pulsar's (Java properties, Pulsar's key
    /// spellings); anything else as TOML.
    pub fn load(path: &Path) -> anyhow::Result<BrokerSettings> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read broker config file {}", path.display()))?;
        let pulsar = matches!(path.extension().and_then(|e| e.to_str()), Some("conf" | "properties"));
        let (settings, ignored) =
            Self::parse(&text, pulsar).with_context(|| format!("broker config file {}", path.display()))?;
        if !ignored.is_empty() {
            tracing::warn!(
                file = %path.display(),
                keys = %ignored.join(", "),
                "Pulsar settings Magnetar does not implement are ignored"
            );
        }
        Ok(settings)
    }

    /// Parses and checks a settings text, TOML or (`pulsar`) a Pulsar properties file; with the
    /// keys of a Pulsar file Magnetar does not implement. Errors name the field.
    pub fn parse(text: &str, pulsar: bool) -> anyhow::Result<(BrokerSettings, Vec<String>)> {
        let (settings, ignored): (BrokerSettings, Vec<String>) = if pulsar {
            let (table, ignored) = super::pulsar_conf::to_settings(text)?;
            (table.try_into()?, ignored)
        } else {
            (toml::from_str(text)?, Vec::new())
        };
        settings.managed_ledger_config()?;
        settings.cluster_config()?;
        settings.policy_defaults()?;
        settings.security_config()?;
        settings.tls_settings()?;
        settings.bookie_security()?;
        Ok((settings, ignored))
    }

    /// The token and CA this broker calls its bookies with; errors name the key.
    pub fn bookie_security(&self) -> anyhow::Result<ClientSecurity> {
        let config = BookieClientConfig {
            authentication_plugin: self.bookkeeper_client_authentication_plugin.clone().filter(|p| !p.is_empty()),
            authentication_parameters: self
                .bookkeeper_client_authentication_parameters
                .clone()
                .filter(|params| !params.is_empty()),
            tls_trust_certs_file_path: self
                .bookkeeper_tls_trust_certs_file_path
                .clone()
                .filter(|path| !path.as_os_str().is_empty()),
        };
        ClientSecurity::from_config(&config).map_err(|error| match error {
            // The bookie's `[client]` names, as this file spells them.
            magnetar_bookie::BookieError::Security { what, reason } => {
                let renamed = [
                    ("authentication_", "bookkeeper_client_authentication_"),
                    ("tls_trust_certs_file_path", "bookkeeper_tls_trust_certs_file_path"),
                ]
                .iter()
                .find_map(|(bookie, broker)| what.strip_prefix(bookie).map(|rest| format!("{broker}{rest}")));
                anyhow::anyhow!("{}: {reason}", renamed.unwrap_or(what))
            }
            other => anyhow::anyhow!("bookkeeper client settings: {other}"),
        })
    }

    /// The etcd user and TLS files of the metadata store.
    pub fn metadata_store_options(&self) -> EtcdOptions {
        EtcdOptions {
            user: self.metadata_store_user.clone().filter(|user| !user.is_empty()),
            password: self.metadata_store_password.clone(),
            password_file: self.metadata_store_password_file.clone(),
            tls_trust_certs_file_path: self.metadata_store_tls_trust_certs_file_path.clone(),
            tls_certificate_file_path: self.metadata_store_tls_certificate_file_path.clone(),
            tls_key_file_path: self.metadata_store_tls_key_file_path.clone(),
        }
    }

    /// Authentication and authorization; errors name the key.
    pub fn security_config(&self) -> anyhow::Result<SecurityConfig> {
        let defaults = SecurityConfig::default();
        let names = |list: &Option<NameList>| list.as_ref().map(NameList::names).unwrap_or_default();
        let providers = names(&self.authentication_providers)
            .iter()
            .map(|name| Provider::parse(name))
            .collect::<Result<_, _>>()
            .map_err(|error| anyhow::anyhow!(error))?;
        let refresh_check = match self.authentication_refresh_check_seconds {
            Some(0) => anyhow::bail!("authentication_refresh_check_seconds = 0: must be positive"),
            Some(seconds) => Duration::from_secs(seconds),
            None => defaults.refresh_check,
        };
        let config = SecurityConfig {
            authentication_enabled: self.authentication_enabled.unwrap_or(false),
            providers,
            anonymous_user_role: self.anonymous_user_role.clone().filter(|role| !role.is_empty()),
            token: TokenSettings {
                secret_key: self.token_secret_key.clone(),
                public_key: self.token_public_key.clone(),
                auth_claim: self.token_auth_claim.clone(),
                audience: self.token_audience.clone(),
                audience_claim: self.token_audience_claim.clone(),
                allowed_clock_skew_seconds: self.token_allowed_clock_skew_seconds.unwrap_or(0),
                public_alg: self.token_public_alg.clone(),
            },
            basic_auth_conf: self.basic_auth_conf.clone(),
            authorization_enabled: self.authorization_enabled.unwrap_or(false),
            super_user_roles: names(&self.super_user_roles).into_iter().collect(),
            refresh_check,
        };
        // Loads the keys and files now, so a bad one is reported at start naming its key.
        Security::new(&config).map_err(|error| anyhow::anyhow!(error))?;
        Ok(config)
    }

    /// The TLS files and options, if a certificate is configured; errors name the key.
    pub fn tls_settings(&self) -> anyhow::Result<Option<TlsSettings>> {
        let (certificate, key) = match (&self.tls_certificate_file_path, &self.tls_key_file_path) {
            (Some(certificate), Some(key)) if !certificate.is_empty() && !key.is_empty() => (certificate, key),
            (None, None) => {
                if self.broker_service_port_tls.is_some() || self.web_service_port_tls.is_some() {
                    anyhow::bail!(
                        "broker_service_port_tls/web_service_port_tls need tls_certificate_file_path and tls_key_file_path"
                    );
                }
                return Ok(None);
            }
            _ => anyhow::bail!("tls_certificate_file_path and tls_key_file_path go together"),
        };
        let settings = TlsSettings {
            certificate_file: certificate.into(),
            key_file: key.into(),
            trust_certs_file: self.tls_trust_certs_file_path.clone().filter(|path| !path.is_empty()).map(Into::into),
            allow_insecure_connection: self.tls_allow_insecure_connection.unwrap_or(false),
            require_trusted_client_cert: self.tls_require_trusted_client_cert_on_connect.unwrap_or(false),
            protocols: self.tls_protocols.as_ref().map(NameList::names).unwrap_or_default(),
            ciphers: self.tls_ciphers.as_ref().map(NameList::names).unwrap_or_default(),
            refresh_check: match self.tls_cert_refresh_check_duration_sec {
                Some(0) => anyhow::bail!("tls_cert_refresh_check_duration_sec = 0: must be positive"),
                Some(seconds) => Duration::from_secs(seconds),
                None => Duration::from_secs(300),
            },
        };
        // Loads the files now, so a missing or bad one is reported at start.
        magnetar_broker::security::tls::server_config(&settings).map_err(|error| anyhow::anyhow!(error))?;
        Ok(Some(settings))
    }

    /// The policy defaults; errors name the key.
    pub fn policy_defaults(&self) -> anyhow::Result<PolicyDefaults> {
        let d = PolicyDefaults::default();
        let auto_topic_type = match self.allow_auto_topic_creation_type.as_deref() {
            None | Some("non-partitioned") => AutoTopicType::NonPartitioned,
            Some("partitioned") => match self.default_num_partitions.unwrap_or(1) {
                0 => anyhow::bail!("default_num_partitions = 0: must be at least 1"),
                count => AutoTopicType::Partitioned(count),
            },
            Some(other) => {
                anyhow::bail!(
                    "allow_auto_topic_creation_type = {other:?}: must be \"non-partitioned\" or \"partitioned\""
                )
            }
        };
        let backlog_quota_policy = match self.backlog_quota_default_retention_policy.as_deref() {
            None => d.backlog_quota_policy,
            Some(name) => serde_json::from_value::<RetentionPolicy>(serde_json::Value::String(name.to_owned()))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "backlog_quota_default_retention_policy = {name:?}: must be producer_request_hold, \
                         producer_exception or consumer_backlog_eviction"
                    )
                })?,
        };
        let backlog_quota_limit_bytes =
            match (self.backlog_quota_default_limit_bytes, self.backlog_quota_default_limit_gb) {
                (Some(bytes), _) => bytes,
                (None, Some(gb)) if gb.is_nan() => anyhow::bail!("backlog_quota_default_limit_gb is not a number"),
                (None, Some(gb)) if gb <= 0.0 => -1,
                (None, Some(gb)) => (gb * 1024.0 * 1024.0 * 1024.0) as i64,
                (None, None) => d.backlog_quota_limit_bytes,
            };
        let positive = |value: Option<u64>, name: &str, default: Duration, unit: fn(u64) -> Duration| match value {
            None => Ok(default),
            Some(0) => anyhow::bail!("{name} = 0: must be positive"),
            Some(value) => Ok(unit(value)),
        };
        let message_expiry_check_interval = match self.message_expiry_check_interval_in_seconds {
            Some(_) => positive(
                self.message_expiry_check_interval_in_seconds,
                "message_expiry_check_interval_in_seconds",
                d.message_expiry_check_interval,
                Duration::from_secs,
            )?,
            None => match self.message_expiry_check_interval_in_minutes {
                // Minutes in seconds must fit a u64 (found by fuzz_settings: the product overflowed).
                Some(minutes) if minutes.checked_mul(60).is_none() => {
                    anyhow::bail!("message_expiry_check_interval_in_minutes = {minutes}: too large")
                }
                minutes => positive(
                    minutes,
                    "message_expiry_check_interval_in_minutes",
                    d.message_expiry_check_interval,
                    |minutes| Duration::from_secs(minutes * 60),
                )?,
            },
        };
        let rate = |messages: Option<u64>, bytes: Option<u64>, default: Rate| Rate {
            messages: messages.map_or(default.messages, |m| (m > 0).then_some(m)),
            bytes: bytes.map_or(default.bytes, |b| (b > 0).then_some(b)),
            period: Duration::from_secs(1),
        };
        let delete_inactive_topics = match self.broker_delete_inactive_topics_enabled {
            Some(true) => {
                let mode = match self.broker_delete_inactive_topics_mode.as_deref() {
                    None | Some("delete_when_no_subscriptions") => InactiveTopicDeleteMode::DeleteWhenNoSubscriptions,
                    Some("delete_when_subscriptions_caught_up") => {
                        InactiveTopicDeleteMode::DeleteWhenSubscriptionsCaughtUp
                    }
                    Some(other) => anyhow::bail!(
                        "broker_delete_inactive_topics_mode = {other:?}: must be delete_when_no_subscriptions or \
                         delete_when_subscriptions_caught_up"
                    ),
                };
                let after = self.broker_delete_inactive_topics_max_inactive_duration_seconds.unwrap_or(60);
                Some(InactiveRule { mode, after: Duration::from_secs(after) })
            }
            Some(false) => None,
            None => d.delete_inactive_topics,
        };
        let schema_compatibility_strategy = match self.schema_compatibility_strategy.as_deref() {
            None => d.schema_compatibility_strategy,
            Some(name) => Strategy::parse_policy(name)
                .map_err(|error| anyhow::anyhow!("schema_compatibility_strategy: {error}"))?
                .unwrap_or(d.schema_compatibility_strategy),
        };
        Ok(PolicyDefaults {
            schema_compatibility_strategy,
            allow_auto_update_schema: self.is_allow_auto_update_schema_enabled.unwrap_or(d.allow_auto_update_schema),
            schema_validation_enforced: self.is_schema_validation_enforced.unwrap_or(d.schema_validation_enforced),
            allow_auto_topic_creation: self.allow_auto_topic_creation.unwrap_or(d.allow_auto_topic_creation),
            auto_topic_type,
            deduplication_enabled: self.broker_deduplication_enabled.unwrap_or(d.deduplication_enabled),
            message_ttl_seconds: self.ttl_duration_default_in_seconds.unwrap_or(d.message_ttl_seconds),
            backlog_quota_limit_bytes,
            backlog_quota_limit_seconds: self
                .backlog_quota_default_limit_second
                .unwrap_or(d.backlog_quota_limit_seconds),
            backlog_quota_policy,
            max_producers_per_topic: self.max_producers_per_topic.unwrap_or(d.max_producers_per_topic),
            max_consumers_per_topic: self.max_consumers_per_topic.unwrap_or(d.max_consumers_per_topic),
            max_consumers_per_subscription: self
                .max_consumers_per_subscription
                .unwrap_or(d.max_consumers_per_subscription),
            max_unacked_messages_per_consumer: self
                .max_unacked_messages_per_consumer
                .unwrap_or(d.max_unacked_messages_per_consumer),
            max_unacked_messages_per_subscription: self
                .max_unacked_messages_per_subscription
                .unwrap_or(d.max_unacked_messages_per_subscription),
            max_subscriptions_per_topic: self.max_subscriptions_per_topic.unwrap_or(d.max_subscriptions_per_topic),
            max_topics_per_namespace: self.max_topics_per_namespace.unwrap_or(d.max_topics_per_namespace),
            dispatch_rate_per_topic: rate(
                self.dispatch_throttling_rate_per_topic_in_msg,
                self.dispatch_throttling_rate_per_topic_in_byte,
                d.dispatch_rate_per_topic,
            ),
            dispatch_rate_per_subscription: rate(
                self.dispatch_throttling_rate_per_subscription_in_msg,
                self.dispatch_throttling_rate_per_subscription_in_byte,
                d.dispatch_rate_per_subscription,
            ),
            subscription_expiration_minutes: self
                .subscription_expiration_time_minutes
                .unwrap_or(d.subscription_expiration_minutes),
            dispatcher_max_read_batch_size: match self.dispatcher_max_read_batch_size {
                Some(0) => anyhow::bail!("invalid setting dispatcher_max_read_batch_size = 0: must be at least 1"),
                Some(size) => size,
                None => d.dispatcher_max_read_batch_size,
            },
            backlog_quota_check_interval: positive(
                self.backlog_quota_check_interval_in_seconds,
                "backlog_quota_check_interval_in_seconds",
                d.backlog_quota_check_interval,
                Duration::from_secs,
            )?,
            message_expiry_check_interval,
            compaction_threshold_bytes: self
                .broker_service_compaction_threshold_in_bytes
                .unwrap_or(d.compaction_threshold_bytes),
            compaction_check_interval: positive(
                self.broker_service_compaction_monitor_interval_in_seconds,
                "broker_service_compaction_monitor_interval_in_seconds",
                d.compaction_check_interval,
                Duration::from_secs,
            )?,
            inactive_topic_check_interval: positive(
                self.broker_delete_inactive_topics_frequency_seconds,
                "broker_delete_inactive_topics_frequency_seconds",
                d.inactive_topic_check_interval,
                Duration::from_secs,
            )?,
            delete_inactive_topics,
        })
    }

    /// The largest message size; errors name the key.
    /// `advertised_listeners`, checked.
    pub fn advertised_listeners(&self) -> anyhow::Result<AdvertisedListeners> {
        let text = self.advertised_listeners.as_deref().unwrap_or_default();
        parse_advertised_listeners(text).map_err(|error| anyhow::anyhow!("advertised_listeners: {error}"))
    }

    /// `internal_listener_name`, or the first advertised listener written.
    pub fn internal_listener_name(&self) -> Option<String> {
        let first = || {
            let text = self.advertised_listeners.as_deref()?;
            text.split(',').find_map(|item| item.split_once(':').map(|(name, _)| name.trim().to_owned()))
        };
        self.internal_listener_name.clone().filter(|name| !name.is_empty()).or_else(first)
    }

    pub fn max_message_size(&self) -> anyhow::Result<usize> {
        match self.max_message_size {
            None => Ok(magnetar_proto::DEFAULT_MAX_MESSAGE_SIZE),
            // A message and its metadata must fit in one bookie entry.
            Some(size)
                if !(1024..=magnetar_bookie::MAX_ENTRY_SIZE - magnetar_proto::FRAME_OVERHEAD).contains(&size) =>
            {
                anyhow::bail!(
                    "max_message_size = {size}: must be between 1024 and {}",
                    magnetar_bookie::MAX_ENTRY_SIZE - magnetar_proto::FRAME_OVERHEAD
                )
            }
            Some(size) => Ok(size),
        }
    }

    /// The checked managed ledger configuration.
    pub fn managed_ledger_config(&self) -> anyhow::Result<ManagedLedgerConfig> {
        ManagedLedgerConfig::from_settings(&self.managed_ledger).context("[managed_ledger]")
    }

    /// The ledger replication of the file over `defaults`.
    pub fn ledger_config(&self, defaults: LedgerConfig) -> LedgerConfig {
        LedgerConfig {
            ensemble_size: self.managed_ledger_default_ensemble_size.unwrap_or(defaults.ensemble_size),
            write_quorum: self.managed_ledger_default_write_quorum.unwrap_or(defaults.write_quorum),
            ack_quorum: self.managed_ledger_default_ack_quorum.unwrap_or(defaults.ack_quorum),
        }
    }

    /// The metadata session timeout, bundles and load manager settings; errors name the key.
    pub fn cluster_config(&self) -> anyhow::Result<ClusterConfig> {
        let defaults = ClusterConfig::default();
        let positive = |value: Option<u64>, name: &str, default: Duration, unit: fn(u64) -> Duration| match value {
            None => Ok(default),
            Some(0) => anyhow::bail!("{name} = 0: must be positive"),
            Some(value) => Ok(unit(value)),
        };
        let session_timeout = positive(
            self.metadata_store_session_timeout_millis,
            "metadata_store_session_timeout_millis",
            defaults.session_timeout,
            Duration::from_millis,
        )?;
        if session_timeout < Duration::from_secs(2) {
            anyhow::bail!(
                "metadata_store_session_timeout_millis = {}: must be at least 2000 (etcd's shortest lease)",
                session_timeout.as_millis()
            );
        }
        let default_bundles = match self.default_number_of_namespace_bundles {
            None => defaults.default_bundles,
            Some(count) if count == 0 || count as usize > bundles::MAX_BUNDLES => anyhow::bail!(
                "default_number_of_namespace_bundles = {count}: must be between 1 and {}",
                bundles::MAX_BUNDLES
            ),
            Some(count) => count,
        };
        let lm = defaults.load_manager;
        let load_manager = LoadManagerConfig {
            enabled: self.load_balancer_enabled.unwrap_or(lm.enabled),
            report_interval: positive(
                self.load_balancer_report_interval_seconds,
                "load_balancer_report_interval_seconds",
                lm.report_interval,
                Duration::from_secs,
            )?,
            shedding_interval: positive(
                self.load_balancer_shedding_interval_seconds,
                "load_balancer_shedding_interval_seconds",
                lm.shedding_interval,
                Duration::from_secs,
            )?,
            shedding_grace_period: self
                .load_balancer_shedding_grace_period_seconds
                .map_or(lm.shedding_grace_period, Duration::from_secs),
            auto_bundle_split: self.load_balancer_auto_bundle_split_enabled.unwrap_or(lm.auto_bundle_split),
            bundle_max_topics: self.load_balancer_namespace_bundle_max_topics.unwrap_or(lm.bundle_max_topics),
            bundle_max_msg_rate: match self.load_balancer_namespace_bundle_max_msg_rate {
                Some(rate) if rate.is_nan() || rate <= 0.0 => {
                    anyhow::bail!("load_balancer_namespace_bundle_max_msg_rate = {rate}: must be positive")
                }
                Some(rate) => rate,
                None => lm.bundle_max_msg_rate,
            },
        };
        Ok(ClusterConfig { session_timeout, default_bundles, load_manager })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn load(text: &str) -> anyhow::Result<BrokerSettings> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, text).expect("write");
        BrokerSettings::load(&path)
    }

    #[test]
    fn managed_ledger_section_sets_rollover_and_retention() {
        let settings = load(
            "[managed_ledger]\nmanaged_ledger_max_entries_per_ledger = 1000\ndefault_retention_time_in_minutes = -1\n",
        )
        .expect("valid file");
        let config = settings.managed_ledger_config().expect("valid settings");
        assert_eq!(config.max_entries_per_ledger, 1000);
        assert_eq!(config.retention.time, None, "-1 keeps data forever");
        assert_eq!(config.max_ledger_rollover_time, Duration::from_secs(240 * 60), "the rest keeps its defaults");
    }

    #[test]
    fn the_entry_cache_and_read_settings_are_read_from_toml_and_pulsar_conf() {
        let settings = load(
            "dispatcher_max_read_batch_size = 500\n[managed_ledger]\nmanaged_ledger_cache_size_mb = 64\n\
             managed_ledger_cache_eviction_watermark = 0.5\nmanaged_ledger_cache_eviction_time_threshold_millis = 250\n\
             bookkeeper_client_speculative_read_timeout_in_millis = 0\n",
        )
        .expect("valid file");
        let config = settings.managed_ledger_config().expect("valid settings");
        assert_eq!(config.cache.size_bytes, 64 * 1024 * 1024);
        assert_eq!(config.cache.eviction_watermark, 0.5);
        assert_eq!(config.cache.eviction_time, Duration::from_millis(250));
        assert_eq!(config.speculative_read_timeout, Duration::ZERO);
        assert_eq!(settings.policy_defaults().expect("defaults").dispatcher_max_read_batch_size, 500);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.conf");
        let conf = "managedLedgerCacheSizeMB=32\nmanagedLedgerCacheEvictionWatermark=0.8\n\
                    managedLedgerCacheEvictionTimeThresholdMillis=2000\ndispatcherMaxReadBatchSize=50\n\
                    bookkeeperClientSpeculativeReadTimeoutInMillis=100\n";
        std::fs::write(&path, conf).expect("write");
        let settings = BrokerSettings::load(&path).expect("valid conf");
        let config = settings.managed_ledger_config().expect("valid settings");
        assert_eq!(config.cache.size_bytes, 32 * 1024 * 1024);
        assert_eq!(config.cache.eviction_watermark, 0.8);
        assert_eq!(config.cache.eviction_time, Duration::from_secs(2));
        assert_eq!(config.speculative_read_timeout, Duration::from_millis(100));
        assert_eq!(settings.policy_defaults().expect("defaults").dispatcher_max_read_batch_size, 50);

        let error = format!(
            "{:#}",
            load("[managed_ledger]\nmanaged_ledger_cache_eviction_watermark = 1.5\n").expect_err("a watermark above 1")
        );
        assert!(error.contains("managed_ledger_cache_eviction_watermark"), "{error}");
        let error = format!("{:#}", load("dispatcher_max_read_batch_size = 0\n").expect_err("zero"));
        assert!(error.contains("dispatcher_max_read_batch_size"), "{error}");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let error = format!("{:#}", load("[managed_ledger]\nmax_entries = 5\n").expect_err("unknown field"));
        assert!(error.contains("max_entries") && error.contains("broker.toml"), "{error}");
        let error = format!(
            "{:#}",
            load("[managed_ledger]\nmanaged_ledger_max_entries_per_ledger = 0\n").expect_err("zero entries")
        );
        assert!(error.contains("managed_ledger_max_entries_per_ledger"), "{error}");
        let error = format!("{:#}", load("[brokers]\n").expect_err("unknown section"));
        assert!(error.contains("brokers"), "{error}");
        let error = format!("{:#}", load("default_number_of_namespace_bundles = 0\n").expect_err("no bundles"));
        assert!(error.contains("default_number_of_namespace_bundles"), "{error}");
        let error =
            format!("{:#}", load("metadata_store_session_timeout_millis = 500\n").expect_err("too short a lease"));
        assert!(error.contains("metadata_store_session_timeout_millis"), "{error}");
    }

    #[test]
    fn the_example_settings_files_are_valid() {
        let text = include_str!("../../../../deploy/config/broker.toml");
        let settings: BrokerSettings = toml::from_str(text).expect("deploy/config/broker.toml parses");
        settings.managed_ledger_config().expect("valid [managed_ledger]");
        settings.cluster_config().expect("valid cluster settings");
        assert!(settings.metadata_store_url.is_some());
    }

    #[test]
    fn top_level_keys_set_the_broker_and_its_cluster_role() {
        let settings = load(
            "metadata_store_url = \"etcd://10.0.0.1:2379\"\nbroker_service_port = 6660\nweb_service_port = 8090\n\
             managed_ledger_default_ensemble_size = 3\nmanaged_ledger_default_write_quorum = 3\n\
             metadata_store_session_timeout_millis = 4000\ndefault_number_of_namespace_bundles = 8\n\
             load_balancer_shedding_interval_seconds = 5\n",
        )
        .expect("valid file");
        assert_eq!(settings.metadata_store_url.as_deref(), Some("etcd://10.0.0.1:2379"));
        assert_eq!((settings.broker_service_port, settings.web_service_port), (Some(6660), Some(8090)));
        let ledger = settings.ledger_config(LedgerConfig { ensemble_size: 2, write_quorum: 2, ack_quorum: 2 });
        assert_eq!((ledger.ensemble_size, ledger.write_quorum, ledger.ack_quorum), (3, 3, 2));
        let cluster = settings.cluster_config().expect("valid");
        assert_eq!(cluster.session_timeout, Duration::from_secs(4));
        assert_eq!(cluster.default_bundles, 8);
        assert_eq!(cluster.load_manager.shedding_interval, Duration::from_secs(5));
        assert_eq!(cluster.load_manager.report_interval, Duration::from_secs(5), "unset keys keep defaults");
    }
}
