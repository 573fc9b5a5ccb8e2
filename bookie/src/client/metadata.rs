//! Reading and compare-and-set writing of ledger metadata records.

use bytes::Bytes;
use magnetar_meta::{Expected, MetadataStore, Version};
use magnetar_proto::records::{self, LedgerMetadata, LedgerState};
use prost::Message;

use crate::error::BookieError;
use crate::ids::{EntryId, LedgerId};

/// Replication settings for new ledgers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    pub ensemble_size: u32,
    pub write_quorum: u32,
    pub ack_quorum: u32,
}

impl LedgerConfig {
    /// E >= Qw >= Qa >= 1.
    pub fn check(&self) -> Result<(), String> {
        let LedgerConfig { ensemble_size, write_quorum, ack_quorum } = *self;
        if ack_quorum == 0 || write_quorum < ack_quorum || ensemble_size < write_quorum {
            return Err(format!(
                "ledger replication must satisfy ensemble size >= write quorum >= ack quorum >= 1, \
                 got ensemble {ensemble_size}, write quorum {write_quorum}, ack quorum {ack_quorum}"
            ));
        }
        Ok(())
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig { ensemble_size: 1, write_quorum: 1, ack_quorum: 1 }
    }
}

/// A ledger as its stored metadata record describes it, checked when read or built: its id,
/// E >= Qw >= Qa >= 1, at least one fragment, the first at entry 0, first entries strictly
/// increasing, each ensemble of E bookies. Every user may rely on that; the only changes are
/// the protocol's own (a new fragment on an ensemble change, a replaced bookie, recovery and
/// close), each keeping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    id: LedgerId,
    quorum: LedgerConfig,
    status: LedgerStatus,
    fragments: Vec<Fragment>,
    master_key: Bytes,
    created_at_ms: u64,
}

/// Where a ledger is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerStatus {
    /// Written by its writer.
    Open,
    /// Fenced by a recovery that has not closed it yet.
    InRecovery,
    /// Never written again: its entries end at `last` (none for an empty ledger), `length`
    /// bytes in all.
    Closed { last: Option<EntryId>, length: u64 },
}

/// One stretch of a ledger's entries written to one ensemble of bookies: from `first` up to
/// the next fragment's first entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub first: EntryId,
    pub bookies: Vec<String>,
}

impl Ledger {
    /// A new, open ledger on `bookies` (E of them).
    pub fn new(
        id: LedgerId,
        quorum: LedgerConfig,
        bookies: Vec<String>,
        master_key: Bytes,
        created_at_ms: u64,
    ) -> Result<Ledger, BookieError> {
        let ledger = Ledger {
            id,
            quorum,
            status: LedgerStatus::Open,
            fragments: vec![Fragment { first: EntryId::FIRST, bookies }],
            master_key,
            created_at_ms,
        };
        ledger.check().map_err(|reason| BookieError::InvalidConfig { reason })?;
        Ok(ledger)
    }

    /// The stored record found at ledger `stored_at`'s key, checked, naming the field that
    /// breaks it.
    pub fn from_record(stored_at: LedgerId, record: LedgerMetadata) -> Result<Ledger, String> {
        if record.ledger_id != stored_at.0 {
            return Err(format!("ledger_id: {} stored under ledger {stored_at}", record.ledger_id));
        }
        let status = match LedgerState::try_from(record.state) {
            Ok(LedgerState::Open) => LedgerStatus::Open,
            Ok(LedgerState::InRecovery) => LedgerStatus::InRecovery,
            Ok(LedgerState::Closed) => {
                LedgerStatus::Closed { last: EntryId::from_last(record.last_entry_id), length: record.length }
            }
            Err(_) => return Err(format!("state: unknown value {}", record.state)),
        };
        let ledger = Ledger {
            id: stored_at,
            quorum: LedgerConfig {
                ensemble_size: record.ensemble_size,
                write_quorum: record.write_quorum,
                ack_quorum: record.ack_quorum,
            },
            status,
            fragments: record
                .fragments
                .into_iter()
                .map(|fragment| Fragment { first: EntryId(fragment.first_entry_id), bookies: fragment.bookies })
                .collect(),
            master_key: Bytes::from(record.master_key),
            created_at_ms: record.created_at_ms,
        };
        ledger.check()?;
        Ok(ledger)
    }

    /// The record stored for this ledger.
    pub fn to_record(&self) -> LedgerMetadata {
        let (state, last, length) = match self.status {
            LedgerStatus::Open => (LedgerState::Open, None, 0),
            LedgerStatus::InRecovery => (LedgerState::InRecovery, None, 0),
            LedgerStatus::Closed { last, length } => (LedgerState::Closed, last, length),
        };
        LedgerMetadata {
            ledger_id: self.id.0,
            state: state as i32,
            ensemble_size: self.quorum.ensemble_size,
            write_quorum: self.quorum.write_quorum,
            ack_quorum: self.quorum.ack_quorum,
            fragments: self
                .fragments
                .iter()
                .map(|fragment| records::Fragment {
                    first_entry_id: fragment.first.0,
                    bookies: fragment.bookies.clone(),
                })
                .collect(),
            last_entry_id: EntryId::last_to_wire(last),
            length,
            master_key: self.master_key.to_vec(),
            created_at_ms: self.created_at_ms,
        }
    }

    fn check(&self) -> Result<(), String> {
        self.quorum.check().map_err(|reason| format!("ensemble_size/write_quorum/ack_quorum: {reason}"))?;
        let e = self.quorum.ensemble_size;
        let Some(first) = self.fragments.first() else {
            return Err("fragments: none".to_owned());
        };
        if first.first != EntryId::FIRST {
            return Err(format!("fragments: the first starts at entry {}, not 0", first.first));
        }
        for pair in self.fragments.windows(2) {
            if pair[1].first <= pair[0].first {
                return Err(format!(
                    "fragments: entry {} follows entry {}, need increasing first entries",
                    pair[1].first, pair[0].first
                ));
            }
        }
        if let Some(fragment) = self.fragments.iter().find(|f| f.bookies.len() != e as usize) {
            return Err(format!(
                "fragments: the one at entry {} has {} bookies, ensemble_size is {e}",
                fragment.first,
                fragment.bookies.len()
            ));
        }
        Ok(())
    }

    pub fn id(&self) -> LedgerId {
        self.id
    }

    /// E, Qw and Qa.
    pub fn quorum(&self) -> LedgerConfig {
        self.quorum
    }

    pub fn ensemble_size(&self) -> usize {
        self.quorum.ensemble_size as usize
    }

    pub fn write_quorum(&self) -> usize {
        self.quorum.write_quorum as usize
    }

    pub fn ack_quorum(&self) -> usize {
        self.quorum.ack_quorum as usize
    }

    pub fn status(&self) -> LedgerStatus {
        self.status
    }

    pub fn is_open(&self) -> bool {
        self.status == LedgerStatus::Open
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.status, LedgerStatus::Closed { .. })
    }

    /// A closed ledger's last entry (none when it is empty or not closed).
    pub fn last_entry(&self) -> Option<EntryId> {
        match self.status {
            LedgerStatus::Closed { last, .. } => last,
            _ => None,
        }
    }

    pub fn master_key(&self) -> &Bytes {
        &self.master_key
    }

    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// The fragments in entry order; never empty, the first at entry 0.
    pub fn fragments(&self) -> &[Fragment] {
        &self.fragments
    }

    /// The fragment new entries are written to.
    pub fn last_fragment(&self) -> &Fragment {
        // `check` keeps at least one fragment.
        &self.fragments[self.fragments.len() - 1]
    }

    /// The index of the fragment holding `entry` (the last starting at or before it).
    pub fn fragment_index(&self, entry: EntryId) -> usize {
        self.fragments.iter().rposition(|fragment| fragment.first <= entry).unwrap_or(0)
    }

    /// The last entry of fragment `index` as its bounds say (none for the last fragment,
    /// which runs to the ledger's end).
    pub fn fragment_end(&self, index: usize) -> Option<EntryId> {
        self.fragments.get(index + 1).map(|next| EntryId(next.first.0 - 1))
    }

    /// The bookies holding `entry`: the ensemble of its fragment.
    pub fn ensemble_for(&self, entry: EntryId) -> &[String] {
        &self.fragments[self.fragment_index(entry)].bookies
    }

    /// Whether any fragment names `bookie_id`.
    pub fn names(&self, bookie_id: &str) -> bool {
        self.fragments.iter().any(|fragment| fragment.bookies.iter().any(|id| id == bookie_id))
    }

    /// An ensemble change: entries from `first` on go to `bookies`. A last fragment starting
    /// at `first` (nothing acknowledged since the previous change) is replaced.
    pub fn change_ensemble(&mut self, first: EntryId, bookies: Vec<String>) -> Result<(), BookieError> {
        let mut changed = self.clone();
        match changed.fragments.last_mut() {
            Some(last) if last.first == first => last.bookies = bookies,
            _ => changed.fragments.push(Fragment { first, bookies }),
        }
        changed.check().map_err(|reason| BookieError::Corrupt { what: crate::ledger_path(self.id), reason })?;
        *self = changed;
        Ok(())
    }

    /// Re-replication: the bookie at `index` of fragment `fragment` is now `bookie_id`.
    pub fn replace_bookie(&mut self, fragment: usize, index: usize, bookie_id: String) {
        if let Some(slot) = self.fragments.get_mut(fragment).and_then(|f| f.bookies.get_mut(index)) {
            *slot = bookie_id;
        }
    }

    /// A recovery fenced the ledger.
    pub fn set_in_recovery(&mut self) {
        self.status = LedgerStatus::InRecovery;
    }

    /// Closed at `last` (none: empty), `length` bytes.
    pub fn close(&mut self, last: Option<EntryId>, length: u64) {
        self.status = LedgerStatus::Closed { last, length };
    }
}

/// Reads a ledger's metadata record, checked once here ([`Ledger::from_record`]).
pub async fn read(store: &dyn MetadataStore, ledger_id: LedgerId) -> Result<Option<(Ledger, Version)>, BookieError> {
    let path = crate::ledger_path(ledger_id);
    let Some(found) = store.get(&path).await? else { return Ok(None) };
    let record = LedgerMetadata::decode(&found.value[..])
        .map_err(|error| BookieError::Corrupt { what: path.clone(), reason: error.to_string() })?;
    let ledger =
        Ledger::from_record(ledger_id, record).map_err(|reason| BookieError::Corrupt { what: path, reason })?;
    Ok(Some((ledger, found.version)))
}

pub async fn write(store: &dyn MetadataStore, ledger: &Ledger, expected: Expected) -> Result<Version, BookieError> {
    Ok(store.put(&crate::ledger_path(ledger.id), ledger.to_record().encode_to_vec(), expected).await?)
}

/// The Qw ensemble indexes entry `entry_id` is written to, in order.
pub fn write_set(entry_id: EntryId, ensemble_size: usize, write_quorum: usize) -> impl Iterator<Item = usize> {
    let first = (entry_id.0 % ensemble_size.max(1) as u64) as usize;
    (0..write_quorum).map(move |i| (first + i) % ensemble_size.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(e: u32, qw: u32, qa: u32, fragments: &[(u64, usize)]) -> LedgerMetadata {
        LedgerMetadata {
            ledger_id: 7,
            ensemble_size: e,
            write_quorum: qw,
            ack_quorum: qa,
            fragments: fragments
                .iter()
                .map(|(first_entry_id, n)| records::Fragment {
                    first_entry_id: *first_entry_id,
                    bookies: (0..*n).map(|i| format!("b{i}")).collect(),
                })
                .collect(),
            last_entry_id: -1,
            ..Default::default()
        }
    }

    #[test]
    fn stored_ledger_records_are_checked_naming_the_field() {
        let record = ledger(3, 3, 2, &[(0, 3), (10, 3)]);
        let checked = Ledger::from_record(LedgerId(7), record.clone()).expect("a good record");
        assert_eq!(checked.to_record(), record, "read and written back unchanged");
        assert_eq!(checked.ensemble_for(EntryId(9)), ["b0", "b1", "b2"]);
        assert_eq!(checked.fragment_index(EntryId(10)), 1);
        assert_eq!(checked.fragment_end(0), Some(EntryId(9)));
        let refused = |metadata: LedgerMetadata, field: &str| {
            let reason = Ledger::from_record(LedgerId(7), metadata).expect_err("refused");
            assert!(reason.starts_with(field), "{reason}");
        };
        refused(LedgerMetadata { ledger_id: 8, ..ledger(3, 3, 2, &[(0, 3)]) }, "ledger_id");
        refused(ledger(2, 3, 2, &[(0, 2)]), "ensemble_size");
        refused(ledger(3, 2, 3, &[(0, 3)]), "ensemble_size");
        refused(ledger(3, 3, 0, &[(0, 3)]), "ensemble_size");
        refused(ledger(3, 3, 2, &[]), "fragments");
        refused(ledger(3, 3, 2, &[(1, 3)]), "fragments");
        refused(ledger(3, 3, 2, &[(0, 3), (0, 3)]), "fragments");
        refused(ledger(3, 3, 2, &[(0, 3), (5, 2)]), "fragments");
        refused(LedgerMetadata { state: 9, ..ledger(3, 3, 2, &[(0, 3)]) }, "state");
    }

    #[test]
    fn a_closed_empty_ledger_has_no_last_entry_and_changes_keep_the_checks() {
        let mut ledger = Ledger::new(
            LedgerId(7),
            LedgerConfig { ensemble_size: 2, write_quorum: 2, ack_quorum: 1 },
            vec!["a".into(), "b".into()],
            Bytes::from_static(b"k"),
            1,
        )
        .expect("new");
        assert!(ledger.change_ensemble(EntryId(5), vec!["a".into()]).is_err(), "an ensemble of the wrong size");
        ledger.change_ensemble(EntryId(5), vec!["a".into(), "c".into()]).expect("change");
        ledger.change_ensemble(EntryId(5), vec!["a".into(), "d".into()]).expect("nothing acked since: replaced");
        assert_eq!(ledger.fragments().len(), 2);
        assert!(ledger.change_ensemble(EntryId(3), vec!["a".into(), "e".into()]).is_err(), "entries go forward");
        ledger.close(None, 0);
        let record = ledger.to_record();
        assert_eq!(record.last_entry_id, -1);
        let back = Ledger::from_record(LedgerId(7), record).expect("read back");
        assert_eq!(back.last_entry(), None);
        assert!(back.is_closed());
        assert!(Ledger::new(
            LedgerId(8),
            LedgerConfig { ensemble_size: 1, write_quorum: 2, ack_quorum: 1 },
            vec!["a".into()],
            Bytes::new(),
            1
        )
        .is_err());
    }
}
