//! Pattern subscriptions (Pulsar's `PatternMultiTopicsConsumerImpl`): a consumer of every
//! topic of a namespace whose name matches a regex, following topics created and deleted
//! after it subscribed.
//!
//! [`Discovery::start`] lists the namespace once (GET_TOPICS_OF_NAMESPACE with the mode and
//! the pattern; the client filters again, as a broker may not) and subscribes to every match.
//! Then a task, one per pattern consumer, keeps the list current:
//!
//! - when the broker announced `supports_topic_watchers` in CONNECTED, it opens a watcher
//!   (WATCH_TOPIC_LIST): WATCH_TOPIC_LIST_SUCCESS carries the full list, each
//!   WATCH_TOPIC_UPDATE the topics created and deleted. A broker that answers ERROR has no
//!   watchers: polling only, from then on. A watcher whose connection ended is opened again
//!   at the next poll;
//! - it always polls every `pattern_auto_discovery_period`, sending the topics hash of the
//!   last answer so that a broker can say "unchanged".
//!
//! The task subscribes to new topics itself (the slow part) and hands the subscribed topic
//! consumers, or the names of topics gone, to the [`Consumer`](crate::Consumer) through a
//! bounded channel ([`CHANGE_QUEUE_SIZE`]; when full, the task waits: the consumer takes
//! changes in `receive`). A topic whose subscription fails is tried again at the next poll.
//!
//! Names are matched without their `-partition-<n>` suffix and partitions are subscribed one
//! by one (a partitioned topic's own name, when a broker lists it next to its partitions, is
//! skipped); system topics (local names starting with `__`) never match.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use magnetar_proto::pulsar::{self as pb, base_command::Type, command_get_topics_of_namespace::Mode};
use magnetar_proto::topic_name::partition_index;
use regex::Regex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::connection::Connection;
use crate::error::{error_chain, ClientError};
use crate::topic::TopicName;
use crate::topic_consumer::{SubscribeSettings, TopicConsumer};

/// Pulsar's `patternAutoDiscoveryPeriod` default, and the shortest period accepted.
pub const DEFAULT_PATTERN_AUTO_DISCOVERY_PERIOD: Duration = Duration::from_secs(60);
pub(crate) const MIN_PATTERN_AUTO_DISCOVERY_PERIOD: Duration = Duration::from_millis(100);

/// Topic changes waiting for the consumer to take them.
const CHANGE_QUEUE_SIZE: usize = 64;

/// WATCH_TOPIC_UPDATEs waiting for the discovery task; a watcher that falls this far behind
/// is dropped by the connection (the polls catch up).
const WATCH_QUEUE_SIZE: usize = 64;

/// A change to a pattern consumer's topics.
pub(crate) enum TopicChange {
    /// A new matching topic, subscribed already.
    Added(Box<TopicConsumer>),
    /// A topic that no longer exists (its full name).
    Removed(String),
}

/// A parsed topics pattern: its namespace and the regex.
#[derive(Debug, Clone)]
pub(crate) struct TopicsPattern {
    persistent: bool,
    tenant: String,
    namespace: String,
    /// The local part as written (for names and logs).
    local: String,
    /// The whole pattern as sent to the broker.
    text: String,
    regex: Regex,
}

impl TopicsPattern {
    /// Parses `persistent://tenant/namespace/<regex>` (or `non-persistent://`, or without a
    /// scheme for persistent).
    pub(crate) fn parse(pattern: &str) -> Result<TopicsPattern, ClientError> {
        let invalid = |reason| ClientError::InvalidTopic { topic: pattern.to_owned(), reason };
        let (scheme, rest) = match pattern.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => ("persistent", pattern),
        };
        let persistent = match scheme {
            "persistent" => true,
            "non-persistent" => false,
            _ => return Err(invalid("a topics pattern starts with persistent:// or non-persistent://")),
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(tenant), Some(namespace), Some(local)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("a topics pattern names tenant/namespace/pattern"));
        };
        if tenant.is_empty() || namespace.is_empty() || local.is_empty() {
            return Err(invalid("a topics pattern names tenant/namespace/pattern"));
        }
        let text = format!("{scheme}://{tenant}/{namespace}/{local}");
        let regex = Regex::new(&format!("^(?:{text})$")).map_err(|_| invalid("the pattern is not a valid regex"))?;
        Ok(TopicsPattern {
            persistent,
            tenant: tenant.to_owned(),
            namespace: namespace.to_owned(),
            local: local.to_owned(),
            text,
            regex,
        })
    }

    /// `tenant/namespace`.
    fn namespace_name(&self) -> String {
        format!("{}/{}", self.tenant, self.namespace)
    }

    /// A topic name standing for the pattern (its namespace, and the pattern as local name).
    pub(crate) fn display_name(&self) -> TopicName {
        TopicName {
            persistent: self.persistent,
            tenant: self.tenant.clone(),
            namespace: self.namespace.clone(),
            local_name: self.local.clone(),
        }
    }

    /// Whether `topic` (a full name, maybe a partition's) is one of the pattern's.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        let Ok(name) = TopicName::parse(topic) else { return false };
        if name.tenant != self.tenant || name.namespace != self.namespace || name.persistent != self.persistent {
            return false;
        }
        let base = match name.partition_of() {
            Some((base, _)) => base,
            None => name,
        };
        !base.local_name.starts_with("__") && self.regex.is_match(&base.to_string())
    }

    /// The topics of `listed` to subscribe to: the matching ones, without a partitioned
    /// topic's own name when its partitions are listed.
    pub(crate) fn select(&self, listed: &[String]) -> BTreeSet<String> {
        let partitioned: HashSet<String> = listed
            .iter()
            .filter_map(|topic| TopicName::parse(topic).ok()?.partition_of().map(|(base, _)| base.to_string()))
            .collect();
        listed.iter().filter(|topic| self.matches(topic) && !partitioned.contains(*topic)).cloned().collect()
    }
}

/// A pattern consumer's discovery: its task and the channel of changes it finds.
#[derive(Debug)]
pub(crate) struct Discovery {
    changes: mpsc::Receiver<TopicChange>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TopicChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicChange::Added(consumer) => write!(f, "Added({})", consumer.topic_name()),
            TopicChange::Removed(topic) => write!(f, "Removed({topic})"),
        }
    }
}

impl Discovery {
    /// Lists the namespace, subscribes to every matching topic, and starts the task that
    /// follows the namespace from then on.
    pub(crate) async fn start(
        client: Client,
        pattern: TopicsPattern,
        settings: SubscribeSettings,
        period: Duration,
    ) -> Result<(Discovery, Vec<TopicConsumer>), ClientError> {
        let (topics, hash) = list_topics(&client, &pattern, None).await?;
        let mut consumers = Vec::new();
        let mut known = BTreeSet::new();
        for topic in pattern.select(&topics.unwrap_or_default()) {
            consumers.push(subscribe(&client, &topic, &settings).await?);
            known.insert(topic);
        }
        info!(pattern = %pattern.text, topics = known.len(), "pattern consumer subscribed");
        let (sender, changes) = mpsc::channel(CHANGE_QUEUE_SIZE);
        let task = DiscoveryTask {
            client,
            pattern,
            settings,
            period,
            known,
            hash,
            changes: sender,
            watcher: None,
            watchers_refused: false,
        };
        Ok((Discovery { changes, task: tokio::spawn(task.run()) }, consumers))
    }

    /// The next change; pending forever once the task ended.
    pub(crate) async fn next_change(&mut self) -> TopicChange {
        match self.changes.recv().await {
            Some(change) => change,
            None => std::future::pending().await,
        }
    }

    pub(crate) fn stop(self) {
        self.task.abort();
    }
}

/// An open topic list watcher.
struct Watcher {
    connection: Connection,
    watcher_id: u64,
    updates: mpsc::Receiver<pb::CommandWatchTopicUpdate>,
}

struct DiscoveryTask {
    client: Client,
    pattern: TopicsPattern,
    settings: SubscribeSettings,
    period: Duration,
    /// The topics subscribed to (or handed to the consumer to add).
    known: BTreeSet<String>,
    /// The topics hash of the last full list, sent with the next poll.
    hash: Option<String>,
    changes: mpsc::Sender<TopicChange>,
    watcher: Option<Watcher>,
    /// The broker answered WATCH_TOPIC_LIST with an error: poll only.
    watchers_refused: bool,
}

impl DiscoveryTask {
    async fn run(mut self) {
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + self.period, self.period);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.open_watcher().await;
        loop {
            let update = async {
                match self.watcher.as_mut() {
                    Some(watcher) => watcher.updates.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.changes.closed() => break,
                _ = poll.tick() => {
                    if self.watcher.as_ref().is_some_and(|watcher| watcher.connection.is_closed()) {
                        self.watcher = None;
                    }
                    if self.watcher.is_none() {
                        self.open_watcher().await;
                    }
                    self.poll().await;
                }
                update = update => match update {
                    Some(update) => {
                        debug!(pattern = %self.pattern.text, new = ?update.new_topics, deleted = ?update.deleted_topics, "topic list update");
                        let new: Vec<String> = update.new_topics.into_iter().filter(|t| self.pattern.matches(t)).collect();
                        self.apply(new, update.deleted_topics).await;
                    }
                    None => {
                        debug!(pattern = %self.pattern.text, "topic list watcher ended; polling until it is opened again");
                        self.watcher = None;
                    }
                },
            }
        }
        if let Some(watcher) = self.watcher.take() {
            close_watcher(watcher).await;
        }
    }

    async fn poll(&mut self) {
        match list_topics(&self.client, &self.pattern, self.hash.clone()).await {
            Ok((Some(topics), hash)) => {
                self.hash = hash;
                self.reconcile(&topics).await;
            }
            Ok((None, _)) => debug!(pattern = %self.pattern.text, "topic list unchanged"),
            Err(error) => {
                debug!(pattern = %self.pattern.text, error = %error_chain(&error), "cannot list the namespace's topics; next poll")
            }
        }
    }

    /// Makes the subscribed topics those of a full list.
    async fn reconcile(&mut self, listed: &[String]) {
        let wanted = self.pattern.select(listed);
        let new: Vec<String> = wanted.difference(&self.known).cloned().collect();
        let gone: Vec<String> = self.known.difference(&wanted).cloned().collect();
        self.apply(new, gone).await;
    }

    async fn apply(&mut self, new: Vec<String>, deleted: Vec<String>) {
        for topic in deleted {
            if self.known.remove(&topic) && self.changes.send(TopicChange::Removed(topic)).await.is_err() {
                return;
            }
        }
        for topic in new {
            if self.known.contains(&topic) {
                continue;
            }
            match subscribe(&self.client, &topic, &self.settings).await {
                Ok(consumer) => {
                    info!(pattern = %self.pattern.text, %topic, "pattern consumer: new topic");
                    self.known.insert(topic);
                    if self.changes.send(TopicChange::Added(Box::new(consumer))).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    warn!(pattern = %self.pattern.text, %topic, error = %error_chain(&error), "cannot subscribe to a new topic; trying at the next poll");
                }
            }
        }
    }

    /// Opens a watcher when the broker supports them; its first answer is a full list.
    async fn open_watcher(&mut self) {
        if self.watchers_refused {
            return;
        }
        let connection = match self.client.service_connection().await {
            Ok(connection) => connection,
            Err(error) => return debug!(error = %error_chain(&error), "no connection for a topic list watcher"),
        };
        if !connection.supports_topic_watchers() {
            return;
        }
        let watcher_id = connection.new_watcher_id();
        let (sender, updates) = mpsc::channel(WATCH_QUEUE_SIZE);
        if connection.add_watcher(watcher_id, sender).await.is_err() {
            return;
        }
        let namespace = self.pattern.namespace_name();
        let pattern = self.pattern.text.clone();
        let hash = self.hash.clone();
        let answer = connection
            .request(|request_id| pb::BaseCommand {
                command_type: Type::WatchTopicList as i32,
                watch_topic_list: Some(Box::new(pb::CommandWatchTopicList {
                    request_id,
                    watcher_id,
                    namespace,
                    topics_pattern: pattern,
                    topics_hash: hash,
                })),
                ..Default::default()
            })
            .await;
        match answer.map(|answer| answer.watch_topic_list_success) {
            Ok(Some(success)) => {
                info!(pattern = %self.pattern.text, watcher_id, "topic list watcher open");
                self.hash = Some(success.topics_hash.clone()).filter(|hash| !hash.is_empty());
                self.watcher = Some(Watcher { connection, watcher_id, updates });
                self.reconcile(&success.topic).await;
            }
            Ok(None) => {
                connection.remove_watcher(watcher_id).await;
                warn!(pattern = %self.pattern.text, "unexpected answer to WATCH_TOPIC_LIST; polling only");
                self.watchers_refused = true;
            }
            Err(error @ ClientError::Server { .. }) => {
                connection.remove_watcher(watcher_id).await;
                info!(pattern = %self.pattern.text, error = %error_chain(&error), "the broker refused a topic list watcher; polling only");
                self.watchers_refused = true;
            }
            Err(error) => {
                connection.remove_watcher(watcher_id).await;
                debug!(pattern = %self.pattern.text, error = %error_chain(&error), "cannot open a topic list watcher; trying at the next poll");
            }
        }
    }
}

async fn close_watcher(watcher: Watcher) {
    let Watcher { connection, watcher_id, .. } = watcher;
    connection.remove_watcher(watcher_id).await;
    let close = |request_id| pb::BaseCommand {
        command_type: Type::WatchTopicListClose as i32,
        watch_topic_list_close: Some(Box::new(pb::CommandWatchTopicListClose { request_id, watcher_id })),
        ..Default::default()
    };
    let _ = connection.request(close).await;
}

/// GET_TOPICS_OF_NAMESPACE: the namespace's topics, or `None` when the broker says they are
/// unchanged since `hash`; and the new hash.
async fn list_topics(
    client: &Client,
    pattern: &TopicsPattern,
    hash: Option<String>,
) -> Result<(Option<Vec<String>>, Option<String>), ClientError> {
    let connection = client.service_connection().await?;
    let namespace = pattern.namespace_name();
    let mode = if pattern.persistent { Mode::Persistent } else { Mode::NonPersistent };
    let text = pattern.text.clone();
    let answer = connection
        .request(|request_id| pb::BaseCommand {
            command_type: Type::GetTopicsOfNamespace as i32,
            get_topics_of_namespace: Some(pb::CommandGetTopicsOfNamespace {
                request_id,
                namespace,
                mode: Some(mode as i32),
                topics_pattern: Some(text),
                topics_hash: hash,
            }),
            ..Default::default()
        })
        .await?;
    let response = answer.get_topics_of_namespace_response.ok_or_else(|| ClientError::UnexpectedResponse {
        broker: connection.broker().to_string(),
        expected: "GET_TOPICS_OF_NAMESPACE_RESPONSE",
        got: crate::connection::command_name(answer.command_type),
    })?;
    let hash = response.topics_hash.filter(|hash| !hash.is_empty());
    if response.changed == Some(false) {
        return Ok((None, hash));
    }
    Ok((Some(response.topics), hash))
}

/// Subscribes to one listed topic (a partition gets its index in message ids).
async fn subscribe(client: &Client, topic: &str, settings: &SubscribeSettings) -> Result<TopicConsumer, ClientError> {
    let partition = partition_index(topic).and_then(|index| i32::try_from(index).ok()).unwrap_or(-1);
    TopicConsumer::subscribe(client.clone(), topic, partition, settings.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names_of_their_namespace_only() {
        let pattern = TopicsPattern::parse("persistent://public/default/orders-.*").expect("parse");
        assert!(pattern.matches("persistent://public/default/orders-eu"));
        assert!(pattern.matches("persistent://public/default/orders-eu-partition-3"));
        assert!(!pattern.matches("persistent://public/default/my-orders-eu"));
        assert!(!pattern.matches("persistent://public/other/orders-eu"));
        assert!(!pattern.matches("non-persistent://public/default/orders-eu"));
        assert_eq!(pattern.namespace_name(), "public/default");
        let short = TopicsPattern::parse("public/default/(a|b)").expect("parse");
        assert!(short.matches("persistent://public/default/a") && short.matches("persistent://public/default/b"));
        assert!(!short.matches("persistent://public/default/ab"));
    }

    #[test]
    fn selection_takes_partitions_not_their_partitioned_topic_and_skips_system_topics() {
        let pattern = TopicsPattern::parse("persistent://public/default/.*").expect("parse");
        let listed: Vec<String> = [
            "persistent://public/default/p",
            "persistent://public/default/p-partition-0",
            "persistent://public/default/p-partition-1",
            "persistent://public/default/plain",
            "persistent://public/default/__change_events",
        ]
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
        let selected: Vec<String> = pattern.select(&listed).into_iter().collect();
        assert_eq!(
            selected,
            [
                "persistent://public/default/p-partition-0",
                "persistent://public/default/p-partition-1",
                "persistent://public/default/plain"
            ]
        );
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for pattern in ["http://public/default/x", "public/default", "persistent://public/default/(", "//a/b"] {
            assert!(TopicsPattern::parse(pattern).is_err(), "{pattern}");
        }
    }
}
