//! The ledger protocol as a library, used by brokers: connections to bookies
//! ([`connection`]), creating and writing a ledger ([`writer`]), recovering and closing a
//! ledger whose writer is gone ([`recovery`]), and reading entries ([`reader`]).
//!
//! Ledger metadata lives in the metadata store at [`ledger_path`](crate::ledger_path) and only
//! changes by compare-and-set: OPEN when created, IN_RECOVERY while a recovery fences it,
//! CLOSED with its last entry once closed by its writer or by recovery.
//!
//! This version writes every entry to the whole ensemble and requires each bookie's answer
//! (E = Qw = Qa); quorum striping and ensemble changes come with replication.

pub mod admin;
pub mod connection;
pub mod metadata;
pub mod reader;
pub mod recovery;
pub mod writer;

pub use connection::{BookieConnection, Bookies};
pub use metadata::LedgerConfig;
pub use reader::read_entries;
pub use recovery::recover_ledger;
pub use writer::LedgerWriter;
