//! The `MetadataStore` conformance suite: every case runs against `LocalStore` (a RocksDB
//! directory in a temp dir) and `EtcdStore` (a real etcd-server started per test by
//! `magnetar_meta::testing::EtcdServer`; the test fails if etcd-server is not installed).
//! Backend-specific cases (restarts of the local store, lease expiry in etcd) follow the
//! shared ones.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use magnetar_meta::testing::EtcdServer;
use magnetar_meta::{lock, sequence, Expected, LocalStore, MetaError, MetadataStore, SessionId, Watch, WatchEvent};
use tempfile::TempDir;

/// Upper bound for anything the suite waits for.
const PATIENCE: Duration = Duration::from_secs(15);
/// Session ttl for the shared cases; long enough never to expire during a test.
const SESSION_TTL: Duration = Duration::from_secs(30);

/// A store under test and what keeps it running. Fields drop in order: the store first.
struct Harness {
    store: Arc<dyn MetadataStore>,
    _etcd: Option<EtcdServer>,
    _directory: Option<TempDir>,
}

async fn local() -> Result<Harness> {
    let directory = TempDir::new().context("create temp dir")?;
    let store = open_local(directory.path()).await?;
    Ok(Harness { store: Arc::new(store), _etcd: None, _directory: Some(directory) })
}

async fn etcd() -> Result<Harness> {
    let server = EtcdServer::start().await.context("start etcd-server for the test")?;
    let store = server.connect().await.context("connect to etcd")?;
    Ok(Harness { store: Arc::new(store), _etcd: Some(server), _directory: None })
}

async fn open_local(path: &Path) -> Result<LocalStore> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || LocalStore::open(&path)).await?.context("open local store")
}

/// Instantiates each shared case once per backend: `local_store::<case>` and `etcd_store::<case>`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod local_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let harness = super::local().await?;
                    super::$case(std::sync::Arc::clone(&harness.store)).await
                }
            )*
        }
        mod etcd_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let harness = super::etcd().await?;
                    super::$case(std::sync::Arc::clone(&harness.store)).await
                }
            )*
        }
    };
}

conformance!(
    put_then_get_returns_value_and_versions_increase,
    compare_and_set_rejects_stale_or_absent_expectations,
    delete_honours_expected_version,
    relative_keys_are_rejected,
    list_children_returns_distinct_sorted_segments,
    watch_sees_changes_under_prefix_in_order,
    watcher_that_falls_behind_is_cut_off,
    ephemeral_keys_vanish_when_session_closes,
    persistent_put_detaches_key_from_session,
    lock_excludes_second_acquirer_until_release,
    lock_passes_on_when_holder_session_closes,
    sequence_ids_are_unique_under_concurrency,
);

// ---------------------------------------------------------------------------------------------
// Shared cases.

async fn put_then_get_returns_value_and_versions_increase(store: Arc<dyn MetadataStore>) -> Result<()> {
    ensure!(store.get("/k/a").await?.is_none(), "fresh store has no /k/a");
    let first = store.put("/k/a", b"one".to_vec(), Expected::Any).await?;
    ensure!(first > 0, "versions are positive, got {first}");
    let read = store.get("/k/a").await?.context("/k/a after put")?;
    ensure!(read.value == b"one" && read.version == first, "read back {read:?}");

    let second = store.put("/k/a", b"two".to_vec(), Expected::Any).await?;
    ensure!(second > first, "overwrite must raise the version: {first} then {second}");
    let other = store.put("/k/b", Vec::new(), Expected::Any).await?;
    ensure!(other > second, "versions are store-wide: {second} then {other} on another key");
    let read = store.get("/k/a").await?.context("/k/a after overwrite")?;
    ensure!(read.value == b"two" && read.version == second, "read back {read:?}");
    let empty = store.get("/k/b").await?.context("/k/b")?;
    ensure!(empty.value.is_empty(), "empty values are kept: {empty:?}");
    Ok(())
}

async fn compare_and_set_rejects_stale_or_absent_expectations(store: Arc<dyn MetadataStore>) -> Result<()> {
    let created = store.put("/cas", b"v1".to_vec(), Expected::Absent).await?;
    expect_bad_version(store.put("/cas", b"again".to_vec(), Expected::Absent).await, "Absent on an existing key")?;

    let updated = store.put("/cas", b"v2".to_vec(), Expected::Version(created)).await?;
    ensure!(updated > created);
    expect_bad_version(store.put("/cas", b"stale".to_vec(), Expected::Version(created)).await, "stale version")?;
    expect_bad_version(
        store.put("/cas-missing", b"x".to_vec(), Expected::Version(created)).await,
        "a version on a missing key",
    )?;

    let read = store.get("/cas").await?.context("/cas")?;
    ensure!(read.value == b"v2" && read.version == updated, "failed CAS must not write: {read:?}");
    ensure!(store.get("/cas-missing").await?.is_none(), "failed CAS must not create");
    Ok(())
}

async fn delete_honours_expected_version(store: Arc<dyn MetadataStore>) -> Result<()> {
    store.delete("/d/missing", Expected::Any).await.context("deleting a missing key with Any is Ok")?;
    store.delete("/d/missing", Expected::Absent).await.context("deleting a missing key expected absent is Ok")?;
    expect_bad_version(store.delete("/d/missing", Expected::Version(1)).await, "a version on a missing key")?;

    let version = store.put("/d/a", b"x".to_vec(), Expected::Any).await?;
    expect_bad_version(store.delete("/d/a", Expected::Version(version + 1000)).await, "wrong version")?;
    expect_bad_version(store.delete("/d/a", Expected::Absent).await, "Absent on an existing key")?;
    ensure!(store.get("/d/a").await?.is_some(), "failed deletes must not delete");
    store.delete("/d/a", Expected::Version(version)).await?;
    ensure!(store.get("/d/a").await?.is_none(), "deleted with the right version");

    store.put("/d/b", b"x".to_vec(), Expected::Any).await?;
    store.delete("/d/b", Expected::Any).await?;
    ensure!(store.get("/d/b").await?.is_none(), "deleted unconditionally");

    let recreated = store.put("/d/a", b"y".to_vec(), Expected::Absent).await?;
    ensure!(recreated > version, "a re-created key gets a new, higher version");
    Ok(())
}

async fn relative_keys_are_rejected(store: Arc<dyn MetadataStore>) -> Result<()> {
    let invalid = |result: Result<(), MetaError>, what: &str| match result {
        Err(MetaError::InvalidKey { .. }) => Ok(()),
        other => bail!("{what}: expected InvalidKey, got {other:?}"),
    };
    invalid(store.get("no-slash").await.map(drop), "get")?;
    invalid(store.put("no-slash", Vec::new(), Expected::Any).await.map(drop), "put")?;
    invalid(store.delete("", Expected::Any).await, "delete")?;
    invalid(store.list_children("a/b").await.map(drop), "list_children")?;
    invalid(store.watch("w").await.map(drop), "watch")?;
    Ok(())
}

async fn list_children_returns_distinct_sorted_segments(store: Arc<dyn MetadataStore>) -> Result<()> {
    for key in
        ["/ls", "/ls/b", "/ls/a", "/ls/a/x", "/ls/a/y/z", "/ls/a/y/w", "/ls/c/d/e", "/ls/b!x", "/lsx/e", "/other"]
    {
        store.put(key, Vec::new(), Expected::Any).await?;
    }
    let listed = store.list_children("/ls").await?;
    ensure!(listed == ["a", "b", "b!x", "c"], "children of /ls: {listed:?}");
    let listed = store.list_children("/ls/").await?;
    ensure!(listed == ["a", "b", "b!x", "c"], "children of /ls/: {listed:?}");
    let listed = store.list_children("/ls/a").await?;
    ensure!(listed == ["x", "y"], "children of /ls/a: {listed:?}");
    let listed = store.list_children("/ls/b").await?;
    ensure!(listed.is_empty(), "a leaf has no children: {listed:?}");
    let listed = store.list_children("/nothing").await?;
    ensure!(listed.is_empty(), "a missing directory has no children: {listed:?}");
    let listed = store.list_children("/").await?;
    ensure!(listed == ["ls", "lsx", "other"], "children of /: {listed:?}");
    Ok(())
}

async fn watch_sees_changes_under_prefix_in_order(store: Arc<dyn MetadataStore>) -> Result<()> {
    store.put("/w/before", b"old".to_vec(), Expected::Any).await?;
    let mut watch = store.watch("/w/").await?;

    let a = store.put("/w/a", b"1".to_vec(), Expected::Any).await?;
    store.put("/wx/outside", b"no".to_vec(), Expected::Any).await?;
    store.put("/other", b"no".to_vec(), Expected::Any).await?;
    store.delete("/w/a", Expected::Any).await?;
    let nested = store.put("/w/b/c", b"2".to_vec(), Expected::Any).await?;
    store.delete("/wx/outside", Expected::Any).await?;
    let end = store.put("/w/end", b"3".to_vec(), Expected::Any).await?;

    // Events arrive in order, so had anything outside /w/ been delivered it would show up
    // before /w/end.
    let expected = [
        WatchEvent::Put { key: "/w/a".into(), value: b"1".to_vec(), version: a },
        WatchEvent::Delete { key: "/w/a".into() },
        WatchEvent::Put { key: "/w/b/c".into(), value: b"2".to_vec(), version: nested },
        WatchEvent::Put { key: "/w/end".into(), value: b"3".to_vec(), version: end },
    ];
    for want in expected {
        let got = next_event(&mut watch).await?;
        ensure!(got == want, "expected {want:?}, got {got:?}");
    }
    Ok(())
}

async fn watcher_that_falls_behind_is_cut_off(store: Arc<dyn MetadataStore>) -> Result<()> {
    // Both stores use a capacity of 1024.
    const CAPACITY: usize = 1024;
    assert_eq!(CAPACITY, magnetar_meta::local::WATCH_CAPACITY);
    assert_eq!(CAPACITY, magnetar_meta::etcd::WATCH_CAPACITY);
    let mut slow = store.watch("/flood/").await?;

    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for index in 0..(CAPACITY / 8 + 8) {
                    store.put(&format!("/flood/{writer}/{index}"), Vec::new(), Expected::Any).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }

    let mut received = 0;
    loop {
        match tokio::time::timeout(PATIENCE, slow.recv()).await {
            Ok(Some(_)) => received += 1,
            Ok(None) => break,
            Err(_) => bail!("the slow watcher was not cut off (received {received} events, then nothing)"),
        }
    }
    ensure!(received <= CAPACITY, "a cut-off watcher gets at most its capacity, got {received}");
    Ok(())
}

async fn ephemeral_keys_vanish_when_session_closes(store: Arc<dyn MetadataStore>) -> Result<()> {
    let session = store.create_session(SESSION_TTL).await?;
    let other = store.create_session(SESSION_TTL).await?;
    store.put_ephemeral(session, "/eph/a", b"a".to_vec(), Expected::Absent).await?;
    store.put_ephemeral(session, "/eph/b", b"b".to_vec(), Expected::Any).await?;
    store.put_ephemeral(other, "/eph/other", b"o".to_vec(), Expected::Any).await?;
    store.put("/eph/persistent", b"p".to_vec(), Expected::Any).await?;
    let mut watch = store.watch("/eph/").await?;

    store.close_session(session).await?;
    ensure!(store.get("/eph/a").await?.is_none(), "/eph/a must vanish with its session");
    ensure!(store.get("/eph/b").await?.is_none(), "/eph/b must vanish with its session");
    ensure!(store.get("/eph/other").await?.is_some(), "another session's key stays");
    ensure!(store.get("/eph/persistent").await?.is_some(), "persistent keys stay");

    let mut deleted = BTreeSet::new();
    for _ in 0..2 {
        match next_event(&mut watch).await? {
            WatchEvent::Delete { key } => deleted.insert(key),
            other => bail!("expected deletes, got {other:?}"),
        };
    }
    ensure!(deleted == BTreeSet::from(["/eph/a".to_owned(), "/eph/b".to_owned()]), "deleted {deleted:?}");

    match store.put_ephemeral(session, "/eph/late", Vec::new(), Expected::Any).await {
        Err(MetaError::SessionExpired { .. }) => {}
        other => bail!("a closed session cannot own keys, got {other:?}"),
    }
    store.close_session(session).await.context("closing twice is a no-op")?;
    store.close_session(other).await?;
    ensure!(store.get("/eph/other").await?.is_none());
    Ok(())
}

async fn persistent_put_detaches_key_from_session(store: Arc<dyn MetadataStore>) -> Result<()> {
    let session = store.create_session(SESSION_TTL).await?;
    store.put_ephemeral(session, "/detach/k", b"ephemeral".to_vec(), Expected::Any).await?;
    store.put("/detach/k", b"persistent".to_vec(), Expected::Any).await?;
    store.close_session(session).await?;
    let read = store.get("/detach/k").await?.context("a persistent overwrite outlives the session")?;
    ensure!(read.value == b"persistent");
    Ok(())
}

async fn lock_excludes_second_acquirer_until_release(store: Arc<dyn MetadataStore>) -> Result<()> {
    const KEY: &str = "/locks/leader";
    let first_session = store.create_session(SESSION_TTL).await?;
    let second_session = store.create_session(SESSION_TTL).await?;
    let first = lock::acquire(&*store, first_session, KEY, b"first".to_vec()).await?;
    ensure!(lock::try_acquire(&*store, second_session, KEY, b"second".to_vec()).await?.is_none());

    let waiter_store = Arc::clone(&store);
    let mut waiter =
        tokio::spawn(async move { lock::acquire(&*waiter_store, second_session, KEY, b"second".to_vec()).await });
    ensure!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiter).await.is_err(),
        "the second acquirer must wait while the first holds the lock"
    );
    ensure!(store.get(KEY).await?.context("lock key")?.value == b"first");

    let first_version = first.version();
    first.release(&*store).await?;
    let second = tokio::time::timeout(PATIENCE, waiter).await.context("second acquirer never got the lock")???;
    ensure!(second.version() > first_version, "each new holder gets a higher version (a fencing token)");
    ensure!(store.get(KEY).await?.context("lock key")?.value == b"second");
    ensure!(lock::try_acquire(&*store, first_session, KEY, b"first".to_vec()).await?.is_none());
    second.release(&*store).await?;
    ensure!(store.get(KEY).await?.is_none(), "released lock key is gone");
    Ok(())
}

async fn lock_passes_on_when_holder_session_closes(store: Arc<dyn MetadataStore>) -> Result<()> {
    const KEY: &str = "/locks/failover";
    let holder_session = store.create_session(SESSION_TTL).await?;
    let standby_session = store.create_session(SESSION_TTL).await?;
    let held = lock::acquire(&*store, holder_session, KEY, b"holder".to_vec()).await?;

    let standby_store = Arc::clone(&store);
    let standby =
        tokio::spawn(async move { lock::acquire(&*standby_store, standby_session, KEY, b"standby".to_vec()).await });
    store.close_session(holder_session).await?;
    let taken = tokio::time::timeout(PATIENCE, standby).await.context("standby never took over")???;
    ensure!(store.get(KEY).await?.context("lock key")?.value == b"standby");
    held.release(&*store).await.context("releasing a lost lock is Ok and deletes nothing")?;
    ensure!(store.get(KEY).await?.context("lock key")?.version == taken.version(), "the new holder's key stays");
    Ok(())
}

async fn sequence_ids_are_unique_under_concurrency(store: Arc<dyn MetadataStore>) -> Result<()> {
    const TASKS: u64 = 4;
    const PER_TASK: u64 = 25;
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..PER_TASK {
                    ids.push(sequence::next(&*store, "/ids/ledger").await?);
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for task in tasks {
        for id in task.await?? {
            ensure!(all.insert(id), "id {id} was handed out twice");
        }
    }
    ensure!(all == (1..=TASKS * PER_TASK).collect::<BTreeSet<_>>(), "ids are 1..=100 without gaps: {all:?}");
    ensure!(sequence::next(&*store, "/ids/other").await? == 1, "each counter starts at 1");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// LocalStore only: restarts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_keeps_data_and_versions_across_reopen() -> Result<()> {
    let directory = TempDir::new()?;
    let (kept, last) = {
        let store = open_local(directory.path()).await?;
        let kept = store.put("/p/kept", b"v".to_vec(), Expected::Any).await?;
        store.put("/p/deleted", b"v".to_vec(), Expected::Any).await?;
        store.delete("/p/deleted", Expected::Any).await?;
        let last = store.put("/p/other", b"o".to_vec(), Expected::Any).await?;
        (kept, last)
    };

    let store = open_local(directory.path()).await?;
    let read = store.get("/p/kept").await?.context("/p/kept after reopen")?;
    ensure!(read.value == b"v" && read.version == kept, "after reopen: {read:?}");
    ensure!(store.get("/p/deleted").await?.is_none());
    ensure!(store.list_children("/p").await? == ["kept", "other"]);
    let next = store.put("/p/kept", b"w".to_vec(), Expected::Version(kept)).await?;
    ensure!(next > last, "revisions keep increasing across restarts: {last} then {next}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_reopen_deletes_ephemeral_keys_of_previous_process() -> Result<()> {
    let directory = TempDir::new()?;
    let ephemeral_version = {
        let store = open_local(directory.path()).await?;
        let session = store.create_session(SESSION_TTL).await?;
        store.put("/r/persistent", b"p".to_vec(), Expected::Any).await?;
        store.put_ephemeral(session, "/r/ephemeral", b"e".to_vec(), Expected::Any).await?
        // Dropped without closing the session: the process "died".
    };

    let store = open_local(directory.path()).await?;
    ensure!(store.get("/r/ephemeral").await?.is_none(), "ephemeral keys do not survive a restart");
    ensure!(store.get("/r/persistent").await?.is_some());
    let next = store.put("/r/ephemeral", b"again".to_vec(), Expected::Absent).await?;
    ensure!(next > ephemeral_version);
    match store.put_ephemeral(SessionId(1), "/r/stale-session", Vec::new(), Expected::Any).await {
        Err(MetaError::SessionExpired { .. }) => {}
        other => bail!("sessions of the previous process are gone, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_directory_is_locked_while_open() -> Result<()> {
    let directory = TempDir::new()?;
    let _store = open_local(directory.path()).await?;
    match open_local(directory.path()).await {
        Err(error) => ensure!(
            matches!(error.downcast_ref::<MetaError>(), Some(MetaError::Rocks { .. })),
            "expected a RocksDB lock error, got {error:#}"
        ),
        Ok(_) => bail!("a second open of the same directory must fail"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// EtcdStore only: leases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_session_is_kept_alive_and_its_keys_expire_once_its_store_is_gone() -> Result<()> {
    let server = EtcdServer::start().await?;
    let observer = server.connect().await?;
    let owner = server.connect().await?;
    let ttl = Duration::from_secs(1);
    let session = owner.create_session(ttl).await?;
    owner.put_ephemeral(session, "/lease/owner", b"alive".to_vec(), Expected::Absent).await?;

    // Time passing is the subject here: the lease would have expired three times over
    // without the keep-alive task.
    tokio::time::sleep(ttl * 3).await;
    ensure!(observer.get("/lease/owner").await?.is_some(), "a kept-alive session's key stays");

    // Dropping the store stops the keep-alive; etcd expires the lease on its own.
    drop(owner);
    let started = Instant::now();
    eventually(PATIENCE, || async { Ok(observer.get("/lease/owner").await?.is_none()) })
        .await
        .context("the ephemeral key outlived its lease")?;
    ensure!(started.elapsed() >= ttl / 2, "the key went before its lease could have expired");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_connect_accepts_endpoint_without_scheme() -> Result<()> {
    let server = EtcdServer::start().await?;
    let bare = server.endpoint().trim_start_matches("http://").to_owned();
    let store = magnetar_meta::EtcdStore::connect(&[bare]).await?;
    store.put("/scheme", b"ok".to_vec(), Expected::Any).await?;
    ensure!(store.get("/scheme").await?.context("/scheme")?.value == b"ok");
    Ok(())
}

/// A session lives while any etcd member answers its keep-alives, whichever one: with three
/// endpoints (three proxies in front of one etcd), making two of them stop answering (their
/// connections stay open and hang, new ones too, as an isolated or paused member's do)
/// keeps the session, however long and whichever two; making all three stop answering
/// loses it within about half its ttl. (Trying the members one after another lost it: each
/// hanging member cost an attempt's timeout, and two of them and the balanced client's
/// attempt used up the local deadline; the chaos harness's brokers stopped that way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_session_lives_while_any_member_answers() -> Result<()> {
    let server = EtcdServer::start().await?;
    let target: std::net::SocketAddr = server.endpoint().trim_start_matches("http://").parse()?;
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(HangingProxy::start(target).await?);
    }
    let endpoints: Vec<String> = proxies.iter().map(HangingProxy::endpoint).collect();
    let store = magnetar_meta::EtcdStore::connect(&endpoints).await?;
    // Long enough that an attempt's timeout (ttl / 8) is not the 250 ms floor.
    let ttl = Duration::from_secs(6);
    let session = store.create_session(ttl).await?;
    let lost = |store: &magnetar_meta::EtcdStore| {
        let store = store.clone();
        async move { tokio::time::timeout(ttl, store.session_lost(session)).await.is_ok() }
    };

    for answering in [2, 0, 1] {
        for (index, proxy) in proxies.iter().enumerate() {
            proxy.hang(index != answering);
        }
        ensure!(!lost(&store).await, "the session was lost while member {answering} answered");
    }
    ensure!(server.connect().await?.get("/").await.is_ok(), "etcd itself answers");

    proxies[1].hang(true);
    let started = Instant::now();
    ensure!(lost(&store).await, "the session outlived every member hanging for {ttl:?}");
    ensure!(started.elapsed() <= ttl, "the session counted as lost only after {:?}", started.elapsed());
    let refused = store.put_ephemeral(session, "/after", b"x".to_vec(), Expected::Any).await;
    ensure!(matches!(refused, Err(MetaError::SessionExpired { .. })), "a lost session still wrote: {refused:?}");
    Ok(())
}

/// A TCP proxy that can stop forwarding: while it hangs, bytes are held (connections stay
/// open, new ones are accepted), as with an etcd member that was isolated or paused.
struct HangingProxy {
    address: std::net::SocketAddr,
    hanging: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HangingProxy {
    async fn start(target: std::net::SocketAddr) -> Result<HangingProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (hanging, watching) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let watching = watching.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(target).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (upstream_read, upstream_write) = upstream.into_split();
                    tokio::join!(
                        forward(client_read, upstream_write, watching.clone()),
                        forward(upstream_read, client_write, watching)
                    );
                });
            }
        });
        Ok(HangingProxy { address, hanging, task })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    fn hang(&self, hang: bool) {
        self.hanging.send_replace(hang);
    }
}

impl Drop for HangingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy hangs.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hanging: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if hanging.wait_for(|hang| !hang).await.is_err() || to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn expect_bad_version<T: std::fmt::Debug>(result: Result<T, MetaError>, situation: &str) -> Result<()> {
    match result {
        Err(MetaError::BadVersion { .. }) => Ok(()),
        other => bail!("{situation}: expected BadVersion, got {other:?}"),
    }
}

async fn next_event(watch: &mut Watch) -> Result<WatchEvent> {
    tokio::time::timeout(PATIENCE, watch.recv())
        .await
        .context("no watch event in time")?
        .context("watch closed unexpectedly")
}

/// Polls `condition` until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("condition still false after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
