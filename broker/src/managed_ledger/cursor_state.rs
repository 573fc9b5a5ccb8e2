//! The acknowledgement state of one subscription, without I/O: the mark-delete position,
//! the positions acknowledged individually beyond it (a range set), and batch entries whose
//! messages are acknowledged in part (batch-index acks).
//!
//! Which positions exist is asked of a [`PositionView`] (the managed ledger's list of ledgers
//! and entry counts, or a test's model), so the state is driven by plain code. Its record
//! form ([`CursorInfo`]) is what the cursor's persister writes; every bound on what a record
//! may hold is checked when it is read back.

use std::collections::BTreeMap;

use magnetar_proto::records::{AckRange, BatchAck, CursorInfo};

use super::ack_ranges::AckRanges;
use super::Position;

/// Which entries exist: enough for cursor arithmetic.
pub trait PositionView {
    /// The first confirmed entry after `after` (`None`: from the very start), if any.
    fn next_position(&self, after: Option<Position>) -> Option<Position>;
    /// Whether `position` names a confirmed entry (an ack for anything else is ignored).
    fn contains(&self, position: Position) -> bool;
}

/// A managed ledger's entries at one moment: ledger ids (ascending) and the confirmed entries
/// of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerPositions {
    pub ledgers: Vec<(u64, u64)>,
}

impl PositionView for LedgerPositions {
    fn next_position(&self, after: Option<Position>) -> Option<Position> {
        for &(ledger_id, entries) in &self.ledgers {
            if entries == 0 {
                continue;
            }
            match after {
                None => return Some(Position::new(ledger_id, 0)),
                Some(after) if ledger_id < after.ledger_id => continue,
                Some(after) if ledger_id == after.ledger_id => {
                    if after.entry_id + 1 < entries {
                        return Some(Position::new(ledger_id, after.entry_id + 1));
                    }
                }
                Some(_) => return Some(Position::new(ledger_id, 0)),
            }
        }
        None
    }

    fn contains(&self, position: Position) -> bool {
        self.ledgers.iter().any(|(id, entries)| *id == position.ledger_id && position.entry_id < *entries)
    }
}

/// Bound on individually acknowledged positions restored from a record.
pub const MAX_RESTORED_ACKS: u64 = 1_000_000;

/// Most ranges of individually acknowledged positions one state change stores (Pulsar's
/// `managedLedgerMaxUnackedRangesToPersist`); it keeps a stored state well below a bookie's
/// entry size limit. Acks beyond it are delivered again after a reopen.
pub const MAX_PERSISTED_ACK_RANGES: usize = 10_000;

/// Most partly acknowledged batch entries one state change stores (Pulsar's
/// `managedLedgerMaxBatchDeletedIndexToPersist`). Beyond it a batch's acked indexes are
/// delivered again after a reopen (the client drops none of them then).
pub const MAX_PERSISTED_BATCH_ACKS: usize = 10_000;

/// Longest `unacked` bit set a batch ack may have: 1024 words = 65536 messages a batch
/// (an ack with a longer one is ignored; a record holding one is refused).
pub const MAX_BATCH_ACK_WORDS: usize = 1024;

/// The acknowledgement state of one subscription; see the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorState {
    /// Everything up to and including it is acknowledged (`None`: nothing yet).
    pub mark_delete: Option<Position>,
    /// Positions acknowledged one by one after `mark_delete`.
    pub individually_acked: AckRanges,
    /// Batch entries after `mark_delete` acknowledged in part: the bits of the indexes still
    /// unacknowledged (bit set = not acknowledged, as the wire's `ack_set`).
    pub batch_acks: BTreeMap<Position, Vec<i64>>,
}

impl CursorState {
    /// A state with everything up to `mark_delete` acknowledged and nothing after it.
    pub fn at(mark_delete: Option<Position>) -> Self {
        CursorState { mark_delete, ..Default::default() }
    }

    pub fn is_acked(&self, position: Position) -> bool {
        self.mark_delete.is_some_and(|m| position <= m) || self.individually_acked.contains(position)
    }

    /// The batch indexes of `position` still unacknowledged (empty: none were acknowledged).
    pub fn batch_unacked(&self, position: Position) -> &[i64] {
        self.batch_acks.get(&position).map_or(&[], Vec::as_slice)
    }

    /// Acknowledges one position; returns whether anything changed.
    pub fn ack_individual(&mut self, position: Position, view: &impl PositionView) -> bool {
        if self.is_acked(position) {
            return false;
        }
        self.individually_acked.insert(position);
        self.batch_acks.remove(&position);
        self.advance(view);
        true
    }

    /// Acknowledges everything up to and including `position`.
    pub fn ack_cumulative(&mut self, position: Position, view: &impl PositionView) -> bool {
        if self.mark_delete.is_some_and(|m| position <= m) {
            return false;
        }
        self.mark_delete = Some(position);
        self.individually_acked.remove_through(position);
        self.batch_acks = self.batch_acks.split_off(&Position::new(position.ledger_id, position.entry_id + 1));
        self.advance(view);
        true
    }

    /// One id of an ACK: a whole entry (`unacked` empty or all zero), or some indexes of a
    /// batch entry (`unacked`: the bits of the indexes not acknowledged). Ids that are not
    /// entries of `view` are ignored. A batch entry whose every index is acknowledged is
    /// acknowledged as a whole; a cumulative ack of part of a batch acknowledges every entry
    /// before it. Returns whether anything changed.
    pub fn ack(&mut self, position: Position, unacked: &[i64], cumulative: bool, view: &impl PositionView) -> bool {
        if !view.contains(position) || self.is_acked(position) {
            return false;
        }
        if unacked.len() > MAX_BATCH_ACK_WORDS {
            return false;
        }
        if unacked.iter().any(|word| *word != 0) {
            let mut changed = false;
            if cumulative && position.entry_id > 0 {
                changed |= self.ack_cumulative(Position::new(position.ledger_id, position.entry_id - 1), view);
            }
            let remaining = match self.batch_acks.get_mut(&position) {
                Some(remaining) => {
                    for (word, still) in remaining.iter_mut().zip(unacked) {
                        changed |= *word & *still != *word;
                        *word &= *still;
                    }
                    remaining
                }
                None => {
                    changed = true;
                    self.batch_acks.entry(position).or_insert_with(|| unacked.to_vec())
                }
            };
            if remaining.iter().any(|word| *word != 0) {
                return changed;
            }
        }
        if cumulative {
            self.ack_cumulative(position, view)
        } else {
            self.ack_individual(position, view)
        }
    }

    /// Moves the mark-delete position over the individually acknowledged runs that follow it.
    fn advance(&mut self, view: &impl PositionView) {
        while let Some(next) = view.next_position(self.mark_delete) {
            let Some(end) = self.individually_acked.run_end(next) else { break };
            self.mark_delete = Some(end);
            self.individually_acked.remove_through(end);
        }
        if let Some(mark) = self.mark_delete {
            if self.batch_acks.first_key_value().is_some_and(|(p, _)| *p <= mark) {
                self.batch_acks = self.batch_acks.split_off(&Position::new(mark.ledger_id, mark.entry_id + 1));
            }
        }
    }

    /// Moves the cursor to `mark_delete` (a seek), forgetting every individual ack: what
    /// follows is delivered again, as Pulsar's `resetCursor`.
    pub fn reset(&mut self, mark_delete: Option<Position>) {
        self.mark_delete = mark_delete;
        self.individually_acked.clear();
        self.batch_acks.clear();
    }

    /// Unacknowledged entries when `entries_after_mark_delete` entries follow the mark-delete
    /// position and `last` is the last confirmed one.
    pub fn backlog(&self, entries_after_mark_delete: u64, last: Option<Position>) -> u64 {
        let acked_beyond = last.map_or(0, |last| self.individually_acked.count_through(last));
        entries_after_mark_delete.saturating_sub(acked_beyond)
    }

    /// The record form, as the persister writes it (bounded: see the `MAX_PERSISTED_*` bounds).
    pub fn to_record(&self) -> CursorInfo {
        let individually_acked = self
            .individually_acked
            .ranges()
            .take(MAX_PERSISTED_ACK_RANGES)
            .map(|(start, end)| AckRange { start: Some(start.into()), end: Some(end.into()) })
            .collect();
        let batch_acks = self
            .batch_acks
            .iter()
            .take(MAX_PERSISTED_BATCH_ACKS)
            .map(|(position, unacked)| BatchAck { position: Some((*position).into()), unacked: unacked.clone() })
            .collect();
        CursorInfo {
            mark_delete: self.mark_delete.map(Into::into),
            individually_acked,
            updated_at_ms: magnetar_proto::clock::now_ms(),
            cursor_ledger_id: 0,
            batch_acks,
        }
    }

    /// Rebuilds the state from a stored record, refusing what breaks its bounds.
    pub fn from_record(record: &CursorInfo) -> Result<Self, String> {
        let mut individually_acked = AckRanges::new();
        for range in &record.individually_acked {
            let (Some(start), Some(end)) = (&range.start, &range.end) else {
                return Err("individually_acked: ack range without start or end".to_owned());
            };
            if start.ledger_id != end.ledger_id || start.entry_id > end.entry_id {
                return Err(format!(
                    "individually_acked: bad ack range {}:{}..{}:{}",
                    start.ledger_id, start.entry_id, end.ledger_id, end.entry_id
                ));
            }
            if individually_acked.len().saturating_add(end.entry_id - start.entry_id + 1) > MAX_RESTORED_ACKS {
                return Err(format!("individually_acked: more than {MAX_RESTORED_ACKS} positions"));
            }
            individually_acked.insert_range(Position::from(start), end.entry_id);
        }
        if record.batch_acks.len() > MAX_PERSISTED_BATCH_ACKS {
            return Err(format!("batch_acks: more than {MAX_PERSISTED_BATCH_ACKS} entries"));
        }
        let mut batch_acks = BTreeMap::new();
        for batch in &record.batch_acks {
            let Some(position) = &batch.position else {
                return Err("batch_acks: entry without a position".to_owned());
            };
            if batch.unacked.is_empty() || batch.unacked.len() > MAX_BATCH_ACK_WORDS {
                return Err(format!(
                    "batch_acks: {}:{} has {} words (1 to {MAX_BATCH_ACK_WORDS})",
                    position.ledger_id,
                    position.entry_id,
                    batch.unacked.len()
                ));
            }
            batch_acks.insert(Position::from(position), batch.unacked.clone());
        }
        Ok(CursorState { mark_delete: record.mark_delete.as_ref().map(Position::from), individually_acked, batch_acks })
    }
}

impl<T: PositionView + ?Sized> PositionView for std::sync::Arc<T> {
    fn next_position(&self, after: Option<Position>) -> Option<Position> {
        (**self).next_position(after)
    }

    fn contains(&self, position: Position) -> bool {
        (**self).contains(position)
    }
}
