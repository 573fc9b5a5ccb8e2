//! A real bookie server in the test process for the integration tests of this crate: gRPC on
//! loopback, registered in the test's metadata store. Each bookie runs on its own tokio
//! runtime, so that killing it (dropping the runtime) cuts its connections the way a crashed
//! process would.

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use magnetar_bookie::registration::{self, BookieRegistration};
use magnetar_bookie::{BookieConfig, BookieServer};
use magnetar_meta::{MetadataStore, SessionId};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub struct TestBookie {
    pub bookie_id: String,
    runtime: Option<tokio::runtime::Runtime>,
    session: SessionId,
    _dir: TempDir,
}

impl TestBookie {
    /// Opens a bookie in a temp dir, serves it on a free loopback port and registers it (on
    /// `host` for placement, if given; else its address's host).
    pub async fn start(
        meta: &Arc<dyn MetadataStore>,
        bookie_id: &str,
        host: Option<&str>,
    ) -> anyhow::Result<TestBookie> {
        let dir = TempDir::new().context("bookie dir")?;
        let config = BookieConfig::new(bookie_id, dir.path());
        let server = BookieServer::open(&config).context("open bookie")?;
        let listener = StdListener::bind("127.0.0.1:0").context("bind")?;
        listener.set_nonblocking(true).context("nonblocking")?;
        let address = listener.local_addr().context("address")?.to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("bookie runtime")?;
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener into tokio");
            let _ = server.run(listener, CancellationToken::new()).await;
        });
        let mut registration = BookieRegistration::new(bookie_id, address);
        if let Some(host) = host {
            registration = registration.with_host(host);
        }
        let session = registration::register(meta.as_ref(), &registration, Duration::from_secs(30))
            .await
            .context("register bookie")?;
        Ok(TestBookie { bookie_id: bookie_id.to_owned(), runtime: Some(runtime), session, _dir: dir })
    }

    /// Stops the bookie abruptly (connections cut) and unregisters it.
    pub async fn kill(&mut self, meta: &Arc<dyn MetadataStore>) -> anyhow::Result<()> {
        self.stop_runtime();
        meta.close_session(self.session).await.context("unregister bookie")?;
        Ok(())
    }

    /// Drops the bookie's runtime (its tasks and connections) and waits until its storage is
    /// closed, on a plain thread: a runtime cannot be dropped inside another, and RocksDB must
    /// not be torn down while the process exits.
    fn stop_runtime(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            let stopper = std::thread::spawn(move || runtime.shutdown_timeout(Duration::from_secs(10)));
            let _ = stopper.join();
        }
    }
}

impl Drop for TestBookie {
    fn drop(&mut self) {
        self.stop_runtime();
    }
}
