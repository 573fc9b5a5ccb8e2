//! Auto-recovery against real bookie servers in this process (gRPC on loopback, a LocalStore
//! for metadata): a bookie removed for good has its replicas copied to others, every entry is
//! then on every bookie of its write set, and no ledger names the lost bookie; a writer whose
//! earlier fragment is re-replicated under it goes on; leadership moves when the leader stops.
//!
//! Each bookie runs on its own tokio runtime, so that killing it (dropping the runtime) cuts
//! its connections the way a crashed process would.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use bytes::Bytes;
use magnetar_bookie::autorecovery::AutoRecovery;
use magnetar_bookie::client::metadata::{write_set, Ledger};
use magnetar_bookie::client::{metadata, Bookies, LedgerConfig, LedgerWriter};
use magnetar_bookie::config::AutoRecoveryConfig;
use magnetar_bookie::{EntryId, LedgerId};
use magnetar_meta::{LocalStore, MetadataStore};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

mod common;
use common::TestBookie;

fn payload(ledger: u64, entry_id: u64) -> Bytes {
    Bytes::from(format!("ledger {ledger} entry {entry_id}"))
}

/// Short delays for tests: lost after half a second, scans every 200 ms.
fn fast() -> AutoRecoveryConfig {
    AutoRecoveryConfig {
        enabled: true,
        lost_bookie_recovery_delay: Duration::from_millis(500),
        audit_interval: Duration::from_millis(200),
    }
}

/// Writes `count` entries and waits for their acks.
async fn write(writer: &LedgerWriter, range: std::ops::Range<u64>) -> anyhow::Result<()> {
    let mut answers = Vec::new();
    for entry_id in range.clone() {
        answers.push(writer.add(payload(writer.ledger_id().0, entry_id)).await?);
    }
    for (offset, answer) in answers.into_iter().enumerate() {
        ensure!(answer.await?? == range.start + offset as u64, "acks in order");
    }
    Ok(())
}

async fn read_ledger(meta: &Arc<dyn MetadataStore>, ledger_id: LedgerId) -> anyhow::Result<Ledger> {
    Ok(metadata::read(meta.as_ref(), ledger_id).await?.context("ledger metadata")?.0)
}

/// Every entry `0..=last` is stored, with its bytes, on every bookie of its write set.
async fn every_copy_is_there(bookies: &Bookies, ledger: &Ledger, last: u64) -> anyhow::Result<()> {
    let write_quorum = ledger.write_quorum();
    for entry_id in EntryId(0).through(EntryId(last)) {
        let ensemble = ledger.ensemble_for(entry_id);
        for index in write_set(entry_id, ensemble.len(), write_quorum) {
            let bookie_id = &ensemble[index];
            let (data, _) = bookies
                .get(bookie_id)
                .await?
                .read_entry(ledger.id(), entry_id, None)
                .await
                .with_context(|| format!("entry {}:{entry_id} on {bookie_id}", ledger.id()))?;
            ensure!(data == payload(ledger.id().0, entry_id.0), "entry {entry_id} on {bookie_id} has wrong bytes");
        }
    }
    Ok(())
}

fn names(ledger: &Ledger, bookie_id: &str) -> bool {
    ledger.names(bookie_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bookie_removed_for_good_is_re_replicated_and_the_writer_goes_on() -> anyhow::Result<()> {
    let meta_dir = TempDir::new()?;
    let meta: Arc<dyn MetadataStore> = Arc::new(LocalStore::open(meta_dir.path())?);
    // Five bookies on five hosts: every ensemble of three has two free bookies to move to.
    let mut cluster = Vec::new();
    for index in 0..5 {
        cluster.push(TestBookie::start(&meta, &format!("bookie-{index}"), Some(&format!("host-{index}"))).await?);
    }
    let bookies = Bookies::new(meta.clone());

    // Closed ledgers, full (3/3/2) and striped (3/2/2) copies, and one left open.
    let full =
        LedgerWriter::create(&bookies, LedgerConfig { ensemble_size: 3, write_quorum: 3, ack_quorum: 2 }, None).await?;
    write(&full, 0..40).await?;
    let victim = read_ledger(&meta, full.ledger_id()).await?.fragments()[0].bookies[0].clone();
    // Make sure the others name the victim too: retry creation until they do.
    let mut striped = None;
    let mut open = None;
    for _ in 0..50 {
        let writer =
            LedgerWriter::create(&bookies, LedgerConfig { ensemble_size: 3, write_quorum: 2, ack_quorum: 2 }, None)
                .await?;
        if striped.is_none() && names(&read_ledger(&meta, writer.ledger_id()).await?, &victim) {
            striped = Some(writer);
            continue;
        }
        if open.is_none() && names(&read_ledger(&meta, writer.ledger_id()).await?, &victim) {
            open = Some(writer);
        }
        if striped.is_some() && open.is_some() {
            break;
        }
    }
    let (striped, open) = (striped.context("a striped ledger on the victim")?, open.context("an open one")?);
    write(&striped, 0..41).await?;
    write(&open, 0..30).await?;
    assert_eq!(full.close().await?, 39);
    assert_eq!(striped.close().await?, 40);

    // The victim dies for good. The open ledger's writer notices on its next adds and starts a
    // fragment without it; its first fragment is then re-replicated under the running writer.
    let index = cluster.iter().position(|b| b.bookie_id == victim).context("victim")?;
    cluster[index].kill(&meta).await?;
    write(&open, 30..60).await?;
    for _ in 0..200 {
        if read_ledger(&meta, open.ledger_id()).await?.fragments().len() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let cancel = CancellationToken::new();
    let worker = AutoRecovery::new(meta.clone(), "worker-a".to_owned(), fast(), Duration::from_secs(10));
    let counters = worker.counters();
    let task = tokio::spawn(worker.run(cancel.clone()));

    let ledgers = [full.ledger_id(), striped.ledger_id(), open.ledger_id()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut remaining = Vec::new();
        for ledger_id in ledgers {
            if names(&read_ledger(&meta, ledger_id).await?, &victim) {
                remaining.push(ledger_id);
            }
        }
        if remaining.is_empty() {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "ledgers {remaining:?} still name {victim}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(counters.fragments.get() >= 3, "one replica per ledger at least");
    ensure!(counters.entries.get() > 0);

    // A second bookie of the open ledger's current ensemble dies: the writer's ensemble change
    // loses its compare-and-set (auto-recovery changed the record), rebases and goes on.
    let second =
        read_ledger(&meta, open.ledger_id()).await?.fragments().last().context("a fragment")?.bookies[0].clone();
    let index = cluster.iter().position(|b| b.bookie_id == second).context("second victim")?;
    cluster[index].kill(&meta).await?;
    write(&open, 60..80).await?;
    ensure!(open.failure().is_none(), "the writer goes on: {:?}", open.failure());
    let seen_by_writer = open.metadata();
    ensure!(
        seen_by_writer.fragments().len() >= 3 && !names(&seen_by_writer, &victim),
        "the writer rebased on the re-replicated record: {:?}",
        seen_by_writer.fragments()
    );
    // The second loss is re-replicated too, once the writer left that fragment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut remaining = Vec::new();
        for ledger_id in ledgers {
            let ledger = read_ledger(&meta, ledger_id).await?;
            if names(&ledger, &victim)
                || ledger.fragments()[..ledger.fragments().len() - 1].iter().any(|f| f.bookies.contains(&second))
            {
                remaining.push(ledger_id);
            }
        }
        if remaining.is_empty() {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "ledgers {remaining:?} still name {victim} or {second}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    write(&open, 80..100).await?;
    ensure!(open.failure().is_none(), "the writer goes on: {:?}", open.failure());
    assert_eq!(open.close().await?, 99);

    let reader = Bookies::new(meta.clone());
    for (ledger_id, last) in [(full.ledger_id(), 39), (striped.ledger_id(), 40), (open.ledger_id(), 99)] {
        let ledger = read_ledger(&meta, ledger_id).await?;
        ensure!(
            !names(&ledger, &victim) && !names(&ledger, &second),
            "{ledger_id} still names {victim} or {second}: {:?}",
            ledger.fragments()
        );
        // Every ensemble keeps its hosts apart (five hosts, three copies).
        for fragment in ledger.fragments() {
            let distinct: BTreeSet<&String> = fragment.bookies.iter().collect();
            ensure!(distinct.len() == fragment.bookies.len(), "one copy per bookie: {:?}", fragment.bookies);
        }
        every_copy_is_there(&reader, &ledger, last).await?;
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    bookies.close().await;
    reader.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_recovery_the_lost_bookie_stays_named() -> anyhow::Result<()> {
    // The control case of the test above: the same loss, no worker; the check must fail.
    let meta_dir = TempDir::new()?;
    let meta: Arc<dyn MetadataStore> = Arc::new(LocalStore::open(meta_dir.path())?);
    let mut cluster = Vec::new();
    for index in 0..4 {
        cluster.push(TestBookie::start(&meta, &format!("bookie-{index}"), Some(&format!("host-{index}"))).await?);
    }
    let bookies = Bookies::new(meta.clone());
    let writer =
        LedgerWriter::create(&bookies, LedgerConfig { ensemble_size: 3, write_quorum: 3, ack_quorum: 2 }, None).await?;
    write(&writer, 0..10).await?;
    writer.close().await?;
    let ledger = read_ledger(&meta, writer.ledger_id()).await?;
    let victim = ledger.fragments()[0].bookies[1].clone();
    let index = cluster.iter().position(|b| b.bookie_id == victim).context("victim")?;
    cluster[index].kill(&meta).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = read_ledger(&meta, writer.ledger_id()).await?;
    ensure!(names(&ledger, &victim), "nothing moved without a worker");
    ensure!(every_copy_is_there(&bookies, &ledger, 9).await.is_err(), "the lost copy is missing");
    bookies.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_leads_and_another_takes_over_when_it_stops() -> anyhow::Result<()> {
    let meta_dir = TempDir::new()?;
    let meta: Arc<dyn MetadataStore> = Arc::new(LocalStore::open(meta_dir.path())?);
    let holder = || async {
        meta.get(magnetar_bookie::AUTORECOVERY_LEADER_PATH)
            .await
            .map(|found| found.map(|found| String::from_utf8_lossy(&found.value).into_owned()))
    };
    let (cancel_a, cancel_b) = (CancellationToken::new(), CancellationToken::new());
    let a = tokio::spawn(
        AutoRecovery::new(meta.clone(), "a".into(), fast(), Duration::from_secs(10)).run(cancel_a.clone()),
    );
    let mut leader = None;
    for _ in 0..100 {
        leader = holder().await?;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(leader.as_deref() == Some("a"), "the first worker leads: {leader:?}");
    let b = tokio::spawn(
        AutoRecovery::new(meta.clone(), "b".into(), fast(), Duration::from_secs(10)).run(cancel_b.clone()),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(holder().await?.as_deref() == Some("a"), "one leader at a time");
    cancel_a.cancel();
    tokio::time::timeout(Duration::from_secs(10), a).await??;
    let mut leader = None;
    for _ in 0..200 {
        leader = holder().await?;
        if leader.as_deref() == Some("b") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(leader.as_deref() == Some("b"), "the second worker took over: {leader:?}");
    cancel_b.cancel();
    tokio::time::timeout(Duration::from_secs(10), b).await??;
    Ok(())
}
