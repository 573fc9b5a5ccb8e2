//! A durable cursor: how far a subscription has acknowledged (Pulsar's ManagedCursorImpl).
//!
//! State: a [`CursorState`] (mark-delete position, individually acknowledged ranges, batch-index
//! acks). While a subscription has the cursor open, the live state is the subscription's (it
//! changes under the subscription's lock) and the cursor only holds a weak link to it
//! ([`CursorSource`]); otherwise the cursor keeps its own copy. An ack marks the cursor dirty
//! (a generation number, no copy of the state); the cursor's persister task then encodes the
//! latest state once, as one [`CursorInfo`] entry, and appends it to the cursor's own ledger,
//! so a burst of acks costs one encode and one append.
//!
//! The metadata key ([`cursor_path`]) holds a snapshot: which ledger holds the cursor's state
//! changes, and the mark-delete position at the time it was written, to fall back on. It is
//! rewritten (CAS) only when the cursor switches ledgers and when it is closed. A cursor
//! switches to a new ledger on its first change after a reopen (the old ledger was closed by
//! recovery), after a write failure, and once its ledger holds `max_entries_per_ledger`
//! changes: the new ledger gets the full state as its first entry, the snapshot then names
//! it, and only then is the old ledger deleted, so a crash at any step leaves a snapshot that
//! names a ledger holding the latest persisted state.
//!
//! Reopening reads the last entry of the snapshot's ledger (recovering the ledger first: a
//! dead broker may have left it open), which restores exactly the persisted acks; a snapshot
//! without a ledger or an empty ledger gives the snapshot's own mark-delete position. After a
//! crash, at most the acks made since the last completed append are lost, and those messages
//! are delivered again (at-least-once), never skipped.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use magnetar_bookie::client::{self as ledger, Bookies, LedgerConfig, LedgerWriter};
use magnetar_bookie::{BookieError, LedgerId};
use magnetar_meta::{Expected, Version};
use magnetar_proto::clock::now_ms;
use magnetar_proto::records::CursorInfo;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::cursor_state::CursorState;
use super::{ManagedLedger, Position};
use crate::error::BrokerError;

/// Metadata key under which a managed ledger's cursors are stored, one child per cursor.
pub fn cursors_path(managed_ledger: &str) -> String {
    format!("/magnetar/cursors/{managed_ledger}")
}

pub fn cursor_path(managed_ledger: &str, subscription: &str) -> String {
    format!("/magnetar/cursors/{managed_ledger}/{subscription}")
}

/// Deletes a stored cursor that is not open (its topic is deleted): its ledger, then its key.
pub(crate) async fn delete_stored(bookies: &Bookies, path: &str) -> Result<(), BrokerError> {
    if let Some(found) = bookies.meta().get(path).await? {
        let snapshot = decode(path, &found.value)?;
        if snapshot.cursor_ledger_id != 0 {
            ledger::admin::delete_ledger(bookies, LedgerId(snapshot.cursor_ledger_id)).await?;
        }
        bookies.meta().delete(path, Expected::Any).await?;
    }
    Ok(())
}

/// Longest a flush waits for the store before giving up (the state stays queued).
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn decode(what: &str, bytes: &[u8]) -> Result<CursorInfo, BrokerError> {
    CursorInfo::decode(bytes).map_err(|error| BrokerError::Corrupt { what: what.to_owned(), reason: error.to_string() })
}

fn restore(what: &str, record: &CursorInfo) -> Result<CursorState, BrokerError> {
    CursorState::from_record(record).map_err(|reason| BrokerError::Corrupt { what: what.to_owned(), reason })
}

/// What a reopen found: the state and where it came from.
struct Recovered {
    state: CursorState,
    snapshot_version: Version,
    /// The (now closed) ledger the state was read from, to delete after the next switch.
    ledger_id: Option<u64>,
}

async fn recover_state(bookies: &Bookies, path: &str) -> Result<Option<Recovered>, BrokerError> {
    let Some(found) = bookies.meta().get(path).await? else { return Ok(None) };
    let snapshot = decode(path, &found.value)?;
    let fallback = restore(path, &snapshot)?;
    // Claims the cursor before reading its state: a previous owner that is still running (it
    // lost its session and has not stopped yet) fails its next snapshot write from now on, so
    // it cannot switch to a ledger of its own and persist acks this owner never sees. Its
    // appends to the current ledger end with the fence below. Found by the broker
    // simulation (seed 362: a zombie's ack persisted after the new owner read the cursor).
    // The claim's bytes differ from what the previous owner wrote (a newer time), so that
    // owner cannot take the claim for its own write that timed out (see `write_snapshot`).
    let mut claim = snapshot.clone();
    claim.updated_at_ms = now_ms().max(snapshot.updated_at_ms + 1);
    let claimed = bookies.meta().put(path, claim.encode_to_vec(), Expected::Version(found.version)).await?;
    let found = magnetar_meta::Versioned { value: found.value, version: claimed };
    if snapshot.cursor_ledger_id == 0 {
        return Ok(Some(Recovered { state: fallback, snapshot_version: found.version, ledger_id: None }));
    }
    let ledger_id = snapshot.cursor_ledger_id;
    let closed = match ledger::recover_ledger(bookies, LedgerId(ledger_id)).await {
        Ok(closed) => closed,
        Err(BookieError::NoSuchLedger { .. }) => {
            warn!(cursor = path, ledger_id, "cursor ledger is gone; using the snapshot's mark-delete position");
            return Ok(Some(Recovered { state: fallback, snapshot_version: found.version, ledger_id: None }));
        }
        Err(error) => return Err(error.into()),
    };
    let Some(last) = closed.last_entry() else {
        return Ok(Some(Recovered { state: fallback, snapshot_version: found.version, ledger_id: Some(ledger_id) }));
    };
    let entries = ledger::read_entries(bookies, &closed, last, last, 1, super::MAX_READ_BYTES).await?;
    let what = format!("{path} (cursor ledger {ledger_id} entry {last})");
    let Some((_, bytes)) = entries.into_iter().find(|(entry_id, _)| *entry_id == last) else {
        return Err(BrokerError::Corrupt { what, reason: "last entry missing".to_owned() });
    };
    let state = restore(&what, &decode(&what, &bytes)?)?;
    Ok(Some(Recovered { state, snapshot_version: found.version, ledger_id: Some(ledger_id) }))
}

/// Where a cursor's live state is kept while a subscription has the cursor open.
pub trait CursorSource: Send + Sync {
    /// Runs `f` over the live state (under the owner's lock: `f` must be quick).
    fn with_cursor_state(&self, f: &mut dyn FnMut(&CursorState));
}

/// Who holds a cursor's state.
enum Holder {
    /// No subscription has the cursor open: the cursor's own copy (as recovered, or as handed
    /// back when the subscription closed).
    Own(CursorState),
    /// A subscription holds the live state. A dead link (the subscription was dropped without
    /// closing: its broker is going away) means nothing more is written.
    Subscription(Weak<dyn CursorSource>),
}

/// What the cursor handle and its persister task share.
struct Shared {
    holder: Mutex<Holder>,
}

impl Shared {
    /// Runs `f` over the current state; `None` if its subscription is gone.
    fn with_state<R>(&self, f: impl FnOnce(&CursorState) -> R) -> Option<R> {
        let source = {
            let holder = self.holder.lock();
            match &*holder {
                Holder::Own(state) => return Some(f(state)),
                Holder::Subscription(source) => source.clone(),
            }
        };
        // Outside the holder lock: the subscription takes its own lock in there.
        let source = source.upgrade()?;
        let mut f = Some(f);
        let mut result = None;
        source.with_cursor_state(&mut |state| {
            if let Some(f) = f.take() {
                result = Some(f(state));
            }
        });
        result
    }
}

/// One subscription's durable cursor; its state changes are written by its own task.
pub struct ManagedCursor {
    name: String,
    path: String,
    shared: Arc<Shared>,
    /// The mark-delete position of the latest durable state: trimming keeps what it needs.
    persisted_mark_delete: Arc<Mutex<Option<Position>>>,
    /// Ledgers this cursor owns (the current one, and one left by a previous owner until the
    /// next switch): deleted with the cursor.
    ledgers: Arc<Mutex<BTreeSet<u64>>>,
    /// Generation of the latest change (0: none since opening); the persister writes the
    /// state whenever it is above `written`.
    dirty: watch::Sender<u64>,
    /// The highest generation made durable.
    written: watch::Receiver<u64>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
}

impl ManagedCursor {
    /// Reopens a stored cursor; `None` if it does not exist.
    pub(crate) async fn recover(
        managed_ledger: &str,
        name: &str,
        bookies: &Bookies,
        config: LedgerConfig,
        max_entries_per_ledger: u64,
    ) -> Result<Option<Arc<Self>>, BrokerError> {
        let path = cursor_path(managed_ledger, name);
        let Some(recovered) = recover_state(bookies, &path).await? else { return Ok(None) };
        info!(
            cursor = %path,
            mark_delete = ?recovered.state.mark_delete,
            acked = recovered.state.individually_acked.len(),
            batch_acks = recovered.state.batch_acks.len(),
            "cursor recovered"
        );
        Ok(Some(Self::start(name, path, bookies, config, max_entries_per_ledger, recovered)))
    }

    /// Opens the cursor, creating it (snapshot only, no ledger yet) at `initial_mark_delete`.
    pub(crate) async fn open_or_create(
        managed_ledger: &str,
        name: &str,
        bookies: &Bookies,
        config: LedgerConfig,
        max_entries_per_ledger: u64,
        initial_mark_delete: Option<Position>,
    ) -> Result<Arc<Self>, BrokerError> {
        if let Some(found) = Self::recover(managed_ledger, name, bookies, config, max_entries_per_ledger).await? {
            return Ok(found);
        }
        let path = cursor_path(managed_ledger, name);
        let state = CursorState::at(initial_mark_delete);
        match bookies.meta().put(&path, state.to_record().encode_to_vec(), Expected::Absent).await {
            Ok(snapshot_version) => Ok(Self::start(
                name,
                path,
                bookies,
                config,
                max_entries_per_ledger,
                Recovered { state, snapshot_version, ledger_id: None },
            )),
            // Created concurrently: use the stored one.
            Err(magnetar_meta::MetaError::BadVersion { .. }) => {
                Self::recover(managed_ledger, name, bookies, config, max_entries_per_ledger).await?.ok_or_else(|| {
                    BrokerError::Corrupt { what: path, reason: "created and deleted at once".to_owned() }
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    fn start(
        name: &str,
        path: String,
        bookies: &Bookies,
        config: LedgerConfig,
        max_entries_per_ledger: u64,
        recovered: Recovered,
    ) -> Arc<Self> {
        let (dirty, mut changes) = watch::channel(0u64);
        let (mark_written, written) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let persisted_mark_delete = Arc::new(Mutex::new(recovered.state.mark_delete));
        let ledgers = Arc::new(Mutex::new(recovered.ledger_id.into_iter().collect::<BTreeSet<u64>>()));
        let shared = Arc::new(Shared { holder: Mutex::new(Holder::Own(recovered.state)) });
        let mut writer = CursorLedger {
            bookies: bookies.clone(),
            config,
            max_entries_per_ledger,
            path: path.clone(),
            snapshot_version: recovered.snapshot_version,
            current: None,
            ledgers: ledgers.clone(),
        };
        let (task_stop, task_persisted, task_shared) = (stop.clone(), persisted_mark_delete.clone(), shared.clone());
        let task = tokio::spawn(async move {
            let mut last_written: Option<CursorInfo> = None;
            loop {
                let stopping = tokio::select! {
                    changed = changes.changed() => match changed {
                        Ok(()) => false,
                        // The cursor was dropped without close (its broker is going away):
                        // leave the ledger as it is; the next owner recovers it.
                        Err(_) => return,
                    },
                    () = task_stop.cancelled() => true,
                };
                let generation = *changes.borrow_and_update();
                if generation > *mark_written.borrow() {
                    // Encoded once per write, however many acks marked it dirty meanwhile.
                    match task_shared.with_state(CursorState::to_record) {
                        Some(record) => match writer.append(&record).await {
                            Ok(()) => {
                                *task_persisted.lock() = record.mark_delete.as_ref().map(Position::from);
                                mark_written.send_replace(generation);
                                last_written = Some(record);
                            }
                            Err(error) => {
                                warn!(cursor = %writer.path, %error, "cannot persist cursor; will retry with the next ack")
                            }
                        },
                        None => debug!(cursor = %writer.path, "subscription gone; cursor state not written"),
                    }
                }
                if stopping {
                    writer.close(last_written.as_ref()).await;
                    return;
                }
            }
        });
        Arc::new(ManagedCursor {
            name: name.to_owned(),
            path,
            shared,
            persisted_mark_delete,
            ledgers,
            dirty,
            written,
            task: tokio::sync::Mutex::new(Some(task)),
            stop,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A copy of the state as acknowledged so far (persisted or not); `None` if the
    /// subscription holding it is gone.
    pub fn state(&self) -> Option<CursorState> {
        self.shared.with_state(CursorState::clone)
    }

    /// The mark-delete position and the count of positions acknowledged beyond it, for
    /// stats (the persisted mark-delete position if the subscription holding it is gone).
    pub fn summary(&self) -> (Option<Position>, u64) {
        self.shared
            .with_state(|state| (state.mark_delete, state.individually_acked.len()))
            .unwrap_or_else(|| (self.persisted_mark_delete(), 0))
    }

    /// The mark-delete position of the latest durable state.
    pub fn persisted_mark_delete(&self) -> Option<Position> {
        *self.persisted_mark_delete.lock()
    }

    /// The ledger the cursor's state changes go to now, if it has one yet.
    pub fn ledger_id(&self) -> Option<u64> {
        self.ledgers.lock().last().copied()
    }

    /// Unacknowledged entries of `managed_ledger` for this cursor.
    pub fn backlog(&self, managed_ledger: &ManagedLedger) -> u64 {
        self.shared
            .with_state(|state| managed_ledger.backlog(state))
            .unwrap_or_else(|| managed_ledger.entries_after(self.persisted_mark_delete()))
    }

    /// Hands the live state to a subscription: from now on it holds the state and marks the
    /// cursor dirty when the state changes. Returns the state to start from.
    pub fn lend_to(&self, source: Weak<dyn CursorSource>) -> CursorState {
        let mut holder = self.shared.holder.lock();
        let state = match &*holder {
            Holder::Own(state) => state.clone(),
            // A subscription that was dropped without closing: start from what was written.
            Holder::Subscription(previous) => previous
                .upgrade()
                .and_then(|previous| {
                    let mut copy = None;
                    previous.with_cursor_state(&mut |state| copy = Some(state.clone()));
                    copy
                })
                .unwrap_or_else(|| CursorState::at(self.persisted_mark_delete())),
        };
        *holder = Holder::Subscription(source);
        state
    }

    /// Takes the state back from the subscription that is closing, with its latest value.
    pub fn take_back(&self, state: CursorState) {
        *self.shared.holder.lock() = Holder::Own(state);
    }

    /// Changes the cursor's own state (no subscription holds it) and queues it for writing.
    pub fn update(&self, change: impl FnOnce(&mut CursorState) -> bool) {
        let changed = match &mut *self.shared.holder.lock() {
            Holder::Own(state) => change(state),
            Holder::Subscription(_) => false,
        };
        if changed {
            self.mark_dirty();
        }
    }

    /// Replaces the cursor's own state (no subscription holds it) and queues it for writing.
    pub fn persist(&self, state: &CursorState) {
        self.update(|own| {
            *own = state.clone();
            true
        });
    }

    /// The state changed: the persister writes it (the latest state wins).
    pub fn mark_dirty(&self) {
        self.dirty.send_modify(|generation| *generation += 1);
    }

    /// Waits until the latest change is durable (or `FLUSH_TIMEOUT` passes); true if it is.
    pub async fn flush(&self) -> bool {
        let target = *self.dirty.borrow();
        if target == 0 {
            return true;
        }
        let mut written = self.written.clone();
        let waited = tokio::time::timeout(FLUSH_TIMEOUT, written.wait_for(|done| *done >= target)).await;
        match waited.map(|reached| reached.is_ok()) {
            Ok(true) => true,
            // The persister stopped (the cursor closed or its broker is going away).
            Ok(false) => false,
            Err(_) => {
                warn!(cursor = %self.path, "cursor flush timed out; the latest acks stay queued");
                false
            }
        }
    }

    /// Writes the latest state, closes the cursor ledger and stops. Idempotent.
    pub async fn close(&self) {
        self.stop.cancel();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }

    /// Stops the cursor and deletes its ledgers and its key.
    pub(crate) async fn delete(&self, bookies: &Bookies) -> Result<(), BrokerError> {
        self.close().await;
        let owned: Vec<u64> = self.ledgers.lock().iter().copied().collect();
        for ledger_id in owned {
            ledger::admin::delete_ledger(bookies, LedgerId(ledger_id)).await?;
        }
        bookies.meta().delete(&self.path, Expected::Any).await?;
        Ok(())
    }
}

/// The persister task's side of a cursor: its current ledger and the snapshot's version.
struct CursorLedger {
    bookies: Bookies,
    config: LedgerConfig,
    max_entries_per_ledger: u64,
    path: String,
    snapshot_version: Version,
    /// The ledger being appended to and the entries it holds.
    current: Option<(Arc<LedgerWriter>, u64)>,
    /// Shared with [`ManagedCursor::ledgers`].
    ledgers: Arc<Mutex<BTreeSet<u64>>>,
}

impl CursorLedger {
    /// Makes `record` durable: appended to the current ledger, or as the first entry of a new
    /// one if there is none usable.
    async fn append(&mut self, record: &CursorInfo) -> Result<(), BrokerError> {
        let payload = bytes::Bytes::from(record.encode_to_vec());
        if let Some((writer, entries)) = &mut self.current {
            if writer.failure().is_none() && *entries < self.max_entries_per_ledger {
                *entries += 1;
                let added = async {
                    writer
                        .add(payload.clone())
                        .await?
                        .await
                        .map_err(|_| BookieError::Stopped { what: "cursor ledger writer" })?
                };
                match added.await {
                    Ok(_) => return Ok(()),
                    Err(error) => {
                        warn!(cursor = %self.path, ledger_id = writer.ledger_id().0, %error, "cursor ledger write failed, switching ledgers")
                    }
                }
            }
        }
        self.switch(record, payload).await
    }

    /// Starts a new cursor ledger holding `record`, points the snapshot at it, then deletes
    /// the ledgers it replaces.
    async fn switch(&mut self, record: &CursorInfo, payload: bytes::Bytes) -> Result<(), BrokerError> {
        let writer = LedgerWriter::create(&self.bookies, self.config, None).await?;
        let first = async {
            writer.add(payload).await?.await.map_err(|_| BookieError::Stopped { what: "cursor ledger writer" })?
        };
        if let Err(error) = first.await {
            self.discard(writer.ledger_id().0).await;
            return Err(error.into());
        }
        if let Err(error) = self.write_snapshot(record, writer.ledger_id().0).await {
            if matches!(error, BrokerError::SnapshotUnknown { .. }) {
                // The snapshot may name it: kept, and deleted with the ledgers the next
                // switch replaces.
                self.ledgers.lock().insert(writer.ledger_id().0);
            } else {
                self.discard(writer.ledger_id().0).await;
            }
            return Err(error);
        }
        let replaced: Vec<u64> = {
            let mut ledgers = self.ledgers.lock();
            let replaced = ledgers.iter().copied().collect();
            ledgers.clear();
            ledgers.insert(writer.ledger_id().0);
            replaced
        };
        if let Some((old, _)) = self.current.replace((writer.clone(), 1)) {
            if old.failure().is_none() {
                if let Err(error) = old.close().await {
                    warn!(cursor = %self.path, ledger_id = old.ledger_id().0, %error, "closing the old cursor ledger failed");
                }
            }
        }
        for ledger_id in replaced {
            if let Err(error) = ledger::admin::delete_ledger(&self.bookies, LedgerId(ledger_id)).await {
                warn!(cursor = %self.path, ledger_id, %error, "old cursor ledger left on the bookies");
            }
        }
        info!(cursor = %self.path, ledger_id = writer.ledger_id().0, "cursor switched to a new ledger");
        Ok(())
    }

    async fn discard(&self, ledger_id: u64) {
        if let Err(error) = ledger::admin::delete_ledger(&self.bookies, LedgerId(ledger_id)).await {
            warn!(cursor = %self.path, ledger_id, %error, "unused cursor ledger left on the bookies");
        }
    }

    /// Rewrites the snapshot (CAS): the ledger holding the state, and its mark-delete position.
    ///
    /// A write that failed without an answer (a timeout) may have been applied: the snapshot
    /// is read back, and if it holds exactly what was written, the write counts as done.
    /// Otherwise the new ledger would be discarded while the snapshot names it, and the next
    /// owner would fall back to the snapshot's mark-delete position, losing the acks beyond
    /// it (found by the broker simulation, seed 161).
    async fn write_snapshot(&mut self, record: &CursorInfo, ledger_id: u64) -> Result<(), BrokerError> {
        let snapshot = CursorInfo {
            mark_delete: record.mark_delete,
            individually_acked: Vec::new(),
            updated_at_ms: record.updated_at_ms,
            cursor_ledger_id: ledger_id,
            batch_acks: Vec::new(),
        };
        let bytes = snapshot.encode_to_vec();
        let meta = self.bookies.meta();
        match meta.put(&self.path, bytes.clone(), Expected::Version(self.snapshot_version)).await {
            Ok(version) => {
                self.snapshot_version = version;
                Ok(())
            }
            Err(error @ magnetar_meta::MetaError::BadVersion { .. }) => Err(error.into()),
            Err(error) => match meta.get(&self.path).await {
                Ok(Some(found)) if found.value == bytes => {
                    self.snapshot_version = found.version;
                    Ok(())
                }
                Ok(_) => Err(error.into()),
                // Unknown: the caller keeps the ledger, which the snapshot may name.
                Err(_) => Err(BrokerError::SnapshotUnknown { what: self.path.clone(), reason: error.to_string() }),
            },
        }
    }

    /// Closes the current ledger so that the next owner need not recover it, and brings the
    /// snapshot's fallback position up to date.
    async fn close(&mut self, last_written: Option<&CursorInfo>) {
        let Some((writer, _)) = self.current.take() else { return };
        if writer.failure().is_some() {
            return;
        }
        if let Err(error) = writer.close().await {
            warn!(cursor = %self.path, ledger_id = writer.ledger_id().0, %error, "closing the cursor ledger failed; the next owner recovers it");
            return;
        }
        if let Some(record) = last_written {
            if let Err(error) = self.write_snapshot(record, writer.ledger_id().0).await {
                warn!(cursor = %self.path, %error, "cannot update the cursor snapshot on close");
            }
        }
    }
}
