//! Turning one delivered entry (a MESSAGE frame's payload) into the messages it holds.
//!
//! An entry whose metadata sets `num_messages_in_batch` is a batch: its body is a sequence of
//! `[u32 big-endian size][SingleMessageMetadata][payload of payload_size bytes]`. Every size
//! read from the body is checked against what remains before it is used, the message count
//! against what the body could possibly hold, so a hostile or corrupt entry gives an error,
//! never a panic or a huge allocation.
//!
//! A compressed body (LZ4, ZSTD, ZLIB, SNAPPY) is decompressed first (compression.rs), then
//! split. A chunk of a chunked message is handed back as it is (still compressed): chunks.rs
//! puts the chunks together, and [`assembled_message`] decodes the whole. Features this client
//! cannot decode yet (encryption) are refused with an error naming the message, rather than
//! handing the application garbage.

use std::collections::BTreeMap;

use bytes::Bytes;
use magnetar_proto::pulsar as pb;
use magnetar_proto::Payload;

use crate::chunks::{Assembled, Chunk};
use crate::error::ClientError;
use crate::message::{Message, MessageId};

/// The messages of one entry, and what the consumer needs to account for it.
#[derive(Debug)]
pub(crate) struct DecodedEntry {
    /// The messages to hand to the application, in order. Fewer than `permits` when some were
    /// compacted out or acknowledged before (the `ack_set` of a redelivery).
    pub messages: Vec<Message>,
    /// How many flow-control permits the broker charged for the entry: its message count.
    pub permits: u32,
    /// For a batch, the number of messages in it (individual acks wait for all of them).
    pub batch_size: Option<u32>,
    /// One chunk of a chunked message (no `messages` then): for the consumer's assembler.
    pub chunk: Option<Chunk>,
}

/// One message cut out of a batch body.
#[cfg(test)]
pub(crate) use magnetar_proto::batch::BatchedMessage;

/// Decodes the entry that came with `command`.
pub(crate) fn decode_entry(command: &pb::CommandMessage, payload: &Payload) -> Result<DecodedEntry, ClientError> {
    let entry_id = MessageId::from(&command.message_id).entry_id_only();
    let metadata = payload.metadata();
    let permits = payload.num_messages();

    if !metadata.encryption_keys.is_empty() {
        return Err(ClientError::UnsupportedMessage { id: entry_id, feature: "end-to-end encryption" });
    }
    let redelivery_count = command.redelivery_count.unwrap_or(0);
    if metadata.num_chunks_from_msg.is_some_and(|chunks| chunks > 1) {
        let chunk = Chunk::from_entry(entry_id, metadata.clone(), payload.body(), redelivery_count)?;
        return Ok(DecodedEntry { messages: Vec::new(), permits, batch_size: None, chunk: Some(chunk) });
    }

    let body = decompress(entry_id, metadata, payload.body())?;
    let event_time = |time: Option<u64>| time.filter(|&t| t > 0);

    let Some(count) = metadata.num_messages_in_batch else {
        let message = single_message(entry_id, metadata, body, redelivery_count);
        return Ok(DecodedEntry { messages: vec![message], permits, batch_size: None, chunk: None });
    };

    let count = usize::try_from(count)
        .ok()
        .filter(|&count| count > 0)
        .ok_or_else(|| malformed(entry_id, format!("batch claims {count} messages")))?;
    let batched = split_batch(body, count).map_err(|reason| malformed(entry_id, reason))?;
    let mut messages = Vec::with_capacity(batched.len());
    for (index, single) in batched.into_iter().enumerate() {
        // Indexes fit in i32: the count came from an i32.
        let batch_index = index as i32;
        if single.metadata.compacted_out.unwrap_or(false) || already_acknowledged(&command.ack_set, index) {
            continue;
        }
        messages.push(Message {
            id: MessageId { batch_index, ..entry_id },
            topic: String::new(),
            payload: single.payload,
            key: single.metadata.partition_key,
            properties: properties(&single.metadata.properties),
            publish_time: metadata.publish_time,
            event_time: event_time(single.metadata.event_time).or(event_time(metadata.event_time)),
            producer_name: metadata.producer_name.clone(),
            redelivery_count,
            schema_version: metadata.schema_version.clone(),
            key_is_base64: single.metadata.partition_key_b64_encoded.unwrap_or(false),
            null_value: single.metadata.null_value.unwrap_or(false),
            chunk_ids: Vec::new(),
        });
    }
    Ok(DecodedEntry { messages, permits, batch_size: Some(count as u32), chunk: None })
}

/// The message a complete chunked message makes: the chunks' bodies put together are its
/// (compressed) body, the last chunk's metadata describes it, and its id is the last chunk's.
pub(crate) fn assembled_message(assembled: Assembled) -> Result<Message, ClientError> {
    let Assembled { metadata, body, ids, redelivery_count } = assembled;
    let last = ids.last().copied().unwrap_or(MessageId::entry(u64::MAX, u64::MAX));
    let body = decompress(last, &metadata, body)?;
    let mut message = single_message(last, &metadata, body, redelivery_count);
    message.chunk_ids = ids;
    Ok(message)
}

/// The one message of an entry that is not a batch.
fn single_message(id: MessageId, metadata: &pb::MessageMetadata, body: Bytes, redelivery_count: u32) -> Message {
    Message {
        id,
        topic: String::new(),
        payload: body,
        key: metadata.partition_key.clone(),
        properties: properties(&metadata.properties),
        publish_time: metadata.publish_time,
        event_time: metadata.event_time.filter(|&t| t > 0),
        producer_name: metadata.producer_name.clone(),
        redelivery_count,
        schema_version: metadata.schema_version.clone(),
        key_is_base64: metadata.partition_key_b64_encoded.unwrap_or(false),
        null_value: metadata.null_value.unwrap_or(false),
        chunk_ids: Vec::new(),
    }
}

/// Decompresses an entry's (or a chunked message's) body as its metadata says.
fn decompress(id: MessageId, metadata: &pb::MessageMetadata, body: Bytes) -> Result<Bytes, ClientError> {
    crate::compression::decompress(metadata, body).map_err(|reason| {
        let compression = metadata
            .compression
            .and_then(|codec| pb::CompressionType::try_from(codec).ok())
            .map_or_else(|| "an unknown codec".to_owned(), |codec| codec.as_str_name().to_owned());
        ClientError::UnsupportedCompression { id, compression, reason }
    })
}

#[cfg(test)]
pub(crate) use magnetar_proto::batch::encode_batch;
/// Cuts a batch body into its `count` messages; writes one (tests, the fake broker).
pub(crate) use magnetar_proto::batch::split_batch;

/// The broker's `ack_set` on a redelivered batch has a bit set for each message still to be
/// delivered; an empty set means all of them.
fn already_acknowledged(ack_set: &[i64], index: usize) -> bool {
    if ack_set.is_empty() {
        return false;
    }
    let word = ack_set.get(index / 64).copied().unwrap_or(0);
    word & (1i64 << (index % 64)) == 0
}

fn properties(pairs: &[pb::KeyValue]) -> BTreeMap<String, String> {
    pairs.iter().map(|pair| (pair.key.clone(), pair.value.clone())).collect()
}

fn malformed(id: MessageId, reason: String) -> ClientError {
    ClientError::MalformedMessage { id, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn single(payload: &str, key: Option<&str>, properties: &[(&str, &str)]) -> BatchedMessage {
        BatchedMessage {
            metadata: pb::SingleMessageMetadata {
                partition_key: key.map(str::to_owned),
                properties: properties
                    .iter()
                    .map(|(key, value)| pb::KeyValue { key: (*key).to_owned(), value: (*value).to_owned() })
                    .collect(),
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    fn entry_metadata(batch: Option<i32>) -> pb::MessageMetadata {
        pb::MessageMetadata {
            producer_name: "producer-a".into(),
            sequence_id: 7,
            publish_time: 1_700_000_000_000,
            num_messages_in_batch: batch,
            ..Default::default()
        }
    }

    fn command(ledger_id: u64, entry_id: u64, ack_set: Vec<i64>) -> pb::CommandMessage {
        pb::CommandMessage {
            consumer_id: 1,
            message_id: pb::MessageIdData { ledger_id, entry_id, ..Default::default() },
            redelivery_count: Some(2),
            ack_set,
            consumer_epoch: None,
        }
    }

    #[test]
    fn batch_splits_into_messages_with_batch_indexes() {
        let messages = [single("a", Some("k1"), &[("p", "1")]), single("bb", None, &[]), single("", Some("k3"), &[])];
        let payload = Payload::new(entry_metadata(Some(3)), &encode_batch(&messages));
        let decoded = decode_entry(&command(5, 9, vec![]), &payload).expect("decode");
        assert_eq!(decoded.permits, 3);
        assert_eq!(decoded.batch_size, Some(3));
        let ids: Vec<String> = decoded.messages.iter().map(|m| m.id.to_string()).collect();
        assert_eq!(ids, ["5:9:-1:0", "5:9:-1:1", "5:9:-1:2"]);
        assert_eq!(decoded.messages[0].payload, Bytes::from_static(b"a"));
        assert_eq!(decoded.messages[0].key.as_deref(), Some("k1"));
        assert_eq!(decoded.messages[0].properties.get("p").map(String::as_str), Some("1"));
        assert_eq!(decoded.messages[1].payload, Bytes::from_static(b"bb"));
        assert_eq!(decoded.messages[1].key, None);
        assert_eq!(decoded.messages[2].payload, Bytes::new());
        assert!(decoded.messages.iter().all(|m| m.producer_name == "producer-a" && m.redelivery_count == 2));
    }

    #[test]
    fn entry_without_batch_count_is_one_message() {
        let mut metadata = entry_metadata(None);
        metadata.partition_key = Some("key".into());
        metadata.properties = vec![pb::KeyValue { key: "a".into(), value: "b".into() }];
        let payload = Payload::new(metadata, b"hello");
        let decoded = decode_entry(&command(1, 2, vec![]), &payload).expect("decode");
        assert_eq!(decoded.batch_size, None);
        assert_eq!(decoded.permits, 1);
        let [message] = &decoded.messages[..] else { panic!("one message expected") };
        assert_eq!(message.id, MessageId::entry(1, 2));
        assert_eq!(message.payload, Bytes::from_static(b"hello"));
        assert_eq!(message.key.as_deref(), Some("key"));
        assert_eq!(message.properties.len(), 1);
    }

    #[test]
    fn acknowledged_and_compacted_out_batch_messages_are_skipped() {
        let mut compacted = single("gone", None, &[]);
        compacted.metadata.compacted_out = Some(true);
        let messages = [single("0", None, &[]), single("1", None, &[]), compacted, single("3", None, &[])];
        let payload = Payload::new(entry_metadata(Some(4)), &encode_batch(&messages));
        // Bits set for 1, 2 and 3: message 0 was acknowledged before the redelivery.
        let decoded = decode_entry(&command(1, 1, vec![0b1110]), &payload).expect("decode");
        let indexes: Vec<i32> = decoded.messages.iter().map(|m| m.id.batch_index).collect();
        assert_eq!(indexes, [1, 3]);
        assert_eq!(decoded.permits, 4);
        assert_eq!(decoded.batch_size, Some(4));
    }

    #[test]
    fn batch_size_beyond_remaining_body_is_malformed() {
        // The metadata claims a payload longer than the bytes that follow.
        let metadata = pb::SingleMessageMetadata { payload_size: 1000, ..Default::default() };
        let mut body = Vec::new();
        body.extend_from_slice(&(metadata.encoded_len() as u32).to_be_bytes());
        body.extend_from_slice(&metadata.encode_to_vec());
        body.extend_from_slice(b"abc");
        let error = split_batch(Bytes::from(body), 1).expect_err("too long");
        assert!(error.contains("1000"), "{error}");
    }

    #[test]
    fn metadata_size_beyond_remaining_body_is_malformed() {
        let mut body = vec![0, 0, 0xff, 0xff];
        body.extend_from_slice(&[0; 8]);
        assert!(split_batch(Bytes::from(body), 1).is_err());
    }

    #[test]
    fn batch_count_larger_than_body_can_hold_is_refused_before_allocating() {
        let body = encode_batch(&[single("x", None, &[])]);
        assert!(split_batch(body, usize::MAX / 2).is_err());
        let payload = Payload::new(entry_metadata(Some(i32::MAX)), b"tiny");
        assert!(matches!(decode_entry(&command(1, 1, vec![]), &payload), Err(ClientError::MalformedMessage { .. })));
        let payload = Payload::new(entry_metadata(Some(-3)), b"tiny");
        assert!(matches!(decode_entry(&command(1, 1, vec![]), &payload), Err(ClientError::MalformedMessage { .. })));
    }

    #[test]
    fn negative_payload_size_is_malformed() {
        let metadata = pb::SingleMessageMetadata { payload_size: -1, ..Default::default() };
        let mut body = Vec::new();
        body.extend_from_slice(&(metadata.encoded_len() as u32).to_be_bytes());
        body.extend_from_slice(&metadata.encode_to_vec());
        assert!(split_batch(Bytes::from(body), 1).is_err());
    }

    #[test]
    fn compressed_batch_is_decompressed_then_split() {
        use crate::compression::CompressionType;
        let body = encode_batch(&[single("first", Some("k"), &[]), single("second", None, &[])]);
        for codec in [CompressionType::Lz4, CompressionType::Zstd, CompressionType::Zlib, CompressionType::Snappy] {
            let mut metadata = entry_metadata(Some(2));
            metadata.compression = codec.to_wire();
            metadata.uncompressed_size = Some(body.len() as u32);
            let payload = Payload::new(metadata, &codec.compress(&body).expect("compress"));
            let decoded = decode_entry(&command(3, 4, vec![]), &payload).expect("decode");
            let bodies: Vec<&[u8]> = decoded.messages.iter().map(|m| m.payload.as_ref()).collect();
            assert_eq!(bodies, [b"first".as_slice(), b"second".as_slice()], "{codec}");
        }
    }

    #[test]
    fn unsupported_codec_is_an_error_naming_the_codec_and_message() {
        let mut metadata = entry_metadata(None);
        metadata.compression = Some(42);
        metadata.uncompressed_size = Some(10);
        let payload = Payload::new(metadata, b"\x01\x02garbage");
        let error = decode_entry(&command(3, 4, vec![]), &payload).expect_err("compressed");
        assert!(error.is_message_error());
        assert_eq!(
            error.to_string(),
            "message 3:4:-1:-1 is compressed with an unknown codec and cannot be decompressed: unknown codec 42"
        );
    }

    #[test]
    fn explicit_no_compression_is_accepted() {
        let mut metadata = entry_metadata(None);
        metadata.compression = Some(pb::CompressionType::None as i32);
        let payload = Payload::new(metadata, b"plain");
        assert!(decode_entry(&command(3, 4, vec![]), &payload).is_ok());
    }

    #[test]
    fn arbitrary_batch_bodies_never_panic() {
        // A fixed-seed generator: the same inputs on every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = encode_batch(&[single("hello", Some("k"), &[("a", "b")]), single("world", None, &[])]);
        for _ in 0..5_000 {
            let mut body = valid.to_vec();
            let len = (next() % (body.len() as u64 + 1)) as usize;
            body.truncate(len);
            for _ in 0..(next() % 4) {
                if !body.is_empty() {
                    let at = (next() % body.len() as u64) as usize;
                    body[at] = next() as u8;
                }
            }
            let count = (next() % 5) as usize;
            let _ = split_batch(Bytes::from(body), count);
        }
    }
}
