//! What a consumer receives: [`Message`] and its position, [`MessageId`].
//!
//! A message id names the ledger entry that holds the message and, when the entry is a batch,
//! the message's index in it. Ids order like positions in the topic: by ledger, entry, then
//! batch index.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use magnetar_proto::pulsar as pb;

/// Where a message is stored: `ledger:entry:partition:batch`, with -1 for "not partitioned"
/// and "not in a batch".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub ledger_id: u64,
    pub entry_id: u64,
    /// Partition index, or -1 for a topic that is not partitioned.
    pub partition: i32,
    /// Index in the batch, or -1 for an entry that holds one message.
    pub batch_index: i32,
}

impl MessageId {
    /// The id of a whole entry (no batch index).
    pub fn entry(ledger_id: u64, entry_id: u64) -> Self {
        MessageId { ledger_id, entry_id, partition: -1, batch_index: -1 }
    }

    /// True when this message is one of several in a batch entry.
    pub fn is_batched(&self) -> bool {
        self.batch_index >= 0
    }

    /// This id without its batch index: the id of the entry that holds the message.
    pub fn entry_id_only(&self) -> Self {
        MessageId { batch_index: -1, ..*self }
    }

    /// The id as it goes on the wire (for acks).
    pub(crate) fn to_wire(self) -> pb::MessageIdData {
        pb::MessageIdData {
            ledger_id: self.ledger_id,
            entry_id: self.entry_id,
            partition: (self.partition >= 0).then_some(self.partition),
            batch_index: (self.batch_index >= 0).then_some(self.batch_index),
            ..Default::default()
        }
    }
}

impl From<&pb::MessageIdData> for MessageId {
    fn from(id: &pb::MessageIdData) -> Self {
        MessageId {
            ledger_id: id.ledger_id,
            entry_id: id.entry_id,
            partition: id.partition.unwrap_or(-1),
            batch_index: id.batch_index.unwrap_or(-1),
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:{}", self.ledger_id, self.entry_id, self.partition, self.batch_index)
    }
}

/// Why a string is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message id {text:?}: expected ledger:entry[:partition[:batch]]")]
pub struct ParseMessageIdError {
    text: String,
}

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    /// Parses `ledger:entry`, `ledger:entry:partition` or `ledger:entry:partition:batch`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseMessageIdError { text: text.to_owned() };
        let parts: Vec<&str> = text.split(':').collect();
        if !(2..=4).contains(&parts.len()) {
            return Err(error());
        }
        let ledger_id = parts[0].parse().map_err(|_| error())?;
        let entry_id = parts[1].parse().map_err(|_| error())?;
        let partition = parts.get(2).map_or(Ok(-1), |part| part.parse()).map_err(|_| error())?;
        let batch_index = parts.get(3).map_or(Ok(-1), |part| part.parse()).map_err(|_| error())?;
        if partition < -1 || batch_index < -1 {
            return Err(error());
        }
        Ok(MessageId { ledger_id, entry_id, partition, batch_index })
    }
}

/// A received message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: MessageId,
    /// The topic (or partition) the message came from.
    pub topic: String,
    pub payload: Bytes,
    /// The partition key the producer set, if any.
    pub key: Option<String>,
    pub properties: BTreeMap<String, String>,
    /// When the producer published it, in milliseconds since the Unix epoch.
    pub publish_time: u64,
    /// The application's event time in milliseconds since the Unix epoch, if it set one.
    pub event_time: Option<u64>,
    pub producer_name: String,
    /// How many times the broker delivered this message before.
    pub redelivery_count: u32,
    /// The version of the schema its producer wrote it with (8 bytes, big-endian), if any.
    pub schema_version: Option<Vec<u8>>,
    /// The key is base64 of raw bytes (a KeyValue schema with SEPARATED encoding).
    pub key_is_base64: bool,
    /// The producer sent no value (a tombstone for compaction and table views): the metadata's
    /// `null_value`. The payload is then empty.
    pub null_value: bool,
    /// For a message the producer split into chunks: the id of every chunk's entry, first to
    /// last (`id` is the last one's, as Pulsar's `ChunkMessageIdImpl`). Empty otherwise.
    /// Acknowledging the message acknowledges all of them.
    pub chunk_ids: Vec<MessageId>,
}

impl Message {
    /// The payload decoded as JSON.
    ///
    /// ```
    /// # let message = magnetar_client::Message {
    /// #     id: magnetar_client::MessageId::entry(1, 2), topic: String::new(),
    /// #     payload: bytes::Bytes::from_static(br#"{"order":42}"#), key: None,
    /// #     properties: Default::default(), publish_time: 0, event_time: None,
    /// #     producer_name: String::new(), redelivery_count: 0, schema_version: None,
    /// #     key_is_base64: false, null_value: false, chunk_ids: Vec::new(),
    /// # };
    /// #[derive(serde::Deserialize)]
    /// struct Order { order: u32 }
    /// let order: Order = message.json()?;
    /// assert_eq!(order.order, 42);
    /// # Ok::<(), magnetar_client::ClientError>(())
    /// ```
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::ClientError> {
        serde_json::from_slice(&self.payload).map_err(|source| crate::ClientError::Json { source })
    }

    /// True when the producer sent this message without a value (Pulsar's `hasNullValue`): a
    /// tombstone that removes its key from a compacted topic or a table view.
    pub fn is_null_value(&self) -> bool {
        self.null_value
    }

    /// For a chunked message, the id of its first chunk (Pulsar's
    /// `ChunkMessageIdImpl.getFirstChunkMessageId`).
    pub fn first_chunk_id(&self) -> Option<MessageId> {
        self.chunk_ids.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_displays_ledger_entry_partition_batch() {
        let id = MessageId { ledger_id: 12, entry_id: 345, partition: -1, batch_index: 3 };
        assert_eq!(id.to_string(), "12:345:-1:3");
        assert_eq!(MessageId::entry(7, 0).to_string(), "7:0:-1:-1");
    }

    #[test]
    fn message_id_parses_what_it_displays() {
        let id = MessageId { ledger_id: 1, entry_id: 2, partition: 4, batch_index: 9 };
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        assert_eq!("5:6".parse::<MessageId>(), Ok(MessageId::entry(5, 6)));
    }

    #[test]
    fn malformed_message_ids_are_refused() {
        for text in ["", "1", "1:2:3:4:5", "a:2", "1:-2", "1:2:-5", "1:2:3:x"] {
            assert!(text.parse::<MessageId>().is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn message_ids_order_by_ledger_entry_then_batch_index() {
        let a = MessageId { ledger_id: 1, entry_id: 9, partition: -1, batch_index: 5 };
        let b = MessageId { ledger_id: 2, entry_id: 0, partition: -1, batch_index: -1 };
        let c = MessageId { ledger_id: 2, entry_id: 0, partition: -1, batch_index: 0 };
        assert!(a < b && b < c);
    }

    #[test]
    fn wire_id_round_trips_and_omits_defaults() {
        let id = MessageId { ledger_id: 3, entry_id: 4, partition: -1, batch_index: 2 };
        let wire = id.to_wire();
        assert_eq!(wire.partition, None);
        assert_eq!(wire.batch_index, Some(2));
        assert_eq!(MessageId::from(&wire), id);
    }
}
