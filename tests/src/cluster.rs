//! Processes of a cluster on loopback: a real etcd, `magnetar bookie` processes and a
//! `magnetar broker` process, each with its own directory and log, for tests that kill and
//! restart them.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use magnetar_bookie::client::metadata::{self, Ledger};
use magnetar_bookie::LedgerId;
use magnetar_meta::testing::EtcdServer;
use magnetar_meta::MetadataStore;
use magnetar_proto::records::ManagedLedgerInfo;
use prost::Message;

use crate::{binary, eventually, free_port, BookieOptions, BookieProcess};

/// The metadata URL of a test etcd.
pub fn etcd_url(etcd: &EtcdServer) -> String {
    format!("etcd://{}", etcd.endpoint().trim_start_matches("http://"))
}

/// Replication of a broker's new ledgers: ensemble size, write quorum, ack quorum.
#[derive(Debug, Clone, Copy)]
pub struct Replication {
    pub ensemble_size: u32,
    pub write_quorum: u32,
    pub ack_quorum: u32,
}

/// Broker settings for process tests: a short metadata session, so a killed broker's bundles
/// are free after 3 s (failover), frequent load reports, and no load shedding unless a test
/// asks for it.
pub const TEST_BROKER_CONFIG: &str = "metadata_store_session_timeout_millis = 3000\n\
load_balancer_report_interval_seconds = 1\n\
load_balancer_enabled = false\n";

/// A `magnetar broker` process on fixed free ports, restartable on the same ports.
pub struct BrokerProcess {
    child: Option<Child>,
    metadata_url: String,
    replication: Replication,
    dir: PathBuf,
    /// The broker's TOML settings file.
    config: PathBuf,
    pub pulsar_port: u16,
    pub http_port: u16,
    starts: u32,
}

impl BrokerProcess {
    /// Starts a broker on `metadata_url` and waits until it accepts connections. Its logs go to
    /// `dir/broker-<start>.log`.
    pub async fn start(metadata_url: &str, replication: Replication, dir: PathBuf) -> anyhow::Result<Self> {
        Self::start_with(metadata_url, replication, dir, TEST_BROKER_CONFIG).await
    }

    /// Like [`BrokerProcess::start`], with `settings` as its TOML settings file.
    pub async fn start_with(
        metadata_url: &str,
        replication: Replication,
        dir: PathBuf,
        settings: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).context("create the broker's dir")?;
        let config = dir.join("broker.toml");
        std::fs::write(&config, settings).context("write the broker's settings file")?;
        let mut broker = BrokerProcess {
            child: None,
            metadata_url: metadata_url.to_owned(),
            replication,
            dir,
            config,
            pulsar_port: free_port()?,
            http_port: free_port()?,
            starts: 0,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    pub fn service_url(&self) -> String {
        format!("pulsar://127.0.0.1:{}", self.pulsar_port)
    }

    /// How other brokers and the load manager name this broker: `host:http port`.
    pub fn broker_key(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.join(format!("broker-{start}.log"))
    }

    /// The log of the latest start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).context("create the broker log")?;
        let Replication { ensemble_size, write_quorum, ack_quorum } = self.replication;
        let child = Command::new(binary("magnetar")?)
            .arg("broker")
            .args(["--metadata-url", &self.metadata_url, "--cluster-name", "test"])
            .args(["--bind-address", "127.0.0.1", "--advertised-address", "127.0.0.1"])
            .args(["--pulsar-port", &self.pulsar_port.to_string(), "--http-port", &self.http_port.to_string()])
            .args(["--ensemble-size", &ensemble_size.to_string()])
            .args(["--write-quorum", &write_quorum.to_string()])
            .args(["--ack-quorum", &ack_quorum.to_string()])
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn magnetar broker")?;
        self.child = Some(child);
        let port = self.pulsar_port;
        let ready = eventually(Duration::from_secs(60), "the broker to accept connections", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        if let Err(error) = ready {
            bail!("{error}\n--- broker log ---\n{}", self.log());
        }
        Ok(())
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill -9 the broker")?;
            child.wait().context("reap the broker")?;
        }
        Ok(())
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the broker process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("the broker is not running")?;
        let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Whether the process exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(Some(_))) | None)
    }

    /// SIGTERM, then waits for the broker to exit (a graceful shutdown hands its bundles over).
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal("TERM")?;
        let mut child = self.child.take().context("the broker is not running")?;
        child.wait().context("wait for the broker")
    }

    /// SIGKILLs the broker if it runs and starts it again on the same ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.spawn().await
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- magnetar broker log ---\n{}", self.log());
        }
    }
}

/// etcd, `count` bookies (`bookie-0`...) and one broker (or more), in a temp dir.
pub struct Cluster {
    pub bookies: Vec<BookieProcess>,
    pub broker: BrokerProcess,
    /// Brokers after the first ([`Cluster::start_brokers`], [`Cluster::add_broker`]).
    pub more_brokers: Vec<BrokerProcess>,
    replication: Replication,
    pub meta: Arc<dyn MetadataStore>,
    // Dropped last: the processes above stop before etcd does.
    pub etcd: EtcdServer,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(bookies: usize, replication: Replication) -> anyhow::Result<Self> {
        Self::start_full(bookies, 1, replication, TEST_BROKER_CONFIG, |_| Vec::new()).await
    }

    /// Like [`Cluster::start`], with `bookie_args(i)` appended to bookie `i`'s command line.
    pub async fn start_with(
        bookies: usize,
        replication: Replication,
        bookie_args: impl Fn(usize) -> Vec<String>,
    ) -> anyhow::Result<Self> {
        Self::start_full(bookies, 1, replication, TEST_BROKER_CONFIG, bookie_args).await
    }

    /// `bookies` bookies and `brokers` brokers, each broker with `settings` as its TOML file.
    pub async fn start_brokers(
        bookies: usize,
        brokers: usize,
        replication: Replication,
        settings: &str,
    ) -> anyhow::Result<Self> {
        Self::start_full(bookies, brokers, replication, settings, |_| Vec::new()).await
    }

    /// `bookies` bookies with `bookie_args(i)` appended to bookie `i`'s command line, and
    /// `brokers` brokers with `settings` as their TOML file.
    pub async fn start_full(
        bookies: usize,
        brokers: usize,
        replication: Replication,
        settings: &str,
        bookie_args: impl Fn(usize) -> Vec<String>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(brokers >= 1, "a cluster needs a broker");
        let dir = tempfile::tempdir().context("create the cluster's temp dir")?;
        let etcd = EtcdServer::start().await.context("start etcd")?;
        let url = etcd_url(&etcd);
        let mut started = Vec::new();
        for index in 0..bookies {
            let id = format!("bookie-{index}");
            let mut options = BookieOptions::new(&id, &url, &dir.path().join(&id).join("data"));
            options.extra_args = bookie_args(index);
            started.push(BookieProcess::start(options).await?);
        }
        let meta: Arc<dyn MetadataStore> = Arc::new(etcd.connect().await.context("connect to etcd")?);
        let broker = BrokerProcess::start_with(&url, replication, dir.path().join("broker"), settings).await?;
        let mut cluster =
            Cluster { bookies: started, broker, more_brokers: Vec::new(), replication, meta, etcd, _dir: dir };
        for _ in 1..brokers {
            cluster.add_broker(settings).await?;
        }
        Ok(cluster)
    }

    /// Starts one more broker with `settings`; returns its index in [`Cluster::brokers`].
    pub async fn add_broker(&mut self, settings: &str) -> anyhow::Result<usize> {
        let index = self.more_brokers.len() + 1;
        let dir = self._dir.path().join(format!("broker-{index}"));
        let broker = BrokerProcess::start_with(&etcd_url(&self.etcd), self.replication, dir, settings).await?;
        self.more_brokers.push(broker);
        Ok(index)
    }

    /// Every broker, the first one first.
    pub fn brokers(&self) -> Vec<&BrokerProcess> {
        std::iter::once(&self.broker).chain(self.more_brokers.iter()).collect()
    }

    pub fn broker_mut(&mut self, index: usize) -> &mut BrokerProcess {
        if index == 0 {
            &mut self.broker
        } else {
            &mut self.more_brokers[index - 1]
        }
    }

    /// A service URL naming every broker, as clients of a cluster are configured.
    pub fn service_url(&self) -> String {
        let hosts: Vec<String> = self.brokers().iter().map(|b| format!("127.0.0.1:{}", b.pulsar_port)).collect();
        format!("pulsar://{}", hosts.join(","))
    }

    /// The index of the broker whose Pulsar URL is `url`.
    pub fn broker_index(&self, url: &str) -> Option<usize> {
        self.brokers().iter().position(|b| b.service_url() == url)
    }

    /// The ledgers of a topic (`tenant/ns/topic`) as the metadata store holds them, oldest
    /// first.
    pub async fn ledgers(&self, topic: &str) -> anyhow::Result<Vec<Ledger>> {
        let (tenant_ns, local) = topic.rsplit_once('/').context("topic is tenant/ns/topic")?;
        let path = format!("/magnetar/managed-ledgers/{tenant_ns}/persistent/{local}");
        let found = self.meta.get(&path).await?.with_context(|| format!("no managed ledger at {path}"))?;
        let info = ManagedLedgerInfo::decode(&found.value[..]).context("decode the managed ledger info")?;
        let mut ledgers = Vec::new();
        for ledger in info.ledgers {
            let (found, _) = metadata::read(self.meta.as_ref(), LedgerId(ledger.ledger_id))
                .await?
                .with_context(|| format!("no metadata of ledger {}", ledger.ledger_id))?;
            ledgers.push(found);
        }
        Ok(ledgers)
    }

    /// Every ledger in the metadata store (topics' and cursors'), by id.
    pub async fn all_ledgers(&self) -> anyhow::Result<Vec<Ledger>> {
        let mut ledgers = Vec::new();
        for child in self.meta.list_children(magnetar_bookie::LEDGERS_PATH).await? {
            let ledger_id = child.parse::<u64>().map(LedgerId).with_context(|| format!("ledger key {child}"))?;
            if let Some((found, _)) = metadata::read(self.meta.as_ref(), ledger_id).await? {
                ledgers.push(found);
            }
        }
        Ok(ledgers)
    }

    /// The bookie process with id `bookie_id`.
    pub fn bookie_mut(&mut self, bookie_id: &str) -> anyhow::Result<&mut BookieProcess> {
        self.bookies
            .iter_mut()
            .find(|bookie| bookie.options().bookie_id == bookie_id)
            .with_context(|| format!("no bookie {bookie_id}"))
    }
}
