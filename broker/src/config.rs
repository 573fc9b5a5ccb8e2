//! Broker settings.

use magnetar_bookie::client::LedgerConfig;

use crate::managed_ledger::ManagedLedgerConfig;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Name of the cluster this broker belongs to (`standalone` in standalone mode).
    pub cluster_name: String,
    /// Host clients are told to connect to in lookup answers.
    pub advertised_address: String,
    /// Pulsar protocol port clients are told in lookup answers.
    pub advertised_pulsar_port: u16,
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
            ledger: LedgerConfig::default(),
            max_message_size: magnetar_proto::DEFAULT_MAX_MESSAGE_SIZE,
            max_connections: 10_000,
            managed_ledger: ManagedLedgerConfig::default(),
        }
    }
}
