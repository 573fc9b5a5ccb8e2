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
    pub connections_closed: AtomicU64,
    pub send_errors: AtomicU64,
    pub protocol_errors: AtomicU64,
}

/// Gauges computed from current state at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub topics: u64,
    pub producers: u64,
    pub subscriptions: u64,
    pub consumers: u64,
    pub backlog: u64,
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
        metric("magnetar_send_errors_total", "counter", "Publishes answered with an error", get(&self.send_errors));
        metric("magnetar_protocol_errors_total", "counter", "Malformed or refused frames", get(&self.protocol_errors));
        out
    }
}
