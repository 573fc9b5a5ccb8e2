//! Where a subscription starts or is moved to: a new cursor's initial position, a seek by
//! message id or publish time, a reader's start id or rollback. The publish-time search
//! scans the ledger's entries.

use magnetar_proto::frame::Payload;

use crate::dispatcher::MAX_READ_BATCH;
use crate::error::BrokerError;
use crate::managed_ledger::{ManagedLedger, Position};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    Earliest,
    Latest,
}

/// Where a new cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Initial(InitialPosition),
    /// The mark-delete position (`None`: before the first entry).
    After(Option<Position>),
}

/// The mark-delete position that makes the first entry published at or after `time_ms` the
/// next one delivered (the end if there is none): a seek by time, a reader's rollback. A
/// linear scan from the oldest entry, reading runs of entries.
pub async fn mark_delete_for_publish_time(
    ledger: &ManagedLedger,
    time_ms: u64,
) -> Result<Option<Position>, BrokerError> {
    let mut after = None;
    while let Some(from) = ledger.next_position(after) {
        let entries = ledger.read_entries(from, MAX_READ_BATCH).await?;
        if entries.is_empty() {
            break;
        }
        for (position, data) in entries {
            let published = Payload::parse(data).map_or(0, |p| p.metadata().publish_time);
            if published >= time_ms {
                return Ok(after);
            }
            after = Some(position);
        }
    }
    Ok(after)
}

/// How far messages published before `cutoff_ms` reach after `after` (a subscription's
/// mark-delete position): the last such position, scanning at most `budget` entries (message
/// TTL continues on its next round). `None`: nothing after `after` is that old.
pub async fn published_before(
    ledger: &ManagedLedger,
    after: Option<Position>,
    cutoff_ms: u64,
    budget: u32,
) -> Result<Option<Position>, BrokerError> {
    let mut last_old = None;
    let mut cursor = after;
    let mut scanned = 0;
    while scanned < budget {
        let Some(from) = ledger.next_position(cursor) else { break };
        let entries = ledger.read_entries(from, MAX_READ_BATCH.min(budget - scanned)).await?;
        if entries.is_empty() {
            break;
        }
        for (position, data) in entries {
            scanned += 1;
            let published = Payload::parse(data).map_or(0, |p| p.metadata().publish_time);
            if published >= cutoff_ms {
                return Ok(last_old);
            }
            last_old = Some(position);
            cursor = Some(position);
        }
    }
    Ok(last_old)
}

/// The publish time of the first entry after `after`, if there is one (a backlog's age).
pub async fn first_publish_time(ledger: &ManagedLedger, after: Option<Position>) -> Result<Option<u64>, BrokerError> {
    let Some(from) = ledger.next_position(after) else { return Ok(None) };
    let entries = ledger.read_entries(from, 1).await?;
    Ok(entries.into_iter().next().map(|(_, data)| Payload::parse(data).map_or(0, |p| p.metadata().publish_time)))
}

/// The mark-delete position that makes `position` the next message delivered.
pub fn start_before(ledger: &ManagedLedger, position: Position) -> Option<Position> {
    match ledger.last_confirmed() {
        Some(last) if position > last => Some(last),
        None => None,
        Some(_) => ledger.position_before(position),
    }
}
