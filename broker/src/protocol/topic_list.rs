//! A namespace's topic list as pattern consumers see it: GET_TOPICS_OF_NAMESPACE filtered on
//! the broker, Pulsar's topics hash, and WATCH_TOPIC_LIST watchers that tell a client each
//! topic created or deleted that matches its pattern (Pulsar's TopicList and
//! TopicListService).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use magnetar_proto::pulsar::{self as pb, base_command::Type, BaseCommand};
use regex::Regex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Outbound;
use crate::error::BrokerError;
use crate::partitions::PARTITIONED_TOPICS_PATH;
use crate::service::BrokerService;
use crate::topic_name::TopicName;

/// Longest pattern compiled; a longer one is not filtered here (the client filters), as
/// Pulsar's `subscriptionPatternMaxLength` does. Generous, since Rust's regex runs in linear
/// time; bounded, since the pattern comes from a client.
pub const MAX_PATTERN_LENGTH: usize = 1024;

/// How long a watcher gathers changes before it answers: creating a partitioned topic writes
/// several keys, and its client is told once.
const SETTLE: Duration = Duration::from_millis(50);

/// Which topics a listing covers (CommandGetTopicsOfNamespace's mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Persistent,
    NonPersistent,
    All,
}

impl Mode {
    pub fn from_wire(mode: Option<i32>) -> Mode {
        match pb::command_get_topics_of_namespace::Mode::try_from(mode.unwrap_or(0)) {
            Ok(pb::command_get_topics_of_namespace::Mode::NonPersistent) => Mode::NonPersistent,
            Ok(pb::command_get_topics_of_namespace::Mode::All) => Mode::All,
            _ => Mode::Persistent,
        }
    }

    pub fn persistent(self) -> bool {
        matches!(self, Mode::Persistent | Mode::All)
    }

    pub fn non_persistent(self) -> bool {
        matches!(self, Mode::NonPersistent | Mode::All)
    }
}

/// Pulsar's topics hash (`TopicList.calculateHash`): CRC-32C over the sorted names, written
/// as Guava writes a 32-bit hash (its bytes little-endian, in hex). Clients compare it to
/// skip unchanged lists.
pub fn topics_hash<S: AsRef<str>>(topics: &[S]) -> String {
    let mut sorted: Vec<&str> = topics.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    let crc = sorted.iter().fold(0u32, |crc, topic| crc32c::crc32c_append(crc, topic.as_bytes()));
    crc.to_le_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A client's topic pattern, compiled as Pulsar matches it: the whole name without its
/// `persistent://` scheme, a partition by its partitioned topic's name.
#[derive(Debug, Clone)]
pub struct TopicPattern {
    regex: Regex,
}

impl TopicPattern {
    /// None for a pattern this broker does not filter by (too long, or not a regex Rust
    /// reads): the client then gets every topic and filters itself, as Pulsar's clients do.
    pub fn compile(pattern: &str) -> Option<TopicPattern> {
        if pattern.is_empty() || pattern.len() > MAX_PATTERN_LENGTH {
            return None;
        }
        let without_scheme = strip_scheme(pattern);
        match regex::RegexBuilder::new(&format!("^(?:{without_scheme})$")).size_limit(1 << 20).build() {
            Ok(regex) => Some(TopicPattern { regex }),
            Err(error) => {
                debug!(pattern, %error, "topic pattern not filtered on the broker");
                None
            }
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        let Ok(name) = TopicName::parse(topic) else { return false };
        if name.local_name().starts_with("__") {
            // System topics (`__change_events`, ...) never match, as in Pulsar.
            return false;
        }
        let base = name.partition_of().map_or(name, |(base, _)| base);
        self.regex.is_match(strip_scheme(&base.to_string()))
    }

    /// The topics of `topics` that match.
    pub fn filter(&self, topics: Vec<String>) -> Vec<String> {
        topics.into_iter().filter(|topic| self.matches(topic)).collect()
    }
}

fn strip_scheme(name: &str) -> &str {
    name.strip_prefix("persistent://").or_else(|| name.strip_prefix("non-persistent://")).unwrap_or(name)
}

/// The namespace's topics of `mode`: persistent ones from the metadata store, non-persistent
/// ones this broker serves.
pub async fn list_topics(service: &BrokerService, namespace: &str, mode: Mode) -> Result<Vec<String>, BrokerError> {
    let mut topics = if mode.persistent() { service.topics_of_namespace(namespace).await? } else { Vec::new() };
    if mode.non_persistent() {
        topics.extend(service.non_persistent_topics_of(namespace).await?);
    }
    Ok(topics)
}

/// Answers GET_TOPICS_OF_NAMESPACE: the namespace's topics of `mode`, filtered by the
/// pattern when the broker can, with the hash; no topics and `changed` false when the
/// client's hash is the same.
pub async fn topics_of_namespace_answer(
    service: &BrokerService,
    request: &pb::CommandGetTopicsOfNamespace,
) -> Result<BaseCommand, BrokerError> {
    let mode = Mode::from_wire(request.mode);
    let mut topics = list_topics(service, &request.namespace, mode).await?;
    let pattern = request.topics_pattern.as_deref().and_then(TopicPattern::compile);
    if let Some(pattern) = &pattern {
        topics = pattern.filter(topics);
    }
    let hash = topics_hash(&topics);
    let changed = request.topics_hash.as_deref() != Some(hash.as_str());
    Ok(BaseCommand {
        command_type: Type::GetTopicsOfNamespaceResponse as i32,
        get_topics_of_namespace_response: Some(pb::CommandGetTopicsOfNamespaceResponse {
            request_id: request.request_id,
            topics: if changed { topics } else { Vec::new() },
            filtered: Some(pattern.is_some()),
            changed: Some(changed),
            topics_hash: Some(hash),
        }),
        ..Default::default()
    })
}

/// Starts a WATCH_TOPIC_LIST watcher: answers WATCH_TOPIC_LIST_SUCCESS with the persistent
/// topics matching the pattern, then a WATCH_TOPIC_UPDATE for every change until `cancel`
/// (the client closed the watcher or the connection). Pulsar's watchers cover persistent
/// topics only.
pub async fn start_watcher(
    service: Arc<BrokerService>,
    request: pb::CommandWatchTopicList,
    outbound: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
) -> Result<(), BrokerError> {
    let Some(pattern) = TopicPattern::compile(&request.topics_pattern) else {
        return Err(BrokerError::NotAllowed {
            what: format!("topic pattern {:?} cannot be watched on the broker", request.topics_pattern),
        });
    };
    let namespace = request.namespace.clone();
    // Watch before reading, so that nothing created in between is missed.
    let mut ledgers = service.meta.watch(&format!("/magnetar/managed-ledgers/{namespace}/persistent/")).await?;
    let mut partitioned = service.meta.watch(&format!("{PARTITIONED_TOPICS_PATH}/{namespace}/persistent/")).await?;
    let topics = pattern.filter(service.topics_of_namespace(&namespace).await?);
    let hash = topics_hash(&topics);
    let success = BaseCommand {
        command_type: Type::WatchTopicListSuccess as i32,
        watch_topic_list_success: Some(Box::new(pb::CommandWatchTopicListSuccess {
            request_id: request.request_id,
            watcher_id: request.watcher_id,
            topic: topics.clone(),
            topics_hash: hash,
        })),
        ..Default::default()
    };
    if outbound.send(Outbound::command(success)).await.is_err() {
        return Ok(());
    }
    let watcher_id = request.watcher_id;
    tokio::spawn(async move {
        let mut known: BTreeSet<String> = topics.into_iter().collect();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                event = ledgers.recv() => if event.is_none() { break },
                event = partitioned.recv() => if event.is_none() { break },
            }
            tokio::time::sleep(SETTLE).await;
            while ledgers.try_recv().is_ok() || partitioned.try_recv().is_ok() {}
            let now: BTreeSet<String> = match service.topics_of_namespace(&namespace).await {
                Ok(topics) => pattern.filter(topics).into_iter().collect(),
                Err(error) => {
                    warn!(%namespace, watcher_id, %error, "topic list watcher could not list the namespace");
                    continue;
                }
            };
            if now == known {
                continue;
            }
            let new_topics: Vec<String> = now.difference(&known).cloned().collect();
            let deleted_topics: Vec<String> = known.difference(&now).cloned().collect();
            let all: Vec<&String> = now.iter().collect();
            let update = BaseCommand {
                command_type: Type::WatchTopicUpdate as i32,
                watch_topic_update: Some(Box::new(pb::CommandWatchTopicUpdate {
                    watcher_id,
                    new_topics,
                    deleted_topics,
                    topics_hash: topics_hash(&all),
                })),
                ..Default::default()
            };
            known = now;
            if outbound.send(Outbound::command(update)).await.is_err() {
                return;
            }
        }
        // The store cut the watch off (it fell behind): the client's periodic check still
        // finds new topics; it is told so in the log.
        warn!(%namespace, watcher_id, "topic list watch ended; pattern consumers fall back to their periodic check");
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pulsars() {
        // Guava: Hashing.crc32c().newHasher().putString("a", UTF_8).hash().toString(); the
        // CRC-32C of "a" is 0xc1d04330, written little-endian.
        assert_eq!(topics_hash(&["a"]), "3043d0c1");
        // Sorted first: the order given does not matter.
        assert_eq!(topics_hash(&["b", "a"]), topics_hash(&["a", "b"]));
        assert_eq!(topics_hash::<&str>(&[]), "00000000");
    }

    #[test]
    fn patterns_match_whole_names_and_partitions_by_their_topic() {
        let pattern = TopicPattern::compile("persistent://public/default/orders-.*").unwrap();
        assert!(pattern.matches("persistent://public/default/orders-eu"));
        assert!(pattern.matches("persistent://public/default/orders-eu-partition-3"));
        assert!(!pattern.matches("persistent://public/default/my-orders-eu"));
        assert!(!pattern.matches("persistent://public/other/orders-eu"));
        let partitioned_only = TopicPattern::compile("public/default/orders").unwrap();
        assert!(partitioned_only.matches("persistent://public/default/orders-partition-0"));
        assert!(!TopicPattern::compile("persistent://public/default/.*")
            .unwrap()
            .matches("persistent://public/default/__change_events"));
    }

    #[test]
    fn unusable_patterns_are_left_to_the_client() {
        assert!(TopicPattern::compile("").is_none());
        assert!(TopicPattern::compile("public/default/(unclosed").is_none());
        assert!(TopicPattern::compile(&"a".repeat(MAX_PATTERN_LENGTH + 1)).is_none());
    }
}
