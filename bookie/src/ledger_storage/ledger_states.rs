//! Ledger states (fenced flag, last-add-confirmed, master key) as the storage keeps them: all in
//! memory, loaded from the index at open, and written back at each checkpoint in the same batch
//! as the index entries.
//!
//! Concurrency: the storage keeps this table in one `RwLock`; reads take it shared.
//!
//! Invariants: a state changed since the checkpoint that last wrote it is in `dirty` until a
//! checkpoint writes it (a failed checkpoint puts its ids back). A deleted ledger is neither in
//! the table nor dirty, so no checkpoint writes it back.

use std::collections::{HashMap, HashSet};

use crate::ledger_data::LedgerData;

#[derive(Debug, Default)]
pub struct LedgerStates {
    states: HashMap<u64, LedgerData>,
    dirty: HashSet<u64>,
}

impl LedgerStates {
    /// The table as the index stored it, nothing dirty.
    pub fn loaded(states: HashMap<u64, LedgerData>) -> Self {
        LedgerStates { states, dirty: HashSet::new() }
    }

    pub fn get(&self, ledger_id: u64) -> Option<&LedgerData> {
        self.states.get(&ledger_id)
    }

    /// Raises the ledger's last-add-confirmed to `lac` if that is higher (marking it dirty).
    pub fn raise_last_add_confirmed(&mut self, ledger_id: u64, lac: i64) {
        if let Some(state) = self.states.get_mut(&ledger_id) {
            if lac > state.last_add_confirmed {
                state.last_add_confirmed = lac;
                self.dirty.insert(ledger_id);
            }
        }
    }

    pub fn set(&mut self, ledger_id: u64, state: LedgerData) {
        self.states.insert(ledger_id, state);
        self.dirty.insert(ledger_id);
    }

    pub fn remove(&mut self, ledger_id: u64) {
        self.states.remove(&ledger_id);
        self.dirty.remove(&ledger_id);
    }

    /// The states changed since the last checkpoint, now no longer dirty.
    pub fn take_dirty(&mut self) -> Vec<(u64, LedgerData)> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut out: Vec<(u64, LedgerData)> =
            dirty.into_iter().filter_map(|id| self.states.get(&id).map(|state| (id, state.clone()))).collect();
        out.sort_unstable_by_key(|(id, _)| *id);
        out
    }

    /// Marks again the states a failed checkpoint did not write (unless deleted meanwhile).
    pub fn restore_dirty(&mut self, ledger_ids: impl IntoIterator<Item = u64>) {
        for ledger_id in ledger_ids {
            if self.states.contains_key(&ledger_id) {
                self.dirty.insert(ledger_id);
            }
        }
    }

    /// Ledger ids, sorted.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.states.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(lac: i64) -> LedgerData {
        LedgerData { fenced: false, last_add_confirmed: lac, master_key: b"key".to_vec() }
    }

    #[test]
    fn dirty_states_are_taken_once_and_restored_after_failure() {
        let mut states = LedgerStates::loaded(HashMap::from([(1, state(0))]));
        assert!(states.take_dirty().is_empty());
        states.set(2, state(5));
        states.set(3, state(6));
        let taken = states.take_dirty();
        assert_eq!(taken.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![2, 3]);
        assert!(states.take_dirty().is_empty());
        states.remove(3);
        states.restore_dirty(taken.into_iter().map(|(id, _)| id));
        assert_eq!(states.take_dirty(), vec![(2, state(5))]);
        assert_eq!(states.ids(), vec![1, 2]);
    }
}
