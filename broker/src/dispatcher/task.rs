//! The dispatcher task of one subscription.
//!
//! It waits until a receiving consumer has permits and there is something to send (a
//! message to redeliver, a confirmed entry after the delivery position, a delayed message
//! whose time came), reads a run of entries (at most the permits), and for each asks the
//! subscription which consumer gets it (`Subscription::dispatch`), then sends it there as a
//! MESSAGE, spending as many permits as the entry holds messages (a batch counts each).
//! Reads and sends happen outside the subscription's lock; a read that a rewind made stale
//! is dropped. Sends wait when a consumer's connection queue is full (backpressure).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::managed_ledger::Position;
use crate::metrics::Metrics;
use crate::subscription::{now_ms, Dispatch, EntryInfo, Next, Subscription};

pub async fn run(subscription: Arc<Subscription>, cancel: CancellationToken) {
    let mut confirmed = subscription.ledger().watch_confirmed();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // Register interest before checking, so a wake between check and wait is not lost.
        let notified = subscription.notified();
        confirmed.borrow_and_update();
        let (entries, epoch, from_replay) = match subscription.next() {
            Next::Wait { until_ms } => {
                let delay =
                    until_ms.map_or(Duration::from_secs(3600), |at| Duration::from_millis(at.saturating_sub(now_ms())));
                tokio::select! {
                    () = notified => {}
                    changed = confirmed.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => break,
                }
                continue;
            }
            Next::Replay { positions, epoch } => {
                drop(notified);
                let read = tokio::select! {
                    read = read_positions(&subscription, &positions) => read,
                    () = cancel.cancelled() => break,
                };
                (read, epoch, true)
            }
            Next::Read { from, max, epoch } => {
                drop(notified);
                let read = tokio::select! {
                    read = subscription.ledger().read_entries(from, max) => read.map_err(|e| (from, e)),
                    () = cancel.cancelled() => break,
                };
                (read, epoch, false)
            }
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err((from, error)) => {
                warn!(subscription = subscription.name(), %from, %error, "read failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(super::READ_RETRY_DELAY) => continue,
                    () = cancel.cancelled() => break,
                }
            }
        };
        let mut sent_any = false;
        for (position, data) in entries {
            let info = EntryInfo::parse(&data);
            let (consumer, redelivery_count, ack_set) = match subscription.dispatch(position, &info, epoch, from_replay)
            {
                Dispatch::Stale => break,
                Dispatch::Skip => continue,
                Dispatch::Send { consumer, redelivery_count, ack_set } => (consumer, redelivery_count, ack_set),
            };
            sent_any = true;
            Metrics::add(&consumer.metrics.out_messages, info.messages.max(0) as u64);
            Metrics::add(&consumer.metrics.out_bytes, data.len() as u64);
            let frame = Subscription::message_frame(consumer.consumer_id, position, redelivery_count, ack_set, data);
            if consumer.outbound.send(frame).await.is_err() {
                // The connection is gone; its cleanup detaches the consumer and the message
                // goes to the replay set with the consumer's other unacknowledged ones.
                debug!(
                    subscription = subscription.name(),
                    consumer_id = consumer.consumer_id,
                    "consumer connection gone"
                );
            }
        }
        if from_replay {
            subscription.replay_pass_done(sent_any, epoch);
        }
    }
}

/// Reads the given positions (messages to send again), a run of consecutive ones at a time.
async fn read_positions(
    subscription: &Subscription,
    positions: &[Position],
) -> Result<Vec<(Position, Bytes)>, (Position, crate::error::BrokerError)> {
    let mut entries = Vec::with_capacity(positions.len());
    let mut index = 0;
    while index < positions.len() {
        let start = positions[index];
        let mut run = 1;
        while index + run < positions.len()
            && positions[index + run] == Position::new(start.ledger_id, start.entry_id + run as u64)
        {
            run += 1;
        }
        let read = subscription.ledger().read_entries(start, run as u32).await.map_err(|e| (start, e))?;
        if read.is_empty() {
            // Trimmed or never confirmed: nothing to send; dispatch forgets nothing, so skip.
            index += run;
            continue;
        }
        index += read.len().max(1);
        entries.extend(read);
    }
    Ok(entries)
}
