//! Deleting a ledger for good: its entries on every bookie that ever held a fragment of it,
//! then its metadata record.
//!
//! The metadata goes last, so a delete that fails half way can simply be repeated: the record
//! still names every bookie to ask. A ledger that is already gone (no record, or a bookie that
//! does not know it) counts as deleted.

use std::collections::BTreeSet;

use magnetar_meta::{Expected, MetaError};

use super::connection::Bookies;
use super::metadata;
use crate::error::BookieError;
use crate::ids::LedgerId;

/// Deletes `ledger_id` on the bookies of every fragment's ensemble, then removes its metadata.
pub async fn delete_ledger(bookies: &Bookies, ledger_id: LedgerId) -> Result<(), BookieError> {
    let Some((ledger, version)) = metadata::read(bookies.meta().as_ref(), ledger_id).await? else {
        return Ok(());
    };
    let holders: BTreeSet<&String> = ledger.fragments().iter().flat_map(|fragment| fragment.bookies.iter()).collect();
    for bookie_id in holders {
        bookies.get(bookie_id).await?.delete_ledger(ledger_id).await?;
    }
    let path = crate::ledger_path(ledger_id);
    match bookies.meta().delete(&path, Expected::Version(version)).await {
        Ok(()) => Ok(()),
        // Changed since we read it (a recovery closed it, or another delete won): whatever it
        // is now names the ensembles we already asked, so remove it unconditionally.
        Err(MetaError::BadVersion { .. }) => Ok(bookies.meta().delete(&path, Expected::Any).await?),
        Err(error) => Err(error.into()),
    }
}
