//! The dispatch task of one subscription: the I/O around the delivery core.
//!
//! It asks the subscription what to read ([`Subscription::next`]): nothing yet (wait for a
//! wake-up, a newly confirmed entry or a delayed message's time), positions to send again,
//! or new entries. It reads them (at most the permits), gives them back to
//! [`Subscription::dispatch`], and sends each message it is handed to its consumer, waiting
//! when a consumer's connection queue is full (backpressure). Reads and sends happen outside
//! the subscription's lock; a read that a rewind made stale is dropped by the core.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use magnetar_proto::clock::now_ms;
use tracing::{debug, warn};

use super::delivery::Next;
use super::Subscription;
use crate::error::BrokerError;
use crate::managed_ledger::Position;

/// How long the task waits before retrying a failed read.
pub const READ_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Runs until the subscription closes.
pub async fn run(subscription: Arc<Subscription>) {
    let cancel = subscription.stopped();
    let mut confirmed = subscription.ledger().watch_confirmed();
    // Entries written after where this subscription reads stay cached for it while it has
    // consumers.
    let cache = subscription.ledger().cache_reader();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // Register interest before checking, so a wake between check and wait is not lost.
        let notified = subscription.notified();
        confirmed.borrow_and_update();
        match subscription.cache_position() {
            Some(position) => cache.at(position),
            None => cache.idle(),
        }
        let (read, epoch, from_replay) = match subscription.next() {
            Next::Wait { until_ms } => {
                subscription.announce_end_of_topic();
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
            Next::Replay { mut positions, epoch } => {
                drop(notified);
                match budget(&subscription, &cancel).await {
                    Budget::Stop => break,
                    Budget::Retry => continue,
                    Budget::Messages(allowed) => positions.truncate(allowed.max(1) as usize),
                }
                let read = tokio::select! {
                    read = read_positions(&subscription, &positions) => read,
                    () = cancel.cancelled() => break,
                };
                (read, epoch, true)
            }
            Next::Read { from, after, max, epoch } => {
                drop(notified);
                let max = match budget(&subscription, &cancel).await {
                    Budget::Stop => break,
                    Budget::Retry => continue,
                    Budget::Messages(allowed) => max.min(allowed.clamp(1, u64::from(u32::MAX)) as u32),
                };
                let read = tokio::select! {
                    read = read_next(&subscription, from, after, max, epoch) => read.map_err(|e| (from, e)),
                    () = cancel.cancelled() => break,
                };
                (read, epoch, false)
            }
        };
        let entries = match read {
            Ok(entries) => entries,
            Err((from, error)) => {
                warn!(subscription = subscription.name(), %from, %error, "read failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(READ_RETRY_DELAY) => continue,
                    () = cancel.cancelled() => break,
                }
            }
        };
        let (mut sent_messages, mut sent_bytes) = (0u64, 0u64);
        for (sink, messages) in subscription.dispatch(entries, epoch, from_replay) {
            sent_messages += messages.iter().map(|m| m.messages.max(1) as u64).sum::<u64>();
            sent_bytes += messages.iter().map(|m| m.data.len() as u64).sum::<u64>();
            if !sink.send_messages(messages).await {
                // The connection is gone; its cleanup detaches the consumer and its messages
                // go to the replay set with the consumer's other unacknowledged ones.
                debug!(subscription = subscription.name(), "consumer connection gone");
            }
        }
        // The dispatch rate policies: pause until this subscription is within them.
        let wait = subscription.dispatch_wait(sent_messages, sent_bytes);
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => break,
            }
        }
    }
}

/// What the dispatch rates allow before a read.
enum Budget {
    /// This many messages (entries) now; unlimited is `u64::MAX`.
    Messages(u64),
    /// Waited for the rate: ask the subscription again.
    Retry,
    Stop,
}

async fn budget(subscription: &Subscription, cancel: &tokio_util::sync::CancellationToken) -> Budget {
    match subscription.dispatch_budget() {
        Ok(allowed) => Budget::Messages(allowed.unwrap_or(u64::MAX)),
        Err(wait) => tokio::select! {
            () = tokio::time::sleep(wait) => Budget::Retry,
            () = cancel.cancelled() => Budget::Stop,
        },
    }
}

/// Reads new entries: from the compacted view while a `read_compacted` subscription is
/// before its horizon (moving past the horizon once the view is read), else from the log.
async fn read_next(
    subscription: &Subscription,
    from: Position,
    after: Option<Position>,
    max: u32,
    epoch: u64,
) -> Result<Vec<(Position, Bytes)>, BrokerError> {
    if let Some(compacted) = subscription.compacted_view() {
        let horizon = compacted.horizon();
        if after.is_none_or(|after| after < horizon) {
            let entries = compacted.read_after(subscription.ledger().bookies(), after, max).await?;
            if entries.is_empty() {
                subscription.skip_to(horizon, epoch);
            }
            return Ok(entries);
        }
    }
    subscription.ledger().read_entries(from, max).await
}

/// Reads the given positions (messages to send again), a run of consecutive ones at a time.
/// A `read_compacted` subscription reads those up to its horizon from the compacted view.
async fn read_positions(
    subscription: &Subscription,
    positions: &[Position],
) -> Result<Vec<(Position, Bytes)>, (Position, BrokerError)> {
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
        let compacted = subscription.compacted_view().filter(|view| start <= view.horizon());
        let read = match compacted {
            Some(view) => view.read_exact(subscription.ledger().bookies(), &positions[index..index + run]).await,
            None => subscription.ledger().read_entries(start, run as u32).await,
        }
        .map_err(|e| (start, e))?;
        if read.is_empty() {
            // Trimmed or never confirmed: nothing to send.
            index += run;
            continue;
        }
        index += read.len().max(1);
        entries.extend(read);
    }
    Ok(entries)
}
