//! Reading and compare-and-set writing of ledger metadata records.

use magnetar_meta::{Expected, MetadataStore, Version};
use magnetar_proto::records::{LedgerMetadata, LedgerState};
use prost::Message;

use crate::error::BookieError;

/// Replication settings for new ledgers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    pub ensemble_size: u32,
    pub write_quorum: u32,
    pub ack_quorum: u32,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig { ensemble_size: 1, write_quorum: 1, ack_quorum: 1 }
    }
}

/// Reads a ledger's metadata record, checked once here ([`check`]): every user of it may rely
/// on E >= Qw >= Qa >= 1 and on fragments that cover the ledger from entry 0.
pub async fn read(store: &dyn MetadataStore, ledger_id: u64) -> Result<Option<(LedgerMetadata, Version)>, BookieError> {
    let path = crate::ledger_path(ledger_id);
    let Some(found) = store.get(&path).await? else { return Ok(None) };
    let metadata = LedgerMetadata::decode(&found.value[..])
        .map_err(|error| BookieError::Corrupt { what: path.clone(), reason: error.to_string() })?;
    check(ledger_id, &metadata).map_err(|reason| BookieError::Corrupt { what: path, reason })?;
    Ok(Some((metadata, found.version)))
}

/// What a stored ledger record must hold, naming the field that breaks it: its own id,
/// E >= Qw >= Qa >= 1, at least one fragment, the first at entry 0, first entries strictly
/// increasing, each ensemble of E bookies.
pub fn check(ledger_id: u64, metadata: &LedgerMetadata) -> Result<(), String> {
    if metadata.ledger_id != ledger_id {
        return Err(format!("ledger_id: {} stored under ledger {ledger_id}", metadata.ledger_id));
    }
    let (e, qw, qa) = (metadata.ensemble_size, metadata.write_quorum, metadata.ack_quorum);
    if qa == 0 || qw < qa || e < qw {
        return Err(format!("ensemble_size/write_quorum/ack_quorum: {e}/{qw}/{qa}, need E >= Qw >= Qa >= 1"));
    }
    let Some(first) = metadata.fragments.first() else {
        return Err("fragments: none".to_owned());
    };
    if first.first_entry_id != 0 {
        return Err(format!("fragments: the first starts at entry {}, not 0", first.first_entry_id));
    }
    for pair in metadata.fragments.windows(2) {
        if pair[1].first_entry_id <= pair[0].first_entry_id {
            return Err(format!(
                "fragments: entry {} follows entry {}, need increasing first entries",
                pair[1].first_entry_id, pair[0].first_entry_id
            ));
        }
    }
    if let Some(fragment) = metadata.fragments.iter().find(|f| f.bookies.len() != e as usize) {
        return Err(format!(
            "fragments: the one at entry {} has {} bookies, ensemble_size is {e}",
            fragment.first_entry_id,
            fragment.bookies.len()
        ));
    }
    Ok(())
}

pub async fn write(
    store: &dyn MetadataStore,
    metadata: &LedgerMetadata,
    expected: Expected,
) -> Result<Version, BookieError> {
    Ok(store.put(&crate::ledger_path(metadata.ledger_id), metadata.encode_to_vec(), expected).await?)
}

pub fn is_closed(metadata: &LedgerMetadata) -> bool {
    metadata.state == LedgerState::Closed as i32
}

/// The bookies holding entry `entry_id`: the ensemble of the last fragment starting at or
/// before it.
pub fn ensemble_for(metadata: &LedgerMetadata, entry_id: u64) -> Option<&[String]> {
    metadata
        .fragments
        .iter()
        .rev()
        .find(|fragment| fragment.first_entry_id <= entry_id)
        .map(|fragment| fragment.bookies.as_slice())
}

/// The Qw ensemble indexes entry `entry_id` is written to, in order.
pub fn write_set(entry_id: u64, ensemble_size: usize, write_quorum: usize) -> impl Iterator<Item = usize> {
    let first = (entry_id % ensemble_size.max(1) as u64) as usize;
    (0..write_quorum).map(move |i| (first + i) % ensemble_size.max(1))
}

#[cfg(test)]
mod tests {
    use magnetar_proto::records::Fragment;

    use super::*;

    fn ledger(e: u32, qw: u32, qa: u32, fragments: &[(u64, usize)]) -> LedgerMetadata {
        LedgerMetadata {
            ledger_id: 7,
            ensemble_size: e,
            write_quorum: qw,
            ack_quorum: qa,
            fragments: fragments
                .iter()
                .map(|(first_entry_id, n)| Fragment {
                    first_entry_id: *first_entry_id,
                    bookies: (0..*n).map(|i| format!("b{i}")).collect(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn stored_ledger_records_are_checked_naming_the_field() {
        assert_eq!(check(7, &ledger(3, 3, 2, &[(0, 3), (10, 3)])), Ok(()));
        let refused = |metadata: LedgerMetadata, field: &str| {
            let reason = check(7, &metadata).expect_err("refused");
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
    }
}
