//! A broker's configuration as the library takes it (`BrokerConfig`, `ClusterConfig`); the
//! settings file that fills it is read by the `magnetar` binary (`bin/magnetar/settings.rs`).

use std::time::Duration;

use magnetar_bookie::client::LedgerConfig;
use magnetar_bookie::security::ClientSecurity;

use crate::cluster::bundles;
use crate::cluster::config::LoadManagerConfig;
use crate::managed_ledger::ManagedLedgerConfig;
use crate::security::SecurityConfig;
use crate::tenancy::PolicyDefaults;

/// How a broker takes part in a cluster: its session, bundles and load manager.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The broker's metadata session (lease) timeout: how long its bundles stay owned after
    /// it stopped answering.
    pub session_timeout: Duration,
    pub default_bundles: u32,
    pub load_manager: LoadManagerConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            session_timeout: Duration::from_secs(10),
            default_bundles: bundles::DEFAULT_BUNDLES,
            load_manager: LoadManagerConfig::default(),
        }
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
    /// Metrics per topic (Pulsar's `exposeTopicLevelMetricsInPrometheus`, on by default) or
    /// summed per namespace.
    pub expose_topic_level_metrics: bool,
    /// Most client connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Ledger rollover, cursor ledgers and retention (from [`ManagedLedgerSettings`]).
    ///
    /// [`ManagedLedgerSettings`]: crate::managed_ledger::config::ManagedLedgerSettings
    pub managed_ledger: ManagedLedgerConfig,
    /// Session, bundles, load manager.
    pub cluster: ClusterConfig,
    /// What namespaces and topics get where their policies say nothing.
    pub policies: PolicyDefaults,
    /// `pulsar+ssl://` port clients are told in lookup answers, when TLS is served.
    pub advertised_pulsar_tls_port: Option<u16>,
    /// HTTPS port clients are told in lookup answers, when HTTPS is served.
    pub advertised_https_port: Option<u16>,
    /// Authentication and authorization.
    pub security: SecurityConfig,
    /// The token and CA this broker calls bookies with (`bookkeeper_client_*`).
    pub bookie_security: ClientSecurity,
}

impl BrokerConfig {
    pub fn broker_service_url(&self) -> String {
        format!("pulsar://{}:{}", self.advertised_address, self.advertised_pulsar_port)
    }

    pub fn web_service_url(&self) -> String {
        format!("http://{}:{}", self.advertised_address, self.advertised_http_port)
    }

    pub fn broker_service_url_tls(&self) -> Option<String> {
        self.advertised_pulsar_tls_port.map(|port| format!("pulsar+ssl://{}:{port}", self.advertised_address))
    }

    pub fn web_service_url_tls(&self) -> Option<String> {
        self.advertised_https_port.map(|port| format!("https://{}:{port}", self.advertised_address))
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
            expose_topic_level_metrics: true,
            max_connections: 10_000,
            managed_ledger: ManagedLedgerConfig::default(),
            cluster: ClusterConfig::default(),
            policies: PolicyDefaults::default(),
            advertised_pulsar_tls_port: None,
            advertised_https_port: None,
            security: SecurityConfig::default(),
            bookie_security: ClientSecurity::default(),
        }
    }
}
