//! The bookie's storage node logic: adds made durable by the journal, entries served from
//! ledger storage, ledger state (master key, fenced, last-add-confirmed), checkpoints and GC.
//!
//! Concurrency: one short critical section (`Shared::ordering`) orders everything that changes
//! a ledger: it checks the ledger's state, assigns the journal sequence number, puts the entry
//! in the write cache and queues the journal record, with no I/O and no await inside. Fencing
//! takes the same lock, so once a fence is queued no later add of the old writer gets in, and a
//! fence answers only after its record is durable. Adds wait for their journal sync outside
//! the lock.
//!
//! A checkpoint thread swaps the write cache under the lock (so the mark, the last sequence
//! number in the swapped half, is exact), writes it to entry logs and the index, then lets the
//! journal drop what the mark covers. It runs every `checkpoint_interval`, and sooner when the
//! active write cache passes `write_cache_bytes`; adders wait while the cache holds twice that.
//! A GC thread compacts entry logs every `gc_interval`.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

pub use crate::add_request::AddRequest;
use crate::config::BookieConfig;
use crate::error::BookieError;
use crate::journal::{Journal, Record};
use crate::ledger_data::LedgerData;
use crate::ledger_storage::LedgerStorage;
use crate::metrics::BookieMetrics;

impl AddRequest {
    fn record(&self) -> Record {
        Record::Add {
            ledger_id: self.ledger_id,
            entry_id: self.entry_id,
            last_add_confirmed: self.last_add_confirmed,
            payload: self.payload.clone(),
        }
    }
}

/// What a fence found on this bookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceResult {
    pub last_add_confirmed: i64,
    /// Highest entry stored (-1: none).
    pub last_entry_id: i64,
}

struct Sequencer {
    next_sequence: u64,
}

struct Shared {
    config: BookieConfig,
    storage: Arc<LedgerStorage>,
    journal: Journal,
    ordering: Mutex<Sequencer>,
    /// Set by the disk monitor (or an operator); the journal has its own flag for failures.
    read_only: Arc<AtomicBool>,
    lac_watchers: Mutex<HashMap<u64, watch::Sender<i64>>>,
    /// Wakes the checkpoint thread early; `true` means stop (for both threads).
    checkpoint_wake: (Mutex<bool>, Condvar),
    /// Wakes the GC thread to stop.
    gc_wake: Condvar,
    /// Set by `abandon`: stop without the final checkpoint, as a crash would.
    abandoned: AtomicBool,
    /// Signalled after each checkpoint, for adders waiting on a full write cache.
    checkpointed: Notify,
    metrics: BookieMetrics,
}

pub struct Bookie {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Bookie {
    /// Opens storage, replays the journal after the last checkpoint, and starts the checkpoint
    /// and GC threads. Blocking.
    pub fn open(config: &BookieConfig) -> Result<Arc<Bookie>, BookieError> {
        config
            .validate()
            .map_err(|reason| BookieError::InvalidRequest { reason: format!("bookie config: {reason}") })?;
        let metrics = BookieMetrics::new(&config.bookie_id);
        let storage = LedgerStorage::open_measured(config, metrics.storage.clone())?;
        let mark = storage.checkpoint_mark();
        let (journal, replayed) =
            Journal::open_measured(&config.journal_dir(), config.journal.clone(), mark, metrics.journal.clone())?;
        let replayed_count = replayed.records.len();
        for (_, record) in replayed.records {
            apply(&storage, record)?;
        }
        let shared = Arc::new(Shared {
            config: config.clone(),
            storage,
            journal,
            ordering: Mutex::new(Sequencer { next_sequence: replayed.last_sequence + 1 }),
            read_only: Arc::new(AtomicBool::new(false)),
            lac_watchers: Mutex::new(HashMap::new()),
            checkpoint_wake: (Mutex::new(false), Condvar::new()),
            gc_wake: Condvar::new(),
            abandoned: AtomicBool::new(false),
            checkpointed: Notify::new(),
            metrics,
        });
        if replayed_count > 0 {
            info!(records = replayed_count, mark, "replayed journal records after the last checkpoint");
        }
        let checkpoint = {
            let shared = shared.clone();
            std::thread::Builder::new().name("checkpoint".to_owned()).spawn(move || shared.checkpoint_loop())
        }
        .map_err(|source| BookieError::Io { path: "checkpoint thread".to_owned(), source })?;
        let gc = {
            let shared = shared.clone();
            std::thread::Builder::new().name("gc".to_owned()).spawn(move || shared.gc_loop())
        }
        .map_err(|source| BookieError::Io { path: "gc thread".to_owned(), source })?;
        let bookie = Arc::new(Bookie { shared, threads: Mutex::new(vec![checkpoint, gc]) });
        if replayed_count > 0 {
            bookie.shared.wake_checkpoint();
        }
        Ok(bookie)
    }

    pub fn config(&self) -> &BookieConfig {
        &self.shared.config
    }

    /// This bookie's metrics (the server and the auto-recovery worker add theirs).
    pub fn metrics(&self) -> &BookieMetrics {
        &self.shared.metrics
    }

    pub fn storage(&self) -> &Arc<LedgerStorage> {
        &self.shared.storage
    }

    /// The flag that makes the bookie refuse adds (the disk monitor sets it).
    pub fn read_only_flag(&self) -> Arc<AtomicBool> {
        self.shared.read_only.clone()
    }

    pub fn is_read_only(&self) -> bool {
        self.shared.read_only.load(Ordering::SeqCst) || self.shared.journal.is_read_only()
    }

    /// Stores an entry; answers once it is durable in the journal.
    pub async fn add(
        &self,
        ledger_id: u64,
        entry_id: u64,
        master_key: &[u8],
        last_add_confirmed: i64,
        payload: Bytes,
        recovery: bool,
    ) -> Result<(), BookieError> {
        let add = AddRequest {
            ledger_id,
            entry_id,
            master_key: Bytes::copy_from_slice(master_key),
            last_add_confirmed,
            payload,
            recovery,
        };
        self.add_batch(vec![add]).await.pop().unwrap_or(Err(BookieError::Stopped { what: "add" }))
    }

    /// Stores several entries under one pass of the ordering lock; answers each once it is
    /// durable in the journal, in the order given.
    pub async fn add_batch(&self, adds: Vec<AddRequest>) -> Vec<Result<(), BookieError>> {
        let shared = &self.shared;
        let mut results: Vec<Option<Result<(), BookieError>>> =
            adds.iter().map(|add| add.validate().err().map(Err)).collect();
        if self.is_read_only() {
            let reason = "the bookie is read-only (disk full or journal failure)";
            return adds.iter().map(|_| Err(BookieError::ReadOnly { reason: reason.to_owned() })).collect();
        }
        // Back off while the write cache holds twice its size: a checkpoint is behind.
        while shared.storage.active_bytes() > 2 * shared.config.write_cache_bytes {
            let wait = shared.checkpointed.notified();
            shared.wake_checkpoint();
            if shared.storage.active_bytes() <= 2 * shared.config.write_cache_bytes {
                break;
            }
            wait.await;
        }
        let bytes: usize = adds.iter().map(|add| add.record().encoded_len()).sum();
        let mut reservation = match shared.journal.reserve(bytes).await {
            Ok(reservation) => Some(reservation),
            Err(_) => return adds.iter().map(|_| Err(BookieError::Stopped { what: "journal" })).collect(),
        };
        // The admitted adds (and the keys of new ledgers, each before its first add) go to the
        // journal as one request, answered once: one group commit makes them all durable.
        let durable = {
            let mut ordering = shared.ordering.lock();
            let mut records = Vec::with_capacity(adds.len());
            for (index, add) in adds.iter().enumerate() {
                if results[index].is_some() {
                    continue;
                }
                match shared.admit(&mut ordering, add, &mut records) {
                    Ok(()) => {
                        let sequence = ordering.next_sequence;
                        ordering.next_sequence += 1;
                        records.push((sequence, add.record()));
                    }
                    Err(error) => results[index] = Some(Err(error)),
                }
            }
            // The reservation is released once the records are written.
            (!records.is_empty()).then(|| shared.journal.submit_all(records, reservation.take()))
        };
        if let Some(answer) = durable {
            let outcome = answer.await.unwrap_or(Err(BookieError::Stopped { what: "journal" }));
            // Adds of one message mostly share their ledger and last-add-confirmed: published once.
            let mut published = None;
            for (index, add) in adds.iter().enumerate() {
                if results[index].is_some() {
                    continue;
                }
                results[index] = Some(match &outcome {
                    Ok(()) => {
                        let lac = (add.ledger_id, add.last_add_confirmed);
                        if lac.1 >= 0 && published != Some(lac) {
                            shared.publish_lac(lac.0, lac.1);
                            published = Some(lac);
                        }
                        Ok(())
                    }
                    Err(error) => Err(journal_failure(error)),
                });
            }
        }
        if shared.storage.active_bytes() > shared.config.write_cache_bytes {
            shared.wake_checkpoint();
        }
        results.into_iter().map(|r| r.unwrap_or(Err(BookieError::Stopped { what: "add" }))).collect()
    }

    /// Fences the ledger durably: from now on only recovery adds succeed. Fencing a ledger
    /// this bookie has never seen creates its state fenced, so a late first add fails too.
    pub async fn fence(&self, ledger_id: u64, master_key: &[u8]) -> Result<FenceResult, BookieError> {
        let shared = &self.shared;
        let (durable, state) = {
            let mut ordering = shared.ordering.lock();
            let mut records = Vec::new();
            let mut state = match shared.storage.ledger_state(ledger_id)? {
                Some(state) if state.master_key != master_key => return Err(BookieError::Unauthorized { ledger_id }),
                Some(state) => state,
                None => shared.new_ledger(&mut ordering, ledger_id, Bytes::copy_from_slice(master_key), &mut records),
            };
            let mut durable = None;
            if !state.fenced {
                state.fenced = true;
                let sequence = ordering.next_sequence;
                ordering.next_sequence += 1;
                records.push((sequence, Record::Fence { ledger_id }));
                durable = Some(shared.journal.submit_all(records, None));
            }
            shared.storage.set_ledger_state(ledger_id, state.clone());
            (durable, state)
        };
        if let Some(durable) = durable {
            durable.await.map_err(|_| BookieError::Stopped { what: "journal" })??;
            info!(ledger_id, "ledger fenced");
        }
        let last_entry_id = self.last_entry_id(ledger_id)?;
        Ok(FenceResult { last_add_confirmed: state.last_add_confirmed, last_entry_id })
    }

    /// One entry. Blocking (may read an entry log).
    pub fn read(&self, ledger_id: u64, entry_id: u64) -> Result<Bytes, BookieError> {
        match self.shared.storage.get_entry(ledger_id, entry_id)? {
            Some(data) => Ok(data),
            None if self.shared.storage.ledger_state(ledger_id)?.is_none() => {
                Err(BookieError::NoSuchLedger { ledger_id })
            }
            None => Err(BookieError::NoSuchEntry { ledger_id, entry_id }),
        }
    }

    /// Consecutive entries; errors if there is none at `first`. Blocking.
    pub fn read_range(
        &self,
        ledger_id: u64,
        first: u64,
        last: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>, BookieError> {
        let entries = self.shared.storage.get_range(ledger_id, first, last, max_entries, max_bytes)?;
        if entries.is_empty() {
            return Err(match self.shared.storage.ledger_state(ledger_id)? {
                None => BookieError::NoSuchLedger { ledger_id },
                Some(_) => BookieError::NoSuchEntry { ledger_id, entry_id: first },
            });
        }
        Ok(entries)
    }

    /// Highest entry id stored, -1 if none.
    pub fn last_entry_id(&self, ledger_id: u64) -> Result<i64, BookieError> {
        Ok(self.shared.storage.last_entry_id(ledger_id)?.map_or(-1, |id| id as i64))
    }

    pub fn last_add_confirmed(&self, ledger_id: u64) -> Result<Option<i64>, BookieError> {
        Ok(self.shared.storage.ledger_state(ledger_id)?.map(|s| s.last_add_confirmed))
    }

    /// A receiver that sees this ledger's last-add-confirmed as it grows.
    pub fn watch_lac(&self, ledger_id: u64) -> Result<watch::Receiver<i64>, BookieError> {
        let current = self.last_add_confirmed(ledger_id)?.unwrap_or(-1);
        let mut watchers = self.shared.lac_watchers.lock();
        watchers.retain(|_, sender| sender.receiver_count() > 0);
        let sender = watchers.entry(ledger_id).or_insert_with(|| watch::channel(current).0);
        sender.send_if_modified(|value| {
            if current > *value {
                *value = current;
                true
            } else {
                false
            }
        });
        Ok(sender.subscribe())
    }

    /// Removes the ledger; its space is reclaimed by GC. Blocking.
    pub fn delete(&self, ledger_id: u64) -> Result<(), BookieError> {
        let _ordering = self.shared.ordering.lock();
        self.shared.storage.delete_ledger(ledger_id)
    }

    /// Stops without the final checkpoint, leaving recovery to journal replay as after a
    /// crash between two group commits. For crash tests; blocking.
    pub fn abandon(self: Arc<Self>) {
        self.shared.abandoned.store(true, Ordering::SeqCst);
        drop(self);
    }

    /// Runs a checkpoint now and waits for it. Blocking.
    pub fn checkpoint(&self) -> Result<u64, BookieError> {
        self.shared.checkpoint()
    }
}

impl Drop for Bookie {
    fn drop(&mut self) {
        {
            let (stop, wake) = &self.shared.checkpoint_wake;
            *stop.lock() = true;
            wake.notify_all();
            self.shared.gc_wake.notify_all();
        }
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
    }
}

/// One add's copy of the error its journal request was answered with (read-only or stopped).
fn journal_failure(error: &BookieError) -> BookieError {
    match error {
        BookieError::Stopped { what } => BookieError::Stopped { what },
        BookieError::ReadOnly { reason } => BookieError::ReadOnly { reason: reason.clone() },
        other => BookieError::ReadOnly { reason: other.to_string() },
    }
}

/// Applies a replayed journal record to ledger storage.
fn apply(storage: &LedgerStorage, record: Record) -> Result<(), BookieError> {
    match record {
        Record::Key { ledger_id, master_key } => {
            if storage.ledger_state(ledger_id)?.is_none() {
                storage.set_ledger_state(
                    ledger_id,
                    LedgerData { fenced: false, last_add_confirmed: -1, master_key: master_key.to_vec() },
                );
            }
        }
        Record::Fence { ledger_id } => {
            if let Some(mut state) = storage.ledger_state(ledger_id)? {
                state.fenced = true;
                storage.set_ledger_state(ledger_id, state);
            }
        }
        Record::Add { ledger_id, entry_id, last_add_confirmed, payload } => {
            let Some(mut state) = storage.ledger_state(ledger_id)? else {
                // The ledger was deleted after this add: nothing to restore.
                return Ok(());
            };
            state.last_add_confirmed = state.last_add_confirmed.max(last_add_confirmed);
            storage.set_ledger_state(ledger_id, state);
            storage.put_entry(ledger_id, entry_id, payload);
        }
    }
    Ok(())
}

impl Shared {
    /// Checks an add against its ledger's state and updates the state and the write cache; a
    /// new ledger's key record goes to `records`, to be journaled before the add. The caller
    /// holds the ordering lock and adds the add's own record right after.
    fn admit(
        &self,
        ordering: &mut Sequencer,
        add: &AddRequest,
        records: &mut Vec<(u64, Record)>,
    ) -> Result<(), BookieError> {
        let ledger_id = add.ledger_id;
        match self.storage.admission(ledger_id, &add.master_key) {
            Some(state) if !state.key_matches => return Err(BookieError::Unauthorized { ledger_id }),
            Some(state) if state.fenced && !add.recovery => return Err(BookieError::Fenced { ledger_id }),
            Some(state) => {
                if add.last_add_confirmed > state.last_add_confirmed {
                    self.storage.raise_last_add_confirmed(ledger_id, add.last_add_confirmed);
                }
            }
            None => {
                let mut state = self.new_ledger(ordering, ledger_id, add.master_key.clone(), records);
                state.last_add_confirmed = state.last_add_confirmed.max(add.last_add_confirmed);
                self.storage.set_ledger_state(ledger_id, state);
            }
        }
        self.storage.put_entry(ledger_id, add.entry_id, add.payload.clone());
        Ok(())
    }

    /// State for a ledger this bookie has not seen, with its master key's record added to
    /// `records`. The caller holds the ordering lock, journals `records` (the key's durability
    /// is implied by that of the add or fence journaled after it) and stores the state.
    fn new_ledger(
        &self,
        ordering: &mut Sequencer,
        ledger_id: u64,
        master_key: Bytes,
        records: &mut Vec<(u64, Record)>,
    ) -> LedgerData {
        let sequence = ordering.next_sequence;
        ordering.next_sequence += 1;
        let state = LedgerData { fenced: false, last_add_confirmed: -1, master_key: master_key.to_vec() };
        records.push((sequence, Record::Key { ledger_id, master_key }));
        state
    }

    fn wake_checkpoint(&self) {
        self.checkpoint_wake.1.notify_one();
    }

    fn publish_lac(&self, ledger_id: u64, lac: i64) {
        if let Some(sender) = self.lac_watchers.lock().get(&ledger_id) {
            sender.send_if_modified(|current| {
                if lac > *current {
                    *current = lac;
                    true
                } else {
                    false
                }
            });
        }
    }

    fn checkpoint(&self) -> Result<u64, BookieError> {
        {
            let ordering = self.ordering.lock();
            // Refused while an earlier swap is still unflushed; the flush below finishes it.
            self.storage.swap_write_cache(ordering.next_sequence - 1);
        }
        let durable = self.storage.flush()?;
        self.journal.checkpointed(durable);
        self.checkpointed.notify_waiters();
        Ok(durable)
    }

    fn checkpoint_loop(&self) {
        let (stop, wake) = &self.checkpoint_wake;
        loop {
            let stopping = {
                let guard = stop.lock();
                if *guard {
                    true
                } else {
                    let mut guard = guard;
                    wake.wait_for(&mut guard, self.config.checkpoint_interval);
                    *guard
                }
            };
            if stopping && self.abandoned.load(Ordering::SeqCst) {
                break;
            }
            if let Err(error) = self.checkpoint() {
                error!(%error, "checkpoint failed; entries stay in the journal and the write cache, retrying");
            }
            if stopping {
                break;
            }
        }
    }

    fn gc_loop(&self) {
        let (stop, wake) = (&self.checkpoint_wake.0, &self.gc_wake);
        loop {
            {
                let mut guard = stop.lock();
                if *guard {
                    break;
                }
                wake.wait_for(&mut guard, self.config.gc_interval);
                if *guard {
                    break;
                }
            }
            match self.storage.gc() {
                Ok(stats) if stats.logs_removed + stats.logs_compacted > 0 => info!(?stats, "garbage collected"),
                Ok(_) => {}
                Err(error) => warn!(%error, "garbage collection failed; will retry"),
            }
        }
    }
}
