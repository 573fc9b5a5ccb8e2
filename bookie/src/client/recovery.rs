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

use super::connection::Bookies;
use super::metadata::{self, write_set, Ledger, LedgerStatus};
use super::rpc::{AddRequest, BookieRpc, LedgerEnd};
use crate::error::BookieError;
use crate::ids::{EntryId, LedgerId};

/// Recovers and closes the ledger if it is not closed yet; returns its closed metadata.
pub async fn recover_ledger(bookies: &Bookies, ledger_id: LedgerId) -> Result<Ledger, BookieError> {
    loop {
        let (mut current, mut version) = metadata::read(bookies.meta().as_ref(), ledger_id)
            .await?
            .ok_or(BookieError::NoSuchLedger { ledger_id: ledger_id.0 })?;
        if current.is_closed() {
            return Ok(current);
        }
        if current.status() != LedgerStatus::InRecovery {
            current.set_in_recovery();
            match metadata::write(bookies.meta().as_ref(), &current, Expected::Version(version)).await {
                Ok(new_version) => version = new_version,
                Err(BookieError::Meta(MetaError::BadVersion { .. })) => continue,
                Err(error) => return Err(error),
            }
        }
        let last_entry = find_last_entry(bookies, &current).await?;
        // The bytes of entries acknowledged before the recovery are not known here.
        current.close(last_entry, 0);
        match metadata::write(bookies.meta().as_ref(), &current, Expected::Version(version)).await {
            Ok(_) => {
                tracing::info!(%ledger_id, last_entry_id = EntryId::last_to_wire(last_entry), "ledger recovered and closed");
                return Ok(current);
            }
            Err(BookieError::Meta(MetaError::BadVersion { .. })) => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Quorum sizes and the last fragment of a ledger under recovery.
struct Quorums {
    ledger_id: LedgerId,
    master_key: Bytes,
    ensemble: Vec<String>,
    write_quorum: usize,
    ack_quorum: usize,
    /// How many bookies of a write set must answer to cover every ack quorum: Qw - Qa + 1.
    coverage: usize,
}

impl Quorums {
    /// The quorums of `ledger`'s last fragment, and where that fragment starts. (Checked when
    /// read: E bookies in it, E >= Qw >= Qa >= 1.)
    fn of(ledger: &Ledger) -> (Self, EntryId) {
        let last = ledger.last_fragment();
        let (write_quorum, ack_quorum) = (ledger.write_quorum(), ledger.ack_quorum());
        let quorums = Quorums {
            ledger_id: ledger.id(),
            master_key: ledger.master_key().clone(),
            ensemble: last.bookies.clone(),
            write_quorum,
            ack_quorum,
            coverage: write_quorum - ack_quorum + 1,
        };
        (quorums, last.first)
    }

    fn write_set(&self, entry_id: EntryId) -> impl Iterator<Item = usize> {
        write_set(entry_id, self.ensemble.len(), self.write_quorum)
    }

    /// True once every write set holds `coverage` of the `answered` indexes.
    fn covered(&self, answered: &BTreeMap<usize, LedgerEnd>) -> bool {
        (0..self.ensemble.len() as u64).all(|first| {
            self.write_set(EntryId(first)).filter(|index| answered.contains_key(index)).count() >= self.coverage
        })
    }

    fn incomplete(&self, reason: String) -> BookieError {
        BookieError::RecoveryIncomplete { ledger_id: self.ledger_id.0, reason }
    }
}

/// Fences the last fragment, reads forward and writes back; answers the last entry of the
/// ledger.
async fn find_last_entry(bookies: &Bookies, ledger: &Ledger) -> Result<Option<EntryId>, BookieError> {
    let (quorums, fragment_start) = Quorums::of(ledger);
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
    let mut last_entry = EntryId::from_last(highest_lac).max(fragment_start.previous());

    // Read forward, writing each found entry back.
    loop {
        let entry_id = last_entry.map_or(EntryId::FIRST, EntryId::next);
        match read_for_recovery(bookies, &quorums, entry_id).await? {
            Some(payload) => {
                // The LAC sent along is what the writer confirmed, never a recovered entry: a
                // racing recovery may close the ledger before it, and readers trust LACs.
                write_back(bookies, &quorums, entry_id, highest_lac, payload).await?;
                last_entry = Some(entry_id);
            }
            None => return Ok(last_entry),
        }
    }
}

/// A fencing read of one entry from its write set: `Some` if any bookie has it, `None` once
/// `coverage` bookies answered that they do not.
async fn read_for_recovery(
    bookies: &Bookies,
    quorums: &Quorums,
    entry_id: EntryId,
) -> Result<Option<Bytes>, BookieError> {
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
    entry_id: EntryId,
    last_add_confirmed: i64,
    payload: Bytes,
) -> Result<(), BookieError> {
    let timeout = bookies.options().add_timeout;
    let mut adds = FuturesUnordered::new();
    for index in quorums.write_set(entry_id) {
        let bookie_id = &quorums.ensemble[index];
        let add = AddRequest {
            ledger_id: quorums.ledger_id.0,
            entry_id: entry_id.0,
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
