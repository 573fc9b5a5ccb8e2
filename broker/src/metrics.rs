//! Broker-wide counters, rendered as Prometheus text with Pulsar's metric names.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// Gauges computed from current state at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub topics: u64,
    pub producers: u64,
    pub subscriptions: u64,
    pub consumers: u64,
    pub backlog: u64,
    /// Per topic, as Pulsar labels them.
    pub per_topic: Vec<TopicGauges>,
}

/// One topic's backlog and storage, and each subscription's backlog.
#[derive(Debug, Default, Clone)]
pub struct TopicGauges {
    pub namespace: String,
    pub topic: String,
    pub backlog: u64,
    pub storage_size: u64,
    pub subscriptions: Vec<(String, u64)>,
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self, cluster: &str, gauges: Gauges) -> String {
        let mut out = String::new();
        let labels = format!("cluster=\"{cluster}\"");
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric("pulsar_topics_count", "gauge", "Topics served by this broker", gauges.topics);
        metric("pulsar_producers_count", "gauge", "Connected producers", gauges.producers);
        metric("pulsar_subscriptions_count", "gauge", "Subscriptions of open topics", gauges.subscriptions);
        metric("pulsar_consumers_count", "gauge", "Connected consumers", gauges.consumers);
        metric("pulsar_msg_backlog", "gauge", "Unacknowledged entries over all subscriptions", gauges.backlog);
        metric("pulsar_in_messages_total", "counter", "Messages published and made durable", get(&self.in_messages));
        metric("pulsar_in_bytes_total", "counter", "Bytes published and made durable", get(&self.in_bytes));
        metric("pulsar_out_messages_total", "counter", "Messages dispatched to consumers", get(&self.out_messages));
        metric("pulsar_out_bytes_total", "counter", "Bytes dispatched to consumers", get(&self.out_bytes));
        metric(
            "magnetar_connections_opened_total",
            "counter",
            "Client connections accepted",
            get(&self.connections_opened),
        );
        metric(
            "magnetar_connections_closed_total",
            "counter",
            "Client connections closed",
            get(&self.connections_closed),
        );
        metric(
            "pulsar_authentication_success_total",
            "counter",
            "Credentials accepted (CONNECT, AUTH_RESPONSE, HTTP)",
            get(&self.authentication_successes),
        );
        metric(
            "pulsar_authentication_failures_total",
            "counter",
            "Credentials refused or expired (CONNECT, AUTH_RESPONSE, HTTP)",
            get(&self.authentication_failures),
        );
        metric("magnetar_send_errors_total", "counter", "Publishes answered with an error", get(&self.send_errors));
        metric("magnetar_protocol_errors_total", "counter", "Malformed or refused frames", get(&self.protocol_errors));
        if !gauges.per_topic.is_empty() {
            let _ = writeln!(
                out,
                "# HELP pulsar_storage_size Bytes stored for the topic\n# TYPE pulsar_storage_size gauge"
            );
            for topic in &gauges.per_topic {
                let topic_labels =
                    format!("{labels},namespace=\"{}\",topic=\"{}\"", label(&topic.namespace), label(&topic.topic));
                let _ = writeln!(out, "pulsar_msg_backlog{{{topic_labels}}} {}", topic.backlog);
                let _ = writeln!(out, "pulsar_storage_size{{{topic_labels}}} {}", topic.storage_size);
                for (subscription, backlog) in &topic.subscriptions {
                    let _ = writeln!(
                        out,
                        "pulsar_subscription_back_log{{{topic_labels},subscription=\"{}\"}} {backlog}",
                        label(subscription)
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_is_rendered_per_topic_and_subscription() {
        let gauges = Gauges {
            backlog: 7,
            per_topic: vec![TopicGauges {
                namespace: "public/default".to_owned(),
                topic: "persistent://public/default/t".to_owned(),
                backlog: 7,
                storage_size: 300,
                subscriptions: vec![("a".to_owned(), 5), ("b\"".to_owned(), 2)],
            }],
            ..Gauges::default()
        };
        let text = Metrics::default().render("c", gauges);
        let topic = "cluster=\"c\",namespace=\"public/default\",topic=\"persistent://public/default/t\"";
        assert!(text.contains("pulsar_msg_backlog{cluster=\"c\"} 7\n"), "{text}");
        assert!(text.contains(&format!("pulsar_msg_backlog{{{topic}}} 7\n")), "{text}");
        assert!(text.contains(&format!("pulsar_storage_size{{{topic}}} 300\n")), "{text}");
        assert!(text.contains(&format!("pulsar_subscription_back_log{{{topic},subscription=\"a\"}} 5\n")), "{text}");
        assert!(
            text.contains(&format!("pulsar_subscription_back_log{{{topic},subscription=\"b\\\"\"}} 2\n")),
            "{text}"
        );
    }
}
