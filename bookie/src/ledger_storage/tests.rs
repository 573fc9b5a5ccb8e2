//! Scenario tests of the ledger storage: durability across reopen, each read tier, range reads,
//! read-ahead, a crash in the middle of a flush, deletion, GC and compaction, corruption, and a
//! model-based property test over random sequences of all of these.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn config(dir: &Path) -> BookieConfig {
    BookieConfig {
        entry_log_bytes: 1 << 20,
        read_cache_bytes: 1 << 20,
        read_ahead_entries: 8,
        gc_compaction_threshold: 0.5,
        ..BookieConfig::new("bookie-test", dir)
    }
}

/// The one content an entry has (entries are immutable per (ledger, entry); `generation` tells
/// apart the contents a ledger id had before and after a deletion).
fn content(ledger_id: u64, entry_id: u64, generation: u64) -> Bytes {
    let size = ((ledger_id * 7919 + entry_id * 104_729 + generation * 31) % 3000) as usize;
    Bytes::from(
        (0..size).map(|i| (i as u64 ^ ledger_id ^ (entry_id << 3) ^ (generation << 5)) as u8).collect::<Vec<u8>>(),
    )
}

fn state(last_add_confirmed: i64) -> LedgerData {
    LedgerData { fenced: false, last_add_confirmed, master_key: b"key".to_vec() }
}

fn checkpoint(storage: &LedgerStorage, mark: u64) {
    assert!(storage.swap_write_cache(mark), "no flush pending");
    assert_eq!(storage.flush().expect("flush"), mark);
}

fn log_files(dir: &Path) -> Vec<u64> {
    entry_log::list_logs(&dir.join(ENTRY_LOG_DIR)).expect("list").into_iter().map(|(log_id, _)| log_id).collect()
}

#[test]
fn flushed_entries_survive_reopen_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let big = Bytes::from(vec![0xa5u8; 300 * 1024]);
    {
        let storage = LedgerStorage::open(&config).expect("open");
        assert_eq!(storage.checkpoint_mark(), 0);
        for ledger in 1..=3u64 {
            for entry in 0..50u64 {
                storage.put_entry(ledger, entry, content(ledger, entry, 0));
            }
            storage.set_ledger_state(ledger, state(48));
        }
        storage.put_entry(4, 0, Bytes::new());
        storage.put_entry(4, 1, big.clone());
        checkpoint(&storage, 10);
        // After the last flush: the journal's to replay, not ours to keep.
        storage.put_entry(1, 50, content(1, 50, 0));
        storage.set_ledger_state(5, state(0));
    }
    let storage = LedgerStorage::open(&config).expect("reopen");
    assert_eq!(storage.checkpoint_mark(), 10);
    for ledger in 1..=3u64 {
        for entry in 0..50u64 {
            assert_eq!(storage.get_entry(ledger, entry).expect("read"), Some(content(ledger, entry, 0)));
        }
        assert_eq!(storage.ledger_state(ledger).expect("state"), Some(state(48)));
        assert_eq!(storage.last_entry_id(ledger).expect("last"), Some(49));
    }
    assert_eq!(storage.get_entry(4, 0).expect("read"), Some(Bytes::new()));
    assert_eq!(storage.get_entry(4, 1).expect("read"), Some(big));
    assert_eq!(storage.get_entry(1, 50).expect("read"), None);
    assert_eq!(storage.ledger_state(5).expect("state"), None);
    assert_eq!(storage.ledgers().expect("ledgers"), vec![1, 2, 3]);
}

#[test]
fn reads_come_from_each_tier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LedgerStorage::open(&config(dir.path())).expect("open");
    let data = Bytes::from_static(b"the entry");
    storage.put_entry(1, 0, data.clone());
    assert_eq!(storage.active_bytes(), data.len());
    assert_eq!(storage.get_entry(1, 0).expect("from the active half"), Some(data.clone()));

    assert!(storage.swap_write_cache(1));
    assert_eq!(storage.active_bytes(), 0);
    assert!(storage.flush_pending());
    assert_eq!(storage.get_entry(1, 0).expect("from the flushing half"), Some(data.clone()));

    assert_eq!(storage.flush().expect("flush"), 1);
    assert!(!storage.flush_pending());
    assert!(!storage.read_cache.contains(1, 0));
    assert_eq!(storage.get_entry(1, 0).expect("from the entry log"), Some(data.clone()));
    assert!(storage.read_cache.contains(1, 0), "a read from the log fills the read cache");

    // Damage the record on disk: the read cache still answers, so it is the tier that did.
    let location = storage.index.location(1, 0).expect("index").expect("indexed");
    let file = std::fs::OpenOptions::new().write(true).open(storage.logs.path(location.log_id)).expect("open log");
    file.write_all_at(b"X", location.offset + entry_log::RECORD_HEADER_LEN as u64).expect("damage");
    assert_eq!(storage.get_entry(1, 0).expect("from the read cache"), Some(data));
    assert_eq!(storage.get_entry(1, 1).expect("absent"), None);
    assert_eq!(storage.get_entry(2, 0).expect("absent"), None);
}

#[test]
fn read_ahead_fills_the_read_cache_with_following_entries_of_the_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BookieConfig { read_ahead_entries: 5, ..config(dir.path()) };
    let storage = LedgerStorage::open(&config).expect("open");
    for entry in 0..20u64 {
        storage.put_entry(1, entry, content(1, entry, 0));
        storage.put_entry(2, entry, content(2, entry, 0));
    }
    checkpoint(&storage, 1);
    assert_eq!(storage.get_entry(1, 3).expect("read"), Some(content(1, 3, 0)));
    for entry in 3..=8 {
        assert!(storage.read_cache.contains(1, entry), "entry {entry} read ahead");
    }
    assert!(!storage.read_cache.contains(1, 9), "only read_ahead_entries");
    assert!(!storage.read_cache.contains(1, 2), "nothing before");
    assert!(!storage.read_cache.contains(2, 0), "nothing of other ledgers");
    // Read-ahead never crosses the end of the ledger's run in the log.
    assert_eq!(storage.get_entry(1, 17).expect("read"), Some(content(1, 17, 0)));
    assert!(storage.read_cache.contains(1, 19));
    assert!(!storage.read_cache.contains(2, 0));
}

#[test]
fn range_reads_cross_tiers_and_stop_at_gap_count_and_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BookieConfig { read_cache_bytes: 0, read_ahead_entries: 2, ..config(dir.path()) };
    let storage = LedgerStorage::open(&config).expect("open");
    let entry = |id: u64| Bytes::from(format!("entry {id:03}"));
    for id in 0..3 {
        storage.put_entry(1, id, entry(id));
    }
    checkpoint(&storage, 1);
    for id in 3..5 {
        storage.put_entry(1, id, entry(id));
    }
    assert!(storage.swap_write_cache(2));
    for id in (5..8).chain(9..12) {
        storage.put_entry(1, id, entry(id));
    }
    let ids = |range: Vec<(u64, Bytes)>| {
        for (id, data) in &range {
            assert_eq!(*data, entry(*id));
        }
        range.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
    };
    let read = |first, last, max_entries, max_bytes| {
        ids(storage.get_range(1, first, last, max_entries, max_bytes).expect("range"))
    };
    assert_eq!(read(0, 100, 100, usize::MAX), (0..8).collect::<Vec<_>>(), "stops at the gap at 8");
    assert_eq!(read(1, 4, 100, usize::MAX), vec![1, 2, 3, 4]);
    assert_eq!(read(0, 100, 3, usize::MAX), vec![0, 1, 2]);
    assert_eq!(read(0, 100, 100, 25), vec![0, 1], "each entry has 9 bytes");
    assert_eq!(read(0, 100, 100, 27), vec![0, 1, 2], "stops once max_bytes is reached");
    assert_eq!(read(2, 100, 100, 1), vec![2], "always at least one");
    assert_eq!(read(8, 100, 100, usize::MAX), Vec::<u64>::new());
    assert_eq!(read(9, 100, 100, usize::MAX), vec![9, 10, 11]);
    assert_eq!(read(5, 3, 100, usize::MAX), Vec::<u64>::new());
    storage.flush().expect("flush");
    assert_eq!(read(0, 100, 100, usize::MAX), (0..8).collect::<Vec<_>>());
}

#[test]
fn swap_is_refused_while_a_flush_is_pending_and_empty_flush_keeps_the_mark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LedgerStorage::open(&config(dir.path())).expect("open");
    assert_eq!(storage.flush().expect("nothing to flush"), 0);
    storage.put_entry(1, 0, Bytes::from_static(b"a"));
    assert!(storage.swap_write_cache(3));
    storage.put_entry(1, 1, Bytes::from_static(b"b"));
    assert!(!storage.swap_write_cache(4));
    assert_eq!(storage.flush().expect("flush"), 3);
    assert_eq!(storage.flush().expect("nothing more"), 3);
    // A checkpoint with no entries still moves the mark, so the journal can let go.
    checkpoint(&storage, 4);
    assert!(storage.swap_write_cache(5));
    assert_eq!(storage.flush().expect("flush"), 5);
    assert_eq!(storage.checkpoint_mark(), 5);
}

#[test]
fn last_entry_id_spans_write_cache_and_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = LedgerStorage::open(&config(dir.path())).expect("open");
    assert_eq!(storage.last_entry_id(1).expect("last"), None);
    storage.put_entry(1, 5, Bytes::from_static(b"x"));
    storage.put_entry(2, 9, Bytes::from_static(b"x"));
    checkpoint(&storage, 1);
    assert_eq!(storage.last_entry_id(1).expect("last"), Some(5));
    storage.put_entry(1, 3, Bytes::from_static(b"x"));
    assert_eq!(storage.last_entry_id(1).expect("last"), Some(5));
    storage.put_entry(1, 6, Bytes::from_static(b"x"));
    assert!(storage.swap_write_cache(2));
    assert_eq!(storage.last_entry_id(1).expect("last"), Some(6));
    storage.put_entry(1, 7, Bytes::from_static(b"x"));
    assert_eq!(storage.last_entry_id(1).expect("last"), Some(7));
    assert_eq!(storage.last_entry_id(2).expect("last"), Some(9));
    assert_eq!(storage.last_entry_id(3).expect("last"), None);
}

#[test]
fn crash_during_flush_leaves_previous_checkpoint_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    {
        let storage = LedgerStorage::open(&config).expect("open");
        for entry in 0..10 {
            storage.put_entry(1, entry, content(1, entry, 0));
        }
        storage.set_ledger_state(1, state(8));
        checkpoint(&storage, 5);
        for entry in 10..20 {
            storage.put_entry(1, entry, content(1, entry, 0));
        }
        storage.put_entry(2, 0, content(2, 0, 0));
        storage.set_ledger_state(1, state(18));
        assert!(storage.swap_write_cache(9));
        storage.flush_entry_log_only().expect("entry log written, index never");
    }
    let storage = LedgerStorage::open(&config).expect("reopen");
    assert_eq!(storage.checkpoint_mark(), 5);
    for entry in 0..10 {
        assert_eq!(storage.get_entry(1, entry).expect("read"), Some(content(1, entry, 0)));
    }
    assert_eq!(storage.get_entry(1, 10).expect("read"), None);
    assert_eq!(storage.get_entry(2, 0).expect("read"), None);
    assert_eq!(storage.last_entry_id(1).expect("last"), Some(9));
    assert_eq!(storage.ledger_state(1).expect("state"), Some(state(8)));
    // The journal replays what the crash lost; a checkpoint then holds everything.
    for entry in 10..20 {
        storage.put_entry(1, entry, content(1, entry, 0));
    }
    checkpoint(&storage, 9);
    let stats = storage.gc().expect("gc");
    assert_eq!(stats.logs_unreadable, 0);
    drop(storage);
    let storage = LedgerStorage::open(&config).expect("reopen");
    let range = storage.get_range(1, 0, 100, 100, usize::MAX).expect("range");
    assert_eq!(range, (0..20).map(|entry| (entry, content(1, entry, 0))).collect::<Vec<_>>());
}

#[test]
fn log_left_by_a_crashed_flush_is_removed_by_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    {
        let storage = LedgerStorage::open(&config).expect("open");
        storage.put_entry(1, 0, content(1, 0, 0));
        checkpoint(&storage, 1);
    }
    {
        // A new process starts a new log; its first flush crashes before the index batch.
        let storage = LedgerStorage::open(&config).expect("reopen");
        storage.put_entry(1, 1, content(1, 1, 0));
        assert!(storage.swap_write_cache(2));
        storage.flush_entry_log_only().expect("entry log only");
    }
    assert_eq!(log_files(dir.path()), vec![1, 2]);
    let storage = LedgerStorage::open(&config).expect("reopen");
    let stats = storage.gc().expect("gc");
    assert_eq!((stats.logs_removed, stats.logs_compacted), (1, 0));
    assert!(stats.bytes_reclaimed > 0);
    assert_eq!(log_files(dir.path()), vec![1]);
    assert_eq!(storage.get_entry(1, 0).expect("read"), Some(content(1, 0, 0)));
}

#[test]
fn deleted_ledger_reads_none_from_every_tier_and_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    {
        let storage = LedgerStorage::open(&config).expect("open");
        for ledger in [1, 2] {
            for entry in 0..10 {
                storage.put_entry(ledger, entry, content(ledger, entry, 0));
            }
            storage.set_ledger_state(ledger, state(9));
        }
        checkpoint(&storage, 1);
        assert!(storage.get_entry(1, 0).expect("read").is_some());
        assert!(storage.read_cache.contains(1, 0));
        storage.put_entry(1, 10, content(1, 10, 0));
        assert!(storage.swap_write_cache(2));
        storage.put_entry(1, 11, content(1, 11, 0));
        storage.delete_ledger(1).expect("delete");
        for entry in 0..12 {
            assert_eq!(storage.get_entry(1, entry).expect("read"), None, "entry {entry}");
        }
        assert!(storage.get_range(1, 0, 100, 100, usize::MAX).expect("range").is_empty());
        assert_eq!(storage.last_entry_id(1).expect("last"), None);
        assert_eq!(storage.ledger_state(1).expect("state"), None);
        assert_eq!(storage.ledgers().expect("ledgers"), vec![2]);
        // The flushing half no longer holds the ledger either.
        assert_eq!(storage.flush().expect("flush"), 2);
        assert_eq!(storage.get_entry(1, 10).expect("read"), None);
    }
    let storage = LedgerStorage::open(&config).expect("reopen");
    assert_eq!(storage.get_entry(1, 0).expect("read"), None);
    assert_eq!(storage.ledger_state(1).expect("state"), None);
    assert_eq!(storage.ledgers().expect("ledgers"), vec![2]);
    for entry in 0..10 {
        assert_eq!(storage.get_entry(2, entry).expect("read"), Some(content(2, entry, 0)));
    }
}

#[test]
fn ledger_deleted_while_a_flush_writes_is_left_out_of_its_index_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    {
        let storage = LedgerStorage::open(&config).expect("open");
        for ledger in [1, 2] {
            for entry in 0..10 {
                storage.put_entry(ledger, entry, content(ledger, entry, 0));
            }
            storage.set_ledger_state(ledger, state(9));
        }
        assert!(storage.swap_write_cache(1));
        let mut writer = storage.appender.lock();
        let pending = storage.start_flush().expect("a half to flush");
        let appended = LedgerStorage::append_half(&mut writer, &pending.half, &pending.skip).expect("append");
        // The flush has written and synced the entry log and holds the appender: a deletion
        // does not wait for it.
        let deleter = {
            let storage = storage.clone();
            std::thread::spawn(move || storage.delete_ledger(1))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !deleter.is_finished() {
            assert!(std::time::Instant::now() < deadline, "delete_ledger waits for the flush's writes");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        deleter.join().expect("deleter thread").expect("delete");
        assert_eq!(storage.get_entry(1, 0).expect("read"), None, "hidden in the flushing half");
        assert_eq!(storage.last_entry_id(1).expect("last"), None);
        // The ledger id comes back before the flush commits (ids are never reused in practice).
        storage.set_ledger_state(1, state(0));
        storage.put_entry(1, 100, content(1, 100, 1));
        assert_eq!(storage.commit_flush(pending, appended).expect("commit"), 1);
        drop(writer);
        assert_eq!(storage.index.location(1, 0).expect("index"), None);
        assert_eq!(storage.get_entry(1, 0).expect("read"), None);
        assert_eq!(storage.get_entry(1, 100).expect("read"), Some(content(1, 100, 1)));
        assert_eq!(storage.ledger_state(1).expect("state"), Some(state(0)));
        assert!(storage.usage.lock().iter().all(|(_, log)| !log.ledgers.contains_key(&1)));
        assert_eq!(storage.get_entry(2, 9).expect("read"), Some(content(2, 9, 0)));
        checkpoint(&storage, 2);
    }
    let storage = LedgerStorage::open(&config).expect("reopen");
    assert_eq!(storage.get_entry(1, 0).expect("read"), None);
    assert_eq!(storage.get_entry(1, 100).expect("read"), Some(content(1, 100, 1)));
    assert_eq!(storage.ledger_state(1).expect("state"), Some(state(0)), "the new state reached the next checkpoint");
    for entry in 0..10 {
        assert_eq!(storage.get_entry(2, entry).expect("read"), Some(content(2, entry, 0)));
    }
    // The deleted ledger's records are garbage: GC reclaims them.
    assert_eq!(storage.gc().expect("gc").logs_unreadable, 0);
}

#[test]
fn ledger_states_persist_at_checkpoints_and_deletion_persists_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    {
        let storage = LedgerStorage::open(&config).expect("open");
        storage.set_ledger_state(1, state(3));
    }
    {
        let storage = LedgerStorage::open(&config).expect("reopen");
        assert_eq!(storage.ledger_state(1).expect("state"), None, "no checkpoint wrote it");
        storage.set_ledger_state(1, state(3));
        storage.set_ledger_state(2, state(4));
        checkpoint(&storage, 1);
        storage.set_ledger_state(1, state(7));
        storage.delete_ledger(2).expect("delete");
    }
    let storage = LedgerStorage::open(&config).expect("reopen");
    assert_eq!(storage.ledger_state(1).expect("state"), Some(state(3)));
    assert_eq!(storage.ledger_state(2).expect("state"), None);
    assert_eq!(storage.ledgers().expect("ledgers"), vec![1]);
}

#[test]
fn gc_removes_logs_whose_ledgers_are_all_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BookieConfig { entry_log_bytes: 64 * 1024, ..config(dir.path()) };
    let storage = LedgerStorage::open(&config).expect("open");
    let data = Bytes::from(vec![1u8; 10 * 1024]);
    for entry in 0..30 {
        storage.put_entry(1, entry, data.clone());
    }
    checkpoint(&storage, 1);
    storage.put_entry(2, 0, content(2, 0, 0));
    checkpoint(&storage, 2);
    let before = log_files(dir.path());
    assert!(before.len() >= 5, "{before:?}");
    assert_eq!(storage.gc().expect("nothing to collect"), GcStats::default());
    storage.delete_ledger(1).expect("delete");
    let stats = storage.gc().expect("gc");
    let after = log_files(dir.path());
    assert_eq!(stats.logs_removed, before.len() - 1, "{stats:?}");
    assert_eq!(stats.logs_compacted, 0);
    assert!(stats.bytes_reclaimed >= 24 * 10 * 1024, "{stats:?}");
    assert_eq!(after, vec![*before.last().expect("a log")], "the current log stays");
    assert_eq!(storage.get_entry(2, 0).expect("read"), Some(content(2, 0, 0)));
}

#[test]
fn compaction_keeps_live_entries_readable_at_new_locations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BookieConfig { read_cache_bytes: 0, ..config(dir.path()) };
    {
        let storage = LedgerStorage::open(&config).expect("open");
        for entry in 0..20 {
            storage.put_entry(1, entry, Bytes::from(vec![9u8; 8 * 1024]));
            storage.put_entry(2, entry, content(2, entry, 0));
        }
        storage.set_ledger_state(2, state(19));
        checkpoint(&storage, 1);
    }
    let storage = LedgerStorage::open(&config).expect("reopen: log 1 is no longer current");
    storage.put_entry(3, 0, content(3, 0, 0));
    checkpoint(&storage, 2);
    let old: Vec<Location> =
        (0..20).map(|entry| storage.index.location(2, entry).expect("index").expect("indexed")).collect();
    assert!(old.iter().all(|location| location.log_id == 1));
    assert_eq!(storage.gc().expect("log 1 is mostly live").logs_compacted, 0);
    storage.delete_ledger(1).expect("delete");
    let stats = storage.gc().expect("gc");
    assert_eq!((stats.logs_compacted, stats.logs_removed, stats.logs_unreadable), (1, 0, 0), "{stats:?}");
    assert!(stats.bytes_reclaimed >= 20 * 8 * 1024);
    assert_eq!(log_files(dir.path()), vec![2]);
    for (entry, old) in (0..20).zip(&old) {
        let new = storage.index.location(2, entry).expect("index").expect("still indexed");
        assert_eq!(new.log_id, 2);
        assert_eq!(new.len, old.len);
        assert_eq!(storage.get_entry(2, entry).expect("read"), Some(content(2, entry, 0)));
    }
    assert_eq!(storage.get_entry(3, 0).expect("read"), Some(content(3, 0, 0)));
    drop(storage);
    let storage = LedgerStorage::open(&config).expect("reopen");
    for entry in 0..20 {
        assert_eq!(storage.get_entry(2, entry).expect("read"), Some(content(2, entry, 0)));
    }
    assert_eq!(storage.ledger_state(2).expect("state"), Some(state(19)));
    let usage = storage.usage.lock();
    assert!(usage.get(1).is_none(), "log 1 is forgotten");
    assert!(usage.get(2).expect("log 2").ledgers.contains_key(&2));
}

#[test]
fn corrupt_record_reads_as_corrupt_error_and_gc_leaves_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let damaged = {
        let storage = LedgerStorage::open(&config).expect("open");
        for entry in 0..10 {
            storage.put_entry(1, entry, Bytes::from(vec![1u8; 4096]));
            storage.put_entry(2, entry, content(2, entry, 0));
        }
        checkpoint(&storage, 1);
        storage.delete_ledger(1).expect("delete: log 1 becomes a compaction candidate");
        storage.index.location(2, 4).expect("index").expect("indexed")
    };
    let path = dir.path().join(ENTRY_LOG_DIR).join(entry_log::file_name(damaged.log_id));
    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open log");
    file.write_all_at(&[0xff], damaged.offset + entry_log::RECORD_HEADER_LEN as u64 + 2).expect("damage");
    let storage = LedgerStorage::open(&config).expect("reopen");
    match storage.get_entry(2, 4) {
        Err(BookieError::Corrupt { what, reason }) => {
            assert!(what.contains(&entry_log::file_name(damaged.log_id)), "{what}");
            assert!(what.contains(&format!("offset {}", damaged.offset)), "{what}");
            assert!(reason.contains("crc32c"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(storage.get_entry(2, 3).expect("neighbour intact"), Some(content(2, 3, 0)));
    let stats = storage.gc().expect("gc");
    assert_eq!((stats.logs_unreadable, stats.logs_compacted), (1, 0), "{stats:?}");
    assert!(path.exists(), "a log with an unreadable record is never removed");
    assert_eq!(storage.get_entry(2, 5).expect("still served"), Some(content(2, 5, 0)));
}

#[test]
fn readers_see_every_flushed_entry_while_flushes_deletes_and_compaction_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        BookieConfig { entry_log_bytes: 256 * 1024, read_cache_bytes: 0, read_ahead_entries: 4, ..config(dir.path()) };
    let storage = LedgerStorage::open(&config).expect("open");
    let flushed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4u64)
        .map(|reader| {
            let (storage, flushed, stop) = (storage.clone(), flushed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut next = reader;
                while !stop.load(Ordering::Acquire) {
                    let upto = flushed.load(Ordering::Acquire);
                    if upto == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    next = next.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    let entry = (next >> 33) % upto;
                    let got = storage.get_entry(1, entry).expect("read");
                    assert_eq!(got, Some(content(1, entry, 0)), "entry {entry}");
                    if entry + 5 < upto {
                        let range = storage.get_range(1, entry, entry + 4, 10, usize::MAX).expect("range");
                        assert_eq!(range.len(), 5);
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut mark = 0;
    for round in 0..20u64 {
        for entry in round * 10..(round + 1) * 10 {
            storage.put_entry(1, entry, content(1, entry, 0));
        }
        for entry in round * 50..(round + 1) * 50 {
            storage.put_entry(2, entry, content(2, entry, 0));
        }
        mark += 1;
        checkpoint(&storage, mark);
        flushed.store((round + 1) * 10, Ordering::Release);
    }
    storage.delete_ledger(2).expect("delete");
    let stats = storage.gc().expect("gc");
    assert!(stats.logs_compacted >= 1, "{stats:?}");
    storage.put_entry(1, 200, content(1, 200, 0));
    checkpoint(&storage, mark + 1);
    assert_eq!(storage.gc().expect("gc again").logs_unreadable, 0);
    stop.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.join().expect("reader thread") > 0);
    }
    for entry in 0..=200 {
        assert_eq!(storage.get_entry(1, entry).expect("read"), Some(content(1, entry, 0)));
    }
}

/// One step of the model-based test.
#[derive(Debug, Clone)]
enum Step {
    Put {
        ledger_id: u64,
        entry_id: u64,
    },
    SetState {
        ledger_id: u64,
        last_add_confirmed: i64,
    },
    Checkpoint,
    /// Swap, write the entry log, crash before the index batch, reopen.
    CrashInFlush,
    Reopen,
    Delete {
        ledger_id: u64,
    },
    Gc,
}

const MODEL_LEDGERS: u64 = 4;
const MODEL_ENTRIES: u64 = 24;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (0..MODEL_LEDGERS, 0..MODEL_ENTRIES).prop_map(|(ledger_id, entry_id)| Step::Put { ledger_id, entry_id }),
        2 => (0..MODEL_LEDGERS, -1..100i64)
            .prop_map(|(ledger_id, last_add_confirmed)| Step::SetState { ledger_id, last_add_confirmed }),
        3 => Just(Step::Checkpoint),
        1 => Just(Step::CrashInFlush),
        1 => Just(Step::Reopen),
        1 => (0..MODEL_LEDGERS).prop_map(|ledger_id| Step::Delete { ledger_id }),
        2 => Just(Step::Gc),
    ]
}

/// What the storage should hold: what the last checkpoint made durable, and what is only in
/// memory.
#[derive(Default)]
struct Model {
    durable: BTreeMap<(u64, u64), Bytes>,
    volatile: BTreeMap<(u64, u64), Bytes>,
    durable_states: BTreeMap<u64, LedgerData>,
    volatile_states: BTreeMap<u64, LedgerData>,
    generations: HashMap<u64, u64>,
    mark: u64,
}

impl Model {
    fn entry(&self, ledger_id: u64, entry_id: u64) -> Option<&Bytes> {
        self.volatile.get(&(ledger_id, entry_id)).or_else(|| self.durable.get(&(ledger_id, entry_id)))
    }

    fn state(&self, ledger_id: u64) -> Option<&LedgerData> {
        self.volatile_states.get(&ledger_id).or_else(|| self.durable_states.get(&ledger_id))
    }

    fn lose_memory(&mut self) {
        self.volatile.clear();
        self.volatile_states.clear();
    }

    fn make_durable(&mut self) {
        self.durable.append(&mut self.volatile);
        self.durable_states.append(&mut self.volatile_states);
    }
}

fn check(storage: &LedgerStorage, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(storage.checkpoint_mark(), model.mark);
    for ledger_id in 0..MODEL_LEDGERS {
        for entry_id in 0..MODEL_ENTRIES {
            let got = storage.get_entry(ledger_id, entry_id).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                got.as_ref(),
                model.entry(ledger_id, entry_id),
                "entry {} of ledger {}",
                entry_id,
                ledger_id
            );
        }
        let expected_last = (0..MODEL_ENTRIES).rev().find(|entry_id| model.entry(ledger_id, *entry_id).is_some());
        prop_assert_eq!(
            storage.last_entry_id(ledger_id).map_err(|e| TestCaseError::fail(e.to_string()))?,
            expected_last
        );
        let range = storage
            .get_range(ledger_id, 0, MODEL_ENTRIES, usize::MAX, usize::MAX)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let expected: Vec<(u64, Bytes)> = (0..MODEL_ENTRIES)
            .map_while(|entry_id| model.entry(ledger_id, entry_id).map(|data| (entry_id, data.clone())))
            .collect();
        prop_assert_eq!(range, expected);
        let state = storage.ledger_state(ledger_id).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(state.as_ref(), model.state(ledger_id));
    }
    Ok(())
}

fn run_model(
    steps: Vec<Step>,
    entry_log_bytes: u64,
    read_cache_bytes: u64,
    read_ahead_entries: usize,
    threshold: f64,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let config = BookieConfig {
        entry_log_bytes,
        read_cache_bytes,
        read_ahead_entries,
        gc_compaction_threshold: threshold,
        ..BookieConfig::new("bookie-model", dir.path())
    };
    let open = || LedgerStorage::open(&config).map_err(|e| TestCaseError::fail(e.to_string()));
    let mut storage = open()?;
    let mut model = Model::default();
    for step in steps {
        match step {
            Step::Put { ledger_id, entry_id } => {
                let generation = model.generations.get(&ledger_id).copied().unwrap_or(0);
                let data = content(ledger_id, entry_id, generation);
                storage.put_entry(ledger_id, entry_id, data.clone());
                model.volatile.insert((ledger_id, entry_id), data);
            }
            Step::SetState { ledger_id, last_add_confirmed } => {
                storage.set_ledger_state(ledger_id, state(last_add_confirmed));
                model.volatile_states.insert(ledger_id, state(last_add_confirmed));
            }
            Step::Checkpoint => {
                prop_assert!(storage.swap_write_cache(model.mark + 1));
                let durable = storage.flush().map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.mark += 1;
                prop_assert_eq!(durable, model.mark);
                model.make_durable();
            }
            Step::CrashInFlush => {
                prop_assert!(storage.swap_write_cache(model.mark + 1));
                storage.flush_entry_log_only().map_err(|e| TestCaseError::fail(e.to_string()))?;
                drop(storage);
                storage = open()?;
                model.lose_memory();
            }
            Step::Reopen => {
                drop(storage);
                storage = open()?;
                model.lose_memory();
            }
            Step::Delete { ledger_id } => {
                storage.delete_ledger(ledger_id).map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.durable.retain(|(ledger, _), _| *ledger != ledger_id);
                model.volatile.retain(|(ledger, _), _| *ledger != ledger_id);
                model.durable_states.remove(&ledger_id);
                model.volatile_states.remove(&ledger_id);
                *model.generations.entry(ledger_id).or_default() += 1;
            }
            Step::Gc => {
                let stats = storage.gc().map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(stats.logs_unreadable, 0);
            }
        }
        check(&storage, &model)?;
    }
    // Whatever the history, a final checkpoint and reopen keep everything.
    prop_assert!(storage.swap_write_cache(model.mark + 1));
    storage.flush().map_err(|e| TestCaseError::fail(e.to_string()))?;
    model.mark += 1;
    model.make_durable();
    drop(storage);
    let storage = open()?;
    storage.gc().map_err(|e| TestCaseError::fail(e.to_string()))?;
    check(&storage, &model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn storage_matches_a_model_through_flushes_crashes_deletes_and_gc(
        steps in proptest::collection::vec(step(), 1..60),
        entry_log_bytes in prop_oneof![Just(4096u64), Just(16 * 1024), Just(1 << 20)],
        read_cache_bytes in prop_oneof![Just(0u64), Just(32 * 1024), Just(1 << 20)],
        read_ahead_entries in 0usize..6,
        threshold in prop_oneof![Just(0.0), Just(0.5), Just(0.9), Just(1.0)],
    ) {
        run_model(steps, entry_log_bytes, read_cache_bytes, read_ahead_entries, threshold)?;
    }
}
