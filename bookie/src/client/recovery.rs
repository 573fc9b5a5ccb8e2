//! Recovery of a ledger whose writer is gone (crashed, or its broker lost the topic).
//!
//! Steps, each a compare-and-set on the metadata so that racing recoveries agree: mark the
//! ledger IN_RECOVERY; fence the bookies of its last fragment (after which the old writer can
//! add nothing more); take the last entry durable on the ensemble; close the ledger there.
//! With E = Qw = Qa every confirmed entry is on every bookie, so the smallest last entry over
//! the ensemble bounds what was confirmed; entries past it were never confirmed to anyone.

use magnetar_meta::Expected;
use magnetar_proto::records::{LedgerMetadata, LedgerState};

use super::connection::Bookies;
use super::metadata;
use crate::error::BookieError;

/// Recovers and closes the ledger if it is not closed yet; returns its closed metadata.
pub async fn recover_ledger(bookies: &Bookies, ledger_id: u64) -> Result<LedgerMetadata, BookieError> {
    loop {
        let (mut current, version) =
            metadata::read(bookies.meta().as_ref(), ledger_id).await?.ok_or(BookieError::NoSuchLedger { ledger_id })?;
        if metadata::is_closed(&current) {
            return Ok(current);
        }
        let mut version = version;
        if current.state != LedgerState::InRecovery as i32 {
            current.state = LedgerState::InRecovery as i32;
            match metadata::write(bookies.meta().as_ref(), &current, Expected::Version(version)).await {
                Ok(new_version) => version = new_version,
                Err(BookieError::Meta(magnetar_meta::MetaError::BadVersion { .. })) => continue,
                Err(error) => return Err(error),
            }
        }
        let ensemble = current.fragments.last().map(|f| f.bookies.clone()).unwrap_or_default();
        let mut last_entry: Option<i64> = None;
        for bookie_id in &ensemble {
            let bookie = bookies.get(bookie_id).await?;
            let (_, last_stored) = bookie.fence(ledger_id, current.master_key.clone().into()).await?;
            last_entry = Some(last_entry.map_or(last_stored, |seen| seen.min(last_stored)));
        }
        current.state = LedgerState::Closed as i32;
        current.last_entry_id = last_entry.unwrap_or(-1);
        match metadata::write(bookies.meta().as_ref(), &current, Expected::Version(version)).await {
            Ok(_) => {
                tracing::info!(ledger_id, last_entry_id = current.last_entry_id, "ledger recovered and closed");
                return Ok(current);
            }
            Err(BookieError::Meta(magnetar_meta::MetaError::BadVersion { .. })) => continue,
            Err(error) => return Err(error),
        }
    }
}
