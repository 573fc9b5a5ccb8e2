//! Scenario tests of the ledger storage.
