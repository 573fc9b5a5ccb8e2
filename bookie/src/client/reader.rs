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

use super::connection::{Bookies, ClientOptions};
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
        // Start at the bookie `first` is written to first, so reads spread over the ensemble.
        let preferred = (first.0 % ensemble.len() as u64) as usize;
        return read_range(bookies, ledger_id, ensemble, preferred, (first, last), max_entries, max_bytes).await;
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

/// One entry from the first of `bookie_ids` that returns it (each within the read timeout,
/// the next asked at once after a failure or speculatively after a slow answer); the last
/// error if none does.
pub(super) async fn read_entry(
    bookies: &Bookies,
    ledger_id: LedgerId,
    entry_id: EntryId,
    bookie_ids: &[&String],
) -> Result<Bytes, BookieError> {
    let what = format!("read of entry {entry_id}");
    let bookie_of = |index: usize| bookie_ids[index].as_str();
    first_answer(bookies.options(), bookie_ids.len(), &what, bookie_of, |index| async move {
        let bookie_id = bookie_ids[index];
        let bookie = bookies.get(bookie_id).await?;
        bookie.read_entry(ledger_id, entry_id, None).await.map(|(payload, _)| payload)
    })
    .await
    .map_err(|error| error.unwrap_or(BookieError::NoSuchEntry { ledger_id: ledger_id.0, entry_id: entry_id.0 }))
}

/// A range from one bookie of a fragment where every bookie holds every entry, asking the one
/// at `preferred` (modulo the ensemble) first and the others in turn; keeps the consecutive run
/// starting at `first`.
async fn read_range(
    bookies: &Bookies,
    ledger_id: LedgerId,
    ensemble: &[String],
    preferred: usize,
    range: (EntryId, EntryId),
    max_entries: u32,
    max_bytes: u64,
) -> Result<Vec<(EntryId, Bytes)>, BookieError> {
    let (first, last) = range;
    let what = format!("read of entries {first}..={last}");
    let bookie_of = |offset: usize| ensemble[(preferred + offset) % ensemble.len()].as_str();
    first_answer(bookies.options(), ensemble.len(), &what, bookie_of, |offset| async move {
        let bookie_id = bookie_of(offset);
        let bookie = bookies.get(bookie_id).await?;
        let entries = bookie.read_range(ledger_id, first, last, max_entries, max_bytes).await?;
        // A bookie may miss entries it never acknowledged: keep the run from `first`.
        let run: Vec<(EntryId, Bytes)> = entries
            .into_iter()
            .zip(first.through(last))
            .take_while(|((entry_id, _), expected)| entry_id == expected)
            .map(|(entry, _)| entry)
            .collect();
        if run.is_empty() {
            return Err(BookieError::NoSuchEntry { ledger_id: ledger_id.0, entry_id: first.0 });
        }
        Ok(run)
    })
    .await
    .map_err(|error| error.unwrap_or(BookieError::NoSuchEntry { ledger_id: ledger_id.0, entry_id: first.0 }))
}

/// Asks candidates `0..count` (the bookie `bookie_of` names) in turn with `attempt` (each
/// bounded by the read timeout): the
/// next one at once when one fails, and also, speculatively, when the ones asked have not
/// answered within [`ClientOptions::speculative_read_timeout`](super::ClientOptions). The
/// first success wins (the slower attempts are dropped); the last error if every one failed.
async fn first_answer<'a, T, F, Fut>(
    options: &ClientOptions,
    count: usize,
    what: &str,
    bookie_of: impl Fn(usize) -> &'a str,
    attempt: F,
) -> Result<T, Option<BookieError>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, BookieError>>,
{
    let (timeout, speculative) = (options.read_timeout, options.speculative_read_timeout);
    let mut running = FuturesUnordered::new();
    let mut next = 0;
    let mut last_error = None;
    let launch = |index: usize| {
        let (attempt, bookie) = (attempt(index), bookie_of(index));
        async move {
            let result = tokio::time::timeout(timeout, attempt)
                .await
                .unwrap_or_else(|_| Err(BookieError::Timeout { bookie: bookie.to_owned(), what: what.to_owned() }));
            (bookie, result)
        }
    };
    while next < count || !running.is_empty() {
        if running.is_empty() {
            running.push(launch(next));
            next += 1;
        }
        let hedge = next < count && !speculative.is_zero();
        let answered = tokio::select! {
            Some(result) = running.next() => Some(result),
            () = tokio::time::sleep(speculative), if hedge => None,
        };
        let Some((bookie, result)) = answered else {
            tracing::debug!(what, bookie = bookie_of(next), "read slow; asking the next copy as well");
            running.push(launch(next));
            next += 1;
            continue;
        };
        match result {
            Ok(value) => return Ok(value),
            Err(error) => {
                tracing::debug!(what, bookie, %error, "read failed, trying the next copy");
                last_error = Some(error);
            }
        }
    }
    Err(last_error)
}

/// As [`read_entries`], for a larger range: where every bookie of the fragment holds every
/// entry, the range is cut into runs of at most `max_entries` read from different copies at
/// once (a catch-up read is spread over the ensemble instead of queueing on one bookie). Each
/// run is bounded by `max_bytes`; the consecutive entries from `first` are returned.
pub async fn read_entries_spread(
    bookies: &Bookies,
    ledger: &Ledger,
    first: EntryId,
    last: EntryId,
    max_entries: u32,
    max_bytes: u64,
) -> Result<Vec<(EntryId, Bytes)>, BookieError> {
    if last < first {
        return Err(BookieError::NoSuchEntry { ledger_id: ledger.id().0, entry_id: first.0 });
    }
    let index = ledger.fragment_index(first);
    let ensemble = &ledger.fragments()[index].bookies;
    let last = last.min(ledger.fragment_end(index).unwrap_or(EntryId(u64::MAX)));
    let run = u64::from(max_entries.max(1));
    if ledger.write_quorum() != ensemble.len() || last.0 - first.0 < run {
        return read_entries(bookies, ledger, first, last, max_entries, max_bytes).await;
    }
    let runs = (first.0..=last.0).step_by(run as usize).enumerate().map(|(i, start)| {
        let end = EntryId(last.0.min(start + run - 1));
        read_range(bookies, ledger.id(), ensemble, i, (EntryId(start), end), max_entries, max_bytes)
    });
    let mut out: Vec<(EntryId, Bytes)> = Vec::new();
    for result in futures::future::join_all(runs).await {
        match result {
            Ok(entries) => {
                // Keep only what continues the run from `first` (a run cut short by
                // `max_bytes` ends it).
                let continues = match (out.last(), entries.first()) {
                    (None, _) => true,
                    (Some((before, _)), Some((next, _))) => next.0 == before.0 + 1,
                    (Some(_), None) => false,
                };
                if !continues {
                    break;
                }
                out.extend(entries);
            }
            Err(error) if out.is_empty() => return Err(error),
            Err(_) => break,
        }
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options(speculative_ms: u64) -> ClientOptions {
        ClientOptions {
            read_timeout: Duration::from_secs(30),
            speculative_read_timeout: Duration::from_millis(speculative_ms),
            ..ClientOptions::default()
        }
    }

    fn copy(index: usize) -> &'static str {
        ["bookie-0", "bookie-1", "bookie-2"][index]
    }

    /// Copy 0 hangs, copy 1 answers at once when asked.
    async fn hanging_first(index: usize) -> Result<usize, BookieError> {
        if index == 0 {
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        Ok(index)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_copy_is_hedged_by_the_next_after_the_speculative_timeout() {
        let started = tokio::time::Instant::now();
        let answer = first_answer(&options(500), 3, "test read", copy, hanging_first).await;
        assert_eq!(answer.ok(), Some(1), "the second copy answered");
        assert_eq!(started.elapsed(), Duration::from_millis(500), "asked once the first was slow");
    }

    #[tokio::test(start_paused = true)]
    async fn without_speculation_a_slow_copy_is_waited_for() {
        let started = tokio::time::Instant::now();
        let answer = first_answer(&options(0), 3, "test read", copy, hanging_first).await;
        assert_eq!(answer.ok(), Some(0));
        assert_eq!(started.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_copy_moves_on_at_once_and_the_last_error_is_kept() {
        let started = tokio::time::Instant::now();
        let answer = first_answer(&options(500), 3, "test read", copy, |index| async move {
            match index {
                2 => Ok(index),
                _ => Err(BookieError::NoSuchEntry { ledger_id: 1, entry_id: index as u64 }),
            }
        })
        .await;
        assert_eq!(answer.ok(), Some(2));
        assert_eq!(started.elapsed(), Duration::ZERO);
        let failed: Result<usize, _> = first_answer(&options(500), 2, "test read", copy, |index| async move {
            Err(BookieError::NoSuchEntry { ledger_id: 1, entry_id: index as u64 })
        })
        .await;
        assert!(matches!(failed, Err(Some(BookieError::NoSuchEntry { entry_id: 1, .. }))), "{failed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_past_the_read_timeout_counts_as_failed() {
        let options = ClientOptions { read_timeout: Duration::from_secs(1), ..options(0) };
        let answer = first_answer(&options, 2, "test read", copy, hanging_first).await;
        assert_eq!(answer.ok(), Some(1), "the first timed out, the second answered");
        let timed_out: Result<usize, _> =
            first_answer(&options, 1, "test read", copy, |_| std::future::pending()).await;
        assert!(
            matches!(&timed_out, Err(Some(BookieError::Timeout { bookie, .. })) if bookie == "bookie-0"),
            "the error names the bookie: {timed_out:?}"
        );
    }
}
