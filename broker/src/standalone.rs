//! `magnetar standalone`: one process holding a LocalStore (RocksDB) for metadata, one bookie
//! and one broker. The broker reaches the bookie through gRPC on loopback, exactly as it would
//! reach a remote one, so standalone runs the same code paths as a cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use magnetar_bookie::disk::DiskMonitor;
use magnetar_bookie::registration::{self, BookieRegistration};
use magnetar_bookie::{cookie, BookieConfig, BookieServer};
use magnetar_meta::{LocalStore, MetadataStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::BrokerConfig;
use crate::{http, namespace, protocol, BrokerService};

/// Bookie id of standalone's bookie: stable across restarts, whatever port it gets.
pub const STANDALONE_BOOKIE_ID: &str = "standalone-bookie-0";
/// Time allowed for a clean shutdown before the process gives up waiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub data_dir: PathBuf,
    pub bind_address: String,
    pub pulsar_port: u16,
    pub http_port: u16,
    /// 0 picks a free loopback port.
    pub bookie_port: u16,
    pub advertised_address: String,
}

async fn bind(address: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    let listener =
        TcpListener::bind((address, port)).await.with_context(|| format!("bind the {what} port {address}:{port}"))?;
    Ok(listener)
}

/// Runs standalone until `cancel` fires, then shuts down cleanly.
pub async fn run(config: StandaloneConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let meta_dir = config.data_dir.join("metadata");
    let store =
        tokio::task::spawn_blocking(move || LocalStore::open(&meta_dir)).await.context("open metadata store")??;
    let meta: Arc<dyn MetadataStore> = Arc::new(store);
    namespace::initialize_defaults(meta.as_ref(), "standalone").await.context("create default tenant and namespace")?;

    // Bookie.
    let bookie_config = BookieConfig::new(STANDALONE_BOOKIE_ID, config.data_dir.join("bookie-0"));
    cookie::verify_or_create(meta.as_ref(), &bookie_config).await.context("check the bookie's cookie")?;
    let opened_config = bookie_config.clone();
    let bookie =
        tokio::task::spawn_blocking(move || BookieServer::open(&opened_config)).await.context("open bookie")??;
    let disk_cancel = CancellationToken::new();
    DiskMonitor::new(&bookie_config, bookie.bookie().read_only_flag()).spawn(disk_cancel.clone());
    let bookie_listener = bind("127.0.0.1", config.bookie_port, "bookie").await?;
    let bookie_address: SocketAddr = bookie_listener.local_addr().context("bookie address")?;
    let bookie_cancel = CancellationToken::new();
    let bookie_task = tokio::spawn(bookie.run(bookie_listener, bookie_cancel.clone()));
    let registration =
        BookieRegistration { bookie_id: STANDALONE_BOOKIE_ID.to_owned(), address: bookie_address.to_string() };
    let session = registration::register(meta.as_ref(), &registration, Duration::from_secs(10))
        .await
        .context("register bookie")?;

    // Broker.
    let pulsar_listener = bind(&config.bind_address, config.pulsar_port, "Pulsar").await?;
    let http_listener = bind(&config.bind_address, config.http_port, "HTTP").await?;
    let broker_config = BrokerConfig {
        advertised_address: config.advertised_address.clone(),
        advertised_pulsar_port: pulsar_listener.local_addr().context("Pulsar address")?.port(),
        ..BrokerConfig::default()
    };
    let service = BrokerService::new(broker_config, meta.clone());
    let serve_cancel = CancellationToken::new();
    let pulsar_task = tokio::spawn(protocol::server::run(service.clone(), pulsar_listener, serve_cancel.clone()));
    let http_task = tokio::spawn(http::run(service.clone(), http_listener, serve_cancel.clone()));
    info!(
        data_dir = %config.data_dir.display(),
        pulsar = %service.config.broker_service_url(),
        http_port = config.http_port,
        bookie = %bookie_address,
        "magnetar standalone is ready"
    );

    cancel.cancelled().await;
    info!("shutting down");
    let drain = async {
        serve_cancel.cancel();
        let _ = pulsar_task.await;
        let _ = http_task.await;
        service.close_all_topics().await;
        service.bookies.close().await;
        bookie_cancel.cancel();
        disk_cancel.cancel();
        let _ = bookie_task.await;
        if let Err(error) = meta.close_session(session).await {
            warn!(%error, "closing the bookie's metadata session");
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!("shutdown did not finish in {SHUTDOWN_GRACE:?}; exiting anyway (recovery on next start covers it)");
    }
    info!("stopped");
    Ok(())
}
