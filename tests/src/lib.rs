//! Harness for Magnetar's cross-crate integration tests: real `magnetar` processes on free
//! loopback ports and temporary data directories, which tests can SIGKILL and restart.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Path to a workspace binary: `$MAGNETAR_BIN` for `magnetar`, else next to the test
/// executable's `deps/` folder (where cargo and nextest put binaries of the workspace).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if name == "magnetar" {
        if let Some(path) = std::env::var_os("MAGNETAR_BIN") {
            return Ok(PathBuf::from(path));
        }
    }
    let exe = std::env::current_exe().context("locate the test executable")?;
    let dir = exe.parent().and_then(Path::parent).context("test executable has no target dir")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} not found: build it first (cargo build --workspace --bins)", path.display());
    }
    Ok(path)
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `magnetar standalone` process.
pub struct Standalone {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub pulsar_port: u16,
    pub http_port: u16,
    starts: u32,
}

impl Standalone {
    /// Starts standalone on a fresh data dir and free ports, and waits until it serves.
    pub async fn start() -> anyhow::Result<Self> {
        let mut standalone = Standalone {
            child: None,
            dir: tempfile::tempdir().context("create temp dir")?,
            pulsar_port: free_port()?,
            http_port: free_port()?,
            starts: 0,
        };
        standalone.spawn().await?;
        Ok(standalone)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn service_url(&self) -> String {
        format!("pulsar://127.0.0.1:{}", self.pulsar_port)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("magnetar-{start}.log"))
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).context("create log file")?;
        let child = Command::new(binary("magnetar")?)
            .arg("standalone")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--bind-address", "127.0.0.1", "--advertised-address", "127.0.0.1"])
            .args(["--pulsar-port", &self.pulsar_port.to_string(), "--http-port", &self.http_port.to_string()])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn magnetar standalone")?;
        self.child = Some(child);
        let port = self.pulsar_port;
        let ready = eventually(Duration::from_secs(60), "standalone to accept connections", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        if let Err(error) = ready {
            bail!("{error}\n--- log ---\n{}", self.log());
        }
        Ok(())
    }

    /// The log of the latest start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill -9 standalone")?;
            child.wait().context("reap standalone")?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else { return Ok(true) };
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().context("send SIGTERM")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                child.kill()?;
                bail!("standalone did not exit within 30 s of SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts again on the same data dir and ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.spawn().await
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- magnetar log ---\n{}", self.log());
        }
    }
}
