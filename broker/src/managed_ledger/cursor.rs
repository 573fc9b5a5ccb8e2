//! A durable cursor: how far a subscription has acknowledged.
//!
//! State: the mark-delete position (everything up to and including it is acknowledged) and the
//! positions acknowledged individually beyond it. Acks change the state in memory at once; a
//! persister task writes the latest state to the metadata store (at [`cursor_path`]) whenever
//! it changed, coalescing bursts of acks into one write. After a crash, at most the acks made
//! since the last completed write are lost, and those messages are delivered again
//! (at-least-once), never skipped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use magnetar_meta::{Expected, MetadataStore};
use magnetar_proto::records::{AckRange, CursorInfo};
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{ManagedLedger, Position};
use crate::error::BrokerError;

pub fn cursor_path(managed_ledger: &str, subscription: &str) -> String {
    format!("/magnetar/cursors/{managed_ledger}/{subscription}")
}

/// The acknowledgement state of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorState {
    pub mark_delete: Option<Position>,
    pub individually_acked: BTreeSet<Position>,
}

impl CursorState {
    pub fn is_acked(&self, position: Position) -> bool {
        self.mark_delete.is_some_and(|m| position <= m) || self.individually_acked.contains(&position)
    }

    /// Acknowledges one position; returns whether anything changed.
    pub fn ack_individual(&mut self, position: Position, ledger: &ManagedLedger) -> bool {
        if self.is_acked(position) {
            return false;
        }
        self.individually_acked.insert(position);
        self.advance(ledger);
        true
    }

    /// Acknowledges everything up to and including `position`.
    pub fn ack_cumulative(&mut self, position: Position, ledger: &ManagedLedger) -> bool {
        if self.mark_delete.is_some_and(|m| position <= m) {
            return false;
        }
        self.mark_delete = Some(position);
        self.individually_acked.retain(|p| *p > position);
        self.advance(ledger);
        true
    }

    /// Moves the mark-delete position over individually acknowledged positions that follow it.
    fn advance(&mut self, ledger: &ManagedLedger) {
        while let Some(next) = ledger.next_position(self.mark_delete) {
            if !self.individually_acked.remove(&next) {
                break;
            }
            self.mark_delete = Some(next);
        }
    }

    pub fn to_record(&self) -> CursorInfo {
        let mut ranges: Vec<AckRange> = Vec::new();
        let mut current: Option<(Position, Position)> = None;
        for position in &self.individually_acked {
            current = match current {
                Some((start, end)) if end.ledger_id == position.ledger_id && end.entry_id + 1 == position.entry_id => {
                    Some((start, *position))
                }
                Some((start, end)) => {
                    ranges.push(AckRange { start: Some(start.into()), end: Some(end.into()) });
                    Some((*position, *position))
                }
                None => Some((*position, *position)),
            };
        }
        if let Some((start, end)) = current {
            ranges.push(AckRange { start: Some(start.into()), end: Some(end.into()) });
        }
        CursorInfo {
            mark_delete: self.mark_delete.map(Into::into),
            individually_acked: ranges,
            updated_at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// Rebuilds the state from a stored record; ranges are bounded by `MAX_RESTORED_ACKS`.
    pub fn from_record(record: &CursorInfo) -> Result<Self, String> {
        let mut individually_acked = BTreeSet::new();
        for range in &record.individually_acked {
            let (Some(start), Some(end)) = (&range.start, &range.end) else {
                return Err("ack range without start or end".to_owned());
            };
            if start.ledger_id != end.ledger_id || start.entry_id > end.entry_id {
                return Err(format!(
                    "bad ack range {}:{}..{}:{}",
                    start.ledger_id, start.entry_id, end.ledger_id, end.entry_id
                ));
            }
            if individually_acked.len() as u64 + (end.entry_id - start.entry_id + 1) > MAX_RESTORED_ACKS {
                return Err(format!("more than {MAX_RESTORED_ACKS} individually acknowledged positions"));
            }
            for entry_id in start.entry_id..=end.entry_id {
                individually_acked.insert(Position::new(start.ledger_id, entry_id));
            }
        }
        Ok(CursorState { mark_delete: record.mark_delete.as_ref().map(Position::from), individually_acked })
    }
}

/// Bound on individually acknowledged positions restored from a record.
pub const MAX_RESTORED_ACKS: u64 = 1_000_000;

/// Loads a cursor's stored state, if the subscription exists.
pub async fn load(store: &dyn MetadataStore, path: &str) -> Result<Option<CursorState>, BrokerError> {
    let Some(found) = store.get(path).await? else { return Ok(None) };
    let record = CursorInfo::decode(&found.value[..])
        .map_err(|error| BrokerError::Corrupt { what: path.to_owned(), reason: error.to_string() })?;
    let state =
        CursorState::from_record(&record).map_err(|reason| BrokerError::Corrupt { what: path.to_owned(), reason })?;
    Ok(Some(state))
}

/// Writes cursor states to the metadata store in the background, latest state wins.
pub struct CursorPersister {
    /// The latest state queued, numbered by generation.
    latest: watch::Sender<Option<(u64, CursorInfo)>>,
    /// The highest generation written to the store.
    written: watch::Receiver<u64>,
    done: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
}

/// Longest a flush waits for the store before giving up (the state stays queued).
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl CursorPersister {
    pub fn start(store: Arc<dyn MetadataStore>, path: String) -> Self {
        let (latest, mut changes) = watch::channel::<Option<(u64, CursorInfo)>>(None);
        let (mark_written, written) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let task_stop = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let stopping = tokio::select! {
                    changed = changes.changed() => changed.is_err(),
                    () = task_stop.cancelled() => true,
                };
                let queued = changes.borrow_and_update().clone();
                if let Some((generation, record)) = queued {
                    match store.put(&path, record.encode_to_vec(), Expected::Any).await {
                        Ok(_) => {
                            mark_written.send_replace(generation);
                        }
                        Err(error) => {
                            warn!(cursor = %path, %error, "cannot persist cursor; will retry with the next ack")
                        }
                    }
                }
                if stopping {
                    break;
                }
            }
        });
        CursorPersister { latest, written, done: tokio::sync::Mutex::new(Some(task)), stop }
    }

    /// Queues the state for writing.
    pub fn persist(&self, state: &CursorState) {
        let record = state.to_record();
        self.latest.send_modify(|latest| {
            let generation = latest.as_ref().map_or(1, |(generation, _)| generation + 1);
            *latest = Some((generation, record));
        });
    }

    /// Waits until the latest queued state is written (or `FLUSH_TIMEOUT` passes).
    pub async fn flush(&self) {
        let Some(target) = self.latest.borrow().as_ref().map(|(generation, _)| *generation) else { return };
        let mut written = self.written.clone();
        if tokio::time::timeout(FLUSH_TIMEOUT, written.wait_for(|done| *done >= target)).await.is_err() {
            warn!("cursor flush timed out; the latest acks stay queued");
        }
    }

    /// Writes the latest queued state and stops.
    pub async fn flush_and_stop(&self) {
        self.stop.cancel();
        if let Some(task) = self.done.lock().await.take() {
            let _ = task.await;
        }
    }
}
