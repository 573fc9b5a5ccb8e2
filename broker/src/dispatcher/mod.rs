//! Dispatchers move entries from a subscription's cursor to its consumers, within the
//! permits each consumer granted (FLOW). One file per subscription type.

pub mod exclusive;

/// How long a dispatcher waits before retrying a failed read.
pub const READ_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(200);
