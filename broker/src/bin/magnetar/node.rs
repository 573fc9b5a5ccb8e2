//! `magnetar broker`: a broker of a cluster. Metadata comes from a shared store (etcd, or a
//! local directory for a single host); the bookies are separate `magnetar bookie` processes
//! found through their registrations in that store. The broker keeps no state of its own on
//! disk: everything it serves lives in the metadata store and on the bookies, so a restarted or
//! replaced broker recovers each topic it opens (fencing the previous owner's ledger).
//!
//! Any number of brokers share one metadata store: each serves the namespace bundles it owns
//! ([`magnetar_broker::cluster::ownership`]) and sends clients elsewhere for the rest; the load manager
//! ([`magnetar_broker::cluster::load_manager`]) spreads bundles. On SIGTERM a broker hands its bundles over
//! before it exits; if it dies, its bundles are free once its session times out.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use magnetar_bookie::client::LedgerConfig;
use magnetar_meta::MetadataStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metadata_url::MetadataUrl;
use magnetar_broker::cluster::{broker_info::BrokerInfo, load_manager, ownership::Ownership};
use magnetar_broker::config::{BrokerConfig, ClusterConfig};
use magnetar_broker::managed_ledger::ManagedLedgerConfig;
use magnetar_broker::service::{spawn_inactive_topic_reaper, spawn_policy_applier};
use magnetar_broker::tenancy::model::ClusterData;
use magnetar_broker::tenancy::{store, PolicyCache, PolicyDefaults};
use magnetar_broker::{http, protocol, BrokerService};

/// Time allowed for a clean shutdown before the process gives up waiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct BrokerNodeConfig {
    pub metadata_url: MetadataUrl,
    pub cluster_name: String,
    pub bind_address: String,
    pub pulsar_port: u16,
    pub http_port: u16,
    pub advertised_address: String,
    pub ledger: LedgerConfig,
    pub managed_ledger: ManagedLedgerConfig,
    pub cluster: ClusterConfig,
    pub policies: PolicyDefaults,
    pub max_message_size: usize,
}

/// Checks ensemble size E, write quorum Qw and ack quorum Qa: E >= Qw >= Qa >= 1. The message
/// names the flags.
pub fn check_ledger_config(ledger: &LedgerConfig) -> anyhow::Result<()> {
    let LedgerConfig { ensemble_size, write_quorum, ack_quorum } = *ledger;
    if ack_quorum == 0 {
        bail!("--ack-quorum {ack_quorum}: must be at least 1");
    }
    if write_quorum < ack_quorum {
        bail!(
            "--write-quorum {write_quorum} is smaller than --ack-quorum {ack_quorum}: need write quorum >= ack quorum"
        );
    }
    if ensemble_size < write_quorum {
        bail!(
            "--ensemble-size {ensemble_size} is smaller than --write-quorum {write_quorum}: need ensemble size >= write quorum"
        );
    }
    Ok(())
}

/// Runs the broker until `cancel` fires, then closes its topics (their ledgers are closed and
/// cursors flushed) and stops.
pub async fn run(config: BrokerNodeConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    check_ledger_config(&config.ledger)?;
    let meta = config.metadata_url.connect().await?;
    let broker_config = BrokerConfig {
        cluster_name: config.cluster_name.clone(),
        advertised_address: config.advertised_address.clone(),
        ledger: config.ledger,
        managed_ledger: config.managed_ledger,
        cluster: config.cluster.clone(),
        policies: config.policies.clone(),
        max_message_size: config.max_message_size,
        ..BrokerConfig::default()
    };
    let broker =
        ServingBroker::start(&config.bind_address, config.pulsar_port, config.http_port, broker_config, meta).await?;
    info!(
        pulsar = %broker.service.config.broker_service_url(),
        http_port = config.http_port,
        metadata = %config.metadata_url,
        cluster = %config.cluster_name,
        ensemble_size = config.ledger.ensemble_size,
        write_quorum = config.ledger.write_quorum,
        ack_quorum = config.ledger.ack_quorum,
        "magnetar broker is ready"
    );

    tokio::select! {
        _ = cancel.cancelled() => info!("shutting down: handing the bundles over"),
        _ = broker.service.fatal.cancelled() => warn!("shutting down after losing the metadata session"),
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, broker.stop()).await.is_err() {
        warn!("shutdown did not finish in {SHUTDOWN_GRACE:?}; exiting anyway (recovery on next open covers it)");
    }
    info!("stopped");
    Ok(())
}

/// Binds `address:port`; the error names `what` the port is for.
pub(crate) async fn bind(address: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((address, port)).await.with_context(|| format!("bind the {what} port {address}:{port}"))
}

/// A broker serving the Pulsar protocol and admin HTTP until stopped.
pub struct ServingBroker {
    pub service: Arc<BrokerService>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Closes the topics of bundles the broker lost.
    closer: JoinHandle<()>,
}

impl ServingBroker {
    /// Binds the Pulsar and HTTP ports on `bind_address` and serves; `config`'s advertised
    /// Pulsar and HTTP ports become the bound ones.
    pub async fn start(
        bind_address: &str,
        pulsar_port: u16,
        http_port: u16,
        mut config: BrokerConfig,
        meta: Arc<dyn MetadataStore>,
    ) -> anyhow::Result<ServingBroker> {
        let pulsar_listener = bind(bind_address, pulsar_port, "Pulsar").await?;
        let http_listener = bind(bind_address, http_port, "HTTP").await?;
        config.advertised_pulsar_port = pulsar_listener.local_addr().context("read the Pulsar address")?.port();
        config.advertised_http_port = http_listener.local_addr().context("read the HTTP address")?.port();
        let me = BrokerInfo {
            broker: format!("{}:{}", config.advertised_address, config.advertised_http_port),
            native_url: config.broker_service_url(),
            http_url: config.web_service_url(),
        };
        // The cluster (with this broker's URLs, as Pulsar's cluster initialization takes
        // them), tenant `public` and namespace `public/default`, if missing.
        let cluster = ClusterData {
            service_url: Some(config.web_service_url()),
            broker_service_url: Some(config.broker_service_url()),
            ..ClusterData::default()
        };
        store::initialize_defaults(meta.as_ref(), &config.cluster_name, &cluster)
            .await
            .context("create the cluster, the public tenant and public/default")?;
        let (ownership, mut lost) =
            Ownership::start(meta.clone(), me, config.cluster.session_timeout, config.cluster.default_bundles)
                .await
                .context("open the broker's metadata session")?;
        let cancel = CancellationToken::new();
        let policies =
            PolicyCache::start(meta.clone(), cancel.clone()).await.context("read tenants and namespace policies")?;
        let load_manager = config.cluster.load_manager.clone();
        let service = BrokerService::new(config, meta, ownership, policies);
        spawn_policy_applier(service.clone(), cancel.clone());
        spawn_inactive_topic_reaper(service.clone(), cancel.clone());
        let lost_service = service.clone();
        let closer = tokio::spawn(async move {
            while let Some(bundle) = lost.recv().await {
                lost_service.close_topics(|name| bundle.contains(name)).await;
            }
        });
        load_manager::spawn(service.clone(), load_manager, cancel.clone());
        let pulsar = tokio::spawn(protocol::server::run(service.clone(), pulsar_listener, cancel.clone()));
        let (http_service, http_cancel) = (service.clone(), cancel.clone());
        let http = tokio::spawn(async move {
            if let Err(error) = http::run(http_service, http_listener, http_cancel).await {
                warn!(%error, "the HTTP server stopped");
            }
        });
        Ok(ServingBroker { service, cancel, tasks: vec![pulsar, http], closer })
    }

    /// Hands every owned bundle over (topics closed, clients told to reconnect elsewhere)
    /// while still answering lookups, then stops accepting and closes the bookie connections.
    pub async fn stop(self) {
        self.service.drain().await;
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.closer.abort();
        self.service.close_all_topics().await;
        self.service.bookies.close().await;
    }
}
