//! The managed ledger: a topic's log as an ordered list of bookie ledgers.
//!
//! The list lives in the metadata store ([`ManagedLedgerInfo`] at [`info_path`]) and changes
//! only by compare-and-set, so two brokers can never both extend it. Opening a managed ledger
//! recovers (fences and closes) every ledger a previous owner left open, then starts a new
//! ledger for writing: the previous owner, if it is still alive, can add nothing more.
//!
//! Writes go to the current ledger through a [`LedgerWriter`]; positions become readable once
//! confirmed (durable, with every earlier entry), which is published on a watch channel that
//! dispatchers wait on.
//!
//! Rollover (as Pulsar's ManagedLedgerImpl): the current ledger is closed and a new one
//! started once it holds `max_entries_per_ledger` entries or `max_size_per_ledger_bytes`
//! bytes (but not before it is `min_ledger_rollover_time` old), once it is
//! `max_ledger_rollover_time` old and not empty, or after a write failure (then it is
//! recovered rather than closed). Adds that arrive meanwhile wait for the rollover (they all
//! pass through [`ManagedLedger::writable`], which queues behind the `rolling` lock) and go to
//! the new ledger only once the list naming it is stored; an add that raced with the close is
//! retried on the new ledger. Positions therefore grow strictly: within a ledger by entry id,
//! across ledgers by ledger id.
//!
//! Cursors ([`cursor::ManagedCursor`]) are opened with the managed ledger, every one stored
//! for it, so that trimming knows what each still needs. Trimming removes whole closed ledgers
//! before the slowest cursor's persisted mark-delete position and outside retention (by age
//! since close, or by the size of newer ledgers), first from the list (CAS), then from the
//! bookies. It runs after each rollover and every `check_interval`.
//!
//! Changes of the ledger list (rollover, trim) are serialized by `rolling`; the list itself
//! sits in `state` behind a std mutex never held across an await.

pub mod ack_ranges;
pub mod config;
pub mod cursor;
pub mod cursor_state;
pub mod entry_cache;
pub mod position;
#[cfg(test)]
mod tests;

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use magnetar_bookie::client::{self as ledger, Bookies, LedgerConfig, LedgerWriter};
use magnetar_bookie::{BookieError, EntryId, LedgerId};
use magnetar_meta::{Expected, Version};
use magnetar_proto::clock::now_ms;
use magnetar_proto::records::{managed_ledger_info::LedgerInfo, ManagedLedgerInfo};
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{EntryCacheConfig, ManagedLedgerConfig, Retention};
pub use cursor::ManagedCursor;
pub use cursor_state::{CursorState, LedgerPositions, PositionView};
pub use entry_cache::{CacheReader, EntryCache, EntryCacheManager, EntryCacheStats};
pub use position::Position;

use crate::error::BrokerError;
use crate::stats::{BucketCounter, BucketCounts, ENTRY_SIZE_BUCKETS, WRITE_LATENCY_BUCKETS};

/// Metadata key of a managed ledger's ledger list.
pub fn info_path(name: &str) -> String {
    format!("/magnetar/managed-ledgers/{name}")
}

/// How long an empty ledger left open by a previous owner is kept (closed and fenced) after
/// recovery before it is deleted (see [`ManagedLedger::open`]).
pub const EMPTY_LEDGER_DELETE_DELAY: std::time::Duration = std::time::Duration::from_secs(600);

/// Most entries one read returns (a bookie answers at most 1,000 per range read).
pub const MAX_READ_ENTRIES: u32 = 1000;
/// Entries of one range read of a read-ahead.
pub const READ_AHEAD_RUN: u32 = 100;
/// Most bytes one read returns (at least one entry is always returned).
pub const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;
/// Entries one read-ahead loads into the entry cache, in ranges of [`READ_AHEAD_RUN`] read
/// from the ledger's copies at once.
pub const READ_AHEAD_ENTRIES: u32 = 4 * READ_AHEAD_RUN;

/// The answer to one add: its position once durable. An add of the managed ledger counts as
/// unanswered (see [`ManagedLedger::add_entry`]) until this future is dropped, not merely
/// until it completes: whoever takes the answer first acts on it (a failed publish closes its
/// producer), then drops the future.
pub struct AddFuture {
    answer: Pin<Box<dyn Future<Output = Result<Position, BrokerError>> + Send>>,
    _unanswered: Option<Unanswered>,
}

impl AddFuture {
    /// An answer from elsewhere (a duplicate's, a deduplication tracker's).
    pub fn new(answer: impl Future<Output = Result<Position, BrokerError>> + Send + 'static) -> Self {
        AddFuture { answer: Box::pin(answer), _unanswered: None }
    }
}

impl Future for AddFuture {
    type Output = Result<Position, BrokerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        self.answer.as_mut().poll(cx)
    }
}

struct State {
    info: ManagedLedgerInfo,
    version: Version,
    writer: Arc<LedgerWriter>,
    /// The current writer was closed (rollover half done): the next add must start a new one.
    writer_closed: bool,
    /// Entries and payload bytes handed to the current writer, for rollover.
    current_entries: u64,
    current_bytes: u64,
    current_opened: Instant,
    /// `close` was called: no more adds.
    closed: bool,
    /// `terminate` was called: no more adds (the record says so once it is stored).
    terminating: bool,
}

/// Sizes of a managed ledger, for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub ledgers: u64,
    pub entries: u64,
    pub size_bytes: u64,
}

pub struct ManagedLedger {
    name: String,
    bookies: Bookies,
    ledger_config: LedgerConfig,
    config: ManagedLedgerConfig,
    state: Mutex<State>,
    /// Serializes changes of the ledger list: rollovers and trims.
    rolling: tokio::sync::Mutex<()>,
    /// Metadata of ledgers, for reads.
    ledger_cache: Mutex<HashMap<u64, Arc<ledger::metadata::Ledger>>>,
    /// Entries just written or read, for readers at the tail (see [`entry_cache`]).
    entries: Arc<EntryCache>,
    /// The last confirmed position; `None` while the log is empty.
    last_confirmed: watch::Sender<Option<Position>>,
    /// Every durable cursor of this managed ledger, by name.
    cursors: Mutex<BTreeMap<String, Arc<ManagedCursor>>>,
    /// Stops the periodic rollover-by-age and trim task.
    stop: CancellationToken,
    /// The namespace's or topic's retention policy, over the configured default.
    retention: Mutex<Option<Retention>>,
    /// Adds: milliseconds from add to durable, and entry sizes (Pulsar's `_le_*` metrics).
    write_latency: BucketCounter,
    entry_sizes: BucketCounter,
    /// Adds placed whose answer was not taken yet (see [`ManagedLedger::add_entry`]).
    unanswered: Arc<AtomicU64>,
    /// Ledgers given up after a write failure, so far.
    write_failures: AtomicU64,
}

/// Counts an add as unanswered until its answer is taken (or the answer is dropped).
struct Unanswered(Arc<AtomicU64>);

impl Unanswered {
    fn new(count: &Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Unanswered(count.clone())
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ManagedLedger {
    pub async fn open(
        name: &str,
        bookies: Bookies,
        ledger_config: LedgerConfig,
        config: ManagedLedgerConfig,
        cache: &Arc<EntryCacheManager>,
    ) -> Result<Arc<Self>, BrokerError> {
        let meta = bookies.meta().clone();
        let path = info_path(name);
        let (mut info, mut version) = match meta.get(&path).await? {
            Some(found) => {
                let info = ManagedLedgerInfo::decode(&found.value[..])
                    .map_err(|error| BrokerError::Corrupt { what: path.clone(), reason: error.to_string() })?;
                (info, found.version)
            }
            None => {
                let info = ManagedLedgerInfo { ledgers: Vec::new(), created_at_ms: now_ms(), terminated: false };
                match meta.put(&path, info.encode_to_vec(), Expected::Absent).await {
                    Ok(version) => (info, version),
                    Err(magnetar_meta::MetaError::BadVersion { .. }) => {
                        return Box::pin(ManagedLedger::open(name, bookies, ledger_config, config, cache)).await
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };
        // Close what a previous owner left open; drop ledgers that ended up empty.
        for ledger_info in info.ledgers.iter_mut().filter(|l| !l.closed) {
            let closed = ledger::recover_ledger(&bookies, LedgerId(ledger_info.ledger_id)).await?;
            ledger_info.closed = true;
            ledger_info.entries = closed.last_entry().map_or(0, |last| last.0 + 1);
            ledger_info.closed_at_ms = now_ms();
        }
        let empty: Vec<u64> = info.ledgers.iter().filter(|l| l.entries == 0).map(|l| l.ledger_id).collect();
        info.ledgers.retain(|l| l.entries > 0);
        let last_confirmed = info.ledgers.last().map(|l| Position::new(l.ledger_id, l.entries - 1));
        let (sender, _) = watch::channel(last_confirmed);
        let writer = Self::new_writer(&bookies, ledger_config, sender.clone()).await?;
        info.ledgers.push(LedgerInfo {
            ledger_id: writer.ledger_id().0,
            entries: 0,
            size: 0,
            created_at_ms: now_ms(),
            closed: false,
            closed_at_ms: 0,
        });
        version = meta.put(&path, info.encode_to_vec(), Expected::Version(version)).await?;
        if !empty.is_empty() {
            // Not deleted at once: a previous owner that lost its session but still runs may
            // still be adding to one of them, and a deleted ledger forgets its fence on the
            // bookies, so those adds would be acknowledged into a ledger no list names (found
            // by the broker simulation, seed 1999). A previous owner stops serving within its
            // session timeout; this waits much longer.
            let (bookies, name) = (bookies.clone(), name.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(EMPTY_LEDGER_DELETE_DELAY).await;
                for ledger_id in empty {
                    if let Err(error) = ledger::admin::delete_ledger(&bookies, LedgerId(ledger_id)).await {
                        warn!(managed_ledger = %name, ledger_id, %error, "cannot delete an empty ledger dropped from the list");
                    }
                }
            });
        }
        // Every stored cursor, so that trimming never removes what one of them still needs.
        let mut cursors = BTreeMap::new();
        for cursor_name in meta.list_children(&cursor::cursors_path(name)).await? {
            if let Some(opened) = ManagedCursor::recover(
                name,
                &cursor_name,
                &bookies,
                ledger_config,
                config.cursor_max_entries_per_ledger,
            )
            .await?
            {
                cursors.insert(cursor_name, opened);
            }
        }
        info!(
            managed_ledger = name,
            ledger_id = writer.ledger_id().0,
            ?last_confirmed,
            cursors = cursors.len(),
            "managed ledger opened"
        );
        let managed_ledger = Arc::new(ManagedLedger {
            name: name.to_owned(),
            bookies,
            ledger_config,
            config,
            state: Mutex::new(State {
                info,
                version,
                writer,
                writer_closed: false,
                current_entries: 0,
                current_bytes: 0,
                current_opened: Instant::now(),
                closed: false,
                terminating: false,
            }),
            rolling: tokio::sync::Mutex::new(()),
            ledger_cache: Mutex::new(HashMap::new()),
            entries: cache.cache(),
            last_confirmed: sender,
            cursors: Mutex::new(cursors),
            stop: CancellationToken::new(),
            retention: Mutex::new(None),
            write_latency: BucketCounter::new(&WRITE_LATENCY_BUCKETS),
            entry_sizes: BucketCounter::new(&ENTRY_SIZE_BUCKETS),
            unanswered: Arc::new(AtomicU64::new(0)),
            write_failures: AtomicU64::new(0),
        });
        Self::spawn_checks(&managed_ledger);
        Ok(managed_ledger)
    }

    /// Every `check_interval`: roll over a ledger that grew old, then trim. Ends with `close`
    /// or when the managed ledger is dropped.
    fn spawn_checks(this: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(this);
        let (stop, interval) = (this.stop.clone(), this.config.check_interval);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                let Some(this) = weak.upgrade() else { return };
                if this.rollover_due() {
                    if let Err(error) = this.roll_over().await {
                        warn!(managed_ledger = %this.name, %error, "rollover by age failed; next check retries");
                    }
                }
                if let Err(error) = this.trim().await {
                    warn!(managed_ledger = %this.name, %error, "trimming consumed ledgers failed; next check retries");
                }
            }
        });
    }

    async fn new_writer(
        bookies: &Bookies,
        config: LedgerConfig,
        confirmed: watch::Sender<Option<Position>>,
    ) -> Result<Arc<LedgerWriter>, BrokerError> {
        // The hook needs the ledger id, known only after creation.
        let ledger_id = Arc::new(std::sync::OnceLock::<u64>::new());
        let hook_ledger = ledger_id.clone();
        let hook: ledger::writer::ConfirmHook = Arc::new(move |entry_id| {
            if let Some(ledger_id) = hook_ledger.get() {
                raise(&confirmed, Position::new(*ledger_id, entry_id));
            }
        });
        let writer = LedgerWriter::create(bookies, config, Some(hook)).await?;
        let _ = ledger_id.set(writer.ledger_id().0);
        Ok(writer)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bookies this managed ledger writes to (compaction writes its ledger there too).
    pub fn bookies(&self) -> &Bookies {
        &self.bookies
    }

    /// Replication of this managed ledger's ledgers.
    pub fn ledger_config(&self) -> LedgerConfig {
        self.ledger_config
    }

    pub fn config(&self) -> &ManagedLedgerConfig {
        &self.config
    }

    fn lock_state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The last durable position, if any entry was ever written.
    pub fn last_confirmed(&self) -> Option<Position> {
        *self.last_confirmed.borrow()
    }

    /// A receiver that changes whenever a new position is confirmed.
    pub fn watch_confirmed(&self) -> watch::Receiver<Option<Position>> {
        self.last_confirmed.subscribe()
    }

    /// Appends an entry. Returns once the entry has its place in the log (the order of calls
    /// is the order of entries); the returned future answers once it is durable.
    ///
    /// After a write failure, every add already placed on the failed ledger fails. Until all
    /// their answers were taken and acted on ([`AddFuture`]), new adds are refused too (as
    /// Pulsar fences a topic for publishing until its pending writes are done): an add
    /// accepted meanwhile would land after a failed one that its producer is about to send
    /// again, reordering the producer's messages, and deduplication would then take the
    /// resent one for a duplicate. Found by the broker simulation (tests/simulation.rs, seed
    /// 25) and by the chaos harness (reordering on a topic without deduplication).
    pub async fn add_entry(self: &Arc<Self>, data: Bytes) -> Result<AddFuture, BrokerError> {
        let size = data.len() as u64;
        let started = std::time::Instant::now();
        loop {
            let failures = self.write_failures.load(Ordering::SeqCst);
            let writer = self.writable().await?;
            if self.write_failures.load(Ordering::SeqCst) != failures {
                // A ledger failed while this add waited for the rollover: adds placed before
                // it failed, and their producers have not heard yet.
                let reason = "an earlier add failed while this one waited".to_owned();
                return Err(BookieError::WriterFailed { ledger_id: writer.ledger_id().0, reason }.into());
            }
            let unanswered = Unanswered::new(&self.unanswered);
            let answer = match writer.place(data.clone()).await {
                Ok((entry_id, answer)) => {
                    // Cached as soon as it has its id: confirming it takes a bookie round trip
                    // (an fdatasync), so a reader at the tail finds it cached. Should it ever
                    // be confirmed first, that read is a miss served from the bookies.
                    self.entries.insert(Position::new(writer.ledger_id().0, entry_id), &data);
                    answer
                }
                // A rollover closed this ledger after we picked it: go to the new one.
                Err(BookieError::LedgerClosed { .. }) => continue,
                Err(error) => return Err(error.into()),
            };
            {
                let mut state = self.lock_state();
                if Arc::ptr_eq(&state.writer, &writer) {
                    state.current_entries += 1;
                    state.current_bytes += size;
                }
            }
            let ledger_id = writer.ledger_id().0;
            let this = self.clone();
            let answer = Box::pin(async move {
                let entry_id = answer.await.map_err(|_| BrokerError::ShuttingDown)??;
                this.write_latency.record(started.elapsed().as_secs_f64() * 1000.0);
                this.entry_sizes.record(size as f64);
                this.account(ledger_id, entry_id, size);
                Ok(Position::new(ledger_id, entry_id))
            });
            return Ok(AddFuture { answer, _unanswered: Some(unanswered) });
        }
    }

    /// Add latencies (ms) and entry sizes since the ledger was opened.
    pub fn add_stats(&self) -> (BucketCounts, BucketCounts) {
        (self.write_latency.snapshot(), self.entry_sizes.snapshot())
    }

    fn account(&self, ledger_id: u64, entry_id: u64, size: u64) {
        let mut state = self.lock_state();
        if let Some(current) = state.info.ledgers.iter_mut().rev().find(|l| l.ledger_id == ledger_id) {
            if !current.closed {
                current.entries = current.entries.max(entry_id + 1);
            }
            current.size += size;
        }
    }

    /// Whether the current ledger must be closed and a new one started (see the module doc).
    fn rollover_due(&self) -> bool {
        let state = self.lock_state();
        Self::due(&self.config, &state)
    }

    fn due(config: &ManagedLedgerConfig, state: &State) -> bool {
        if state.writer_closed || state.writer.failure().is_some() {
            return true;
        }
        if state.current_entries == 0 {
            return false;
        }
        let age = state.current_opened.elapsed();
        age >= config.max_ledger_rollover_time
            || (age >= config.min_ledger_rollover_time
                && (state.current_entries >= config.max_entries_per_ledger
                    || state.current_bytes >= config.max_size_per_ledger_bytes))
    }

    /// The writer to add to, after a rollover if one is due.
    async fn writable(self: &Arc<Self>) -> Result<Arc<LedgerWriter>, BrokerError> {
        {
            let state = self.lock_state();
            if state.closed {
                return Err(BrokerError::ShuttingDown);
            }
            if state.info.terminated || state.terminating {
                return Err(BrokerError::TopicTerminated { topic: self.name.clone() });
            }
            if !Self::due(&self.config, &state) {
                return Ok(state.writer.clone());
            }
        }
        let (writer, rolled) = self.roll_over().await?;
        if rolled {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(error) = this.trim().await {
                    warn!(managed_ledger = %this.name, %error, "trimming after rollover failed; next check retries");
                }
            });
        }
        Ok(writer)
    }

    /// Closes the current ledger (or recovers it, if its writer failed) and starts a new one,
    /// if that is still due once the `rolling` lock is held. Returns the writer to use and
    /// whether a rollover happened.
    async fn roll_over(&self) -> Result<(Arc<LedgerWriter>, bool), BrokerError> {
        let _rolling = self.rolling.lock().await;
        let (old, already_closed) = {
            let state = self.lock_state();
            if state.closed {
                return Err(BrokerError::ShuttingDown);
            }
            if !Self::due(&self.config, &state) {
                return Ok((state.writer.clone(), false));
            }
            self.refuse_while_failing(&state.writer)?;
            (state.writer.clone(), state.writer_closed)
        };
        if !already_closed {
            let last_entry_id = match old.failure() {
                None => match old.close().await {
                    Ok(last) => last,
                    Err(error) => {
                        warn!(managed_ledger = %self.name, ledger_id = old.ledger_id().0, %error, "closing the ledger failed, recovering it");
                        self.recovered_end(&old).await?
                    }
                },
                Some(reason) => {
                    warn!(managed_ledger = %self.name, ledger_id = old.ledger_id().0, %reason, "ledger write failed, rolling over");
                    self.recovered_end(&old).await?
                }
            };
            {
                let mut state = self.lock_state();
                state.writer_closed = true;
                if let Some(closed) = state.info.ledgers.iter_mut().find(|l| l.ledger_id == old.ledger_id().0) {
                    closed.closed = true;
                    closed.entries = (last_entry_id + 1).max(0) as u64;
                    closed.closed_at_ms = now_ms();
                }
            }
            if last_entry_id >= 0 {
                raise(&self.last_confirmed, Position::new(old.ledger_id().0, last_entry_id as u64));
            }
            self.entries.evict_ledger_after(old.ledger_id().0, u64::try_from(last_entry_id).ok());
            self.ledger_cache.lock().remove(&old.ledger_id().0);
            // The writer may have failed while it was closing, failing adds placed on it.
            self.refuse_while_failing(&old)?;
        }
        let new_writer = Self::new_writer(&self.bookies, self.ledger_config, self.last_confirmed.clone()).await?;
        let (info, version) = {
            let mut state = self.lock_state();
            state.info.ledgers.push(LedgerInfo {
                ledger_id: new_writer.ledger_id().0,
                entries: 0,
                size: 0,
                created_at_ms: now_ms(),
                closed: false,
                closed_at_ms: 0,
            });
            (state.info.clone(), state.version)
        };
        let stored =
            self.bookies.meta().put(&info_path(&self.name), info.encode_to_vec(), Expected::Version(version)).await;
        let mut state = self.lock_state();
        match stored {
            Ok(new_version) => {
                state.version = new_version;
                state.writer = new_writer.clone();
                state.writer_closed = false;
                state.current_entries = 0;
                state.current_bytes = 0;
                state.current_opened = Instant::now();
                info!(managed_ledger = %self.name, closed = old.ledger_id().0, opened = new_writer.ledger_id().0, "ledger rolled over");
                Ok((new_writer, true))
            }
            Err(error) => {
                // Not in the list: never written to, and the next rollover starts another.
                state.info.ledgers.retain(|l| l.ledger_id != new_writer.ledger_id().0);
                Err(error.into())
            }
        }
    }

    /// See [`ManagedLedger::add_entry`]: no new ledger while adds placed on a failed one are
    /// unanswered.
    fn refuse_while_failing(&self, writer: &LedgerWriter) -> Result<(), BrokerError> {
        match writer.failure().filter(|_| self.unanswered.load(Ordering::SeqCst) > 0) {
            Some(reason) => {
                let reason = format!("{reason} (earlier adds are failing)");
                Err(BookieError::WriterFailed { ledger_id: writer.ledger_id().0, reason }.into())
            }
            None => Ok(()),
        }
    }

    /// Where this managed ledger's part of a ledger ends whose writer failed or could not
    /// close: recovery closes the ledger on the bookies (so nobody can add to it), and the
    /// writer's last confirmed entry ends it here. Recovery may find later entries on the
    /// bookies; their adds failed here, so their producers send them again (deduplication
    /// lets them: nothing was persisted), and they stay outside the managed ledger, or a
    /// message would be stored twice. Every entry acknowledged to a producer is at or before
    /// the last confirmed one, which is final: the writer is stopped or closed.
    async fn recovered_end(&self, writer: &LedgerWriter) -> Result<i64, BrokerError> {
        self.write_failures.fetch_add(1, Ordering::SeqCst);
        let recovered = ledger::recover_ledger(&self.bookies, writer.ledger_id()).await?;
        Ok(EntryId::last_to_wire(recovered.last_entry()).min(writer.last_add_confirmed()))
    }

    /// Ledgers and their entry counts, for position arithmetic; the open ledger counts its
    /// confirmed entries.
    fn ledgers(&self) -> Vec<(u64, u64)> {
        let state = self.lock_state();
        let last = self.last_confirmed();
        state
            .info
            .ledgers
            .iter()
            .map(|l| match last {
                Some(p) if !l.closed && p.ledger_id == l.ledger_id => (l.ledger_id, p.entry_id + 1),
                _ => (l.ledger_id, l.entries),
            })
            .collect()
    }

    /// Ids of the ledgers in the list, oldest first (the last one is the current ledger).
    pub fn ledger_ids(&self) -> Vec<u64> {
        self.lock_state().info.ledgers.iter().map(|l| l.ledger_id).collect()
    }

    /// Each ledger of the list, oldest first: its id, confirmed entries and bytes.
    pub fn ledger_sizes(&self) -> Vec<(u64, u64, u64)> {
        let sizes: Vec<u64> = self.lock_state().info.ledgers.iter().map(|l| l.size).collect();
        self.ledgers().into_iter().zip(sizes).map(|((id, entries), size)| (id, entries, size)).collect()
    }

    /// Ledgers, entries and bytes stored now.
    pub fn storage_stats(&self) -> StorageStats {
        let ledgers = self.ledgers();
        let size_bytes = self.lock_state().info.ledgers.iter().map(|l| l.size).sum();
        StorageStats {
            ledgers: ledgers.len() as u64,
            entries: ledgers.iter().map(|(_, entries)| entries).sum(),
            size_bytes,
        }
    }

    /// The confirmed entries now, for cursor arithmetic without holding the ledger's lock.
    pub fn positions(&self) -> LedgerPositions {
        LedgerPositions { ledgers: self.ledgers() }
    }

    /// The first confirmed position after `after` (`None`: from the very start), if any.
    pub fn next_position(&self, after: Option<Position>) -> Option<Position> {
        self.positions().next_position(after)
    }

    /// The confirmed entry just before `position` (`None`: `position` is the first entry, or
    /// before it). Seeks and readers start after this, so that `position` itself is delivered.
    pub fn position_before(&self, position: Position) -> Option<Position> {
        let ledgers = self.ledgers();
        if position.entry_id > 0 && ledgers.iter().any(|(id, _)| *id == position.ledger_id) {
            return Some(Position::new(position.ledger_id, position.entry_id - 1));
        }
        ledgers
            .into_iter()
            .rfind(|(id, entries)| *id < position.ledger_id && *entries > 0)
            .map(|(id, entries)| Position::new(id, entries - 1))
    }

    /// Number of confirmed entries after `after` (the backlog of a cursor there).
    pub fn entries_after(&self, after: Option<Position>) -> u64 {
        let Some(last) = self.last_confirmed() else { return 0 };
        self.ledgers()
            .into_iter()
            .map(|(ledger_id, entries)| {
                let entries = if ledger_id == last.ledger_id { entries.min(last.entry_id + 1) } else { entries };
                match after {
                    None => entries,
                    Some(a) if ledger_id < a.ledger_id => 0,
                    Some(a) if ledger_id == a.ledger_id => entries.saturating_sub(a.entry_id + 1),
                    Some(_) => entries,
                }
            })
            .sum()
    }

    /// Bytes of the entries after `after` (`None`: all), estimated for the ledger holding
    /// `after` from its average entry size (Pulsar estimates backlog size the same way).
    pub fn bytes_after(&self, after: Option<Position>) -> u64 {
        let sizes: Vec<(u64, u64, u64)> = {
            let state = self.lock_state();
            state.info.ledgers.iter().map(|l| (l.ledger_id, l.entries, l.size)).collect()
        };
        let counts = self.ledgers();
        sizes
            .into_iter()
            .zip(counts)
            .map(|((ledger_id, _, size), (_, entries))| match after {
                None => size,
                Some(a) if ledger_id < a.ledger_id => 0,
                Some(a) if ledger_id == a.ledger_id && entries > 0 => {
                    let left = entries.saturating_sub(a.entry_id + 1);
                    (u128::from(size) * u128::from(left) / u128::from(entries)) as u64
                }
                Some(a) if ledger_id == a.ledger_id => 0,
                Some(_) => size,
            })
            .sum()
    }

    /// The mark-delete position, at or after `after`, that leaves at most `limit` bytes after
    /// it by the estimate of [`ManagedLedger::bytes_after`] (backlog eviction): whole ledgers
    /// counted from the newest, then entries of the one that does not fit whole.
    pub fn keeping_at_most(&self, after: Option<Position>, limit: u64) -> Option<Position> {
        let sizes: Vec<(u64, u64)> = {
            let state = self.lock_state();
            state.info.ledgers.iter().map(|l| (l.ledger_id, l.size)).collect()
        };
        let mut kept = 0u64;
        for ((ledger_id, size), (_, entries)) in sizes.into_iter().zip(self.ledgers()).rev() {
            if entries == 0 {
                continue;
            }
            if kept + size <= limit {
                kept += size;
                continue;
            }
            let keep = (u128::from(limit - kept) * u128::from(entries) / u128::from(size.max(1))) as u64;
            return after.max(Some(Position::new(ledger_id, entries - keep.min(entries) - 1)));
        }
        after
    }

    /// Unacknowledged entries of a cursor state: those after its mark-delete position up to
    /// the last confirmed one, less the ones acknowledged individually.
    pub fn backlog(&self, state: &CursorState) -> u64 {
        state.backlog(self.entries_after(state.mark_delete), self.last_confirmed())
    }

    /// Opens the durable cursor `name`, creating it with `initial_mark_delete` if it is new.
    pub async fn open_cursor(
        &self,
        name: &str,
        initial_mark_delete: Option<Position>,
    ) -> Result<Arc<ManagedCursor>, BrokerError> {
        if let Some(found) = self.cursors.lock().get(name) {
            return Ok(found.clone());
        }
        let opened = ManagedCursor::open_or_create(
            &self.name,
            name,
            &self.bookies,
            self.ledger_config,
            self.config.cursor_max_entries_per_ledger,
            initial_mark_delete,
        )
        .await?;
        let mut cursors = self.cursors.lock();
        Ok(cursors.entry(name.to_owned()).or_insert(opened).clone())
    }

    /// Every durable cursor, by name.
    pub fn cursors(&self) -> Vec<(String, Arc<ManagedCursor>)> {
        self.cursors.lock().iter().map(|(n, c)| (n.clone(), c.clone())).collect()
    }

    /// Removes a cursor for good: its state changes stop, its ledger and key are deleted.
    pub async fn delete_cursor(&self, name: &str) -> Result<(), BrokerError> {
        let removed = self.cursors.lock().remove(name);
        if let Some(cursor) = removed {
            cursor.delete(&self.bookies).await?;
        }
        Ok(())
    }

    /// The slowest persisted mark-delete position over every cursor: `None` when there is no
    /// cursor, `Some(None)` when one of them still needs the log from its very start.
    fn slowest_mark_delete(&self) -> Option<Option<Position>> {
        self.cursors.lock().values().map(|c| c.persisted_mark_delete()).min()
    }

    /// Sets the retention of a namespace or topic policy (none: the configured default).
    pub fn set_retention(&self, retention: Option<Retention>) {
        *self.retention.lock() = retention;
    }

    /// The retention in force.
    pub fn retention(&self) -> Retention {
        self.retention.lock().unwrap_or(self.config.retention)
    }

    /// Removes closed ledgers that every cursor has consumed and retention no longer keeps:
    /// first from the stored list (CAS), then from the bookies. Returns the removed ids.
    pub async fn trim(&self) -> Result<Vec<u64>, BrokerError> {
        let _rolling = self.rolling.lock().await;
        let slowest = self.slowest_mark_delete();
        let retention = self.retention();
        let (info, version, removed) = {
            let state = self.lock_state();
            let now = now_ms();
            let total: u64 = state.info.ledgers.iter().map(|l| l.size).sum();
            let mut removed_size = 0u64;
            let mut removed = Vec::new();
            for l in &state.info.ledgers {
                if !l.closed || l.ledger_id == state.writer.ledger_id().0 {
                    break;
                }
                let consumed = match slowest {
                    None => true,
                    Some(None) => l.entries == 0,
                    Some(Some(mark)) => {
                        l.ledger_id < mark.ledger_id
                            || (l.ledger_id == mark.ledger_id && mark.entry_id + 1 >= l.entries)
                    }
                };
                if !consumed {
                    break;
                }
                let expired =
                    retention.time.is_some_and(|keep| now.saturating_sub(l.closed_at_ms) >= keep.as_millis() as u64);
                let newer_size = total - removed_size - l.size;
                let beyond_size = retention.size_bytes.is_some_and(|keep| newer_size >= keep);
                if !(l.entries == 0 || expired || beyond_size) {
                    break;
                }
                removed_size += l.size;
                removed.push(l.ledger_id);
            }
            if removed.is_empty() {
                return Ok(removed);
            }
            let mut info = state.info.clone();
            info.ledgers.retain(|l| !removed.contains(&l.ledger_id));
            (info, state.version, removed)
        };
        let new_version =
            self.bookies.meta().put(&info_path(&self.name), info.encode_to_vec(), Expected::Version(version)).await?;
        {
            let mut state = self.lock_state();
            state.info.ledgers.retain(|l| !removed.contains(&l.ledger_id));
            state.version = new_version;
        }
        {
            let mut cache = self.ledger_cache.lock();
            for ledger_id in &removed {
                cache.remove(ledger_id);
            }
        }
        if let Some(last_removed) = removed.iter().max() {
            self.entries.evict_before(Position::new(last_removed + 1, 0));
        }
        for ledger_id in &removed {
            if let Err(error) = ledger::admin::delete_ledger(&self.bookies, LedgerId(*ledger_id)).await {
                warn!(managed_ledger = %self.name, ledger_id, %error, "trimmed ledger left on the bookies");
            }
        }
        info!(managed_ledger = %self.name, ?removed, "trimmed consumed ledgers");
        Ok(removed)
    }

    async fn ledger_metadata(&self, ledger_id: u64) -> Result<Arc<ledger::metadata::Ledger>, BrokerError> {
        if let Some(found) = self.ledger_cache.lock().get(&ledger_id) {
            return Ok(found.clone());
        }
        // The ledger being written: its writer knows its fragments, which ensemble changes
        // extend while it is open.
        let writer = self.state.lock().writer.clone();
        if writer.ledger_id() == LedgerId(ledger_id) {
            return Ok(writer.metadata());
        }
        let (metadata, _) = ledger::metadata::read(self.bookies.meta().as_ref(), LedgerId(ledger_id))
            .await?
            .ok_or(BrokerError::Storage(BookieError::NoSuchLedger { ledger_id }))?;
        let metadata = Arc::new(metadata);
        // Only a closed ledger's metadata never changes again.
        if metadata.is_closed() {
            self.ledger_cache.lock().insert(ledger_id, metadata.clone());
        }
        Ok(metadata)
    }

    /// A reader of this managed ledger's entry cache (a subscription's dispatcher): while
    /// it says where it reads, entries written are cached for it.
    pub fn cache_reader(&self) -> CacheReader {
        self.entries.reader()
    }

    /// Reads confirmed entries starting at `from`, all within `from`'s ledger, at most
    /// `max_entries` of them: from the entry cache when it holds `from`, else from the
    /// bookies (waiting for a read-ahead that is loading `from`). A read from the bookies
    /// caches what it read and starts a read-ahead of what follows, spread over the ledger's
    /// copies, so a reader catching up finds its next batch in memory.
    pub async fn read_entries(&self, from: Position, max_entries: u32) -> Result<Vec<(Position, Bytes)>, BrokerError> {
        let Some(end) = self.readable_end(from) else { return Ok(Vec::new()) };
        let max_entries = max_entries.clamp(1, MAX_READ_ENTRIES);
        let cached = self.entries.get_run(from, end, max_entries, MAX_READ_BYTES);
        if let Some((last, _)) = cached.last() {
            // Catching up through read-ahead entries: load the next ones before they are asked.
            if last.entry_id < end && !self.entries.contains(Position::new(last.ledger_id, last.entry_id + 1)) {
                let metadata = self.ledger_metadata(from.ledger_id).await?;
                self.read_ahead(&metadata, last.entry_id + 1, end);
            }
            return Ok(cached);
        }
        if let Some(loading) = self.entries.loading(from) {
            let loaded = loading.notified();
            if self.entries.loading(from).is_some() {
                loaded.await;
            }
            let cached = self.entries.get_run(from, end, max_entries, MAX_READ_BYTES);
            if !cached.is_empty() {
                return Ok(cached);
            }
        }
        let metadata = self.ledger_metadata(from.ledger_id).await?;
        let entries = ledger::read_entries(
            &self.bookies,
            &metadata,
            EntryId(from.entry_id),
            EntryId(end),
            max_entries,
            MAX_READ_BYTES,
        )
        .await?;
        let entries: Vec<(Position, Bytes)> =
            entries.into_iter().map(|(entry_id, data)| (Position::new(from.ledger_id, entry_id.0), data)).collect();
        self.entries.insert_all(entries.iter().map(|(position, data)| (*position, data)));
        if let Some((last, _)) = entries.last() {
            self.read_ahead(&metadata, last.entry_id + 1, end);
        }
        Ok(entries)
    }

    /// The last entry readable in `from`'s ledger, if `from` is readable.
    fn readable_end(&self, from: Position) -> Option<u64> {
        let last = self.last_confirmed()?;
        if from > last {
            return None;
        }
        let entries = self.ledgers().into_iter().find(|(id, _)| *id == from.ledger_id).map(|(_, entries)| entries)?;
        let ledger_end = entries.checked_sub(1)?;
        let end = if from.ledger_id == last.ledger_id { last.entry_id.min(ledger_end) } else { ledger_end };
        (from.entry_id <= end).then_some(end)
    }

    /// Loads `first..` (up to [`READ_AHEAD_ENTRIES`], at most `end`) into the entry cache in
    /// the background, in one range per copy of the ledger read at once, unless a read-ahead
    /// is already loading or nobody reads.
    fn read_ahead(&self, metadata: &Arc<ledger::metadata::Ledger>, first: u64, end: u64) {
        if first > end || self.entries.contains(Position::new(metadata.id().0, first)) {
            return;
        }
        let ledger_id = metadata.id().0;
        let last = end.min(first + u64::from(READ_AHEAD_ENTRIES) - 1);
        if self.entries.start_loading(Position::new(ledger_id, first), Position::new(ledger_id, last)).is_none() {
            return;
        }
        let (bookies, metadata, cache) = (self.bookies.clone(), metadata.clone(), self.entries.clone());
        tokio::spawn(async move {
            let read = ledger::read_entries_spread(
                &bookies,
                &metadata,
                EntryId(first),
                EntryId(last),
                READ_AHEAD_RUN,
                MAX_READ_BYTES,
            )
            .await;
            match read {
                Ok(entries) => {
                    cache.insert_all(entries.iter().map(|(id, data)| (Position::new(ledger_id, id.0), data)))
                }
                Err(error) => tracing::debug!(ledger_id, first, %error, "read-ahead failed; readers read themselves"),
            }
            cache.done_loading();
        });
    }

    /// Closes the cursors and the current ledger cleanly, so that the next owner need not
    /// recover them.
    /// Whether the managed ledger was terminated (no more adds, ever).
    pub fn is_terminated(&self) -> bool {
        self.lock_state().info.terminated
    }

    /// Terminates the managed ledger (Pulsar's topic terminate): adds are refused from now on,
    /// those in flight complete, the current ledger is closed and the record stored as
    /// terminated. Answers the last position. Terminating again answers the same.
    pub async fn terminate(&self) -> Result<Option<Position>, BrokerError> {
        let _rolling = self.rolling.lock().await;
        let (writer, writer_closed) = {
            let mut state = self.lock_state();
            if state.info.terminated {
                drop(state);
                return Ok(self.last_confirmed());
            }
            state.terminating = true;
            (state.writer.clone(), state.writer_closed)
        };
        let closed = if writer_closed { None } else { Some(writer.close().await?) };
        let (info, version) = {
            let mut state = self.lock_state();
            if let Some(last) = closed {
                state.writer_closed = true;
                if let Some(current) = state.info.ledgers.iter_mut().find(|l| l.ledger_id == writer.ledger_id().0) {
                    current.closed = true;
                    current.entries = (last + 1).max(0) as u64;
                    current.closed_at_ms = now_ms();
                }
            }
            state.info.terminated = true;
            (state.info.clone(), state.version)
        };
        let version =
            self.bookies.meta().put(&info_path(&self.name), info.encode_to_vec(), Expected::Version(version)).await?;
        self.lock_state().version = version;
        info!(managed_ledger = %self.name, last = ?self.last_confirmed(), "terminated");
        Ok(self.last_confirmed())
    }

    pub async fn close(&self) -> Result<(), BrokerError> {
        self.stop.cancel();
        self.entries.close();
        for (_, cursor) in self.cursors() {
            cursor.close().await;
        }
        let _rolling = self.rolling.lock().await;
        let (writer, already_closed) = {
            let mut state = self.lock_state();
            state.closed = true;
            (state.writer.clone(), state.writer_closed)
        };
        if already_closed {
            return Ok(());
        }
        let last = writer.close().await?;
        let (info, version) = {
            let mut state = self.lock_state();
            state.writer_closed = true;
            if let Some(current) = state.info.ledgers.iter_mut().find(|l| l.ledger_id == writer.ledger_id().0) {
                current.closed = true;
                current.entries = (last + 1).max(0) as u64;
                current.closed_at_ms = now_ms();
            }
            (state.info.clone(), state.version)
        };
        let version =
            self.bookies.meta().put(&info_path(&self.name), info.encode_to_vec(), Expected::Version(version)).await?;
        self.lock_state().version = version;
        Ok(())
    }
}

/// Deletes a managed ledger for good (a deleted topic) without opening it: every cursor
/// (its ledger and key), every ledger (bookies, then metadata), the ledger list. The topic must
/// be closed first. A delete cut short can be repeated: each step skips what is gone.
pub async fn delete_stored(name: &str, bookies: &Bookies) -> Result<(), BrokerError> {
    let meta = bookies.meta().clone();
    let cursors_path = cursor::cursors_path(name);
    for cursor_name in meta.list_children(&cursors_path).await? {
        cursor::delete_stored(bookies, &format!("{cursors_path}/{cursor_name}")).await?;
    }
    let path = info_path(name);
    if let Some(found) = meta.get(&path).await? {
        let info = ManagedLedgerInfo::decode(&found.value[..])
            .map_err(|error| BrokerError::Corrupt { what: path.clone(), reason: error.to_string() })?;
        for ledger in info.ledgers {
            ledger::admin::delete_ledger(bookies, LedgerId(ledger.ledger_id)).await?;
        }
        meta.delete(&path, Expected::Any).await?;
    }
    info!(managed_ledger = %name, "managed ledger deleted");
    Ok(())
}

/// Moves the last confirmed position forward to `position` (never back).
fn raise(confirmed: &watch::Sender<Option<Position>>, position: Position) {
    confirmed.send_if_modified(|current| {
        if current.is_none_or(|c| c < position) {
            *current = Some(position);
            true
        } else {
            false
        }
    });
}

impl PositionView for ManagedLedger {
    fn next_position(&self, after: Option<Position>) -> Option<Position> {
        ManagedLedger::next_position(self, after)
    }

    fn contains(&self, position: Position) -> bool {
        self.positions().contains(position)
    }
}
