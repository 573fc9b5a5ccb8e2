//! One add as a bookie receives it and the ledger client sends it, converted from and to the
//! wire's `AddEntryRequest`, with the bounds a bookie checks before taking it.

use bytes::Bytes;

use crate::error::BookieError;

/// One add: what a writer (or a recovery) sends and a bookie receives.
#[derive(Debug, Clone)]
pub struct AddRequest {
    pub ledger_id: u64,
    pub entry_id: u64,
    pub master_key: Bytes,
    /// The writer's last-add-confirmed when it sent the entry.
    pub last_add_confirmed: i64,
    pub payload: Bytes,
    /// A recovery write-back: accepted by a fenced ledger.
    pub recovery: bool,
}

/// The wire form of an add, both ways (the server receives it, the ledger client sends it).
impl From<magnetar_proto::bookie::AddEntryRequest> for AddRequest {
    fn from(add: magnetar_proto::bookie::AddEntryRequest) -> Self {
        let magnetar_proto::bookie::AddEntryRequest {
            ledger_id,
            entry_id,
            master_key,
            last_add_confirmed,
            payload,
            recovery,
        } = add;
        AddRequest { ledger_id, entry_id, master_key, last_add_confirmed, payload, recovery }
    }
}

impl From<AddRequest> for magnetar_proto::bookie::AddEntryRequest {
    fn from(add: AddRequest) -> Self {
        let AddRequest { ledger_id, entry_id, master_key, last_add_confirmed, payload, recovery } = add;
        magnetar_proto::bookie::AddEntryRequest {
            ledger_id,
            entry_id,
            master_key,
            last_add_confirmed,
            payload,
            recovery,
        }
    }
}

impl AddRequest {
    pub(crate) fn validate(&self) -> Result<(), BookieError> {
        if self.payload.len() > crate::MAX_ENTRY_SIZE {
            return Err(BookieError::InvalidRequest {
                reason: format!("entry of {} bytes exceeds the limit of {}", self.payload.len(), crate::MAX_ENTRY_SIZE),
            });
        }
        if self.master_key.len() > crate::journal::record::MAX_KEY_LEN {
            return Err(BookieError::InvalidRequest { reason: "master key too long".to_owned() });
        }
        Ok(())
    }
}
