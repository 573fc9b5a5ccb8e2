//! Recovery of a ledger whose writer is gone (crashed, or its broker lost the topic).
//!
//! Steps, each metadata change a compare-and-set so that racing recoveries agree (the loser
//! re-reads and, once the winner closed the ledger, returns its result):
//!
//! 1. mark the ledger IN_RECOVERY (the writer's next metadata change fails: it is fenced out);
//! 2. fence the bookies of the **last fragment** (earlier fragments only hold acknowledged
//!    entries) until every write set has at least Qw-Qa+1 fenced bookies: from then on no
//!    entry can reach an ack quorum without one of them, so the old writer can acknowledge
//!    nothing new;
//! 3. read forward from the highest last-add-confirmed those bookies report + 1, with
//!    fencing reads: an entry exists if any bookie of its write set returns it; it is absent
//!    once Qw-Qa+1 of its write set answer NO_SUCH_ENTRY (an acknowledged entry is on at least
//!    Qa of them, so fewer than that many can lack it). The first absent entry ends the ledger;
//! 4. write each recovered entry back to its whole write set (recovery adds pass the fence)
//!    and wait for Qa acks, so what the closed ledger holds is replicated like any
//!    acknowledged entry;
//! 5. CLOSED at the last recovered entry.
//!
//! If a step cannot reach its quorum (too many bookies down or unreachable), recovery returns
//! [`BookieError::RecoveryIncomplete`] and leaves the ledger IN_RECOVERY: a later call resumes.
//! It never closes the ledger before an entry it could not decide on.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use magnetar_meta::{Expected, MetaError};
use magnetar_proto::records::{LedgerMetadata, LedgerState};

use super::connection::Bookies;
use super::metadata;
use super::metadata::write_set;
use super::rpc::{AddRequest, BookieRpc, LedgerEnd};
use crate::error::BookieError;

/// Recovers and closes the ledger if it is not closed yet; returns its closed metadata.
pub async fn recover_ledger(bookies: &Bookies, ledger_id: u64) -> Result<LedgerMetadata, BookieError> {
    loop {
        let (mut current, mut version) =
            metadata::read(bookies.meta().as_ref(), ledger_id).await?.ok_or(BookieError::NoSuchLedger { ledger_id })?;
        if metadata::is_closed(&current) {
            return Ok(current);
        }
        if current.state != LedgerState::InRecovery as i32 {
            current.state = LedgerState::InRecovery as i32;
            match metadata::write(bookies.meta().as_ref(), &current, Expected::Version(version)).await {
                Ok(new_version) => version = new_version,
                Err(BookieError::Meta(MetaError::BadVersion { .. })) => continue,
                Err(error) => return Err(error),
            }
        }
        let last_entry_id = find_last_entry(bookies, &current).await?;
        current.state = LedgerState::Closed as i32;
        current.last_entry_id = last_entry_id;
        match metadata::write(bookies.meta().as_ref(), &current, Expected::Version(version)).await {
            Ok(_) => {
                tracing::info!(ledger_id, last_entry_id, "ledger recovered and closed");
                return Ok(current);
            }
            Err(BookieError::Meta(MetaError::BadVersion { .. })) => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Quorum sizes and the last fragment of a ledger under recovery.
struct Quorums {
    ledger_id: u64,
    master_key: Bytes,
    ensemble: Vec<String>,
    write_quorum: usize,
    ack_quorum: usize,
    /// How many bookies of a write set must answer to cover every ack quorum: Qw - Qa + 1.
    coverage: usize,
}

impl Quorums {
    fn of(ledger: &LedgerMetadata) -> Result<(Self, u64), BookieError> {
        let ledger_id = ledger.ledger_id;
        let last = ledger.fragments.last().ok_or_else(|| BookieError::Corrupt {
            what: crate::ledger_path(ledger_id),
            reason: "ledger metadata has no fragment".to_owned(),
        })?;
        let ensemble = last.bookies.clone();
        let write_quorum = (ledger.write_quorum as usize).clamp(1, ensemble.len().max(1));
        let ack_quorum = (ledger.ack_quorum as usize).clamp(1, write_quorum);
        if ensemble.is_empty() {
            return Err(BookieError::Corrupt {
                what: crate::ledger_path(ledger_id),
                reason: "last fragment has no bookies".to_owned(),
            });
        }
        let quorums = Quorums {
            ledger_id,
            master_key: Bytes::from(ledger.master_key.clone()),
            ensemble,
            write_quorum,
            ack_quorum,
            coverage: write_quorum - ack_quorum + 1,
        };
        Ok((quorums, last.first_entry_id))
    }

    fn write_set(&self, entry_id: u64) -> impl Iterator<Item = usize> {
        write_set(entry_id, self.ensemble.len(), self.write_quorum)
    }

    /// True once every write set holds `coverage` of the `answered` indexes.
    fn covered(&self, answered: &BTreeMap<usize, LedgerEnd>) -> bool {
        (0..self.ensemble.len() as u64)
            .all(|first| self.write_set(first).filter(|index| answered.contains_key(index)).count() >= self.coverage)
    }

    fn incomplete(&self, reason: String) -> BookieError {
        BookieError::RecoveryIncomplete { ledger_id: self.ledger_id, reason }
    }
}

/// Fences the last fragment, reads forward and writes back; answers the last entry of the
/// ledger.
async fn find_last_entry(bookies: &Bookies, ledger: &LedgerMetadata) -> Result<i64, BookieError> {
    let (quorums, fragment_start) = Quorums::of(ledger)?;
    let timeout = bookies.options().read_timeout;

    // Fence, until every write set has ack-quorum coverage.
    let mut fences = FuturesUnordered::new();
    for (index, bookie_id) in quorums.ensemble.iter().enumerate() {
        let key = quorums.master_key.clone();
        fences.push(async move {
            let answer = async {
                let bookie = bookies.get(bookie_id).await?;
                bookie.fence(quorums.ledger_id, key).await
            };
            let answer = tokio::time::timeout(timeout, answer)
                .await
                .unwrap_or_else(|_| Err(BookieError::Timeout { bookie: bookie_id.clone(), what: "fence".to_owned() }));
            (index, answer)
        });
    }
    let mut fenced: BTreeMap<usize, LedgerEnd> = BTreeMap::new();
    let mut errors = Vec::new();
    while !quorums.covered(&fenced) {
        let Some((index, answer)) = fences.next().await else {
            return Err(quorums.incomplete(format!("fenced too few bookies of the last fragment: {errors:?}")));
        };
        match answer {
            Ok(end) => {
                fenced.insert(index, end);
            }
            Err(error) => errors.push(error.to_string()),
        }
    }
    drop(fences);
    let highest_lac = fenced.values().map(|end| end.last_add_confirmed).max().unwrap_or(-1);
    // Entries below the last fragment were acknowledged before it was made.
    let mut last_entry_id = highest_lac.max(fragment_start as i64 - 1);

    // Read forward, writing each found entry back.
    loop {
        let entry_id = (last_entry_id + 1) as u64;
        match read_for_recovery(bookies, &quorums, entry_id).await? {
            Some(payload) => {
                // The LAC sent along is what the writer confirmed, never a recovered entry: a
                // racing recovery may close the ledger before it, and readers trust LACs.
                write_back(bookies, &quorums, entry_id, highest_lac, payload).await?;
                last_entry_id = entry_id as i64;
            }
            None => return Ok(last_entry_id),
        }
    }
}

/// A fencing read of one entry from its write set: `Some` if any bookie has it, `None` once
/// `coverage` bookies answered that they do not.
async fn read_for_recovery(bookies: &Bookies, quorums: &Quorums, entry_id: u64) -> Result<Option<Bytes>, BookieError> {
    let timeout = bookies.options().read_timeout;
    let mut reads = FuturesUnordered::new();
    for index in quorums.write_set(entry_id) {
        let bookie_id = &quorums.ensemble[index];
        let key = quorums.master_key.clone();
        reads.push(async move {
            let read = async {
                let bookie = bookies.get(bookie_id).await?;
                bookie.read_entry(quorums.ledger_id, entry_id, Some(key)).await
            };
            tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
                Err(BookieError::Timeout { bookie: bookie_id.clone(), what: format!("read of entry {entry_id}") })
            })
        });
    }
    let mut missing = 0;
    let mut errors = Vec::new();
    while let Some(answer) = reads.next().await {
        match answer {
            Ok((payload, _)) => return Ok(Some(payload)),
            Err(BookieError::NoSuchEntry { .. } | BookieError::NoSuchLedger { .. }) => {
                missing += 1;
                if missing >= quorums.coverage {
                    return Ok(None);
                }
            }
            Err(error) => errors.push(error.to_string()),
        }
    }
    Err(quorums.incomplete(format!(
        "entry {entry_id}: {missing} bookies lack it, fewer than {}, others failed: {errors:?}",
        quorums.coverage
    )))
}

/// Writes a recovered entry to its whole write set with the recovery flag; waits for Qa acks.
async fn write_back(
    bookies: &Bookies,
    quorums: &Quorums,
    entry_id: u64,
    last_add_confirmed: i64,
    payload: Bytes,
) -> Result<(), BookieError> {
    let timeout = bookies.options().add_timeout;
    let mut adds = FuturesUnordered::new();
    for index in quorums.write_set(entry_id) {
        let bookie_id = &quorums.ensemble[index];
        let add = AddRequest {
            ledger_id: quorums.ledger_id,
            entry_id,
            master_key: quorums.master_key.clone(),
            last_add_confirmed,
            payload: payload.clone(),
            recovery: true,
        };
        adds.push(async move {
            let written = async {
                let bookie: Arc<dyn BookieRpc> = bookies.get(bookie_id).await?;
                bookie
                    .add(add)
                    .await
                    .await
                    .unwrap_or(Err(BookieError::Stopped { what: "bookie connection (answer lost)" }))
            };
            tokio::time::timeout(timeout, written).await.unwrap_or_else(|_| {
                Err(BookieError::Timeout {
                    bookie: bookie_id.clone(),
                    what: format!("recovery add of entry {entry_id}"),
                })
            })
        });
    }
    let mut acked = 0;
    let mut errors = Vec::new();
    while let Some(answer) = adds.next().await {
        match answer {
            Ok(()) => {
                acked += 1;
                if acked >= quorums.ack_quorum {
                    return Ok(());
                }
            }
            Err(error) => errors.push(error.to_string()),
        }
    }
    Err(quorums.incomplete(format!(
        "entry {entry_id} written back to {acked} bookies, fewer than the ack quorum {}: {errors:?}",
        quorums.ack_quorum
    )))
}
