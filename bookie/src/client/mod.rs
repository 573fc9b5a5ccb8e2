//! The ledger protocol as a library, used by brokers: connections to bookies
//! ([`connection`], behind the [`rpc::BookieRpc`] trait so a simulated network can stand in),
//! creating and writing a ledger ([`writer`]), recovering and closing a ledger whose writer is
//! gone ([`recovery`]), and reading entries and the last-add-confirmed ([`reader`]).
//!
//! A ledger has an ensemble of E bookies, a write quorum Qw and an ack quorum Qa
//! (E >= Qw >= Qa >= 1): entry `e` is written to the Qw bookies at ensemble indexes
//! `(e + i) mod E` and acknowledged, in entry order, once Qa of them made it durable. A failed
//! bookie is replaced by an ensemble change (a new fragment in the metadata); a fenced ledger
//! stops its writer. Recovery fences the last fragment, reads forward with ack-quorum
//! coverage, writes back what it found and closes the ledger. Every choice of bookies goes
//! through [`placement`] (copies of an entry on different hosts where possible);
//! [`replication`] copies a fragment that lost a bookie to a replacement (auto-recovery).
//!
//! Ledger metadata lives in the metadata store at [`ledger_path`](crate::ledger_path) and only
//! changes by compare-and-set: OPEN when created (new fragments on ensemble changes),
//! IN_RECOVERY while a recovery fences it, CLOSED with its last entry once closed by its writer
//! or by recovery. A closed ledger's last entry never changes.

pub mod admin;
pub mod connection;
pub mod metadata;
pub mod placement;
pub mod reader;
pub mod recovery;
pub mod replication;
pub mod rpc;
pub mod writer;

pub use connection::{BookieConnection, Bookies, ClientOptions, GrpcConnector};
pub use metadata::LedgerConfig;
pub use reader::{read_entries, read_entries_spread, read_last_add_confirmed, wait_last_add_confirmed};
pub use recovery::recover_ledger;
pub use rpc::{AddRequest, BookieConnector, BookieRpc, LedgerEnd};
pub use writer::{ConfirmHook, LedgerWriter};
