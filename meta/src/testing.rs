//! Test support (cargo feature `testing`): a real single-member etcd-server for tests where
//! etcd is the subject, used by this crate's conformance suite and by the workspace's tests/.
//!
//! [`EtcdServer::start`] runs the `etcd` binary (Debian package `etcd-server`) on free
//! loopback ports with its data in a temporary directory, waits with a bounded poll until it
//! answers a read, and kills it when dropped. A missing binary is an error naming the package
//! to install, never a silent skip. The binary is `$ETCD_BIN` if set, else `etcd` on `$PATH`,
//! else `/usr/bin/etcd`.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::EtcdStore;

/// How long etcd may take to answer its first read (generous: CI machines are busy).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Time limit of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Launch attempts, each on fresh ports: another process may take a probed port before etcd
/// binds it.
const LAUNCH_ATTEMPTS: usize = 3;

/// Why an etcd-server for a test could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EtcdLaunchError {
    #[error(
        "etcd binary not found (looked at {looked_at}): install the Debian package etcd-server \
         (`apt-get install -y etcd-server`; deploy/test.sh installs it) or set ETCD_BIN"
    )]
    NotInstalled { looked_at: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd exited during startup ({status}); its log:\n{log}")]
    Exited { status: ExitStatus, log: String },
    #[error("etcd did not answer within {after:?}; its log:\n{log}")]
    NotReady { after: Duration, log: String },
}

/// TLS for a test etcd: its certificate and key; with `client_cert_auth`, clients must show a
/// certificate signed by `trusted_ca_file` (`--client-cert-auth`, `--trusted-ca-file`).
/// `probe` is how the readiness probe connects (the CA, and a client certificate if required).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub certificate_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: PathBuf,
    pub client_cert_auth: bool,
    pub probe: crate::EtcdOptions,
}

/// How to start a test etcd: plain or TLS, plus flags a test needs (e.g.
/// `--auth-token-ttl=1`, to see a client live through its token expiring).
#[derive(Debug, Clone, Default)]
pub struct EtcdLaunch {
    pub tls: Option<EtcdTls>,
    /// Added to etcd's command line after the flags [`EtcdServer`] sets.
    pub extra_args: Vec<String>,
}

/// A running single-member etcd cluster on loopback, killed on drop.
pub struct EtcdServer {
    child: Child,
    /// How the readiness probe connects (TLS settings; default for plain etcd).
    probe: crate::EtcdOptions,
    /// `http://127.0.0.1:<port>`.
    endpoint: String,
    /// Holds the data directory and the log; deleted on drop (after the kill).
    directory: TempDir,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it answers.
    pub async fn start() -> Result<EtcdServer, EtcdLaunchError> {
        Self::start_with(None).await
    }

    /// Starts etcd serving clients over TLS (`https://127.0.0.1:<port>`) when `tls` is given.
    pub async fn start_with(tls: Option<EtcdTls>) -> Result<EtcdServer, EtcdLaunchError> {
        Self::start_configured(EtcdLaunch { tls, ..EtcdLaunch::default() }).await
    }

    /// Starts etcd as `launch` says and waits until it answers (over TLS with the probe's
    /// settings when `launch.tls` is given).
    pub async fn start_configured(launch: EtcdLaunch) -> Result<EtcdServer, EtcdLaunchError> {
        let binary = find_etcd()?;
        let mut attempt = 1;
        loop {
            match Self::launch(&binary, &launch).await {
                Err(EtcdLaunchError::Exited { .. }) if attempt < LAUNCH_ATTEMPTS => attempt += 1,
                result => return result,
            }
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The client URL as the endpoint list [`EtcdStore::connect`] takes.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint.clone()]
    }

    /// A new store connected to this server (with the probe's TLS settings).
    pub async fn connect(&self) -> crate::Result<EtcdStore> {
        EtcdStore::connect_with(&self.endpoints(), &self.probe).await
    }

    /// etcd's log so far, for failure messages.
    pub fn log(&self) -> String {
        read_log(self.directory.path())
    }

    async fn launch(binary: &Path, launch: &EtcdLaunch) -> Result<EtcdServer, EtcdLaunchError> {
        let tls = launch.tls.as_ref();
        let directory = tempfile::Builder::new()
            .prefix("magnetar-etcd-")
            .tempdir()
            .map_err(|source| EtcdLaunchError::Io { what: "create etcd temp dir", source })?;
        let [client_port, peer_port] = free_ports()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = File::create(directory.path().join("etcd.log"))
            .map_err(|source| EtcdLaunchError::Io { what: "create etcd log", source })?;
        let log_for_stderr =
            log.try_clone().map_err(|source| EtcdLaunchError::Io { what: "duplicate etcd log handle", source })?;

        let mut command = Command::new(binary);
        if let Some(tls) = tls {
            command
                .arg(format!("--cert-file={}", tls.certificate_file.display()))
                .arg(format!("--key-file={}", tls.key_file.display()))
                .arg(format!("--client-cert-auth={}", tls.client_cert_auth));
            // etcd 3.4 asks every client for a certificate once it has a CA to check them.
            if tls.client_cert_auth {
                command.arg(format!("--trusted-ca-file={}", tls.trusted_ca_file.display()));
            }
        }
        let child = command
            .arg("--name=test")
            .arg(format!("--data-dir={}", directory.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            // A single member elects itself after one election timeout: keep it short. This also
            // lowers etcd's minimum lease ttl to 1 s, which the lease tests rely on.
            .args(["--heartbeat-interval=50", "--election-timeout=250"])
            .arg("--logger=zap")
            .args(&launch.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .map_err(|source| EtcdLaunchError::Io { what: "spawn etcd", source })?;
        let probe = tls.map(|tls| tls.probe.clone()).unwrap_or_default();
        let mut server = EtcdServer { child, probe, endpoint, directory };
        server.wait_until_ready().await?;
        Ok(server)
    }

    /// Polls with a cheap read until etcd answers, it exits, or [`STARTUP_TIMEOUT`] passes.
    async fn wait_until_ready(&mut self) -> Result<(), EtcdLaunchError> {
        let started = Instant::now();
        loop {
            if let Some(status) =
                self.child.try_wait().map_err(|source| EtcdLaunchError::Io { what: "check on etcd", source })?
            {
                return Err(EtcdLaunchError::Exited { status, log: self.log() });
            }
            if self.answers().await {
                return Ok(());
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(EtcdLaunchError::NotReady { after: STARTUP_TIMEOUT, log: self.log() });
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn answers(&self) -> bool {
        let probe = async {
            let options = etcd_client::ConnectOptions::new().with_connect_timeout(PROBE_TIMEOUT);
            let Ok(options) = self.probe.apply(options) else { return false };
            let Ok(client) = etcd_client::Client::connect([self.endpoint.as_str()], Some(options)).await else {
                return false;
            };
            client.kv_client().get("/", Some(etcd_client::GetOptions::new().with_count_only())).await.is_ok()
        };
        matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(true))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // SIGKILL, then reap so no zombie outlives the test; a failure here only leaks a process
        // that dies with the test run.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The etcd binary: `$ETCD_BIN`, else `etcd` on `$PATH`, else `/usr/bin/etcd`.
fn find_etcd() -> Result<PathBuf, EtcdLaunchError> {
    if let Some(configured) = std::env::var_os("ETCD_BIN") {
        let configured = PathBuf::from(configured);
        return if configured.is_file() {
            Ok(configured)
        } else {
            Err(EtcdLaunchError::NotInstalled { looked_at: format!("ETCD_BIN={}", configured.display()) })
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|directory| directory.join("etcd")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| EtcdLaunchError::NotInstalled { looked_at: "$PATH and /usr/bin/etcd".to_owned() })
}

/// Two distinct loopback ports that were free a moment ago (both are held while probing, so
/// they differ).
fn free_ports() -> Result<[u16; 2], EtcdLaunchError> {
    let bind =
        || TcpListener::bind("127.0.0.1:0").map_err(|source| EtcdLaunchError::Io { what: "bind a probe port", source });
    let port = |listener: &TcpListener| {
        listener
            .local_addr()
            .map(|address| address.port())
            .map_err(|source| EtcdLaunchError::Io { what: "read a probe port", source })
    };
    let (first, second) = (bind()?, bind()?);
    Ok([port(&first)?, port(&second)?])
}

fn read_log(directory: &Path) -> String {
    std::fs::read_to_string(directory.join("etcd.log")).unwrap_or_else(|error| format!("<no log: {error}>"))
}

/// Certificates for TLS tests, written as PEM files into a directory: `ca.pem` (a CA),
/// `server.pem`/`server.key` (for 127.0.0.1 and localhost, signed by the CA),
/// `client.pem`/`client.key` (common name `client_name`, signed by the CA) and `other-ca.pem`
/// (a CA that signed nothing here).
pub fn write_test_pki(dir: &Path, client_name: &str) -> Result<(), rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca = |name: &str| -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), Issuer::new(params, key)))
    };
    let (ca_pem, issuer) = ca("magnetar-test-ca")?;
    let (other_pem, _) = ca("another-test-ca")?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|error| rcgen::Error::PemError(format!("{name}: {error}")))
    };
    let leaf = |names: Vec<String>, common_name: &str, file: &str| -> Result<(), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &issuer)?;
        write(&format!("{file}.pem"), cert.pem())?;
        write(&format!("{file}.key"), key.serialize_pem())
    };
    leaf(vec!["127.0.0.1".to_owned(), "localhost".to_owned()], "localhost", "server")?;
    leaf(Vec::new(), client_name, "client")?;
    write("ca.pem", ca_pem)?;
    write("other-ca.pem", other_pem)
}
