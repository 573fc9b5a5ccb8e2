//! Creating a ledger and writing it: striped quorum writes, in-order confirmation, ensemble
//! changes, fencing.
//!
//! A ledger has an ensemble of E bookies; entry `e` goes to its write set, the Qw bookies at
//! ensemble indexes `(e + i) mod E` for `i in 0..Qw`, and is acknowledged once Qa of them
//! answered OK **and** every lower entry is acknowledged: callers see confirmations strictly in
//! entry order. Each add carries the writer's last-add-confirmed, which readers and recovery
//! learn from the bookies.
//!
//! Concurrency: one task owns the ledger's write state ([`WriterTask`]); [`LedgerWriter`] is
//! the handle that assigns entry ids (in call order, under an async lock held while the add is
//! queued to the task, so the task sees adds in id order) and talks to the task over a bounded
//! command channel ([`MAX_PENDING_ADDS`]; a full channel makes `add` wait).
//!
//! Failures: a bookie that answers an error other than FENCED, loses its connection, or leaves
//! the oldest pending entry unanswered for [`ClientOptions::add_timeout`] is replaced (an
//! ensemble change): a bookie outside the ensemble is chosen, the ledger metadata gets a new
//! fragment starting at the first unacknowledged entry (compare-and-set; losing it to a
//! recovery means the writer is fenced out), and the unacknowledged entries of that index are
//! sent to the replacement. Acks the failed bookie gave for entries below the new fragment stay
//! counted (those entries are already acknowledged). No replacement (every registered bookie
//! is in the ensemble or failed): if every write set still has Qa bookies left, the writer goes
//! on without the failed one, as BookKeeper's delayed ensemble change does (the fragment keeps
//! naming it, its entries have Qa copies on the others, and the next failure or timeout tries a
//! replacement again); otherwise the writer stops. Replacements and new ensembles come from
//! [`placement`] (other hosts first). A lost metadata compare-and-set is re-read: while the
//! ledger is OPEN and only earlier fragments changed (auto-recovery re-replicated one), the
//! writer rebases and retries; a recovery (IN_RECOVERY, CLOSED) fences it out. A FENCED answer: the writer stops. A stopped writer fails every pending add and never reports them
//! written; only recovery decides where its ledger ends.

use magnetar_proto::clock::now_ms;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use magnetar_meta::{Expected, MetaError, Version};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use super::connection::{Bookies, ClientOptions};
use super::metadata::{self, write_set, Ledger, LedgerConfig};
use super::placement;
use super::rpc::{AddRequest, BookieRpc};
use crate::error::BookieError;
use crate::ids::{EntryId, LedgerId};

/// Called with each confirmed entry id, in order.
pub type ConfirmHook = Arc<dyn Fn(u64) + Send + Sync>;

/// Adds queued to the writer task before new adds wait.
pub const MAX_PENDING_ADDS: usize = 8192;

/// Bytes of master key of a new ledger.
const MASTER_KEY_BYTES: usize = 16;

/// Checks E >= Qw >= Qa >= 1.
pub fn validate_config(config: &LedgerConfig) -> Result<(), BookieError> {
    config.check().map_err(|reason| BookieError::InvalidConfig { reason })
}

enum Command {
    Add { entry_id: u64, payload: Bytes, reply: oneshot::Sender<Result<u64, BookieError>> },
    Close { reply: oneshot::Sender<Result<i64, BookieError>> },
}

/// The handle to an open ledger.
pub struct LedgerWriter {
    ledger_id: LedgerId,
    /// Next entry id; held while the add is queued so the task receives adds in id order.
    next_entry_id: tokio::sync::Mutex<u64>,
    closed: Mutex<bool>,
    /// Highest entry such that it and all below are acknowledged (-1: none).
    last_add_confirmed: Arc<AtomicI64>,
    commands: mpsc::Sender<Command>,
    failure: Arc<Mutex<Option<String>>>,
    /// The ledger's metadata as its writer last stored it.
    metadata: Arc<Mutex<Arc<Ledger>>>,
}

impl LedgerWriter {
    /// Creates a ledger on bookies chosen among the registered ones and opens it for writing.
    ///
    /// `on_confirm` runs on the writer task for each entry, in order, once it is confirmed.
    pub async fn create(
        bookies: &Bookies,
        config: LedgerConfig,
        on_confirm: Option<ConfirmHook>,
    ) -> Result<Arc<Self>, BookieError> {
        validate_config(&config)?;
        let candidates = bookies.candidates().await?;
        let needed = config.ensemble_size as usize;
        // Spread ledgers over the bookies: a seeded random choice of `needed` of them, on
        // different hosts where possible.
        let placement =
            placement::choose(&candidates, needed, &BTreeSet::new(), &BTreeSet::new(), &mut || bookies.random())
                .ok_or(BookieError::NotEnoughBookies { needed, available: candidates.len() })?;
        if !placement.shared_hosts.is_empty() {
            info!(
                bookies = ?placement.chosen,
                shared_hosts = ?placement.shared_hosts,
                "new ensemble puts two copies on one host: no bookie on another host is registered"
            );
        }
        let chosen = placement.chosen;
        let ledger_id =
            LedgerId(magnetar_meta::sequence::next(bookies.meta().as_ref(), crate::LEDGER_ID_SEQUENCE).await?);
        let mut key = Vec::with_capacity(MASTER_KEY_BYTES);
        while key.len() < MASTER_KEY_BYTES {
            key.extend_from_slice(&bookies.random().to_le_bytes());
        }
        key.truncate(MASTER_KEY_BYTES);
        let metadata = Ledger::new(ledger_id, config, chosen.clone(), Bytes::from(key), now_ms())?;
        let version = metadata::write(bookies.meta().as_ref(), &metadata, Expected::Absent).await?;
        let mut ensemble = Vec::with_capacity(needed);
        for bookie_id in &chosen {
            // A bookie that cannot be dialed now is replaced on first use.
            ensemble.push(bookies.get(bookie_id).await.ok());
        }
        Ok(Self::start(bookies.clone(), metadata, version, chosen, ensemble, on_confirm))
    }

    fn start(
        bookies: Bookies,
        metadata: Ledger,
        version: Version,
        ensemble_ids: Vec<String>,
        ensemble: Vec<Option<Arc<dyn BookieRpc>>>,
        on_confirm: Option<ConfirmHook>,
    ) -> Arc<Self> {
        let (commands, queue) = mpsc::channel::<Command>(MAX_PENDING_ADDS);
        let last_add_confirmed = Arc::new(AtomicI64::new(-1));
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let ledger_id = metadata.id();
        let published = Arc::new(Mutex::new(Arc::new(metadata.clone())));
        let task = WriterTask {
            ledger_id,
            master_key: metadata.master_key().clone(),
            ensemble_size: metadata.ensemble_size(),
            write_quorum: metadata.write_quorum(),
            ack_quorum: metadata.ack_quorum(),
            options: *bookies.options(),
            bookies,
            metadata,
            version,
            ensemble_ids,
            ensemble,
            replaced: BTreeSet::new(),
            down: BTreeSet::new(),
            pending: BTreeMap::new(),
            answers: FuturesUnordered::new(),
            lac: -1,
            length: 0,
            stopped: None,
            last_add_confirmed: last_add_confirmed.clone(),
            failure: failure.clone(),
            on_confirm,
            published: published.clone(),
        };
        tokio::spawn(task.run(queue));
        Arc::new(LedgerWriter {
            ledger_id,
            next_entry_id: tokio::sync::Mutex::new(0),
            closed: Mutex::new(false),
            last_add_confirmed,
            commands,
            failure,
            metadata: published,
        })
    }

    pub fn ledger_id(&self) -> LedgerId {
        self.ledger_id
    }

    pub fn last_add_confirmed(&self) -> i64 {
        self.last_add_confirmed.load(Ordering::SeqCst)
    }

    /// The ledger's metadata as this writer last stored it: reads of the open ledger use it,
    /// since an ensemble change adds a fragment while the ledger is written.
    pub fn metadata(&self) -> Arc<Ledger> {
        self.metadata.lock().clone()
    }

    /// Why the writer stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    /// Sends an entry; the receiver answers its entry id once it and every earlier entry are
    /// acknowledged by an ack quorum, or the error that stopped the writer. Entry ids follow
    /// the order of calls.
    pub async fn add(&self, payload: Bytes) -> Result<oneshot::Receiver<Result<u64, BookieError>>, BookieError> {
        Ok(self.place(payload).await?.1)
    }

    /// As [`LedgerWriter::add`], also returning the entry id the entry was given.
    pub async fn place(
        &self,
        payload: Bytes,
    ) -> Result<(u64, oneshot::Receiver<Result<u64, BookieError>>), BookieError> {
        let mut next_entry_id = self.next_entry_id.lock().await;
        if *self.closed.lock() {
            return Err(BookieError::LedgerClosed { ledger_id: self.ledger_id.0 });
        }
        if let Some(reason) = self.failure() {
            return Err(BookieError::WriterFailed { ledger_id: self.ledger_id.0, reason });
        }
        let entry_id = *next_entry_id;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Add { entry_id, payload, reply })
            .await
            .map_err(|_| BookieError::Stopped { what: "ledger writer task" })?;
        *next_entry_id += 1;
        Ok((entry_id, answer))
    }

    /// Waits for every add sent so far, then closes the ledger in metadata at the last
    /// confirmed entry. Returns the last entry id (-1 for an empty ledger).
    pub async fn close(&self) -> Result<i64, BookieError> {
        let _adds = self.next_entry_id.lock().await;
        *self.closed.lock() = true;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Close { reply })
            .await
            .map_err(|_| BookieError::Stopped { what: "ledger writer task" })?;
        answer.await.map_err(|_| BookieError::Stopped { what: "ledger writer task" })?
    }
}

/// An entry sent and not yet acknowledged to the caller.
struct PendingEntry {
    payload: Bytes,
    /// Ensemble indexes that answered OK for this entry (in the current ensemble).
    acked: BTreeSet<usize>,
    reply: oneshot::Sender<Result<u64, BookieError>>,
    /// When the entry was last sent to some bookie of its write set.
    sent_at: Instant,
}

/// One bookie's answer to one add.
struct Answer {
    entry_id: u64,
    index: usize,
    bookie_id: String,
    result: Result<(), BookieError>,
}

type AnswerFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>;

/// Owns the write state of one ledger.
struct WriterTask {
    ledger_id: LedgerId,
    master_key: Bytes,
    ensemble_size: usize,
    write_quorum: usize,
    ack_quorum: usize,
    options: ClientOptions,
    bookies: Bookies,
    /// The metadata as last written by this writer, and its version.
    metadata: Ledger,
    version: Version,
    /// The current ensemble, by index; `None` for a bookie that could not be dialed.
    ensemble_ids: Vec<String>,
    ensemble: Vec<Option<Arc<dyn BookieRpc>>>,
    /// Bookies this writer replaced: never chosen again for this ledger.
    replaced: BTreeSet<String>,
    /// Ensemble indexes whose bookie failed with no replacement available; writes skip them
    /// while every write set keeps Qa others.
    down: BTreeSet<usize>,
    pending: BTreeMap<u64, PendingEntry>,
    answers: FuturesUnordered<AnswerFuture>,
    lac: i64,
    /// Bytes of the acknowledged entries.
    length: u64,
    /// Why the writer stopped; the error pending adds get.
    stopped: Option<BookieError>,
    last_add_confirmed: Arc<AtomicI64>,
    failure: Arc<Mutex<Option<String>>>,
    on_confirm: Option<ConfirmHook>,
    /// The metadata as readers of this ledger should see it (fragments after ensemble changes).
    published: Arc<Mutex<Arc<Ledger>>>,
}

impl WriterTask {
    /// Takes `metadata` as the ledger's current metadata and shows it to readers.
    fn set_metadata(&mut self, metadata: Ledger) {
        *self.published.lock() = Arc::new(metadata.clone());
        self.metadata = metadata;
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut closing: Option<oneshot::Sender<Result<i64, BookieError>>> = None;
        let mut handle_gone = false;
        loop {
            if handle_gone && (self.pending.is_empty() || self.stopped.is_some()) {
                return;
            }
            if let Some(reply) = closing.take() {
                if self.pending.is_empty() || self.stopped.is_some() {
                    let _ = reply.send(self.close().await);
                    // Later commands (none but stray adds) are refused by the handle's flag.
                    continue;
                }
                closing = Some(reply);
            }
            let deadline = self.pending.values().next().map(|entry| entry.sent_at + self.options.add_timeout);
            let mut failed: Vec<(usize, String, BookieError)> = Vec::new();
            tokio::select! {
                biased;
                Some(answer) = self.answers.next(), if !self.answers.is_empty() => {
                    if let Some(failure) = self.on_answer(answer) {
                        failed.push(failure);
                    }
                }
                command = commands.recv(), if !handle_gone => match command {
                    Some(Command::Add { entry_id, payload, reply }) => {
                        failed.extend(self.on_add(entry_id, payload, reply).await);
                    }
                    Some(Command::Close { reply }) => closing = Some(reply),
                    // The handle is gone: finish what is in flight (bounded by the add
                    // timeout), then stop.
                    None => handle_gone = true,
                },
                _ = sleep_until_some(deadline), if deadline.is_some() => {
                    failed.extend(self.timed_out());
                }
            }
            self.handle_failures(failed).await;
            self.complete();
            self.fail_pending();
        }
    }

    fn stop(&mut self, error: BookieError) {
        if self.stopped.is_none() {
            warn!(ledger_id = %self.ledger_id, %error, "ledger writer stopped");
            *self.failure.lock() = Some(error.to_string());
            self.stopped = Some(error);
        }
    }

    /// Once stopped, every pending add fails.
    fn fail_pending(&mut self) {
        let Some(error) = &self.stopped else { return };
        let reason = error.to_string();
        let fenced = matches!(error, BookieError::Fenced { .. });
        for (_, entry) in std::mem::take(&mut self.pending) {
            let error = if fenced {
                BookieError::Fenced { ledger_id: self.ledger_id.0 }
            } else {
                BookieError::WriterFailed { ledger_id: self.ledger_id.0, reason: reason.clone() }
            };
            let _ = entry.reply.send(Err(error));
        }
    }

    async fn on_add(
        &mut self,
        entry_id: u64,
        payload: Bytes,
        reply: oneshot::Sender<Result<u64, BookieError>>,
    ) -> Vec<(usize, String, BookieError)> {
        if self.stopped.is_some() {
            let reason = self.failure.lock().clone().unwrap_or_default();
            let _ = reply.send(Err(BookieError::WriterFailed { ledger_id: self.ledger_id.0, reason }));
            return Vec::new();
        }
        self.pending.insert(
            entry_id,
            PendingEntry { payload: payload.clone(), acked: BTreeSet::new(), reply, sent_at: Instant::now() },
        );
        let mut failed = Vec::new();
        for index in write_set(EntryId(entry_id), self.ensemble_size, self.write_quorum).collect::<Vec<_>>() {
            if let Err(failure) = self.send(entry_id, index, payload.clone()).await {
                failed.push(failure);
            }
        }
        failed
    }

    /// Sends one entry to the bookie at `index`; its answer arrives through `answers`.
    async fn send(&mut self, entry_id: u64, index: usize, payload: Bytes) -> Result<(), (usize, String, BookieError)> {
        if self.down.contains(&index) {
            return Ok(());
        }
        let bookie_id = self.ensemble_ids[index].clone();
        let Some(bookie) = self.ensemble[index].clone() else {
            return Err((index, bookie_id.clone(), BookieError::UnknownBookie { bookie: bookie_id }));
        };
        let add = AddRequest {
            ledger_id: self.ledger_id.0,
            entry_id,
            master_key: self.master_key.clone(),
            last_add_confirmed: self.lac,
            payload,
            recovery: false,
        };
        let Ok(answer) = tokio::time::timeout(self.options.add_timeout, bookie.add(add)).await else {
            return Err((index, bookie_id.clone(), timeout_error(&bookie_id, entry_id)));
        };
        let answer_bookie = bookie_id.clone();
        self.answers.push(Box::pin(async move {
            let result =
                answer.await.unwrap_or_else(|_| Err(BookieError::Stopped { what: "bookie connection (answer lost)" }));
            Answer { entry_id, index, bookie_id: answer_bookie, result }
        }));
        Ok(())
    }

    /// Records one answer; returns the failure it reports, if any.
    fn on_answer(&mut self, answer: Answer) -> Option<(usize, String, BookieError)> {
        if self.ensemble_ids.get(answer.index) != Some(&answer.bookie_id) {
            // From a bookie already replaced: its entries were sent again.
            return None;
        }
        match answer.result {
            Ok(()) => {
                if let Some(entry) = self.pending.get_mut(&answer.entry_id) {
                    entry.acked.insert(answer.index);
                }
                None
            }
            Err(BookieError::Fenced { .. }) => {
                self.stop(BookieError::Fenced { ledger_id: self.ledger_id.0 });
                None
            }
            Err(error) => Some((answer.index, answer.bookie_id, error)),
        }
    }

    /// The oldest pending entry waited too long: the bookies of its write set that have not
    /// answered count as failed.
    fn timed_out(&mut self) -> Vec<(usize, String, BookieError)> {
        let Some((&entry_id, entry)) = self.pending.iter_mut().next() else { return Vec::new() };
        // Restart the clock: the replacements get the entry now.
        entry.sent_at = Instant::now();
        write_set(EntryId(entry_id), self.ensemble_size, self.write_quorum)
            .filter(|index| !entry.acked.contains(index))
            .map(|index| {
                let bookie_id = self.ensemble_ids[index].clone();
                let error = timeout_error(&bookie_id, entry_id);
                (index, bookie_id, error)
            })
            .collect()
    }

    /// Replaces each failed bookie, one ensemble change at a time.
    async fn handle_failures(&mut self, mut failed: Vec<(usize, String, BookieError)>) {
        while let Some((index, bookie_id, error)) = failed.pop() {
            if self.stopped.is_some() {
                return;
            }
            if self.ensemble_ids[index] != bookie_id {
                continue; // already replaced
            }
            warn!(ledger_id = %self.ledger_id, bookie = %bookie_id, index, %error, "bookie failed, changing the ensemble");
            failed.extend(self.change_ensemble(index).await);
        }
    }

    /// Whether every write set keeps at least Qa bookies with `index` down too.
    fn can_go_on_without(&self, index: usize) -> bool {
        (0..self.ensemble_size as u64).all(|first| {
            let alive = write_set(EntryId(first), self.ensemble_size, self.write_quorum)
                .filter(|i| *i != index && !self.down.contains(i))
                .count();
            alive >= self.ack_quorum
        })
    }

    /// Replaces the bookie at `index`: a new fragment in metadata, then the unacknowledged
    /// entries of that index go to the replacement. Returns failures of the resends.
    async fn change_ensemble(&mut self, index: usize) -> Vec<(usize, String, BookieError)> {
        let failed_bookie = self.ensemble_ids[index].clone();
        self.replaced.insert(failed_bookie.clone());
        let replacement = loop {
            let candidates = match self.bookies.candidates().await {
                Ok(candidates) => candidates,
                Err(error) => {
                    self.stop(error);
                    return Vec::new();
                }
            };
            let excluded: BTreeSet<String> = self.ensemble_ids.iter().chain(&self.replaced).cloned().collect();
            let others: Vec<String> =
                self.ensemble_ids.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, id)| id.clone()).collect();
            let occupied = placement::hosts_of(&candidates, &others);
            let bookies = self.bookies.clone();
            let Some(choice) = placement::choose(&candidates, 1, &excluded, &occupied, &mut || bookies.random()) else {
                if self.can_go_on_without(index) {
                    if self.down.insert(index) {
                        warn!(
                            ledger_id = %self.ledger_id,
                            bookie = %failed_bookie,
                            "no replacement bookie: writing on to the rest of the ensemble (ack quorum still reachable)"
                        );
                    }
                    // Its failed bookie may come back; until a replacement exists it is not
                    // written to. (It stays out of `replaced` so it is not excluded later.)
                    self.replaced.remove(&failed_bookie);
                    return Vec::new();
                }
                self.stop(BookieError::NoReplacementBookie { ledger_id: self.ledger_id.0, bookie: failed_bookie });
                return Vec::new();
            };
            let chosen = choice.chosen[0].clone();
            if !choice.shared_hosts.is_empty() {
                info!(
                    ledger_id = %self.ledger_id,
                    replacement = %chosen,
                    shared_hosts = ?choice.shared_hosts,
                    "replacement shares a host with the ensemble: no bookie on another host is free"
                );
            }
            match self.bookies.get(&chosen).await {
                Ok(connection) => break (chosen, connection),
                Err(error) => {
                    warn!(ledger_id = %self.ledger_id, bookie = %chosen, %error, "replacement bookie unreachable");
                    self.replaced.insert(chosen);
                }
            }
        };
        let (replacement_id, connection) = replacement;
        let first_unacked = (self.lac + 1) as u64;
        let mut ensemble_ids = self.ensemble_ids.clone();
        ensemble_ids[index] = replacement_id.clone();
        if let Err(error) = self.write_fragment(EntryId(first_unacked), ensemble_ids.clone()).await {
            self.stop(error);
            return Vec::new();
        }
        info!(
            ledger_id = %self.ledger_id,
            failed = %failed_bookie,
            replacement = %replacement_id,
            first_entry_id = first_unacked,
            "ensemble changed"
        );
        self.ensemble_ids = ensemble_ids;
        self.ensemble[index] = Some(connection);
        self.down.remove(&index);
        // Entries from the new fragment on live on the replacement: the old bookie's acks for
        // them no longer count, and they are sent again.
        let mut resend = Vec::new();
        let now = Instant::now();
        for (&entry_id, entry) in self.pending.iter_mut() {
            if write_set(EntryId(entry_id), self.ensemble_size, self.write_quorum).any(|i| i == index) {
                entry.acked.remove(&index);
                entry.sent_at = now;
                resend.push((entry_id, entry.payload.clone()));
            }
        }
        let mut failed = Vec::new();
        for (entry_id, payload) in resend {
            if let Err(failure) = self.send(entry_id, index, payload).await {
                failed.push(failure);
                break;
            }
        }
        failed
    }

    /// Compare-and-sets the metadata with the ensemble `bookies` from `first_entry_id` on.
    async fn write_fragment(&mut self, first: EntryId, bookies: Vec<String>) -> Result<(), BookieError> {
        loop {
            let mut updated = self.metadata.clone();
            // Nothing acknowledged since the last change: that fragment is replaced.
            updated.change_ensemble(first, bookies.clone())?;
            match metadata::write(self.bookies.meta().as_ref(), &updated, Expected::Version(self.version)).await {
                Ok(version) => {
                    self.set_metadata(updated);
                    self.version = version;
                    return Ok(());
                }
                Err(BookieError::Meta(MetaError::BadVersion { .. })) => self.reread_open().await?,
                Err(error) => return Err(error),
            }
        }
    }

    /// After a lost compare-and-set: rebases on the stored metadata when the ledger is still
    /// OPEN and only earlier fragments changed (auto-recovery replaced a lost bookie in one);
    /// a recovery (IN_RECOVERY, CLOSED) fenced the writer out. A last fragment that is not
    /// this writer's means someone else writes the ledger: the writer stops.
    async fn reread_open(&mut self) -> Result<(), BookieError> {
        let (current, version) = metadata::read(self.bookies.meta().as_ref(), self.ledger_id)
            .await?
            .ok_or(BookieError::NoSuchLedger { ledger_id: self.ledger_id.0 })?;
        if !current.is_open() {
            return Err(BookieError::Fenced { ledger_id: self.ledger_id.0 });
        }
        if !only_earlier_fragments_differ(&self.metadata, &current) {
            return Err(BookieError::WriterFailed {
                ledger_id: self.ledger_id.0,
                reason: "the stored metadata changed the writer's own fragment".to_owned(),
            });
        }
        info!(ledger_id = %self.ledger_id, "ledger metadata changed in earlier fragments (re-replicated): rebased");
        self.set_metadata(current);
        self.version = version;
        Ok(())
    }

    /// Acknowledges entries in order while the oldest has its ack quorum.
    fn complete(&mut self) {
        if self.stopped.is_some() {
            return;
        }
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().acked.len() < self.ack_quorum {
                break;
            }
            let (entry_id, entry) = entry.remove_entry();
            self.lac = entry_id as i64;
            self.length += entry.payload.len() as u64;
            self.last_add_confirmed.store(self.lac, Ordering::SeqCst);
            if let Some(hook) = &self.on_confirm {
                hook(entry_id);
            }
            let _ = entry.reply.send(Ok(entry_id));
        }
    }

    /// Closes the ledger in metadata at the last acknowledged entry.
    async fn close(&mut self) -> Result<i64, BookieError> {
        if let Some(error) = &self.stopped {
            // The ensemble may hold entries this writer never confirmed: only recovery can
            // decide where the ledger ends.
            return Err(BookieError::WriterFailed { ledger_id: self.ledger_id.0, reason: error.to_string() });
        }
        if self.metadata.is_closed() {
            return Ok(EntryId::last_to_wire(self.metadata.last_entry()));
        }
        loop {
            let mut updated = self.metadata.clone();
            updated.close(EntryId::from_last(self.lac), self.length);
            match metadata::write(self.bookies.meta().as_ref(), &updated, Expected::Version(self.version)).await {
                Ok(version) => {
                    self.set_metadata(updated);
                    self.version = version;
                    return Ok(self.lac);
                }
                Err(BookieError::Meta(MetaError::BadVersion { .. })) => {
                    let (current, _) = metadata::read(self.bookies.meta().as_ref(), self.ledger_id)
                        .await?
                        .ok_or(BookieError::NoSuchLedger { ledger_id: self.ledger_id.0 })?;
                    if current.is_closed() && EntryId::last_to_wire(current.last_entry()) == self.lac {
                        self.set_metadata(current);
                        return Ok(self.lac);
                    }
                    if let Err(error) = self.reread_open().await {
                        let reason = error.to_string();
                        let fenced = matches!(error, BookieError::Fenced { .. });
                        self.stop(error);
                        return Err(if fenced {
                            BookieError::Fenced { ledger_id: self.ledger_id.0 }
                        } else {
                            BookieError::WriterFailed { ledger_id: self.ledger_id.0, reason }
                        });
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// Whether `stored` is `mine` with changes in earlier fragments only: same replication, same
/// fragment boundaries, and the same last fragment (the writer's own, which only it changes).
/// Auto-recovery's replacements of lost bookies in earlier fragments pass; anything else is
/// not the writer's to overwrite.
pub fn only_earlier_fragments_differ(mine: &Ledger, stored: &Ledger) -> bool {
    mine.id() == stored.id()
        && mine.master_key() == stored.master_key()
        && mine.quorum() == stored.quorum()
        && mine.fragments().len() == stored.fragments().len()
        && mine.fragments().iter().zip(stored.fragments()).all(|(a, b)| a.first == b.first)
        && mine.fragments().last() == stored.fragments().last()
}

fn timeout_error(bookie_id: &str, entry_id: u64) -> BookieError {
    BookieError::Timeout { bookie: bookie_id.to_owned(), what: format!("add of entry {entry_id}") }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_sets_stripe_over_the_ensemble() {
        assert_eq!(write_set(EntryId(0), 5, 3).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(write_set(EntryId(3), 5, 3).collect::<Vec<_>>(), vec![3, 4, 0]);
        assert_eq!(write_set(EntryId(7), 3, 3).collect::<Vec<_>>(), vec![1, 2, 0]);
    }

    #[test]
    fn a_writer_rebases_only_over_changes_to_earlier_fragments() {
        let bookies = |names: &[&str]| names.iter().map(|b| (*b).to_owned()).collect::<Vec<_>>();
        let config = LedgerConfig { ensemble_size: 3, write_quorum: 3, ack_quorum: 2 };
        let mut mine =
            Ledger::new(LedgerId(7), config, bookies(&["a", "b", "c"]), Bytes::from(vec![1; 16]), 0).expect("new");
        mine.change_ensemble(EntryId(10), bookies(&["a", "d", "c"])).expect("change");
        let mut re_replicated = mine.clone();
        re_replicated.replace_bookie(0, 1, "e".to_owned());
        assert!(only_earlier_fragments_differ(&mine, &re_replicated));
        let mut own_fragment_changed = mine.clone();
        own_fragment_changed.replace_bookie(1, 0, "e".to_owned());
        assert!(!only_earlier_fragments_differ(&mine, &own_fragment_changed));
        let mut fragment_added = mine.clone();
        fragment_added.change_ensemble(EntryId(20), bookies(&["e", "d", "c"])).expect("change");
        assert!(!only_earlier_fragments_differ(&mine, &fragment_added));
    }

    #[test]
    fn invalid_quorums_are_refused() {
        let config = |ensemble_size, write_quorum, ack_quorum| LedgerConfig { ensemble_size, write_quorum, ack_quorum };
        assert!(validate_config(&config(3, 3, 2)).is_ok());
        assert!(validate_config(&config(1, 1, 1)).is_ok());
        for bad in [config(2, 3, 2), config(3, 2, 3), config(3, 3, 0), config(0, 0, 0)] {
            let error = validate_config(&bad).expect_err("must be refused");
            assert!(matches!(error, BookieError::InvalidConfig { .. }), "{error}");
        }
    }
}
