//! A simulated world for deterministic simulations of the ledger protocol and of what is
//! built on it (cargo feature `testing`; never in production builds): simulated bookies
//! behind the real [`BookieRpc`] trait, a simulated network, and an in-memory metadata store
//! with real compare-and-set, sessions and watches, all driven by one seeded random source.
//! Run it on a current-thread tokio runtime with paused time: every delay is a seeded
//! `tokio::time::sleep`, so one seed always takes the same course.
//!
//! - The network delays each request and answer by a seeded random time and loses some (a
//!   lost message is an error to the caller, like a broken connection).
//! - A bookie makes an add durable after a journal sync delay and only then answers; a crash
//!   loses what was not synced yet (never anything it answered). A fence is journaled the
//!   same way, and answers only once every add admitted before it is durable.
//! - The metadata store delays calls (more when `meta_slow_ms` is raised), fails some
//!   (`meta_failure`: half of the failed writes were applied anyway, as a timed-out etcd
//!   write may be), and expires sessions on demand ([`MemStore::expire_session`]).
//!
//! Used by `bookie/tests/simulation.rs` (the ledger protocol) and
//! `broker/tests/simulation.rs` (managed ledger, cursors, deduplication, delivery).

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use magnetar_meta::{Expected, MetaError, MetadataStore, SessionId, Version, Versioned, Watch, WatchEvent};
use magnetar_proto::bookie::Status;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::{AddRequest, BookieConnector, BookieRpc, LedgerEnd};
use crate::{BookieError, EntryId, LedgerId};

/// How much simulated time a scenario may take before it counts as stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(3600);

/// Runs one seed's `scenario` on a current-thread runtime with paused time (simulated time
/// jumps ahead whenever every task waits); a scenario still running after [`STUCK_AFTER`] of
/// simulated time fails as stuck.
pub fn run_paused<T>(scenario: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|error| format!("build runtime: {error}"))?;
    runtime.block_on(async move {
        match tokio::time::timeout(STUCK_AFTER, scenario).await {
            Ok(result) => result,
            Err(_) => Err(format!("the scenario did not finish within {STUCK_AFTER:?} of simulated time (stuck)")),
        }
    })
}

/// Registers the simulated bookies `bookie-0`.. `bookie-{bookies - 1}` (at `sim:<index>`, on
/// hosts of their own) in `meta`, as running bookies register.
pub async fn register_bookies(meta: &dyn MetadataStore, bookies: usize) -> Result<(), String> {
    for index in 0..bookies {
        let registration =
            crate::registration::BookieRegistration::new(format!("bookie-{index}"), format!("sim:{index}"))
                .with_host(format!("sim-host-{index}"));
        crate::registration::register(meta, &registration, Duration::from_secs(10))
            .await
            .map_err(|error| format!("register bookie: {error}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The simulated world: bookies, network, randomness.

/// One ledger's durable state on one simulated bookie.
#[derive(Default)]
pub struct SimLedger {
    pub master_key: Bytes,
    pub fenced: bool,
    pub lac: i64,
    pub entries: BTreeMap<u64, Bytes>,
}

enum Record {
    Add { ledger_id: u64, entry_id: u64, lac: i64, payload: Bytes },
    Fence { ledger_id: u64 },
}

/// One simulated bookie.
#[derive(Default)]
pub struct SimBookie {
    pub up: bool,
    /// Bumped by each crash: a waiter from an earlier incarnation lost its record.
    incarnation: u64,
    /// Durable state.
    pub ledgers: BTreeMap<u64, SimLedger>,
    /// Journal records admitted, not yet synced: (sync time, record), in sync order.
    unsynced: Vec<(Instant, Record)>,
    last_sync: Option<Instant>,
}

impl SimBookie {
    /// Applies the records whose sync time has come.
    fn sync(&mut self, now: Instant) {
        let due = self.unsynced.iter().take_while(|(at, _)| *at <= now).count();
        for (_, record) in self.unsynced.drain(..due) {
            match record {
                Record::Add { ledger_id, entry_id, lac, payload } => {
                    let ledger = self.ledgers.entry(ledger_id).or_default();
                    ledger.lac = ledger.lac.max(lac);
                    ledger.entries.insert(entry_id, payload);
                }
                Record::Fence { ledger_id } => self.ledgers.entry(ledger_id).or_default().fenced = true,
            }
        }
    }

    fn fence_pending(&self, ledger_id: u64) -> bool {
        self.unsynced.iter().any(|(_, record)| matches!(record, Record::Fence { ledger_id: id } if *id == ledger_id))
    }

    /// The ledger's state for a request with `key`, creating it (a first add or fence).
    fn ledger(&mut self, ledger_id: u64, key: &Bytes) -> Result<&mut SimLedger, BookieError> {
        let ledger = self.ledgers.entry(ledger_id).or_insert_with(|| SimLedger {
            master_key: key.clone(),
            lac: -1,
            ..SimLedger::default()
        });
        if ledger.master_key.is_empty() {
            ledger.master_key = key.clone();
            ledger.lac = ledger.lac.max(-1);
        }
        if ledger.master_key != *key {
            return Err(BookieError::Unauthorized { ledger_id });
        }
        Ok(ledger)
    }
}

/// Everything simulated, behind one lock ([`Shared`]).
pub struct World {
    pub rng: StdRng,
    pub bookies: BTreeMap<String, SimBookie>,
    /// Probability that one network message is lost.
    pub loss: f64,
    /// Probability that one metadata call fails (see the module doc).
    pub meta_failure: f64,
    /// Longest delay of one metadata call, in milliseconds.
    pub meta_slow_ms: u64,
    /// A deliberate bug, for checking that a simulation catches it: bookies answer an add as
    /// soon as it is admitted, before their journal made it durable.
    pub answer_before_sync: bool,
    /// A digest of every event, to check that a seed replays identically.
    pub trace: DefaultHasher,
    pub start: Instant,
}

pub type Shared = Arc<Mutex<World>>;

impl World {
    /// A world with `bookies` bookies (`bookie-0`...) up, nothing lost or failing, randomness
    /// from `seed`.
    pub fn new(seed: u64, bookies: usize) -> Shared {
        let world = World {
            rng: StdRng::seed_from_u64(seed),
            bookies: (0..bookies)
                .map(|index| (format!("bookie-{index}"), SimBookie { up: true, ..SimBookie::default() }))
                .collect(),
            loss: 0.0,
            meta_failure: 0.0,
            meta_slow_ms: 3,
            answer_before_sync: false,
            trace: DefaultHasher::new(),
            start: Instant::now(),
        };
        Arc::new(Mutex::new(world))
    }

    /// A seeded delay between 0.1 ms and `max_ms`.
    pub fn delay(&mut self, max_ms: u64) -> Duration {
        Duration::from_micros(self.rng.random_range(100..max_ms.max(1) * 1000))
    }

    fn lost(&mut self) -> bool {
        let loss = self.loss;
        self.rng.random_bool(loss)
    }

    /// Adds an event to the trace.
    pub fn note(&mut self, event: impl Hash) {
        event.hash(&mut self.trace);
        (Instant::now() - self.start).as_nanos().hash(&mut self.trace);
    }

    /// The digest of every event so far.
    pub fn trace(&self) -> u64 {
        self.trace.finish()
    }
}

fn lost_error(bookie: &str, what: &str) -> BookieError {
    BookieError::Remote { bookie: bookie.to_owned(), status: Status::IoError, message: format!("{what} lost") }
}

/// One client's handle to one simulated bookie.
pub struct SimRpc {
    world: Shared,
    bookie_id: String,
}

impl SimRpc {
    /// A message's trip: a seeded delay, then it may be lost or find the bookie down.
    async fn travel(&self, what: &str) -> Result<(), BookieError> {
        let delay = self.world.lock().delay(10);
        tokio::time::sleep(delay).await;
        let mut world = self.world.lock();
        world.note((&self.bookie_id, what));
        let lost = world.lost();
        let up = world.bookies.get(&self.bookie_id).is_some_and(|b| b.up);
        if lost || !up {
            return Err(lost_error(&self.bookie_id, what));
        }
        Ok(())
    }

    /// Journals `record` and waits for its sync; fails if the bookie crashed meanwhile.
    async fn journal(&self, record: Record) -> Result<(), BookieError> {
        let (sync_at, incarnation) = {
            let mut world = self.world.lock();
            // A bookie that answers before its sync is one whose syncs are slow (under load).
            let slowest = if world.answer_before_sync { 300 } else { 4 };
            let sync = world.delay(slowest);
            let bookie = world.bookies.get_mut(&self.bookie_id).ok_or_else(|| lost_error(&self.bookie_id, "bookie"))?;
            let mut sync_at = Instant::now() + sync;
            if let Some(last) = bookie.last_sync {
                sync_at = sync_at.max(last);
            }
            bookie.last_sync = Some(sync_at);
            bookie.unsynced.push((sync_at, record));
            (sync_at, bookie.incarnation)
        };
        tokio::time::sleep_until(sync_at).await;
        let mut world = self.world.lock();
        let bookie = world.bookies.get_mut(&self.bookie_id).ok_or_else(|| lost_error(&self.bookie_id, "bookie"))?;
        bookie.sync(Instant::now());
        if bookie.incarnation != incarnation {
            return Err(lost_error(&self.bookie_id, "journal write (bookie crashed)"));
        }
        Ok(())
    }

    fn with_bookie<T>(&self, work: impl FnOnce(&mut SimBookie) -> Result<T, BookieError>) -> Result<T, BookieError> {
        let mut world = self.world.lock();
        let bookie = world.bookies.get_mut(&self.bookie_id).ok_or_else(|| lost_error(&self.bookie_id, "bookie"))?;
        bookie.sync(Instant::now());
        work(bookie)
    }

    async fn fence_now(&self, ledger_id: u64, key: &Bytes) -> Result<(), BookieError> {
        if std::env::var_os("MAGNETAR_SIM_TRACE").is_some() {
            eprintln!("[{:?}] {} fence {ledger_id}", Instant::now(), self.bookie_id);
        }
        let already = self.with_bookie(|bookie| {
            let ledger = bookie.ledger(ledger_id, key)?;
            let fenced = ledger.fenced;
            Ok(fenced || bookie.fence_pending(ledger_id))
        })?;
        // Even if fenced already, wait behind the journal: the answer follows earlier adds.
        if already {
            let sync_at = self.world.lock().bookies.get(&self.bookie_id).and_then(|b| b.last_sync);
            if let Some(sync_at) = sync_at {
                tokio::time::sleep_until(sync_at).await;
            }
            let incarnation_ok =
                self.with_bookie(|bookie| Ok(bookie.ledgers.get(&ledger_id).is_some_and(|l| l.fenced)))?;
            if incarnation_ok {
                return Ok(());
            }
        }
        self.journal(Record::Fence { ledger_id }).await
    }
}

#[async_trait]
impl BookieRpc for SimRpc {
    fn bookie_id(&self) -> &str {
        &self.bookie_id
    }

    fn is_broken(&self) -> bool {
        false
    }

    async fn add(&self, add: AddRequest) -> oneshot::Receiver<Result<(), BookieError>> {
        let (reply, answer) = oneshot::channel();
        let rpc = SimRpc { world: self.world.clone(), bookie_id: self.bookie_id.clone() };
        tokio::spawn(async move {
            // A dropped `reply` is a lost answer.
            if rpc.travel("add").await.is_err() {
                return;
            }
            let admitted = rpc.with_bookie(|bookie| {
                let fence_pending = bookie.fence_pending(add.ledger_id);
                let ledger = bookie.ledger(add.ledger_id, &add.master_key)?;
                if (ledger.fenced || fence_pending) && !add.recovery {
                    return Err(BookieError::Fenced { ledger_id: add.ledger_id });
                }
                Ok(())
            });
            if std::env::var_os("MAGNETAR_SIM_TRACE").is_some() {
                let ok = admitted.as_ref().map(|_| ()).map_err(|e| e.to_string());
                eprintln!(
                    "[{:?}] {} add {}:{} recovery={} -> {ok:?}",
                    Instant::now(),
                    rpc.bookie_id,
                    add.ledger_id,
                    add.entry_id,
                    add.recovery
                );
            }
            let result = match admitted {
                Ok(()) => {
                    let record = Record::Add {
                        ledger_id: add.ledger_id,
                        entry_id: add.entry_id,
                        lac: add.last_add_confirmed,
                        payload: add.payload,
                    };
                    let early = rpc.world.lock().answer_before_sync;
                    if early {
                        let journal = SimRpc { world: rpc.world.clone(), bookie_id: rpc.bookie_id.clone() };
                        tokio::spawn(async move { journal.journal(record).await });
                    } else if rpc.journal(record).await.is_err() {
                        return;
                    }
                    Ok(())
                }
                Err(error) => Err(error),
            };
            if rpc.travel("add answer").await.is_err() {
                return;
            }
            let _ = reply.send(result);
        });
        answer
    }

    async fn read_entry(
        &self,
        ledger_id: LedgerId,
        entry_id: EntryId,
        fence_key: Option<Bytes>,
    ) -> Result<(Bytes, i64), BookieError> {
        let (ledger_id, entry_id) = (ledger_id.0, entry_id.0);
        self.travel("read").await?;
        if let Some(key) = &fence_key {
            self.fence_now(ledger_id, key).await?;
        }
        let result = self.with_bookie(|bookie| {
            let ledger = bookie.ledgers.get(&ledger_id).ok_or(BookieError::NoSuchLedger { ledger_id })?;
            let payload =
                ledger.entries.get(&entry_id).cloned().ok_or(BookieError::NoSuchEntry { ledger_id, entry_id })?;
            Ok((payload, ledger.lac))
        });
        self.travel("read answer").await?;
        result
    }

    async fn read_range(
        &self,
        ledger_id: LedgerId,
        first: EntryId,
        last: EntryId,
        max_entries: u32,
        max_bytes: u64,
    ) -> Result<Vec<(EntryId, Bytes)>, BookieError> {
        let (ledger_id, first, last) = (ledger_id.0, first.0, last.0);
        self.travel("read range").await?;
        let result = self.with_bookie(|bookie| {
            let ledger = bookie.ledgers.get(&ledger_id).ok_or(BookieError::NoSuchLedger { ledger_id })?;
            let mut out = Vec::new();
            let mut bytes = 0;
            for entry_id in first..=last {
                let Some(payload) = ledger.entries.get(&entry_id) else { break };
                if out.len() as u32 >= max_entries.max(1)
                    || (!out.is_empty() && bytes + payload.len() as u64 > max_bytes)
                {
                    break;
                }
                bytes += payload.len() as u64;
                out.push((EntryId(entry_id), payload.clone()));
            }
            if out.is_empty() {
                return Err(BookieError::NoSuchEntry { ledger_id, entry_id: first });
            }
            Ok(out)
        });
        self.travel("read range answer").await?;
        result
    }

    async fn fence(&self, ledger_id: LedgerId, master_key: Bytes) -> Result<LedgerEnd, BookieError> {
        let ledger_id = ledger_id.0;
        self.travel("fence").await?;
        self.fence_now(ledger_id, &master_key).await?;
        let end = self.with_bookie(|bookie| {
            let ledger = bookie.ledgers.get(&ledger_id).ok_or(BookieError::NoSuchLedger { ledger_id })?;
            let last_entry_id = ledger.entries.keys().next_back().map_or(-1, |id| *id as i64);
            Ok(LedgerEnd { last_add_confirmed: ledger.lac, last_entry_id })
        });
        self.travel("fence answer").await?;
        end
    }

    async fn read_lac(
        &self,
        ledger_id: LedgerId,
        previous_lac: i64,
        long_poll: Duration,
    ) -> Result<LedgerEnd, BookieError> {
        let ledger_id = ledger_id.0;
        self.travel("read lac").await?;
        let until = Instant::now() + long_poll;
        let end = loop {
            let end = self.with_bookie(|bookie| {
                let ledger = bookie.ledgers.get(&ledger_id).ok_or(BookieError::NoSuchLedger { ledger_id })?;
                let last_entry_id = ledger.entries.keys().next_back().map_or(-1, |id| *id as i64);
                Ok(LedgerEnd { last_add_confirmed: ledger.lac, last_entry_id })
            });
            match &end {
                Ok(found) if found.last_add_confirmed <= previous_lac && Instant::now() < until => {}
                _ => break end,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        self.travel("read lac answer").await?;
        end
    }

    async fn delete_ledger(&self, ledger_id: LedgerId) -> Result<(), BookieError> {
        let ledger_id = ledger_id.0;
        self.travel("delete").await?;
        self.with_bookie(|bookie| {
            bookie.ledgers.remove(&ledger_id);
            Ok(())
        })?;
        self.travel("delete answer").await
    }
}

/// Connects a ledger client ([`crate::client::Bookies::with_connector`]) to the simulated
/// bookies.
pub struct SimConnector {
    pub world: Shared,
}

#[async_trait]
impl BookieConnector for SimConnector {
    async fn connect(&self, bookie_id: &str) -> Result<Arc<dyn BookieRpc>, BookieError> {
        if !self.world.lock().bookies.contains_key(bookie_id) {
            return Err(BookieError::UnknownBookie { bookie: bookie_id.to_owned() });
        }
        Ok(Arc::new(SimRpc { world: self.world.clone(), bookie_id: bookie_id.to_owned() }))
    }
}

/// Crashes a bookie: what its journal had not synced is lost.
pub fn crash(world: &Shared, bookie_id: &str) {
    let mut world = world.lock();
    world.note(("crash", bookie_id));
    if let Some(bookie) = world.bookies.get_mut(bookie_id) {
        bookie.sync(Instant::now());
        bookie.unsynced.clear();
        bookie.last_sync = None;
        bookie.incarnation += 1;
        bookie.up = false;
    }
}

/// Restarts a crashed bookie with its durable state.
pub fn restart(world: &Shared, bookie_id: &str) {
    let mut world = world.lock();
    world.note(("restart", bookie_id));
    if let Some(bookie) = world.bookies.get_mut(bookie_id) {
        bookie.up = true;
    }
}

// ---------------------------------------------------------------------------------------------
// An in-memory metadata store with real compare-and-set, sessions, seeded delays and failures.

#[derive(Default)]
struct MemState {
    keys: BTreeMap<String, (Vec<u8>, Version, Option<i64>)>,
    revision: Version,
    next_session: i64,
    /// Sessions that ended (closed or expired): their keys are gone, writes under them fail.
    ended: BTreeSet<i64>,
    watchers: Vec<(String, mpsc::Sender<WatchEvent>)>,
}

/// The metadata store of a simulated world.
pub struct MemStore {
    world: Shared,
    state: Mutex<MemState>,
}

/// What a failed call did before failing.
enum Failure {
    /// Nothing: the call failed before reaching the store.
    Before,
    /// The write was applied, then the answer was lost.
    After,
}

impl MemStore {
    pub fn new(world: Shared) -> Arc<MemStore> {
        Arc::new(MemStore { world, state: Mutex::default() })
    }

    /// A seeded delay, then maybe a failure.
    async fn call(&self, what: &str, key: &str) -> Option<Failure> {
        let (delay, failure) = {
            let mut world = self.world.lock();
            let slow = world.meta_slow_ms;
            let delay = world.delay(slow);
            let failure = world.meta_failure;
            let failure = if failure > 0.0 && world.rng.random_bool(failure) {
                Some(if world.rng.random_bool(0.5) { Failure::Before } else { Failure::After })
            } else {
                None
            };
            world.note(("meta", what, key));
            (delay, failure)
        };
        tokio::time::sleep(delay).await;
        failure
    }

    fn timeout(operation: &'static str) -> MetaError {
        MetaError::EtcdTimeout { endpoint: "simulated store".to_owned(), operation, after: Duration::from_secs(5) }
    }

    fn notify(state: &mut MemState, event: WatchEvent) {
        let key = match &event {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key } => key.clone(),
        };
        state.watchers.retain(|(prefix, sender)| {
            if key.starts_with(prefix.as_str()) {
                sender.try_send(event.clone()).is_ok()
            } else {
                !sender.is_closed()
            }
        });
    }

    fn check(state: &MemState, key: &str, expected: Expected) -> magnetar_meta::Result<()> {
        let current = state.keys.get(key).map(|(_, version, _)| *version);
        let holds = match expected {
            Expected::Any => true,
            Expected::Absent => current.is_none(),
            Expected::Version(version) => current == Some(version),
        };
        if holds {
            Ok(())
        } else {
            Err(MetaError::BadVersion { key: key.to_owned(), expected: format!("{expected:?}") })
        }
    }

    fn put_now(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Expected,
        session: Option<i64>,
    ) -> magnetar_meta::Result<Version> {
        let mut state = self.state.lock();
        if let Some(session) = session.filter(|session| state.ended.contains(session)) {
            return Err(MetaError::SessionExpired { session });
        }
        Self::check(&state, key, expected)?;
        state.revision += 1;
        let version = state.revision;
        state.keys.insert(key.to_owned(), (value.clone(), version, session));
        Self::notify(&mut state, WatchEvent::Put { key: key.to_owned(), value, version });
        Ok(version)
    }

    async fn put_in(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Expected,
        session: Option<i64>,
    ) -> magnetar_meta::Result<Version> {
        match self.call("put", key).await {
            None => self.put_now(key, value, expected, session),
            Some(Failure::Before) => Err(Self::timeout("put")),
            Some(Failure::After) => {
                let _ = self.put_now(key, value, expected, session);
                Err(Self::timeout("put"))
            }
        }
    }

    /// Ends a session as if it expired: its ephemeral keys vanish and every later write under
    /// it fails with [`MetaError::SessionExpired`].
    pub fn expire_session(&self, session: SessionId) {
        let mut state = self.state.lock();
        state.ended.insert(session.0);
        let gone: Vec<String> = state
            .keys
            .iter()
            .filter(|(_, (_, _, owner))| *owner == Some(session.0))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            state.keys.remove(&key);
            Self::notify(&mut state, WatchEvent::Delete { key });
        }
    }

    /// The value at `key` now, without a delay or a failure (for checkers).
    pub fn peek(&self, key: &str) -> Option<Versioned> {
        self.state.lock().keys.get(key).map(|(value, version, _)| Versioned { value: value.clone(), version: *version })
    }
}

#[async_trait]
impl MetadataStore for MemStore {
    async fn get(&self, key: &str) -> magnetar_meta::Result<Option<Versioned>> {
        if self.call("get", key).await.is_some() {
            return Err(Self::timeout("get"));
        }
        Ok(self.peek(key))
    }

    async fn put(&self, key: &str, value: Vec<u8>, expected: Expected) -> magnetar_meta::Result<Version> {
        self.put_in(key, value, expected, None).await
    }

    async fn delete(&self, key: &str, expected: Expected) -> magnetar_meta::Result<()> {
        let failure = self.call("delete", key).await;
        if matches!(failure, Some(Failure::Before)) {
            return Err(Self::timeout("delete"));
        }
        let mut state = self.state.lock();
        Self::check(&state, key, expected)?;
        if state.keys.remove(key).is_some() {
            Self::notify(&mut state, WatchEvent::Delete { key: key.to_owned() });
        }
        match failure {
            Some(_) => Err(Self::timeout("delete")),
            None => Ok(()),
        }
    }

    async fn list_children(&self, path: &str) -> magnetar_meta::Result<Vec<String>> {
        if self.call("list", path).await.is_some() {
            return Err(Self::timeout("list"));
        }
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let state = self.state.lock();
        let mut children: Vec<String> = state
            .keys
            .keys()
            .filter_map(|key| key.strip_prefix(&prefix))
            .filter_map(|rest| rest.split('/').next())
            .map(str::to_owned)
            .collect();
        children.dedup();
        Ok(children)
    }

    async fn watch(&self, prefix: &str) -> magnetar_meta::Result<Watch> {
        let (sender, receiver) = mpsc::channel(1024);
        self.state.lock().watchers.push((prefix.to_owned(), sender));
        Ok(receiver)
    }

    async fn create_session(&self, _ttl: Duration) -> magnetar_meta::Result<SessionId> {
        let mut state = self.state.lock();
        state.next_session += 1;
        Ok(SessionId(state.next_session))
    }

    async fn put_ephemeral(
        &self,
        session: SessionId,
        key: &str,
        value: Vec<u8>,
        expected: Expected,
    ) -> magnetar_meta::Result<Version> {
        self.put_in(key, value, expected, Some(session.0)).await
    }

    async fn close_session(&self, session: SessionId) -> magnetar_meta::Result<()> {
        self.expire_session(session);
        Ok(())
    }
}
