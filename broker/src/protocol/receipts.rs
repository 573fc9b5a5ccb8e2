//! A producer's receipt task: answers its publishes strictly in send order (Pulsar clients
//! require receipts in send order), each once durable: SEND_RECEIPT with the entry's
//! position, or SEND_ERROR. When the topic closes under the producer (it moves to another
//! broker), CLOSE_PRODUCER follows the receipts queued before it, so the client resends the
//! rest after a lookup.
//!
//! The queue between the connection and this task is bounded
//! ([`MAX_PENDING_SENDS_PER_PRODUCER`](super::MAX_PENDING_SENDS_PER_PRODUCER)): when full the
//! connection stops reading (backpressure on the socket).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use magnetar_proto::command;
use tokio::sync::mpsc;
use tracing::warn;

use super::Outbound;
use crate::error::BrokerError;
use crate::managed_ledger::AddFuture;
use crate::metrics::Metrics;
use crate::stats::ProducerStats;
use crate::topic::Topic;

/// A publish waiting to be durable.
pub struct PendingReceipt {
    pub sequence_id: u64,
    pub highest_sequence_id: u64,
    pub messages: u64,
    pub bytes: u64,
    pub durable: AddFuture,
}

/// What a producer's receipt task answers, in order.
pub enum ReceiptItem {
    Publish(PendingReceipt),
    /// The topic closed (moving to another broker), or a publish could not be handed to
    /// storage: after the receipts before it, send CLOSE_PRODUCER so the client reconnects
    /// (through a lookup) and resends the rest. Nothing after it is answered.
    Close,
}

/// Where a durable publish is counted: the broker's totals, its topic's and its producer's;
/// `producer_key` is the producer's registration on the topic.
pub struct Counters {
    pub broker: Arc<Metrics>,
    pub topic: Arc<Topic>,
    pub producer: Arc<ProducerStats>,
    pub producer_key: u64,
}

/// Answers one producer's publishes in order, each once durable.
/// `closed` is the producer's flag: set here when a send fails to persist.
pub async fn answer_receipts(
    producer_id: u64,
    mut queue: mpsc::Receiver<ReceiptItem>,
    outbound: mpsc::Sender<Outbound>,
    counters: Counters,
    closed: Arc<AtomicBool>,
) {
    let metrics = &counters.broker;
    // A send failed to persist and the producer was closed: nothing more is answered.
    let mut failed = false;
    while let Some(item) = queue.recv().await {
        let pending = match item {
            _ if failed => continue,
            ReceiptItem::Publish(pending) => pending,
            ReceiptItem::Close => {
                // Request id -1, as Pulsar's broker-initiated close.
                let close = command::close_producer(producer_id, u64::MAX);
                if outbound.send(Outbound::command(close)).await.is_err() {
                    return;
                }
                // Closed once: whatever follows is sent again after the client registers.
                failed = true;
                continue;
            }
        };
        let mut pending = pending;
        let answer = match (&mut pending.durable).await {
            Ok(position) => {
                Metrics::add(&metrics.in_messages, pending.messages);
                Metrics::add(&metrics.in_bytes, pending.bytes);
                counters.topic.record_received(pending.messages, pending.bytes);
                counters.producer.published.record(pending.messages, pending.bytes);
                command::send_receipt(
                    producer_id,
                    pending.sequence_id,
                    pending.highest_sequence_id,
                    position.ledger_id,
                    position.entry_id,
                )
            }
            Err(error @ BrokerError::Storage(_)) => {
                // Every later send of this producer was refused or failed too (the managed
                // ledger refuses adds while failed ones are unanswered, and this answer is
                // unanswered until `pending` drops below): closing the producer makes the
                // client send them all again, in order, as after a topic move.
                warn!(producer_id, sequence_id = pending.sequence_id, %error, "publish not durable; closing the producer so its client resends");
                Metrics::add(&metrics.send_errors, 1);
                closed.store(true, Ordering::Release);
                failed = true;
                drop(pending);
                // Gone from the topic before the client hears of it, as Pulsar's broker-side
                // close: the client registers the producer again (under any producer id, on
                // any connection), and its name must be free by then.
                counters.topic.remove_producer(&counters.producer.name, counters.producer_key);
                command::close_producer(producer_id, u64::MAX)
            }
            Err(error) => {
                warn!(producer_id, sequence_id = pending.sequence_id, %error, "publish not durable");
                Metrics::add(&metrics.send_errors, 1);
                command::send_error(producer_id, pending.sequence_id, error.server_error(), &error.to_string())
            }
        };
        if outbound.send(Outbound::command(answer)).await.is_err() {
            return;
        }
    }
}
