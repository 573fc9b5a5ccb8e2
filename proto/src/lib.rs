//! Magnetar's wire contracts.
//!
//! - [`pulsar`]: the Pulsar binary protocol messages (our own .proto, wire-compatible) and
//!   [`frame`], the codec for the frames that carry them, shared by broker and client;
//!   [`batch`], what is inside an entry's body (codecs, batches).
//! - [`bookie`]: BookieService, the gRPC contract between the ledger client and a bookie.
//! - [`records`]: what Magnetar keeps in its metadata store.
//!
//! Generated code lives in OUT_DIR; this crate adds only the codec and small helpers.

pub mod batch;
pub mod clock;
pub mod command;
pub mod frame;
pub mod hash;
pub mod topic_name;

/// Pulsar protocol messages.
#[allow(clippy::all, missing_docs)]
pub mod pulsar {
    include!(concat!(env!("OUT_DIR"), "/magnetar.pulsar.rs"));
}

/// BookieService messages, client and server.
#[allow(clippy::all, missing_docs)]
pub mod bookie {
    include!(concat!(env!("OUT_DIR"), "/magnetar.bookie.rs"));
}

/// Records kept in the metadata store.
#[allow(clippy::all, missing_docs)]
pub mod records {
    include!(concat!(env!("OUT_DIR"), "/magnetar.records.rs"));
}

pub use frame::{Frame, FrameCodec, FrameError, Payload};

/// Protocol version Magnetar speaks (v19 in Pulsar's numbering).
pub const PROTOCOL_VERSION: i32 = 19;

/// Largest message a producer may send by default (Pulsar's default, 5 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 5 * 1024 * 1024;

/// Room for the command and metadata on top of the largest message in a frame.
pub const FRAME_OVERHEAD: usize = 10 * 1024;

/// An error and its causes on one line, `outer: cause: root cause`, skipping a cause whose
/// text the line already ends with. For errors whose own message is only a summary (tonic's
/// "transport error") and for logs.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
