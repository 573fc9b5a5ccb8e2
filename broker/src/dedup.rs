//! Message deduplication for one topic, as Pulsar's `MessageDeduplication` does it.
//!
//! Per producer name the broker keeps two sequence ids: the highest *pushed* (handed to the
//! managed ledger) and the highest *persisted* (durable). A SEND whose sequence id is at or
//! below the producer's highest pushed one is a duplicate: if it is also at or below the
//! persisted one it is answered with a receipt for `-1:-1` and not stored; if the original is
//! still in flight, the broker cannot tell yet whether it will land and answers a SEND_ERROR
//! (the client resends after reconnecting, and then it is a known duplicate).
//!
//! Concurrency: [`Deduplication::publish`] holds an async lock across the check and the
//! ledger add, so the order in which adds are queued to the tracker task is the ledger order.
//! That one tracker task awaits each add in that order and moves the persisted ids, so its
//! state at any moment covers exactly the entries up to its last applied position; a snapshot
//! of it (`/magnetar/dedup/<managed ledger>`: position + ids) is therefore consistent. It is
//! written every [`SNAPSHOT_INTERVAL`] entries and on close; on open the snapshot is loaded and
//! the entries after its position are read back and their metadata (producer name, sequence
//! id, highest sequence id, batch size) applied, so the rebuilt state covers every durable entry.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use magnetar_meta::{Expected, MetadataStore};
use magnetar_proto::frame::Payload;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::error::BrokerError;
use crate::managed_ledger::{AddFuture, ManagedLedger, Position};

/// Entries applied between two snapshots (Pulsar's `brokerDeduplicationEntriesInterval`).
pub const SNAPSHOT_INTERVAL: u64 = 1000;
/// Adds queued to the tracker before publishers wait (bounded by the producers' own limits
/// in practice; when full, `publish` waits).
const TRACKER_QUEUE: usize = 10_000;
/// Entries read per request while rebuilding.
const REPLAY_BATCH: u32 = 100;

pub fn snapshot_path(managed_ledger: &str) -> String {
    format!("/magnetar/dedup/{managed_ledger}")
}

/// The durable record: every producer's highest persisted sequence id up to `position`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    /// Last entry covered, as (ledger id, entry id); none for an empty topic.
    position: Option<(u64, u64)>,
    producers: BTreeMap<String, i64>,
}

/// What a SEND turned out to be.
pub enum Published {
    /// Stored; the future answers once durable.
    Stored(AddFuture),
    /// Already persisted: answer with a receipt for -1:-1.
    Duplicate,
    /// The original is still being written: answer with an error, the client resends.
    InFlightDuplicate,
}

#[derive(Default)]
struct State {
    pushed: HashMap<String, i64>,
    persisted: HashMap<String, i64>,
    /// The last entry the persisted ids account for.
    applied: Option<Position>,
    applied_since_snapshot: u64,
    /// Producers with a publish that failed to persist: their later publishes are refused
    /// until they register again ([`Deduplication::register_producer`]), so that none lands
    /// before the failed one is sent again (its sequence id would then look persisted).
    failed: HashSet<String>,
}

struct Tracked {
    producer: String,
    /// None for a chunk before the last of its message: it moves no sequence id.
    highest_sequence_id: Option<i64>,
    durable: AddFuture,
    answer: oneshot::Sender<Result<Position, BrokerError>>,
}

pub struct Deduplication {
    ledger: Arc<ManagedLedger>,
    meta: Arc<dyn MetadataStore>,
    state: Arc<Mutex<State>>,
    /// Held across check + add so the tracker sees adds in ledger order.
    order: tokio::sync::Mutex<mpsc::Sender<Tracked>>,
}

/// The sequence id range an entry carries: a batch's highest id is in its metadata or follows
/// from the first id and the batch size.
/// Whether an entry is a chunk of a larger message other than its last one. All chunks of a
/// message share its sequence id; as Pulsar's broker does, only the last chunk counts for
/// deduplication, so that a message whose last chunk never got stored is taken again whole.
pub fn is_partial_chunk(metadata: &magnetar_proto::pulsar::MessageMetadata) -> bool {
    match (metadata.chunk_id, metadata.num_chunks_from_msg) {
        (Some(chunk), Some(chunks)) => chunks > 1 && chunk < chunks - 1,
        _ => false,
    }
}

fn highest_sequence_id_of(payload: &Payload) -> (String, i64) {
    let metadata = payload.metadata();
    let batch_end = metadata.sequence_id.saturating_add(u64::from(payload.num_messages()).saturating_sub(1));
    let highest = metadata.highest_sequence_id.unwrap_or(0).max(metadata.sequence_id).max(batch_end);
    (metadata.producer_name.clone(), i64::try_from(highest).unwrap_or(i64::MAX))
}

impl Deduplication {
    /// Loads the snapshot and replays the entries after it. With no snapshot (dedup just
    /// enabled) it starts empty at the current end, as Pulsar does, and writes a snapshot there
    /// so a crash before the first interval still rebuilds from a known point.
    pub async fn open(ledger: Arc<ManagedLedger>, meta: Arc<dyn MetadataStore>) -> Result<Arc<Self>, BrokerError> {
        let path = snapshot_path(ledger.name());
        let mut state = State::default();
        let stored = meta.get(&path).await?;
        let replay_from = match &stored {
            Some(record) => {
                let snapshot: Snapshot = serde_json::from_slice(&record.value)
                    .map_err(|error| BrokerError::Corrupt { what: path.clone(), reason: error.to_string() })?;
                state.persisted = snapshot.producers.into_iter().collect();
                state.applied = snapshot.position.map(|(l, e)| Position::new(l, e));
                Some(state.applied)
            }
            None => {
                state.applied = ledger.last_confirmed();
                None
            }
        };
        let mut replayed = 0u64;
        if let Some(mut after) = replay_from {
            while let Some(next) = ledger.next_position(after) {
                let entries = ledger.read_entries(next, REPLAY_BATCH).await?;
                let Some((last, _)) = entries.last() else { break };
                after = Some(*last);
                for (position, data) in entries {
                    match Payload::parse(data) {
                        Ok(payload) if is_partial_chunk(payload.metadata()) => {}
                        Ok(payload) => {
                            let (producer, highest) = highest_sequence_id_of(&payload);
                            let entry = state.persisted.entry(producer).or_insert(highest);
                            *entry = (*entry).max(highest);
                        }
                        Err(error) => warn!(%position, %error, "entry without readable metadata; skipped by dedup"),
                    }
                    state.applied = Some(position);
                    replayed += 1;
                }
            }
        }
        state.pushed = state.persisted.clone();
        debug!(ledger = ledger.name(), replayed, producers = state.persisted.len(), "deduplication state rebuilt");
        let (tracker, queue) = mpsc::channel(TRACKER_QUEUE);
        let dedup = Arc::new(Deduplication {
            ledger,
            meta,
            state: Arc::new(Mutex::new(state)),
            order: tokio::sync::Mutex::new(tracker),
        });
        if stored.is_none() || replayed > 0 {
            dedup.snapshot().await?;
        }
        tokio::spawn(track(Arc::downgrade(&dedup), dedup.state.clone(), queue));
        Ok(dedup)
    }

    /// A producer (re)registers: the highest sequence id accepted from it, -1 if none
    /// (PRODUCER_SUCCESS). A failure of its earlier publishes is forgotten: it sends again
    /// from there.
    pub fn register_producer(&self, producer: &str) -> i64 {
        let mut state = self.state.lock();
        state.failed.remove(producer);
        state.pushed.get(producer).copied().unwrap_or(-1)
    }

    /// Checks a SEND against the producer's ids and stores it unless it is a duplicate; a
    /// `partial_chunk` ([`is_partial_chunk`]) is checked but moves no id.
    pub async fn publish(
        &self,
        producer: &str,
        sequence_id: u64,
        highest_sequence_id: u64,
        partial_chunk: bool,
        data: Bytes,
    ) -> Result<Published, BrokerError> {
        let sequence_id = i64::try_from(sequence_id).unwrap_or(i64::MAX);
        let highest = i64::try_from(highest_sequence_id).unwrap_or(i64::MAX).max(sequence_id);
        let tracker = self.order.lock().await;
        {
            let mut state = self.state.lock();
            if state.failed.contains(producer) {
                return Err(BrokerError::TopicFenced { topic: self.ledger.name().to_owned() });
            }
            if let Some(&pushed) = state.pushed.get(producer) {
                if sequence_id <= pushed {
                    let persisted = state.persisted.get(producer).copied().unwrap_or(-1);
                    return Ok(if sequence_id <= persisted {
                        Published::Duplicate
                    } else {
                        Published::InFlightDuplicate
                    });
                }
            }
            if !partial_chunk {
                state.pushed.insert(producer.to_owned(), highest);
            }
        }
        let durable = match self.ledger.add_entry(data).await {
            Ok(durable) => durable,
            Err(error) => {
                self.forget_in_flight(producer);
                return Err(error);
            }
        };
        let (answer, answered) = oneshot::channel();
        let tracked = Tracked {
            producer: producer.to_owned(),
            highest_sequence_id: (!partial_chunk).then_some(highest),
            durable,
            answer,
        };
        if tracker.send(tracked).await.is_err() {
            return Err(BrokerError::ShuttingDown);
        }
        drop(tracker);
        Ok(Published::Stored(AddFuture::new(async move { answered.await.unwrap_or(Err(BrokerError::ShuttingDown)) })))
    }

    /// After a failed add: what was pushed but not persisted may be sent again.
    fn forget_in_flight(&self, producer: &str) {
        let mut state = self.state.lock();
        match state.persisted.get(producer).copied() {
            Some(persisted) => state.pushed.insert(producer.to_owned(), persisted),
            None => state.pushed.remove(producer),
        };
    }

    /// Writes the current state (consistent: see the module doc).
    pub async fn snapshot(&self) -> Result<(), BrokerError> {
        let snapshot = {
            let mut state = self.state.lock();
            state.applied_since_snapshot = 0;
            Snapshot {
                position: state.applied.map(|p| (p.ledger_id, p.entry_id)),
                producers: state.persisted.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            }
        };
        let value = serde_json::to_vec(&snapshot)
            .map_err(|error| BrokerError::Corrupt { what: "dedup snapshot".to_owned(), reason: error.to_string() })?;
        self.meta.put(&snapshot_path(self.ledger.name()), value, Expected::Any).await?;
        Ok(())
    }

    /// Dedup turned off: the record goes, so turning it on again starts afresh.
    pub async fn delete_snapshot(meta: &dyn MetadataStore, managed_ledger: &str) -> Result<(), BrokerError> {
        Ok(meta.delete(&snapshot_path(managed_ledger), Expected::Any).await?)
    }
}

/// Awaits adds in ledger order, moves the persisted ids, forwards each result to its receipt
/// and snapshots every [`SNAPSHOT_INTERVAL`] entries.
async fn track(dedup: std::sync::Weak<Deduplication>, state: Arc<Mutex<State>>, mut queue: mpsc::Receiver<Tracked>) {
    while let Some(mut tracked) = queue.recv().await {
        // The add stays unanswered for the managed ledger until `tracked` drops, after the
        // failure is noted below.
        let result = (&mut tracked.durable).await;
        let snapshot_due = {
            let mut state = state.lock();
            match &result {
                Ok(position) => {
                    if let Some(highest) = tracked.highest_sequence_id {
                        let entry = state.persisted.entry(tracked.producer.clone()).or_insert(highest);
                        *entry = (*entry).max(highest);
                    }
                    state.applied = Some(*position);
                    state.applied_since_snapshot += 1;
                }
                Err(_) => {
                    state.failed.insert(tracked.producer.clone());
                    let persisted = state.persisted.get(&tracked.producer).copied();
                    match persisted {
                        Some(persisted) => state.pushed.insert(tracked.producer.clone(), persisted),
                        None => state.pushed.remove(&tracked.producer),
                    };
                }
            }
            state.applied_since_snapshot >= SNAPSHOT_INTERVAL
        };
        let Tracked { answer, durable, .. } = tracked;
        let _ = answer.send(result);
        drop(durable);
        if snapshot_due {
            let Some(dedup) = dedup.upgrade() else { return };
            if let Err(error) = dedup.snapshot().await {
                warn!(ledger = dedup.ledger.name(), %error, "writing the dedup snapshot failed; the next one retries");
            }
        }
    }
}
