//! Encoding several messages as one batch entry, the format Pulsar's batching producers write
//! and every Pulsar consumer splits: a body of `[u32 big-endian size][SingleMessageMetadata]
//! [payload]` per message, under one `MessageMetadata` whose `num_messages_in_batch` is the
//! count. The broker stores the whole batch as one ledger entry and answers it with one receipt.

use bytes::{BufMut, Bytes, BytesMut};
use magnetar_proto::pulsar as pb;
use prost::Message as _;

use crate::producer::ProducerMessage;

/// The batch body of `messages`, in order.
pub(crate) fn encode_body(messages: &[ProducerMessage]) -> Bytes {
    let metadata: Vec<pb::SingleMessageMetadata> = messages.iter().map(single_metadata).collect();
    let size: usize = messages
        .iter()
        .zip(&metadata)
        .map(|(message, metadata)| 4 + metadata.encoded_len() + message.payload().len())
        .sum();
    let mut body = BytesMut::with_capacity(size);
    for (message, metadata) in messages.iter().zip(&metadata) {
        body.put_u32(metadata.encoded_len() as u32);
        // Encoding into a buffer with enough capacity cannot fail.
        metadata.encode_raw(&mut body);
        body.put_slice(message.payload());
    }
    body.freeze()
}

fn single_metadata(message: &ProducerMessage) -> pb::SingleMessageMetadata {
    pb::SingleMessageMetadata {
        properties: message.wire_properties(),
        partition_key: message.key.clone(),
        partition_key_b64_encoded: message.key_is_base64.then_some(true),
        payload_size: i32::try_from(message.payload().len()).unwrap_or(i32::MAX),
        event_time: message.event_time,
        null_value: message.null_value.then_some(true),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use magnetar_proto::{command, Payload};

    use super::*;
    use crate::entry::decode_entry;

    #[test]
    fn encoded_batch_decodes_to_the_same_messages_in_order() {
        let messages = vec![
            ProducerMessage::new("first").key("k1").property("p", "1"),
            ProducerMessage::new(""),
            ProducerMessage::new(vec![7u8; 3000]).event_time(1_700_000_000_123),
        ];
        let metadata = pb::MessageMetadata {
            producer_name: "batcher".into(),
            sequence_id: 10,
            publish_time: 1_700_000_000_000,
            num_messages_in_batch: Some(messages.len() as i32),
            ..Default::default()
        };
        let payload = Payload::new(metadata, &encode_body(&messages));
        let delivered =
            pb::CommandMessage { consumer_id: 1, message_id: command::message_id(4, 9), ..Default::default() };
        let decoded = decode_entry(&delivered, &payload).expect("decode the batch");
        assert_eq!(decoded.batch_size, Some(3));
        assert_eq!(decoded.messages.len(), 3);
        for (sent, received) in messages.iter().zip(&decoded.messages) {
            assert_eq!(&received.payload, sent.payload());
            assert_eq!(received.key, sent.key);
            assert_eq!(received.properties, sent.properties);
        }
        assert_eq!(decoded.messages[2].event_time, Some(1_700_000_000_123));
    }
}
