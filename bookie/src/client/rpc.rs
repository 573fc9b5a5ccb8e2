//! The per-bookie calls the ledger protocol makes, behind a trait.
//!
//! [`BookieRpc`] is what the writer, the readers and recovery see of one bookie; the real
//! implementation is [`BookieConnection`](super::connection::BookieConnection) (tonic gRPC), and
//! a test can put a simulated network behind it so that the same protocol code runs under a
//! seeded scheduler. [`BookieConnector`] turns a bookie id into such a handle; [`Bookies`]
//! (super::connection::Bookies) keeps one per bookie and dials again once it reports broken.
//!
//! Every call may fail with a transport error; the protocol code bounds each call with
//! `tokio::time` timeouts (so paused time in a simulation works) and treats a timeout like a
//! lost connection.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::BookieError;
use crate::ids::{EntryId, LedgerId};

/// What a bookie knows of a ledger's end: the last-add-confirmed piggybacked on the adds it
/// stored, and the highest entry it stores (-1: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerEnd {
    pub last_add_confirmed: i64,
    pub last_entry_id: i64,
}

/// One add, as the writer and recovery send it and a bookie receives it.
pub use crate::add_request::AddRequest;

/// The calls of BookieService the ledger protocol uses, on one bookie.
#[async_trait]
pub trait BookieRpc: Send + Sync + 'static {
    fn bookie_id(&self) -> &str;

    /// True once the handle can no longer carry calls (its stream broke): the pool dials again.
    fn is_broken(&self) -> bool;

    /// Queues an add; the receiver answers once the bookie made the entry durable, or the
    /// error it answered. A dropped sender means the answer was lost (connection gone).
    /// Waits while the bookie's queue is full.
    async fn add(&self, add: AddRequest) -> oneshot::Receiver<Result<(), BookieError>>;

    /// One entry and the bookie's last-add-confirmed. With `fence_key`, the bookie fences the
    /// ledger first (a recovery read: no add of the old writer lands after it).
    async fn read_entry(
        &self,
        ledger_id: LedgerId,
        entry_id: EntryId,
        fence_key: Option<Bytes>,
    ) -> Result<(Bytes, i64), BookieError>;

    /// Consecutive stored entries from `first` (at most to `last`), bounded by count and bytes.
    async fn read_range(
        &self,
        ledger_id: LedgerId,
        first: EntryId,
        last: EntryId,
        max_entries: u32,
        max_bytes: u64,
    ) -> Result<Vec<(EntryId, Bytes)>, BookieError>;

    /// Fences the ledger on this bookie (durably) and answers what it holds.
    async fn fence(&self, ledger_id: LedgerId, master_key: Bytes) -> Result<LedgerEnd, BookieError>;

    /// The bookie's view of the ledger's end; with a non-zero `long_poll`, the bookie waits up
    /// to that long for its last-add-confirmed to pass `previous_lac`.
    async fn read_lac(
        &self,
        ledger_id: LedgerId,
        previous_lac: i64,
        long_poll: Duration,
    ) -> Result<LedgerEnd, BookieError>;

    /// Deletes the ledger's entries on this bookie (a missing ledger is not an error).
    async fn delete_ledger(&self, ledger_id: LedgerId) -> Result<(), BookieError>;
}

/// Opens a [`BookieRpc`] handle to a bookie by id.
#[async_trait]
pub trait BookieConnector: Send + Sync + 'static {
    async fn connect(&self, bookie_id: &str) -> Result<Arc<dyn BookieRpc>, BookieError>;
}
