//! Topic compaction, as Pulsar's two-phase compactor: the latest message of each key, up to a
//! point of the topic (the horizon), kept in a compacted ledger on the bookies. Consumers and
//! readers that ask for `read_compacted` get that ledger's messages first, then the topic
//! after the horizon.
//!
//! A compaction reads the previous compacted ledger (if any) and the topic from the previous
//! horizon to its last confirmed entry, twice: phase one finds each key's latest message,
//! phase two writes every entry holding one into a new ledger, with the entry's original
//! position in front. In a batch, the messages that are not their key's latest are replaced
//! by empty `compacted_out` messages, as Pulsar's `RawBatchConverter` does, so batch indexes
//! keep their meaning. A key whose latest message is a tombstone (null value or empty
//! payload) is dropped; messages without a key are dropped (Pulsar's default,
//! `topicCompactionRetainNullKey=false`).
//!
//! Crash safety: the record (`/magnetar/compaction/<managed ledger>`) names the compacted
//! ledger and the horizon; it is replaced (compare-and-set) only once the new ledger is
//! complete and closed. Before phase two starts, the record notes the ledger being written
//! (`pending`): a compaction that dies mid-way leaves the old record in force, and the next
//! one deletes the abandoned ledger. The `__compaction` cursor's mark-delete position follows
//! the horizon, so that retention keeps every entry not yet compacted.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use magnetar_bookie::client::{self as ledger, metadata::Ledger, Bookies, LedgerConfig, LedgerWriter};
use magnetar_bookie::{BookieError, LedgerId};
use magnetar_meta::{Expected, MetadataStore, Version};
use magnetar_proto::batch::{self, BatchedMessage};
use magnetar_proto::frame::Payload;
use magnetar_proto::pulsar as pb;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::BrokerError;
use crate::managed_ledger::{ManagedLedger, Position};

/// The cursor that holds the topic's entries until they are compacted (Pulsar's name).
pub const COMPACTION_CURSOR: &str = "__compaction";

/// Crash tests: with this variable set, the process aborts in phase two, after the new
/// ledger is noted as pending and has entries, as a crash would (nothing is cleaned up).
pub const CRASH_IN_PHASE_TWO_ENV: &str = "MAGNETAR_TEST_CRASH_IN_COMPACTION";

/// Entries read from a ledger at a time.
const READ_BATCH: u32 = 500;

/// Most bytes of one compacted entry's prefix: two u64.
const PREFIX: usize = 16;

/// Where a topic's compaction record lives.
pub fn record_path(persistence_name: &str) -> String {
    format!("/magnetar/compaction/{persistence_name}")
}

/// The stored record of a topic's compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactionRecord {
    /// The compacted ledger in force (0: none yet).
    pub ledger_id: u64,
    /// The last topic position the compacted ledger covers.
    pub horizon: Option<(u64, u64)>,
    pub entries: u64,
    pub keys: u64,
    pub compacted_at_ms: u64,
    /// A ledger a compaction started writing; deleted unless it became `ledger_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
}

/// The compacted ledger in force: its metadata, its horizon, and the original position of
/// each of its entries (an index kept in memory: one position per kept entry).
pub struct CompactedLedger {
    ledger: Ledger,
    horizon: Position,
    index: Vec<Position>,
}

impl CompactedLedger {
    pub fn horizon(&self) -> Position {
        self.horizon
    }

    pub fn ledger_id(&self) -> u64 {
        self.ledger.id().0
    }

    pub fn entries(&self) -> usize {
        self.index.len()
    }

    /// Opens the compacted ledger a record names, reading it once to index its entries.
    async fn open(bookies: &Bookies, record: &CompactionRecord) -> Result<Option<CompactedLedger>, BrokerError> {
        let Some((ledger_id, entry_id)) = record.horizon.filter(|_| record.ledger_id != 0) else { return Ok(None) };
        let Some((metadata, _)) = ledger::metadata::read(bookies.meta().as_ref(), LedgerId(record.ledger_id)).await?
        else {
            return Err(BrokerError::Corrupt {
                what: format!("compacted ledger {}", record.ledger_id),
                reason: "the compaction record names a ledger that does not exist".to_owned(),
            });
        };
        let mut index = Vec::with_capacity(record.entries as usize);
        let mut next = 0u64;
        while let Some(last) = metadata.last_entry().filter(|last| next <= last.0) {
            let entries =
                ledger::read_entries(bookies, &metadata, magnetar_bookie::EntryId(next), last, READ_BATCH, 64 << 20)
                    .await?;
            if entries.is_empty() {
                break;
            }
            for (entry_id, data) in &entries {
                index.push(decode_entry(record.ledger_id, entry_id.0, data)?.0);
                next = entry_id.0 + 1;
            }
        }
        Ok(Some(CompactedLedger { ledger: metadata, horizon: Position::new(ledger_id, entry_id), index }))
    }

    /// Up to `max` compacted entries after `after` (all of them for `None`), as the original
    /// positions and entry bytes consumers get.
    pub async fn read_after(
        &self,
        bookies: &Bookies,
        after: Option<Position>,
        max: u32,
    ) -> Result<Vec<(Position, Bytes)>, BrokerError> {
        let first = match after {
            None => 0,
            Some(after) => self.index.partition_point(|position| *position <= after),
        };
        if first >= self.index.len() || max == 0 {
            return Ok(Vec::new());
        }
        let last = (first + max as usize).min(self.index.len()) - 1;
        let entries = ledger::read_entries(
            bookies,
            &self.ledger,
            magnetar_bookie::EntryId(first as u64),
            magnetar_bookie::EntryId(last as u64),
            max,
            64 << 20,
        )
        .await?;
        entries.iter().map(|(entry_id, data)| decode_entry(self.ledger_id(), entry_id.0, data)).collect()
    }
}

impl CompactedLedger {
    /// The last compacted entry (None: the view is empty).
    pub async fn read_last(&self, bookies: &Bookies) -> Result<Option<(Position, Bytes)>, BrokerError> {
        let Some(last) = self.index.len().checked_sub(1) else { return Ok(None) };
        let before = last.checked_sub(1).map(|index| self.index[index]);
        Ok(self.read_after(bookies, before, 1).await?.into_iter().next())
    }

    /// The compacted entries at exactly these positions (messages sent again); positions
    /// the view does not hold are left out.
    pub async fn read_exact(
        &self,
        bookies: &Bookies,
        positions: &[Position],
    ) -> Result<Vec<(Position, Bytes)>, BrokerError> {
        let mut found = Vec::with_capacity(positions.len());
        for position in positions {
            let Ok(index) = self.index.binary_search(position) else { continue };
            let entries = ledger::read_entries(
                bookies,
                &self.ledger,
                magnetar_bookie::EntryId(index as u64),
                magnetar_bookie::EntryId(index as u64),
                1,
                64 << 20,
            )
            .await?;
            for (entry_id, data) in &entries {
                found.push(decode_entry(self.ledger_id(), entry_id.0, data)?);
            }
        }
        Ok(found)
    }
}

/// A compacted entry: the original position, then the entry as the topic stored it.
fn encode_entry(position: Position, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX + data.len());
    out.put_u64(position.ledger_id);
    out.put_u64(position.entry_id);
    out.put_slice(data);
    out.freeze()
}

fn decode_entry(ledger_id: u64, entry_id: u64, data: &Bytes) -> Result<(Position, Bytes), BrokerError> {
    if data.len() < PREFIX {
        return Err(BrokerError::Corrupt {
            what: format!("compacted ledger {ledger_id} entry {entry_id}"),
            reason: format!("{} bytes, shorter than its position prefix", data.len()),
        });
    }
    let read = |range: std::ops::Range<usize>| u64::from_be_bytes(data[range].try_into().unwrap_or([0; 8]));
    Ok((Position::new(read(0..8), read(8..16)), data.slice(PREFIX..)))
}

/// A topic's compaction: the compacted ledger in force, and the status of the last run.
#[derive(Default)]
pub struct Compaction {
    current: parking_lot::RwLock<Option<Arc<CompactedLedger>>>,
    status: Mutex<CompactionStatus>,
    last: Mutex<CompactionStats>,
    /// Held while a compaction runs: a second one is refused.
    running: tokio::sync::Mutex<()>,
}

/// Pulsar's LongRunningProcessStatus for `GET .../compaction` (`NOT_RUN` until the first
/// compaction since the topic loaded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompactionStatus {
    pub status: &'static str,
    #[serde(rename = "lastError")]
    pub last_error: String,
}

impl Default for CompactionStatus {
    fn default() -> Self {
        CompactionStatus { status: "NOT_RUN", last_error: String::new() }
    }
}

/// Pulsar's CompactionStats in topic stats (`compaction`), since the topic loaded here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactionStats {
    /// Messages the last successful compaction left out.
    pub last_compaction_removed_event_count: u64,
    /// When compactions last succeeded and failed (ms since the epoch; 0: never).
    pub last_compaction_succeed_timestamp: u64,
    pub last_compaction_failed_timestamp: u64,
    pub last_compaction_duration_time_in_mills: u64,
}

/// What one compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionOutcome {
    pub messages_read: u64,
    pub keys: u64,
    pub entries_written: u64,
    pub horizon: Option<Position>,
}

impl Compaction {
    /// Loads the compacted ledger a topic's record names (none: never compacted).
    pub async fn load(&self, bookies: &Bookies, persistence_name: &str) -> Result<(), BrokerError> {
        if let Some(found) = bookies.meta().get(&record_path(persistence_name)).await? {
            let record = decode_record(persistence_name, &found.value)?;
            *self.current.write() = CompactedLedger::open(bookies, &record).await?.map(Arc::new);
        }
        Ok(())
    }

    /// The compacted ledger in force.
    pub fn current(&self) -> Option<Arc<CompactedLedger>> {
        self.current.read().clone()
    }

    pub fn status(&self) -> CompactionStatus {
        self.status.lock().clone()
    }

    pub fn stats(&self) -> CompactionStats {
        *self.last.lock()
    }

    pub fn is_running(&self) -> bool {
        self.running.try_lock().is_err()
    }

    /// Compacts the topic up to its last confirmed entry. Refused (Conflict) while another
    /// compaction of it runs.
    pub async fn run(
        &self,
        managed_ledger: &Arc<ManagedLedger>,
        bookies: &Bookies,
        config: LedgerConfig,
    ) -> Result<CompactionOutcome, BrokerError> {
        let Ok(_running) = self.running.try_lock() else {
            return Err(BrokerError::Conflict { what: "a compaction of this topic is already running".to_owned() });
        };
        *self.status.lock() = CompactionStatus { status: "RUNNING", last_error: String::new() };
        let started = std::time::Instant::now();
        let result = self.compact(managed_ledger, bookies, config).await;
        let now = magnetar_proto::clock::now_ms();
        {
            let mut last = self.last.lock();
            last.last_compaction_duration_time_in_mills = started.elapsed().as_millis() as u64;
            match &result {
                Ok(outcome) => {
                    last.last_compaction_succeed_timestamp = now;
                    last.last_compaction_removed_event_count = outcome.messages_read.saturating_sub(outcome.keys);
                }
                Err(_) => last.last_compaction_failed_timestamp = now,
            }
        }
        *self.status.lock() = match &result {
            Ok(_) => CompactionStatus { status: "SUCCESS", last_error: String::new() },
            Err(error) => CompactionStatus { status: "ERROR", last_error: error.to_string() },
        };
        result
    }

    async fn compact(
        &self,
        managed_ledger: &Arc<ManagedLedger>,
        bookies: &Bookies,
        config: LedgerConfig,
    ) -> Result<CompactionOutcome, BrokerError> {
        let name = managed_ledger.name().to_owned();
        let meta = bookies.meta().clone();
        let path = record_path(&name);
        // The cursor keeps what is not compacted yet, also when nobody subscribes.
        let cursor = managed_ledger.open_cursor(COMPACTION_CURSOR, None).await?;
        let (mut record, version) = match meta.get(&path).await? {
            Some(found) => (decode_record(&name, &found.value)?, Some(found.version)),
            None => (CompactionRecord::default(), None),
        };
        if let Some(abandoned) = record.pending.take() {
            warn!(topic = %name, ledger_id = abandoned, "deleting the ledger of a compaction that did not finish");
            delete_quietly(bookies, abandoned).await;
        }
        let Some(end) = managed_ledger.last_confirmed() else { return Ok(CompactionOutcome::default()) };
        let previous = self.current();
        let start_after = previous.as_ref().map(|p| p.horizon());
        if start_after.is_some_and(|horizon| horizon >= end) {
            return Ok(CompactionOutcome { horizon: start_after, ..Default::default() });
        }

        // Phase one: the latest message of each key.
        let mut latest: HashMap<String, Latest> = HashMap::new();
        let mut messages_read = 0u64;
        let mut source = Source::new(previous.clone(), managed_ledger.clone(), start_after, end);
        while let Some(entries) = source.next(bookies).await? {
            for (position, data) in &entries {
                for (index, key, tombstone) in keys_of(data) {
                    messages_read += 1;
                    if let Some(key) = key {
                        latest.insert(key, Latest { position: *position, index, tombstone });
                    }
                }
            }
        }
        let keys = latest.values().filter(|l| !l.tombstone).count() as u64;

        // Phase two: a new ledger with every entry that holds a key's latest message.
        let writer = LedgerWriter::create(bookies, config, None).await?;
        let new_id = writer.ledger_id().0;
        record.pending = Some(new_id);
        let mut version = write_record(meta.as_ref(), &path, &record, version).await?;
        let written = async {
            let mut index = Vec::new();
            let mut acks = Vec::new();
            let mut source = Source::new(previous.clone(), managed_ledger.clone(), start_after, end);
            while let Some(entries) = source.next(bookies).await? {
                for (position, data) in entries {
                    if let Some(kept) = retain(position, &data, &latest) {
                        acks.push(writer.add(encode_entry(position, &kept)).await?);
                        index.push(position);
                    }
                    if index.len() == 2 && std::env::var_os(CRASH_IN_PHASE_TWO_ENV).is_some() {
                        for ack in acks.drain(..) {
                            let _ = ack.await;
                        }
                        warn!(topic = %name, "{CRASH_IN_PHASE_TWO_ENV} is set: aborting in phase two");
                        std::process::abort();
                    }
                }
            }
            for ack in acks {
                ack.await.map_err(|_| BookieError::Stopped { what: "compacted ledger writer" })??;
            }
            writer.close().await?;
            Ok::<_, BrokerError>(index)
        }
        .await;
        let index = match written {
            Ok(index) => index,
            Err(error) => {
                delete_quietly(bookies, new_id).await;
                record.pending = None;
                if let Err(cleanup) = write_record(meta.as_ref(), &path, &record, Some(version)).await {
                    warn!(topic = %name, %cleanup, "compaction record keeps a pending ledger; the next run deletes it");
                }
                return Err(error);
            }
        };

        // Commit: the record names the new ledger; then the cursor and the old ledger follow.
        let committed = CompactionRecord {
            ledger_id: new_id,
            horizon: Some((end.ledger_id, end.entry_id)),
            entries: index.len() as u64,
            keys,
            compacted_at_ms: magnetar_proto::clock::now_ms(),
            pending: None,
        };
        version = write_record(meta.as_ref(), &path, &committed, Some(version)).await?;
        let _ = version;
        let Some((metadata, _)) = ledger::metadata::read(meta.as_ref(), LedgerId(new_id)).await? else {
            return Err(BrokerError::Corrupt {
                what: format!("compacted ledger {new_id}"),
                reason: "written and closed, then not found".to_owned(),
            });
        };
        *self.current.write() = Some(Arc::new(CompactedLedger { ledger: metadata, horizon: end, index }));
        cursor.update(|state| {
            if state.mark_delete.is_some_and(|at| at >= end) {
                return false;
            }
            state.reset(Some(end));
            true
        });
        cursor.flush().await;
        if let Some(previous) = previous {
            delete_quietly(bookies, previous.ledger_id()).await;
        }
        info!(topic = %name, messages_read, keys, entries = committed.entries, horizon = %end, ledger_id = new_id, "topic compacted");
        Ok(CompactionOutcome { messages_read, keys, entries_written: committed.entries, horizon: Some(end) })
    }

    /// Forgets the compacted ledger and deletes it and the record (the topic is deleted).
    pub async fn delete(bookies: &Bookies, persistence_name: &str) -> Result<(), BrokerError> {
        let path = record_path(persistence_name);
        if let Some(found) = bookies.meta().get(&path).await? {
            let record = decode_record(persistence_name, &found.value)?;
            for ledger_id in [Some(record.ledger_id), record.pending].into_iter().flatten().filter(|id| *id != 0) {
                delete_quietly(bookies, ledger_id).await;
            }
            bookies.meta().delete(&path, Expected::Any).await?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Latest {
    position: Position,
    /// Batch index (-1 for a message that is not in a batch).
    index: i32,
    tombstone: bool,
}

/// Reads the previous compacted ledger, then the topic after `start_after` up to `end`.
struct Source {
    previous: Option<Arc<CompactedLedger>>,
    previous_after: Option<Position>,
    previous_done: bool,
    managed_ledger: Arc<ManagedLedger>,
    after: Option<Position>,
    end: Position,
}

impl Source {
    fn new(
        previous: Option<Arc<CompactedLedger>>,
        managed_ledger: Arc<ManagedLedger>,
        start_after: Option<Position>,
        end: Position,
    ) -> Source {
        Source {
            previous_done: previous.is_none(),
            previous,
            previous_after: None,
            managed_ledger,
            after: start_after,
            end,
        }
    }

    async fn next(&mut self, bookies: &Bookies) -> Result<Option<Vec<(Position, Bytes)>>, BrokerError> {
        if !self.previous_done {
            if let Some(previous) = &self.previous {
                let entries = previous.read_after(bookies, self.previous_after, READ_BATCH).await?;
                if let Some((last, _)) = entries.last() {
                    self.previous_after = Some(*last);
                    return Ok(Some(entries));
                }
            }
            self.previous_done = true;
        }
        let Some(from) = self.managed_ledger.next_position(self.after).filter(|from| *from <= self.end) else {
            return Ok(None);
        };
        let mut entries = self.managed_ledger.read_entries(from, READ_BATCH).await?;
        entries.retain(|(position, _)| *position <= self.end);
        match entries.last() {
            Some((last, _)) => self.after = Some(*last),
            None => return Ok(None),
        }
        Ok(Some(entries))
    }
}

/// Each message of an entry: its batch index (-1 outside a batch), its key (None: no key)
/// and whether it is a tombstone. An entry that cannot be parsed has no keys.
fn keys_of(data: &Bytes) -> Vec<(i32, Option<String>, bool)> {
    let Ok(payload) = Payload::parse(data.clone()) else { return Vec::new() };
    let metadata = payload.metadata();
    match metadata.num_messages_in_batch {
        None => {
            let tombstone = metadata.null_value.unwrap_or(false) || payload.body().is_empty();
            vec![(-1, metadata.partition_key.clone(), tombstone)]
        }
        Some(count) => match batch_messages(metadata, payload.body(), count) {
            Some(messages) => messages
                .iter()
                .enumerate()
                .map(|(index, message)| {
                    let tombstone = message.metadata.null_value.unwrap_or(false) || message.payload.is_empty();
                    (index as i32, message.metadata.partition_key.clone(), tombstone)
                })
                .collect(),
            None => Vec::new(),
        },
    }
}

fn batch_messages(metadata: &pb::MessageMetadata, body: Bytes, count: i32) -> Option<Vec<BatchedMessage>> {
    let body = batch::decompress(metadata, body).ok()?;
    batch::split_batch(body, usize::try_from(count).ok()?).ok()
}

/// The entry as the compacted ledger keeps it: unchanged when every message in it is its
/// key's latest, rebuilt with the others `compacted_out` when some are, None when none is.
fn retain(position: Position, data: &Bytes, latest: &HashMap<String, Latest>) -> Option<Bytes> {
    let payload = Payload::parse(data.clone()).ok()?;
    let metadata = payload.metadata();
    let keeps = |key: Option<&String>, index: i32| {
        key.and_then(|key| latest.get(key)).is_some_and(|l| l.position == position && l.index == index && !l.tombstone)
    };
    let Some(count) = metadata.num_messages_in_batch else {
        return keeps(metadata.partition_key.as_ref(), -1).then(|| data.clone());
    };
    let mut messages = batch_messages(metadata, payload.body(), count)?;
    let kept: Vec<bool> =
        messages.iter().enumerate().map(|(i, m)| keeps(m.metadata.partition_key.as_ref(), i as i32)).collect();
    if !kept.iter().any(|k| *k) {
        return None;
    }
    if kept.iter().all(|k| *k) {
        return Some(data.clone());
    }
    for (message, keep) in messages.iter_mut().zip(&kept) {
        if !keep {
            message.metadata = pb::SingleMessageMetadata {
                partition_key: message.metadata.partition_key.clone(),
                compacted_out: Some(true),
                payload_size: 0,
                ..Default::default()
            };
            message.payload = Bytes::new();
        }
    }
    let body = batch::encode_batch(&messages);
    let rebuilt =
        pb::MessageMetadata { compression: None, uncompressed_size: Some(body.len() as u32), ..metadata.clone() };
    Some(Payload::new(rebuilt, &body).into_bytes())
}

fn decode_record(name: &str, value: &[u8]) -> Result<CompactionRecord, BrokerError> {
    serde_json::from_slice(value).map_err(|error| BrokerError::Corrupt {
        what: record_path(name),
        reason: format!("compaction record: {error}"),
    })
}

async fn write_record(
    meta: &dyn MetadataStore,
    path: &str,
    record: &CompactionRecord,
    version: Option<Version>,
) -> Result<Version, BrokerError> {
    let expected = version.map_or(Expected::Absent, Expected::Version);
    let value = serde_json::to_vec(record).map_err(|error| BrokerError::Corrupt {
        what: path.to_owned(),
        reason: format!("compaction record: {error}"),
    })?;
    Ok(meta.put(path, value, expected).await?)
}

async fn delete_quietly(bookies: &Bookies, ledger_id: u64) {
    if let Err(error) = ledger::admin::delete_ledger(bookies, LedgerId(ledger_id)).await {
        warn!(ledger_id, %error, "ledger left on the bookies");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(key: Option<&str>, payload: &[u8], null_value: bool) -> Bytes {
        let metadata = pb::MessageMetadata {
            producer_name: "p".into(),
            partition_key: key.map(str::to_owned),
            null_value: null_value.then_some(true),
            ..Default::default()
        };
        Payload::new(metadata, payload).into_bytes()
    }

    fn batch_of(messages: &[(&str, &'static [u8])]) -> Bytes {
        let messages: Vec<BatchedMessage> = messages
            .iter()
            .map(|(key, payload)| BatchedMessage {
                metadata: pb::SingleMessageMetadata { partition_key: Some((*key).to_owned()), ..Default::default() },
                payload: Bytes::from_static(payload),
            })
            .collect();
        let body = batch::encode_batch(&messages);
        let metadata = pb::MessageMetadata {
            producer_name: "p".into(),
            num_messages_in_batch: Some(messages.len() as i32),
            ..Default::default()
        };
        Payload::new(metadata, &body).into_bytes()
    }

    fn latest_of(entries: &[(Position, Bytes)]) -> HashMap<String, Latest> {
        let mut latest = HashMap::new();
        for (position, data) in entries {
            for (index, key, tombstone) in keys_of(data) {
                if let Some(key) = key {
                    latest.insert(key, Latest { position: *position, index, tombstone });
                }
            }
        }
        latest
    }

    #[test]
    fn only_each_keys_latest_message_is_kept_and_tombstones_remove_keys() {
        let entries = vec![
            (Position::new(1, 0), single(Some("a"), b"a1", false)),
            (Position::new(1, 1), batch_of(&[("b", b"b1"), ("a", b"a2"), ("c", b"c1")])),
            (Position::new(1, 2), single(Some("b"), b"b2", false)),
            (Position::new(1, 3), single(Some("c"), b"", true)),
            (Position::new(1, 4), single(None, b"no key", false)),
        ];
        let latest = latest_of(&entries);
        let kept: Vec<Option<Bytes>> = entries.iter().map(|(p, d)| retain(*p, d, &latest)).collect();
        assert!(kept[0].is_none(), "a1 was replaced by a2");
        assert!(kept[2].is_some(), "b2 is b's latest");
        assert!(kept[3].is_none(), "a tombstone is not kept");
        assert!(kept[4].is_none(), "keyless messages are dropped");
        // The batch keeps a2 only; b1 and c1 are compacted out in place.
        let rebuilt = Payload::parse(kept[1].clone().expect("a2 is kept")).expect("parse");
        let messages = batch::split_batch(rebuilt.body(), 3).expect("split");
        let flags: Vec<bool> = messages.iter().map(|m| m.metadata.compacted_out.unwrap_or(false)).collect();
        assert_eq!(flags, [true, false, true]);
        assert_eq!(messages[1].payload, Bytes::from_static(b"a2"));
        assert!(messages[0].payload.is_empty());
    }

    #[test]
    fn compacted_entries_keep_their_position() {
        let data = single(Some("k"), b"v", false);
        let encoded = encode_entry(Position::new(7, 9), &data);
        let (position, decoded) = decode_entry(1, 0, &encoded).expect("decode");
        assert_eq!(position, Position::new(7, 9));
        assert_eq!(decoded, data);
        assert!(decode_entry(1, 0, &Bytes::from_static(b"short")).is_err());
    }
}
