//! What a bookie keeps per ledger besides its entries (BookKeeper's `LedgerData`; not the
//! stored ledger metadata record, `records::LedgerMetadata` with its `LedgerState`): the
//! fenced flag, the highest last-add-confirmed any writer told it, and the master key that
//! the ledger's first add set.

use crate::error::BookieError;

/// Per-ledger state a bookie keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerData {
    pub fenced: bool,
    /// Highest last-add-confirmed any add carried (-1: none).
    pub last_add_confirmed: i64,
    pub master_key: Vec<u8>,
}

impl LedgerData {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.master_key.len());
        out.push(u8::from(self.fenced));
        out.extend_from_slice(&self.last_add_confirmed.to_be_bytes());
        out.extend_from_slice(&self.master_key);
        out
    }

    pub fn decode(ledger_id: u64, bytes: &[u8]) -> Result<Self, BookieError> {
        if bytes.len() < 9 {
            return Err(BookieError::Corrupt {
                what: format!("state of ledger {ledger_id}"),
                reason: format!("{} bytes, need at least 9", bytes.len()),
            });
        }
        let mut lac = [0u8; 8];
        lac.copy_from_slice(&bytes[1..9]);
        Ok(LedgerData {
            fenced: bytes[0] != 0,
            last_add_confirmed: i64::from_be_bytes(lac),
            master_key: bytes[9..].to_vec(),
        })
    }
}
