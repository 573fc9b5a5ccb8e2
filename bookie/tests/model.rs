//! The bookie against a model: random adds, reads, fences, deletes, checkpoints and restarts.
//! After every step, and above all after every restart, each acknowledged entry of a live
//! ledger reads back byte for byte, a fenced ledger refuses adds, and a deleted ledger is gone.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use magnetar_bookie::bookie::Bookie;
use magnetar_bookie::{BookieConfig, BookieError};
use proptest::prelude::*;

const LEDGERS: u64 = 4;
const KEY: &[u8] = b"model-key";

#[derive(Debug, Clone)]
enum Op {
    Add {
        ledger: u64,
        size: usize,
        fill: u8,
    },
    Fence {
        ledger: u64,
    },
    RecoveryAdd {
        ledger: u64,
        fill: u8,
    },
    Delete {
        ledger: u64,
    },
    Checkpoint,
    Restart,
    /// Stop without the final checkpoint: everything since the last one comes from the journal.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..LEDGERS, 0usize..3000, any::<u8>()).prop_map(|(ledger, size, fill)| Op::Add { ledger, size, fill }),
        1 => (0..LEDGERS).prop_map(|ledger| Op::Fence { ledger }),
        1 => (0..LEDGERS, any::<u8>()).prop_map(|(ledger, fill)| Op::RecoveryAdd { ledger, fill }),
        1 => (0..LEDGERS).prop_map(|ledger| Op::Delete { ledger }),
        2 => Just(Op::Checkpoint),
        2 => Just(Op::Restart),
        2 => Just(Op::Crash),
    ]
}

#[derive(Default)]
struct Model {
    entries: BTreeMap<(u64, u64), Bytes>,
    next_entry: BTreeMap<u64, u64>,
    fenced: BTreeSet<u64>,
    /// Deleted ledgers get a new id space so ids never collide with stale entries.
    generation: BTreeMap<u64, u64>,
}

impl Model {
    fn ledger_id(&self, ledger: u64) -> u64 {
        ledger + 100 * self.generation.get(&ledger).copied().unwrap_or(0)
    }
}

fn config(dir: &std::path::Path) -> BookieConfig {
    let mut config = BookieConfig::new("model", dir);
    config.journal.file_bytes = 2 * 1024 * 1024;
    config.write_cache_bytes = 64 * 1024;
    config.entry_log_bytes = 1024 * 1024;
    config
}

fn check(bookie: &Bookie, model: &Model) -> Result<(), TestCaseError> {
    for ((ledger_id, entry_id), expected) in &model.entries {
        let found = bookie
            .read(*ledger_id, *entry_id)
            .map_err(|e| TestCaseError::fail(format!("{ledger_id}:{entry_id}: {e}")))?;
        prop_assert_eq!(&found, expected, "entry {}:{} reads back byte for byte", ledger_id, entry_id);
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let open = || Bookie::open(&config(dir.path())).map_err(|e| TestCaseError::fail(format!("open: {e}")));
    let mut bookie = open()?;
    let mut model = Model::default();
    for op in ops {
        match op.clone() {
            Op::Add { ledger, size, fill } => {
                let ledger_id = model.ledger_id(ledger);
                let entry_id = model.next_entry.get(&ledger_id).copied().unwrap_or(0);
                let payload = Bytes::from(vec![fill; size]);
                let result = bookie.add(ledger_id, entry_id, KEY, entry_id as i64 - 1, payload.clone(), false).await;
                if model.fenced.contains(&ledger_id) {
                    prop_assert!(
                        matches!(result, Err(BookieError::Fenced { .. })),
                        "fenced ledger refused the add: {result:?}"
                    );
                } else {
                    result.map_err(|e| TestCaseError::fail(format!("add: {e}")))?;
                    model.entries.insert((ledger_id, entry_id), payload);
                    model.next_entry.insert(ledger_id, entry_id + 1);
                }
            }
            Op::Fence { ledger } => {
                let ledger_id = model.ledger_id(ledger);
                let found =
                    bookie.fence(ledger_id, KEY).await.map_err(|e| TestCaseError::fail(format!("fence: {e}")))?;
                let last = model.next_entry.get(&ledger_id).map_or(-1, |n| *n as i64 - 1);
                prop_assert_eq!(found.last_entry_id, last);
                model.fenced.insert(ledger_id);
            }
            Op::RecoveryAdd { ledger, fill } => {
                let ledger_id = model.ledger_id(ledger);
                if model.fenced.contains(&ledger_id) {
                    let entry_id = model.next_entry.get(&ledger_id).copied().unwrap_or(0);
                    let payload = Bytes::from(vec![fill; 10]);
                    bookie
                        .add(ledger_id, entry_id, KEY, entry_id as i64 - 1, payload.clone(), true)
                        .await
                        .map_err(|e| TestCaseError::fail(format!("recovery add: {e}")))?;
                    model.entries.insert((ledger_id, entry_id), payload);
                    model.next_entry.insert(ledger_id, entry_id + 1);
                }
            }
            Op::Delete { ledger } => {
                let ledger_id = model.ledger_id(ledger);
                bookie.delete(ledger_id).map_err(|e| TestCaseError::fail(format!("delete: {e}")))?;
                prop_assert!(bookie.read(ledger_id, 0).is_err(), "deleted ledger is gone");
                model.entries.retain(|(l, _), _| *l != ledger_id);
                model.next_entry.remove(&ledger_id);
                model.fenced.remove(&ledger_id);
                *model.generation.entry(ledger).or_default() += 1;
            }
            Op::Checkpoint => {
                bookie.checkpoint().map_err(|e| TestCaseError::fail(format!("checkpoint: {e}")))?;
            }
            Op::Restart | Op::Crash => {
                if matches!(op, Op::Crash) {
                    bookie.abandon();
                } else {
                    drop(bookie);
                }
                bookie = open()?;
                for ledger_id in &model.fenced {
                    let result = bookie.add(*ledger_id, u64::MAX / 2, KEY, -1, Bytes::from_static(b"x"), false).await;
                    prop_assert!(matches!(result, Err(BookieError::Fenced { .. })), "fence survives a restart");
                }
            }
        }
        check(&bookie, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_entries_survive_any_sequence_of_operations(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        runtime.block_on(run(ops))?;
    }
}
