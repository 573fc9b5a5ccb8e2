//! Managed ledger settings: when the current ledger rolls over, when cursor ledgers switch,
//! and how long consumed data is retained. Names and defaults follow Pulsar's broker.conf
//! (`managedLedgerMaxEntriesPerLedger`, `defaultRetentionTimeInMinutes`, ...) in snake case.
//!
//! [`ManagedLedgerSettings`] is what an operator writes (serde, every field defaulted);
//! [`ManagedLedgerConfig::from_settings`] checks it once and turns it into the units the code
//! uses, with an error naming the bad field.

use std::time::Duration;

use serde::Deserialize;

/// The managed ledger section of the broker's settings, as written in a config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagedLedgerSettings {
    /// Entries after which the current ledger is closed and a new one started.
    pub managed_ledger_max_entries_per_ledger: u64,
    /// Size (MiB of entry payload) after which the current ledger rolls over.
    pub managed_ledger_max_size_per_ledger_mb: u64,
    /// A ledger is not rolled over by entries or size before it is this old (minutes).
    pub managed_ledger_min_ledger_rollover_time_minutes: u64,
    /// A ledger holding entries is rolled over once it is this old (minutes), however small.
    pub managed_ledger_max_ledger_rollover_time_minutes: u64,
    /// State changes a cursor ledger takes before the cursor switches to a new one.
    pub managed_ledger_cursor_max_entries_per_ledger: u64,
    /// Consumed data kept this long (minutes) after its ledger closed; 0 keeps nothing beyond
    /// what cursors need, -1 keeps it forever.
    pub default_retention_time_in_minutes: i64,
    /// Consumed data kept up to this size (MiB, newest first); 0 keeps nothing beyond what
    /// cursors need, -1 keeps any size.
    pub default_retention_size_in_mb: i64,
    /// How often each managed ledger checks rollover by age and trims (seconds).
    pub retention_check_interval_in_seconds: u64,
    /// Most MiB of entries the broker keeps in memory for readers at the tail (the entry
    /// cache); 0 disables it.
    pub managed_ledger_cache_size_mb: u64,
    /// When the cache is full, entries are evicted down to this fraction of its size.
    pub managed_ledger_cache_eviction_watermark: f64,
    /// Cached entries older than this (milliseconds) are evicted.
    pub managed_ledger_cache_eviction_time_threshold_millis: u64,
    /// A bookie read unanswered this long (milliseconds) is also sent to the next copy;
    /// 0: only after a failure (Pulsar's `bookkeeperClientSpeculativeReadTimeoutInMillis`).
    pub bookkeeper_client_speculative_read_timeout_in_millis: u64,
}

impl Default for ManagedLedgerSettings {
    fn default() -> Self {
        ManagedLedgerSettings {
            managed_ledger_max_entries_per_ledger: 50_000,
            managed_ledger_max_size_per_ledger_mb: 2048,
            managed_ledger_min_ledger_rollover_time_minutes: 10,
            managed_ledger_max_ledger_rollover_time_minutes: 240,
            managed_ledger_cursor_max_entries_per_ledger: 50_000,
            default_retention_time_in_minutes: 0,
            default_retention_size_in_mb: 0,
            retention_check_interval_in_seconds: 120,
            managed_ledger_cache_size_mb: DEFAULT_CACHE_SIZE_MB,
            managed_ledger_cache_eviction_watermark: 0.9,
            managed_ledger_cache_eviction_time_threshold_millis: 1000,
            bookkeeper_client_speculative_read_timeout_in_millis: 500,
        }
    }
}

/// How much consumed data to keep, by age and by size. `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub time: Option<Duration>,
    pub size_bytes: Option<u64>,
}

impl Retention {
    /// Keeps nothing beyond what cursors need.
    pub const NONE: Retention = Retention { time: Some(Duration::ZERO), size_bytes: Some(0) };
    /// Keeps everything.
    pub const INFINITE: Retention = Retention { time: None, size_bytes: None };
}

/// Default of `managed_ledger_cache_size_mb` (Pulsar's default is a fifth of the broker's
/// direct memory).
pub const DEFAULT_CACHE_SIZE_MB: u64 = 512;

/// Checked entry cache settings (see [`super::entry_cache`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryCacheConfig {
    /// Most payload bytes cached over the broker; 0 disables the cache.
    pub size_bytes: u64,
    /// Eviction under pressure goes down to this fraction of `size_bytes`.
    pub eviction_watermark: f64,
    /// Entries older than this are dropped.
    pub eviction_time: Duration,
}

impl Default for EntryCacheConfig {
    fn default() -> Self {
        EntryCacheConfig {
            size_bytes: DEFAULT_CACHE_SIZE_MB * 1024 * 1024,
            eviction_watermark: 0.9,
            eviction_time: Duration::from_secs(1),
        }
    }
}

/// Checked managed ledger settings, in the units the code uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ManagedLedgerConfig {
    pub max_entries_per_ledger: u64,
    pub max_size_per_ledger_bytes: u64,
    pub min_ledger_rollover_time: Duration,
    pub max_ledger_rollover_time: Duration,
    pub cursor_max_entries_per_ledger: u64,
    pub retention: Retention,
    pub check_interval: Duration,
    pub cache: EntryCacheConfig,
    pub speculative_read_timeout: Duration,
}

impl Default for ManagedLedgerConfig {
    fn default() -> Self {
        // The defaults are valid by construction; `from_settings` is the one conversion.
        Self::from_settings(&ManagedLedgerSettings::default()).unwrap_or(ManagedLedgerConfig {
            max_entries_per_ledger: 50_000,
            max_size_per_ledger_bytes: 2048 * MIB,
            min_ledger_rollover_time: Duration::from_secs(600),
            max_ledger_rollover_time: Duration::from_secs(240 * 60),
            cursor_max_entries_per_ledger: 50_000,
            retention: Retention::NONE,
            check_interval: Duration::from_secs(120),
            cache: EntryCacheConfig::default(),
            speculative_read_timeout: Duration::from_millis(500),
        })
    }
}

const MIB: u64 = 1024 * 1024;

/// A setting that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {field} = {value}: {reason}")]
pub struct InvalidSetting {
    pub field: &'static str,
    pub value: String,
    pub reason: &'static str,
}

fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> InvalidSetting {
    InvalidSetting { field, value: value.to_string(), reason }
}

fn retention_limit(field: &'static str, value: i64, unit: u64) -> Result<Option<u64>, InvalidSetting> {
    match value {
        -1 => Ok(None),
        v if v < -1 => Err(invalid(field, v, "must be -1 (no limit), 0 or positive")),
        v => (v as u64).checked_mul(unit).map(Some).ok_or_else(|| invalid(field, v, "too large")),
    }
}

impl ManagedLedgerConfig {
    pub fn from_settings(settings: &ManagedLedgerSettings) -> Result<Self, InvalidSetting> {
        let s = settings;
        if s.managed_ledger_max_entries_per_ledger == 0 {
            return Err(invalid("managed_ledger_max_entries_per_ledger", 0, "must be at least 1"));
        }
        if s.managed_ledger_max_size_per_ledger_mb == 0 {
            return Err(invalid("managed_ledger_max_size_per_ledger_mb", 0, "must be at least 1"));
        }
        let max_size_per_ledger_bytes = s.managed_ledger_max_size_per_ledger_mb.checked_mul(MIB).ok_or_else(|| {
            invalid("managed_ledger_max_size_per_ledger_mb", s.managed_ledger_max_size_per_ledger_mb, "too large")
        })?;
        if s.managed_ledger_max_ledger_rollover_time_minutes == 0 {
            return Err(invalid("managed_ledger_max_ledger_rollover_time_minutes", 0, "must be at least 1"));
        }
        if s.managed_ledger_min_ledger_rollover_time_minutes > s.managed_ledger_max_ledger_rollover_time_minutes {
            return Err(invalid(
                "managed_ledger_min_ledger_rollover_time_minutes",
                s.managed_ledger_min_ledger_rollover_time_minutes,
                "must not exceed managed_ledger_max_ledger_rollover_time_minutes",
            ));
        }
        let minutes = |field: &'static str, value: u64| {
            value.checked_mul(60).map(Duration::from_secs).ok_or_else(|| invalid(field, value, "too large"))
        };
        if s.managed_ledger_cursor_max_entries_per_ledger == 0 {
            return Err(invalid("managed_ledger_cursor_max_entries_per_ledger", 0, "must be at least 1"));
        }
        if s.retention_check_interval_in_seconds == 0 {
            return Err(invalid("retention_check_interval_in_seconds", 0, "must be at least 1"));
        }
        let cache_size = s
            .managed_ledger_cache_size_mb
            .checked_mul(MIB)
            .ok_or_else(|| invalid("managed_ledger_cache_size_mb", s.managed_ledger_cache_size_mb, "too large"))?;
        let watermark = s.managed_ledger_cache_eviction_watermark;
        if !(watermark > 0.0 && watermark <= 1.0) {
            return Err(invalid("managed_ledger_cache_eviction_watermark", watermark, "must be above 0 and at most 1"));
        }
        let time = retention_limit("default_retention_time_in_minutes", s.default_retention_time_in_minutes, 60)?;
        let size = retention_limit("default_retention_size_in_mb", s.default_retention_size_in_mb, MIB)?;
        Ok(ManagedLedgerConfig {
            max_entries_per_ledger: s.managed_ledger_max_entries_per_ledger,
            max_size_per_ledger_bytes,
            min_ledger_rollover_time: minutes(
                "managed_ledger_min_ledger_rollover_time_minutes",
                s.managed_ledger_min_ledger_rollover_time_minutes,
            )?,
            max_ledger_rollover_time: minutes(
                "managed_ledger_max_ledger_rollover_time_minutes",
                s.managed_ledger_max_ledger_rollover_time_minutes,
            )?,
            cursor_max_entries_per_ledger: s.managed_ledger_cursor_max_entries_per_ledger,
            retention: Retention { time: time.map(Duration::from_secs), size_bytes: size },
            check_interval: Duration::from_secs(s.retention_check_interval_in_seconds),
            cache: EntryCacheConfig {
                size_bytes: cache_size,
                eviction_watermark: watermark,
                eviction_time: Duration::from_millis(s.managed_ledger_cache_eviction_time_threshold_millis),
            },
            speculative_read_timeout: Duration::from_millis(s.bookkeeper_client_speculative_read_timeout_in_millis),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_pulsar() {
        let config = ManagedLedgerConfig::default();
        assert_eq!(config.max_entries_per_ledger, 50_000);
        assert_eq!(config.min_ledger_rollover_time, Duration::from_secs(600));
        assert_eq!(config.max_ledger_rollover_time, Duration::from_secs(4 * 3600));
        assert_eq!(config.retention, Retention::NONE);
    }

    #[test]
    fn settings_parse_with_defaults_and_minus_one_means_unlimited() {
        let settings: ManagedLedgerSettings =
            toml::from_str("default_retention_time_in_minutes = -1\ndefault_retention_size_in_mb = 10")
                .expect("parse settings");
        let config = ManagedLedgerConfig::from_settings(&settings).expect("valid settings");
        assert_eq!(config.retention, Retention { time: None, size_bytes: Some(10 * MIB) });
        assert_eq!(config.max_entries_per_ledger, 50_000);
    }

    #[test]
    fn bad_values_name_the_field() {
        let settings = ManagedLedgerSettings { default_retention_size_in_mb: -2, ..Default::default() };
        let error = ManagedLedgerConfig::from_settings(&settings).expect_err("-2 is refused");
        assert_eq!(error.field, "default_retention_size_in_mb");
        let settings = ManagedLedgerSettings {
            managed_ledger_min_ledger_rollover_time_minutes: 300,
            managed_ledger_max_ledger_rollover_time_minutes: 240,
            ..Default::default()
        };
        let error = ManagedLedgerConfig::from_settings(&settings).expect_err("min above max is refused");
        assert_eq!(error.field, "managed_ledger_min_ledger_rollover_time_minutes");
        assert!(error.to_string().contains("managed_ledger_min_ledger_rollover_time_minutes"));
        let settings = ManagedLedgerSettings { managed_ledger_max_entries_per_ledger: 0, ..Default::default() };
        assert_eq!(
            ManagedLedgerConfig::from_settings(&settings).expect_err("0 entries").field,
            "managed_ledger_max_entries_per_ledger"
        );
        assert!(toml::from_str::<ManagedLedgerSettings>("managed_ledger_max_entries = 3").is_err());
    }
}
