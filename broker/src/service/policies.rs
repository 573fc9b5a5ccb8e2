//! A topic's place in its tenant and namespace at this broker: may it be served here, may it
//! be created on first use, what limits it, and applying a policy change to the topics it
//! concerns.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::BrokerService;
use crate::error::BrokerError;
use crate::managed_ledger::info_path;
use crate::partitions;
use crate::tenancy::cache::Change;
use crate::tenancy::effective::{self, AutoTopicType};
use crate::tenancy::model::{InactiveTopicDeleteMode, Policies};
use crate::tenancy::TopicLimits;
use crate::topic_name::TopicName;

impl BrokerService {
    /// Checks that a topic may be served here: its tenant exists and allows this cluster,
    /// its namespace exists. Answers the namespace's policies.
    pub async fn check_topic(&self, name: &TopicName) -> Result<Arc<Policies>, BrokerError> {
        let namespace = name.namespace_name();
        let tenant = match self.policies.existing_tenant(&name.tenant).await {
            Ok(tenant) => tenant,
            Err(BrokerError::NotFound { .. }) => return Err(BrokerError::NamespaceNotFound { namespace }),
            Err(error) => return Err(error),
        };
        if !tenant.allowed_clusters.contains(&self.config.cluster_name) {
            return Err(BrokerError::NotAllowed {
                what: format!(
                    "tenant {} is not allowed on cluster {} (its allowedClusters: {:?})",
                    name.tenant, self.config.cluster_name, tenant.allowed_clusters
                ),
            });
        }
        self.policies.existing_namespace(&namespace).await
    }

    /// Whether `name` exists: its ledger list is stored, or it is a partition of a
    /// partitioned topic.
    pub async fn topic_exists(&self, name: &TopicName) -> Result<bool, BrokerError> {
        if self.meta.get(&info_path(&name.persistence_name())).await?.is_some() {
            return Ok(true);
        }
        if let Some((base, index)) = name.partition_of() {
            if let Some(count) = partitions::get(self.meta.as_ref(), &base).await? {
                return Ok(index < count);
            }
        }
        Ok(false)
    }

    /// Refuses to create `name` on first use where its namespace does not create topics
    /// automatically (TopicNotFound, as Pulsar answers) or already holds its most topics.
    pub(crate) async fn check_creation(&self, name: &TopicName, namespace: &Policies) -> Result<(), BrokerError> {
        if self.topic_exists(name).await? {
            return Ok(());
        }
        if effective::auto_topic_creation(&self.config.policies, Some(namespace)).is_none() {
            return Err(BrokerError::TopicNotFound { topic: name.to_string() });
        }
        self.check_max_topics(&name.namespace_name(), namespace, 1).await
    }

    /// Refuses `adding` more topics where the namespace's `max_topics_per_namespace` (or the
    /// broker's `maxTopicsPerNamespace`) would be passed.
    pub(crate) async fn check_max_topics(
        &self,
        namespace: &str,
        policies: &Policies,
        adding: u32,
    ) -> Result<(), BrokerError> {
        let Some(max) = effective::max_topics(&self.config.policies, Some(policies)) else { return Ok(()) };
        let count = self.topics_of_namespace(namespace).await?.len();
        if count + adding as usize > max as usize {
            return Err(BrokerError::NotAllowed {
                what: format!("Exceed maximum number of topics in namespace {namespace}: {count} of {max}"),
            });
        }
        Ok(())
    }

    /// A topic's partition count for PARTITIONED_METADATA (0: not partitioned). An unknown
    /// topic in a namespace that creates partitioned topics automatically is created here with
    /// the default count, as Pulsar does.
    ///
    /// With `auto_create` false (a client that asked for metadata without auto-creation,
    /// Pulsar's PIP-344), a topic that does not exist is TopicNotFound and nothing is created.
    pub async fn partitioned_metadata(&self, name: &TopicName, auto_create: bool) -> Result<u32, BrokerError> {
        let namespace = self.check_topic(name).await?;
        if !name.persistent {
            // Partitioned non-persistent topics are not supported: every one is a topic.
            return Ok(0);
        }
        if let Some(count) = partitions::get(self.meta.as_ref(), name).await? {
            return Ok(count);
        }
        if name.partition_of().is_some() || self.topic_exists(name).await? {
            return Ok(0);
        }
        if !auto_create {
            return Err(BrokerError::TopicNotFound { topic: name.to_string() });
        }
        match effective::auto_topic_creation(&self.config.policies, Some(&namespace)) {
            Some(AutoTopicType::Partitioned(count)) => {
                self.check_max_topics(&name.namespace_name(), &namespace, count).await?;
                match partitions::create(self.meta.as_ref(), name, count).await {
                    Ok(()) | Err(BrokerError::AlreadyExists { .. }) => {
                        Ok(partitions::get(self.meta.as_ref(), name).await?.unwrap_or(count))
                    }
                    Err(error) => Err(error),
                }
            }
            // Created (or refused) when a producer or consumer opens it.
            _ => Ok(0),
        }
    }

    /// The limits `name` is held to now.
    pub fn limits_of(&self, name: &TopicName, namespace: Option<&Policies>) -> TopicLimits {
        // A partition takes its partitioned topic's policies unless it has its own.
        let own =
            self.policies.topic(name).or_else(|| name.partition_of().and_then(|(base, _)| self.policies.topic(&base)));
        TopicLimits::resolve(&self.config.policies, namespace, own.as_deref(), &self.config.cluster_name)
    }

    /// Applies a policy change to the loaded topics it concerns; waits until they hold it.
    pub async fn apply_policy_change(&self, change: &Change) {
        let (namespace, only) = match change {
            Change::Namespace(namespace) => (namespace, None),
            Change::Topic { namespace, topic } => (namespace, Some(topic)),
            Change::Tenant(_) => return,
        };
        let policies = self.policies.namespace(namespace);
        for topic in self.loaded_topics() {
            if topic.name().namespace_name() != *namespace {
                continue;
            }
            let concerned = |only: &String| {
                *only == topic.name().to_string()
                    || topic.name().partition_of().is_some_and(|(base, _)| *only == base.to_string())
            };
            if only.is_some_and(|only| !concerned(only)) {
                continue;
            }
            let limits = self.limits_of(topic.name(), policies.as_deref());
            if let Err(error) = topic.apply_limits(limits, &self.meta).await {
                warn!(topic = %topic.name(), %error, "applying a policy change failed");
            }
        }
    }

    /// Applies every namespace's current policies to its loaded topics (after missed changes).
    async fn apply_all(&self) {
        let mut namespaces: Vec<String> = self.loaded_topics().iter().map(|t| t.name().namespace_name()).collect();
        namespaces.sort();
        namespaces.dedup();
        for namespace in namespaces {
            self.apply_policy_change(&Change::Namespace(namespace)).await;
        }
    }
}

/// Deletes loaded topics that stayed inactive past their rule (Pulsar's inactive topic
/// policies): no producer and no consumer for the rule's time, and no subscription
/// (`delete_when_no_subscriptions`) or every subscription caught up
/// (`delete_when_subscriptions_caught_up`). Partitions are left to their partitioned topic.
pub fn spawn_inactive_topic_reaper(service: Arc<BrokerService>, cancel: CancellationToken) {
    let interval = service.config.policies.inactive_topic_check_interval;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            for topic in service.loaded_topics() {
                let Some(rule) = topic.limits().inactive else { continue };
                if topic.name().partition_of().is_some() || topic.inactive_for().await < rule.after {
                    continue;
                }
                let ledger = topic.ledger();
                let eligible = match rule.mode {
                    InactiveTopicDeleteMode::DeleteWhenNoSubscriptions => ledger.cursors().is_empty(),
                    InactiveTopicDeleteMode::DeleteWhenSubscriptionsCaughtUp => {
                        ledger.cursors().iter().all(|(_, cursor)| cursor.backlog(ledger) == 0)
                    }
                };
                if !eligible {
                    continue;
                }
                let name = topic.name().clone();
                match service.delete_topic(&name, false).await {
                    Ok(()) => tracing::info!(topic = %name, after = ?rule.after, "inactive topic deleted"),
                    Err(error) => warn!(topic = %name, %error, "deleting an inactive topic failed"),
                }
            }
        }
    });
}

/// Applies every policy change the cache announces to the loaded topics, until `cancel`.
pub fn spawn_policy_applier(service: Arc<BrokerService>, cancel: CancellationToken) {
    let mut changes = service.policies.changes();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                change = changes.recv() => match change {
                    Ok(change) => service.apply_policy_change(&change).await,
                    Err(RecvError::Lagged(_)) => service.apply_all().await,
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
}
