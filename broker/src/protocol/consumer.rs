//! A consumer's side of its connection: the frames a subscription's decisions become
//! (MESSAGE, ACTIVE_CONSUMER_CHANGE, CLOSE_CONSUMER), queued to the connection's writer.

use std::sync::Arc;

use async_trait::async_trait;
use magnetar_proto::command;
use magnetar_proto::pulsar::{base_command::Type, BaseCommand, CommandActiveConsumerChange};
use tokio::sync::mpsc;

use super::Outbound;
use crate::metrics::Metrics;
use crate::stats::ConsumerStats;
use crate::subscription::{ConsumerSink, OutgoingMessage};

/// One consumer of one connection, as its subscription sends to it.
pub struct ConnectionConsumer {
    pub consumer_id: u64,
    /// The connection's writer queue.
    pub outbound: mpsc::Sender<Outbound>,
    pub metrics: Arc<Metrics>,
    /// This consumer's own counters (stats).
    pub stats: Arc<ConsumerStats>,
    /// Whether its client handles REACHED_END_OF_TOPIC (see [`understands_end_of_topic`]).
    pub end_of_topic: bool,
    /// The partition index of its topic (a partition of a partitioned topic), written into
    /// every message id as Pulsar's broker does, so clients see which partition a message
    /// came from.
    pub partition: Option<i32>,
}

/// CONSUMER_STATS_RESPONSE: what a consumer's own counters say (rates, name, address, type),
/// over `own`, what its subscription knows of it (permits, unacknowledged, backlog).
pub fn stats_response(
    request_id: u64,
    stats: &ConsumerStats,
    consumer_type: &str,
    own: magnetar_proto::pulsar::CommandConsumerStatsResponse,
) -> BaseCommand {
    let dispatched = stats.dispatched.rates();
    BaseCommand {
        command_type: Type::ConsumerStatsResponse as i32,
        consumer_stats_response: Some(magnetar_proto::pulsar::CommandConsumerStatsResponse {
            request_id,
            msg_rate_out: Some(dispatched.messages),
            msg_throughput_out: Some(dispatched.bytes),
            msg_rate_redeliver: Some(stats.redelivered.rates().messages),
            consumer_name: Some(stats.name.clone()),
            address: Some(stats.client.address.clone()),
            connected_since: Some(stats.client.connected_since.clone()),
            consumer_type: Some(consumer_type.to_owned()),
            msg_rate_expired: Some(0.0),
            ..own
        }),
        ..Default::default()
    }
}

/// Whether a client that connected as `client_version` handles REACHED_END_OF_TOPIC. The
/// C++ client (and the Python and Node clients built on it, which connect as
/// `Pulsar-CPP-v...`) treats that command as an invalid message and drops the whole
/// connection, so that its consumers get their unacknowledged messages again; it learns the
/// end of a terminated topic from GET_LAST_MESSAGE_ID instead. Java, Go and Rust clients
/// handle it.
pub fn understands_end_of_topic(client_version: &str) -> bool {
    !client_version.starts_with("Pulsar-CPP")
}

#[async_trait]
impl ConsumerSink for ConnectionConsumer {
    async fn send_messages(&self, messages: Vec<OutgoingMessage>) -> bool {
        for message in messages {
            Metrics::add(&self.metrics.out_messages, message.messages.max(0) as u64);
            Metrics::add(&self.metrics.out_bytes, message.data.len() as u64);
            self.stats.dispatched.record(message.messages.max(0) as u64, message.data.len() as u64);
            let position = message.position;
            let mut frame =
                command::message(self.consumer_id, position.ledger_id, position.entry_id, message.redelivery_count);
            if let Some(body) = frame.message.as_mut() {
                body.ack_set = message.ack_set;
                body.message_id.partition = self.partition;
            }
            if self.outbound.send(Outbound { command: frame, payload: Some(message.data) }).await.is_err() {
                return false;
            }
        }
        true
    }

    fn active_changed(&self, is_active: bool) {
        let frame = BaseCommand {
            command_type: Type::ActiveConsumerChange as i32,
            active_consumer_change: Some(CommandActiveConsumerChange {
                consumer_id: self.consumer_id,
                is_active: Some(is_active),
            }),
            ..Default::default()
        };
        let _ = self.outbound.try_send(Outbound::command(frame));
    }

    fn reached_end_of_topic(&self) {
        if !self.end_of_topic {
            return;
        }
        let _ = self.outbound.try_send(Outbound::command(command::reached_end_of_topic(self.consumer_id)));
    }

    fn closed_by_broker(&self) {
        // Request id -1, as Pulsar's broker-initiated close.
        let frame = command::close_consumer(self.consumer_id, u64::MAX);
        let _ = self.outbound.try_send(Outbound::command(frame));
    }
}
