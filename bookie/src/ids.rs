//! The two numbers that address every stored entry, as distinct types.
//!
//! A ledger id, an entry id, an entry count and a last-entry marker are all integers on the
//! wire; the ledger protocol takes them side by side (`read_range(ledger, first, last, ..)`),
//! so the calls between the protocol and a bookie, and the checked ledger metadata
//! ([`Ledger`](crate::client::metadata::Ledger)), take these types instead. A "last entry"
//! that may not exist is an `Option<EntryId>`, not -1: the wire's -1 is turned into `None`
//! once, where a record or an answer is read ([`EntryId::from_last`]).

use std::fmt;

/// A ledger's id, unique in the cluster: the key of its metadata record and of its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LedgerId(pub u64);

/// An entry's place in its ledger, from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(pub u64);

impl EntryId {
    pub const FIRST: EntryId = EntryId(0);

    /// A "last entry" as the wire and the stored records carry it (-1: none).
    pub fn from_last(last: i64) -> Option<EntryId> {
        u64::try_from(last).ok().map(EntryId)
    }

    /// The wire's form of a "last entry" (-1: none).
    pub fn last_to_wire(last: Option<EntryId>) -> i64 {
        last.map_or(-1, |entry| entry.0 as i64)
    }

    /// The entry after this one.
    pub fn next(self) -> EntryId {
        EntryId(self.0 + 1)
    }

    /// The entry before this one; none before the first.
    pub fn previous(self) -> Option<EntryId> {
        self.0.checked_sub(1).map(EntryId)
    }

    /// The entries from this one to `last`, inclusive.
    pub fn through(self, last: EntryId) -> impl DoubleEndedIterator<Item = EntryId> {
        (self.0..=last.0).map(EntryId)
    }
}

impl fmt::Display for LedgerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_last_entry_is_none_not_minus_one() {
        assert_eq!(EntryId::from_last(-1), None);
        assert_eq!(EntryId::from_last(i64::MIN), None);
        assert_eq!(EntryId::from_last(0), Some(EntryId(0)));
        assert_eq!(EntryId::last_to_wire(None), -1);
        assert_eq!(EntryId::last_to_wire(Some(EntryId(41))), 41);
        assert_eq!(EntryId(3).previous(), Some(EntryId(2)));
        assert_eq!(EntryId::FIRST.previous(), None);
        assert_eq!(EntryId(2).through(EntryId(4)).collect::<Vec<_>>(), [EntryId(2), EntryId(3), EntryId(4)]);
    }
}
