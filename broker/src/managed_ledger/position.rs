//! A position in a managed ledger: (ledger id, entry id), ordered by ledger then entry.
//! Ledger ids grow over a topic's life, so the order is the order of writing.

use std::fmt;

use magnetar_proto::records;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub ledger_id: u64,
    pub entry_id: u64,
}

impl Position {
    pub const fn new(ledger_id: u64, entry_id: u64) -> Self {
        Position { ledger_id, entry_id }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ledger_id, self.entry_id)
    }
}

impl From<Position> for records::Position {
    fn from(p: Position) -> Self {
        records::Position { ledger_id: p.ledger_id, entry_id: p.entry_id }
    }
}

impl From<&records::Position> for Position {
    fn from(p: &records::Position) -> Self {
        Position { ledger_id: p.ledger_id, entry_id: p.entry_id }
    }
}
