//! A bookie killed with its newest entries only in the journal, whose journal's last bytes are
//! then corrupted (as a torn write would leave them), restarts: it logs the torn tail, truncates
//! it, serves every entry before it byte for byte, and takes new adds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use magnetar_proto::bookie::bookie_service_client::BookieServiceClient;
use magnetar_proto::bookie::{AddEntryRequest, ReadEntryRequest, Status};
use magnetar_tests::{BookieOptions, BookieProcess};
use tonic::transport::{Channel, Endpoint};

const LEDGER: u64 = 42;
const KEY: &[u8] = b"journal-test";
const ENTRIES: u64 = 100;

fn payload(entry_id: u64) -> Bytes {
    Bytes::from((0..1000u32).map(|i| ((entry_id as u32 * 7 + i) % 251) as u8).collect::<Vec<u8>>())
}

async fn connect(bookie: &BookieProcess) -> anyhow::Result<BookieServiceClient<Channel>> {
    let channel = Endpoint::from_shared(bookie.grpc_url()?)?.connect_timeout(Duration::from_secs(5)).connect().await?;
    Ok(BookieServiceClient::new(channel))
}

/// Adds entries one at a time, each answered before the next is sent.
async fn add(client: &mut BookieServiceClient<Channel>, entries: std::ops::Range<u64>) -> anyhow::Result<()> {
    for entry_id in entries {
        let request = AddEntryRequest {
            ledger_id: LEDGER,
            entry_id,
            master_key: Bytes::from_static(KEY),
            last_add_confirmed: entry_id as i64 - 1,
            payload: payload(entry_id),
            recovery: false,
        };
        let mut responses = client.add_entries(futures::stream::iter([request])).await?.into_inner();
        let response = responses.message().await?.context("add answered")?;
        anyhow::ensure!(response.status == Status::Ok as i32, "add {entry_id}: {}", response.message);
    }
    Ok(())
}

async fn read(client: &mut BookieServiceClient<Channel>, entry_id: u64) -> anyhow::Result<(i32, Bytes)> {
    let response = client
        .read_entry(ReadEntryRequest { ledger_id: LEDGER, entry_id, fence: false, master_key: Bytes::new() })
        .await?
        .into_inner();
    Ok((response.status, response.payload))
}

/// The newest journal file, and where its last record starts and ends.
fn last_record(journal_dir: &Path) -> anyhow::Result<(PathBuf, usize, usize)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(journal_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    files.sort();
    // The newest file with records: the bookie starts a fresh file on every start.
    for path in files.into_iter().rev() {
        let data = std::fs::read(&path)?;
        let (mut offset, mut last) = (16usize, None);
        while offset + 8 <= data.len() {
            let len = u32::from_be_bytes(data[offset..offset + 4].try_into()?) as usize;
            if len == 0 {
                break;
            }
            last = Some((offset, offset + 8 + len));
            offset += 8 + len;
        }
        if let Some((start, end)) = last {
            return Ok((path, start, end));
        }
    }
    anyhow::bail!("no journal records under {}", journal_dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_journal_tail_is_truncated_and_everything_before_it_served() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // No checkpoint during the test: every entry lives only in the journal when it is killed.
    let config = dir.path().join("bookie.toml");
    std::fs::write(&config, "checkpoint_interval_ms = 3600000\n")?;
    let mut options =
        BookieOptions::new("journal-bookie", &format!("local:{}", dir.path().join("meta").display()), dir.path());
    options.extra_args = vec!["--config".to_owned(), config.display().to_string()];
    let journal_dir = options.data_dir.join("journal");
    let mut bookie = BookieProcess::start(options).await?;
    let mut client = connect(&bookie).await?;
    add(&mut client, 0..ENTRIES).await?;
    bookie.kill9()?;

    let (path, start, end) = last_record(&journal_dir)?;
    let mut data = std::fs::read(&path)?;
    for byte in &mut data[end - 5..end] {
        *byte ^= 0xa5;
    }
    std::fs::write(&path, &data)?;
    assert!(end - start > 1000, "the last record is the last entry's add");

    bookie.restart().await?;
    let log = bookie.log();
    assert!(log.contains("torn journal tail"), "the truncation is logged:\n{log}");
    let mut client = connect(&bookie).await?;
    for entry_id in 0..ENTRIES - 1 {
        let (status, body) = read(&mut client, entry_id).await?;
        assert_eq!(status, Status::Ok as i32, "entry {entry_id} survives");
        assert_eq!(body, payload(entry_id), "entry {entry_id} byte for byte");
    }
    let (status, _) = read(&mut client, ENTRIES - 1).await?;
    assert_eq!(status, Status::NoSuchEntry as i32, "the torn entry is gone, not garbage");
    // The bookie takes adds again, and they survive another kill.
    add(&mut client, ENTRIES - 1..ENTRIES + 10).await?;
    bookie.kill9()?;
    bookie.restart().await?;
    let mut client = connect(&bookie).await?;
    for entry_id in 0..ENTRIES + 10 {
        assert_eq!(
            read(&mut client, entry_id).await?.1,
            payload(entry_id),
            "entry {entry_id} after the second restart"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookie_over_its_disk_usage_threshold_refuses_adds_and_still_serves_reads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let meta = format!("local:{}", dir.path().join("meta").display());
    let mut options = BookieOptions::new("full-bookie", &meta, dir.path());
    let mut bookie = BookieProcess::start(options.clone()).await?;
    let mut client = connect(&bookie).await?;
    add(&mut client, 0..3).await?;
    bookie.kill9()?;

    // Any usage at all is over a threshold of zero: the disk counts as full.
    let config = dir.path().join("full.toml");
    std::fs::write(&config, "disk_usage_threshold = 0.0\ndisk_usage_lwm = 0.0\ndisk_check_interval_ms = 50\n")?;
    options.extra_args = vec!["--config".to_owned(), config.display().to_string()];
    let bookie = BookieProcess::start(options).await?;
    let mut client = connect(&bookie).await?;
    // The disk monitor flips the bookie read-only within a few check intervals.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let request = AddEntryRequest {
            ledger_id: LEDGER,
            entry_id: 3,
            master_key: Bytes::from_static(KEY),
            last_add_confirmed: 2,
            payload: payload(3),
            recovery: false,
        };
        let mut responses = client.add_entries(futures::stream::iter([request])).await?.into_inner();
        let response = responses.message().await?.context("add answered")?;
        if response.status == Status::ReadOnly as i32 {
            break Some(response.message);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the bookie never turned read-only");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let message = refused.unwrap_or_default();
    assert!(message.contains("read-only"), "the writer is told why: {message}");
    for entry_id in 0..3 {
        assert_eq!(read(&mut client, entry_id).await?.1, payload(entry_id), "reads go on while read-only");
    }
    Ok(())
}
