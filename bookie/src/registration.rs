//! A bookie announces itself in the metadata store: an ephemeral key per bookie id under
//! [`BOOKIES_PATH`](crate::BOOKIES_PATH) holding its address, gone when its session ends, so
//! ledger writers only pick live bookies and readers find where a bookie id lives now.

use std::time::Duration;

use magnetar_meta::{Expected, MetadataStore, SessionId};
use serde::{Deserialize, Serialize};

use crate::error::BookieError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BookieRegistration {
    pub bookie_id: String,
    /// host:port of its BookieService.
    pub address: String,
}

pub fn registration_path(bookie_id: &str) -> String {
    format!("{}/{bookie_id}", crate::BOOKIES_PATH)
}

/// Registers the bookie under a new session; returns the session, which the caller closes
/// on shutdown.
pub async fn register(
    store: &dyn MetadataStore,
    registration: &BookieRegistration,
    ttl: Duration,
) -> Result<SessionId, BookieError> {
    let session = store.create_session(ttl).await?;
    let value =
        serde_json::to_vec(registration).map_err(|error| BookieError::InvalidRequest { reason: error.to_string() })?;
    store.put_ephemeral(session, &registration_path(&registration.bookie_id), value, Expected::Any).await?;
    Ok(session)
}

/// The live bookies.
pub async fn available(store: &dyn MetadataStore) -> Result<Vec<BookieRegistration>, BookieError> {
    let mut out = Vec::new();
    for bookie_id in store.list_children(crate::BOOKIES_PATH).await? {
        if let Some(found) = lookup(store, &bookie_id).await? {
            out.push(found);
        }
    }
    Ok(out)
}

/// Where a bookie id lives now, if it is registered.
pub async fn lookup(store: &dyn MetadataStore, bookie_id: &str) -> Result<Option<BookieRegistration>, BookieError> {
    let Some(found) = store.get(&registration_path(bookie_id)).await? else { return Ok(None) };
    let registration = serde_json::from_slice(&found.value)
        .map_err(|error| BookieError::Corrupt { what: registration_path(bookie_id), reason: error.to_string() })?;
    Ok(Some(registration))
}
