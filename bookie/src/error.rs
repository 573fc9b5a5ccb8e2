//! Errors of the bookie server and the ledger client.

use magnetar_proto::bookie::Status;

#[derive(Debug, thiserror::Error)]
pub enum BookieError {
    #[error("ledger {ledger_id} is fenced")]
    Fenced { ledger_id: u64 },
    #[error("ledger {ledger_id} does not exist")]
    NoSuchLedger { ledger_id: u64 },
    #[error("entry {entry_id} of ledger {ledger_id} does not exist")]
    NoSuchEntry { ledger_id: u64, entry_id: u64 },
    #[error("wrong master key for ledger {ledger_id}")]
    Unauthorized { ledger_id: u64 },
    #[error("bookie is read-only: {reason}")]
    ReadOnly { reason: String },
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
    #[error("storage at {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("corrupt stored record {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("bookie {bookie} answered {status:?}: {message}")]
    Remote { bookie: String, status: Status, message: String },
    /// A key, certificate or token that cannot be used; names the setting and file, never the
    /// secret.
    #[error("{what}: {reason}")]
    Security { what: String, reason: String },
    /// tonic's own message is only "transport error": the causes (refused, TLS, timeout) are
    /// in its source chain, which the message spells out.
    #[error("cannot reach bookie {bookie}: {}", magnetar_proto::error_chain(source))]
    Transport {
        bookie: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("bookie {bookie} rpc failed: {source}")]
    Rpc {
        bookie: String,
        #[source]
        source: tonic::Status,
    },
    #[error("bookie {bookie} is not registered in metadata")]
    UnknownBookie { bookie: String },
    #[error("no bookies available: need {needed}, have {available}")]
    NotEnoughBookies { needed: usize, available: usize },
    #[error("ledger {ledger_id} is closed")]
    LedgerClosed { ledger_id: u64 },
    #[error("ledger {ledger_id} writer failed earlier: {reason}")]
    WriterFailed { ledger_id: u64, reason: String },
    #[error("invalid ledger configuration: {reason}")]
    InvalidConfig { reason: String },
    #[error("bookie {bookie} did not answer {what} in time")]
    Timeout { bookie: String, what: String },
    #[error("ledger {ledger_id}: no bookie outside the ensemble can replace failed bookie {bookie}")]
    NoReplacementBookie { ledger_id: u64, bookie: String },
    #[error("recovery of ledger {ledger_id} cannot finish now: {reason}")]
    RecoveryIncomplete { ledger_id: u64, reason: String },
    #[error("re-replication of ledger {ledger_id} cannot finish now: {reason}")]
    ReplicationIncomplete { ledger_id: u64, reason: String },
    #[error("metadata: {0}")]
    Meta(#[from] magnetar_meta::MetaError),
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bookie task stopped: {what}")]
    Stopped { what: &'static str },
    /// The bookie's directories do not match its cookie (wiped, swapped or moved disks): it
    /// must not start. The reason says what differs and how to recover.
    #[error("cookie mismatch, refusing to start: {reason}")]
    CookieMismatch { reason: String },
}

impl BookieError {
    /// The wire status for this error, as a bookie answers it.
    pub fn status(&self) -> Status {
        match self {
            BookieError::Fenced { .. } => Status::Fenced,
            BookieError::NoSuchLedger { .. } => Status::NoSuchLedger,
            BookieError::NoSuchEntry { .. } => Status::NoSuchEntry,
            BookieError::Unauthorized { .. } => Status::Unauthorized,
            BookieError::ReadOnly { .. } => Status::ReadOnly,
            BookieError::InvalidRequest { .. } => Status::InvalidRequest,
            _ => Status::IoError,
        }
    }

    /// Rebuilds the error a remote bookie answered with.
    pub fn from_status(bookie: &str, ledger_id: u64, entry_id: u64, status: Status, message: String) -> Self {
        match status {
            Status::Fenced => BookieError::Fenced { ledger_id },
            Status::NoSuchLedger => BookieError::NoSuchLedger { ledger_id },
            Status::NoSuchEntry => BookieError::NoSuchEntry { ledger_id, entry_id },
            Status::Unauthorized => BookieError::Unauthorized { ledger_id },
            _ => BookieError::Remote { bookie: bookie.to_owned(), status, message },
        }
    }
}
