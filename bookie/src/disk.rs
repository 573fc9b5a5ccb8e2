//! Disk usage and the read-only switch: a bookie whose disk fills up stops taking adds
//! (answering READ_ONLY, so writers move the ledger to another bookie) before the disk is
//! completely full, and takes them again once space was freed.
//!
//! [`usage`] asks the file system (statvfs) how full a directory's disk is. [`DiskMonitor`]
//! is one tokio task that checks every bookie directory each `disk_check_interval` (the
//! statvfs calls run on a blocking thread: a dying disk can make them hang) and flips a shared
//! `Arc<AtomicBool>` with hysteresis: read-only once any directory is fuller than
//! `disk_usage_threshold`, writable again only when every one is below `disk_usage_lwm`, so
//! that a disk hovering at the threshold does not flap. A directory whose usage cannot be read
//! counts as full: a bookie that cannot see its disk should not promise durability on it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::BookieConfig;
use crate::error::BookieError;

/// Fraction (0..=1) of the disk holding `dir` that is used, as `df` counts it: used blocks
/// over the blocks an unprivileged writer could use (root's reserve excluded). Blocking.
pub fn usage(dir: &Path) -> Result<f64, BookieError> {
    let stats = nix::sys::statvfs::statvfs(dir)
        .map_err(|errno| BookieError::Io { path: dir.display().to_string(), source: std::io::Error::from(errno) })?;
    #[allow(clippy::unnecessary_cast)] // fsblkcnt_t is u32 on some targets.
    let (total, free, available) = (stats.blocks() as u64, stats.blocks_free() as u64, stats.blocks_available() as u64);
    Ok(used_fraction(total, free, available))
}

/// Bytes of the disk holding `dir`: its size and what an unprivileged writer can still use
/// (BookKeeper's `totalSpace` and `freeSpace`). Blocking.
pub fn space(dir: &Path) -> Result<(u64, u64), BookieError> {
    let stats = nix::sys::statvfs::statvfs(dir)
        .map_err(|errno| BookieError::Io { path: dir.display().to_string(), source: std::io::Error::from(errno) })?;
    #[allow(clippy::unnecessary_cast)] // fsblkcnt_t is u32 on some targets.
    let (blocks, available, fragment) =
        (stats.blocks() as u64, stats.blocks_available() as u64, stats.fragment_size() as u64);
    Ok((blocks.saturating_mul(fragment), available.saturating_mul(fragment)))
}

/// `used / (used + available)`; an empty file system (no blocks) counts as full.
fn used_fraction(total: u64, free: u64, available: u64) -> f64 {
    let used = total.saturating_sub(free);
    let usable = used + available;
    if usable == 0 {
        return 1.0;
    }
    used as f64 / usable as f64
}

/// One directory's usage at one check: a fraction, or why it could not be read.
pub type DirUsage = (PathBuf, Result<f64, String>);

/// Whether the bookie should be read-only after a check, given whether it is now.
fn next_read_only(read_only: bool, usages: &[DirUsage], threshold: f64, low_water_mark: f64) -> bool {
    let over = |usage: &Result<f64, String>| usage.as_ref().map_or(true, |fraction| *fraction > threshold);
    let below = |usage: &Result<f64, String>| usage.as_ref().is_ok_and(|fraction| *fraction < low_water_mark);
    if read_only {
        !usages.iter().all(|(_, usage)| below(usage))
    } else {
        usages.iter().any(|(_, usage)| over(usage))
    }
}

/// Watches the bookie's disks and keeps the read-only flag.
pub struct DiskMonitor {
    /// The directories to watch, each once.
    dirs: Vec<PathBuf>,
    threshold: f64,
    low_water_mark: f64,
    interval: Duration,
    /// Set while the bookie must refuse adds; shared with whoever answers them.
    read_only: Arc<AtomicBool>,
}

impl DiskMonitor {
    /// A monitor of the data and journal dirs of `config`, keeping `read_only`.
    pub fn new(config: &BookieConfig, read_only: Arc<AtomicBool>) -> DiskMonitor {
        DiskMonitor::with_dirs(config, vec![config.data_dir.clone(), config.journal_dir()], read_only)
    }

    /// A monitor of `dirs` (for storage with more directories than the data and journal
    /// dirs), with `config`'s thresholds and interval.
    pub fn with_dirs(config: &BookieConfig, mut dirs: Vec<PathBuf>, read_only: Arc<AtomicBool>) -> DiskMonitor {
        dirs.sort();
        dirs.dedup();
        DiskMonitor {
            dirs,
            threshold: config.disk_usage_threshold,
            low_water_mark: config.disk_usage_lwm,
            interval: config.disk_check_interval,
            read_only,
        }
    }

    /// The flag this monitor keeps.
    pub fn read_only(&self) -> Arc<AtomicBool> {
        self.read_only.clone()
    }

    /// Checks every directory once and updates the flag; returns the new value.
    pub async fn check(&self) -> bool {
        let dirs = self.dirs.clone();
        let usages = tokio::task::spawn_blocking(move || {
            dirs.into_iter()
                .map(|dir| {
                    let usage = usage(&dir).map_err(|error| error.to_string());
                    (dir, usage)
                })
                .collect::<Vec<DirUsage>>()
        })
        .await
        .unwrap_or_else(|_| {
            self.dirs.iter().map(|dir| (dir.clone(), Err("disk check thread panicked".to_owned()))).collect()
        });
        self.apply(&usages)
    }

    /// Updates the flag from one round of usages, logging a flip.
    fn apply(&self, usages: &[DirUsage]) -> bool {
        let was = self.read_only.load(Ordering::Acquire);
        let now = next_read_only(was, usages, self.threshold, self.low_water_mark);
        for (dir, usage) in usages {
            if let Err(reason) = usage {
                error!(dir = %dir.display(), %reason, "cannot read disk usage; treating the disk as full");
            }
        }
        if now != was {
            self.read_only.store(now, Ordering::Release);
            let worst = usages
                .iter()
                .filter_map(|(dir, usage)| usage.as_ref().ok().map(|fraction| (dir, *fraction)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let (dir, fraction) = match worst {
                Some((dir, fraction)) => (dir.display().to_string(), format!("{:.1}%", fraction * 100.0)),
                None => ("-".to_owned(), "unknown".to_owned()),
            };
            if now {
                warn!(
                    %dir,
                    usage = %fraction,
                    threshold = %format!("{:.1}%", self.threshold * 100.0),
                    "disk over the usage threshold: bookie is read-only, adds are refused"
                );
            } else {
                info!(
                    %dir,
                    usage = %fraction,
                    low_water_mark = %format!("{:.1}%", self.low_water_mark * 100.0),
                    "every disk below the low-water mark: bookie is writable again"
                );
            }
        }
        now
    }

    /// Checks at once, then every interval, until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.check() => {}
            }
        }
    }

    /// Runs the monitor as its own task.
    pub fn spawn(self, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usages(fractions: &[f64]) -> Vec<DirUsage> {
        fractions.iter().enumerate().map(|(i, f)| (PathBuf::from(format!("/disk{i}")), Ok(*f))).collect()
    }

    #[test]
    fn used_fraction_counts_like_df() {
        // 100 blocks, 30 free of which 20 available to users: 70 used of 90 usable.
        assert!((used_fraction(100, 30, 20) - 70.0 / 90.0).abs() < 1e-9);
        assert_eq!(used_fraction(100, 100, 100), 0.0);
        assert_eq!(used_fraction(0, 0, 0), 1.0);
    }

    #[test]
    fn disk_over_threshold_turns_read_only() {
        assert!(next_read_only(false, &usages(&[0.5, 0.96]), 0.95, 0.90));
        assert!(!next_read_only(false, &usages(&[0.5, 0.95]), 0.95, 0.90));
    }

    #[test]
    fn read_only_bookie_stays_read_only_between_the_marks() {
        assert!(next_read_only(true, &usages(&[0.5, 0.92]), 0.95, 0.90));
        assert!(!next_read_only(true, &usages(&[0.5, 0.89]), 0.95, 0.90));
    }

    #[test]
    fn unreadable_disk_counts_as_full() {
        let mut round = usages(&[0.1]);
        round.push((PathBuf::from("/gone"), Err("EIO".to_owned())));
        assert!(next_read_only(false, &round, 0.95, 0.90));
        assert!(next_read_only(true, &round, 0.95, 0.90));
    }

    #[test]
    fn usage_of_a_real_directory_is_a_fraction() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fraction = usage(dir.path()).expect("statvfs");
        assert!((0.0..=1.0).contains(&fraction), "{fraction}");
        assert!(usage(&dir.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn monitor_flips_the_flag_with_thresholds_around_the_real_usage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fraction = usage(dir.path()).expect("statvfs");
        let config = |threshold: f64, lwm: f64| BookieConfig {
            disk_usage_threshold: threshold,
            disk_usage_lwm: lwm,
            ..BookieConfig::new("bookie-1", dir.path())
        };
        let flag = Arc::new(AtomicBool::new(false));
        let dirs = vec![dir.path().to_path_buf()];
        if fraction > 0.0 {
            // Threshold below the current usage: read-only.
            let low = DiskMonitor::with_dirs(&config(fraction / 2.0, fraction / 4.0), dirs.clone(), flag.clone());
            assert!(low.check().await);
            assert!(flag.load(Ordering::Acquire));
        } else {
            flag.store(true, Ordering::Release);
        }
        // Both marks above it: writable again.
        let high = DiskMonitor::with_dirs(&config(1.0, 1.0), dirs, flag.clone());
        assert!(!high.check().await);
        assert!(!flag.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn monitor_task_stops_on_cancel() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = BookieConfig {
            disk_check_interval: Duration::from_millis(10),
            ..BookieConfig::new("bookie-1", dir.path())
        };
        let monitor = DiskMonitor::with_dirs(&config, vec![dir.path().to_path_buf()], Arc::new(AtomicBool::new(false)));
        let cancel = CancellationToken::new();
        let task = monitor.spawn(cancel.clone());
        tokio::task::yield_now().await;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").expect("no panic");
    }
}
