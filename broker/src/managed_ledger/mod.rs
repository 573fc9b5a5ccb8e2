//! The managed ledger: a topic's log as an ordered list of bookie ledgers.
//!
//! The list lives in the metadata store ([`ManagedLedgerInfo`] at [`info_path`]) and changes
//! only by compare-and-set, so two brokers can never both extend it. Opening a managed ledger
//! recovers (fences and closes) every ledger a previous owner left open, then starts a new
//! ledger for writing: the previous owner, if it is still alive, can add nothing more.
//!
//! Writes go to the current ledger through a [`LedgerWriter`]; positions become readable once
//! confirmed (durable, with every earlier entry), which is published on a watch channel that
//! dispatchers wait on. A write failure stops the current ledger; the next write recovers it
//! and rolls over to a new one.

pub mod cursor;
pub mod position;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use magnetar_bookie::client::{self as ledger, Bookies, LedgerConfig, LedgerWriter};
use magnetar_meta::{Expected, Version};
use magnetar_proto::records::{managed_ledger_info::LedgerInfo, LedgerMetadata, ManagedLedgerInfo};
use prost::Message;
use tokio::sync::watch;
use tracing::{info, warn};

pub use position::Position;

use crate::error::BrokerError;

/// Metadata key of a managed ledger's ledger list.
pub fn info_path(name: &str) -> String {
    format!("/magnetar/managed-ledgers/{name}")
}

/// Most entries one read returns.
pub const MAX_READ_ENTRIES: u32 = 100;
/// Most bytes one read returns (at least one entry is always returned).
pub const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The answer to one add: its position once durable.
pub type AddFuture = Pin<Box<dyn Future<Output = Result<Position, BrokerError>> + Send>>;

struct State {
    info: ManagedLedgerInfo,
    version: Version,
    writer: Arc<LedgerWriter>,
}

pub struct ManagedLedger {
    name: String,
    bookies: Bookies,
    config: LedgerConfig,
    state: Mutex<State>,
    /// Serializes rollovers.
    rolling: tokio::sync::Mutex<()>,
    /// Metadata of closed ledgers, for reads.
    ledger_cache: Mutex<HashMap<u64, Arc<LedgerMetadata>>>,
    /// The last confirmed position; `None` while the log is empty.
    last_confirmed: watch::Sender<Option<Position>>,
}

impl ManagedLedger {
    pub async fn open(name: &str, bookies: Bookies, config: LedgerConfig) -> Result<Arc<Self>, BrokerError> {
        let meta = bookies.meta().clone();
        let path = info_path(name);
        let (mut info, mut version) = match meta.get(&path).await? {
            Some(found) => {
                let info = ManagedLedgerInfo::decode(&found.value[..])
                    .map_err(|error| BrokerError::Corrupt { what: path.clone(), reason: error.to_string() })?;
                (info, found.version)
            }
            None => {
                let info = ManagedLedgerInfo { ledgers: Vec::new(), created_at_ms: now_ms() };
                match meta.put(&path, info.encode_to_vec(), Expected::Absent).await {
                    Ok(version) => (info, version),
                    Err(magnetar_meta::MetaError::BadVersion { .. }) => {
                        return Box::pin(ManagedLedger::open(name, bookies, config)).await
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };
        // Close what a previous owner left open; drop ledgers that ended up empty.
        for ledger_info in info.ledgers.iter_mut().filter(|l| !l.closed) {
            let closed = ledger::recover_ledger(&bookies, ledger_info.ledger_id).await?;
            ledger_info.closed = true;
            ledger_info.entries = (closed.last_entry_id + 1).max(0) as u64;
        }
        info.ledgers.retain(|l| l.entries > 0);
        let last_confirmed = info.ledgers.last().map(|l| Position::new(l.ledger_id, l.entries - 1));
        let (sender, _) = watch::channel(last_confirmed);
        let sender_for_hook = sender.clone();
        let writer = Self::new_writer(&bookies, config, sender_for_hook).await?;
        info.ledgers.push(LedgerInfo {
            ledger_id: writer.ledger_id(),
            entries: 0,
            size: 0,
            created_at_ms: now_ms(),
            closed: false,
        });
        version = meta.put(&path, info.encode_to_vec(), Expected::Version(version)).await?;
        info!(managed_ledger = name, ledger_id = writer.ledger_id(), ?last_confirmed, "managed ledger opened");
        Ok(Arc::new(ManagedLedger {
            name: name.to_owned(),
            bookies,
            config,
            state: Mutex::new(State { info, version, writer }),
            rolling: tokio::sync::Mutex::new(()),
            ledger_cache: Mutex::new(HashMap::new()),
            last_confirmed: sender,
        }))
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
                let position = Position::new(*ledger_id, entry_id);
                confirmed.send_if_modified(|current| {
                    if current.is_none_or(|c| c < position) {
                        *current = Some(position);
                        true
                    } else {
                        false
                    }
                });
            }
        });
        let writer = LedgerWriter::create(bookies, config, Some(hook)).await?;
        let _ = ledger_id.set(writer.ledger_id());
        Ok(writer)
    }

    pub fn name(&self) -> &str {
        &self.name
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
    pub async fn add_entry(self: &Arc<Self>, data: Bytes) -> Result<AddFuture, BrokerError> {
        let writer = self.writable().await?;
        let size = data.len() as u64;
        let answer = writer.add(data).await?;
        let ledger_id = writer.ledger_id();
        let this = self.clone();
        Ok(Box::pin(async move {
            let entry_id = answer.await.map_err(|_| BrokerError::ShuttingDown)??;
            this.account(ledger_id, entry_id, size);
            Ok(Position::new(ledger_id, entry_id))
        }))
    }

    fn account(&self, ledger_id: u64, entry_id: u64, size: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = state.info.ledgers.iter_mut().rev().find(|l| l.ledger_id == ledger_id) {
            current.entries = current.entries.max(entry_id + 1);
            current.size += size;
        }
    }

    /// The current writer, after rolling over to a new ledger if the current one failed.
    async fn writable(&self) -> Result<Arc<LedgerWriter>, BrokerError> {
        let writer = self.state.lock().unwrap_or_else(|p| p.into_inner()).writer.clone();
        if writer.failure().is_none() {
            return Ok(writer);
        }
        let _rolling = self.rolling.lock().await;
        let writer = self.state.lock().unwrap_or_else(|p| p.into_inner()).writer.clone();
        let Some(reason) = writer.failure() else { return Ok(writer) };
        warn!(managed_ledger = %self.name, ledger_id = writer.ledger_id(), %reason, "ledger write failed, rolling over");
        let closed = ledger::recover_ledger(&self.bookies, writer.ledger_id()).await?;
        let new_writer = Self::new_writer(&self.bookies, self.config, self.last_confirmed.clone()).await?;
        let (info, version) = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = state.info.ledgers.iter_mut().find(|l| l.ledger_id == closed.ledger_id) {
                old.closed = true;
                old.entries = (closed.last_entry_id + 1).max(0) as u64;
            }
            state.info.ledgers.push(LedgerInfo {
                ledger_id: new_writer.ledger_id(),
                entries: 0,
                size: 0,
                created_at_ms: now_ms(),
                closed: false,
            });
            (state.info.clone(), state.version)
        };
        let new_version =
            self.bookies.meta().put(&info_path(&self.name), info.encode_to_vec(), Expected::Version(version)).await?;
        // Recovery may have confirmed entries the failed writer never reported.
        if closed.last_entry_id >= 0 {
            let recovered = Position::new(closed.ledger_id, closed.last_entry_id as u64);
            self.last_confirmed.send_if_modified(|current| {
                if current.is_none_or(|c| c < recovered) {
                    *current = Some(recovered);
                    true
                } else {
                    false
                }
            });
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.version = new_version;
        state.writer = new_writer.clone();
        Ok(new_writer)
    }

    /// Ledgers and their entry counts, for position arithmetic; the open ledger counts its
    /// confirmed entries.
    fn ledgers(&self) -> Vec<(u64, u64)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
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

    /// The first confirmed position after `after` (`None`: from the very start), if any.
    pub fn next_position(&self, after: Option<Position>) -> Option<Position> {
        let last = self.last_confirmed()?;
        for (ledger_id, entries) in self.ledgers() {
            if entries == 0 {
                continue;
            }
            let candidate = match after {
                None => Position::new(ledger_id, 0),
                Some(after) if ledger_id < after.ledger_id => continue,
                Some(after) if ledger_id == after.ledger_id => {
                    if after.entry_id + 1 < entries {
                        Position::new(ledger_id, after.entry_id + 1)
                    } else {
                        continue;
                    }
                }
                Some(_) => Position::new(ledger_id, 0),
            };
            return (candidate <= last).then_some(candidate);
        }
        None
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

    async fn ledger_metadata(&self, ledger_id: u64) -> Result<Arc<LedgerMetadata>, BrokerError> {
        if let Some(found) = self.ledger_cache.lock().unwrap_or_else(|p| p.into_inner()).get(&ledger_id) {
            return Ok(found.clone());
        }
        let (metadata, _) = ledger::metadata::read(self.bookies.meta().as_ref(), ledger_id)
            .await?
            .ok_or(BrokerError::Storage(magnetar_bookie::BookieError::NoSuchLedger { ledger_id }))?;
        let metadata = Arc::new(metadata);
        // Only closed ledgers are immutable enough to cache; the open one has one ensemble
        // for its whole life in this version, so caching it is safe as well.
        self.ledger_cache.lock().unwrap_or_else(|p| p.into_inner()).insert(ledger_id, metadata.clone());
        Ok(metadata)
    }

    /// Reads confirmed entries starting at `from`, all within `from`'s ledger, at most
    /// `max_entries` of them.
    pub async fn read_entries(&self, from: Position, max_entries: u32) -> Result<Vec<(Position, Bytes)>, BrokerError> {
        let Some(last) = self.last_confirmed() else { return Ok(Vec::new()) };
        if from > last {
            return Ok(Vec::new());
        }
        let ledger_end = self
            .ledgers()
            .into_iter()
            .find(|(id, _)| *id == from.ledger_id)
            .map(|(_, entries)| entries.saturating_sub(1))
            .unwrap_or(0);
        let end = if from.ledger_id == last.ledger_id { last.entry_id } else { ledger_end };
        if from.entry_id > end {
            return Ok(Vec::new());
        }
        let metadata = self.ledger_metadata(from.ledger_id).await?;
        let entries = ledger::read_entries(
            &self.bookies,
            &metadata,
            from.entry_id,
            end,
            max_entries.clamp(1, MAX_READ_ENTRIES),
            MAX_READ_BYTES,
        )
        .await?;
        Ok(entries.into_iter().map(|(entry_id, data)| (Position::new(from.ledger_id, entry_id), data)).collect())
    }

    /// Closes the current ledger cleanly, so that the next owner need not recover it.
    pub async fn close(&self) -> Result<(), BrokerError> {
        let (writer, path) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.writer.clone(), info_path(&self.name))
        };
        let last = writer.close().await?;
        let (info, version) = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(current) = state.info.ledgers.iter_mut().find(|l| l.ledger_id == writer.ledger_id()) {
                current.closed = true;
                current.entries = (last + 1).max(0) as u64;
            }
            (state.info.clone(), state.version)
        };
        let version = self.bookies.meta().put(&path, info.encode_to_vec(), Expected::Version(version)).await?;
        self.state.lock().unwrap_or_else(|p| p.into_inner()).version = version;
        Ok(())
    }
}
