//! [`Reader`]: reads a topic from a chosen position without a durable subscription (the
//! broker keeps no cursor; nothing is acknowledged). Built on the same per-topic consumer as
//! [`Consumer`](crate::Consumer), with `durable = false` and a start message id.
//!
//! Start positions follow Pulsar: `Earliest` is the id (-1, -1), `Latest` is
//! (i64::MAX, i64::MAX); a specific id is exclusive unless [`ReaderBuilder::start_inclusive`].
//! For an inclusive or batch start the id goes out with a batch index, which makes the broker
//! start at that entry; the messages before the start in that entry are skipped here.
//!
//! A partitioned topic's name reads every partition (as Pulsar's `MultiTopicsReaderImpl`):
//! one per-topic consumer per partition, received from in turn; such a reader starts at the
//! earliest or the latest message (a specific id names one partition: seek to it instead),
//! `has_message_available` asks every partition, and `seek` moves the partition the id
//! belongs to.

use futures::future::select_all;
use futures::FutureExt;
use magnetar_proto::pulsar as pb;

use crate::client::Client;
use crate::consumer::InitialPosition;
use crate::error::ClientError;
use crate::message::{Message, MessageId};
use crate::topic::TopicName;
use crate::topic_consumer::{SubscribeSettings, TopicConsumer};
use crate::{SubscriptionType, DEFAULT_RECEIVER_QUEUE_SIZE};

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMessageId {
    /// The oldest message the topic holds.
    Earliest,
    /// After the last message stored when the reader is created.
    #[default]
    Latest,
    /// After (or at, when inclusive) this message.
    Id(MessageId),
}

impl StartMessageId {
    /// The id SUBSCRIBE carries, and the initial position that goes with it.
    pub(crate) fn to_wire(self, inclusive: bool) -> (pb::MessageIdData, InitialPosition) {
        match self {
            StartMessageId::Earliest => (
                pb::MessageIdData { ledger_id: u64::MAX, entry_id: u64::MAX, ..Default::default() },
                InitialPosition::Earliest,
            ),
            StartMessageId::Latest => {
                let latest = i64::MAX as u64;
                let mut id = pb::MessageIdData { ledger_id: latest, entry_id: latest, ..Default::default() };
                if inclusive {
                    id.batch_index = Some(-1);
                }
                (id, InitialPosition::Latest)
            }
            StartMessageId::Id(id) => {
                let mut wire = id.to_wire();
                if inclusive || id.is_batched() {
                    wire.batch_index = Some(id.batch_index);
                }
                (wire, InitialPosition::Latest)
            }
        }
    }
}

/// Builds a [`Reader`]; from [`Client::reader`].
///
/// ```no_run
/// use magnetar_client::{Client, StartMessageId};
/// # async fn example(client: Client) -> Result<(), magnetar_client::ClientError> {
/// let mut reader = client.reader("audit-log").start_message_id(StartMessageId::Earliest).create().await?;
/// while reader.has_message_available().await? {
///     let message = reader.receive().await?;
///     println!("{}: {:?}", message.id, message.payload);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ReaderBuilder {
    client: Client,
    topic: String,
    start: StartMessageId,
    inclusive: bool,
    receiver_queue_size: u32,
    reader_name: Option<String>,
    read_compacted: bool,
}

impl ReaderBuilder {
    pub(crate) fn new(client: Client, topic: String) -> Self {
        ReaderBuilder {
            client,
            topic,
            start: StartMessageId::Latest,
            inclusive: false,
            receiver_queue_size: DEFAULT_RECEIVER_QUEUE_SIZE,
            reader_name: None,
            read_compacted: false,
        }
    }

    /// Read the topic's compacted view first (each key's latest value up to the last
    /// compaction), then the messages after it, as Pulsar's `readCompacted`.
    pub fn read_compacted(mut self, read_compacted: bool) -> Self {
        self.read_compacted = read_compacted;
        self
    }

    pub fn start_message_id(mut self, start: StartMessageId) -> Self {
        self.start = start;
        self
    }

    /// Include the start message itself (default: start after it).
    pub fn start_inclusive(mut self, inclusive: bool) -> Self {
        self.inclusive = inclusive;
        self
    }

    pub fn receiver_queue_size(mut self, size: u32) -> Self {
        self.receiver_queue_size = size;
        self
    }

    /// The subscription name the broker shows (default `reader-<random>`).
    pub fn reader_name(mut self, name: impl Into<String>) -> Self {
        self.reader_name = Some(name.into());
        self
    }

    /// Subscribes (non-durable) at the start position, on every partition of a partitioned
    /// topic.
    pub async fn create(self) -> Result<Reader, ClientError> {
        if self.receiver_queue_size == 0 {
            return Err(ClientError::InvalidConfig { setting: "receiver_queue_size", reason: "must be at least 1" });
        }
        let (topic, partitions) = self.client.resolve_partitions(&self.topic).await?;
        let partitioned = self.client.partitions(&topic).await? > 0;
        if partitioned && matches!(self.start, StartMessageId::Id(_)) {
            return Err(ClientError::InvalidConfig {
                setting: "start_message_id",
                reason: "a reader over several partitions starts at Earliest or Latest; seek moves one partition",
            });
        }
        let (start_id, initial_position) = self.start.to_wire(self.inclusive);
        let subscription =
            self.reader_name.unwrap_or_else(|| format!("reader-{:010x}", rand::random::<u64>() & 0xff_ffff_ffff));
        let settings = SubscribeSettings {
            subscription,
            sub_type: SubscriptionType::Exclusive.to_wire(),
            initial_position: initial_position.to_wire(),
            receiver_queue_size: self.receiver_queue_size,
            consumer_name: None,
            durable: false,
            start_message_id: Some(start_id),
            start_inclusive: self.inclusive,
            schema: None,
            read_compacted: self.read_compacted,
            chunks: Default::default(),
            ack_grouping: crate::topic_consumer::AckGrouping::IMMEDIATE,
        };
        let mut readers = Vec::with_capacity(partitions.len());
        for (index, name) in partitions.iter().enumerate() {
            let partition = if partitioned { index as i32 } else { -1 };
            let consumer = TopicConsumer::subscribe(self.client.clone(), name, partition, settings.clone()).await?;
            readers.push(PartitionReader { consumer, start: self.start, inclusive: self.inclusive });
        }
        Ok(Reader { topic, readers, next: 0 })
    }
}

/// One partition's (or the topic's) consumer and where it started.
#[derive(Debug)]
struct PartitionReader {
    consumer: TopicConsumer,
    start: StartMessageId,
    inclusive: bool,
}

impl PartitionReader {
    async fn has_message_available(&mut self) -> Result<bool, ClientError> {
        if self.consumer.has_queued() {
            return Ok(true);
        }
        let last = self.consumer.last_message_id().await?;
        Ok(is_available(last, self.consumer.last_received, self.start, self.inclusive))
    }
}

/// Reads a topic (every partition of a partitioned one) from a start position. Dropping it
/// ends the non-durable subscriptions.
#[derive(Debug)]
pub struct Reader {
    topic: TopicName,
    /// One per partition, by partition index; one for a topic that is not partitioned.
    readers: Vec<PartitionReader>,
    /// Where the next `receive` starts looking, so no partition starves the others.
    next: usize,
}

impl Reader {
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// How many partitions the reader reads (1 for a topic that is not partitioned).
    pub fn partitions(&self) -> usize {
        self.readers.len()
    }

    /// Waits for the next message, from whichever partition has one. Cancel-safe.
    pub async fn receive(&mut self) -> Result<Message, ClientError> {
        if self.readers.len() == 1 {
            return self.readers[0].consumer.receive().await;
        }
        let start = self.next % self.readers.len();
        let (before, after) = self.readers.split_at_mut(start);
        let receives = after
            .iter_mut()
            .enumerate()
            .map(|(index, reader)| (index + start, reader))
            .chain(before.iter_mut().enumerate())
            .map(|(index, reader)| async move { (index, reader.consumer.receive().await) }.boxed());
        let ((index, result), _, _) = select_all(receives).await;
        self.next = index + 1;
        result
    }

    /// Whether a message after the last one read (or after the start) is stored on any
    /// partition: asks the broker for each one's last message id (GET_LAST_MESSAGE_ID).
    pub async fn has_message_available(&mut self) -> Result<bool, ClientError> {
        for reader in &mut self.readers {
            if reader.has_message_available().await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Moves the reader to `id` (inclusive): the next message of its partition is that one.
    /// On a partitioned topic the id's partition moves, the others stay where they are.
    pub async fn seek(&mut self, id: MessageId) -> Result<(), ClientError> {
        let index = if self.readers.len() == 1 {
            0
        } else {
            usize::try_from(id.partition).ok().filter(|&index| index < self.readers.len()).ok_or(
                ClientError::InvalidConfig {
                    setting: "seek",
                    reason: "on a partitioned topic, seek to an id with its partition index",
                },
            )?
        };
        let reader = &mut self.readers[index];
        reader.consumer.seek(Some(id), None).await?;
        reader.start = StartMessageId::Id(id);
        reader.inclusive = true;
        Ok(())
    }

    pub async fn close(mut self) -> Result<(), ClientError> {
        let mut result = Ok(());
        for reader in &mut self.readers {
            if let Err(error) = reader.consumer.close().await {
                result = Err(error);
            }
        }
        result
    }
}

/// Whether `last` (the topic's last stored id) is a message this reader has not read yet.
pub(crate) fn is_available(
    last: MessageId,
    last_received: Option<MessageId>,
    start: StartMessageId,
    inclusive: bool,
) -> bool {
    // An empty topic answers entry -1.
    if last.entry_id == u64::MAX || last.ledger_id == u64::MAX {
        return false;
    }
    let position = |id: MessageId| (id.ledger_id, id.entry_id, id.batch_index);
    // The broker names the entry; its last batch index is unknown, so an entry is "after" a
    // read batch message only if it is a later entry.
    let entry_after = |read: MessageId| (last.ledger_id, last.entry_id) > (read.ledger_id, read.entry_id);
    match (last_received, start) {
        (Some(read), _) => entry_after(read) || (last.is_batched() && position(last) > position(read)),
        (None, StartMessageId::Earliest) => true,
        (None, StartMessageId::Latest) => inclusive,
        (None, StartMessageId::Id(start)) => {
            entry_after(start) || (inclusive && (last.ledger_id, last.entry_id) == (start.ledger_id, start.entry_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_go_out_as_pulsar_sends_them() {
        let (earliest, position) = StartMessageId::Earliest.to_wire(false);
        assert_eq!((earliest.ledger_id, earliest.entry_id, position), (u64::MAX, u64::MAX, InitialPosition::Earliest));
        let (latest, _) = StartMessageId::Latest.to_wire(false);
        assert_eq!((latest.ledger_id, latest.entry_id, latest.batch_index), (i64::MAX as u64, i64::MAX as u64, None));
        let id = MessageId::entry(3, 7);
        assert_eq!(StartMessageId::Id(id).to_wire(false).0.batch_index, None);
        // Inclusive: a batch index makes the broker start at the entry itself.
        assert_eq!(StartMessageId::Id(id).to_wire(true).0.batch_index, Some(-1));
    }

    #[test]
    fn availability_compares_the_last_id_with_what_was_read() {
        let last = MessageId::entry(5, 9);
        assert!(!is_available(MessageId::entry(5, u64::MAX), None, StartMessageId::Earliest, false));
        assert!(is_available(last, None, StartMessageId::Earliest, false));
        assert!(!is_available(last, None, StartMessageId::Latest, false));
        assert!(is_available(last, None, StartMessageId::Latest, true));
        assert!(!is_available(last, None, StartMessageId::Id(last), false));
        assert!(is_available(last, None, StartMessageId::Id(last), true));
        assert!(is_available(last, None, StartMessageId::Id(MessageId::entry(5, 8)), false));
        assert!(is_available(last, Some(MessageId::entry(5, 8)), StartMessageId::Earliest, false));
        assert!(!is_available(last, Some(last), StartMessageId::Earliest, false));
    }
}
