//! The Pulsar binary protocol server: an accept loop ([`server`]) and one handler per client
//! connection ([`connection`], the command table); the frames a subscription's decisions become
//! ([`consumer`]); each producer's receipt task ([`receipts`]); wire-to-domain conversions
//! ([`convert`]); the schema commands (`schema.rs`); the commands of non-persistent topics
//! (`non_persistent.rs`); namespace topic lists and their watchers ([`topic_list`]).

pub mod connection;
pub mod consumer;
pub mod convert;
mod non_persistent;
pub mod receipts;
mod schema;
pub mod server;
pub mod topic_list;

use bytes::Bytes;
use magnetar_proto::pulsar::BaseCommand;

/// One frame for a connection's writer: a command and, for MESSAGE, the stored entry bytes.
#[derive(Debug)]
pub struct Outbound {
    pub command: BaseCommand,
    pub payload: Option<Bytes>,
}

impl Outbound {
    pub fn command(command: BaseCommand) -> Self {
        Outbound { command, payload: None }
    }
}

/// Frames queued to one connection's writer before senders wait (dispatchers, receipts).
pub const OUTBOUND_QUEUE: usize = 1024;
/// Publishes of one producer awaiting durability before its connection stops reading.
pub const MAX_PENDING_SENDS_PER_PRODUCER: usize = 10_000;
