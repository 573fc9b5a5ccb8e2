//! The policies a topic enforces on itself, on a timer and on each publish: backlog quotas
//! (`producer_exception` refuses new producers and sends, `producer_request_hold` holds sends
//! until the backlog shrinks, `consumer_backlog_eviction` drops the oldest messages of the
//! subscriptions that hold too much), message TTL (messages older than it leave every
//! subscription's backlog), and the publish rate ([`Throttle`]).
//!
//! The size of a backlog is the bytes after the slowest durable subscription's mark-delete
//! position (estimated within a ledger from its average entry size, as Pulsar does); its age
//! is the publish time of the first message after it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use magnetar_proto::clock::now_ms;
use tracing::{info, warn};

use super::Topic;
use crate::error::BrokerError;
use crate::managed_ledger::Position;
use crate::subscription::start::{first_publish_time, published_before};
use crate::tenancy::effective::Quota;
use crate::tenancy::model::RetentionPolicy;
use crate::tenancy::TopicLimits;

/// Entries message TTL and age eviction scan per subscription per round.
const EXPIRY_SCAN_BUDGET: u32 = 10_000;
/// How often a held send looks at the backlog again.
const HOLD_RECHECK: Duration = Duration::from_millis(100);

/// A backlog quota's answer to a send.
#[derive(Debug)]
pub enum QuotaVerdict {
    Admit,
    /// `producer_exception`: the send fails.
    Refuse(BrokerError),
    /// `producer_request_hold`: the send waits ([`Topic::wait_out_hold`]).
    Hold,
}

/// How often the topic's timer runs its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicingIntervals {
    pub backlog_quota: Duration,
    pub message_expiry: Duration,
    /// The compaction threshold check.
    pub compaction: Duration,
}

impl Topic {
    /// The mark-delete positions of every durable subscription, by name (the live state of
    /// loaded ones).
    fn cursor_marks(&self) -> Vec<(String, Option<Position>)> {
        // The compaction cursor is not a subscription's: quotas and TTL leave it alone.
        self.ledger()
            .cursors()
            .into_iter()
            .filter(|(name, _)| name != crate::compaction::COMPACTION_CURSOR)
            .map(|(name, cursor)| (name, cursor.summary().0))
            .collect()
    }

    /// Starts a compaction when the bytes after the last compaction's horizon pass the
    /// topic's compaction threshold (Pulsar's `compaction-threshold`).
    fn check_compaction_threshold(self: &Arc<Self>) {
        let threshold = self.limits().compaction_threshold;
        if threshold == 0 {
            return;
        }
        let horizon = self.compaction().current().map(|view| view.horizon());
        let uncompacted = self.ledger().bytes_after(horizon);
        if uncompacted > threshold && !self.compaction().is_running() {
            info!(topic = %self.name(), uncompacted, threshold, "compaction threshold passed; compacting");
            let _ = self.trigger_compaction();
        }
    }

    /// Bytes of backlog of the slowest durable subscription (0 without one).
    pub fn backlog_bytes(&self) -> u64 {
        self.cursor_marks().into_iter().map(|(_, mark)| self.ledger().bytes_after(mark)).max().unwrap_or(0)
    }

    /// The quota exceeded now, measuring the size at once and taking the age from the last
    /// timed check.
    fn exceeded_quota(&self, limits: &TopicLimits) -> Option<Quota> {
        // Measured once, and only if a size quota asks for it.
        let backlog = std::cell::OnceCell::new();
        let size_over =
            |quota: &Quota| quota.size_bytes.is_some_and(|limit| *backlog.get_or_init(|| self.backlog_bytes()) > limit);
        let age_over = |quota: &Quota| quota.age.is_some() && *self.age_exceeded.lock() == Some(quota.policy);
        limits.backlog_quota.iter().find(|quota| size_over(quota) || age_over(quota)).copied()
    }

    /// Refuses a new producer while a `producer_exception` quota is exceeded.
    pub fn admit_producer(&self) -> Result<(), BrokerError> {
        match self.exceeded_quota(&self.limits()) {
            Some(Quota { policy: RetentionPolicy::ProducerException, .. }) => {
                Err(BrokerError::BacklogQuotaExceeded { topic: self.name().to_string() })
            }
            _ => Ok(()),
        }
    }

    /// What the backlog quota says of a send now.
    pub fn quota_verdict(&self) -> QuotaVerdict {
        match self.exceeded_quota(&self.limits()) {
            Some(Quota { policy: RetentionPolicy::ProducerException, .. }) => {
                QuotaVerdict::Refuse(BrokerError::BacklogQuotaExceeded { topic: self.name().to_string() })
            }
            Some(Quota { policy: RetentionPolicy::ProducerRequestHold, .. }) => QuotaVerdict::Hold,
            _ => QuotaVerdict::Admit,
        }
    }

    /// Waits while a `producer_request_hold` quota holds sends (until consumers catch up);
    /// an error if the quota turned into `producer_exception` or the topic closed meanwhile.
    pub async fn wait_out_hold(&self) -> Result<(), BrokerError> {
        let mut logged = false;
        loop {
            if self.is_fenced() {
                return Err(BrokerError::TopicFenced { topic: self.name().to_string() });
            }
            match self.quota_verdict() {
                QuotaVerdict::Admit => return Ok(()),
                QuotaVerdict::Refuse(error) => return Err(error),
                QuotaVerdict::Hold => {
                    if !logged {
                        info!(topic = %self.name(), "backlog quota exceeded: holding sends until consumers catch up");
                        logged = true;
                    }
                    tokio::time::sleep(HOLD_RECHECK).await;
                }
            }
        }
    }

    /// How long a connection waits after a send of `messages` in `bytes` to stay within the
    /// publish rate.
    pub fn publish_throttle(&self, messages: u64, bytes: u64) -> Duration {
        self.publish_rate.acquire(messages, bytes)
    }

    /// Measures the backlog's age against the age quotas and evicts under
    /// `consumer_backlog_eviction`.
    async fn check_backlog_quota(&self) -> Result<(), BrokerError> {
        let limits = self.limits();
        let marks = self.cursor_marks();
        let mut age_exceeded = None;
        for quota in &limits.backlog_quota {
            if let Some(age) = quota.age {
                let slowest = marks.iter().map(|(_, mark)| *mark).min().flatten();
                let oldest = if marks.is_empty() { None } else { first_publish_time(self.ledger(), slowest).await? };
                if oldest.is_some_and(|published| now_ms().saturating_sub(published) > age.as_millis() as u64) {
                    age_exceeded = Some(quota.policy);
                }
            }
            if quota.policy == RetentionPolicy::ConsumerBacklogEviction {
                self.evict(quota, &marks).await?;
            }
        }
        *self.age_exceeded.lock() = age_exceeded;
        Ok(())
    }

    /// Drops the oldest messages of each subscription beyond `quota`.
    async fn evict(&self, quota: &Quota, marks: &[(String, Option<Position>)]) -> Result<(), BrokerError> {
        for (name, mark) in marks {
            let mut target = None;
            if let Some(limit) = quota.size_bytes {
                let position = self.ledger().keeping_at_most(*mark, limit);
                if position != *mark {
                    target = position;
                }
            }
            if let Some(age) = quota.age {
                let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
                if let Some(old) = published_before(self.ledger(), *mark, cutoff, EXPIRY_SCAN_BUDGET).await? {
                    target = target.max(Some(old));
                }
            }
            if let Some(target) = target {
                if self.skip_through(name, target).await {
                    warn!(topic = %self.name(), subscription = %name, through = %target, "backlog quota: oldest messages evicted");
                }
            }
        }
        Ok(())
    }

    /// Expires messages older than the TTL from every durable subscription.
    async fn expire_messages(&self, ttl: Duration) -> Result<(), BrokerError> {
        let cutoff = now_ms().saturating_sub(ttl.as_millis() as u64);
        for (name, mark) in self.cursor_marks() {
            if let Some(through) = published_before(self.ledger(), mark, cutoff, EXPIRY_SCAN_BUDGET).await? {
                if self.skip_through(&name, through).await {
                    info!(topic = %self.name(), subscription = %name, %through, "message TTL expired messages");
                }
            }
        }
        Ok(())
    }

    /// Acknowledges a subscription through `position` for the broker: through its live
    /// delivery state if loaded here, else on its cursor.
    async fn skip_through(&self, subscription: &str, position: Position) -> bool {
        if let Some(loaded) = self.loaded_subscription(subscription).await {
            return loaded.skip_through(position);
        }
        let Some((_, cursor)) = self.ledger().cursors().into_iter().find(|(name, _)| name == subscription) else {
            return false;
        };
        let view = self.ledger().positions();
        let mut changed = false;
        cursor.update(|state| {
            changed = state.ack_cumulative(position, &view);
            changed
        });
        changed
    }
}

impl Topic {
    /// Deletes durable subscriptions that have had no consumer for `after`.
    async fn expire_subscriptions(&self, after: Option<Duration>) -> Result<(), BrokerError> {
        let now = now_ms();
        let names: Vec<String> = self.ledger().cursors().into_iter().map(|(name, _)| name).collect();
        let mut expired = Vec::new();
        for name in &names {
            let attached = match self.loaded_subscription(name).await {
                Some(subscription) => subscription.has_consumer(),
                None => false,
            };
            let mut idle = self.idle_since_ms.lock();
            if attached {
                idle.remove(name);
                continue;
            }
            let since = *idle.entry(name.clone()).or_insert(now);
            if after.is_some_and(|after| now.saturating_sub(since) >= after.as_millis() as u64) {
                expired.push(name.clone());
            }
        }
        self.idle_since_ms.lock().retain(|name, _| names.contains(name));
        for name in expired {
            self.delete_subscription(&name).await?;
            self.idle_since_ms.lock().remove(&name);
            info!(topic = %self.name(), subscription = %name, "subscription expired (no consumer)");
        }
        Ok(())
    }

    /// Records whether the topic is in use now; answers how long it has not been (zero while
    /// it has a producer or a consumer).
    pub async fn inactive_for(&self) -> Duration {
        let now = now_ms();
        if self.producer_count() > 0 || self.consumer_count().await > 0 {
            self.last_active_ms.store(now, std::sync::atomic::Ordering::Relaxed);
            return Duration::ZERO;
        }
        Duration::from_millis(now.saturating_sub(self.last_active_ms.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

/// Runs the topic's timed checks until it closes or is dropped.
pub fn spawn(topic: &Arc<Topic>, intervals: PolicingIntervals) {
    let weak: Weak<Topic> = Arc::downgrade(topic);
    let tick =
        intervals.backlog_quota.min(intervals.message_expiry).min(intervals.compaction).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut since_quota = Duration::ZERO;
        let mut since_expiry = Duration::ZERO;
        let mut since_compaction = Duration::ZERO;
        loop {
            tokio::time::sleep(tick).await;
            since_quota += tick;
            since_expiry += tick;
            since_compaction += tick;
            let Some(topic) = weak.upgrade() else { return };
            if topic.is_fenced() {
                return;
            }
            let expiration = topic.limits().subscription_expiration;
            if let Err(error) = topic.expire_subscriptions(expiration).await {
                warn!(topic = %topic.name(), %error, "subscription expiration failed");
            }
            topic.inactive_for().await;
            if since_quota >= intervals.backlog_quota {
                since_quota = Duration::ZERO;
                if let Err(error) = topic.check_backlog_quota().await {
                    warn!(topic = %topic.name(), %error, "backlog quota check failed");
                }
            }
            if since_compaction >= intervals.compaction {
                since_compaction = Duration::ZERO;
                topic.check_compaction_threshold();
            }
            if since_expiry >= intervals.message_expiry {
                since_expiry = Duration::ZERO;
                if let Some(ttl) = topic.limits().message_ttl {
                    if let Err(error) = topic.expire_messages(ttl).await {
                        warn!(topic = %topic.name(), %error, "message expiry failed");
                    }
                }
            }
        }
    });
}
