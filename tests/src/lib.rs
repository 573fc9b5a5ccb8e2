//! Harness for Magnetar's cross-crate integration tests: real `magnetar` processes on free
//! loopback ports and temporary data directories, which tests can SIGKILL and restart.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod cluster;

/// A free loopback port (bound and released), never one this process handed out before:
/// tests of one binary run in parallel, and two standalones of theirs must not be given the
/// same port between its release and their bind.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free port not handed out before in 100 tries")
}

/// `GET path` over plain HTTP/1.1 at `address` (`host:port`): the whole response, status
/// line and headers included.
pub async fn http_get(address: &str, path: &str) -> anyhow::Result<String> {
    http_get_with(address, path, &[]).await
}

/// [`http_get`] with more request headers.
pub async fn http_get_with(address: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<String> {
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{extra}Connection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(address).await.with_context(|| format!("connect to {address}"))?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
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
    /// More flags for `magnetar standalone` (e.g. `--num-bookies 3`), on every start.
    extra_args: Vec<String>,
    starts: u32,
}

impl Standalone {
    /// Starts standalone on a fresh data dir and free ports, and waits until it serves.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_args(&[]).await
    }

    /// Starts standalone with more flags (kept for restarts) and waits until it serves.
    pub async fn start_with_args(extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut standalone = Self::unstarted(extra_args)?;
        standalone.spawn().await?;
        Ok(standalone)
    }

    fn unstarted(extra_args: &[&str]) -> anyhow::Result<Self> {
        Ok(Standalone {
            child: None,
            dir: tempfile::tempdir().context("create temp dir")?,
            pulsar_port: free_port()?,
            http_port: free_port()?,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            starts: 0,
        })
    }

    /// Runs standalone with flags it must refuse: fails if it serves instead of exiting.
    /// Returns its exit status and output.
    pub async fn start_expecting_exit(extra_args: &[&str]) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let mut standalone = Self::unstarted(extra_args)?;
        standalone.launch()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = standalone.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    standalone.child = None;
                    return Ok((status, standalone.log()));
                }
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", standalone.pulsar_port)).await.is_ok() {
                bail!("standalone started although it should have refused\n--- log ---\n{}", standalone.log());
            }
            if Instant::now() > deadline {
                bail!("standalone neither exited nor served within 60 s\n--- log ---\n{}", standalone.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        self.launch()?;
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

    fn launch(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).context("create log file")?;
        let child = Command::new(binary("magnetar")?)
            .arg("standalone")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--bind-address", "127.0.0.1", "--advertised-address", "127.0.0.1"])
            .args(["--pulsar-port", &self.pulsar_port.to_string(), "--http-port", &self.http_port.to_string()])
            .args(&self.extra_args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn magnetar standalone")?;
        self.child = Some(child);
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

/// The line `magnetar bookie` prints on stderr once it serves, followed by its address.
pub const BOOKIE_LISTENING_LINE: &str = "magnetar bookie listening on ";
/// The line `magnetar bookie` prints before it, followed by its HTTP server's address.
pub const BOOKIE_HTTP_LINE: &str = "magnetar bookie http on ";

/// How a [`BookieProcess`] is started.
#[derive(Debug, Clone)]
pub struct BookieOptions {
    pub bookie_id: String,
    /// `etcd://...` or `local:/path`.
    pub metadata_url: String,
    pub data_dir: PathBuf,
    /// `None`: the bookie's default, `<data dir>/journal`.
    pub journal_dir: Option<PathBuf>,
    /// `host:port` to bind; port 0 picks a free port on every start.
    pub listen: String,
    /// `host:port` of the HTTP server (metrics, state); port 0 as `listen`.
    pub http_listen: String,
    /// More arguments for `magnetar bookie` (e.g. `--config FILE`).
    pub extra_args: Vec<String>,
}

impl BookieOptions {
    /// A bookie with its data under `dir/<bookie id>`, on any free loopback port.
    pub fn new(bookie_id: &str, metadata_url: &str, dir: &Path) -> Self {
        BookieOptions {
            bookie_id: bookie_id.to_owned(),
            metadata_url: metadata_url.to_owned(),
            data_dir: dir.join(bookie_id),
            journal_dir: None,
            listen: "127.0.0.1:0".to_owned(),
            http_listen: "127.0.0.1:0".to_owned(),
            extra_args: Vec::new(),
        }
    }
}

/// A `magnetar bookie` process that tests can SIGKILL and restart on the same directories.
/// Its output of each start goes to `<data dir>/../<bookie id>-<start>.log`.
pub struct BookieProcess {
    child: Option<Child>,
    options: BookieOptions,
    /// Where the bookie of the latest start listens (set once it printed its address).
    address: Option<std::net::SocketAddr>,
    starts: u32,
}

impl BookieProcess {
    /// Starts a bookie and waits until it serves.
    pub async fn start(options: BookieOptions) -> anyhow::Result<Self> {
        let mut bookie = BookieProcess { child: None, options, address: None, starts: 0 };
        bookie.launch()?;
        bookie.wait_listening().await?;
        Ok(bookie)
    }

    pub fn options(&self) -> &BookieOptions {
        &self.options
    }

    /// Where the running bookie listens.
    pub fn address(&self) -> anyhow::Result<std::net::SocketAddr> {
        self.address.context("the bookie is not serving")
    }

    /// `http://host:port` of the running bookie's HTTP server (metrics, state).
    pub fn http_url(&self) -> anyhow::Result<String> {
        let log = self.log();
        let address = log
            .lines()
            .find_map(|line| line.strip_prefix(BOOKIE_HTTP_LINE))
            .context("the bookie printed no HTTP address")?;
        Ok(format!("http://{}", address.trim()))
    }

    /// `http://host:port`, for a gRPC channel.
    pub fn grpc_url(&self) -> anyhow::Result<String> {
        Ok(format!("http://{}", self.address()?))
    }

    fn log_path(&self, start: u32) -> PathBuf {
        let parent = self.options.data_dir.parent().unwrap_or(&self.options.data_dir);
        parent.join(format!("{}-{start}.log", self.options.bookie_id))
    }

    /// The output of the latest start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        self.address = None;
        let log_path = self.log_path(self.starts);
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).context("create the log dir")?;
        }
        let log = File::create(&log_path).context("create bookie log file")?;
        let mut command = Command::new(binary("magnetar")?);
        command
            .arg("bookie")
            .args(["--bookie-id", &self.options.bookie_id])
            .args(["--metadata-url", &self.options.metadata_url])
            .arg("--data-dir")
            .arg(&self.options.data_dir)
            .args(["--listen", &self.options.listen])
            .args(["--http-listen", &self.options.http_listen]);
        if let Some(journal_dir) = &self.options.journal_dir {
            command.arg("--journal-dir").arg(journal_dir);
        }
        let child = command
            .args(&self.options.extra_args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn magnetar bookie")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits for the `listening on` line; fails with the log if the bookie exits first.
    async fn wait_listening(&mut self) -> anyhow::Result<std::net::SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if let Some(address) = log.lines().find_map(|line| line.strip_prefix(BOOKIE_LISTENING_LINE)) {
                let address = address.trim().parse().with_context(|| format!("bookie address {address:?}"))?;
                self.address = Some(address);
                return Ok(address);
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("magnetar bookie exited during startup ({status})\n--- log ---\n{log}");
                }
            }
            if Instant::now() > deadline {
                bail!("magnetar bookie did not start within 60 s\n--- log ---\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill -9 bookie")?;
            child.wait().context("reap bookie")?;
        }
        self.address = None;
        Ok(())
    }

    /// SIGKILLs the bookie if it runs, starts it again on the same directories and waits
    /// until it serves (on a new port if `listen` has port 0).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.launch()?;
        self.wait_listening().await?;
        Ok(())
    }

    /// SIGKILLs the bookie if it runs, starts it again, and waits for it to exit on its own
    /// (a start that must be refused); fails if it serves instead. Returns its exit status
    /// and output.
    pub async fn restart_expecting_exit(&mut self) -> anyhow::Result<(std::process::ExitStatus, String)> {
        self.kill9()?;
        self.launch()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Ok((status, self.log()));
                }
            }
            if self.log().contains(BOOKIE_LISTENING_LINE) {
                bail!("magnetar bookie started although it should have refused\n--- log ---\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("magnetar bookie neither exited nor served within 60 s\n--- log ---\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for BookieProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- magnetar bookie {} log ---\n{}", self.options.bookie_id, self.log());
        }
    }
}

/// One HTTP/1.1 request to `127.0.0.1:port` with `Connection: close`; the status and the JSON
/// body (Null if empty).
pub async fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut port = port;
    let mut path = path.to_owned();
    // Follows loopback redirects (a broker sending an admin call or a lookup to the owner).
    for _ in 0..4 {
        let (status, json, location) = http_once(port, method, &path, body, &[]).await?;
        let Some(location) = location.filter(|_| status == 307 || status == 308) else { return Ok((status, json)) };
        let rest = location
            .strip_prefix("http://127.0.0.1:")
            .ok_or_else(|| anyhow::anyhow!("redirect off loopback: {location}"))?;
        let (next_port, next_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        port = next_port.parse()?;
        path = next_path.to_owned();
    }
    anyhow::bail!("too many redirects for {method} {path}")
}

/// One HTTP/1.1 request with extra headers (`Authorization`, ...), redirects not followed.
pub async fn http_with_headers(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, json, _) = http_once(port, method, path, body, headers).await?;
    Ok((status, json))
}

/// One request; the status, JSON body and Location header.
async fn http_once(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, serde_json::Value, Option<String>)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let body = body.unwrap_or("");
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n\
         {extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await??;
    let reply = String::from_utf8(reply)?;
    let (head, content) = reply.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no header end: {reply}"))?;
    let status = head.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("no status: {head}"))?.parse()?;
    // Small bodies may come chunked; this harness asks for them unchunked by closing, but
    // strip a chunk header if one is there.
    let content = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        content.lines().nth(1).unwrap_or("").to_owned()
    } else {
        content.to_owned()
    };
    let json = if content.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&content)? };
    let location = head
        .lines()
        .find_map(|line| line.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("location")))
        .map(|(_, value)| value.trim().to_owned());
    Ok((status, json, location))
}

/// A raw Pulsar protocol connection, for tests that send exact frames.
pub type RawConn = tokio_util::codec::Framed<tokio::net::TcpStream, magnetar_proto::frame::FrameCodec>;

/// Connects to `127.0.0.1:port` as client `name` and waits for CONNECTED.
pub async fn raw_connect(port: u16, name: &str) -> anyhow::Result<RawConn> {
    use futures::SinkExt;
    use magnetar_proto::frame::{Frame, FrameCodec};
    use magnetar_proto::pulsar::base_command::Type;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut conn = tokio_util::codec::Framed::new(stream, FrameCodec::default());
    conn.send(Frame::simple(magnetar_proto::command::connect(name, None, None))).await?;
    let answer = raw_receive(&mut conn).await?;
    anyhow::ensure!(answer.command_type() == Some(Type::Connected), "expected CONNECTED, got {answer:?}");
    Ok(conn)
}

/// The next frame, within 10 seconds.
pub async fn raw_receive(conn: &mut RawConn) -> anyhow::Result<magnetar_proto::frame::Frame> {
    use futures::StreamExt;
    Ok(tokio::time::timeout(Duration::from_secs(10), conn.next())
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 10 s"))?
        .ok_or_else(|| anyhow::anyhow!("connection closed"))??)
}

/// A client of our library that retries quickly (the tests wait for the broker, not for
/// backoff), with this operation timeout (the client's default is 30 s).
pub async fn fast_retry_client(
    service_url: &str,
    operation_timeout: Duration,
) -> anyhow::Result<magnetar_client::Client> {
    let config = magnetar_client::ClientConfig {
        operation_timeout,
        initial_backoff_interval: Duration::from_millis(50),
        max_backoff_interval: Duration::from_millis(500),
        ..Default::default()
    };
    Ok(magnetar_client::Client::connect_with_config(service_url, config).await?)
}
