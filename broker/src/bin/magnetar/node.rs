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
use magnetar_meta::{retry_transient, MetadataStore, STARTUP_PATIENCE};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metadata_url::MetadataUrl;
use magnetar_bookie::security::ClientSecurity;
use magnetar_broker::cluster::broker_info::{AdvertisedListeners, BrokerInfo};
use magnetar_broker::cluster::{load_manager, ownership::Ownership};
use magnetar_broker::config::{BrokerConfig, ClusterConfig};
use magnetar_broker::managed_ledger::ManagedLedgerConfig;
use magnetar_broker::security::{Security, SecurityConfig, TlsAcceptor, TlsSettings};
use magnetar_broker::service::{spawn_inactive_topic_reaper, spawn_policy_applier};
use magnetar_broker::tenancy::model::ClusterData;
use magnetar_broker::tenancy::{store, PolicyCache, PolicyDefaults};
use magnetar_broker::{http, protocol, BrokerError, BrokerService};
use magnetar_meta::EtcdOptions;

/// Time allowed for a clean shutdown before the process gives up waiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Where a broker listens: plain and TLS ports for the Pulsar protocol and HTTP (None: off).
#[derive(Debug, Clone)]
pub struct Listeners {
    pub bind_address: String,
    pub pulsar_port: Option<u16>,
    pub http_port: Option<u16>,
    pub pulsar_tls_port: Option<u16>,
    pub https_port: Option<u16>,
    /// The certificate and options of the TLS ports.
    pub tls: Option<TlsSettings>,
    /// Pulsar's `advertisedListeners`: other names clients may look topics up under.
    pub advertised: AdvertisedListeners,
    /// The listener whose URLs a lookup without a listener name answers (Pulsar's
    /// `internalListenerName`; the settings make it the first listener written when unset).
    pub internal_listener_name: Option<String>,
}

impl Listeners {
    /// Plain `pulsar://` and HTTP on these ports, no TLS.
    #[cfg(test)]
    pub fn plain(bind_address: &str, pulsar_port: u16, http_port: u16) -> Self {
        Listeners {
            bind_address: bind_address.to_owned(),
            pulsar_port: Some(pulsar_port),
            http_port: Some(http_port),
            pulsar_tls_port: None,
            https_port: None,
            tls: None,
            advertised: AdvertisedListeners::new(),
            internal_listener_name: None,
        }
    }

    /// At least one port for each protocol, and TLS settings for the TLS ports.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.pulsar_port.is_none() && self.pulsar_tls_port.is_none() {
            bail!("both Pulsar ports are off: set broker_service_port or broker_service_port_tls");
        }
        if self.http_port.is_none() && self.https_port.is_none() {
            bail!("both HTTP ports are off: set web_service_port or web_service_port_tls");
        }
        if (self.pulsar_tls_port.is_some() || self.https_port.is_some()) && self.tls.is_none() {
            bail!("the TLS ports need tls_certificate_file_path and tls_key_file_path");
        }
        if let Some(name) = &self.internal_listener_name {
            if !self.advertised.contains_key(name) {
                bail!("internal_listener_name = {name:?} is not one of advertised_listeners");
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct BrokerNodeConfig {
    pub metadata_url: MetadataUrl,
    /// The etcd user and TLS files.
    pub metadata_store: EtcdOptions,
    /// The token and CA for bookies.
    pub bookie_security: ClientSecurity,
    pub cluster_name: String,
    pub listeners: Listeners,
    pub advertised_address: String,
    pub ledger: LedgerConfig,
    pub managed_ledger: ManagedLedgerConfig,
    pub cluster: ClusterConfig,
    pub policies: PolicyDefaults,
    pub max_message_size: usize,
    /// Per-topic metrics (`exposeTopicLevelMetricsInPrometheus`); per namespace otherwise.
    pub expose_topic_level_metrics: bool,
    pub security: SecurityConfig,
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
    let meta = config.metadata_url.connect_with(&config.metadata_store).await?;
    let broker_config = BrokerConfig {
        cluster_name: config.cluster_name.clone(),
        advertised_address: config.advertised_address.clone(),
        ledger: config.ledger,
        managed_ledger: config.managed_ledger,
        cluster: config.cluster.clone(),
        policies: config.policies.clone(),
        max_message_size: config.max_message_size,
        expose_topic_level_metrics: config.expose_topic_level_metrics,
        security: config.security.clone(),
        bookie_security: config.bookie_security.clone(),
        ..BrokerConfig::default()
    };
    let broker = ServingBroker::start(&config.listeners, broker_config, meta).await?;
    info!(
        pulsar = %broker.service.ownership.me().native_url,
        http = %broker.service.ownership.me().http_url,
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
    /// Binds the listeners' ports and serves; `config`'s advertised ports become the bound
    /// ones.
    pub async fn start(
        listeners: &Listeners,
        mut config: BrokerConfig,
        meta: Arc<dyn MetadataStore>,
    ) -> anyhow::Result<ServingBroker> {
        listeners.check()?;
        let security = Security::new(&config.security).map_err(|error| anyhow::anyhow!(error))?;
        let tls = match &listeners.tls {
            Some(settings) => Some(TlsAcceptor::new(settings.clone()).map_err(|error| anyhow::anyhow!(error))?),
            None => None,
        };
        let address = listeners.bind_address.as_str();
        let bind_optional = |port: Option<u16>, what: &'static str| async move {
            match port {
                Some(port) => bind(address, port, what).await.map(Some),
                None => Ok(None),
            }
        };
        let pulsar_listener = bind_optional(listeners.pulsar_port, "Pulsar").await?;
        let http_listener = bind_optional(listeners.http_port, "HTTP").await?;
        let pulsar_tls_listener = bind_optional(listeners.pulsar_tls_port, "Pulsar TLS").await?;
        let https_listener = bind_optional(listeners.https_port, "HTTPS").await?;
        let port_of =
            |listener: &Option<TcpListener>| listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port());
        config.advertised_pulsar_tls_port = port_of(&pulsar_tls_listener);
        config.advertised_https_port = port_of(&https_listener);
        config.advertised_pulsar_port = port_of(&pulsar_listener).unwrap_or_default();
        config.advertised_http_port = port_of(&http_listener).unwrap_or_default();
        // With a plain port off, the TLS URL stands in for it.
        let native_url = match &pulsar_listener {
            Some(_) => config.broker_service_url(),
            None => config.broker_service_url_tls().unwrap_or_else(|| config.broker_service_url()),
        };
        let http_url = match &http_listener {
            Some(_) => config.web_service_url(),
            None => config.web_service_url_tls().unwrap_or_else(|| config.web_service_url()),
        };
        let http_port = port_of(&http_listener).or(port_of(&https_listener)).unwrap_or_default();
        let mut me = BrokerInfo {
            broker: format!("{}:{http_port}", config.advertised_address),
            native_url,
            http_url,
            native_url_tls: config.broker_service_url_tls(),
            http_url_tls: config.web_service_url_tls(),
            advertised_listeners: listeners.advertised.clone(),
        };
        // With advertised listeners, a lookup that names none answers the internal one's
        // URLs, as Pulsar's does.
        let internal = listeners.internal_listener_name.as_deref();
        if let Some(urls) = internal.and_then(|name| listeners.advertised.get(name)) {
            if let Some(url) = urls.broker_service_url.clone().or(urls.broker_service_url_tls.clone()) {
                me.native_url = url;
            }
            if urls.broker_service_url_tls.is_some() {
                me.native_url_tls = urls.broker_service_url_tls.clone();
            }
        }
        // The cluster (with this broker's URLs, as Pulsar's cluster initialization takes
        // them), tenant `public` and namespace `public/default`, if missing.
        let cluster = ClusterData {
            service_url: Some(me.http_url.clone()),
            broker_service_url: Some(me.native_url.clone()),
            service_url_tls: me.http_url_tls.clone(),
            broker_service_url_tls: me.native_url_tls.clone(),
            ..ClusterData::default()
        };
        // Each metadata step is tried again while etcd is unreachable or electing a leader
        // (right after a member was lost, say), for up to STARTUP_PATIENCE: that is no reason
        // to exit.
        let transient = |error: &BrokerError| matches!(error, BrokerError::Meta(meta) if meta.is_transient());
        if config.security.authentication_enabled {
            // With authentication on, Pulsar's standalone leaves `public` to an administrator
            // (its own admin calls are refused), and the documented secure set-ups create it
            // with the roles they want: a `public` made here would answer their PUT with 409.
            retry_transient("creating the cluster", STARTUP_PATIENCE, transient, || {
                store::initialize_cluster(meta.as_ref(), &config.cluster_name, &cluster)
            })
            .await
            .context("create the cluster")?;
            info!("authentication is on: tenant public and public/default are left to an administrator");
        } else {
            retry_transient("creating the cluster and public/default", STARTUP_PATIENCE, transient, || {
                store::initialize_defaults(meta.as_ref(), &config.cluster_name, &cluster)
            })
            .await
            .context("create the cluster, the public tenant and public/default")?;
        }
        let (ownership, mut lost) =
            retry_transient("opening the broker's metadata session", STARTUP_PATIENCE, transient, || {
                Ownership::start(
                    meta.clone(),
                    me.clone(),
                    config.cluster.session_timeout,
                    config.cluster.default_bundles,
                )
            })
            .await
            .context("open the broker's metadata session")?;
        let cancel = CancellationToken::new();
        let policies = retry_transient("reading tenants and namespace policies", STARTUP_PATIENCE, transient, || {
            PolicyCache::start(meta.clone(), cancel.clone())
        })
        .await
        .context("read tenants and namespace policies")?;
        let load_manager = config.cluster.load_manager.clone();
        let service = BrokerService::new(config, meta, ownership, policies, security);
        spawn_policy_applier(service.clone(), cancel.clone());
        spawn_inactive_topic_reaper(service.clone(), cancel.clone());
        let lost_service = service.clone();
        let closer = tokio::spawn(async move {
            while let Some(bundle) = lost.recv().await {
                lost_service.close_topics(|name| bundle.contains(name)).await;
            }
        });
        load_manager::spawn(service.clone(), load_manager, cancel.clone());
        if let Some(tls) = &tls {
            tls.spawn_reloader(cancel.clone());
        }
        let mut tasks = Vec::new();
        for (listener, tls) in [(pulsar_listener, None), (pulsar_tls_listener, tls.clone())] {
            if let Some(listener) = listener {
                tasks.push(tokio::spawn(protocol::server::run(service.clone(), listener, tls, cancel.clone())));
            }
        }
        for (listener, tls) in [(http_listener, None), (https_listener, tls)] {
            if let Some(listener) = listener {
                let (http_service, http_cancel) = (service.clone(), cancel.clone());
                tasks.push(tokio::spawn(async move {
                    if let Err(error) = http::run(http_service, listener, tls, http_cancel).await {
                        warn!(%error, "the HTTP server stopped");
                    }
                }));
            }
        }
        Ok(ServingBroker { service, cancel, tasks, closer })
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
