//! The broker's shared state: topics by name, the stores, the counters.
//!
//! Topics open on first use exactly once even when many connections ask at the same moment:
//! each name maps to a cell that one opener fills. Whether a topic may be created on first
//! use, and the limits it is held to, come from its namespace's and its own policies
//! ([`policies`]).

mod admin;
mod policies;

pub use policies::{spawn_inactive_topic_reaper, spawn_policy_applier};

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use magnetar_bookie::client::Bookies;
use magnetar_meta::MetadataStore;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::bundles::{self, Bundle};
use crate::cluster::control::BundleControl;
use crate::cluster::load_report;
use crate::cluster::ownership::{LookupAnswer, Ownership};
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::managed_ledger::{EntryCacheManager, ManagedLedger};
use crate::metrics::{Gauges, Metrics, SubscriptionGauges, TopicGauges};
use crate::non_persistent::NonPersistentTopic;
use crate::partitions;
use crate::schema::{SchemaPolicy, SchemaRegistry};
use crate::security::Security;
use crate::tenancy;
use crate::tenancy::PolicyCache;
use crate::topic::{PolicingIntervals, Topic};
use crate::topic_name::{partition_topic_name, TopicName};

/// Counter the broker ids of generated producer names come from.
const BROKER_ID_SEQUENCE: &str = "/magnetar/sequences/broker-id";

pub struct BrokerService {
    pub config: BrokerConfig,
    pub meta: Arc<dyn MetadataStore>,
    pub bookies: Bookies,
    pub metrics: Arc<Metrics>,
    topics: Mutex<HashMap<TopicName, Arc<OnceCell<Arc<Topic>>>>>,
    /// Non-persistent topics served here, while they have producers or consumers.
    non_persistent: Mutex<HashMap<TopicName, Arc<NonPersistentTopic>>>,
    /// See [`BrokerService::broker_id`].
    broker_id: OnceCell<u64>,
    /// Fired when the broker starts shutting down.
    pub shutdown: CancellationToken,
    /// Which bundles this broker serves; lookups.
    pub ownership: Arc<Ownership>,
    /// Fired when the broker cannot go on (its metadata session expired): the process stops.
    pub fatal: CancellationToken,
    /// Tenants, namespace and topic policies, kept current by a metadata watch.
    pub policies: Arc<PolicyCache>,
    /// Who clients are and what they may do.
    pub security: Security,
    /// Every topic's schema history.
    pub schemas: SchemaRegistry,
    /// Bookies running in this process (standalone): their metrics join `/metrics`.
    pub local_bookies: parking_lot::RwLock<Vec<magnetar_bookie::http::BookieHttp>>,
    /// The entry cache every managed ledger of this broker shares.
    pub entry_cache: Arc<EntryCacheManager>,
}

impl BrokerService {
    /// The schema rules of `topic`: its own policy, its namespace's, the broker's defaults.
    pub fn schema_policy(&self, topic: &TopicName) -> SchemaPolicy {
        let namespace = self.policies.namespace(&topic.namespace_name());
        let base = topic.partition_of().map_or_else(|| topic.clone(), |(partitioned, _)| partitioned);
        let own = self.policies.topic(&base);
        SchemaPolicy::resolve(&self.config.policies, namespace.as_deref(), own.as_deref())
    }

    pub fn new(
        config: BrokerConfig,
        meta: Arc<dyn MetadataStore>,
        ownership: Arc<Ownership>,
        policies: Arc<PolicyCache>,
        security: Security,
    ) -> Arc<Self> {
        let options = magnetar_bookie::client::ClientOptions {
            speculative_read_timeout: config.managed_ledger.speculative_read_timeout,
            ..Default::default()
        };
        let bookies = Bookies::secured_with(meta.clone(), config.bookie_security.clone(), options);
        let schemas = SchemaRegistry::new(meta.clone());
        let entry_cache = EntryCacheManager::new(config.managed_ledger.cache);
        if tokio::runtime::Handle::try_current().is_ok() {
            entry_cache.spawn_sweeper();
        }
        Arc::new(BrokerService {
            config,
            meta,
            bookies,
            metrics: Arc::default(),
            topics: Mutex::new(HashMap::new()),
            non_persistent: Mutex::new(HashMap::new()),
            broker_id: OnceCell::new(),
            shutdown: CancellationToken::new(),
            ownership,
            fatal: CancellationToken::new(),
            policies,
            security,
            schemas,
            local_bookies: Default::default(),
            entry_cache,
        })
    }

    /// The topic, opened (and created) on first use, if this broker owns its bundle (or it
    /// was unowned and is now owned here).
    pub async fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, BrokerError> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        if !name.persistent {
            return Err(BrokerError::NotSupported { what: format!("{name} is non-persistent: it has no stored log") });
        }
        let cell = self.topics.lock().entry(name.clone()).or_default().clone();
        let topic = cell
            .get_or_try_init(|| async {
                let namespace = self.check_topic(name).await?;
                self.check_creation(name, &namespace).await?;
                let bundle = self.ownership.ensure_owned(name).await?;
                let ledger = ManagedLedger::open(
                    &name.persistence_name(),
                    self.bookies.clone(),
                    self.config.ledger,
                    self.config.managed_ledger,
                    &self.entry_cache,
                )
                .await?;
                let limits = self.limits_of(name, Some(&namespace));
                let intervals = PolicingIntervals {
                    backlog_quota: self.config.policies.backlog_quota_check_interval,
                    message_expiry: self.config.policies.message_expiry_check_interval,
                    compaction: self.config.policies.compaction_check_interval,
                };
                let topic = Topic::new(name.clone(), ledger, limits.clone(), intervals);
                topic.compaction().load(&self.bookies, &name.persistence_name()).await?;
                topic.apply_limits(limits, &self.meta).await?;
                if !self.ownership.is_active(&bundle) {
                    // The bundle started moving while the topic opened: hand it over closed.
                    topic.close().await;
                    return Err(BrokerError::ServiceUnitNotReady {
                        what: format!("namespace bundle {bundle} is being unloaded from this broker"),
                    });
                }
                info!(topic = %name, %bundle, "topic loaded");
                Ok::<_, BrokerError>(topic)
            })
            .await?;
        Ok(topic.clone())
    }

    /// The non-persistent topic `name`, served here if this broker owns its bundle; made on
    /// first use where the namespace creates topics automatically.
    pub async fn non_persistent_topic(&self, name: &TopicName) -> Result<Arc<NonPersistentTopic>, BrokerError> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let namespace = self.check_topic(name).await?;
        let bundle = self.ownership.ensure_owned(name).await?;
        let mut topics = self.non_persistent.lock();
        if let Some(topic) = topics.get(name).filter(|topic| !topic.is_closed()) {
            return Ok(topic.clone());
        }
        if tenancy::effective::auto_topic_creation(&self.config.policies, Some(&namespace)).is_none() {
            return Err(BrokerError::TopicNotFound { topic: name.to_string() });
        }
        if !self.ownership.is_active(&bundle) {
            return Err(BrokerError::ServiceUnitNotReady {
                what: format!("namespace bundle {bundle} is being unloaded from this broker"),
            });
        }
        let topic = NonPersistentTopic::new(name.clone());
        topics.insert(name.clone(), topic.clone());
        info!(topic = %name, %bundle, "non-persistent topic loaded");
        Ok(topic)
    }

    /// Drops a non-persistent topic nobody uses any more.
    pub fn release_non_persistent(&self, name: &TopicName) {
        let mut topics = self.non_persistent.lock();
        if topics.get(name).is_some_and(|topic| topic.is_idle()) {
            topics.remove(name);
        }
    }

    pub fn loaded_non_persistent_topics(&self) -> Vec<Arc<NonPersistentTopic>> {
        self.non_persistent.lock().values().cloned().collect()
    }

    pub fn loaded_topics(&self) -> Vec<Arc<Topic>> {
        self.topics.lock().values().filter_map(|cell| cell.get().cloned()).collect()
    }

    /// The namespace's non-persistent topics this broker serves, sorted.
    pub async fn non_persistent_topics_of(&self, namespace: &str) -> Result<Vec<String>, BrokerError> {
        let mut names: Vec<String> = self
            .non_persistent
            .lock()
            .keys()
            .filter(|name| name.namespace_name() == namespace)
            .map(ToString::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Persistent topics of a namespace that exist in metadata, and every partition of its
    /// partitioned topics (created or not yet), as Pulsar lists them; sorted.
    pub async fn topics_of_namespace(&self, namespace: &str) -> Result<Vec<String>, BrokerError> {
        let path = format!("/magnetar/managed-ledgers/{namespace}/persistent");
        let mut topics: std::collections::BTreeSet<String> = self
            .meta
            .list_children(&path)
            .await?
            .into_iter()
            .map(|local| format!("persistent://{namespace}/{local}"))
            .collect();
        for (name, count) in partitions::list(self.meta.as_ref(), namespace).await? {
            let name = TopicName::parse(&name)?;
            topics.extend((0..count).map(|index| partition_topic_name(&name, index)));
        }
        Ok(topics.into_iter().collect())
    }

    /// This broker's id for generated producer names, allocated once per process from the
    /// metadata store so names stay unique across brokers and restarts.
    pub async fn broker_id(&self) -> Result<u64, BrokerError> {
        let id = self
            .broker_id
            .get_or_try_init(|| async { magnetar_meta::sequence::next(self.meta.as_ref(), BROKER_ID_SEQUENCE).await })
            .await?;
        Ok(*id)
    }

    /// Answers a lookup (binary or HTTP) for an existing namespace's topic: this broker, or
    /// a redirect to the owner. Counted in the `pulsar_broker_lookup_*` metrics.
    pub async fn lookup(&self, name: &TopicName, authoritative: bool) -> Result<LookupAnswer, BrokerError> {
        /// Counts a lookup as pending until dropped, also when its caller goes away mid-way
        /// (an HTTP handler is dropped with its connection).
        struct Pending<'a>(&'a std::sync::atomic::AtomicU64);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let metrics = &self.metrics;
        Metrics::add(&metrics.lookup_pending, 1);
        let pending = Pending(&metrics.lookup_pending);
        let answer = async {
            self.check_topic(name).await?;
            self.ownership.lookup(name, authoritative).await
        }
        .await;
        drop(pending);
        let counter = match &answer {
            Ok(LookupAnswer::Connect(_)) => &metrics.lookup_answers,
            Ok(LookupAnswer::Redirect(_)) => &metrics.lookup_redirects,
            Err(_) => &metrics.lookup_failures,
        };
        Metrics::add(counter, 1);
        answer
    }

    pub async fn gauges(&self) -> Gauges {
        let mut gauges = Gauges {
            topic_level: self.config.expose_topic_level_metrics,
            entry_cache: self.entry_cache.stats(),
            ..Gauges::default()
        };
        for topic in self.loaded_topics() {
            let ledger = topic.ledger();
            let (received, (in_messages, in_bytes)) = (topic.received().rates(), topic.received().totals());
            let mut per_topic = TopicGauges {
                namespace: topic.name().namespace_name(),
                topic: topic.name().to_string(),
                topics: 1,
                producers: topic.producer_count() as u64,
                rate_in: received.messages,
                throughput_in: received.bytes,
                in_messages,
                in_bytes,
                storage_size: ledger.storage_stats().size_bytes,
                ..TopicGauges::default()
            };
            (per_topic.write_latency, per_topic.entry_size) = ledger.add_stats();
            let views = topic.subscription_views().await;
            per_topic.backlog_size = topic.backlog_size(&views);
            for view in views {
                let snapshot = &view.snapshot;
                let (out, redelivered) = view
                    .open
                    .as_ref()
                    .map(|open| (open.dispatched().rates(), open.redelivered().rates()))
                    .unwrap_or_default();
                per_topic.consumers += snapshot.consumers.len() as u64;
                per_topic.rate_out += out.messages;
                per_topic.throughput_out += out.bytes;
                if snapshot.durable {
                    per_topic.backlog += snapshot.backlog;
                }
                per_topic.subscriptions.push(SubscriptionGauges {
                    name: view.name,
                    backlog: snapshot.backlog,
                    consumers: snapshot.consumers.len() as u64,
                    unacked: u64::try_from(snapshot.unacked).unwrap_or(0),
                    rate_out: out.messages,
                    rate_redeliver: redelivered.messages,
                    blocked: snapshot.blocked,
                });
            }
            gauges.per_topic.push(per_topic);
        }
        gauges
    }

    /// Closes the loaded topics `filter` picks (waiting for ones still opening), telling their
    /// clients to reconnect; they are opened afresh on next use.
    pub async fn close_topics(&self, filter: impl Fn(&TopicName) -> bool) {
        let non_persistent: Vec<Arc<NonPersistentTopic>> = {
            let mut topics = self.non_persistent.lock();
            let names: Vec<TopicName> = topics.keys().filter(|name| filter(name)).cloned().collect();
            names.into_iter().filter_map(|name| topics.remove(&name)).collect()
        };
        for topic in non_persistent {
            topic.close();
            info!(topic = %topic.name(), "non-persistent topic unloaded");
        }
        let cells: Vec<(TopicName, Arc<OnceCell<Arc<Topic>>>)> = {
            let mut topics = self.topics.lock();
            let names: Vec<TopicName> = topics.keys().filter(|name| filter(name)).cloned().collect();
            names.into_iter().filter_map(|name| topics.remove(&name).map(|cell| (name, cell))).collect()
        };
        for (name, cell) in cells {
            // Waits for an open in progress; a cell nobody filled stays empty.
            if let Ok(topic) = cell.get_or_try_init(|| async { Err(()) }).await {
                topic.close().await;
                info!(topic = %name, "topic unloaded");
            }
        }
    }

    /// Hands a bundle this broker owns to whoever looks it up next: lookups wait, its topics
    /// close (pending publishes answered, acks persisted, clients told to reconnect), then
    /// the ownership key goes.
    pub async fn unload_bundle(&self, bundle: &Bundle) -> Result<(), BrokerError> {
        if !self.ownership.begin_unload(bundle).await {
            return Err(BrokerError::ServiceUnitNotReady {
                what: format!("namespace bundle {bundle} is not owned by this broker"),
            });
        }
        self.close_topics(|name| bundle.contains(name)).await;
        self.ownership.release(bundle).await;
        info!(%bundle, "bundle unloaded");
        Ok(())
    }

    /// Splits a bundle this broker owns into two halves: it is unloaded, the namespace's
    /// layout replaces it by the halves (compare-and-set), and lookups assign the halves anew.
    pub async fn split_bundle(&self, bundle: &Bundle) -> Result<(), BrokerError> {
        let layout = self.ownership.layout(&bundle.namespace).await?;
        layout.split(bundle)?;
        if !self.ownership.is_active(bundle) {
            return Err(BrokerError::ServiceUnitNotReady {
                what: format!("namespace bundle {bundle} is not owned by this broker"),
            });
        }
        if !self.ownership.begin_unload(bundle).await {
            return Err(BrokerError::ServiceUnitNotReady { what: format!("namespace bundle {bundle} is moving") });
        }
        self.close_topics(|name| bundle.contains(name)).await;
        let stored = loop {
            let layout = match self.ownership.layout(&bundle.namespace).await {
                Ok(layout) => layout,
                Err(error) => break Err(error),
            };
            let split = match layout.split(bundle) {
                Ok(split) => split,
                Err(error) => break Err(error),
            };
            match bundles::store_layout(self.meta.as_ref(), &split).await {
                Ok(_) => break Ok(split),
                Err(BrokerError::Meta(magnetar_meta::MetaError::BadVersion { .. })) => continue,
                Err(error) => break Err(error),
            }
        };
        self.ownership.release(bundle).await;
        let split = stored?;
        info!(%bundle, bundles = split.bundles().len(), "bundle split");
        Ok(())
    }

    /// Graceful shutdown: no new bundles come here, every owned bundle is unloaded (clients
    /// move to other brokers without errors), then the remaining topics close.
    pub async fn drain(&self) {
        self.ownership.start_draining();
        load_report::withdraw(self.meta.as_ref(), &self.ownership.me().broker).await;
        for bundle in self.ownership.owned_bundles() {
            if let Err(error) = self.unload_bundle(&bundle).await {
                warn!(%bundle, %error, "unloading at shutdown");
            }
        }
        self.close_all_topics().await;
        if let Err(error) = self.meta.close_session(self.ownership.session()).await {
            warn!(%error, "closing the broker's metadata session (its keys expire with it)");
        }
    }

    /// Closes every topic: cursors flushed, ledgers closed, clients told.
    pub async fn close_all_topics(&self) {
        self.shutdown.cancel();
        self.close_topics(|_| true).await;
    }
}

/// The load manager drives this broker through [`BundleControl`] only.
impl BundleControl for BrokerService {
    fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    fn loaded_topics(&self) -> Vec<Arc<Topic>> {
        BrokerService::loaded_topics(self)
    }

    async fn unload_bundle(&self, bundle: &Bundle) -> Result<(), BrokerError> {
        BrokerService::unload_bundle(self, bundle).await
    }

    async fn split_bundle(&self, bundle: &Bundle) -> Result<(), BrokerError> {
        BrokerService::split_bundle(self, bundle).await
    }

    fn session_expired(&self) {
        self.fatal.cancel();
    }
}
