//! The broker's settings file (`magnetar broker|standalone --config broker.toml`): Pulsar's
//! broker.conf names in snake case, read and checked into the library's configuration;
//! errors name the file and the field.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use magnetar_bookie::client::LedgerConfig;
use magnetar_broker::cluster::bundles;
use magnetar_broker::cluster::config::LoadManagerConfig;
use magnetar_broker::config::ClusterConfig;
use magnetar_broker::managed_ledger::config::ManagedLedgerSettings;
use magnetar_broker::managed_ledger::ManagedLedgerConfig;
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
    pub managed_ledger: ManagedLedgerSettings,
}

impl BrokerSettings {
    /// Reads and checks a settings file; errors name the file and the field.
    pub fn load(path: &Path) -> anyhow::Result<BrokerSettings> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read broker config file {}", path.display()))?;
        let settings: BrokerSettings =
            toml::from_str(&text).with_context(|| format!("broker config file {}", path.display()))?;
        settings.managed_ledger_config().with_context(|| format!("broker config file {}", path.display()))?;
        settings.cluster_config().with_context(|| format!("broker config file {}", path.display()))?;
        Ok(settings)
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
