//! The broker's shared state: topics by name, the stores, the counters.
//!
//! Topics open on first use (auto-creation, as in Pulsar) exactly once even when many
//! connections ask at the same moment: each name maps to a cell that one opener fills.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use magnetar_bookie::client::Bookies;
use magnetar_meta::MetadataStore;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::managed_ledger::ManagedLedger;
use crate::metrics::{Gauges, Metrics, TopicGauges};
use crate::namespace;
use crate::topic::Topic;
use crate::topic_name::TopicName;

pub struct BrokerService {
    pub config: BrokerConfig,
    pub meta: Arc<dyn MetadataStore>,
    pub bookies: Bookies,
    pub metrics: Arc<Metrics>,
    topics: Mutex<HashMap<TopicName, Arc<OnceCell<Arc<Topic>>>>>,
    /// Fired when the broker starts shutting down.
    pub shutdown: CancellationToken,
}

impl BrokerService {
    pub fn new(config: BrokerConfig, meta: Arc<dyn MetadataStore>) -> Arc<Self> {
        let bookies = Bookies::new(meta.clone());
        Arc::new(BrokerService {
            config,
            meta,
            bookies,
            metrics: Arc::default(),
            topics: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        })
    }

    /// Checks that a topic may be served here: persistent, in an existing namespace.
    pub async fn check_topic(&self, name: &TopicName) -> Result<(), BrokerError> {
        if !name.persistent {
            return Err(BrokerError::NotSupported { what: "non-persistent topics".to_owned() });
        }
        if !namespace::namespace_exists(self.meta.as_ref(), &name.namespace_name()).await? {
            return Err(BrokerError::NamespaceNotFound { namespace: name.namespace_name() });
        }
        Ok(())
    }

    /// The topic, opened (and created) on first use.
    pub async fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, BrokerError> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let cell = self.topics.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default().clone();
        let topic = cell
            .get_or_try_init(|| async {
                self.check_topic(name).await?;
                let ledger = ManagedLedger::open(
                    &name.persistence_name(),
                    self.bookies.clone(),
                    self.config.ledger,
                    self.config.managed_ledger,
                )
                .await?;
                info!(topic = %name, "topic loaded");
                Ok::<_, BrokerError>(Topic::new(name.clone(), ledger))
            })
            .await?;
        Ok(topic.clone())
    }

    pub fn loaded_topics(&self) -> Vec<Arc<Topic>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner()).values().filter_map(|cell| cell.get().cloned()).collect()
    }

    /// Persistent topics of a namespace that exist in metadata.
    pub async fn topics_of_namespace(&self, namespace: &str) -> Result<Vec<String>, BrokerError> {
        let path = format!("/magnetar/managed-ledgers/{namespace}/persistent");
        Ok(self
            .meta
            .list_children(&path)
            .await?
            .into_iter()
            .map(|local| format!("persistent://{namespace}/{local}"))
            .collect())
    }

    pub async fn gauges(&self) -> Gauges {
        let mut gauges = Gauges::default();
        for topic in self.loaded_topics() {
            gauges.topics += 1;
            gauges.producers += topic.producer_count() as u64;
            for subscription in topic.subscriptions().await {
                gauges.consumers += u64::from(subscription.has_consumer());
            }
            let ledger = topic.ledger();
            let mut per_topic = TopicGauges {
                namespace: topic.name().namespace_name(),
                topic: topic.name().to_string(),
                storage_size: ledger.storage_stats().size_bytes,
                ..TopicGauges::default()
            };
            // Every durable cursor counts, attached to a consumer or not.
            for (name, cursor) in ledger.cursors() {
                let backlog = cursor.backlog(ledger);
                gauges.subscriptions += 1;
                per_topic.backlog += backlog;
                per_topic.subscriptions.push((name, backlog));
            }
            gauges.backlog += per_topic.backlog;
            gauges.per_topic.push(per_topic);
        }
        gauges
    }

    /// Closes every topic: cursors flushed, ledgers closed.
    pub async fn close_all_topics(&self) {
        self.shutdown.cancel();
        let topics: Vec<_> = self
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .filter_map(|(_, c)| c.get().cloned())
            .collect();
        for topic in topics {
            topic.close().await;
        }
    }
}
