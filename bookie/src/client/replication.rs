//! Re-replication: copying the entries a lost bookie held to a replacement, then naming the
//! replacement in the ledger's metadata. Auto-recovery ([`crate::autorecovery`]) drives it;
//! this module decides which fragments and entries to copy and does the copy of one ledger.
//!
//! Which fragments: every fragment of a CLOSED ledger (the last one ends at the ledger's last
//! entry); every fragment but the last of an OPEN or IN_RECOVERY ledger (the last belongs to
//! its live writer or to a recovery in progress; an earlier fragment ends right before the
//! next one starts, and every entry in it was acknowledged, since a new fragment starts at the
//! writer's first unacknowledged entry). Which entries: those of the fragment whose write set
//! includes the lost bookie's ensemble index.
//!
//! How: each entry is read from a surviving bookie of its write set and added to the
//! replacement with the recovery flag (it passes a fence) and the ledger's master key; only
//! once every entry is durable there does a compare-and-set put the replacement in place of
//! the lost bookie in that fragment. A lost compare-and-set re-reads and checks that the same
//! replica is still missing (same fragment bounds, same index, same lost bookie) before trying
//! again, so a writer's ensemble change or a recovery closing the ledger is never overwritten.
//! The writer rebases over such a change (`writer.rs`, `only_earlier_fragments_differ`).
//!
//! Invariant: metadata names the replacement only after it holds every entry of that
//! replica; the ledger never has fewer readable copies than before.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use magnetar_meta::{Expected, MetaError};
use tracing::{info, warn};

use super::connection::Bookies;
use super::metadata::{self, write_set, Ledger};
use super::placement;
use super::reader;
use super::rpc::AddRequest;
use crate::error::BookieError;
use crate::ids::{EntryId, LedgerId};

/// Entries copied at once, per ledger.
pub const COPY_PARALLELISM: usize = 32;

/// Attempts at one ledger (re-reads after lost compare-and-sets included) before giving up
/// until the next scan.
const MAX_ATTEMPTS_PER_LEDGER: usize = 64;

/// One replica to restore: the bookie at `index` of a fragment is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostReplica {
    /// Position of the fragment in the ledger's fragment list.
    pub fragment: usize,
    pub first: EntryId,
    /// The fragment's last entry; `None` when it holds none (only the metadata changes).
    pub last: Option<EntryId>,
    /// Ensemble index of the lost bookie in the fragment.
    pub index: usize,
    pub bookie_id: String,
}

/// What one ledger's re-replication did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    /// Replicas put in place (one lost bookie in one fragment each).
    pub fragments: u64,
    /// Entries copied to replacements.
    pub entries: u64,
}

/// The replicas on `lost` bookies that re-replication restores in `ledger` (see the module
/// doc for which fragments count), in fragment order.
pub fn lost_replicas(ledger: &Ledger, lost: &BTreeSet<String>) -> Vec<LostReplica> {
    let closed = ledger.is_closed();
    let count = ledger.fragments().len();
    let mut out = Vec::new();
    for (position, fragment) in ledger.fragments().iter().enumerate() {
        let is_last = position + 1 == count;
        if is_last && !closed {
            continue;
        }
        let end = if is_last { ledger.last_entry() } else { ledger.fragment_end(position) };
        let last = end.filter(|end| *end >= fragment.first);
        for (index, bookie_id) in fragment.bookies.iter().enumerate() {
            if lost.contains(bookie_id) {
                out.push(LostReplica {
                    fragment: position,
                    first: fragment.first,
                    last,
                    index,
                    bookie_id: bookie_id.clone(),
                });
            }
        }
    }
    out
}

/// The entries of `first..=last` stored at ensemble index `index`: those whose write set
/// (Qw of E, striped) includes it.
pub fn entries_at_index(
    first: EntryId,
    last: EntryId,
    ensemble_size: usize,
    write_quorum: usize,
    index: usize,
) -> impl Iterator<Item = EntryId> {
    first.through(last).filter(move |&entry_id| write_set(entry_id, ensemble_size, write_quorum).any(|i| i == index))
}

/// Restores every lost replica of `ledger_id` (see [`lost_replicas`]), one at a time, each by
/// a copy and then a compare-and-set. A ledger that is gone counts as done.
pub async fn replicate_ledger(
    bookies: &Bookies,
    ledger_id: LedgerId,
    lost: &BTreeSet<String>,
) -> Result<ReplicationStats, BookieError> {
    let mut stats = ReplicationStats::default();
    for _ in 0..MAX_ATTEMPTS_PER_LEDGER {
        let Some((ledger, _)) = metadata::read(bookies.meta().as_ref(), ledger_id).await? else {
            return Ok(stats);
        };
        let Some(replica) = lost_replicas(&ledger, lost).into_iter().next() else {
            return Ok(stats);
        };
        let replacement = choose_replacement(bookies, &ledger, &replica, lost).await?;
        let copied = copy_replica(bookies, &ledger, &replica, &replacement, lost).await?;
        if swap_in(bookies, ledger_id, &replica, &replacement, lost).await? {
            stats.fragments += 1;
            stats.entries += copied;
            info!(
                %ledger_id,
                fragment_first_entry = %replica.first,
                lost = %replica.bookie_id,
                replacement = %replacement,
                entries = copied,
                "re-replicated a fragment"
            );
        }
    }
    Err(BookieError::ReplicationIncomplete {
        ledger_id: ledger_id.0,
        reason: format!("still lost replicas after {MAX_ATTEMPTS_PER_LEDGER} attempts"),
    })
}

/// A registered bookie outside the fragment's ensemble, on another host where possible.
async fn choose_replacement(
    bookies: &Bookies,
    ledger: &Ledger,
    replica: &LostReplica,
    lost: &BTreeSet<String>,
) -> Result<String, BookieError> {
    let ensemble = &ledger.fragments()[replica.fragment].bookies;
    let candidates = bookies.candidates().await?;
    let excluded: BTreeSet<String> = ensemble.iter().chain(lost).cloned().collect();
    let others: Vec<String> = ensemble.iter().filter(|id| !lost.contains(*id)).cloned().collect();
    let occupied = placement::hosts_of(&candidates, &others);
    let choice =
        placement::choose(&candidates, 1, &excluded, &occupied, &mut || bookies.random()).ok_or_else(|| {
            BookieError::NoReplacementBookie { ledger_id: ledger.id().0, bookie: replica.bookie_id.clone() }
        })?;
    if !choice.shared_hosts.is_empty() {
        info!(
            ledger_id = %ledger.id(),
            replacement = %choice.chosen[0],
            shared_hosts = ?choice.shared_hosts,
            "re-replication target shares a host with the ensemble: no bookie on another host is free"
        );
    }
    Ok(choice.chosen[0].clone())
}

/// Copies the replica's entries to `replacement`; returns how many.
async fn copy_replica(
    bookies: &Bookies,
    ledger: &Ledger,
    replica: &LostReplica,
    replacement: &str,
    lost: &BTreeSet<String>,
) -> Result<u64, BookieError> {
    let Some(last) = replica.last else { return Ok(0) };
    let ledger_id = ledger.id();
    // Checked when read: E bookies in every fragment, E >= Qw >= 1.
    let ensemble = &ledger.fragments()[replica.fragment].bookies;
    let ensemble_size = ensemble.len();
    let write_quorum = ledger.write_quorum();
    let target = bookies.get(replacement).await?;
    let master_key = ledger.master_key().clone();
    let options = *bookies.options();
    let copied = AtomicU64::new(0);
    futures::stream::iter(entries_at_index(replica.first, last, ensemble_size, write_quorum, replica.index))
        .map(Ok::<EntryId, BookieError>)
        .try_for_each_concurrent(COPY_PARALLELISM, |entry_id| {
            let sources: Vec<&String> = write_set(entry_id, ensemble_size, write_quorum)
                .map(|i| &ensemble[i])
                .filter(|id| !lost.contains(*id))
                .collect();
            let (target, master_key, copied) = (&target, master_key.clone(), &copied);
            async move {
                let payload = reader::read_entry(bookies, ledger_id, entry_id, &sources).await.map_err(|error| {
                    warn!(%ledger_id, %entry_id, %error, "no surviving bookie of the write set returned the entry");
                    BookieError::ReplicationIncomplete {
                        ledger_id: ledger_id.0,
                        reason: format!("entry {entry_id}: no surviving copy readable (last error: {error})"),
                    }
                })?;
                let add = AddRequest {
                    ledger_id: ledger_id.0,
                    entry_id: entry_id.0,
                    master_key,
                    // Every entry up to the fragment's end is confirmed (module doc).
                    last_add_confirmed: last.0 as i64,
                    payload,
                    recovery: true,
                };
                let answer = tokio::time::timeout(options.add_timeout, async { target.add(add).await.await })
                    .await
                    .map_err(|_| BookieError::Timeout {
                        bookie: replacement.to_owned(),
                        what: format!("re-replication add of entry {ledger_id}:{entry_id}"),
                    })?;
                answer.unwrap_or(Err(BookieError::Stopped { what: "bookie connection (answer lost)" }))?;
                copied.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .await?;
    Ok(copied.load(Ordering::Relaxed))
}

/// Names `replacement` in place of the lost bookie, by compare-and-set; re-reads after a lost
/// one. False if the replica is no longer missing as copied (someone else restored it, or the
/// ledger is gone): the copy is left unused.
async fn swap_in(
    bookies: &Bookies,
    ledger_id: LedgerId,
    replica: &LostReplica,
    replacement: &str,
    lost: &BTreeSet<String>,
) -> Result<bool, BookieError> {
    loop {
        let Some((mut ledger, version)) = metadata::read(bookies.meta().as_ref(), ledger_id).await? else {
            return Ok(false);
        };
        let still_missing = lost_replicas(&ledger, lost).contains(replica)
            && !ledger.fragments()[replica.fragment].bookies.iter().any(|id| id == replacement);
        if !still_missing {
            info!(%ledger_id, lost = %replica.bookie_id, "replica changed while copying: left for the next scan");
            return Ok(false);
        }
        ledger.replace_bookie(replica.fragment, replica.index, replacement.to_owned());
        match metadata::write(bookies.meta().as_ref(), &ledger, Expected::Version(version)).await {
            Ok(_) => return Ok(true),
            Err(BookieError::Meta(MetaError::BadVersion { .. })) => continue,
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use magnetar_proto::records::{Fragment, LedgerMetadata, LedgerState};

    use super::*;

    fn ledger(state: LedgerState, last_entry_id: i64, fragments: &[(u64, &[&str])]) -> Ledger {
        let record = LedgerMetadata {
            ledger_id: 1,
            state: state as i32,
            ensemble_size: 3,
            write_quorum: 2,
            ack_quorum: 2,
            fragments: fragments
                .iter()
                .map(|(first_entry_id, bookies)| Fragment {
                    first_entry_id: *first_entry_id,
                    bookies: bookies.iter().map(|b| (*b).to_owned()).collect(),
                })
                .collect(),
            last_entry_id,
            length: 0,
            master_key: vec![0; 16],
            created_at_ms: 0,
        };
        Ledger::from_record(LedgerId(1), record).expect("a valid ledger")
    }

    fn lost(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    fn summary(replicas: &[LostReplica]) -> Vec<(usize, u64, Option<u64>, usize)> {
        replicas.iter().map(|r| (r.fragment, r.first.0, r.last.map(|last| last.0), r.index)).collect()
    }

    #[test]
    fn a_closed_ledger_restores_every_fragment_up_to_its_last_entry() {
        let closed = ledger(LedgerState::Closed, 24, &[(0, &["a", "b", "c"]), (10, &["a", "d", "c"])]);
        assert_eq!(summary(&lost_replicas(&closed, &lost(&["a"]))), vec![(0, 0, Some(9), 0), (1, 10, Some(24), 0)]);
        assert_eq!(summary(&lost_replicas(&closed, &lost(&["d"]))), vec![(1, 10, Some(24), 1)]);
        assert!(lost_replicas(&closed, &lost(&["e"])).is_empty());
    }

    #[test]
    fn an_open_ledgers_last_fragment_is_left_to_its_writer() {
        let open = ledger(LedgerState::Open, -1, &[(0, &["a", "b", "c"]), (10, &["a", "d", "c"])]);
        assert_eq!(summary(&lost_replicas(&open, &lost(&["a"]))), vec![(0, 0, Some(9), 0)]);
        assert!(lost_replicas(&open, &lost(&["d"])).is_empty());
        let recovering = ledger(LedgerState::InRecovery, -1, &[(0, &["a", "b", "c"])]);
        assert!(lost_replicas(&recovering, &lost(&["a"])).is_empty());
    }

    #[test]
    fn empty_fragments_change_only_the_metadata() {
        let empty = ledger(LedgerState::Closed, -1, &[(0, &["a", "b", "c"])]);
        assert_eq!(summary(&lost_replicas(&empty, &lost(&["b"]))), vec![(0, 0, None, 1)]);
        // Closed before its last fragment got an entry.
        let tail = ledger(LedgerState::Closed, 9, &[(0, &["a", "b", "c"]), (10, &["d", "b", "c"])]);
        assert_eq!(summary(&lost_replicas(&tail, &lost(&["b"]))), vec![(0, 0, Some(9), 1), (1, 10, None, 1)]);
    }

    #[test]
    fn only_entries_whose_write_set_holds_the_index_are_copied() {
        // E=3, Qw=2: entry e is on (e mod 3) and (e+1 mod 3); index 0 holds e = 0, 2, 3, 5, ...
        let at_zero: Vec<u64> = entries_at_index(EntryId(0), EntryId(8), 3, 2, 0).map(|e| e.0).collect();
        assert_eq!(at_zero, vec![0, 2, 3, 5, 6, 8]);
        // E = Qw: every entry.
        let every: Vec<u64> = entries_at_index(EntryId(4), EntryId(7), 3, 3, 1).map(|e| e.0).collect();
        assert_eq!(every, vec![4, 5, 6, 7]);
    }
}
