//! The `magnetar` server binary: `standalone` (everything in one process), `bookie` (one
//! storage node of a cluster), `broker` (one broker of a cluster) and `autorecovery` (only the
//! auto-recovery worker that every bookie also runs by default).

#[cfg(test)]
mod fuzz_settings;
mod metadata_url;
mod node;
mod pulsar_conf;
mod settings;
mod standalone;
mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use magnetar_bookie::autorecovery::AutoRecovery;
use magnetar_bookie::client::{Bookies, LedgerConfig};
use magnetar_bookie::config::AutoRecoveryConfig;
use magnetar_bookie::node::{BookieNode, REGISTRATION_TTL};
use magnetar_bookie::security::ClientSecurity;
use magnetar_bookie::BookieConfig;
use metadata_url::MetadataUrl;
use node::{BrokerNodeConfig, Listeners};
use settings::BrokerSettings;
use standalone::StandaloneConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Parser)]
#[command(name = "magnetar", version, about = "Magnetar: a Pulsar-compatible messaging platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One process with embedded metadata (RocksDB), one or more bookies and one broker.
    Standalone(StandaloneArgs),
    /// One bookie (storage node): serves BookieService over gRPC and registers in metadata.
    Bookie(BookieArgs),
    /// One broker of a cluster: Pulsar protocol and admin HTTP over a shared metadata store,
    /// writing to the registered bookies.
    Broker(BrokerArgs),
    /// Only the auto-recovery worker: re-replicates the ledgers of bookies gone for good
    /// (every `magnetar bookie` runs one too unless `--autorecovery false`).
    Autorecovery(AutoRecoveryWorkerArgs),
    /// Secret keys, key pairs and JWTs for token authentication (Pulsar's `tokens` verbs).
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
}

/// What every broker serves on, and its settings file: shared by `standalone` and `broker`.
/// Flags override the file, which overrides the defaults.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address the Pulsar and HTTP listeners bind to [default: 0.0.0.0].
    #[arg(long)]
    bind_address: Option<String>,
    /// Pulsar binary protocol port [default: 6650].
    #[arg(long)]
    pulsar_port: Option<u16>,
    /// HTTP port for admin, lookup and metrics [default: 8080].
    #[arg(long)]
    http_port: Option<u16>,
    /// `pulsar+ssl://` port [file: broker_service_port_tls; default: off]; needs the TLS
    /// certificate and key in the settings file.
    #[arg(long)]
    pulsar_tls_port: Option<u16>,
    /// HTTPS port [file: web_service_port_tls; default: off].
    #[arg(long)]
    https_port: Option<u16>,
    /// Host name clients are told to connect to [default: 127.0.0.1].
    #[arg(long)]
    advertised_address: Option<String>,
    /// Broker settings: a TOML file with Pulsar's broker.conf names in snake case
    /// (metadata_store_url, broker_service_port, allow_auto_topic_creation, ...) and a
    /// [managed_ledger] section (rollover, retention), or Pulsar's own broker.conf /
    /// standalone.conf (a `.conf` file: Pulsar's key spellings; keys Magnetar does not
    /// implement are reported once).
    #[arg(long, value_name = "FILE.toml|FILE.conf")]
    config: Option<PathBuf>,
}

/// Where a broker serves, after flags, file and defaults.
struct Serve {
    listeners: Listeners,
    advertised_address: String,
    settings: BrokerSettings,
}

impl ServeArgs {
    /// The settings file (checked) with the flags over it.
    fn resolve(&self) -> anyhow::Result<Serve> {
        let settings = match &self.config {
            Some(path) => BrokerSettings::load(path)?,
            None => BrokerSettings::default(),
        };
        let enabled = |flag: Option<u16>, on: Option<bool>, port: Option<u16>, default: u16| match (flag, on) {
            (Some(port), _) => Some(port),
            (None, Some(false)) => None,
            (None, _) => Some(port.unwrap_or(default)),
        };
        let listeners = Listeners {
            bind_address: self.bind_address.clone().or(settings.bind_address.clone()).unwrap_or("0.0.0.0".into()),
            pulsar_port: enabled(
                self.pulsar_port,
                settings.broker_service_port_enabled,
                settings.broker_service_port,
                6650,
            ),
            http_port: enabled(self.http_port, settings.web_service_port_enabled, settings.web_service_port, 8080),
            pulsar_tls_port: self.pulsar_tls_port.or(settings.broker_service_port_tls),
            https_port: self.https_port.or(settings.web_service_port_tls),
            tls: settings.tls_settings()?,
            advertised: settings.advertised_listeners()?,
            internal_listener_name: settings.internal_listener_name(),
        };
        listeners.check()?;
        Ok(Serve {
            listeners,
            advertised_address: self
                .advertised_address
                .clone()
                .or(settings.advertised_address.clone())
                .unwrap_or("127.0.0.1".into()),
            settings,
        })
    }
}

/// `magnetar standalone`.
#[derive(clap::Args)]
struct StandaloneArgs {
    /// Where metadata, journal and entries are kept.
    #[arg(long, default_value = "./data", env = "MAGNETAR_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    serve: ServeArgs,
    /// Loopback gRPC port of the first bookie; bookie i listens on this port + i (0: each
    /// bookie on any free port).
    #[arg(long, default_value_t = 0)]
    bookie_port: u16,
    /// Bookies to run in this process, each with its data in <data dir>/bookie-<i>.
    #[arg(long, default_value_t = 1)]
    num_bookies: u32,
    /// Bookies each new ledger is spread over (at most --num-bookies).
    #[arg(long, default_value_t = 1)]
    ensemble_size: u32,
    /// Bookies each entry is written to (at most --ensemble-size).
    #[arg(long, default_value_t = 1)]
    write_quorum: u32,
    /// Bookies that must confirm an entry before it is acknowledged (1 ..= --write-quorum).
    #[arg(long, default_value_t = 1)]
    ack_quorum: u32,
}

/// `magnetar broker`.
#[derive(clap::Args)]
struct BrokerArgs {
    /// Metadata store: etcd://host:port[,host:port...] or local:/path (single host only)
    /// [default: etcd://127.0.0.1:2379].
    #[arg(long, env = "MAGNETAR_METADATA_URL")]
    metadata_url: Option<String>,
    /// Name of the cluster (created in metadata if missing) [default: magnetar].
    #[arg(long)]
    cluster_name: Option<String>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Bookies each new ledger is spread over (E); Pulsar's managedLedgerDefaultEnsembleSize
    /// [default: 2].
    #[arg(long)]
    ensemble_size: Option<u32>,
    /// Copies written of each entry (Qw); Pulsar's managedLedgerDefaultWriteQuorum [default: 2].
    #[arg(long)]
    write_quorum: Option<u32>,
    /// Copies durable before an entry is acknowledged (Qa); Pulsar's
    /// managedLedgerDefaultAckQuorum [default: 2].
    #[arg(long)]
    ack_quorum: Option<u32>,
}

/// `magnetar bookie`: flags override the TOML file, which overrides the defaults.
#[derive(clap::Args)]
struct BookieArgs {
    /// TOML file with the bookie's settings (the fields of the bookie config; unknown fields
    /// are an error).
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Stable identity of this bookie.
    #[arg(long, env = "MAGNETAR_BOOKIE_ID")]
    bookie_id: Option<String>,
    /// Entry logs, index and cookie.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Journal files (default: <data dir>/journal); best on a disk of its own.
    #[arg(long)]
    journal_dir: Option<PathBuf>,
    /// Address the gRPC listener binds to (port 0: any free port) [file: listen; default:
    /// 127.0.0.1:3181].
    #[arg(long)]
    listen: Option<String>,
    /// Address the HTTP server (/metrics, /api/v1/bookie/state|info, /heartbeat) binds to;
    /// "" for none [file: http_listen; default: 127.0.0.1:8000].
    #[arg(long)]
    http_listen: Option<String>,
    /// Host other processes reach this bookie at [file: advertised_address; default: the
    /// listen address's host].
    #[arg(long)]
    advertised_address: Option<String>,
    /// Metadata store: etcd://host:port[,host:port...] or local:/path (single host only)
    /// [file: metadata_service_uri; default: etcd://127.0.0.1:2379].
    #[arg(long, env = "MAGNETAR_METADATA_URL")]
    metadata_url: Option<String>,
    /// The machine this bookie runs on, for placement (default: the advertised host).
    #[arg(long)]
    host_name: Option<String>,
    #[command(flatten)]
    autorecovery: AutoRecoveryArgs,
}

/// Auto-recovery settings of `magnetar bookie` (over its TOML) and `magnetar autorecovery`.
#[derive(clap::Args)]
struct AutoRecoveryArgs {
    /// Run the auto-recovery worker in this bookie (default true; BookKeeper's
    /// autoRecoveryDaemonEnabled).
    #[arg(long, value_name = "BOOL")]
    autorecovery: Option<bool>,
    /// How long a bookie must be gone before its ledgers are re-replicated (default 60000;
    /// BookKeeper's lostBookieRecoveryDelay).
    #[arg(long, value_name = "MS")]
    lost_bookie_recovery_delay_ms: Option<u64>,
    /// How often the leader scans every ledger without registration changes (default 30000).
    #[arg(long, value_name = "MS")]
    autorecovery_audit_interval_ms: Option<u64>,
}

impl AutoRecoveryArgs {
    fn apply(&self, config: &mut AutoRecoveryConfig) {
        if let Some(enabled) = self.autorecovery {
            config.enabled = enabled;
        }
        if let Some(ms) = self.lost_bookie_recovery_delay_ms {
            config.lost_bookie_recovery_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = self.autorecovery_audit_interval_ms {
            config.audit_interval = Duration::from_millis(ms);
        }
    }
}

/// `magnetar autorecovery`: only the auto-recovery worker (as `bookkeeper autorecovery`).
#[derive(clap::Args)]
struct AutoRecoveryWorkerArgs {
    /// Metadata store: etcd://host:port[,host:port...] or local:/path (single host only)
    /// [default: the config file's metadata_service_uri, else etcd://127.0.0.1:2379].
    #[arg(long, env = "MAGNETAR_METADATA_URL")]
    metadata_url: Option<String>,
    /// A bookie's TOML file: its metadata_service_uri, [metadata_store] (etcd user and TLS),
    /// [client] (the token and CA to call bookies with) and [autorecovery] sections are used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Name written into the leader lock while this worker leads (default autorecovery-<pid>).
    #[arg(long)]
    worker_id: Option<String>,
    #[command(flatten)]
    autorecovery: AutoRecoveryArgs,
}

impl BookieArgs {
    /// The config file (if any) with the flags applied, validated.
    async fn bookie_config(&self) -> anyhow::Result<BookieConfig> {
        let mut config = match &self.config {
            Some(path) => load_bookie_config(path).await?,
            None => BookieConfig::default(),
        };
        if let Some(bookie_id) = &self.bookie_id {
            config.bookie_id = bookie_id.clone();
        }
        if let Some(data_dir) = &self.data_dir {
            config.data_dir = data_dir.clone();
        }
        if let Some(journal_dir) = &self.journal_dir {
            config.journal_dir = Some(journal_dir.clone());
        }
        if let Some(listen) = &self.listen {
            config.listen = listen.clone();
        }
        if let Some(http_listen) = &self.http_listen {
            config.http_listen = http_listen.clone();
        }
        if let Some(advertised_address) = &self.advertised_address {
            config.advertised_address = Some(advertised_address.clone());
        }
        if let Some(metadata_url) = &self.metadata_url {
            config.metadata_service_uri = metadata_url.clone();
        }
        if let Some(host_name) = &self.host_name {
            config.host_name = Some(host_name.clone());
        }
        self.autorecovery.apply(&mut config.autorecovery);
        if let Err(reason) = config.validate() {
            match &self.config {
                Some(path) => bail!("invalid bookie config (file {} and flags): {reason}", path.display()),
                None => bail!("invalid bookie config: {reason}"),
            }
        }
        Ok(config)
    }

    /// The parsed metadata URL of `config`; the error says where it came from.
    fn metadata_url(&self, config: &BookieConfig) -> anyhow::Result<MetadataUrl> {
        let parsed = config.metadata_service_uri.parse::<MetadataUrl>();
        match (&self.metadata_url, &self.config) {
            (Some(_), _) => parsed.context("--metadata-url (or MAGNETAR_METADATA_URL)"),
            (None, Some(path)) => {
                parsed.with_context(|| format!("bookie config file {}: metadata_service_uri", path.display()))
            }
            (None, None) => parsed.context("default metadata URL"),
        }
    }
}

async fn load_bookie_config(path: &Path) -> anyhow::Result<BookieConfig> {
    let text =
        tokio::fs::read_to_string(path).await.with_context(|| format!("read bookie config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("bookie config file {}", path.display()))
}

/// Runs one bookie until `cancel` fires (`magnetar_bookie::node` has the start and stop
/// sequence): bind, start, then stop on cancel or fail if the server stops by itself.
async fn run_bookie(args: BookieArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let config = args.bookie_config().await?;
    let metadata_url = args.metadata_url(&config)?;
    let meta = metadata_url.connect_with(&config.metadata_store).await?;
    let listener =
        TcpListener::bind(&config.listen).await.with_context(|| format!("bind the bookie port {}", config.listen))?;
    let local: SocketAddr = listener.local_addr().context("read the bound bookie address")?;
    let advertised_host = match &config.advertised_address {
        Some(host) => host.clone(),
        None if local.ip().is_unspecified() => {
            bail!(
                "listen address {} binds every interface: say which host others reach it at with \
                 --advertised-address or advertised_address in the config file",
                config.listen
            )
        }
        None => local.ip().to_string(),
    };
    let mut bookie = BookieNode::start(&config, meta, listener, &advertised_host)
        .await
        .with_context(|| format!("start bookie {} in {}", config.bookie_id, config.data_dir.display()))?;
    info!(
        bookie_id = %config.bookie_id,
        instance_id = %bookie.cookie().instance_id,
        listen = %local,
        advertised = %bookie.address(),
        metadata = %metadata_url,
        data_dir = %config.data_dir.display(),
        journal_dir = %config.journal_dir().display(),
        http = ?bookie.http_local_addr(),
        "magnetar bookie is ready"
    );
    // The lines tools and tests parse to find a bookie started on port 0 (the HTTP one first).
    if let Some(http) = bookie.http_local_addr() {
        eprintln!("magnetar bookie http on {http}");
    }
    eprintln!("magnetar bookie listening on {local}");
    let failed = tokio::select! {
        _ = cancel.cancelled() => None,
        result = bookie.failed() => Some(result),
    };
    info!("shutting down");
    let stopped = bookie.stop().await;
    if let Some(result) = failed {
        result.context("serve BookieService")?;
        bail!("bookie server stopped without being asked to");
    }
    stopped.context("stop the bookie")?;
    info!("stopped");
    Ok(())
}

/// Runs only the auto-recovery worker until `cancel`.
async fn run_autorecovery(args: AutoRecoveryWorkerArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => load_bookie_config(path).await?,
        None => BookieConfig::default(),
    };
    let mut config = file.autorecovery.clone();
    args.autorecovery.apply(&mut config);
    if config.audit_interval.is_zero() {
        bail!("--autorecovery-audit-interval-ms must be positive");
    }
    let metadata_url: MetadataUrl = match &args.metadata_url {
        Some(url) => url.parse().context("--metadata-url (or MAGNETAR_METADATA_URL)")?,
        None => file.metadata_service_uri.parse().context("metadata_service_uri")?,
    };
    let security = ClientSecurity::from_config(&file.client).context("[client] section")?;
    let meta = metadata_url.connect_with(&file.metadata_store).await?;
    let worker_id = args.worker_id.unwrap_or_else(|| format!("autorecovery-{}", std::process::id()));
    info!(%worker_id, metadata = %metadata_url, "magnetar autorecovery is ready");
    let bookies = Bookies::secured(meta, security);
    AutoRecovery::with_bookies(bookies, worker_id, config, REGISTRATION_TTL).run(cancel).await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let cancel = CancellationToken::new();
    let signal_cancel = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("signal received");
        signal_cancel.cancel();
    });
    match cli.command {
        Command::Standalone(args) => {
            let serve = args.serve.resolve()?;
            let config = StandaloneConfig {
                managed_ledger: serve.settings.managed_ledger_config()?,
                policies: serve.settings.policy_defaults()?,
                max_message_size: serve.settings.max_message_size()?,
                expose_topic_level_metrics: serve.settings.expose_topic_level_metrics_in_prometheus.unwrap_or(true),
                cluster_name: serve.settings.cluster_name.clone().unwrap_or_else(|| "standalone".to_owned()),
                security: serve.settings.security_config()?,
                data_dir: args.data_dir,
                listeners: serve.listeners,
                bookie_port: args.bookie_port,
                advertised_address: serve.advertised_address,
                num_bookies: args.num_bookies,
                ledger: LedgerConfig {
                    ensemble_size: args.ensemble_size,
                    write_quorum: args.write_quorum,
                    ack_quorum: args.ack_quorum,
                },
            };
            // Before anything is opened or bound: a wrong flag is reported alone.
            config.validate().context("invalid standalone flags")?;
            standalone::run(config, cancel).await
        }
        Command::Bookie(args) => run_bookie(args, cancel).await,
        Command::Tokens { command } => tokens::run(command),
        Command::Autorecovery(args) => run_autorecovery(args, cancel).await,
        Command::Broker(args) => {
            let serve = args.serve.resolve()?;
            let settings = &serve.settings;
            let file_ledger = settings.ledger_config(LedgerConfig { ensemble_size: 2, write_quorum: 2, ack_quorum: 2 });
            let metadata_url = args
                .metadata_url
                .or(settings.metadata_store_url.clone())
                .unwrap_or_else(|| "etcd://127.0.0.1:2379".to_owned());
            let config = BrokerNodeConfig {
                managed_ledger: settings.managed_ledger_config()?,
                policies: settings.policy_defaults()?,
                max_message_size: settings.max_message_size()?,
                expose_topic_level_metrics: settings.expose_topic_level_metrics_in_prometheus.unwrap_or(true),
                cluster: settings.cluster_config()?,
                metadata_url: metadata_url.parse()?,
                metadata_store: settings.metadata_store_options(),
                bookie_security: settings.bookie_security()?,
                cluster_name: args
                    .cluster_name
                    .or(settings.cluster_name.clone())
                    .unwrap_or_else(|| "magnetar".to_owned()),
                ledger: LedgerConfig {
                    ensemble_size: args.ensemble_size.unwrap_or(file_ledger.ensemble_size),
                    write_quorum: args.write_quorum.unwrap_or(file_ledger.write_quorum),
                    ack_quorum: args.ack_quorum.unwrap_or(file_ledger.ack_quorum),
                },
                security: settings.security_config()?,
                listeners: serve.listeners,
                advertised_address: serve.advertised_address,
            };
            node::run(config, cancel).await
        }
    }
}

#[cfg(test)]
mod bookie_args_tests {
    use super::*;

    fn bookie_args(args: &[&str]) -> BookieArgs {
        let argv = ["magnetar", "bookie"].iter().chain(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli { command: Command::Bookie(args) }) => args,
            Ok(_) => panic!("not the bookie command"),
            Err(error) => panic!("{error}"),
        }
    }

    #[tokio::test]
    async fn bookie_flags_override_the_file_which_overrides_the_defaults() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("bookie.toml");
        std::fs::write(
            &file,
            "bookie_id = \"from-file\"\nlisten = \"127.0.0.1:4181\"\nadvertised_address = \"bookie.example\"\n\
             metadata_service_uri = \"etcd://10.0.0.1:2379\"\n",
        )?;
        let path = file.to_str().context("temp path is UTF-8")?;

        let from_file = bookie_args(&["--config", path]).bookie_config().await?;
        assert_eq!(from_file.bookie_id, "from-file");
        assert_eq!(from_file.listen, "127.0.0.1:4181");
        assert_eq!(from_file.advertised_address.as_deref(), Some("bookie.example"));
        assert_eq!(from_file.metadata_service_uri, "etcd://10.0.0.1:2379");

        let args = bookie_args(&[
            "--config",
            path,
            "--listen",
            "127.0.0.1:5181",
            "--advertised-address",
            "other.example",
            "--metadata-url",
            "etcd://10.0.0.2:2379",
        ]);
        let flags = args.bookie_config().await?;
        assert_eq!(flags.bookie_id, "from-file");
        assert_eq!(flags.listen, "127.0.0.1:5181");
        assert_eq!(flags.advertised_address.as_deref(), Some("other.example"));
        assert_eq!(args.metadata_url(&flags)?.to_string(), "etcd://10.0.0.2:2379");

        let defaults = bookie_args(&[]).bookie_config().await?;
        assert_eq!(defaults.listen, "127.0.0.1:3181");
        assert_eq!(defaults.advertised_address, None);
        Ok(())
    }

    #[tokio::test]
    async fn bad_metadata_service_uri_in_the_file_names_file_and_field() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("bookie.toml");
        std::fs::write(&file, "metadata_service_uri = \"zk://127.0.0.1:2181\"\n")?;
        let args = bookie_args(&["--config", file.to_str().context("temp path is UTF-8")?]);
        let config = args.bookie_config().await?;
        let error = format!("{:#}", args.metadata_url(&config).expect_err("zk:// is not ours"));
        assert!(error.contains("bookie.toml: metadata_service_uri"), "{error}");
        Ok(())
    }
}
