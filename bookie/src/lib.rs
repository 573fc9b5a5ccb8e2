//! The bookie: Magnetar's storage node, and `client`, the ledger protocol that brokers use to
//! write and read ledgers on bookies.
//!
//! A bookie stores entries of ledgers, each entry addressed by (ledger id, entry id), and
//! answers [`BookieService`](magnetar_proto::bookie::bookie_service_server::BookieService) over
//! gRPC. Its promise: an add is answered OK only once the entry is durable on this bookie's
//! disk; a fenced ledger accepts no more adds from its writer.
//!
//! - [`journal`]: where adds become durable (io_uring, group commit, replay).
//! - [`ledger_storage`]: write cache, entry logs, RocksDB index, read cache, GC.
//! - [`bookie`]: ties them together: ordering, fencing, checkpoints.
//! - [`server`]: the gRPC service on top of storage, and bookie registration in metadata.
//! - [`security`]: token checks on calls, TLS, and the credentials of bookie clients.
//! - [`client`]: bookie connections and ledger handles (create, add, read, recover, close).
//! - [`metrics`]: BookKeeper's metrics, served on the bookie's HTTP port with its state.
//! - [`autorecovery`]: the elected worker that restores the write quorum of ledgers that lost
//!   a bookie for good.

pub mod add_request;
pub mod autorecovery;
pub mod bookie;
pub mod client;
pub mod config;
pub mod cookie;
pub mod disk;
pub mod error;
pub mod http;
pub mod ids;
pub mod journal;
pub mod ledger_data;
pub mod ledger_storage;
pub mod metrics;
pub mod node;
pub mod registration;
pub mod security;
pub mod server;
#[cfg(any(test, feature = "testing"))]
pub mod sim;
pub mod uring;

pub use config::BookieConfig;
pub use error::BookieError;
pub use ids::{EntryId, LedgerId};
pub use server::BookieServer;

/// Metadata key under which live bookies register (ephemeral), one child per bookie id.
pub const BOOKIES_PATH: &str = "/magnetar/bookies/available";

/// Metadata key under which every ledger's metadata record lives, one child per ledger.
pub const LEDGERS_PATH: &str = "/magnetar/ledgers";

/// Metadata key holding one ledger's metadata record.
pub fn ledger_path(ledger_id: LedgerId) -> String {
    format!("{LEDGERS_PATH}/{:020}", ledger_id.0)
}

/// The lock key of the auto-recovery leader (ephemeral; its value is the holder's id).
pub const AUTORECOVERY_LEADER_PATH: &str = "/magnetar/autorecovery/leader";

/// Metadata key of the ledger id allocator.
pub const LEDGER_ID_SEQUENCE: &str = "/magnetar/sequences/ledger-id";

/// Largest entry a bookie accepts (a Pulsar frame's maximum plus room for headers).
pub const MAX_ENTRY_SIZE: usize = 6 * 1024 * 1024;

/// Largest gRPC message accepted (an entry plus headers).
pub const MAX_GRPC_MESSAGE: usize = MAX_ENTRY_SIZE + 64 * 1024;
