//! The Exclusive dispatcher: one consumer, every message in log order.
//!
//! One task per attached consumer. It waits until the consumer has permits and a confirmed
//! entry follows the delivery position, reads a run of entries (at most the permits), and
//! sends each unacknowledged one as a MESSAGE, spending as many permits as the entry holds
//! messages (a batch counts each message). Reads and sends happen outside the subscription's
//! lock; a read that a redelivery made stale is dropped (`Subscription::take`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use magnetar_proto::frame::Payload;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::subscription::{ConsumerHandle, Next, Subscription};

pub async fn run(subscription: Arc<Subscription>, consumer: Arc<ConsumerHandle>, cancel: CancellationToken) {
    let mut confirmed = subscription.ledger().watch_confirmed();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // Register interest before checking, so a wake between check and wait is not lost.
        let notified = subscription.notified();
        confirmed.borrow_and_update();
        let (from, max, epoch) = match subscription.next(&consumer) {
            Next::Wait => {
                tokio::select! {
                    () = notified => {}
                    changed = confirmed.changed() => if changed.is_err() { break },
                    () = cancel.cancelled() => break,
                }
                continue;
            }
            Next::Read { from, max, epoch } => (from, max, epoch),
        };
        drop(notified);
        let entries = tokio::select! {
            read = subscription.ledger().read_entries(from, max) => read,
            () = cancel.cancelled() => break,
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(error) => {
                warn!(subscription = subscription.name(), %from, %error, "read failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(super::READ_RETRY_DELAY) => continue,
                    () = cancel.cancelled() => break,
                }
            }
        };
        for (position, data) in entries {
            let redelivery_count = match subscription.take(position, epoch) {
                Err(()) => break,
                Ok(None) => continue,
                Ok(Some(count)) => count,
            };
            // A payload the broker cannot parse still goes out: the client reports it.
            let messages = Payload::parse(data.clone()).map_or(1, |p| i64::from(p.num_messages()));
            consumer.permits.fetch_sub(messages, Ordering::SeqCst);
            Metrics::add(&consumer.metrics.out_messages, messages.max(0) as u64);
            Metrics::add(&consumer.metrics.out_bytes, data.len() as u64);
            let frame = Subscription::message_frame(consumer.consumer_id, position, redelivery_count, data);
            if consumer.outbound.send(frame).await.is_err() {
                debug!(subscription = subscription.name(), "consumer connection gone");
                return;
            }
        }
    }
}
