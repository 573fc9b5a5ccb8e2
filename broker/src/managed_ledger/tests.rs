//! Managed ledger and cursor tests against real bookies (in process, over gRPC on loopback)
//! and a LocalStore, as `magnetar standalone` runs them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use magnetar_bookie::bookie::Bookie;
use magnetar_bookie::client::{Bookies, LedgerConfig};
use magnetar_bookie::registration::{self, BookieRegistration};
use magnetar_bookie::{BookieConfig, BookieServer};
use magnetar_meta::{LocalStore, MetadataStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::{ManagedLedgerConfig, Retention};
use super::cursor::cursor_path;
use super::cursor_state::CursorState;
use super::{info_path, EntryCacheConfig, EntryCacheManager, ManagedLedger, Position, READ_AHEAD_ENTRIES};

struct Cluster {
    _dir: tempfile::TempDir,
    meta: Arc<dyn MetadataStore>,
    bookies: Vec<Arc<Bookie>>,
    cancel: CancellationToken,
}

impl Cluster {
    async fn start(count: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let meta_dir = dir.path().join("metadata");
        let store = tokio::task::spawn_blocking(move || LocalStore::open(&meta_dir))
            .await
            .expect("join")
            .expect("open metadata store");
        let meta: Arc<dyn MetadataStore> = Arc::new(store);
        let cancel = CancellationToken::new();
        let mut bookies = Vec::new();
        for index in 0..count {
            let config = BookieConfig::new(format!("bookie-{index}"), dir.path().join(format!("bookie-{index}")));
            let server =
                tokio::task::spawn_blocking(move || BookieServer::open(&config)).await.expect("join").expect("open");
            bookies.push(server.bookie().clone());
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            tokio::spawn(server.run(listener, cancel.clone()));
            let registration = BookieRegistration::new(format!("bookie-{index}"), address.to_string());
            registration::register(meta.as_ref(), &registration, Duration::from_secs(30)).await.expect("register");
        }
        Cluster { _dir: dir, meta, bookies, cancel }
    }

    fn client(&self) -> Bookies {
        Bookies::new(self.meta.clone())
    }

    fn ledger_config(&self) -> LedgerConfig {
        let n = self.bookies.len() as u32;
        LedgerConfig { ensemble_size: n, write_quorum: n, ack_quorum: n }
    }

    async fn open(&self, name: &str, config: ManagedLedgerConfig) -> Arc<ManagedLedger> {
        self.open_cached(name, config, &EntryCacheManager::new(config.cache)).await
    }

    async fn open_cached(
        &self,
        name: &str,
        config: ManagedLedgerConfig,
        cache: &Arc<EntryCacheManager>,
    ) -> Arc<ManagedLedger> {
        ManagedLedger::open(name, self.client(), self.ledger_config(), config, cache)
            .await
            .expect("open managed ledger")
    }

    /// Whether any bookie still holds an entry of the ledger, or its metadata still exists.
    async fn ledger_exists(&self, ledger_id: u64) -> bool {
        let in_metadata = self
            .meta
            .get(&magnetar_bookie::ledger_path(magnetar_bookie::LedgerId(ledger_id)))
            .await
            .expect("get")
            .is_some();
        let on_bookie = self.bookies.iter().any(|b| b.last_entry_id(ledger_id).expect("last entry") >= 0);
        in_metadata || on_bookie
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Rollover by count and size only; nothing trimmed, no age limits in the way.
fn config() -> ManagedLedgerConfig {
    ManagedLedgerConfig {
        max_entries_per_ledger: 1_000_000,
        max_size_per_ledger_bytes: u64::MAX,
        min_ledger_rollover_time: Duration::ZERO,
        max_ledger_rollover_time: Duration::from_secs(3600),
        cursor_max_entries_per_ledger: 1000,
        retention: Retention::INFINITE,
        check_interval: Duration::from_secs(3600),
        cache: EntryCacheConfig::default(),
        speculative_read_timeout: Duration::from_millis(500),
    }
}

async fn add(ledger: &Arc<ManagedLedger>, data: impl Into<Bytes>) -> Position {
    ledger.add_entry(data.into()).await.expect("add").await.expect("durable")
}

/// Every entry from the start, walking ledgers with `next_position` and `read_entries`.
async fn read_all(ledger: &ManagedLedger) -> Vec<(Position, Bytes)> {
    let mut out: Vec<(Position, Bytes)> = Vec::new();
    let mut after = None;
    while let Some(from) = ledger.next_position(after) {
        let entries = ledger.read_entries(from, 7).await.expect("read");
        assert!(!entries.is_empty(), "no entries at {from}");
        after = entries.last().map(|(p, _)| *p);
        out.extend(entries);
    }
    out
}

#[tokio::test]
async fn rollover_by_entry_count_spreads_entries_over_ledgers_read_back_in_order() {
    let cluster = Cluster::start(1).await;
    let ledger =
        cluster.open("t/ns/persistent/count", ManagedLedgerConfig { max_entries_per_ledger: 10, ..config() }).await;
    let mut positions = Vec::new();
    for i in 0..35 {
        positions.push(add(&ledger, format!("m{i}")).await);
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions strictly increasing: {positions:?}");
    let ids = ledger.ledger_ids();
    assert!(ids.len() >= 4, "35 entries at 10 per ledger need 4 ledgers, got {ids:?}");
    assert_eq!(positions[10], Position::new(positions[10].ledger_id, 0), "entry 10 starts a new ledger");
    assert_ne!(positions[9].ledger_id, positions[10].ledger_id);
    let read = read_all(&ledger).await;
    let bodies: Vec<String> = read.iter().map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect();
    assert_eq!(bodies, (0..35).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(read.iter().map(|(p, _)| *p).collect::<Vec<_>>(), positions);
    assert_eq!(ledger.entries_after(None), 35);
    // The list is stored: a new instance (after this one is dropped uncleanly) sees it all.
    drop(ledger);
    let reopened =
        cluster.open("t/ns/persistent/count", ManagedLedgerConfig { max_entries_per_ledger: 10, ..config() }).await;
    assert_eq!(read_all(&reopened).await.len(), 35);
}

#[tokio::test]
async fn concurrent_adds_across_a_rollover_are_neither_lost_nor_reordered() {
    let cluster = Cluster::start(1).await;
    let ledger =
        cluster.open("t/ns/persistent/concurrent", ManagedLedgerConfig { max_entries_per_ledger: 5, ..config() }).await;
    let mut tasks = Vec::new();
    for producer in 0..4 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..20 {
                positions.push(add(&ledger, format!("{producer}-{i}")).await);
            }
            positions
        }));
    }
    for task in tasks {
        let positions = task.await.expect("join");
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "one producer's positions in order: {positions:?}");
    }
    let read = read_all(&ledger).await;
    assert_eq!(read.len(), 80);
    for producer in 0..4 {
        let mine: Vec<String> = read
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .filter(|b| b.starts_with(&format!("{producer}-")))
            .collect();
        assert_eq!(mine, (0..20).map(|i| format!("{producer}-{i}")).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn rollover_by_size_and_empty_ledgers_are_walked_over() {
    let cluster = Cluster::start(1).await;
    let ledger =
        cluster.open("t/ns/persistent/size", ManagedLedgerConfig { max_size_per_ledger_bytes: 250, ..config() }).await;
    for i in 0..10 {
        add(&ledger, vec![i as u8; 100]).await;
    }
    // 100-byte entries, 250 bytes per ledger: a rollover after every third entry.
    assert!(ledger.ledger_ids().len() >= 4, "ledgers: {:?}", ledger.ledger_ids());
    // Reopening without close leaves an empty current ledger behind each time.
    drop(ledger);
    let ledger =
        cluster.open("t/ns/persistent/size", ManagedLedgerConfig { max_size_per_ledger_bytes: 250, ..config() }).await;
    let read = read_all(&ledger).await;
    assert_eq!(read.len(), 10);
    assert!(read.iter().enumerate().all(|(i, (_, b))| b[..] == [i as u8; 100][..]));
    assert_eq!(ledger.next_position(read.last().map(|(p, _)| *p)), None);
}

#[tokio::test]
async fn reopened_cursor_resumes_with_exactly_its_individual_acks() {
    let cluster = Cluster::start(1).await;
    let name = "t/ns/persistent/acks";
    let ledger = cluster.open(name, ManagedLedgerConfig { max_entries_per_ledger: 4, ..config() }).await;
    let mut positions = Vec::new();
    for i in 0..10 {
        positions.push(add(&ledger, format!("m{i}")).await);
    }
    let cursor = ledger.open_cursor("sub", None).await.expect("cursor");
    let mut state = cursor.state().expect("state");
    for i in [0, 1, 2, 5, 7] {
        state.ack_individual(positions[i], &ledger);
    }
    cursor.persist(&state);
    cursor.flush().await;
    let expected = CursorState {
        mark_delete: Some(positions[2]),
        individually_acked: [positions[5], positions[7]].into_iter().collect(),
        ..Default::default()
    };
    assert_eq!(state, expected);
    assert_eq!(ledger.backlog(&state), 10 - 5);
    let cursor_ledger = cursor.ledger_id().expect("the first ack created a cursor ledger");
    // Dropped without close: the cursor ledger stays open, as after a crash.
    drop(cursor);
    drop(ledger);
    let reopened = cluster.open(name, ManagedLedgerConfig { max_entries_per_ledger: 4, ..config() }).await;
    let cursors = reopened.cursors();
    assert_eq!(cursors.len(), 1, "the stored cursor is opened with the managed ledger");
    let cursor = reopened.open_cursor("sub", None).await.expect("cursor");
    assert_eq!(cursor.state().expect("state"), expected);
    assert_eq!(cursor.backlog(&reopened), 5);
    // The next change moves to a new cursor ledger and deletes the recovered one.
    let mut state = cursor.state().expect("state");
    state.ack_individual(positions[3], &reopened);
    cursor.persist(&state);
    cursor.flush().await;
    assert_ne!(cursor.ledger_id(), Some(cursor_ledger));
    assert!(!cluster.ledger_exists(cursor_ledger).await, "old cursor ledger deleted");
    assert_eq!(state.mark_delete, Some(positions[3]));
    // A clean close, then another reopen: the state is there again.
    reopened.close().await.expect("close");
    drop(cursor);
    drop(reopened);
    let again = cluster.open(name, config()).await;
    let cursor = again.open_cursor("sub", None).await.expect("cursor");
    assert_eq!(cursor.state().expect("state").mark_delete, Some(positions[3]));
    assert_eq!(cursor.state().expect("state").individually_acked, [positions[5], positions[7]].into_iter().collect());
}

#[tokio::test]
async fn cursor_switches_ledgers_when_full_and_deletes_the_old_one() {
    let cluster = Cluster::start(1).await;
    let name = "t/ns/persistent/switch";
    let ledger = cluster.open(name, ManagedLedgerConfig { cursor_max_entries_per_ledger: 3, ..config() }).await;
    let mut positions = Vec::new();
    for i in 0..8 {
        positions.push(add(&ledger, format!("m{i}")).await);
    }
    let cursor = ledger.open_cursor("sub", None).await.expect("cursor");
    let mut state = cursor.state().expect("state");
    let mut used = Vec::new();
    for position in &positions {
        state.ack_cumulative(*position, &ledger);
        cursor.persist(&state);
        cursor.flush().await;
        let current = cursor.ledger_id().expect("cursor ledger");
        if used.last() != Some(&current) {
            used.push(current);
        }
    }
    assert!(used.len() >= 3, "8 changes at 3 per ledger use 3 ledgers: {used:?}");
    for old in &used[..used.len() - 1] {
        assert!(!cluster.ledger_exists(*old).await, "old cursor ledger {old} deleted");
    }
    assert!(cluster.ledger_exists(*used.last().expect("one")).await);
    let snapshot = cluster.meta.get(&cursor_path(name, "sub")).await.expect("get").expect("snapshot");
    let snapshot =
        <magnetar_proto::records::CursorInfo as prost::Message>::decode(&snapshot.value[..]).expect("decode");
    assert_eq!(snapshot.cursor_ledger_id, *used.last().expect("one"));
    drop(cursor);
    drop(ledger);
    let reopened = cluster.open(name, config()).await;
    let cursor = reopened.open_cursor("sub", None).await.expect("cursor");
    assert_eq!(cursor.state().expect("state").mark_delete, Some(positions[7]));
}

#[tokio::test]
async fn retention_trims_consumed_ledgers_but_never_what_a_cursor_needs() {
    let cluster = Cluster::start(1).await;
    let name = "t/ns/persistent/trim";
    let config = ManagedLedgerConfig { max_entries_per_ledger: 3, retention: Retention::NONE, ..config() };
    let ledger = cluster.open(name, config).await;
    let cursor = ledger.open_cursor("sub", None).await.expect("cursor");
    let mut positions = Vec::new();
    for i in 0..10 {
        positions.push(add(&ledger, format!("m{i}")).await);
    }
    let before = ledger.ledger_ids();
    assert!(before.len() >= 4, "{before:?}");
    // Nothing acknowledged: the cursor needs everything.
    assert!(ledger.trim().await.expect("trim").is_empty());
    // Acknowledge through the middle of the second ledger: only the first is consumed.
    let mut state = cursor.state().expect("state");
    state.ack_cumulative(positions[4], &ledger);
    cursor.persist(&state);
    cursor.flush().await;
    let removed = ledger.trim().await.expect("trim");
    assert_eq!(removed, vec![positions[0].ledger_id]);
    assert!(!cluster.ledger_exists(positions[0].ledger_id).await, "bookie data and metadata gone");
    assert!(cluster.ledger_exists(positions[3].ledger_id).await, "the cursor still needs entry 5 of this ledger");
    let stored = cluster.meta.get(&info_path(name)).await.expect("get").expect("info");
    let stored =
        <magnetar_proto::records::ManagedLedgerInfo as prost::Message>::decode(&stored.value[..]).expect("decode");
    assert!(stored.ledgers.iter().all(|l| l.ledger_id != positions[0].ledger_id));
    let read: Vec<Position> = read_all(&ledger).await.into_iter().map(|(p, _)| p).collect();
    assert_eq!(read, positions[3..].to_vec());
    assert_eq!(cursor.backlog(&ledger), 5);
    // Everything acknowledged: every closed ledger goes, the current one stays.
    state.ack_cumulative(positions[9], &ledger);
    cursor.persist(&state);
    cursor.flush().await;
    ledger.trim().await.expect("trim");
    let current = *ledger.ledger_ids().last().expect("current");
    assert!(ledger.ledger_ids().len() <= 2, "{:?}", ledger.ledger_ids());
    assert!(cluster.ledger_exists(current).await, "the current ledger is never trimmed");
    assert_eq!(cursor.backlog(&ledger), 0);
    assert!(!cluster.ledger_exists(positions[4].ledger_id).await);
    // A second cursor created at the start holds the trim back once more data comes.
    let slow = ledger.open_cursor("slow", None).await.expect("cursor");
    for i in 10..16 {
        add(&ledger, format!("m{i}")).await;
    }
    let mut state = cursor.state().expect("state");
    state.ack_cumulative(ledger.last_confirmed().expect("last"), &ledger);
    cursor.persist(&state);
    cursor.flush().await;
    assert!(ledger.trim().await.expect("trim").is_empty(), "the slow cursor needs everything");
    assert_eq!(slow.backlog(&ledger), ledger.entries_after(None));
}

#[tokio::test]
async fn retention_by_size_and_time_keep_consumed_ledgers() {
    let cluster = Cluster::start(1).await;
    let kept = ManagedLedgerConfig {
        max_entries_per_ledger: 2,
        retention: Retention { time: Some(Duration::from_secs(3600)), size_bytes: Some(250) },
        ..config()
    };
    let ledger = cluster.open("t/ns/persistent/retained", kept).await;
    let cursor = ledger.open_cursor("sub", None).await.expect("cursor");
    for i in 0..8 {
        add(&ledger, vec![i as u8; 100]).await;
    }
    let mut state = cursor.state().expect("state");
    state.ack_cumulative(ledger.last_confirmed().expect("last"), &ledger);
    cursor.persist(&state);
    cursor.flush().await;
    // Four closed ledgers of 200 bytes each: keep the newest ones that reach 250 bytes.
    let before = ledger.ledger_ids();
    let removed = ledger.trim().await.expect("trim");
    assert!(!removed.is_empty());
    let remaining_closed: u64 = ledger.storage_stats().size_bytes;
    assert!(remaining_closed >= 250, "retention keeps at least 250 bytes, kept {remaining_closed}");
    assert_eq!(&before[..removed.len()], &removed[..], "the oldest go first");
    // Infinite retention keeps everything.
    let forever = ManagedLedgerConfig { max_entries_per_ledger: 2, retention: Retention::INFINITE, ..config() };
    let ledger = cluster.open("t/ns/persistent/forever", forever).await;
    let cursor = ledger.open_cursor("sub", None).await.expect("cursor");
    for i in 0..6 {
        add(&ledger, vec![i as u8; 100]).await;
    }
    let mut state = cursor.state().expect("state");
    state.ack_cumulative(ledger.last_confirmed().expect("last"), &ledger);
    cursor.persist(&state);
    cursor.flush().await;
    assert!(ledger.trim().await.expect("trim").is_empty());
}

#[tokio::test]
async fn rollover_by_age_and_periodic_trim_run_without_adds() {
    let cluster = Cluster::start(1).await;
    let config = ManagedLedgerConfig {
        max_ledger_rollover_time: Duration::from_millis(200),
        retention: Retention::NONE,
        check_interval: Duration::from_millis(50),
        ..config()
    };
    let ledger = cluster.open("t/ns/persistent/age", config).await;
    let first = add(&ledger, "m0").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // No cursor and no retention: the old ledger is rolled over, then trimmed, by the check task.
    while ledger.ledger_ids().contains(&first.ledger_id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ledger {} still listed: {:?}",
            first.ledger_id,
            ledger.ledger_ids()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The list drops the ledger first; its deletion on the bookies and in metadata follows.
    while cluster.ledger_exists(first.ledger_id).await {
        assert!(tokio::time::Instant::now() < deadline, "trimmed ledger {} never deleted", first.ledger_id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ledger.ledger_ids().len(), 1);
}

#[tokio::test]
async fn a_policy_retention_overrides_the_default_and_backlog_bytes_follow_the_cursor() {
    let cluster = Cluster::start(1).await;
    let config = ManagedLedgerConfig { max_entries_per_ledger: 3, retention: Retention::NONE, ..config() };
    let ledger = cluster.open("t/ns/persistent/policy-retention", config).await;
    let cursor = ledger.open_cursor("sub", None).await.expect("cursor");
    let mut positions = Vec::new();
    for i in 0..10 {
        positions.push(add(&ledger, format!("m{i}")).await);
    }
    let all = ledger.bytes_after(None);
    assert_eq!(all, 20, "ten 2-byte entries");
    assert_eq!(ledger.bytes_after(Some(positions[4])), 10, "five entries after the fifth");
    // Eviction to 5 bytes keeps the newest two entries: through the eighth goes.
    assert_eq!(ledger.keeping_at_most(None, 5), Some(positions[7]));
    assert_eq!(ledger.bytes_after(Some(positions[7])), 4);
    assert_eq!(ledger.keeping_at_most(Some(positions[8]), 5), Some(positions[8]), "never moves back");
    assert_eq!(ledger.keeping_at_most(None, 100), None, "everything fits");
    let mut state = cursor.state().expect("state");
    state.ack_cumulative(positions[9], &ledger);
    cursor.persist(&state);
    cursor.flush().await;
    // The namespace keeps everything: nothing is trimmed though all is consumed.
    ledger.set_retention(Some(Retention::INFINITE));
    assert_eq!(ledger.retention(), Retention::INFINITE);
    assert!(ledger.trim().await.expect("trim").is_empty());
    // The policy removed: the broker's default (keep nothing) applies again.
    ledger.set_retention(None);
    assert!(!ledger.trim().await.expect("trim").is_empty());
}

#[tokio::test]
async fn a_reader_at_the_tail_reads_writes_from_the_entry_cache_without_a_copy() {
    let cluster = Cluster::start(2).await;
    let cache = EntryCacheManager::new(EntryCacheConfig::default());
    let ledger = cluster.open_cached("t/ns/persistent/tail-cache", config(), &cache).await;
    let first = add(&ledger, "before anyone reads").await;
    assert_eq!(cache.stats().entries, 0, "nobody reads: nothing cached");

    let reader = ledger.cache_reader();
    reader.at(Position::new(first.ledger_id, first.entry_id + 1));
    let mut written = Vec::new();
    for i in 0..50 {
        let data = Bytes::from(format!("message {i}"));
        let durable = ledger.add_entry(data.clone()).await.expect("add");
        written.push((durable.await.expect("durable"), data));
    }
    assert_eq!(cache.stats().entries, 50);
    let read = ledger.read_entries(written[0].0, 100).await.expect("read");
    assert_eq!(read.len(), 50);
    for ((position, data), (wrote_at, wrote)) in read.iter().zip(&written) {
        assert_eq!(position, wrote_at);
        assert_eq!(data.as_ptr(), wrote.as_ptr(), "served from the cache: the bytes the add was given");
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (50, 0), "{stats:?}");

    // The entry before the reader is a miss, read from the bookies, and the same content.
    let before = ledger.read_entries(first, 1).await.expect("read");
    assert_eq!(before[0].1, Bytes::from("before anyone reads"));
    assert_eq!(cache.stats().misses, 1);

    // Past them all: they are evicted; with no reader left, nothing more is cached.
    let last = written.last().expect("written").0;
    reader.at(Position::new(last.ledger_id, last.entry_id + 1));
    assert_eq!(cache.stats().entries, 0);
    drop(reader);
    add(&ledger, "after the reader left").await;
    assert_eq!(cache.stats().entries, 0);
    ledger.close().await.expect("close");
}

#[tokio::test]
async fn a_catch_up_read_loads_the_next_entries_ahead_from_every_copy() {
    let cluster = Cluster::start(2).await;
    let ledger = cluster.open("t/ns/persistent/catch-up", config()).await;
    let mut written = Vec::new();
    for i in 0..1000 {
        written.push((add(&ledger, format!("entry {i}")).await, Bytes::from(format!("entry {i}"))));
    }
    // A second managed ledger object on the same log would be another broker; here a new
    // cache with a reader from the start stands for a subscription catching up.
    let cache = EntryCacheManager::new(EntryCacheConfig::default());
    ledger.close().await.expect("close");
    let ledger = cluster.open_cached("t/ns/persistent/catch-up", config(), &cache).await;
    let reader = ledger.cache_reader();
    reader.at(written[0].0);
    let mut read = Vec::new();
    let mut from = written[0].0;
    while read.len() < written.len() {
        let batch = ledger.read_entries(from, 100).await.expect("read");
        assert!(!batch.is_empty());
        let last = batch.last().expect("batch").0;
        from = Position::new(last.ledger_id, last.entry_id + 1);
        read.extend(batch);
        reader.at(from);
    }
    assert_eq!(read, written, "every entry once, in order");
    let stats = cache.stats();
    assert!(stats.hits > 0, "the read-ahead served later batches: {stats:?}");
    assert!(stats.misses < 10, "most batches came from the read-ahead: {stats:?}");
    assert!(u64::from(READ_AHEAD_ENTRIES) >= 400);
    ledger.close().await.expect("close");
}
