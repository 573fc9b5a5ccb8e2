//! A set of positions kept as ranges: the individually acknowledged positions of a cursor
//! (Pulsar's `individualDeletedMessages`, a range set of positions).
//!
//! Each range is inclusive and lies within one ledger (positions of different ledgers are
//! never adjacent here: whether ledger 7's last entry is followed by ledger 9's first is the
//! managed ledger's knowledge, used when the mark-delete position advances). Adjacent and
//! overlapping ranges are merged on insert, so a run of acks costs one range, and the set
//! counts its positions as it changes, so its size is known without a walk.

use std::collections::BTreeMap;

use super::Position;

/// Inclusive ranges of positions, merged; see the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckRanges {
    /// Range start -> range end (same ledger, `end.entry_id >= start.entry_id`).
    ranges: BTreeMap<Position, u64>,
    /// Positions in all ranges.
    len: u64,
}

impl AckRanges {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ranges in the set.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The range holding `position`, as (start, end).
    fn range_of(&self, position: Position) -> Option<(Position, Position)> {
        let (start, end) = self.ranges.range(..=position).next_back()?;
        (start.ledger_id == position.ledger_id && position.entry_id <= *end)
            .then(|| (*start, Position::new(start.ledger_id, *end)))
    }

    pub fn contains(&self, position: Position) -> bool {
        self.range_of(position).is_some()
    }

    /// The last position of the run of contiguous positions (within one ledger) that holds
    /// `position`, if the set holds it.
    pub fn run_end(&self, position: Position) -> Option<Position> {
        self.range_of(position).map(|(_, end)| end)
    }

    /// Adds one position; returns false if it was already there.
    pub fn insert(&mut self, position: Position) -> bool {
        self.insert_range(position, position.entry_id) > 0
    }

    /// Adds `start..=Position(start.ledger_id, end_entry)`; returns how many positions were new.
    pub fn insert_range(&mut self, start: Position, end_entry: u64) -> u64 {
        if end_entry < start.entry_id {
            return 0;
        }
        let ledger = start.ledger_id;
        let mut new_start = start.entry_id;
        let mut new_end = end_entry;
        // Ranges of this ledger that overlap or touch [new_start - 1, new_end + 1] are merged.
        let from = Position::new(ledger, new_start.saturating_sub(1));
        let mut absorbed: Vec<(Position, u64)> = Vec::new();
        if let Some((s, e)) = self.ranges.range(..from).next_back() {
            if s.ledger_id == ledger && e.saturating_add(1) >= new_start {
                absorbed.push((*s, *e));
            }
        }
        let to = Position::new(ledger, new_end.saturating_add(1));
        absorbed.extend(self.ranges.range(from..=to).map(|(s, e)| (*s, *e)));
        let mut covered = 0;
        for (s, e) in absorbed {
            self.ranges.remove(&s);
            covered += e - s.entry_id + 1;
            new_start = new_start.min(s.entry_id);
            new_end = new_end.max(e);
        }
        let total = new_end - new_start + 1;
        self.ranges.insert(Position::new(ledger, new_start), new_end);
        // What the merged range holds beyond what the absorbed ranges held.
        let added = total - covered;
        self.len += added;
        added
    }

    /// Removes every position at or before `through`.
    pub fn remove_through(&mut self, through: Position) {
        let after = Position::new(through.ledger_id, through.entry_id.saturating_add(1));
        let kept = self.ranges.split_off(&after);
        let removed = std::mem::replace(&mut self.ranges, kept);
        for (start, end) in removed {
            if start.ledger_id == through.ledger_id && end > through.entry_id {
                // Straddles `through`: its tail stays.
                self.ranges.insert(after, end);
                self.len -= through.entry_id + 1 - start.entry_id;
            } else {
                self.len -= end - start.entry_id + 1;
            }
        }
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
        self.len = 0;
    }

    /// Positions at or before `last`.
    pub fn count_through(&self, last: Position) -> u64 {
        let mut beyond = 0;
        for (start, end) in self.ranges.range(Position::new(last.ledger_id, 0)..) {
            if *start > last {
                beyond += end - start.entry_id + 1;
            } else if start.ledger_id == last.ledger_id && *end > last.entry_id {
                beyond += end - last.entry_id;
            }
        }
        self.len - beyond
    }

    /// The ranges in order, as (first, last) positions.
    pub fn ranges(&self) -> impl Iterator<Item = (Position, Position)> + '_ {
        self.ranges.iter().map(|(start, end)| (*start, Position::new(start.ledger_id, *end)))
    }

    /// Every position, in order (tests and small sets only).
    pub fn positions(&self) -> impl Iterator<Item = Position> + '_ {
        self.ranges()
            .flat_map(|(start, end)| (start.entry_id..=end.entry_id).map(move |e| Position::new(start.ledger_id, e)))
    }
}

impl FromIterator<Position> for AckRanges {
    fn from_iter<I: IntoIterator<Item = Position>>(iter: I) -> Self {
        let mut set = AckRanges::new();
        for position in iter {
            set.insert(position);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Position),
        InsertRange(Position, u64),
        RemoveThrough(Position),
    }

    fn position() -> impl Strategy<Value = Position> {
        (1u64..4, 0u64..40).prop_map(|(l, e)| Position::new(l, e))
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => position().prop_map(Op::Insert),
            2 => (position(), 0u64..8).prop_map(|(p, n)| Op::InsertRange(p, p.entry_id + n)),
            1 => position().prop_map(Op::RemoveThrough),
        ]
    }

    proptest! {
        /// The range set behaves as a plain set of positions, and its ranges stay merged.
        #[test]
        fn behaves_as_a_set_of_positions(ops in proptest::collection::vec(op(), 0..80), probe in position()) {
            let mut set = AckRanges::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(p) => prop_assert_eq!(set.insert(p), model.insert(p)),
                    Op::InsertRange(p, end) => {
                        let mut added = 0;
                        for e in p.entry_id..=end {
                            added += u64::from(model.insert(Position::new(p.ledger_id, e)));
                        }
                        prop_assert_eq!(set.insert_range(p, end), added);
                    }
                    Op::RemoveThrough(p) => {
                        set.remove_through(p);
                        model.retain(|m| *m > p);
                    }
                }
                prop_assert_eq!(set.len(), model.len() as u64);
                prop_assert_eq!(set.positions().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
                let ranges: Vec<_> = set.ranges().collect();
                for pair in ranges.windows(2) {
                    let ((_, end), (start, _)) = (pair[0], pair[1]);
                    prop_assert!(end.ledger_id != start.ledger_id || end.entry_id + 1 < start.entry_id, "unmerged {:?}", ranges);
                }
                prop_assert_eq!(set.contains(probe), model.contains(&probe));
                prop_assert_eq!(set.count_through(probe), model.iter().filter(|m| **m <= probe).count() as u64);
            }
        }
    }

    #[test]
    fn a_run_of_acks_is_one_range() {
        let set: AckRanges = (0..1000).map(|e| Position::new(3, e)).collect();
        assert_eq!(set.range_count(), 1);
        assert_eq!(set.len(), 1000);
        assert_eq!(set.run_end(Position::new(3, 10)), Some(Position::new(3, 999)));
        assert_eq!(set.run_end(Position::new(4, 0)), None);
    }
}
