//! Chunked messages, Pulsar's way of sending a message larger than the broker's limit.
//!
//! Producer side ([`split`]): with chunking on (and batching off, as in Pulsar), a
//! compressed body longer than the chunk size is cut into `ceil(len / chunk size)` entries that
//! share one sequence id and carry, in their metadata, `uuid` (`<producer name>-<sequence id>`),
//! `num_chunks_from_msg`, `total_chunk_msg_size` (the compressed length) and `chunk_id`; their
//! SEND says `is_chunk`. The chunk size is the broker's maximum message size (or the producer's
//! `chunk_max_message_size`) less the metadata's size, as Pulsar's `ProducerImpl` computes it.
//!
//! Consumer side ([`ChunkAssembler`], one per topic consumer, owned by it): chunks are
//! collected per uuid in order and the message is handed out once its last chunk arrived,
//! with the last chunk's id and the ids of all chunks (acknowledging it acknowledges every
//! chunk). As Pulsar's `ConsumerImpl`, at most `max_pending_chunked_messages` messages are
//! collected at once (when full, the oldest is dropped: acknowledged with
//! `auto_ack_oldest_chunked_message_on_queue_full`, else left unacknowledged for the broker
//! to redeliver), an incomplete message older than `expire_time_of_incomplete_chunked_message`
//! is dropped and its chunks acknowledged, and a chunk out of order (its predecessors lost)
//! drops what was collected. Nothing read from the broker is trusted: chunk counts, ids and
//! sizes are checked against each other and against [`MAX_UNCOMPRESSED_SIZE`] before anything
//! is kept, and the collected bytes can never exceed the declared total.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use magnetar_proto::pulsar as pb;
use tokio::time::Instant;

use crate::compression::MAX_UNCOMPRESSED_SIZE;
use crate::error::ClientError;
use crate::message::MessageId;

/// Pulsar's defaults (`maxPendingChunkedMessage`, `expireTimeOfIncompleteChunkedMessage`).
pub const DEFAULT_MAX_PENDING_CHUNKED_MESSAGES: usize = 10;
pub const DEFAULT_EXPIRE_TIME_OF_INCOMPLETE_CHUNKED_MESSAGE: Duration = Duration::from_secs(60);

/// How a consumer collects chunked messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkSettings {
    pub max_pending_chunked_messages: usize,
    pub expire_time_of_incomplete_chunked_message: Duration,
    pub auto_ack_oldest_chunked_message_on_queue_full: bool,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        ChunkSettings {
            max_pending_chunked_messages: DEFAULT_MAX_PENDING_CHUNKED_MESSAGES,
            expire_time_of_incomplete_chunked_message: DEFAULT_EXPIRE_TIME_OF_INCOMPLETE_CHUNKED_MESSAGE,
            auto_ack_oldest_chunked_message_on_queue_full: false,
        }
    }
}

/// The metadata of chunk `chunk_id` of `num_chunks` of the message `base` describes.
pub(crate) fn chunk_metadata(
    base: &pb::MessageMetadata,
    uuid: &str,
    chunk_id: usize,
    num_chunks: usize,
    total_size: usize,
) -> pb::MessageMetadata {
    pb::MessageMetadata {
        uuid: Some(uuid.to_owned()),
        chunk_id: Some(i32::try_from(chunk_id).unwrap_or(i32::MAX)),
        num_chunks_from_msg: Some(i32::try_from(num_chunks).unwrap_or(i32::MAX)),
        total_chunk_msg_size: Some(i32::try_from(total_size).unwrap_or(i32::MAX)),
        ..base.clone()
    }
}

/// Cuts `body` into pieces of at most `chunk_size` bytes (at least one piece).
pub(crate) fn split(body: &Bytes, chunk_size: usize) -> Vec<Bytes> {
    if body.is_empty() || chunk_size == 0 {
        return vec![body.clone()];
    }
    (0..body.len()).step_by(chunk_size).map(|start| body.slice(start..(start + chunk_size).min(body.len()))).collect()
}

/// One delivered chunk, checked.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    /// The chunk's own entry.
    pub id: MessageId,
    pub uuid: String,
    pub chunk_id: usize,
    pub num_chunks: usize,
    /// The compressed message's length: what all chunks add up to.
    pub total_size: usize,
    pub metadata: pb::MessageMetadata,
    pub body: Bytes,
    pub redelivery_count: u32,
}

impl Chunk {
    /// Reads the chunk fields of an entry's metadata, refusing values that cannot describe a
    /// real chunked message.
    pub(crate) fn from_entry(
        id: MessageId,
        metadata: pb::MessageMetadata,
        body: Bytes,
        redelivery_count: u32,
    ) -> Result<Chunk, ClientError> {
        let malformed = |reason: String| ClientError::MalformedMessage { id, reason };
        let uuid = metadata.uuid.clone().filter(|uuid| !uuid.is_empty());
        let uuid = uuid.ok_or_else(|| malformed("a chunk without a uuid".into()))?;
        let num_chunks = metadata.num_chunks_from_msg.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
        let chunk_id = metadata.chunk_id.and_then(|n| usize::try_from(n).ok());
        let total_size = metadata.total_chunk_msg_size.and_then(|n| usize::try_from(n).ok());
        let (Some(chunk_id), Some(total_size)) = (chunk_id, total_size) else {
            return Err(malformed("a chunk without a valid chunk_id or total_chunk_msg_size".into()));
        };
        if total_size > MAX_UNCOMPRESSED_SIZE {
            return Err(malformed(format!("chunked message of {total_size} bytes is over {MAX_UNCOMPRESSED_SIZE}")));
        }
        // Every chunk but an empty message's only one holds at least one byte.
        if num_chunks < 2 || num_chunks > total_size || chunk_id >= num_chunks {
            return Err(malformed(format!(
                "chunk {chunk_id} of {num_chunks} for a message of {total_size} bytes is impossible"
            )));
        }
        if body.len() > total_size {
            return Err(malformed(format!("chunk of {} bytes in a message of {total_size}", body.len())));
        }
        Ok(Chunk { id, uuid, chunk_id, num_chunks, total_size, metadata, body, redelivery_count })
    }
}

/// A message whose chunks all arrived.
#[derive(Debug)]
pub(crate) struct Assembled {
    /// The last chunk's metadata.
    pub metadata: pb::MessageMetadata,
    /// The compressed body, all chunks together.
    pub body: Bytes,
    /// Every chunk's id, first to last.
    pub ids: Vec<MessageId>,
    pub redelivery_count: u32,
}

/// What the consumer must do after a chunk was added or incomplete messages expired.
#[derive(Debug, Default)]
pub(crate) struct Step {
    pub complete: Option<Assembled>,
    /// Chunks to acknowledge: of expired messages, duplicates, and (if so set) of the oldest
    /// message dropped when too many were pending.
    pub ack: Vec<MessageId>,
    /// Chunks dropped and left unacknowledged: the broker redelivers them later.
    pub dropped: Vec<MessageId>,
}

#[derive(Debug)]
struct Pending {
    ids: Vec<MessageId>,
    body: BytesMut,
    num_chunks: usize,
    total_size: usize,
    started: Instant,
}

/// Collects the chunks of one topic's chunked messages. See the module documentation.
#[derive(Debug)]
pub(crate) struct ChunkAssembler {
    settings: ChunkSettings,
    pending: HashMap<String, Pending>,
    /// Uuids in the order their first chunk arrived: the oldest is dropped or expired first.
    order: VecDeque<String>,
}

impl ChunkAssembler {
    pub(crate) fn new(settings: ChunkSettings) -> Self {
        ChunkAssembler { settings, pending: HashMap::new(), order: VecDeque::new() }
    }

    /// How many messages are being collected.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Forgets everything (after a reconnect or seek: the broker sends the chunks again).
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
        self.order.clear();
    }

    /// When the oldest incomplete message expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        let expire = self.settings.expire_time_of_incomplete_chunked_message;
        self.order.iter().filter_map(|uuid| self.pending.get(uuid)).map(|p| p.started + expire).min()
    }

    /// Drops incomplete messages older than the expiry time; their chunks are to be
    /// acknowledged (Pulsar's `removeExpireIncompleteChunkedMessages`).
    pub(crate) fn expire(&mut self, now: Instant) -> Step {
        let expire = self.settings.expire_time_of_incomplete_chunked_message;
        let mut step = Step::default();
        let expired: Vec<String> =
            self.pending.iter().filter(|(_, p)| p.started + expire <= now).map(|(uuid, _)| uuid.clone()).collect();
        for uuid in expired {
            if let Some(pending) = self.remove(&uuid) {
                tracing::info!(%uuid, chunks = pending.ids.len(), of = pending.num_chunks, "incomplete chunked message expired; acknowledging its chunks");
                step.ack.extend(pending.ids);
            }
        }
        step
    }

    /// Adds a chunk. Errors concern this chunk only (it does not fit the chunks before it).
    pub(crate) fn add(&mut self, chunk: Chunk, now: Instant) -> Result<Step, ClientError> {
        let mut step = self.expire(now);
        if chunk.chunk_id == 0 {
            if let Some(old) = self.remove(&chunk.uuid) {
                // The producer sent the message again (a resend after a reconnect): the first
                // copy's chunks are not needed.
                step.ack.extend(old.ids);
            }
            while self.pending.len() >= self.settings.max_pending_chunked_messages.max(1) {
                let Some(oldest) = self.order.front().cloned() else { break };
                if let Some(dropped) = self.remove(&oldest) {
                    tracing::info!(uuid = %oldest, "too many chunked messages pending; dropping the oldest");
                    if self.settings.auto_ack_oldest_chunked_message_on_queue_full {
                        step.ack.extend(dropped.ids);
                    } else {
                        step.dropped.extend(dropped.ids);
                    }
                }
            }
            let mut body = BytesMut::with_capacity(chunk.body.len());
            body.extend_from_slice(&chunk.body);
            let pending = Pending {
                ids: vec![chunk.id],
                body,
                num_chunks: chunk.num_chunks,
                total_size: chunk.total_size,
                started: now,
            };
            self.order.push_back(chunk.uuid.clone());
            self.pending.insert(chunk.uuid.clone(), pending);
            return Ok(step);
        }
        let Some(pending) = self.pending.get_mut(&chunk.uuid) else {
            // Its first chunks were dropped or expired: this one cannot be used.
            step.dropped.push(chunk.id);
            return Ok(step);
        };
        if chunk.chunk_id < pending.ids.len() {
            // A resent copy of a chunk already here.
            step.ack.push(chunk.id);
            return Ok(step);
        }
        let fits = chunk.chunk_id == pending.ids.len()
            && chunk.num_chunks == pending.num_chunks
            && chunk.total_size == pending.total_size
            && pending.body.len() + chunk.body.len() <= pending.total_size;
        if !fits {
            let expected = pending.ids.len();
            if let Some(broken) = self.remove(&chunk.uuid) {
                step.dropped.extend(broken.ids);
            }
            step.dropped.push(chunk.id);
            tracing::warn!(uuid = %chunk.uuid, chunk = chunk.chunk_id, expected, "chunk does not follow the chunks received; dropping the message");
            return Ok(step);
        }
        pending.body.extend_from_slice(&chunk.body);
        pending.ids.push(chunk.id);
        if pending.ids.len() < pending.num_chunks {
            return Ok(step);
        }
        let Some(done) = self.remove(&chunk.uuid) else { return Ok(step) };
        if done.body.len() != done.total_size {
            step.dropped.extend(done.ids);
            return Err(ClientError::MalformedMessage {
                id: chunk.id,
                reason: format!("chunks add up to {} bytes, the metadata says {}", done.body.len(), done.total_size),
            });
        }
        step.complete = Some(Assembled {
            metadata: chunk.metadata,
            body: done.body.freeze(),
            ids: done.ids,
            redelivery_count: chunk.redelivery_count,
        });
        Ok(step)
    }

    fn remove(&mut self, uuid: &str) -> Option<Pending> {
        let pending = self.pending.remove(uuid)?;
        self.order.retain(|other| other != uuid);
        Some(pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(uuid: &str, body: &[u8], chunk_size: usize, first_entry: u64) -> Vec<Chunk> {
        let body = Bytes::copy_from_slice(body);
        let pieces = split(&body, chunk_size);
        let count = pieces.len();
        pieces
            .into_iter()
            .enumerate()
            .map(|(index, piece)| {
                let metadata = chunk_metadata(&pb::MessageMetadata::default(), uuid, index, count, body.len());
                let id = MessageId::entry(1, first_entry + index as u64);
                Chunk::from_entry(id, metadata, piece, 0).expect("valid chunk")
            })
            .collect()
    }

    fn assembler(max_pending: usize) -> ChunkAssembler {
        ChunkAssembler::new(ChunkSettings {
            max_pending_chunked_messages: max_pending,
            expire_time_of_incomplete_chunked_message: Duration::from_secs(60),
            auto_ack_oldest_chunked_message_on_queue_full: false,
        })
    }

    #[test]
    fn split_cuts_into_pieces_of_at_most_the_chunk_size() {
        let body = Bytes::from(vec![7u8; 10]);
        let sizes: Vec<usize> = split(&body, 4).iter().map(Bytes::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(split(&body, 10).len(), 1);
        assert_eq!(split(&Bytes::new(), 4).len(), 1);
    }

    #[test]
    fn interleaved_chunked_messages_are_put_together_in_order() {
        let now = Instant::now();
        let mut assembler = assembler(10);
        let a = chunks_of("p-1", b"aaaaaaaaaa", 3, 0);
        let b = chunks_of("p-2", b"bbbbbbb", 3, 100);
        let mut done = Vec::new();
        for chunk in a.into_iter().zip(b).flat_map(|(a, b)| [a, b]) {
            let step = assembler.add(chunk, now).expect("add");
            assert!(step.ack.is_empty() && step.dropped.is_empty());
            done.extend(step.complete);
        }
        // b has 3 chunks and a has 4: the zip stopped before a's last.
        assert_eq!(done.len(), 1);
        assert_eq!(&done[0].body[..], b"bbbbbbb");
        assert_eq!(done[0].ids, [MessageId::entry(1, 100), MessageId::entry(1, 101), MessageId::entry(1, 102)]);
        assert_eq!(assembler.len(), 1);
    }

    #[test]
    fn resent_chunks_replace_or_are_acknowledged() {
        let now = Instant::now();
        let mut assembler = assembler(10);
        let first = chunks_of("p-1", b"abcdefgh", 3, 0);
        let second = chunks_of("p-1", b"abcdefgh", 3, 10);
        assembler.add(first[0].clone(), now).expect("add");
        assembler.add(first[1].clone(), now).expect("add");
        // The producer resent from the start: the first copy's chunks are acknowledged.
        let step = assembler.add(second[0].clone(), now).expect("add");
        assert_eq!(step.ack, [MessageId::entry(1, 0), MessageId::entry(1, 1)]);
        assembler.add(second[1].clone(), now).expect("add");
        let duplicate = assembler.add(second[1].clone(), now).expect("add");
        assert_eq!(duplicate.ack, [MessageId::entry(1, 11)]);
        let step = assembler.add(second[2].clone(), now).expect("add");
        assert_eq!(&step.complete.expect("complete").body[..], b"abcdefgh");
    }

    #[test]
    fn a_chunk_after_a_gap_drops_the_message() {
        let now = Instant::now();
        let mut assembler = assembler(10);
        let chunks = chunks_of("p-1", b"abcdefghij", 3, 0);
        assembler.add(chunks[0].clone(), now).expect("add");
        let step = assembler.add(chunks[2].clone(), now).expect("add");
        assert_eq!(step.dropped, [MessageId::entry(1, 0), MessageId::entry(1, 2)]);
        assert_eq!(assembler.len(), 0);
        // A later chunk of a message never started is dropped too.
        let step = assembler.add(chunks[3].clone(), now).expect("add");
        assert_eq!(step.dropped, [MessageId::entry(1, 3)]);
    }

    #[test]
    fn too_many_pending_messages_drop_the_oldest() {
        let now = Instant::now();
        let mut assembler = assembler(2);
        for (n, uuid) in ["a", "b", "c"].iter().enumerate() {
            let chunks = chunks_of(uuid, b"xxxxxx", 3, n as u64 * 10);
            let step = assembler.add(chunks[0].clone(), now).expect("add");
            if n == 2 {
                assert_eq!(step.dropped, [MessageId::entry(1, 0)]);
            }
        }
        assert_eq!(assembler.len(), 2);
        let mut acking = ChunkAssembler::new(ChunkSettings {
            max_pending_chunked_messages: 1,
            auto_ack_oldest_chunked_message_on_queue_full: true,
            ..ChunkSettings::default()
        });
        acking.add(chunks_of("a", b"xxxx", 2, 0)[0].clone(), now).expect("add");
        let step = acking.add(chunks_of("b", b"xxxx", 2, 10)[0].clone(), now).expect("add");
        assert_eq!(step.ack, [MessageId::entry(1, 0)]);
    }

    #[test]
    fn incomplete_messages_expire_and_their_chunks_are_acknowledged() {
        let start = Instant::now();
        let mut assembler = assembler(10);
        let chunks = chunks_of("p-1", b"abcdef", 2, 0);
        assembler.add(chunks[0].clone(), start).expect("add");
        assembler.add(chunks[1].clone(), start).expect("add");
        assert_eq!(assembler.next_expiry(), Some(start + Duration::from_secs(60)));
        assert!(assembler.expire(start + Duration::from_secs(59)).ack.is_empty());
        let step = assembler.expire(start + Duration::from_secs(60));
        assert_eq!(step.ack, [MessageId::entry(1, 0), MessageId::entry(1, 1)]);
        assert_eq!(assembler.next_expiry(), None);
    }

    #[test]
    fn impossible_chunk_fields_are_refused() {
        let id = MessageId::entry(1, 1);
        let base = pb::MessageMetadata::default();
        let cases = [
            chunk_metadata(&base, "u", 0, 1, 10),   // one chunk is no chunking
            chunk_metadata(&base, "u", 3, 3, 10),   // id beyond the count
            chunk_metadata(&base, "u", 0, 100, 10), // more chunks than bytes
            chunk_metadata(&base, "u", 0, 2, MAX_UNCOMPRESSED_SIZE + 1), // too large
            chunk_metadata(&base, "", 0, 2, 10),    // no uuid
            pb::MessageMetadata { total_chunk_msg_size: Some(-5), ..chunk_metadata(&base, "u", 0, 2, 10) },
            pb::MessageMetadata { chunk_id: None, ..chunk_metadata(&base, "u", 0, 2, 10) },
        ];
        for metadata in cases {
            let chunk = Chunk::from_entry(id, metadata.clone(), Bytes::from_static(b"x"), 0);
            assert!(matches!(chunk, Err(ClientError::MalformedMessage { .. })), "{metadata:?}");
        }
        let too_long = Chunk::from_entry(id, chunk_metadata(&base, "u", 0, 2, 3), Bytes::from_static(b"xxxx"), 0);
        assert!(too_long.is_err());
    }

    #[test]
    fn chunks_that_overflow_the_declared_total_drop_the_message() {
        let now = Instant::now();
        let mut assembler = assembler(10);
        let base = pb::MessageMetadata::default();
        let first = Chunk::from_entry(
            MessageId::entry(1, 0),
            chunk_metadata(&base, "u", 0, 2, 4),
            Bytes::from_static(b"abc"),
            0,
        )
        .expect("valid");
        let second = Chunk::from_entry(
            MessageId::entry(1, 1),
            chunk_metadata(&base, "u", 1, 2, 4),
            Bytes::from_static(b"de"),
            0,
        )
        .expect("valid");
        assembler.add(first, now).expect("add");
        let step = assembler.add(second, now).expect("add");
        assert!(step.complete.is_none());
        assert_eq!(step.dropped.len(), 2);
    }
}
