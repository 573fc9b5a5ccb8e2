//! Writing a ledger.
//!
//! A [`LedgerWriter`] assigns entry ids in call order and sends each entry to every bookie of
//! the ensemble without waiting (pipelining). One completion task awaits the bookies' answers
//! in entry order, so an entry is reported written only once it and every lower entry are
//! durable; that is the writer's last-add-confirmed, which travels with later adds. The first
//! failure (a fenced ledger, a lost bookie) fails that entry and every later one: the writer
//! stops and never reports an entry written that it could not confirm.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use magnetar_meta::{Expected, Version};
use magnetar_proto::records::{Fragment, LedgerMetadata, LedgerState};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use super::connection::{BookieConnection, Bookies};
use super::metadata::{self, LedgerConfig};
use crate::error::BookieError;

/// Called with each confirmed entry id, in order.
pub type ConfirmHook = Arc<dyn Fn(u64) + Send + Sync>;

/// Entries awaiting their bookies' answers before new adds wait.
pub const MAX_PENDING_ADDS: usize = 8192;

struct Pending {
    entry_id: u64,
    answers: Vec<oneshot::Receiver<Result<(), BookieError>>>,
    reply: oneshot::Sender<Result<u64, BookieError>>,
}

struct State {
    next_entry_id: u64,
    failed: Option<String>,
    closed: bool,
}

pub struct LedgerWriter {
    ledger_id: u64,
    master_key: Bytes,
    ensemble: Vec<Arc<BookieConnection>>,
    bookies: Bookies,
    metadata: Mutex<(LedgerMetadata, Version)>,
    state: Mutex<State>,
    /// Highest entry such that it and all below are durable (-1: none).
    last_add_confirmed: Arc<AtomicI64>,
    completions: mpsc::Sender<Pending>,
    failure: Arc<Mutex<Option<String>>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl LedgerWriter {
    /// Creates a ledger on bookies chosen among the registered ones and opens it for writing.
    ///
    /// `on_confirm` runs on the completion task for each entry, in order, once it is confirmed.
    pub async fn create(
        bookies: &Bookies,
        config: LedgerConfig,
        on_confirm: Option<ConfirmHook>,
    ) -> Result<Arc<Self>, BookieError> {
        let mut available = bookies.available().await?;
        let needed = config.ensemble_size.max(1) as usize;
        if available.len() < needed {
            return Err(BookieError::NotEnoughBookies { needed, available: available.len() });
        }
        // Spread ledgers over the bookies: rotate the list by a random offset.
        let offset = (rand::rng().next_u32() as usize) % available.len();
        available.rotate_left(offset);
        available.truncate(needed);
        let ledger_id = magnetar_meta::sequence::next(bookies.meta().as_ref(), crate::LEDGER_ID_SEQUENCE).await?;
        let mut key = vec![0u8; 16];
        rand::rng().fill_bytes(&mut key);
        let metadata = LedgerMetadata {
            ledger_id,
            state: LedgerState::Open as i32,
            ensemble_size: needed as u32,
            write_quorum: needed as u32,
            ack_quorum: needed as u32,
            fragments: vec![Fragment { first_entry_id: 0, bookies: available.clone() }],
            last_entry_id: -1,
            length: 0,
            master_key: key,
            created_at_ms: now_ms(),
        };
        let version = metadata::write(bookies.meta().as_ref(), &metadata, Expected::Absent).await?;
        let mut ensemble = Vec::with_capacity(needed);
        for bookie_id in &available {
            ensemble.push(bookies.get(bookie_id).await?);
        }
        Ok(Self::start(bookies.clone(), metadata, version, ensemble, on_confirm))
    }

    fn start(
        bookies: Bookies,
        metadata: LedgerMetadata,
        version: Version,
        ensemble: Vec<Arc<BookieConnection>>,
        on_confirm: Option<ConfirmHook>,
    ) -> Arc<Self> {
        let (completions, mut queue) = mpsc::channel::<Pending>(MAX_PENDING_ADDS);
        let last_add_confirmed = Arc::new(AtomicI64::new(-1));
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let (task_lac, task_failure, ledger_id) = (last_add_confirmed.clone(), failure.clone(), metadata.ledger_id);
        tokio::spawn(async move {
            while let Some(pending) = queue.recv().await {
                let earlier_failure = task_failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(reason) = earlier_failure {
                    let _ = pending.reply.send(Err(BookieError::WriterFailed { ledger_id, reason }));
                    continue;
                }
                let mut outcome = Ok(pending.entry_id);
                for answer in pending.answers {
                    let result = answer.await.unwrap_or(Err(BookieError::Stopped { what: "bookie connection" }));
                    if let Err(error) = result {
                        outcome = Err(error);
                        break;
                    }
                }
                match &outcome {
                    Ok(entry_id) => {
                        task_lac.store(*entry_id as i64, Ordering::SeqCst);
                        if let Some(hook) = &on_confirm {
                            hook(*entry_id);
                        }
                    }
                    Err(error) => *task_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string()),
                }
                let _ = pending.reply.send(outcome);
            }
        });
        Arc::new(LedgerWriter {
            ledger_id: metadata.ledger_id,
            master_key: Bytes::from(metadata.master_key.clone()),
            ensemble,
            bookies,
            metadata: Mutex::new((metadata, version)),
            state: Mutex::new(State { next_entry_id: 0, failed: None, closed: false }),
            last_add_confirmed,
            completions,
            failure,
        })
    }

    pub fn ledger_id(&self) -> u64 {
        self.ledger_id
    }

    pub fn last_add_confirmed(&self) -> i64 {
        self.last_add_confirmed.load(Ordering::SeqCst)
    }

    /// Why the writer stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends an entry; the receiver answers its entry id once it and every earlier entry are
    /// durable on the ensemble, or the error that stopped the writer. Entry ids follow the
    /// order of calls.
    pub async fn add(&self, payload: Bytes) -> Result<oneshot::Receiver<Result<u64, BookieError>>, BookieError> {
        let entry_id = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.closed {
                return Err(BookieError::LedgerClosed { ledger_id: self.ledger_id });
            }
            if let Some(reason) = state.failed.clone().or_else(|| self.failure()) {
                state.failed = Some(reason.clone());
                return Err(BookieError::WriterFailed { ledger_id: self.ledger_id, reason });
            }
            let id = state.next_entry_id;
            state.next_entry_id += 1;
            id
        };
        let lac = self.last_add_confirmed();
        let mut answers = Vec::with_capacity(self.ensemble.len());
        for bookie in &self.ensemble {
            answers
                .push(bookie.add(self.ledger_id, entry_id, self.master_key.clone(), lac, payload.clone(), false).await);
        }
        let (reply, answer) = oneshot::channel();
        self.completions
            .send(Pending { entry_id, answers, reply })
            .await
            .map_err(|_| BookieError::Stopped { what: "ledger completion task" })?;
        Ok(answer)
    }

    /// Waits for every add sent so far, then closes the ledger in metadata at the last
    /// confirmed entry. Returns the last entry id (-1 for an empty ledger).
    pub async fn close(&self) -> Result<i64, BookieError> {
        let sent = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.closed = true;
            state.next_entry_id
        };
        // Every pending add has a completion queued in order: wait behind them.
        if sent > 0 {
            let (reply, answer) = oneshot::channel();
            let barrier = Pending { entry_id: sent - 1, answers: Vec::new(), reply };
            if self.completions.send(barrier).await.is_ok() {
                let _ = answer.await;
            }
        }
        if let Some(reason) = self.failure() {
            // The ensemble may hold entries this writer never confirmed: only recovery can
            // decide where the ledger ends.
            return Err(BookieError::WriterFailed { ledger_id: self.ledger_id, reason });
        }
        let last = self.last_add_confirmed();
        let (mut metadata, version) = self.metadata.lock().unwrap_or_else(|p| p.into_inner()).clone();
        metadata.state = LedgerState::Closed as i32;
        metadata.last_entry_id = last;
        let new_version = metadata::write(self.bookies.meta().as_ref(), &metadata, Expected::Version(version)).await?;
        *self.metadata.lock().unwrap_or_else(|p| p.into_inner()) = (metadata, new_version);
        Ok(last)
    }
}
