//! Reading entries of a ledger from its bookies, and learning how far it is confirmed.
//!
//! Readers only read up to a last-add-confirmed (the writer's, a closed ledger's last entry,
//! or one learned from the bookies): an entry at or below it reached its ack quorum, so at
//! least one bookie of its write set holds it; each entry is asked of the bookies of its write
//! set in turn until one returns it. When every bookie of a fragment holds every entry of it
//! (E = Qw), consecutive entries come from one bookie in one range read.
//!
//! A tailing reader waits for the ledger to grow with [`wait_last_add_confirmed`]: a long
//! poll on every bookie of the last fragment, answered by the first that learns of a newer
//! last-add-confirmed.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::connection::Bookies;
use super::metadata::{write_set, Ledger};
use crate::error::BookieError;
use crate::ids::{EntryId, LedgerId};

/// Reads consecutive entries `first..=last` (fewer if bounded by `max_entries`, `max_bytes`
/// or the end of `first`'s fragment), each from a bookie of its write set.
pub async fn read_entries(
    bookies: &Bookies,
    ledger: &Ledger,
    first: EntryId,
    last: EntryId,
    max_entries: u32,
    max_bytes: u64,
) -> Result<Vec<(EntryId, Bytes)>, BookieError> {
    let ledger_id = ledger.id();
    if last < first {
        return Err(BookieError::NoSuchEntry { ledger_id: ledger_id.0, entry_id: first.0 });
    }
    // Stay within the fragment that holds `first`.
    let index = ledger.fragment_index(first);
    let ensemble = &ledger.fragments()[index].bookies;
    let fragment_end = ledger.fragment_end(index).unwrap_or(EntryId(u64::MAX));
    let max_entries = max_entries.max(1);
    let last = last.min(fragment_end).min(EntryId(first.0.saturating_add(u64::from(max_entries) - 1)));
    // Checked when read: E bookies in the fragment, E >= Qw >= 1.
    let write_quorum = ledger.write_quorum();
    if write_quorum == ensemble.len() {
        return read_range(bookies, ledger_id, ensemble, first, last, max_entries, max_bytes).await;
    }
    // Striped: no bookie holds every entry; read them one by one, concurrently, keeping the
    // consecutive run from `first`.
    let mut reads = FuturesUnordered::new();
    for entry_id in first.through(last) {
        let bookie_ids: Vec<&String> =
            write_set(entry_id, ensemble.len(), write_quorum).map(|i| &ensemble[i]).collect();
        reads.push(async move { (entry_id, read_entry(bookies, ledger_id, entry_id, &bookie_ids).await) });
    }
    let mut found = std::collections::BTreeMap::new();
    while let Some((entry_id, result)) = reads.next().await {
        found.insert(entry_id, result);
    }
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for (entry_id, result) in found {
        match result {
            Ok(payload) => {
                if !out.is_empty() && bytes + payload.len() as u64 > max_bytes {
                    break;
                }
                bytes += payload.len() as u64;
                out.push((entry_id, payload));
            }
            Err(error) if out.is_empty() => return Err(error),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// One entry from the first of `bookie_ids` that returns it (each within the read timeout);
/// the last error if none does.
pub(super) async fn read_entry(
    bookies: &Bookies,
    ledger_id: LedgerId,
    entry_id: EntryId,
    bookie_ids: &[&String],
) -> Result<Bytes, BookieError> {
    let timeout = bookies.options().read_timeout;
    let mut last_error = None;
    for bookie_id in bookie_ids {
        let attempt = async {
            let bookie = bookies.get(bookie_id).await?;
            bookie.read_entry(ledger_id, entry_id, None).await
        };
        let result = tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| {
            Err(BookieError::Timeout { bookie: (*bookie_id).clone(), what: format!("read of entry {entry_id}") })
        });
        match result {
            Ok((payload, _)) => return Ok(payload),
            Err(error) => {
                tracing::debug!(bookie = %bookie_id, %ledger_id, %entry_id, %error, "read failed, trying next bookie");
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or(BookieError::NoSuchEntry { ledger_id: ledger_id.0, entry_id: entry_id.0 }))
}

/// A range from one bookie of a fragment where every bookie holds every entry, trying each in
/// turn; keeps the consecutive run starting at `first`.
async fn read_range(
    bookies: &Bookies,
    ledger_id: LedgerId,
    ensemble: &[String],
    first: EntryId,
    last: EntryId,
    max_entries: u32,
    max_bytes: u64,
) -> Result<Vec<(EntryId, Bytes)>, BookieError> {
    let timeout = bookies.options().read_timeout;
    let mut last_error = None;
    // Start at the bookie `first` is written to first, so reads spread over the ensemble.
    let start = (first.0 % ensemble.len() as u64) as usize;
    for offset in 0..ensemble.len() {
        let bookie_id = &ensemble[(start + offset) % ensemble.len()];
        let attempt = async {
            let bookie = bookies.get(bookie_id).await?;
            bookie.read_range(ledger_id, first, last, max_entries, max_bytes).await
        };
        let result = tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| {
            Err(BookieError::Timeout { bookie: bookie_id.clone(), what: format!("read of entries {first}..={last}") })
        });
        match result {
            Ok(entries) => {
                // A bookie may miss entries it never acknowledged: keep the run from `first`.
                let run: Vec<(EntryId, Bytes)> = entries
                    .into_iter()
                    .zip(first.through(last))
                    .take_while(|((entry_id, _), expected)| entry_id == expected)
                    .map(|(entry, _)| entry)
                    .collect();
                if !run.is_empty() {
                    return Ok(run);
                }
                last_error = Some(BookieError::NoSuchEntry { ledger_id: ledger_id.0, entry_id: first.0 });
            }
            Err(error) => {
                tracing::debug!(bookie = %bookie_id, %ledger_id, %first, %error, "read failed, trying next bookie");
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or(BookieError::NoSuchEntry { ledger_id: ledger_id.0, entry_id: first.0 }))
}

/// The highest last-add-confirmed any bookie of the last fragment reports (-1: none). Every
/// entry up to it is acknowledged and readable. Needs one answer; fails if none answers.
pub async fn read_last_add_confirmed(bookies: &Bookies, ledger: &Ledger) -> Result<i64, BookieError> {
    poll_last_add_confirmed(bookies, ledger, -1, Duration::ZERO).await
}

/// Waits up to `long_poll` for the ledger's last-add-confirmed to pass `previous_lac` (a
/// tailing reader); answers as soon as one bookie of the last fragment reports a newer one,
/// otherwise the highest reported once all answered.
pub async fn wait_last_add_confirmed(
    bookies: &Bookies,
    ledger: &Ledger,
    previous_lac: i64,
    long_poll: Duration,
) -> Result<i64, BookieError> {
    poll_last_add_confirmed(bookies, ledger, previous_lac, long_poll).await
}

async fn poll_last_add_confirmed(
    bookies: &Bookies,
    ledger: &Ledger,
    previous_lac: i64,
    long_poll: Duration,
) -> Result<i64, BookieError> {
    let ledger_id = ledger.id();
    // Entries below the last fragment are acknowledged: its start bounds the answer below.
    let fragment = ledger.last_fragment();
    let floor = EntryId::last_to_wire(fragment.first.previous());
    let timeout = bookies.options().read_timeout + long_poll;
    let mut polls = FuturesUnordered::new();
    for bookie_id in &fragment.bookies {
        polls.push(async move {
            let poll = async {
                let bookie = bookies.get(bookie_id).await?;
                bookie.read_lac(ledger_id, previous_lac, long_poll).await
            };
            tokio::time::timeout(timeout, poll).await.unwrap_or_else(|_| {
                Err(BookieError::Timeout { bookie: bookie_id.clone(), what: "last-add-confirmed read".to_owned() })
            })
        });
    }
    let mut highest: Option<i64> = None;
    let mut last_error = None;
    while let Some(answer) = polls.next().await {
        match answer {
            Ok(end) => {
                let lac = end.last_add_confirmed.max(floor);
                highest = Some(highest.map_or(lac, |seen| seen.max(lac)));
                if !long_poll.is_zero() && lac > previous_lac {
                    break;
                }
            }
            // A bookie that never saw the ledger knows nothing of its end.
            Err(BookieError::NoSuchLedger { .. }) => highest = Some(highest.unwrap_or(floor).max(floor)),
            Err(error) => last_error = Some(error),
        }
    }
    match (highest, last_error) {
        (Some(lac), _) => Ok(lac),
        (None, Some(error)) => Err(error),
        (None, None) => Ok(floor),
    }
}
