//! What applies to one topic: its own policies over its namespace's over the broker's
//! defaults ([`PolicyDefaults`], Pulsar's broker.conf names), resolved into plain limits
//! ([`TopicLimits`]) that the topic, its producers and its subscriptions enforce.

use std::time::Duration;

use super::model::{
    BacklogQuota, DispatchRate, InactiveTopicDeleteMode, Policies, PublishRate, RetentionPolicies, RetentionPolicy,
    TopicPolicies,
};
use crate::managed_ledger::config::Retention;

/// How a topic is created on first use when auto-creation allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoTopicType {
    NonPartitioned,
    /// A partitioned topic with this many partitions.
    Partitioned(u32),
}

/// The broker's policy defaults, each under Pulsar's broker.conf name; a namespace or topic
/// policy overrides them. 0 means "no limit" where Pulsar says so.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDefaults {
    /// `allowAutoTopicCreation` (true).
    pub allow_auto_topic_creation: bool,
    /// `allowAutoTopicCreationType` + `defaultNumPartitions` (non-partitioned).
    pub auto_topic_type: AutoTopicType,
    /// `brokerDeduplicationEnabled` (false).
    pub deduplication_enabled: bool,
    /// `ttlDurationDefaultInSeconds` (0: none).
    pub message_ttl_seconds: u64,
    /// `backlogQuotaDefaultLimitBytes` (-1: none; Pulsar's `backlogQuotaDefaultLimitGB` sets
    /// it too).
    pub backlog_quota_limit_bytes: i64,
    /// `backlogQuotaDefaultLimitSecond` (-1: none).
    pub backlog_quota_limit_seconds: i64,
    /// `backlogQuotaDefaultRetentionPolicy` (producer_request_hold).
    pub backlog_quota_policy: RetentionPolicy,
    /// `maxProducersPerTopic` (0: no limit).
    pub max_producers_per_topic: u32,
    /// `maxConsumersPerTopic` (0: no limit).
    pub max_consumers_per_topic: u32,
    /// `maxConsumersPerSubscription` (0: no limit).
    pub max_consumers_per_subscription: u32,
    /// `maxUnackedMessagesPerConsumer` (50000; 0: no limit).
    pub max_unacked_messages_per_consumer: u32,
    /// `maxUnackedMessagesPerSubscription` (200000; 0: no limit).
    pub max_unacked_messages_per_subscription: u32,
    /// `maxSubscriptionsPerTopic` (0: no limit).
    pub max_subscriptions_per_topic: u32,
    /// `maxTopicsPerNamespace` (0: no limit).
    pub max_topics_per_namespace: u32,
    /// `dispatchThrottlingRatePerTopicInMsg` / `...InByte` (0: none).
    pub dispatch_rate_per_topic: Rate,
    /// `dispatchThrottlingRatePerSubscriptionInMsg` / `...InByte` (0: none).
    pub dispatch_rate_per_subscription: Rate,
    /// `subscriptionExpirationTimeMinutes` (0: never).
    pub subscription_expiration_minutes: u64,
    /// `dispatcherMaxReadBatchSize` (100): most entries a subscription reads at a time (fewer
    /// when its consumers have fewer permits).
    pub dispatcher_max_read_batch_size: u32,
    /// `backlogQuotaCheckIntervalInSeconds` (60): how often a topic measures its backlog
    /// against its quotas (a new producer and each send check the size quota at once).
    pub backlog_quota_check_interval: Duration,
    /// `messageExpiryCheckIntervalInMinutes` (5): how often message TTL expires messages.
    pub message_expiry_check_interval: Duration,
    /// `brokerDeleteInactiveTopicsFrequencySeconds` (60): how often inactive topics are looked
    /// for.
    pub inactive_topic_check_interval: Duration,
    /// `brokerServiceCompactionThresholdInBytes` (0: no automatic compaction).
    pub compaction_threshold_bytes: u64,
    /// `brokerServiceCompactionMonitorIntervalInSeconds`.
    pub compaction_check_interval: Duration,
    /// `brokerDeleteInactiveTopicsEnabled` (false here; Pulsar's default is true) with
    /// `brokerDeleteInactiveTopicsMode` and `brokerDeleteInactiveTopicsMaxInactiveDurationSeconds`.
    pub delete_inactive_topics: Option<InactiveRule>,
    /// `schemaCompatibilityStrategy` (FULL).
    pub schema_compatibility_strategy: crate::schema::Strategy,
    /// `isAllowAutoUpdateSchemaEnabled` (true).
    pub allow_auto_update_schema: bool,
    /// `isSchemaValidationEnforced` (false).
    pub schema_validation_enforced: bool,
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        PolicyDefaults {
            allow_auto_topic_creation: true,
            auto_topic_type: AutoTopicType::NonPartitioned,
            deduplication_enabled: false,
            message_ttl_seconds: 0,
            backlog_quota_limit_bytes: -1,
            backlog_quota_limit_seconds: -1,
            backlog_quota_policy: RetentionPolicy::ProducerRequestHold,
            max_producers_per_topic: 0,
            max_consumers_per_topic: 0,
            max_consumers_per_subscription: 0,
            max_unacked_messages_per_consumer: 50_000,
            max_unacked_messages_per_subscription: 200_000,
            max_subscriptions_per_topic: 0,
            max_topics_per_namespace: 0,
            dispatch_rate_per_topic: Rate::NONE,
            dispatch_rate_per_subscription: Rate::NONE,
            subscription_expiration_minutes: 0,
            dispatcher_max_read_batch_size: crate::dispatcher::MAX_READ_BATCH,
            backlog_quota_check_interval: Duration::from_secs(60),
            message_expiry_check_interval: Duration::from_secs(5 * 60),
            inactive_topic_check_interval: Duration::from_secs(60),
            compaction_threshold_bytes: 0,
            compaction_check_interval: Duration::from_secs(60),
            delete_inactive_topics: None,
            schema_compatibility_strategy: crate::schema::Strategy::Full,
            allow_auto_update_schema: true,
            schema_validation_enforced: false,
        }
    }
}

/// A rate limit: messages and bytes per period; `None` parts do not limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub messages: Option<u64>,
    pub bytes: Option<u64>,
    pub period: Duration,
}

impl Rate {
    pub const NONE: Rate = Rate { messages: None, bytes: None, period: Duration::from_secs(1) };

    pub fn is_limited(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }

    fn positive(value: i64) -> Option<u64> {
        u64::try_from(value).ok().filter(|value| *value > 0)
    }

    pub fn of_publish(rate: &PublishRate) -> Rate {
        Rate {
            messages: Rate::positive(i64::from(rate.publish_throttling_rate_in_msg)),
            bytes: Rate::positive(rate.publish_throttling_rate_in_byte),
            period: Duration::from_secs(1),
        }
    }

    pub fn of_dispatch(rate: &DispatchRate) -> Rate {
        Rate {
            messages: Rate::positive(i64::from(rate.dispatch_throttling_rate_in_msg)),
            bytes: Rate::positive(rate.dispatch_throttling_rate_in_byte),
            period: Duration::from_secs(u64::try_from(rate.rate_period_in_second).unwrap_or(1).max(1)),
        }
    }
}

/// When a topic nobody uses is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InactiveRule {
    pub mode: InactiveTopicDeleteMode,
    pub after: Duration,
}

/// A backlog quota as enforced: the limits and what happens beyond them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub size_bytes: Option<u64>,
    pub age: Option<Duration>,
    pub policy: RetentionPolicy,
}

/// Everything that limits one topic, resolved. `None` means no limit.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicLimits {
    pub deduplication: bool,
    pub message_ttl: Option<Duration>,
    /// The namespace's or topic's retention; none keeps the broker's
    /// (`defaultRetentionTimeInMinutes`/`...SizeInMB`, in the managed ledger settings).
    pub retention: Option<Retention>,
    /// The size quota (`destination_storage`) and the age quota (`message_age`).
    pub backlog_quota: Vec<Quota>,
    pub max_producers: Option<u32>,
    pub max_consumers: Option<u32>,
    pub max_consumers_per_subscription: Option<u32>,
    pub max_unacked_per_consumer: Option<u32>,
    pub max_unacked_per_subscription: Option<u32>,
    pub max_subscriptions: Option<u32>,
    pub publish_rate: Rate,
    pub dispatch_rate: Rate,
    pub subscription_dispatch_rate: Rate,
    pub subscription_expiration: Option<Duration>,
    /// Most entries a subscription reads at a time (the broker's `dispatcherMaxReadBatchSize`).
    pub read_batch: u32,
    pub inactive: Option<InactiveRule>,
    /// The topic's own message size limit, below the broker's `maxMessageSize`.
    pub max_message_size: Option<usize>,
    /// Bytes not yet compacted beyond which the topic is compacted (0: never).
    pub compaction_threshold: u64,
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits::resolve(&PolicyDefaults::default(), None, None, "")
    }
}

/// A count limit: `0` is none.
fn limit(value: Option<i32>, default: u32) -> Option<u32> {
    let value = value.map_or(default, |value| u32::try_from(value).unwrap_or(0));
    (value > 0).then_some(value)
}

fn retention_of(policies: &RetentionPolicies) -> Retention {
    let minutes = policies.retention_time_in_minutes;
    let megabytes = policies.retention_size_in_mb;
    Retention {
        time: (minutes >= 0).then(|| Duration::from_secs(minutes as u64 * 60)),
        size_bytes: (megabytes >= 0).then(|| megabytes as u64 * 1024 * 1024),
    }
}

fn quota_of(quota: &BacklogQuota) -> Quota {
    Quota { size_bytes: quota.size_limit(), age: quota.time_limit().map(Duration::from_secs), policy: quota.policy }
}

impl TopicLimits {
    /// The limits of a topic of a namespace with `namespace` policies (none: not known) and
    /// its own `topic` policies, in cluster `cluster` (whose entries of per-cluster maps
    /// apply).
    pub fn resolve(
        defaults: &PolicyDefaults,
        namespace: Option<&Policies>,
        topic: Option<&TopicPolicies>,
        cluster: &str,
    ) -> TopicLimits {
        let ns = |get: fn(&Policies) -> Option<i32>| namespace.and_then(get);
        let own = |get: fn(&TopicPolicies) -> Option<i32>| topic.and_then(get);

        let mut backlog_quota = Vec::new();
        let quota_map = topic
            .map(|t| &t.back_log_quota_map)
            .filter(|map| !map.is_empty())
            .or(namespace.map(|n| &n.backlog_quota_map).filter(|map| !map.is_empty()));
        match quota_map {
            Some(map) => backlog_quota.extend(map.values().map(quota_of)),
            None => {
                let size = u64::try_from(defaults.backlog_quota_limit_bytes).ok().filter(|b| *b > 0);
                let age = u64::try_from(defaults.backlog_quota_limit_seconds).ok().filter(|s| *s > 0);
                if size.is_some() || age.is_some() {
                    backlog_quota.push(Quota {
                        size_bytes: size,
                        age: age.map(Duration::from_secs),
                        policy: defaults.backlog_quota_policy,
                    });
                }
            }
        }

        let message_ttl = own(|t| t.message_ttl_in_seconds)
            .or(ns(|n| n.message_ttl_in_seconds))
            .map_or(defaults.message_ttl_seconds, |seconds| u64::try_from(seconds).unwrap_or(0));
        let retention = topic
            .and_then(|t| t.retention_policies.as_ref())
            .or(namespace.and_then(|n| n.retention_policies.as_ref()))
            .map(retention_of);
        let publish_rate = topic
            .and_then(|t| t.publish_rate.as_ref())
            .or(namespace.and_then(|n| n.publish_max_message_rate.get(cluster)))
            .map_or(Rate::NONE, Rate::of_publish);
        let dispatch_rate = topic
            .and_then(|t| t.dispatch_rate.as_ref())
            .or(namespace.and_then(|n| n.topic_dispatch_rate.get(cluster)))
            .map_or(defaults.dispatch_rate_per_topic, Rate::of_dispatch);
        let subscription_dispatch_rate = topic
            .and_then(|t| t.subscription_dispatch_rate.as_ref())
            .or(namespace.and_then(|n| n.subscription_dispatch_rate.get(cluster)))
            .map_or(defaults.dispatch_rate_per_subscription, Rate::of_dispatch);
        let expiration = ns(|n| n.subscription_expiration_time_minutes)
            .map_or(defaults.subscription_expiration_minutes, |minutes| u64::try_from(minutes).unwrap_or(0));
        let inactive = match topic
            .and_then(|t| t.inactive_topic_policies.as_ref())
            .or(namespace.and_then(|n| n.inactive_topic_policies.as_ref()))
        {
            Some(policies) if policies.delete_while_inactive => Some(InactiveRule {
                mode: policies.inactive_topic_delete_mode,
                after: Duration::from_secs(u64::try_from(policies.max_inactive_duration_seconds).unwrap_or(0)),
            }),
            Some(_) => None,
            None => defaults.delete_inactive_topics,
        };
        let max_message_size =
            topic.and_then(|t| t.max_message_size).and_then(|size| usize::try_from(size).ok()).filter(|size| *size > 0);
        TopicLimits {
            deduplication: topic
                .and_then(|t| t.deduplication_enabled)
                .or(namespace.and_then(|n| n.deduplication_enabled))
                .unwrap_or(defaults.deduplication_enabled),
            message_ttl: (message_ttl > 0).then(|| Duration::from_secs(message_ttl)),
            retention,
            backlog_quota,
            max_producers: limit(
                own(|t| t.max_producer_per_topic).or(ns(|n| n.max_producers_per_topic)),
                defaults.max_producers_per_topic,
            ),
            max_consumers: limit(
                own(|t| t.max_consumer_per_topic).or(ns(|n| n.max_consumers_per_topic)),
                defaults.max_consumers_per_topic,
            ),
            max_consumers_per_subscription: limit(
                own(|t| t.max_consumers_per_subscription).or(ns(|n| n.max_consumers_per_subscription)),
                defaults.max_consumers_per_subscription,
            ),
            max_unacked_per_consumer: limit(
                own(|t| t.max_unacked_messages_on_consumer).or(ns(|n| n.max_unacked_messages_per_consumer)),
                defaults.max_unacked_messages_per_consumer,
            ),
            max_unacked_per_subscription: limit(
                own(|t| t.max_unacked_messages_on_subscription).or(ns(|n| n.max_unacked_messages_per_subscription)),
                defaults.max_unacked_messages_per_subscription,
            ),
            max_subscriptions: limit(
                own(|t| t.max_subscriptions_per_topic).or(ns(|n| n.max_subscriptions_per_topic)),
                defaults.max_subscriptions_per_topic,
            ),
            publish_rate,
            dispatch_rate,
            subscription_dispatch_rate,
            subscription_expiration: (expiration > 0).then(|| Duration::from_secs(expiration * 60)),
            read_batch: defaults.dispatcher_max_read_batch_size.max(1),
            inactive,
            max_message_size,
            compaction_threshold: topic
                .and_then(|t| t.compaction_threshold)
                .or(namespace.and_then(|n| n.compaction_threshold))
                .map_or(defaults.compaction_threshold_bytes, |bytes| u64::try_from(bytes).unwrap_or(0)),
        }
    }
}

/// Whether and how a namespace creates topics on first use.
pub fn auto_topic_creation(defaults: &PolicyDefaults, namespace: Option<&Policies>) -> Option<AutoTopicType> {
    match namespace.and_then(|n| n.auto_topic_creation_override.as_ref()) {
        Some(rule) if !rule.allow_auto_topic_creation => None,
        Some(rule) => Some(match rule.topic_type.as_deref() {
            Some("partitioned") => AutoTopicType::Partitioned(
                rule.default_num_partitions.and_then(|n| u32::try_from(n).ok()).unwrap_or(1).max(1),
            ),
            _ => AutoTopicType::NonPartitioned,
        }),
        None => defaults.allow_auto_topic_creation.then_some(defaults.auto_topic_type),
    }
}

/// The most topics a namespace may have (none: no limit).
pub fn max_topics(defaults: &PolicyDefaults, namespace: Option<&Policies>) -> Option<u32> {
    limit(namespace.and_then(|n| n.max_topics_per_namespace), defaults.max_topics_per_namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_policy_overrides_its_namespace_which_overrides_the_broker() {
        let defaults =
            PolicyDefaults { max_producers_per_topic: 10, message_ttl_seconds: 30, ..PolicyDefaults::default() };
        let none = TopicLimits::resolve(&defaults, None, None, "c");
        assert_eq!((none.max_producers, none.message_ttl), (Some(10), Some(Duration::from_secs(30))));
        let namespace =
            Policies { max_producers_per_topic: Some(2), message_ttl_in_seconds: Some(0), ..Policies::default() };
        let ns = TopicLimits::resolve(&defaults, Some(&namespace), None, "c");
        assert_eq!((ns.max_producers, ns.message_ttl), (Some(2), None), "0 in a policy means none");
        let topic = TopicPolicies { max_producer_per_topic: Some(1), ..TopicPolicies::default() };
        assert_eq!(TopicLimits::resolve(&defaults, Some(&namespace), Some(&topic), "c").max_producers, Some(1));
        assert_eq!(ns.max_unacked_per_consumer, Some(50_000), "unset keeps the broker default");
    }

    #[test]
    fn per_cluster_rates_and_auto_creation_resolve() {
        let mut namespace = Policies::default();
        namespace.publish_max_message_rate.insert(
            "c".to_owned(),
            PublishRate { publish_throttling_rate_in_msg: 100, publish_throttling_rate_in_byte: -1 },
        );
        let limits = TopicLimits::resolve(&PolicyDefaults::default(), Some(&namespace), None, "c");
        assert_eq!((limits.publish_rate.messages, limits.publish_rate.bytes), (Some(100), None));
        assert!(!TopicLimits::resolve(&PolicyDefaults::default(), Some(&namespace), None, "other")
            .publish_rate
            .is_limited());
        namespace.auto_topic_creation_override = Some(super::super::model::AutoTopicCreationOverride {
            allow_auto_topic_creation: false,
            topic_type: None,
            default_num_partitions: None,
        });
        assert_eq!(auto_topic_creation(&PolicyDefaults::default(), Some(&namespace)), None);
        assert_eq!(auto_topic_creation(&PolicyDefaults::default(), None), Some(AutoTopicType::NonPartitioned));
    }
}
