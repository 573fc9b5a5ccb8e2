//! `magnetar standalone`: one process holding a LocalStore (RocksDB) for metadata, N bookies
//! (one by default) and one broker. The broker reaches the bookies through gRPC on loopback,
//! exactly as it would reach remote ones, so standalone runs the same code paths as a cluster.
//!
//! Bookie `i` (0-based) is `standalone-bookie-<i>`: its data (entry logs, index, journal,
//! cookie) live in `<data dir>/bookie-<i>`, its cookie and registration in the metadata store
//! like any bookie's, and it serves on its own loopback port: `bookie_port + i`, or a free
//! port each when `bookie_port` is 0. New ledgers use the configured ensemble size, write
//! quorum and ack quorum (`BrokerConfig::ledger`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use magnetar_bookie::client::LedgerConfig;
use magnetar_bookie::node::BookieNode;
use magnetar_bookie::BookieConfig;
use magnetar_meta::{LocalStore, MetadataStore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::node::{bind, Listeners, ServingBroker, SHUTDOWN_GRACE};
use magnetar_broker::config::BrokerConfig;
use magnetar_broker::managed_ledger::ManagedLedgerConfig;
use magnetar_broker::security::SecurityConfig;
use magnetar_broker::tenancy::PolicyDefaults;

/// Most bookies one standalone process runs: each has its own journal thread, RocksDB index
/// and caches, so more than a handful only competes for the same disk and cores.
pub const MAX_STANDALONE_BOOKIES: u32 = 16;

#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub data_dir: PathBuf,
    pub listeners: Listeners,
    /// Port of the first bookie on loopback; bookie `i` gets `bookie_port + i`. 0 gives each
    /// bookie a free port.
    pub bookie_port: u16,
    pub advertised_address: String,
    /// Bookies run in this process (1 ..= [`MAX_STANDALONE_BOOKIES`]).
    pub num_bookies: u32,
    /// Ensemble size, write quorum and ack quorum of new ledgers.
    pub ledger: LedgerConfig,
    /// Ledger rollover, cursor ledgers and retention.
    pub managed_ledger: ManagedLedgerConfig,
    /// Policy defaults for namespaces and topics.
    pub policies: PolicyDefaults,
    pub max_message_size: usize,
    /// Per-topic metrics (`exposeTopicLevelMetricsInPrometheus`); per namespace otherwise.
    pub expose_topic_level_metrics: bool,
    pub cluster_name: String,
    pub security: SecurityConfig,
}

impl StandaloneConfig {
    /// Checks the bookie count and replication settings against each other; the error names
    /// the command-line flag to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ensemble_size = self.ledger.ensemble_size;
        let num_bookies = self.num_bookies;
        if num_bookies == 0 || num_bookies > MAX_STANDALONE_BOOKIES {
            bail!("--num-bookies {num_bookies}: must be between 1 and {MAX_STANDALONE_BOOKIES}");
        }
        crate::node::check_ledger_config(&self.ledger)?;
        if ensemble_size > num_bookies {
            bail!(
                "--ensemble-size {ensemble_size} is larger than --num-bookies {num_bookies}: a ledger's ensemble needs that many bookies"
            );
        }
        if self.bookie_port != 0 && u32::from(self.bookie_port) + num_bookies - 1 > u32::from(u16::MAX) {
            bail!(
                "--bookie-port {}: {num_bookies} bookies need consecutive ports from it, past 65535",
                self.bookie_port
            );
        }
        Ok(())
    }

    /// Bookie id of bookie `index`.
    pub fn bookie_id(index: u32) -> String {
        format!("standalone-bookie-{index}")
    }

    /// Data dir of bookie `index`.
    pub fn bookie_dir(&self, index: u32) -> PathBuf {
        self.data_dir.join(format!("bookie-{index}"))
    }

    /// Port bookie `index` binds on loopback (0: any free port).
    fn bookie_port(&self, index: u32) -> u16 {
        if self.bookie_port == 0 {
            return 0;
        }
        // validate() checked that the last bookie's port fits.
        u16::try_from(u32::from(self.bookie_port) + index).unwrap_or(0)
    }
}

/// Starts bookie `index` on loopback (`magnetar_bookie::node` has the sequence). Standalone's
/// bookies run no auto-recovery worker: they live and die with the process together.
async fn start_bookie(
    config: &StandaloneConfig,
    meta: &Arc<dyn MetadataStore>,
    index: u32,
) -> anyhow::Result<BookieNode> {
    let bookie_id = StandaloneConfig::bookie_id(index);
    let mut bookie_config = BookieConfig::new(bookie_id.clone(), config.bookie_dir(index));
    bookie_config.autorecovery.enabled = false;
    // Its metrics are on the broker's /metrics; this port answers the broker's state queries.
    bookie_config.http_listen = "127.0.0.1:0".to_owned();
    let listener = bind("127.0.0.1", config.bookie_port(index), &format!("bookie {bookie_id}")).await?;
    let bookie = BookieNode::start(&bookie_config, meta.clone(), listener, "127.0.0.1")
        .await
        .with_context(|| format!("start bookie {bookie_id} in {}", bookie_config.data_dir.display()))?;
    info!(bookie_id = %bookie_id, address = %bookie.address(), "standalone bookie registered");
    Ok(bookie)
}

/// Stops a bookie, logging what went wrong.
async fn stop_bookie(bookie: BookieNode) {
    let bookie_id = bookie.bookie_id().to_owned();
    if let Err(error) = bookie.stop().await {
        warn!(bookie_id = %bookie_id, %error, "bookie stopped with an error");
    }
}

/// Runs standalone until `cancel` fires, then shuts down cleanly.
pub async fn run(config: StandaloneConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let meta_dir = config.data_dir.join("metadata");
    let store =
        tokio::task::spawn_blocking(move || LocalStore::open(&meta_dir)).await.context("open metadata store")??;
    let meta: Arc<dyn MetadataStore> = Arc::new(store);

    // Bookies, all registered before the broker can create a ledger.
    let mut bookies = Vec::with_capacity(config.num_bookies as usize);
    for index in 0..config.num_bookies {
        match start_bookie(&config, &meta, index).await {
            Ok(bookie) => bookies.push(bookie),
            Err(error) => {
                for bookie in bookies {
                    stop_bookie(bookie).await;
                }
                return Err(error);
            }
        }
    }

    // Broker.
    let broker_config = BrokerConfig {
        cluster_name: config.cluster_name.clone(),
        advertised_address: config.advertised_address.clone(),
        ledger: config.ledger,
        managed_ledger: config.managed_ledger,
        policies: config.policies.clone(),
        max_message_size: config.max_message_size,
        expose_topic_level_metrics: config.expose_topic_level_metrics,
        security: config.security.clone(),
        ..BrokerConfig::default()
    };
    let broker = ServingBroker::start(&config.listeners, broker_config, meta.clone()).await?;
    *broker.service.local_bookies.write() = bookies.iter().map(|bookie| bookie.http().clone()).collect();
    let me = broker.service.ownership.me();
    info!(
        data_dir = %config.data_dir.display(),
        pulsar = %me.native_url,
        http = %me.http_url,
        pulsar_tls = ?me.native_url_tls,
        https = ?me.http_url_tls,
        bookies = %bookies.iter().map(|bookie| format!("{}={}", bookie.bookie_id(), bookie.address())).collect::<Vec<_>>().join(","),
        ensemble_size = config.ledger.ensemble_size,
        write_quorum = config.ledger.write_quorum,
        ack_quorum = config.ledger.ack_quorum,
        "magnetar standalone is ready"
    );

    cancel.cancelled().await;
    info!("shutting down");
    let drain = async {
        broker.stop().await;
        for bookie in bookies {
            stop_bookie(bookie).await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!("shutdown did not finish in {SHUTDOWN_GRACE:?}; exiting anyway (recovery on next start covers it)");
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(num_bookies: u32, ensemble_size: u32, write_quorum: u32, ack_quorum: u32) -> StandaloneConfig {
        StandaloneConfig {
            data_dir: PathBuf::from("/nonexistent"),
            listeners: Listeners::plain("127.0.0.1", 6650, 8080),
            security: SecurityConfig::default(),
            bookie_port: 0,
            advertised_address: "127.0.0.1".to_owned(),
            num_bookies,
            ledger: LedgerConfig { ensemble_size, write_quorum, ack_quorum },
            managed_ledger: ManagedLedgerConfig::default(),
            policies: PolicyDefaults::default(),
            max_message_size: magnetar_proto::DEFAULT_MAX_MESSAGE_SIZE,
            expose_topic_level_metrics: true,
            cluster_name: "standalone".to_owned(),
        }
    }

    fn rejection(config: &StandaloneConfig) -> String {
        match config.validate() {
            Ok(()) => panic!("{config:?} was accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn replication_within_the_bookie_count_is_accepted() {
        for (n, e, qw, qa) in [(1, 1, 1, 1), (3, 3, 3, 3), (3, 3, 3, 2), (5, 3, 2, 1), (3, 2, 2, 2)] {
            config(n, e, qw, qa).validate().unwrap_or_else(|error| panic!("{n}/{e}/{qw}/{qa}: {error}"));
        }
    }

    #[test]
    fn each_broken_rule_names_its_flag() {
        assert!(rejection(&config(3, 4, 3, 3)).contains("--ensemble-size 4"));
        assert!(rejection(&config(3, 3, 2, 3)).contains("--ack-quorum 3"));
        assert!(rejection(&config(3, 2, 3, 3)).contains("--write-quorum 3"));
        assert!(rejection(&config(3, 3, 3, 0)).contains("--ack-quorum 0"));
        assert!(rejection(&config(0, 1, 1, 1)).contains("--num-bookies 0"));
        assert!(rejection(&config(MAX_STANDALONE_BOOKIES + 1, 1, 1, 1)).contains("--num-bookies"));
    }

    #[test]
    fn consecutive_bookie_ports_must_fit() {
        let mut last_ports = config(3, 1, 1, 1);
        last_ports.bookie_port = 65534;
        assert!(rejection(&last_ports).contains("--bookie-port 65534"));
        last_ports.bookie_port = 65533;
        last_ports.validate().expect("65533..=65535 fits");
        assert_eq!(last_ports.bookie_port(2), 65535);
        assert_eq!(config(3, 1, 1, 1).bookie_port(2), 0, "port 0 stays ephemeral for every bookie");
    }
}
