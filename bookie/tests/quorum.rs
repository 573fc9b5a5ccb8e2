//! The ledger protocol against real bookie servers in this process (gRPC on loopback, a
//! LocalStore for metadata): quorum writes with an ensemble change after a bookie dies,
//! recovery of a ledger whose writer was dropped, and a fenced writer.
//!
//! Each bookie runs on its own tokio runtime, so that killing it (dropping the runtime) cuts
//! its connections the way a crashed process would.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use magnetar_bookie::client::{self, metadata, Bookies, LedgerConfig, LedgerWriter};
use magnetar_bookie::{BookieError, EntryId, LedgerId};
use magnetar_meta::{LocalStore, MetadataStore};
use tempfile::TempDir;

mod common;
use common::TestBookie;

struct Cluster {
    meta: Arc<dyn MetadataStore>,
    bookies: Vec<TestBookie>,
    _meta_dir: TempDir,
}

async fn cluster(size: usize) -> anyhow::Result<Cluster> {
    let meta_dir = TempDir::new().context("metadata dir")?;
    let meta: Arc<dyn MetadataStore> = Arc::new(LocalStore::open(meta_dir.path()).context("open LocalStore")?);
    let mut bookies = Vec::new();
    for index in 0..size {
        bookies.push(TestBookie::start(&meta, &format!("bookie-{index}"), None).await?);
    }
    Ok(Cluster { meta, bookies, _meta_dir: meta_dir })
}

fn payload(entry_id: u64) -> Bytes {
    Bytes::from(format!("entry number {entry_id}"))
}

const QUORUM: LedgerConfig = LedgerConfig { ensemble_size: 3, write_quorum: 3, ack_quorum: 2 };

/// Reads entries `0..=last` and checks each one's bytes.
async fn read_all(bookies: &Bookies, ledger_id: LedgerId, last: i64) -> anyhow::Result<()> {
    let (ledger, _) = metadata::read(bookies.meta().as_ref(), ledger_id).await?.context("ledger metadata")?;
    let mut next = 0u64;
    while (next as i64) <= last {
        let entries = client::read_entries(bookies, &ledger, EntryId(next), EntryId(last as u64), 16, 1 << 20)
            .await
            .with_context(|| format!("read from entry {next}"))?;
        for (EntryId(entry_id), data) in entries {
            anyhow::ensure!(entry_id == next, "read returned entry {entry_id}, expected {next}");
            anyhow::ensure!(data == payload(entry_id), "entry {entry_id} has wrong bytes");
            next += 1;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_continues_after_a_bookie_dies_with_a_new_fragment() -> anyhow::Result<()> {
    let mut cluster = cluster(4).await?;
    let bookies = Bookies::new(cluster.meta.clone());
    let writer = LedgerWriter::create(&bookies, QUORUM, None).await?;
    let mut answers = Vec::new();
    for entry_id in 0..20 {
        answers.push(writer.add(payload(entry_id)).await?);
    }
    for (entry_id, answer) in answers.drain(..).enumerate() {
        assert_eq!(answer.await??, entry_id as u64);
    }
    let (ledger, _) = metadata::read(cluster.meta.as_ref(), writer.ledger_id()).await?.context("metadata")?;
    let victim = ledger.fragments()[0].bookies[1].clone();
    let index = cluster.bookies.iter().position(|b| b.bookie_id == victim).context("victim")?;
    cluster.bookies[index].kill(&cluster.meta).await?;

    for entry_id in 20..40 {
        answers.push(writer.add(payload(entry_id)).await?);
    }
    for (offset, answer) in answers.drain(..).enumerate() {
        assert_eq!(answer.await??, 20 + offset as u64, "acks arrive in entry order");
    }
    assert_eq!(writer.failure(), None);
    // The dead bookie's failure may surface after Qa others acked: wait (bounded) for the change.
    let mut ledger = None;
    for _ in 0..200 {
        let (found, _) = metadata::read(cluster.meta.as_ref(), writer.ledger_id()).await?.context("metadata")?;
        let changed = found.fragments().len() > 1;
        ledger = Some(found);
        if changed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ledger = ledger.context("metadata")?;
    assert_eq!(ledger.fragments().len(), 2, "one ensemble change: {:?}", ledger.fragments());
    assert!(!ledger.fragments()[1].bookies.contains(&victim), "the dead bookie was replaced");
    assert!(ledger.fragments()[1].first.0 >= 20 && ledger.fragments()[1].first.0 <= 40);

    assert_eq!(writer.close().await?, 39);
    read_all(&bookies, writer.ledger_id(), 39).await?;
    bookies.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_replacement_the_writer_goes_on_while_the_ack_quorum_holds() -> anyhow::Result<()> {
    // Three bookies at 3/3/2: nobody can replace a dead one, but two copies still ack.
    let mut cluster = cluster(3).await?;
    let bookies = Bookies::new(cluster.meta.clone());
    let writer = LedgerWriter::create(&bookies, QUORUM, None).await?;
    let mut answers = Vec::new();
    for entry_id in 0..20 {
        answers.push(writer.add(payload(entry_id)).await?);
    }
    for (entry_id, answer) in answers.drain(..).enumerate() {
        assert_eq!(answer.await??, entry_id as u64);
    }
    cluster.bookies[1].kill(&cluster.meta).await?;
    for entry_id in 20..60 {
        answers.push(writer.add(payload(entry_id)).await?);
    }
    for (offset, answer) in answers.drain(..).enumerate() {
        assert_eq!(answer.await??, 20 + offset as u64, "acks go on, in entry order");
    }
    assert_eq!(writer.failure(), None);
    assert_eq!(writer.close().await?, 59);
    read_all(&bookies, writer.ledger_id(), 59).await?;

    // A second bookie lost leaves one copy per entry: below the ack quorum, the writer stops
    // and fails what it could not confirm.
    let writer =
        LedgerWriter::create(&bookies, LedgerConfig { ensemble_size: 2, write_quorum: 2, ack_quorum: 2 }, None).await?;
    assert_eq!(writer.add(payload(0)).await?.await??, 0);
    let survivor = metadata::read(cluster.meta.as_ref(), writer.ledger_id()).await?.context("metadata")?.0;
    let victim = survivor.fragments()[0].bookies[0].clone();
    let index = cluster.bookies.iter().position(|b| b.bookie_id == victim).context("victim")?;
    cluster.bookies[index].kill(&cluster.meta).await?;
    let failed = writer.add(payload(1)).await?.await?;
    assert!(failed.is_err(), "no ack quorum without a replacement: {failed:?}");
    assert!(writer.failure().is_some());
    bookies.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_of_a_dropped_writer_closes_at_or_after_its_last_ack() -> anyhow::Result<()> {
    let cluster = cluster(3).await?;
    let bookies = Bookies::new(cluster.meta.clone());
    let writer = LedgerWriter::create(&bookies, QUORUM, None).await?;
    let ledger_id = writer.ledger_id();
    let mut answers = Vec::new();
    for entry_id in 0..30 {
        answers.push(writer.add(payload(entry_id)).await?);
    }
    let mut last_acked = -1i64;
    for answer in answers.drain(..10) {
        last_acked = answer.await?? as i64;
    }
    drop(writer);
    drop(answers);

    let recovering = Bookies::new(cluster.meta.clone());
    let closed = client::recover_ledger(&recovering, ledger_id).await?;
    assert!(closed.is_closed());
    assert!(
        EntryId::last_to_wire(closed.last_entry()) >= last_acked,
        "closed at {} before acknowledged entry {last_acked}",
        EntryId::last_to_wire(closed.last_entry())
    );
    assert!(EntryId::last_to_wire(closed.last_entry()) <= 29);
    read_all(&recovering, ledger_id, EntryId::last_to_wire(closed.last_entry())).await?;
    // A second recovery agrees.
    assert_eq!(
        EntryId::last_to_wire(client::recover_ledger(&recovering, ledger_id).await?.last_entry()),
        EntryId::last_to_wire(closed.last_entry())
    );
    bookies.close().await;
    recovering.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writer_fails_its_pending_adds() -> anyhow::Result<()> {
    let cluster = cluster(3).await?;
    let bookies = Bookies::new(cluster.meta.clone());
    let writer = LedgerWriter::create(&bookies, QUORUM, None).await?;
    for entry_id in 0..5 {
        assert_eq!(writer.add(payload(entry_id)).await?.await??, entry_id);
    }
    let recovering = Bookies::new(cluster.meta.clone());
    let closed = client::recover_ledger(&recovering, writer.ledger_id()).await?;
    assert_eq!(EntryId::last_to_wire(closed.last_entry()), 4);

    let answer = writer.add(payload(5)).await?;
    let outcome = answer.await?;
    assert!(
        matches!(outcome, Err(BookieError::Fenced { .. } | BookieError::WriterFailed { .. })),
        "a fenced writer must not confirm: {outcome:?}"
    );
    assert!(writer.failure().is_some());
    assert!(writer.add(payload(6)).await.is_err(), "a stopped writer refuses adds");
    assert!(writer.close().await.is_err(), "a fenced writer cannot close the ledger");
    let (ledger, _) = metadata::read(cluster.meta.as_ref(), writer.ledger_id()).await?.context("metadata")?;
    assert_eq!(EntryId::last_to_wire(ledger.last_entry()), 4, "the closed end did not move");
    bookies.close().await;
    recovering.close().await;
    Ok(())
}

#[tokio::test]
async fn invalid_quorums_are_refused_before_anything_is_created() -> anyhow::Result<()> {
    let cluster = cluster(1).await?;
    let bookies = Bookies::new(cluster.meta.clone());
    let config = LedgerConfig { ensemble_size: 2, write_quorum: 3, ack_quorum: 2 };
    let error = LedgerWriter::create(&bookies, config, None).await.err().context("must fail")?;
    assert!(matches!(error, BookieError::InvalidConfig { .. }), "{error}");
    Ok(())
}
