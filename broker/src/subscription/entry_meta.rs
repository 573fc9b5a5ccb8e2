//! What delivery reads of an entry: its message count, its deliver-at time and its sticky key
//! hash, from the entry's message metadata (the entry is otherwise opaque to the broker).

use bytes::Bytes;
use magnetar_proto::frame::Payload;

use super::delivery::EntryMeta;
use crate::dispatcher::key_shared;

/// Reads an entry's metadata. A payload the broker cannot parse still goes out as one
/// message with the empty key: the client reports it.
pub fn parse(data: &Bytes) -> EntryMeta {
    match Payload::parse(data.clone()) {
        Ok(payload) => {
            let metadata = payload.metadata();
            let key = if metadata.num_messages_in_batch.is_some() {
                first_batch_message_key(&payload.body())
            } else {
                sticky_key(metadata.ordering_key.as_deref(), metadata.partition_key.as_deref())
            };
            EntryMeta {
                messages: i64::from(payload.num_messages()),
                deliver_at_ms: metadata.deliver_at_time.and_then(|t| u64::try_from(t).ok()),
                hash: key_shared::sticky_key_hash(&key),
            }
        }
        Err(_) => EntryMeta { messages: 1, deliver_at_ms: None, hash: key_shared::sticky_key_hash(b"") },
    }
}

/// The ordering key, else the partition key, else none (the empty key).
fn sticky_key(ordering: Option<&[u8]>, partition: Option<&str>) -> Vec<u8> {
    match (ordering, partition) {
        (Some(ordering), _) if !ordering.is_empty() => ordering.to_vec(),
        (_, Some(partition)) => partition.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// A batch entry's sticky key is its first message's, as Pulsar's `peekStickyKey`: the body
/// starts with `[u32 big-endian size][SingleMessageMetadata]`.
fn first_batch_message_key(body: &[u8]) -> Vec<u8> {
    use prost::Message as _;
    let Some(size) = body.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
        return Vec::new();
    };
    let Some(encoded) = body.get(4..4usize.saturating_add(size)) else { return Vec::new() };
    match magnetar_proto::pulsar::SingleMessageMetadata::decode(encoded) {
        Ok(single) => sticky_key(single.ordering_key.as_deref(), single.partition_key.as_deref()),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_entries_take_the_sticky_key_of_their_first_message() {
        use prost::Message as _;
        let single = magnetar_proto::pulsar::SingleMessageMetadata {
            partition_key: Some("k1".to_owned()),
            payload_size: 1,
            ..Default::default()
        };
        let encoded = single.encode_to_vec();
        let mut body = (encoded.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&encoded);
        body.push(b'x');
        assert_eq!(super::first_batch_message_key(&body), b"k1".to_vec());
        assert_eq!(super::first_batch_message_key(&body[..3]), Vec::<u8>::new());
        assert_eq!(super::sticky_key(Some(b"o".as_slice()), Some("p")), b"o".to_vec());
        assert_eq!(super::sticky_key(Some(b"".as_slice()), Some("p")), b"p".to_vec());
    }
}
