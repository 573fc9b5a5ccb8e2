//! Broker-wide counters, rendered as Prometheus text with Pulsar's metric names.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::managed_ledger::EntryCacheStats;
use crate::stats::{BucketCounts, Buckets, ENTRY_SIZE_BUCKETS, WRITE_LATENCY_BUCKETS};

#[derive(Debug, Default)]
pub struct Metrics {
    pub in_messages: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_messages: AtomicU64,
    pub out_bytes: AtomicU64,
    pub connections_opened: AtomicU64,
    /// Credentials accepted and refused (CONNECT, AUTH_RESPONSE, HTTP).
    pub authentication_successes: AtomicU64,
    pub authentication_failures: AtomicU64,
    pub connections_closed: AtomicU64,
    pub send_errors: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Lookups (binary and HTTP) answered here, redirected, failed, and running now.
    pub lookup_answers: AtomicU64,
    pub lookup_redirects: AtomicU64,
    pub lookup_failures: AtomicU64,
    pub lookup_pending: AtomicU64,
}

/// Gauges computed from current state at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Per topic, as Pulsar labels them (summed per namespace when topic-level metrics are
    /// off).
    pub per_topic: Vec<TopicGauges>,
    /// Label per topic (`exposeTopicLevelMetricsInPrometheus`) or per namespace only.
    pub topic_level: bool,
    /// The broker's entry cache.
    pub entry_cache: EntryCacheStats,
}

/// One topic's numbers at scrape time.
#[derive(Debug, Default, Clone)]
pub struct TopicGauges {
    pub namespace: String,
    pub topic: String,
    /// 1 for a topic; the topics of a namespace once summed.
    pub topics: u64,
    pub producers: u64,
    pub consumers: u64,
    pub rate_in: f64,
    pub rate_out: f64,
    pub throughput_in: f64,
    pub throughput_out: f64,
    pub in_messages: u64,
    pub in_bytes: u64,
    pub storage_size: u64,
    /// Bytes after the slowest subscription.
    pub backlog_size: u64,
    /// Unacknowledged entries over its subscriptions.
    pub backlog: u64,
    pub subscriptions: Vec<SubscriptionGauges>,
    /// Add latencies (ms) and entry sizes since the topic loaded.
    pub write_latency: BucketCounts,
    pub entry_size: BucketCounts,
}

/// One subscription's numbers at scrape time.
#[derive(Debug, Default, Clone)]
pub struct SubscriptionGauges {
    pub name: String,
    pub backlog: u64,
    pub consumers: u64,
    pub unacked: u64,
    pub rate_out: f64,
    pub rate_redeliver: f64,
    pub blocked: bool,
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Metric families in first-seen order, each written once with its HELP and TYPE and all its
/// samples together, as the text format requires.
#[derive(Default)]
struct Families {
    order: Vec<&'static str>,
    families: std::collections::HashMap<&'static str, (&'static str, &'static str, String)>,
}

impl Families {
    fn sample(&mut self, name: &'static str, kind: &'static str, help: &'static str, labels: &str, value: f64) {
        let family = self.families.entry(name).or_insert_with(|| {
            self.order.push(name);
            (kind, help, String::new())
        });
        let _ = writeln!(family.2, "{name}{{{labels}}} {value}");
    }

    fn render(self) -> String {
        let mut out = String::new();
        for name in self.order {
            let (kind, help, samples) = &self.families[name];
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{samples}");
        }
        out
    }
}

/// One topic's (or namespace's) counts in Pulsar's `_le_*` gauges, with `_count` and `_sum`.
fn buckets(families: &mut Families, layout: &'static Buckets, counts: &BucketCounts, labels: &str) {
    for (index, (_, name)) in layout.bounds.iter().enumerate() {
        families.sample(name, "gauge", layout.help, labels, counts.counts.get(index).copied().unwrap_or(0) as f64);
    }
    let overflow = counts.counts.get(layout.bounds.len()).copied().unwrap_or(0);
    families.sample(layout.overflow, "gauge", layout.help, labels, overflow as f64);
    families.sample(layout.count, "gauge", "Entries added since the topic loaded", labels, counts.count() as f64);
    families.sample(layout.sum, "gauge", "Sum of the values counted in the buckets", labels, counts.sum);
}

/// Sums topics per namespace (their subscriptions are dropped: Pulsar shows none then).
fn per_namespace(topics: Vec<TopicGauges>) -> Vec<TopicGauges> {
    let mut namespaces: std::collections::BTreeMap<String, TopicGauges> = Default::default();
    for topic in topics {
        let sum = namespaces
            .entry(topic.namespace.clone())
            .or_insert_with(|| TopicGauges { namespace: topic.namespace.clone(), ..TopicGauges::default() });
        sum.topics += topic.topics;
        sum.producers += topic.producers;
        sum.consumers += topic.consumers;
        sum.rate_in += topic.rate_in;
        sum.rate_out += topic.rate_out;
        sum.throughput_in += topic.throughput_in;
        sum.throughput_out += topic.throughput_out;
        sum.in_messages += topic.in_messages;
        sum.in_bytes += topic.in_bytes;
        sum.storage_size += topic.storage_size;
        sum.backlog_size += topic.backlog_size;
        sum.backlog += topic.backlog;
        sum.write_latency.add(&topic.write_latency);
        sum.entry_size.add(&topic.entry_size);
    }
    namespaces.into_values().collect()
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self, cluster: &str, gauges: Gauges) -> String {
        let mut families = Families::default();
        let labels = format!("cluster=\"{}\"", label(cluster));
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let topics = &gauges.per_topic;
        // `+ 0.0`: an empty float sum is -0.0, which would print as `-0`.
        let sum = |f: fn(&TopicGauges) -> f64| topics.iter().map(f).sum::<f64>() + 0.0;
        let broker: [(&'static str, &'static str, f64); 9] = [
            ("pulsar_broker_topics_count", "Topics served by this broker", topics.len() as f64),
            (
                "pulsar_broker_subscriptions_count",
                "Subscriptions of the topics served",
                sum(|t| t.subscriptions.len() as f64),
            ),
            ("pulsar_broker_producers_count", "Connected producers", sum(|t| t.producers as f64)),
            ("pulsar_broker_consumers_count", "Connected consumers", sum(|t| t.consumers as f64)),
            ("pulsar_broker_rate_in", "Messages published per second", sum(|t| t.rate_in)),
            ("pulsar_broker_rate_out", "Messages dispatched per second", sum(|t| t.rate_out)),
            ("pulsar_broker_throughput_in", "Bytes published per second", sum(|t| t.throughput_in)),
            ("pulsar_broker_throughput_out", "Bytes dispatched per second", sum(|t| t.throughput_out)),
            ("pulsar_broker_msg_backlog", "Unacknowledged entries over all subscriptions", sum(|t| t.backlog as f64)),
        ];
        for (name, help, value) in broker {
            families.sample(name, "gauge", help, &labels, value);
        }
        families.sample(
            "pulsar_broker_storage_size",
            "gauge",
            "Bytes stored for the topics served",
            &labels,
            sum(|t| t.storage_size as f64),
        );
        let counters: [(&'static str, &'static str, &AtomicU64); 13] = [
            ("pulsar_broker_lookup_answers_total", "Lookups answered with this broker", &self.lookup_answers),
            ("pulsar_broker_lookup_redirects_total", "Lookups answered with a redirect", &self.lookup_redirects),
            ("pulsar_broker_lookup_failures_total", "Lookups answered with an error", &self.lookup_failures),
            ("pulsar_in_messages_total", "Messages published and made durable", &self.in_messages),
            ("pulsar_in_bytes_total", "Bytes published and made durable", &self.in_bytes),
            ("pulsar_out_messages_total", "Messages dispatched to consumers", &self.out_messages),
            ("pulsar_out_bytes_total", "Bytes dispatched to consumers", &self.out_bytes),
            ("magnetar_connections_opened_total", "Client connections accepted", &self.connections_opened),
            ("magnetar_connections_closed_total", "Client connections closed", &self.connections_closed),
            (
                "pulsar_authentication_success_total",
                "Credentials accepted (CONNECT, AUTH_RESPONSE, HTTP)",
                &self.authentication_successes,
            ),
            (
                "pulsar_authentication_failures_total",
                "Credentials refused or expired (CONNECT, AUTH_RESPONSE, HTTP)",
                &self.authentication_failures,
            ),
            ("magnetar_send_errors_total", "Publishes answered with an error", &self.send_errors),
            ("magnetar_protocol_errors_total", "Malformed or refused frames", &self.protocol_errors),
        ];
        for (name, help, counter) in counters {
            families.sample(name, "counter", help, &labels, get(counter));
        }
        families.sample(
            "pulsar_broker_lookup_pending_requests",
            "gauge",
            "Lookups being answered now",
            &labels,
            get(&self.lookup_pending),
        );
        // The entry cache, with Pulsar's `pulsar_ml_cache_*` names (Pulsar exports rates; these
        // are the counters behind them).
        let cache = &gauges.entry_cache;
        let cache_samples: [(&'static str, &'static str, &'static str, u64); 7] = [
            ("pulsar_ml_cache_used_size", "gauge", "Bytes of entries in the entry cache", cache.size_bytes),
            ("pulsar_ml_cache_entries", "gauge", "Entries in the entry cache", cache.entries),
            ("pulsar_ml_count", "gauge", "Managed ledgers open on this broker", cache.caches),
            ("pulsar_ml_cache_hits_total", "counter", "Entries read from the entry cache", cache.hits),
            ("pulsar_ml_cache_hits_throughput_total", "counter", "Bytes read from the entry cache", cache.hit_bytes),
            ("pulsar_ml_cache_misses_total", "counter", "Reads the entry cache could not answer", cache.misses),
            ("pulsar_ml_cache_evictions_total", "counter", "Entries evicted from the entry cache", cache.evicted),
        ];
        for (name, kind, help, value) in cache_samples {
            families.sample(name, kind, help, &labels, value as f64);
        }
        let open = get(&self.connections_opened) - get(&self.connections_closed);
        families.sample("pulsar_active_connections", "gauge", "Client connections open now", &labels, open.max(0.0));
        let (topics, topic_level) =
            if gauges.topic_level { (gauges.per_topic, true) } else { (per_namespace(gauges.per_topic), false) };
        for topic in &topics {
            let mut topic_labels = format!("{labels},namespace=\"{}\"", label(&topic.namespace));
            if topic_level {
                let _ = write!(topic_labels, ",topic=\"{}\"", label(&topic.topic));
            }
            let samples: [(&'static str, &'static str, f64); 11] = [
                ("pulsar_producers_count", "Connected producers", topic.producers as f64),
                ("pulsar_consumers_count", "Connected consumers", topic.consumers as f64),
                ("pulsar_subscriptions_count", "Subscriptions", topic.subscriptions.len() as f64),
                ("pulsar_rate_in", "Messages published per second", topic.rate_in),
                ("pulsar_rate_out", "Messages dispatched per second", topic.rate_out),
                ("pulsar_throughput_in", "Bytes published per second", topic.throughput_in),
                ("pulsar_throughput_out", "Bytes dispatched per second", topic.throughput_out),
                ("pulsar_storage_size", "Bytes stored", topic.storage_size as f64),
                ("pulsar_storage_backlog_size", "Bytes after the slowest subscription", topic.backlog_size as f64),
                ("pulsar_msg_backlog", "Unacknowledged entries over its subscriptions", topic.backlog as f64),
                ("pulsar_topics_count", "Topics", topic.topics as f64),
            ];
            for (name, help, value) in samples {
                if name == "pulsar_subscriptions_count" && !topic_level {
                    continue;
                }
                families.sample(name, "gauge", help, &topic_labels, value);
            }
            families.sample(
                "pulsar_in_messages_total",
                "counter",
                "Messages published and made durable",
                &topic_labels,
                topic.in_messages as f64,
            );
            for (layout, counts) in
                [(&WRITE_LATENCY_BUCKETS, &topic.write_latency), (&ENTRY_SIZE_BUCKETS, &topic.entry_size)]
            {
                buckets(&mut families, layout, counts, &topic_labels);
            }
            for subscription in &topic.subscriptions {
                let sub_labels = format!("{topic_labels},subscription=\"{}\"", label(&subscription.name));
                let samples: [(&'static str, &'static str, f64); 6] = [
                    ("pulsar_subscription_back_log", "Unacknowledged entries", subscription.backlog as f64),
                    ("pulsar_subscription_consumers_count", "Connected consumers", subscription.consumers as f64),
                    (
                        "pulsar_subscription_unacked_messages",
                        "Messages sent, not acknowledged",
                        subscription.unacked as f64,
                    ),
                    ("pulsar_subscription_msg_rate_out", "Messages dispatched per second", subscription.rate_out),
                    (
                        "pulsar_subscription_msg_rate_redeliver",
                        "Messages delivered again per second",
                        subscription.rate_redeliver,
                    ),
                    (
                        "pulsar_subscription_blocked_on_unacked_messages",
                        "1 while the subscription holds its most unacknowledged messages",
                        f64::from(u8::from(subscription.blocked)),
                    ),
                ];
                for (name, help, value) in samples {
                    families.sample(name, "gauge", help, &sub_labels, value);
                }
            }
        }
        families.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(namespace: &str, name: &str) -> TopicGauges {
        TopicGauges {
            namespace: namespace.to_owned(),
            topic: format!("persistent://{namespace}/{name}"),
            topics: 1,
            producers: 3,
            consumers: 2,
            backlog: 7,
            storage_size: 300,
            subscriptions: vec![
                SubscriptionGauges { name: "a".to_owned(), backlog: 5, consumers: 1, ..Default::default() },
                SubscriptionGauges { name: "b\"".to_owned(), backlog: 2, consumers: 1, ..Default::default() },
            ],
            entry_size: BucketCounts { counts: vec![0, 0, 4, 0, 0, 0, 0, 0, 1], sum: 5000.0 },
            ..TopicGauges::default()
        }
    }

    /// Every family once, with its samples together (what the text format requires).
    fn assert_grouped(text: &str) {
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(seen.insert(name.clone()), "{name} twice:\n{text}");
                current = name;
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&format!("{current}{{")), "{line} outside its family:\n{text}");
            }
        }
    }

    #[test]
    fn topics_and_subscriptions_are_rendered_with_pulsar_labels() {
        let gauges = Gauges { per_topic: vec![topic("public/default", "t")], topic_level: true, ..Gauges::default() };
        let text = Metrics::default().render("c", gauges);
        assert_grouped(&text);
        let topic = "cluster=\"c\",namespace=\"public/default\",topic=\"persistent://public/default/t\"";
        assert!(text.contains("pulsar_broker_msg_backlog{cluster=\"c\"} 7\n"), "{text}");
        assert!(text.contains(&format!("pulsar_msg_backlog{{{topic}}} 7\n")), "{text}");
        assert!(text.contains(&format!("pulsar_storage_size{{{topic}}} 300\n")), "{text}");
        assert!(text.contains(&format!("pulsar_entry_size_le_1_kb{{{topic}}} 4\n")), "{text}");
        assert!(text.contains(&format!("pulsar_entry_size_le_overflow{{{topic}}} 1\n")), "{text}");
        assert!(text.contains(&format!("pulsar_entry_size_count{{{topic}}} 5\n")), "{text}");
        assert!(text.contains(&format!("pulsar_storage_write_latency_le_0_5{{{topic}}} 0\n")), "{text}");
        assert!(text.contains(&format!("pulsar_consumers_count{{{topic}}} 2\n")), "{text}");
        assert!(text.contains(&format!("pulsar_subscription_back_log{{{topic},subscription=\"a\"}} 5\n")), "{text}");
        assert!(
            text.contains(&format!("pulsar_subscription_back_log{{{topic},subscription=\"b\\\"\"}} 2\n")),
            "{text}"
        );
    }

    #[test]
    fn without_topic_level_metrics_namespaces_are_summed() {
        let gauges = Gauges {
            per_topic: vec![topic("public/default", "t"), topic("public/default", "u"), topic("a/b", "t")],
            topic_level: false,
            entry_cache: EntryCacheStats {
                size_bytes: 2048,
                entries: 2,
                hits: 5,
                hit_bytes: 5120,
                misses: 1,
                evicted: 3,
                caches: 3,
            },
        };
        let text = Metrics::default().render("c", gauges);
        assert_grouped(&text);
        assert!(!text.contains("topic=\""), "{text}");
        assert!(text.contains("pulsar_ml_cache_used_size{cluster=\"c\"} 2048\n"), "{text}");
        assert!(text.contains("pulsar_ml_cache_hits_total{cluster=\"c\"} 5\n"), "{text}");
        assert!(text.contains("pulsar_ml_cache_misses_total{cluster=\"c\"} 1\n"), "{text}");
        assert!(text.contains("pulsar_producers_count{cluster=\"c\",namespace=\"public/default\"} 6\n"), "{text}");
        assert!(text.contains("pulsar_topics_count{cluster=\"c\",namespace=\"public/default\"} 2\n"), "{text}");
        assert!(text.contains("pulsar_producers_count{cluster=\"c\",namespace=\"a/b\"} 3\n"), "{text}");
        assert!(text.contains("pulsar_broker_producers_count{cluster=\"c\"} 9\n"), "{text}");
    }

    #[test]
    fn an_idle_broker_shows_zeros_not_negative_zeros() {
        let text = Metrics::default().render("c", Gauges::default());
        assert!(text.contains("pulsar_broker_rate_in{cluster=\"c\"} 0\n"), "{text}");
        assert!(!text.contains("-0"), "{text}");
    }
}
