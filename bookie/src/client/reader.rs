//! Reading entries of a ledger from its bookies.

use bytes::Bytes;
use magnetar_proto::records::LedgerMetadata;

use super::connection::Bookies;
use super::metadata::ensemble_for;
use crate::error::BookieError;

/// Reads consecutive entries `first..=last` (fewer if the bookie bounds the answer by count
/// or bytes), trying each bookie of the entry's ensemble in turn.
pub async fn read_entries(
    bookies: &Bookies,
    ledger: &LedgerMetadata,
    first: u64,
    last: u64,
    max_entries: u32,
    max_bytes: u64,
) -> Result<Vec<(u64, Bytes)>, BookieError> {
    let ensemble =
        ensemble_for(ledger, first).ok_or(BookieError::NoSuchEntry { ledger_id: ledger.ledger_id, entry_id: first })?;
    // Stay within the fragment that holds `first`.
    let fragment_end = ledger
        .fragments
        .iter()
        .find(|fragment| fragment.first_entry_id > first)
        .map_or(u64::MAX, |next| next.first_entry_id - 1);
    let last = last.min(fragment_end);
    let mut last_error = None;
    for bookie_id in ensemble {
        let attempt = async {
            let bookie = bookies.get(bookie_id).await?;
            bookie.read_range(ledger.ledger_id, first, last, max_entries, max_bytes).await
        };
        match attempt.await {
            Ok(entries) => return Ok(entries),
            Err(error) => {
                tracing::warn!(bookie = %bookie_id, ledger_id = ledger.ledger_id, first, %error, "read failed, trying next bookie");
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or(BookieError::NoSuchEntry { ledger_id: ledger.ledger_id, entry_id: first }))
}
