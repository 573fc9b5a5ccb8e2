//! Broker settings.

use std::path::Path;

use anyhow::Context;
use magnetar_bookie::client::LedgerConfig;
use serde::Deserialize;

use crate::managed_ledger::config::ManagedLedgerSettings;
use crate::managed_ledger::ManagedLedgerConfig;

/// What a broker's TOML file (`magnetar broker|standalone --config broker.toml`) may set;
/// unknown sections and fields are an error. Today: the `[managed_ledger]` section (ledger
/// rollover, cursor ledgers, retention), with Pulsar's broker.conf names in snake case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
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
        Ok(settings)
    }

    /// The checked managed ledger configuration.
    pub fn managed_ledger_config(&self) -> anyhow::Result<ManagedLedgerConfig> {
        ManagedLedgerConfig::from_settings(&self.managed_ledger).context("[managed_ledger]")
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Name of the cluster this broker belongs to (`standalone` in standalone mode).
    pub cluster_name: String,
    /// Host clients are told to connect to in lookup answers.
    pub advertised_address: String,
    /// Pulsar protocol port clients are told in lookup answers.
    pub advertised_pulsar_port: u16,
    /// HTTP port clients are told in HTTP lookup answers (`httpUrl`).
    pub advertised_http_port: u16,
    /// Replication of new ledgers.
    pub ledger: LedgerConfig,
    /// Largest message a producer may send; advertised in CONNECTED.
    pub max_message_size: usize,
    /// Most client connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Ledger rollover, cursor ledgers and retention (from [`ManagedLedgerSettings`]).
    ///
    /// [`ManagedLedgerSettings`]: crate::managed_ledger::config::ManagedLedgerSettings
    pub managed_ledger: ManagedLedgerConfig,
}

impl BrokerConfig {
    pub fn broker_service_url(&self) -> String {
        format!("pulsar://{}:{}", self.advertised_address, self.advertised_pulsar_port)
    }

    pub fn web_service_url(&self) -> String {
        format!("http://{}:{}", self.advertised_address, self.advertised_http_port)
    }

    /// Largest frame accepted: the largest message plus room for command and metadata.
    pub fn max_frame_size(&self) -> usize {
        self.max_message_size + magnetar_proto::FRAME_OVERHEAD
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            cluster_name: "standalone".to_owned(),
            advertised_address: "127.0.0.1".to_owned(),
            advertised_pulsar_port: 6650,
            advertised_http_port: 8080,
            ledger: LedgerConfig::default(),
            max_message_size: magnetar_proto::DEFAULT_MAX_MESSAGE_SIZE,
            max_connections: 10_000,
            managed_ledger: ManagedLedgerConfig::default(),
        }
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
    }
}
