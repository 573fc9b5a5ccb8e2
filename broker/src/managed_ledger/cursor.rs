//! A durable cursor: how far a subscription has acknowledged (Pulsar's ManagedCursorImpl).
//!
//! State: the mark-delete position (everything up to and including it is acknowledged) and the
//! positions acknowledged individually beyond it. Acks change the state in memory at once; the
//! cursor's persister task appends the latest state, as one [`CursorInfo`] entry, to the
//! cursor's own ledger whenever it changed, coalescing bursts of acks into one append.
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
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use magnetar_bookie::client::{self as ledger, Bookies, LedgerConfig, LedgerWriter};
use magnetar_bookie::BookieError;
use magnetar_meta::{Expected, Version};
use magnetar_proto::records::{AckRange, CursorInfo};
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ManagedLedger, Position};
use crate::error::BrokerError;

/// Metadata key under which a managed ledger's cursors are stored, one child per cursor.
pub fn cursors_path(managed_ledger: &str) -> String {
    format!("/magnetar/cursors/{managed_ledger}")
}

pub fn cursor_path(managed_ledger: &str, subscription: &str) -> String {
    format!("/magnetar/cursors/{managed_ledger}/{subscription}")
}

/// Whether `position` names a confirmed entry of `ledger` (an ack for anything else is ignored).
pub fn is_valid_position(ledger: &ManagedLedger, position: Position) -> bool {
    ledger.last_confirmed().is_some_and(|last| position <= last)
        && ledger.ledgers().iter().any(|(id, entries)| *id == position.ledger_id && position.entry_id < *entries)
}

/// The confirmed entry just before `position` (`None`: `position` is the first entry, or
/// before it). Seeks and readers start after this, so that `position` itself is delivered.
pub fn position_before(ledger: &ManagedLedger, position: Position) -> Option<Position> {
    if position.entry_id > 0 && ledger.ledgers().iter().any(|(id, _)| *id == position.ledger_id) {
        return Some(Position::new(position.ledger_id, position.entry_id - 1));
    }
    ledger
        .ledgers()
        .into_iter()
        .rfind(|(id, entries)| *id < position.ledger_id && *entries > 0)
        .map(|(id, entries)| Position::new(id, entries - 1))
}

/// The acknowledgement state of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorState {
    pub mark_delete: Option<Position>,
    pub individually_acked: BTreeSet<Position>,
}

impl CursorState {
    pub fn is_acked(&self, position: Position) -> bool {
        self.mark_delete.is_some_and(|m| position <= m) || self.individually_acked.contains(&position)
    }

    /// Acknowledges one position; returns whether anything changed.
    pub fn ack_individual(&mut self, position: Position, ledger: &ManagedLedger) -> bool {
        if self.is_acked(position) {
            return false;
        }
        self.individually_acked.insert(position);
        self.advance(ledger);
        true
    }

    /// Acknowledges everything up to and including `position`.
    pub fn ack_cumulative(&mut self, position: Position, ledger: &ManagedLedger) -> bool {
        if self.mark_delete.is_some_and(|m| position <= m) {
            return false;
        }
        self.mark_delete = Some(position);
        self.individually_acked.retain(|p| *p > position);
        self.advance(ledger);
        true
    }

    /// Moves the mark-delete position over individually acknowledged positions that follow it.
    fn advance(&mut self, ledger: &ManagedLedger) {
        while let Some(next) = ledger.next_position(self.mark_delete) {
            if !self.individually_acked.remove(&next) {
                break;
            }
            self.mark_delete = Some(next);
        }
    }

    /// Moves the cursor to `mark_delete` (a seek), forgetting every individual ack: what
    /// follows is delivered again, as Pulsar's `resetCursor`.
    pub fn reset(&mut self, mark_delete: Option<Position>) {
        self.mark_delete = mark_delete;
        self.individually_acked.clear();
    }

    pub fn to_record(&self) -> CursorInfo {
        let mut ranges: Vec<AckRange> = Vec::new();
        let mut current: Option<(Position, Position)> = None;
        for position in &self.individually_acked {
            if ranges.len() >= MAX_PERSISTED_ACK_RANGES {
                // Later acks are not stored: after a reopen they are delivered again.
                current = None;
                break;
            }
            current = match current {
                Some((start, end)) if end.ledger_id == position.ledger_id && end.entry_id + 1 == position.entry_id => {
                    Some((start, *position))
                }
                Some((start, end)) => {
                    ranges.push(AckRange { start: Some(start.into()), end: Some(end.into()) });
                    Some((*position, *position))
                }
                None => Some((*position, *position)),
            };
        }
        if let Some((start, end)) = current {
            ranges.push(AckRange { start: Some(start.into()), end: Some(end.into()) });
        }
        CursorInfo {
            mark_delete: self.mark_delete.map(Into::into),
            individually_acked: ranges,
            updated_at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            cursor_ledger_id: 0,
        }
    }

    /// Rebuilds the state from a stored record; ranges are bounded by `MAX_RESTORED_ACKS`.
    pub fn from_record(record: &CursorInfo) -> Result<Self, String> {
        let mut individually_acked = BTreeSet::new();
        for range in &record.individually_acked {
            let (Some(start), Some(end)) = (&range.start, &range.end) else {
                return Err("ack range without start or end".to_owned());
            };
            if start.ledger_id != end.ledger_id || start.entry_id > end.entry_id {
                return Err(format!(
                    "bad ack range {}:{}..{}:{}",
                    start.ledger_id, start.entry_id, end.ledger_id, end.entry_id
                ));
            }
            if individually_acked.len() as u64 + (end.entry_id - start.entry_id + 1) > MAX_RESTORED_ACKS {
                return Err(format!("more than {MAX_RESTORED_ACKS} individually acknowledged positions"));
            }
            for entry_id in start.entry_id..=end.entry_id {
                individually_acked.insert(Position::new(start.ledger_id, entry_id));
            }
        }
        Ok(CursorState { mark_delete: record.mark_delete.as_ref().map(Position::from), individually_acked })
    }
}

/// Bound on individually acknowledged positions restored from a record.
pub const MAX_RESTORED_ACKS: u64 = 1_000_000;

/// Most ranges of individually acknowledged positions one state change stores (Pulsar's
/// `managedLedgerMaxUnackedRangesToPersist`); it keeps a stored state well below a bookie's
/// entry size limit. Acks beyond it are delivered again after a reopen.
pub const MAX_PERSISTED_ACK_RANGES: usize = 10_000;

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
    if snapshot.cursor_ledger_id == 0 {
        return Ok(Some(Recovered { state: fallback, snapshot_version: found.version, ledger_id: None }));
    }
    let ledger_id = snapshot.cursor_ledger_id;
    let closed = match ledger::recover_ledger(bookies, ledger_id).await {
        Ok(closed) => closed,
        Err(BookieError::NoSuchLedger { .. }) => {
            warn!(cursor = path, ledger_id, "cursor ledger is gone; using the snapshot's mark-delete position");
            return Ok(Some(Recovered { state: fallback, snapshot_version: found.version, ledger_id: None }));
        }
        Err(error) => return Err(error.into()),
    };
    if closed.last_entry_id < 0 {
        return Ok(Some(Recovered { state: fallback, snapshot_version: found.version, ledger_id: Some(ledger_id) }));
    }
    let last = closed.last_entry_id as u64;
    let entries = ledger::read_entries(bookies, &closed, last, last, 1, super::MAX_READ_BYTES).await?;
    let what = format!("{path} (cursor ledger {ledger_id} entry {last})");
    let Some((_, bytes)) = entries.into_iter().find(|(entry_id, _)| *entry_id == last) else {
        return Err(BrokerError::Corrupt { what, reason: "last entry missing".to_owned() });
    };
    let state = restore(&what, &decode(&what, &bytes)?)?;
    Ok(Some(Recovered { state, snapshot_version: found.version, ledger_id: Some(ledger_id) }))
}

/// One subscription's durable cursor; its state changes are written by its own task.
pub struct ManagedCursor {
    name: String,
    path: String,
    /// The state as acknowledged so far (persisted or not): for backlog.
    latest: Mutex<CursorState>,
    /// The mark-delete position of the latest durable state: trimming keeps what it needs.
    persisted_mark_delete: Arc<Mutex<Option<Position>>>,
    /// Ledgers this cursor owns (the current one, and one left by a previous owner until the
    /// next switch): deleted with the cursor.
    ledgers: Arc<Mutex<BTreeSet<u64>>>,
    /// The latest state queued, numbered by generation.
    queued: watch::Sender<Option<(u64, CursorInfo)>>,
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
        info!(cursor = %path, mark_delete = ?recovered.state.mark_delete, acked = recovered.state.individually_acked.len(), "cursor recovered");
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
        let state = CursorState { mark_delete: initial_mark_delete, individually_acked: BTreeSet::new() };
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
        let (queued, mut changes) = watch::channel::<Option<(u64, CursorInfo)>>(None);
        let (mark_written, written) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let persisted_mark_delete = Arc::new(Mutex::new(recovered.state.mark_delete));
        let ledgers = Arc::new(Mutex::new(recovered.ledger_id.into_iter().collect::<BTreeSet<u64>>()));
        let mut writer = CursorLedger {
            bookies: bookies.clone(),
            config,
            max_entries_per_ledger,
            path: path.clone(),
            snapshot_version: recovered.snapshot_version,
            current: None,
            ledgers: ledgers.clone(),
        };
        let (task_stop, task_persisted) = (stop.clone(), persisted_mark_delete.clone());
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
                let queued = changes.borrow_and_update().clone();
                if let Some((generation, record)) = queued {
                    if generation > *mark_written.borrow() {
                        match writer.append(&record).await {
                            Ok(()) => {
                                *task_persisted.lock().unwrap_or_else(|p| p.into_inner()) =
                                    record.mark_delete.as_ref().map(Position::from);
                                mark_written.send_replace(generation);
                                last_written = Some(record);
                            }
                            Err(error) => {
                                warn!(cursor = %writer.path, %error, "cannot persist cursor; will retry with the next ack")
                            }
                        }
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
            latest: Mutex::new(recovered.state),
            persisted_mark_delete,
            ledgers,
            queued,
            written,
            task: tokio::sync::Mutex::new(Some(task)),
            stop,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state as acknowledged so far.
    pub fn state(&self) -> CursorState {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The mark-delete position of the latest durable state.
    pub fn persisted_mark_delete(&self) -> Option<Position> {
        *self.persisted_mark_delete.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ledger the cursor's state changes go to now, if it has one yet.
    pub fn ledger_id(&self) -> Option<u64> {
        self.ledgers.lock().unwrap_or_else(|p| p.into_inner()).last().copied()
    }

    /// Unacknowledged entries of `managed_ledger` for this cursor.
    pub fn backlog(&self, managed_ledger: &ManagedLedger) -> u64 {
        managed_ledger.backlog(&self.latest.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes `state` as the cursor's state and queues it for writing (latest state wins).
    pub fn persist(&self, state: &CursorState) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = state.clone();
        let record = state.to_record();
        self.queued.send_modify(|latest| {
            let generation = latest.as_ref().map_or(1, |(generation, _)| generation + 1);
            *latest = Some((generation, record));
        });
    }

    /// Waits until the latest queued state is durable (or `FLUSH_TIMEOUT` passes).
    pub async fn flush(&self) {
        let Some(target) = self.queued.borrow().as_ref().map(|(generation, _)| *generation) else { return };
        let mut written = self.written.clone();
        if tokio::time::timeout(FLUSH_TIMEOUT, written.wait_for(|done| *done >= target)).await.is_err() {
            warn!(cursor = %self.path, "cursor flush timed out; the latest acks stay queued");
        }
    }

    /// Writes the latest queued state, closes the cursor ledger and stops. Idempotent.
    pub async fn close(&self) {
        self.stop.cancel();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }

    /// Stops the cursor and deletes its ledgers and its key.
    pub(crate) async fn delete(&self, bookies: &Bookies) -> Result<(), BrokerError> {
        self.close().await;
        let owned: Vec<u64> = self.ledgers.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        for ledger_id in owned {
            ledger::admin::delete_ledger(bookies, ledger_id).await?;
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
                        warn!(cursor = %self.path, ledger_id = writer.ledger_id(), %error, "cursor ledger write failed, switching ledgers")
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
            self.discard(writer.ledger_id()).await;
            return Err(error.into());
        }
        if let Err(error) = self.write_snapshot(record, writer.ledger_id()).await {
            self.discard(writer.ledger_id()).await;
            return Err(error);
        }
        let replaced: Vec<u64> = {
            let mut ledgers = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
            let replaced = ledgers.iter().copied().collect();
            ledgers.clear();
            ledgers.insert(writer.ledger_id());
            replaced
        };
        if let Some((old, _)) = self.current.replace((writer.clone(), 1)) {
            if old.failure().is_none() {
                if let Err(error) = old.close().await {
                    warn!(cursor = %self.path, ledger_id = old.ledger_id(), %error, "closing the old cursor ledger failed");
                }
            }
        }
        for ledger_id in replaced {
            if let Err(error) = ledger::admin::delete_ledger(&self.bookies, ledger_id).await {
                warn!(cursor = %self.path, ledger_id, %error, "old cursor ledger left on the bookies");
            }
        }
        info!(cursor = %self.path, ledger_id = writer.ledger_id(), "cursor switched to a new ledger");
        Ok(())
    }

    async fn discard(&self, ledger_id: u64) {
        if let Err(error) = ledger::admin::delete_ledger(&self.bookies, ledger_id).await {
            warn!(cursor = %self.path, ledger_id, %error, "unused cursor ledger left on the bookies");
        }
    }

    /// Rewrites the snapshot (CAS): the ledger holding the state, and its mark-delete position.
    async fn write_snapshot(&mut self, record: &CursorInfo, ledger_id: u64) -> Result<(), BrokerError> {
        let snapshot = CursorInfo {
            mark_delete: record.mark_delete,
            individually_acked: Vec::new(),
            updated_at_ms: record.updated_at_ms,
            cursor_ledger_id: ledger_id,
        };
        self.snapshot_version = self
            .bookies
            .meta()
            .put(&self.path, snapshot.encode_to_vec(), Expected::Version(self.snapshot_version))
            .await?;
        Ok(())
    }

    /// Closes the current ledger so that the next owner need not recover it, and brings the
    /// snapshot's fallback position up to date.
    async fn close(&mut self, last_written: Option<&CursorInfo>) {
        let Some((writer, _)) = self.current.take() else { return };
        if writer.failure().is_some() {
            return;
        }
        if let Err(error) = writer.close().await {
            warn!(cursor = %self.path, ledger_id = writer.ledger_id(), %error, "closing the cursor ledger failed; the next owner recovers it");
            return;
        }
        if let Some(record) = last_written {
            if let Err(error) = self.write_snapshot(record, writer.ledger_id()).await {
                warn!(cursor = %self.path, %error, "cannot update the cursor snapshot on close");
            }
        }
    }
}
