//! Auto-recovery: when a bookie has been gone longer than a grace period, copy what it held to
//! other bookies until every ledger has its full write quorum again (BookKeeper's auditor and
//! replication worker in one).
//!
//! **Election.** Every worker (inside each `magnetar bookie` by default, or alone as
//! `magnetar autorecovery`) competes for the lock key [`AUTORECOVERY_LEADER_PATH`] with
//! [`magnetar_meta::lock`] under a session of its own; the holder's id is the key's value. One
//! leader works; the others wait on the key and one takes over when the leader's session ends
//! (it stopped, died, or lost contact). A leader that sees its key deleted or rewritten steps
//! down and competes again.
//!
//! **Audit.** The leader watches the registrations under [`BOOKIES_PATH`](crate::BOOKIES_PATH)
//! and scans the ledger records under [`LEDGERS_PATH`](crate::LEDGERS_PATH): on start, on
//! every registration change, every `audit_interval`, and when a missing bookie's grace period
//! ends. A bookie that ledgers reference but that is not registered is *missing* from the
//! first scan that sees it so; once missing for `lost_bookie_recovery_delay` (BookKeeper's
//! `lostBookieRecoveryDelay`) it is *lost*, and every ledger naming it is re-replicated
//! ([`crate::client::replication`]: which fragments and entries, copy, then compare-and-set).
//! A bookie that registers again before its grace period ends is not missing any more. A new
//! leader starts its grace periods afresh.
//!
//! Invariants: only copies that are complete are named in metadata (replication's
//! compare-and-set); two leaders at once (a stale one not yet stepped down) cannot corrupt a
//! ledger, since each replacement is checked against the current record before it is written.
//! The last fragment of an OPEN ledger is never touched (its writer owns it); such a ledger is
//! re-replicated once its writer changed the ensemble or the ledger is closed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use magnetar_meta::{lock, MetadataStore, SessionId, WatchEvent};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::client::replication;
use crate::client::{metadata, Bookies};
use crate::config::AutoRecoveryConfig;
use crate::error::BookieError;
use crate::metrics::AutoRecoveryMetrics;
use crate::AUTORECOVERY_LEADER_PATH;

/// Pause after a failed session or lock call before trying again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// When each referenced, unregistered bookie went missing. Pure bookkeeping over a clock the
/// caller passes in.
#[derive(Debug, Default)]
pub struct MissingBookies {
    since: BTreeMap<String, Instant>,
}

impl MissingBookies {
    /// Takes one scan's view: bookies that ledgers reference and that are not registered are
    /// missing from `now` on (or since they went missing earlier); the others are forgotten.
    pub fn observe(&mut self, registered: &BTreeSet<String>, referenced: &BTreeSet<String>, now: Instant) {
        self.since.retain(|bookie_id, _| referenced.contains(bookie_id) && !registered.contains(bookie_id));
        for bookie_id in referenced.difference(registered) {
            self.since.entry(bookie_id.clone()).or_insert(now);
        }
    }

    /// The bookies missing for at least `delay` at `now`.
    pub fn lost(&self, now: Instant, delay: Duration) -> BTreeSet<String> {
        self.since.iter().filter(|(_, since)| now.duration_since(**since) >= delay).map(|(id, _)| id.clone()).collect()
    }

    /// When the next missing bookie becomes lost, if one is still within its grace period.
    pub fn next_lost_at(&self, now: Instant, delay: Duration) -> Option<Instant> {
        self.since.values().map(|since| *since + delay).filter(|at| *at > now).min()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

/// The auto-recovery worker of one process.
pub struct AutoRecovery {
    bookies: Bookies,
    /// Written into the lock key: who leads (a bookie id, or the standalone worker's id).
    holder: String,
    config: AutoRecoveryConfig,
    session_ttl: Duration,
    counters: AutoRecoveryMetrics,
}

/// Why a leader stopped leading.
enum Leadership {
    Cancelled,
    Lost,
}

impl AutoRecovery {
    /// A worker that reaches bookies over gRPC at their registered addresses.
    pub fn new(
        meta: Arc<dyn MetadataStore>,
        holder: String,
        config: AutoRecoveryConfig,
        session_ttl: Duration,
    ) -> Self {
        Self::with_bookies(Bookies::new(meta), holder, config, session_ttl)
    }

    /// A worker over an existing pool (tests, other connectors).
    pub fn with_bookies(bookies: Bookies, holder: String, config: AutoRecoveryConfig, session_ttl: Duration) -> Self {
        AutoRecovery { bookies, holder, config, session_ttl, counters: AutoRecoveryMetrics::default() }
    }

    /// The same worker, counting into `metrics` (registered where the bookie's are).
    pub fn with_metrics(mut self, metrics: AutoRecoveryMetrics) -> Self {
        self.counters = metrics;
        self
    }

    /// The worker's running totals (also in the bookie's /metrics).
    pub fn counters(&self) -> AutoRecoveryMetrics {
        self.counters.clone()
    }

    /// Competes for leadership and, while leader, audits and re-replicates, until `cancel`.
    /// Errors of the metadata store are logged and retried; this returns only when cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let meta = self.bookies.meta().clone();
        info!(holder = %self.holder, delay = ?self.config.lost_bookie_recovery_delay, "auto-recovery worker started");
        while !cancel.is_cancelled() {
            let session = match meta.create_session(self.session_ttl).await {
                Ok(session) => session,
                Err(error) => {
                    warn!(%error, "auto-recovery: cannot start a metadata session; retrying");
                    pause(&cancel).await;
                    continue;
                }
            };
            let result = self.serve_session(session, &cancel).await;
            if let Err(error) = meta.close_session(session).await {
                debug!(%error, "auto-recovery: closing the session (it expires anyway)");
            }
            match result {
                Ok(()) => break,
                Err(error) => {
                    warn!(%error, "auto-recovery: metadata failure; competing for leadership again");
                    pause(&cancel).await;
                }
            }
        }
        self.bookies.close().await;
        info!(holder = %self.holder, "auto-recovery worker stopped");
    }

    /// Leads whenever it holds the lock under `session`; Ok once cancelled.
    async fn serve_session(&self, session: SessionId, cancel: &CancellationToken) -> Result<(), BookieError> {
        let meta = self.bookies.meta().clone();
        loop {
            let guard = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                guard = lock::acquire(meta.as_ref(), session, AUTORECOVERY_LEADER_PATH, self.holder.clone().into_bytes()) => guard?,
            };
            info!(holder = %self.holder, "auto-recovery: this worker leads");
            match self.lead(&guard, cancel).await? {
                Leadership::Cancelled => {
                    if let Err(error) = guard.release(meta.as_ref()).await {
                        debug!(%error, "auto-recovery: releasing the lock (the session's end frees it)");
                    }
                    return Ok(());
                }
                Leadership::Lost => {
                    warn!(holder = %self.holder, "auto-recovery: leadership lost; waiting to lead again")
                }
            }
        }
    }

    /// The leader's loop: audit, then wait for a registration change, the next grace period
    /// end or the audit interval.
    async fn lead(&self, guard: &lock::LockGuard, cancel: &CancellationToken) -> Result<Leadership, BookieError> {
        let meta = self.bookies.meta().clone();
        let mut lock_watch = meta.watch(AUTORECOVERY_LEADER_PATH).await?;
        // Still ours after the watch started (a change before it would be missed otherwise).
        if meta.get(AUTORECOVERY_LEADER_PATH).await?.map(|found| found.version) != Some(guard.version()) {
            return Ok(Leadership::Lost);
        }
        let bookies_prefix = format!("{}/", crate::BOOKIES_PATH);
        let mut bookie_watch = meta.watch(&bookies_prefix).await?;
        let mut missing = MissingBookies::default();
        loop {
            let next = match self.audit(&mut missing).await {
                Ok(AuditOutcome { unfinished }) => {
                    let now = Instant::now();
                    let mut wait = self.config.audit_interval;
                    if unfinished {
                        wait = wait.min(RETRY_PAUSE * 5);
                    }
                    if let Some(at) = missing.next_lost_at(now, self.config.lost_bookie_recovery_delay) {
                        wait = wait.min(at - now);
                    }
                    now + wait
                }
                Err(error) => {
                    warn!(%error, "auto-recovery: audit failed; retrying");
                    Instant::now() + RETRY_PAUSE
                }
            };
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(Leadership::Cancelled),
                    event = lock_watch.recv() => match event {
                        Some(WatchEvent::Put { key, version, .. }) if key == AUTORECOVERY_LEADER_PATH && version != guard.version() => {
                            return Ok(Leadership::Lost);
                        }
                        Some(WatchEvent::Delete { key }) if key == AUTORECOVERY_LEADER_PATH => return Ok(Leadership::Lost),
                        Some(_) => continue,
                        None => {
                            lock_watch = meta.watch(AUTORECOVERY_LEADER_PATH).await?;
                            if meta.get(AUTORECOVERY_LEADER_PATH).await?.map(|found| found.version) != Some(guard.version()) {
                                return Ok(Leadership::Lost);
                            }
                            continue;
                        }
                    },
                    event = bookie_watch.recv() => {
                        if event.is_none() {
                            bookie_watch = meta.watch(&bookies_prefix).await?;
                        }
                        break;
                    }
                    _ = tokio::time::sleep_until(next) => break,
                }
            }
        }
    }

    /// One pass: which bookies are lost, and re-replication of every ledger naming one.
    async fn audit(&self, missing: &mut MissingBookies) -> Result<AuditOutcome, BookieError> {
        let meta = self.bookies.meta().clone();
        let registered: BTreeSet<String> = self.bookies.available().await?.into_iter().collect();
        let mut ledgers = Vec::new();
        let mut referenced = BTreeSet::new();
        for child in meta.list_children(crate::LEDGERS_PATH).await? {
            let Ok(ledger_id) = child.parse::<u64>().map(crate::LedgerId) else {
                warn!(key = %child, "auto-recovery: a key under the ledgers path is no ledger id; skipped");
                continue;
            };
            let ledger = match metadata::read(meta.as_ref(), ledger_id).await {
                Ok(Some((ledger, _))) => ledger,
                Ok(None) => continue,
                Err(BookieError::Corrupt { what, reason }) => {
                    error!(%what, %reason, "auto-recovery: unreadable ledger metadata; skipped");
                    continue;
                }
                Err(error) => return Err(error),
            };
            referenced.extend(ledger.fragments().iter().flat_map(|f| f.bookies.iter().cloned()));
            ledgers.push(ledger);
        }
        let now = Instant::now();
        missing.observe(&registered, &referenced, now);
        let lost = missing.lost(now, self.config.lost_bookie_recovery_delay);
        if lost.is_empty() {
            if !missing.is_empty() {
                debug!(?missing, "auto-recovery: bookies missing, still within the grace period");
            }
            return Ok(AuditOutcome { unfinished: false });
        }
        // Ledgers naming a lost bookie only in an open ledger's last fragment wait for their
        // writer (or a recovery) to leave that fragment.
        let todo: Vec<crate::LedgerId> = ledgers
            .iter()
            .filter(|ledger| !replication::lost_replicas(ledger, &lost).is_empty())
            .map(|ledger| ledger.id())
            .collect();
        if todo.is_empty() {
            debug!(?lost, "auto-recovery: lost bookies are named only by the writers' own fragments");
            return Ok(AuditOutcome { unfinished: false });
        }
        info!(?lost, ledgers = todo.len(), "auto-recovery: re-replicating ledgers that name lost bookies");
        self.counters.passes.inc();
        let mut unfinished = false;
        let (mut fragments, mut entries) = (0, 0);
        for ledger_id in &todo {
            match replication::replicate_ledger(&self.bookies, *ledger_id, &lost).await {
                Ok(stats) => {
                    if stats.fragments > 0 {
                        self.counters.ledgers.inc();
                    }
                    self.counters.fragments.inc_by(stats.fragments);
                    self.counters.entries.inc_by(stats.entries);
                    fragments += stats.fragments;
                    entries += stats.entries;
                }
                Err(error) => {
                    unfinished = true;
                    warn!(%ledger_id, %error, "auto-recovery: ledger not re-replicated yet; retrying later");
                }
            }
        }
        info!(
            ledgers = todo.len(),
            fragments,
            entries,
            total_ledgers = self.counters.ledgers.get(),
            total_fragments = self.counters.fragments.get(),
            total_entries = self.counters.entries.get(),
            unfinished,
            "auto-recovery pass done"
        );
        Ok(AuditOutcome { unfinished })
    }
}

struct AuditOutcome {
    /// Some ledger could not be finished (retry soon).
    unfinished: bool,
}

async fn pause(cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(RETRY_PAUSE) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn a_bookie_is_lost_only_after_the_grace_period() {
        let delay = Duration::from_secs(60);
        let start = Instant::now();
        let mut missing = MissingBookies::default();
        missing.observe(&set(&["a", "b"]), &set(&["a", "b", "c"]), start);
        assert!(missing.lost(start, delay).is_empty());
        assert_eq!(missing.next_lost_at(start, delay), Some(start + delay));
        // Later scans keep the first time it was seen missing.
        missing.observe(&set(&["a", "b"]), &set(&["a", "b", "c"]), start + Duration::from_secs(30));
        assert!(missing.lost(start + Duration::from_secs(59), delay).is_empty());
        assert_eq!(missing.lost(start + delay, delay), set(&["c"]));
        assert_eq!(missing.next_lost_at(start + delay, delay), None);
    }

    #[test]
    fn a_bookie_back_within_the_grace_period_starts_over() {
        let delay = Duration::from_secs(10);
        let start = Instant::now();
        let mut missing = MissingBookies::default();
        missing.observe(&set(&[]), &set(&["a"]), start);
        missing.observe(&set(&["a"]), &set(&["a"]), start + Duration::from_secs(5));
        assert!(missing.is_empty());
        missing.observe(&set(&[]), &set(&["a"]), start + Duration::from_secs(8));
        assert!(missing.lost(start + Duration::from_secs(12), delay).is_empty());
        assert_eq!(missing.lost(start + Duration::from_secs(18), delay), set(&["a"]));
    }

    #[test]
    fn unreferenced_bookies_are_never_missing() {
        let start = Instant::now();
        let mut missing = MissingBookies::default();
        missing.observe(&set(&[]), &set(&["a"]), start);
        // No ledger names it any more (re-replicated or deleted): forgotten.
        missing.observe(&set(&[]), &set(&[]), start + Duration::from_secs(1));
        assert!(missing.is_empty());
    }
}
