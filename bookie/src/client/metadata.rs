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

pub async fn read(store: &dyn MetadataStore, ledger_id: u64) -> Result<Option<(LedgerMetadata, Version)>, BookieError> {
    let path = crate::ledger_path(ledger_id);
    let Some(found) = store.get(&path).await? else { return Ok(None) };
    let metadata = LedgerMetadata::decode(&found.value[..])
        .map_err(|error| BookieError::Corrupt { what: path, reason: error.to_string() })?;
    Ok(Some((metadata, found.version)))
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
