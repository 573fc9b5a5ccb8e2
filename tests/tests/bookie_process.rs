//! `magnetar bookie` as a real process on real etcd: it registers, keeps every add it
//! acknowledged across a SIGKILL, refuses to start on a wiped disk, and rejects a bad config.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use bytes::Bytes;
use magnetar_bookie::cookie;
use magnetar_bookie::registration;
use magnetar_meta::testing::EtcdServer;
use magnetar_meta::MetadataStore;
use magnetar_proto::bookie::bookie_service_client::BookieServiceClient;
use magnetar_proto::bookie::{AddEntryRequest, ReadEntryRequest, Status};
use magnetar_tests::{binary, eventually, BookieOptions, BookieProcess};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const MASTER_KEY: &[u8] = b"bookie-process-test";
/// Concurrent add streams, each writing its own ledger.
const WRITERS: u64 = 8;
/// Adds each stream keeps in flight.
const IN_FLIGHT: usize = 32;
/// Acknowledged adds to reach before the SIGKILL.
const ACKED_BEFORE_KILL: u64 = 5000;

/// The metadata URL of a test etcd.
fn etcd_url(etcd: &EtcdServer) -> String {
    format!("etcd://{}", etcd.endpoint().trim_start_matches("http://"))
}

/// Entry `entry_id` of `ledger_id`: its ids, then a pattern; 16 to 4111 bytes.
fn payload(ledger_id: u64, entry_id: u64) -> Bytes {
    let size = 16 + ((ledger_id * 7919 + entry_id * 104_729) % 4096) as usize;
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&ledger_id.to_be_bytes());
    bytes.extend_from_slice(&entry_id.to_be_bytes());
    bytes.extend((16..size).map(|i| ((entry_id as usize + i * 31) % 251) as u8));
    Bytes::from(bytes)
}

async fn connect(bookie: &BookieProcess) -> anyhow::Result<BookieServiceClient<Channel>> {
    let channel = Endpoint::from_shared(bookie.grpc_url()?)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .context("connect to the bookie")?;
    Ok(BookieServiceClient::new(channel))
}

/// What one writer saw: the entries answered OK, and how many it sent.
struct Written {
    ledger_id: u64,
    acked: Vec<u64>,
    sent: u64,
}

/// Adds entries 0, 1, 2... to `ledger_id` on one stream, `IN_FLIGHT` at a time, until the
/// stream breaks (the bookie is killed).
async fn write_until_broken(
    mut client: BookieServiceClient<Channel>,
    ledger_id: u64,
    acked_total: Arc<AtomicU64>,
) -> anyhow::Result<Written> {
    let (requests, queue) = mpsc::channel(IN_FLIGHT);
    let mut responses = client.add_entries(ReceiverStream::new(queue)).await?.into_inner();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (permits, sent) = (permits.clone(), sent.clone());
        tokio::spawn(async move {
            for entry_id in 0.. {
                let Ok(permit) = permits.acquire().await else { return };
                permit.forget();
                let add = AddEntryRequest {
                    ledger_id,
                    entry_id,
                    master_key: Bytes::from_static(MASTER_KEY),
                    last_add_confirmed: -1,
                    payload: payload(ledger_id, entry_id),
                    recovery: false,
                };
                if requests.send(add).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut acked = Vec::new();
    // Ends with an error or end of stream once the bookie dies.
    while let Ok(Some(response)) = responses.message().await {
        ensure!(
            response.status == Status::Ok as i32,
            "add {ledger_id}:{} answered {:?}: {}",
            response.entry_id,
            Status::try_from(response.status),
            response.message
        );
        acked.push(response.entry_id);
        acked_total.fetch_add(1, Ordering::Relaxed);
        permits.add_permits(1);
    }
    sender.abort();
    let _ = sender.await;
    Ok(Written { ledger_id, acked, sent: sent.load(Ordering::Relaxed) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bookie_process_keeps_every_acked_add_across_kill9() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let store = etcd.connect().await?;
    let dir = tempfile::tempdir()?;
    let mut bookie = BookieProcess::start(BookieOptions::new("bookie-1", &etcd_url(&etcd), dir.path())).await?;

    // Registered with the address it serves on, and its cookie is in metadata.
    let address = bookie.address()?.to_string();
    let registered = |expected: String| {
        let store = &store;
        move || {
            let expected = expected.clone();
            async move {
                matches!(registration::lookup(store, "bookie-1").await, Ok(Some(found)) if found.address == expected)
            }
        }
    };
    eventually(Duration::from_secs(10), "the bookie's registration in etcd", registered(address)).await?;
    ensure!(store.get(&cookie::cookie_path("bookie-1")).await?.is_some(), "no cookie in etcd");

    // Several streams add concurrently; the bookie dies with adds in flight.
    let client = connect(&bookie).await?;
    let acked_total = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> =
        (0..WRITERS).map(|i| tokio::spawn(write_until_broken(client.clone(), 1000 + i, acked_total.clone()))).collect();
    let progress = acked_total.clone();
    eventually(Duration::from_secs(60), "acknowledged adds before the kill", || {
        let progress = progress.clone();
        async move { progress.load(Ordering::Relaxed) >= ACKED_BEFORE_KILL }
    })
    .await?;
    bookie.kill9()?;
    let mut written = Vec::new();
    for writer in writers {
        written.push(tokio::time::timeout(Duration::from_secs(30), writer).await.context("writer ends")???);
    }
    let acked: usize = written.iter().map(|w| w.acked.len()).sum();
    let sent: u64 = written.iter().map(|w| w.sent).sum();
    ensure!(sent > acked as u64, "no add was in flight at the kill ({sent} sent, {acked} acked)");

    // Every add answered OK reads back byte for byte.
    bookie.restart().await?;
    let client = connect(&bookie).await?;
    let mut readers = Vec::new();
    for writer in written {
        let mut client = client.clone();
        readers.push(tokio::spawn(async move {
            for entry_id in writer.acked {
                let read =
                    ReadEntryRequest { ledger_id: writer.ledger_id, entry_id, fence: false, master_key: Bytes::new() };
                let response = client.read_entry(read).await?.into_inner();
                ensure!(
                    response.status == Status::Ok as i32,
                    "acked entry {}:{entry_id} lost after kill -9: {:?} {}",
                    writer.ledger_id,
                    Status::try_from(response.status),
                    response.message
                );
                ensure!(
                    response.payload == payload(writer.ledger_id, entry_id),
                    "acked entry {}:{entry_id} reads back different bytes ({} bytes)",
                    writer.ledger_id,
                    response.payload.len()
                );
            }
            anyhow::Ok(())
        }));
    }
    for reader in readers {
        reader.await??;
    }
    // The restarted bookie registered its new address.
    let address = bookie.address()?.to_string();
    eventually(Duration::from_secs(10), "the restarted bookie's registration", registered(address)).await?;
    eprintln!("{acked} acked adds of {sent} sent read back after kill -9");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookie_with_wiped_data_dir_refuses_to_start() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let store = etcd.connect().await?;
    let dir = tempfile::tempdir()?;
    let mut bookie = BookieProcess::start(BookieOptions::new("bookie-wiped", &etcd_url(&etcd), dir.path())).await?;
    bookie.kill9()?;
    std::fs::remove_dir_all(&bookie.options().data_dir).context("wipe the data dir")?;

    let (status, log) = bookie.restart_expecting_exit().await?;
    ensure!(!status.success(), "refused start exited with {status}\n{log}");
    ensure!(log.contains("cookie mismatch"), "no cookie error in the output:\n{log}");
    ensure!(log.contains("has no cookie"), "the error does not say what differs:\n{log}");
    ensure!(log.contains(&cookie::cookie_path("bookie-wiped")), "the error does not say how to recover:\n{log}");
    // Refusing changed nothing: the metadata cookie is still there, the wiped dir got none.
    ensure!(store.get(&cookie::cookie_path("bookie-wiped")).await?.is_some(), "metadata cookie gone");
    ensure!(
        !bookie.options().data_dir.join(cookie::COOKIE_FILE).exists(),
        "a refused start wrote a new cookie into the wiped dir"
    );
    Ok(())
}

/// Runs `magnetar bookie` with `args` to its exit (30 s at most); returns status and stderr.
async fn run_bookie_to_exit(args: &[&str]) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let output = tokio::process::Command::new(binary("magnetar")?)
        .arg("bookie")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output).await.context("magnetar bookie exits")??;
    Ok((output.status, String::from_utf8_lossy(&output.stderr).into_owned()))
}

#[tokio::test]
async fn bookie_config_with_unknown_field_exits_naming_file_and_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bookie.toml");
    std::fs::write(&config, "bookie_id = \"bookie-1\"\ndisk_usage_treshold = 0.5\n")?;
    let config_arg = config.display().to_string();
    let meta = format!("local:{}", dir.path().join("meta").display());
    let (status, stderr) =
        run_bookie_to_exit(&["--config", &config_arg, "--metadata-url", &meta, "--listen", "127.0.0.1:0"]).await?;
    ensure!(!status.success(), "bad config accepted: {status}\n{stderr}");
    ensure!(stderr.contains("disk_usage_treshold"), "the error does not name the field:\n{stderr}");
    ensure!(stderr.contains(&config_arg), "the error does not name the file:\n{stderr}");
    ensure!(!dir.path().join("meta").exists(), "a bad config still opened the metadata store");
    Ok(())
}

#[tokio::test]
async fn bookie_with_unknown_metadata_url_scheme_exits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data").display().to_string();
    let (status, stderr) =
        run_bookie_to_exit(&["--metadata-url", "zk://127.0.0.1:2181", "--data-dir", &data, "--listen", "127.0.0.1:0"])
            .await?;
    ensure!(!status.success(), "unknown scheme accepted: {status}\n{stderr}");
    ensure!(stderr.contains("unknown scheme"), "no clear error:\n{stderr}");
    Ok(())
}

/// The value of the first sample of `name` in Prometheus text (labels ignored).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = if rest.starts_with('{') { &rest[rest.find('}')? + 1..] } else { rest };
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookie_http_serves_metrics_state_and_info_in_bookkeeper_shapes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let meta = format!("local:{}", dir.path().join("meta").display());
    let bookie = BookieProcess::start(BookieOptions::new("bookie-http", &meta, dir.path())).await?;
    let http = bookie.http_url()?;
    let address = http.trim_start_matches("http://").to_owned();

    // 50 adds, each answered once durable.
    let mut client = connect(&bookie).await?;
    let adds = futures::stream::iter((0..50u64).map(|entry_id| AddEntryRequest {
        ledger_id: 7,
        entry_id,
        master_key: Bytes::from_static(MASTER_KEY),
        last_add_confirmed: -1,
        payload: payload(7, entry_id),
        recovery: false,
    }));
    let mut answers = client.add_entries(adds).await?.into_inner();
    let mut acked = 0;
    while let Some(answer) = answers.message().await? {
        ensure!(answer.status == Status::Ok as i32, "add answered {}", answer.message);
        acked += 1;
    }
    ensure!(acked == 50, "{acked} adds answered");
    let read =
        client.read_entry(ReadEntryRequest { ledger_id: 7, entry_id: 3, ..Default::default() }).await?.into_inner();
    ensure!(read.status == Status::Ok as i32, "read answered {}", read.message);

    let metrics = magnetar_tests::http_get(&address, "/metrics").await?;
    ensure!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let value = |name: &str| sample(&metrics, name).with_context(|| format!("no {name} in\n{metrics}"));
    ensure!(value("bookie_journal_JOURNAL_ADD_ENTRY_count")? >= 50.0, "journal adds");
    ensure!(value("bookkeeper_server_ADD_ENTRY_REQUEST_count")? == 50.0, "add requests");
    ensure!(value("bookkeeper_server_READ_ENTRY_REQUEST_count")? == 1.0, "read requests");
    ensure!(value("bookie_journal_JOURNAL_SYNC_count")? >= 1.0, "syncs");
    ensure!(value("bookie_journal_JOURNAL_FORCE_WRITE_BATCH_ENTRIES_sum")? >= 50.0, "batched records");
    ensure!(value("bookie_SERVER_STATUS")? == 1.0, "writable");
    ensure!(value("bookie_ledger_dir_total_bytes")? > 0.0, "disk size");
    ensure!(value("bookie_journal_JOURNAL_QUEUE_SIZE")? == 0.0, "nothing queued");
    // The auto-recovery worker runs in the bookie by default: its counters are there.
    ensure!(value("replication_worker_NUM_ENTRIES_WRITTEN")? == 0.0, "nothing re-replicated");

    let state = magnetar_tests::http_get(&address, "/api/v1/bookie/state").await?;
    let body: serde_json::Value = serde_json::from_str(state.split("\r\n\r\n").nth(1).unwrap_or_default())?;
    ensure!(body["running"] == true && body["readOnly"] == false, "{state}");
    let info = magnetar_tests::http_get(&address, "/api/v1/bookie/info").await?;
    let body: serde_json::Value = serde_json::from_str(info.split("\r\n\r\n").nth(1).unwrap_or_default())?;
    let (free, total) = (body["freeSpace"].as_u64().unwrap_or(0), body["totalSpace"].as_u64().unwrap_or(0));
    ensure!(total > free && free > 0, "{info}");
    let missing = magnetar_tests::http_get(&address, "/nothing").await?;
    ensure!(missing.starts_with("HTTP/1.1 404") && missing.contains("reason"), "{missing}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_shows_as_read_only_in_state_and_metrics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let meta = format!("local:{}", dir.path().join("meta").display());
    // Any usage is over a threshold of 0: the disk counts as full at the first check.
    let config = dir.path().join("bookie.toml");
    std::fs::write(&config, "disk_usage_threshold = 0.0\ndisk_usage_lwm = 0.0\ndisk_check_interval_ms = 100\n")?;
    let mut options = BookieOptions::new("bookie-full", &meta, dir.path());
    options.extra_args = vec!["--config".to_owned(), config.display().to_string()];
    let bookie = BookieProcess::start(options).await?;
    let address = bookie.http_url()?.trim_start_matches("http://").to_owned();
    let read_only = || {
        let address = address.clone();
        async move {
            let state = magnetar_tests::http_get(&address, "/api/v1/bookie/state").await.unwrap_or_default();
            state.contains(r#""readOnly":true"#)
        }
    };
    eventually(Duration::from_secs(10), "the bookie reports read-only", read_only).await?;
    let metrics = magnetar_tests::http_get(&address, "/metrics").await?;
    ensure!(sample(&metrics, "bookie_SERVER_STATUS") == Some(0.0), "{metrics}");
    Ok(())
}
