//! `magnetar standalone --num-bookies N --ensemble-size E --write-quorum Qw --ack-quorum Qa`:
//! several bookies in one process, new ledgers replicated over them, and flags that cannot
//! work refused before anything starts.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use magnetar_bookie::client::metadata;
use magnetar_bookie::LedgerId;
use magnetar_client::{Client, InitialPosition, ProducerMessage};
use magnetar_meta::{LocalStore, MetadataStore};
use magnetar_proto::records::ManagedLedgerInfo;
use magnetar_tests::Standalone;
use prost::Message as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_bookies_replicate_every_ledger_over_all_three() -> anyhow::Result<()> {
    let mut standalone = Standalone::start_with_args(&[
        "--num-bookies",
        "3",
        "--ensemble-size",
        "3",
        "--write-quorum",
        "3",
        "--ack-quorum",
        "2",
    ])
    .await?;
    let log = standalone.log();
    for index in 0..3 {
        let bookie_id = format!("standalone-bookie-{index}");
        assert!(
            log.lines().any(|line| line.contains("standalone bookie registered") && line.contains(&bookie_id)),
            "{bookie_id} registered\n{log}"
        );
    }

    let topic = "persistent://public/default/replicated";
    let client = Client::connect(&standalone.service_url()).await?;
    let mut consumer = client.consumer(topic, "sub").initial_position(InitialPosition::Earliest).subscribe().await?;
    let mut producer = client.producer(topic).create().await?;
    let mut receipts = Vec::new();
    for i in 0..200 {
        receipts.push(producer.send_async(ProducerMessage::new(format!("m-{i}"))).await?);
    }
    for receipt in receipts {
        receipt.await?;
    }
    for i in 0..200 {
        let message = consumer.receive().await?;
        assert_eq!(message.payload, format!("m-{i}").as_bytes(), "message {i} in order");
        consumer.ack(&message).await?;
    }
    consumer.close().await?;
    producer.close().await?;
    client.close();
    assert!(standalone.terminate()?, "standalone exits cleanly on SIGTERM");

    // The metadata store is free once the process is gone: read what it recorded.
    let meta_dir = standalone.data_dir().join("metadata");
    let store: Arc<dyn MetadataStore> =
        Arc::new(tokio::task::spawn_blocking(move || LocalStore::open(&meta_dir)).await??);
    let cookies = store.list_children("/magnetar/bookies/cookies").await?;
    assert_eq!(cookies, ["standalone-bookie-0", "standalone-bookie-1", "standalone-bookie-2"], "one cookie each");
    for index in 0..3 {
        let dir = standalone.data_dir().join(format!("bookie-{index}"));
        assert!(dir.is_dir(), "bookie {index} has its own data dir {}", dir.display());
    }

    let info = store
        .get("/magnetar/managed-ledgers/public/default/persistent/replicated")
        .await?
        .context("the topic's ledger list is stored")?;
    let info = ManagedLedgerInfo::decode(&info.value[..])?;
    assert!(!info.ledgers.is_empty(), "the topic has a ledger");
    for ledger in &info.ledgers {
        let (ledger_metadata, _) =
            metadata::read(store.as_ref(), LedgerId(ledger.ledger_id)).await?.context("ledger metadata is stored")?;
        assert_eq!(
            (ledger_metadata.ensemble_size(), ledger_metadata.write_quorum(), ledger_metadata.ack_quorum()),
            (3, 3, 2),
            "ledger {} replication",
            ledger.ledger_id
        );
        for fragment in ledger_metadata.fragments() {
            let bookies: BTreeSet<&str> = fragment.bookies.iter().map(String::as_str).collect();
            assert_eq!(
                bookies,
                BTreeSet::from(["standalone-bookie-0", "standalone-bookie-1", "standalone-bookie-2"]),
                "ledger {} is written to all three bookies",
                ledger.ledger_id
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_flags_that_cannot_work_are_refused_naming_the_flag() -> anyhow::Result<()> {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--num-bookies", "3", "--ensemble-size", "4", "--write-quorum", "3", "--ack-quorum", "3"],
            "--ensemble-size 4",
        ),
        (&["--num-bookies", "3", "--ensemble-size", "3", "--write-quorum", "2", "--ack-quorum", "3"], "--ack-quorum 3"),
        (&["--ensemble-size", "2"], "--num-bookies 1"),
    ];
    for (args, flag) in cases {
        let (status, output) = Standalone::start_expecting_exit(args).await?;
        assert!(!status.success(), "{args:?} exits non-zero\n{output}");
        assert!(output.contains(flag), "{args:?}: the error names {flag}\n{output}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_file_with_a_bad_field_is_refused_naming_file_and_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("broker.toml");
    for (text, named) in [
        ("[managed_ledger]\nmanaged_ledger_max_entries = 10\n", "managed_ledger_max_entries"),
        ("[managed_ledger]\nmanaged_ledger_max_entries_per_ledger = 0\n", "managed_ledger_max_entries_per_ledger"),
    ] {
        std::fs::write(&path, text)?;
        let config = path.to_string_lossy().into_owned();
        let (status, output) = Standalone::start_expecting_exit(&["--config", &config]).await?;
        assert!(!status.success(), "{text:?} exits non-zero\n{output}");
        assert!(output.contains(named) && output.contains("broker.toml"), "{text:?}: names {named}\n{output}");
    }
    Ok(())
}
