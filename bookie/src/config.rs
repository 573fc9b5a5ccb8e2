//! Bookie settings: from flags or a TOML file (`magnetar bookie --config bookie.toml`).
//! Every size and interval that bounds memory or I/O is here, with its default, and so is
//! where the bookie listens, what address it registers and which metadata store it uses, so
//! one file describes a bookie (flags override the file, the file overrides the defaults).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BookieConfig {
    /// Stable identity of this bookie; ledger ensembles name bookies by it.
    pub bookie_id: String,
    /// Address the gRPC listener binds to, `host:port` (port 0: any free port). Used by
    /// `magnetar bookie`; standalone binds its bookies itself.
    pub listen: String,
    /// Address the HTTP server binds to, `host:port`: `/metrics` (Prometheus),
    /// `/api/v1/bookie/state`, `/api/v1/bookie/info` and `/heartbeat`, as BookKeeper's
    /// `httpServerPort` and `prometheusStatsHttpPort` (8000). Empty: no HTTP server.
    pub http_listen: String,
    /// Host other processes reach this bookie at (default: the listen address's host, which
    /// must then not be 0.0.0.0). BookKeeper's `advertisedAddress`.
    pub advertised_address: Option<String>,
    /// Metadata store, as `--metadata-url`: `etcd://host:port[,host:port...]` or `local:/path`.
    /// BookKeeper's `metadataServiceUri`.
    pub metadata_service_uri: String,
    /// Entry logs, the RocksDB index and the cookie.
    pub data_dir: PathBuf,
    /// Journal files; best on their own disk. Defaults to `<data_dir>/journal`.
    pub journal_dir: Option<PathBuf>,
    pub journal: JournalConfig,
    /// Bytes of one write-cache half; a checkpoint starts when the active half is this full.
    pub write_cache_bytes: usize,
    /// Longest time entries stay only in the journal before a checkpoint writes them out.
    #[serde(with = "millis", rename = "checkpoint_interval_ms")]
    pub checkpoint_interval: Duration,
    /// An entry log is closed and a new one started at this size.
    pub entry_log_bytes: u64,
    /// Bytes of recently read entries kept in memory.
    pub read_cache_bytes: u64,
    /// Entries read ahead after a read that went to an entry log.
    pub read_ahead_entries: usize,
    /// Garbage collection: how often, and below which fraction of live data an entry log
    /// is compacted.
    #[serde(with = "millis", rename = "gc_interval_ms")]
    pub gc_interval: Duration,
    pub gc_compaction_threshold: f64,
    /// The bookie turns read-only when a data or journal disk is fuller than this fraction,
    /// and writable again below `disk_usage_lwm`.
    pub disk_usage_threshold: f64,
    pub disk_usage_lwm: f64,
    #[serde(with = "millis", rename = "disk_check_interval_ms")]
    pub disk_check_interval: Duration,
    /// The machine (failure domain) this bookie runs on, as placement sees it: copies of an
    /// entry go to bookies on different hosts where possible. Defaults to the advertised host.
    pub host_name: Option<String>,
    /// The auto-recovery worker this bookie runs (or not).
    pub autorecovery: AutoRecoveryConfig,
    /// Which callers this bookie serves: with `enabled`, only those with a valid token.
    pub auth: BookieAuthConfig,
    /// PEM certificate (chain) and private key: with both, the gRPC listener speaks TLS only.
    pub tls_certificate_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    /// How this bookie's auto-recovery worker calls the other bookies.
    pub client: BookieClientConfig,
    /// The etcd user and TLS files (the `[metadata_store]` section).
    pub metadata_store: magnetar_meta::EtcdOptions,
}

/// Token authentication of a bookie's callers (the `[auth]` section), with the key settings a
/// broker's `tokenSecretKey`/`tokenPublicKey` take, so one key serves both.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BookieAuthConfig {
    /// Refuse every call without a valid token.
    pub enabled: bool,
    /// The secret key (HS256) or public key (RS256, ES256) tokens are checked with:
    /// `file:///path`, `data:;base64,...`, a path, or base64. Exactly one when enabled.
    pub token_secret_key: Option<String>,
    pub token_public_key: Option<String>,
    /// The claim holding the role (default `sub`).
    pub token_auth_claim: Option<String>,
    /// The only signature algorithm accepted (default: every one the key fits).
    pub token_public_alg: Option<String>,
    pub token_allowed_clock_skew_seconds: u64,
    /// Roles allowed to call (for example the brokers' and auto-recovery's); empty: any role
    /// with a valid token.
    pub allowed_roles: Vec<String>,
}

impl std::fmt::Debug for BookieAuthConfig {
    /// Inline keys are secrets: only their kind shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = |key: &Option<String>| key.as_deref().map(magnetar_auth::token::redact_source);
        f.debug_struct("BookieAuthConfig")
            .field("enabled", &self.enabled)
            .field("token_secret_key", &key(&self.token_secret_key))
            .field("token_public_key", &key(&self.token_public_key))
            .field("token_auth_claim", &self.token_auth_claim)
            .field("token_public_alg", &self.token_public_alg)
            .field("allowed_roles", &self.allowed_roles)
            .finish()
    }
}

/// How a bookie client (a bookie's auto-recovery worker, `magnetar autorecovery`; a broker
/// from its `bookkeeper_*` settings) calls bookies: a token in Pulsar's plugin and parameter
/// spelling, and the CA of TLS bookies.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BookieClientConfig {
    /// `org.apache.pulsar.client.impl.auth.AuthenticationToken` (or `token`; the default
    /// when parameters are given).
    pub authentication_plugin: Option<String>,
    /// `token:<jwt>` or `file:///path/to/token` (read again at each new connection).
    pub authentication_parameters: Option<String>,
    /// PEM CA that signed the bookies' certificates; needed to reach TLS bookies.
    pub tls_trust_certs_file_path: Option<PathBuf>,
}

impl std::fmt::Debug for BookieClientConfig {
    /// The parameters may hold a token: only whether they are set shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookieClientConfig")
            .field("authentication_plugin", &self.authentication_plugin)
            .field("authentication_parameters", &self.authentication_parameters.as_ref().map(|_| "***"))
            .field("tls_trust_certs_file_path", &self.tls_trust_certs_file_path)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// Size a journal file is preallocated to; a new file starts when it is full.
    pub file_bytes: u64,
    /// Most bytes one group commit writes before its sync.
    pub max_batch_bytes: usize,
    /// Longest a group commit waits for more adds before it syncs what it has.
    #[serde(with = "micros", rename = "max_batch_wait_us")]
    pub max_batch_wait: Duration,
    /// Bytes of adds queued for the journal before adders wait.
    pub max_queued_bytes: usize,
    /// Checkpointed journal files kept (as `<id>.journal.free`) to become later journal files
    /// instead of new ones, as BookKeeper's `journalReuseFiles`: writing over blocks that were
    /// written before changes no file-system metadata, so each group commit's fdatasync is a
    /// device flush and nothing more. 0 removes checkpointed files.
    pub reuse_files: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            file_bytes: 64 * 1024 * 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            max_batch_wait: Duration::from_micros(0),
            max_queued_bytes: 64 * 1024 * 1024,
            reuse_files: 2,
        }
    }
}

impl Default for BookieConfig {
    fn default() -> Self {
        BookieConfig {
            bookie_id: "bookie-0".to_owned(),
            listen: "127.0.0.1:3181".to_owned(),
            http_listen: "127.0.0.1:8000".to_owned(),
            advertised_address: None,
            metadata_service_uri: "etcd://127.0.0.1:2379".to_owned(),
            data_dir: PathBuf::from("./data/bookie"),
            journal_dir: None,
            journal: JournalConfig::default(),
            write_cache_bytes: 64 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(10),
            entry_log_bytes: 1024 * 1024 * 1024,
            read_cache_bytes: 64 * 1024 * 1024,
            read_ahead_entries: 64,
            gc_interval: Duration::from_secs(60),
            gc_compaction_threshold: 0.5,
            disk_usage_threshold: 0.95,
            disk_usage_lwm: 0.90,
            disk_check_interval: Duration::from_secs(10),
            host_name: None,
            autorecovery: AutoRecoveryConfig::default(),
            auth: BookieAuthConfig::default(),
            tls_certificate_path: None,
            tls_key_path: None,
            client: BookieClientConfig::default(),
            metadata_store: magnetar_meta::EtcdOptions::default(),
        }
    }
}

impl BookieConfig {
    /// A config for one bookie with everything under `data_dir`.
    pub fn new(bookie_id: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        BookieConfig { bookie_id: bookie_id.into(), data_dir: data_dir.into(), ..BookieConfig::default() }
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.journal_dir.clone().unwrap_or_else(|| self.data_dir.join("journal"))
    }

    /// Checks values that would make the bookie misbehave; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 14] = [
            (
                self.host_name.as_ref().is_some_and(|host| host.is_empty() || host.len() > 253),
                "host_name must be 1 to 253 characters",
            ),
            (self.autorecovery.audit_interval.is_zero(), "autorecovery.audit_interval_ms must be positive"),
            (self.bookie_id.is_empty() || self.bookie_id.contains('/'), "bookie_id must be non-empty without '/'"),
            (!self.listen.contains(':'), "listen must be host:port"),
            (
                !self.http_listen.is_empty() && !self.http_listen.contains(':'),
                "http_listen must be host:port (or empty: no HTTP server)",
            ),
            (
                self.advertised_address.as_deref().is_some_and(|host| host.is_empty() || host.contains('/')),
                "advertised_address must be a host name or IP address",
            ),
            (self.metadata_service_uri.is_empty(), "metadata_service_uri must be non-empty"),
            (self.journal.file_bytes < 1024 * 1024, "journal.file_bytes must be at least 1 MiB"),
            (self.journal.max_batch_bytes == 0, "journal.max_batch_bytes must be positive"),
            (
                self.journal.max_queued_bytes < crate::MAX_ENTRY_SIZE,
                "journal.max_queued_bytes must hold one maximal entry",
            ),
            (self.write_cache_bytes == 0, "write_cache_bytes must be positive"),
            (self.entry_log_bytes < 1024 * 1024, "entry_log_bytes must be at least 1 MiB"),
            (!(0.0..=1.0).contains(&self.gc_compaction_threshold), "gc_compaction_threshold must be within 0..=1"),
            (
                !(0.0..=1.0).contains(&self.disk_usage_threshold) || self.disk_usage_lwm > self.disk_usage_threshold,
                "disk_usage_threshold must be within 0..=1 and at least disk_usage_lwm",
            ),
        ];
        match checks.iter().find(|(bad, _)| *bad) {
            Some((_, message)) => Err((*message).to_owned()),
            None => Ok(()),
        }
    }
}

pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(deserializer)?))
    }
}

/// Settings of the auto-recovery worker (the `[autorecovery]` section of a bookie's TOML).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AutoRecoveryConfig {
    /// Run the worker inside the bookie (BookKeeper's `autoRecoveryDaemonEnabled`).
    pub enabled: bool,
    /// How long a bookie must be gone before its data is re-replicated
    /// (`lostBookieRecoveryDelay`): a restart within it moves nothing.
    #[serde(with = "crate::config::millis", rename = "lost_bookie_recovery_delay_ms")]
    pub lost_bookie_recovery_delay: Duration,
    /// How often the leader scans every ledger even without registration changes (to catch
    /// ledgers closed since, and to retry what failed).
    #[serde(with = "crate::config::millis", rename = "audit_interval_ms")]
    pub audit_interval: Duration,
}

impl Default for AutoRecoveryConfig {
    fn default() -> Self {
        AutoRecoveryConfig {
            enabled: true,
            lost_bookie_recovery_delay: Duration::from_secs(60),
            audit_interval: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sets_listen_advertised_address_and_metadata_service_uri() {
        let config: BookieConfig = toml::from_str(
            r#"
            bookie_id = "bookie-2"
            listen = "0.0.0.0:3182"
            advertised_address = "bookie-2.magnetar-bookie.default.svc.cluster.local"
            metadata_service_uri = "etcd://etcd-0.etcd:2379,etcd-1.etcd:2379"
            data_dir = "/var/lib/magnetar/bookie"
            [journal]
            file_bytes = 134217728
            "#,
        )
        .expect("valid bookie config");
        assert_eq!(config.listen, "0.0.0.0:3182");
        assert_eq!(config.advertised_address.as_deref(), Some("bookie-2.magnetar-bookie.default.svc.cluster.local"));
        assert_eq!(config.metadata_service_uri, "etcd://etcd-0.etcd:2379,etcd-1.etcd:2379");
        assert_eq!(config.journal.file_bytes, 128 * 1024 * 1024);
        assert_eq!(config.write_cache_bytes, BookieConfig::default().write_cache_bytes);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn deploy_example_is_a_valid_config() {
        let config: BookieConfig =
            toml::from_str(include_str!("../../deploy/config/bookie.toml")).expect("deploy/config/bookie.toml parses");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.listen, "0.0.0.0:3181");
    }

    #[test]
    fn empty_file_keeps_the_flag_defaults() {
        let config: BookieConfig = toml::from_str("").expect("empty config");
        assert_eq!(config, BookieConfig::default());
        assert_eq!(config.listen, "127.0.0.1:3181");
        assert_eq!(config.advertised_address, None);
        assert_eq!(config.metadata_service_uri, "etcd://127.0.0.1:2379");
    }

    #[test]
    fn unknown_or_mistyped_field_is_named() {
        let unknown = toml::from_str::<BookieConfig>("listen_address = \"127.0.0.1:3181\"").expect_err("unknown field");
        assert!(unknown.to_string().contains("listen_address"), "{unknown}");
        let mistyped = toml::from_str::<BookieConfig>("listen = 3181").expect_err("listen is a string");
        assert!(mistyped.to_string().contains("listen"), "{mistyped}");
    }

    #[test]
    fn validate_names_a_bad_listen_or_advertised_address() {
        let no_port = BookieConfig { listen: "127.0.0.1".to_owned(), ..BookieConfig::default() };
        assert_eq!(no_port.validate(), Err("listen must be host:port".to_owned()));
        let empty_host = BookieConfig { advertised_address: Some(String::new()), ..BookieConfig::default() };
        assert!(empty_host.validate().is_err_and(|reason| reason.starts_with("advertised_address")));
        let no_metadata = BookieConfig { metadata_service_uri: String::new(), ..BookieConfig::default() };
        assert!(no_metadata.validate().is_err_and(|reason| reason.starts_with("metadata_service_uri")));
    }

    #[test]
    fn host_and_autorecovery_settings_come_from_toml() {
        let config: BookieConfig = toml::from_str(
            "bookie_id = \"b1\"\nhost_name = \"rack1-host3\"\n[autorecovery]\nenabled = false\n\
             lost_bookie_recovery_delay_ms = 2500\n",
        )
        .expect("valid config");
        assert_eq!(config.host_name.as_deref(), Some("rack1-host3"));
        assert!(!config.autorecovery.enabled);
        assert_eq!(config.autorecovery.lost_bookie_recovery_delay, Duration::from_millis(2500));
        assert_eq!(config.autorecovery.audit_interval, AutoRecoveryConfig::default().audit_interval);
        assert!(config.validate().is_ok());
        assert!(toml::from_str::<BookieConfig>("[autorecovery]\nlost_bookie_delay_ms = 1\n").is_err());
        let empty_host = BookieConfig { host_name: Some(String::new()), ..BookieConfig::default() };
        assert!(empty_host.validate().is_err_and(|reason| reason.contains("host_name")));
    }
}
