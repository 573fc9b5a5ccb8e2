//! One running bookie node: the start and stop sequence that `magnetar bookie` and standalone
//! share.
//!
//! Start: check the cookie (refuse wiped or swapped disks), open storage (journal replay),
//! start the disk monitor and the HTTP server (metrics, state), serve BookieService on the
//! given listener, register the bookie in
//! metadata under a session (an ephemeral key that lapses [`REGISTRATION_TTL`] after the
//! bookie loses contact; when the session is lost, after a pause or a partition longer than
//! that, the bookie registers again under a new one), and start the auto-recovery worker
//! when the config enables it.
//! Stop, in reverse: auto-recovery, the registration (so brokers stop choosing this bookie),
//! serving (the server drains and closes the bookie), the disk monitor. Each wait is bounded
//! by [`SHUTDOWN_GRACE`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use magnetar_meta::{retry_transient, MetadataStore, SessionId, STARTUP_PATIENCE};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::autorecovery::AutoRecovery;
use crate::client::Bookies;
use crate::cookie::{self, Cookie};
use crate::disk::DiskMonitor;
use crate::http::BookieHttp;
use crate::registration::{self, BookieRegistration};
use crate::security::ClientSecurity;
use crate::{BookieConfig, BookieError, BookieServer};

/// How long a bookie's registration (and an auto-recovery worker's lock) outlives contact
/// with the metadata store.
pub const REGISTRATION_TTL: Duration = Duration::from_secs(10);
/// Longest a stopping bookie waits for each of its tasks to end.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// A bookie serving and registered; [`BookieNode::stop`] takes it down.
pub struct BookieNode {
    bookie_id: String,
    /// The address the listener is bound to.
    local: SocketAddr,
    /// The address registered for others to reach it.
    address: String,
    cookie: Cookie,
    meta: Arc<dyn MetadataStore>,
    /// The registration's current session (replaced when a lost one is registered again).
    session: Arc<std::sync::Mutex<SessionId>>,
    /// Stops registering again.
    registration_cancel: CancellationToken,
    /// `None` once it ended and its result was taken.
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    /// Stops serving (the server closes the bookie once drained).
    serve_cancel: CancellationToken,
    disk_monitor: JoinHandle<()>,
    disk_cancel: CancellationToken,
    /// The HTTP server's routes (also rendered by standalone's broker), and where it listens.
    http: BookieHttp,
    http_local: Option<SocketAddr>,
    http_cancel: CancellationToken,
    autorecovery: Option<(JoinHandle<()>, CancellationToken)>,
}

impl BookieNode {
    /// Starts the bookie of `config` on `listener`, registered as reachable at
    /// `advertised_host` (with the listener's port) and on host `config.host_name` (else the
    /// advertised host).
    pub async fn start(
        config: &BookieConfig,
        meta: Arc<dyn MetadataStore>,
        listener: TcpListener,
        advertised_host: &str,
    ) -> Result<Self, BookieError> {
        // The auto-recovery worker's credentials are read before anything starts.
        let client_security = ClientSecurity::from_config(&config.client)?;
        // Each metadata step is tried again while etcd is unreachable or electing a leader,
        // for up to STARTUP_PATIENCE: that is no reason to exit.
        let transient = |error: &BookieError| matches!(error, BookieError::Meta(meta) if meta.is_transient());
        let cookie = retry_transient("checking the bookie's cookie", STARTUP_PATIENCE, transient, || {
            cookie::verify_or_create(meta.as_ref(), config)
        })
        .await?;
        let open_config = config.clone();
        let server = tokio::task::spawn_blocking(move || BookieServer::open(&open_config))
            .await
            .map_err(|_| BookieError::Stopped { what: "opening bookie storage" })??;
        let local = listener.local_addr().map_err(|source| BookieError::Io { path: config.listen.clone(), source })?;
        let address = crate::server::advertised(local, advertised_host);

        let http = BookieHttp::new(server.bookie().clone());
        let http_cancel = CancellationToken::new();
        let http_local = if config.http_listen.is_empty() {
            None
        } else {
            let http_error = |source| BookieError::Io { path: format!("http_listen {}", config.http_listen), source };
            let http_listener = TcpListener::bind(&config.http_listen).await.map_err(http_error)?;
            let http_local = http_listener.local_addr().map_err(http_error)?;
            let serving = http.clone().serve(http_listener, http_cancel.clone());
            tokio::spawn(async move {
                if let Err(error) = serving.await {
                    warn!(%error, "bookie HTTP server stopped");
                }
            });
            Some(http_local)
        };
        let disk_cancel = CancellationToken::new();
        let disk_monitor = DiskMonitor::new(config, server.bookie().read_only_flag()).spawn(disk_cancel.clone());
        let serve_cancel = CancellationToken::new();
        let server = tokio::spawn(server.run(listener, serve_cancel.clone()));
        let host = config.host_name.clone().unwrap_or_else(|| registration::host_of(&address).to_owned());
        let registration = BookieRegistration::new(config.bookie_id.clone(), address.clone())
            .with_host(host)
            .with_tls(config.tls_certificate_path.is_some())
            .with_http(http_local.map(|local| crate::server::advertised(local, advertised_host)).unwrap_or_default());
        let registered = retry_transient("registering the bookie", STARTUP_PATIENCE, transient, || {
            registration::register(meta.as_ref(), &registration, REGISTRATION_TTL)
        });
        let session = match registered.await {
            Ok(session) => session,
            Err(error) => {
                serve_cancel.cancel();
                disk_cancel.cancel();
                http_cancel.cancel();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
                return Err(error);
            }
        };
        let session = Arc::new(std::sync::Mutex::new(session));
        let registration_cancel = CancellationToken::new();
        tokio::spawn(keep_registered(meta.clone(), registration, session.clone(), registration_cancel.clone()));
        let autorecovery_metrics = crate::metrics::AutoRecoveryMetrics::default();
        autorecovery_metrics.register(http.registry());
        let autorecovery = config.autorecovery.enabled.then(|| {
            let cancel = CancellationToken::new();
            let worker = AutoRecovery::with_bookies(
                Bookies::secured(meta.clone(), client_security),
                config.bookie_id.clone(),
                config.autorecovery.clone(),
                REGISTRATION_TTL,
            )
            .with_metrics(autorecovery_metrics);
            (tokio::spawn(worker.run(cancel.clone())), cancel)
        });
        Ok(BookieNode {
            bookie_id: config.bookie_id.clone(),
            local,
            address,
            cookie,
            meta,
            session,
            registration_cancel,
            server: Some(server),
            serve_cancel,
            disk_monitor,
            disk_cancel,
            http,
            http_local,
            http_cancel,
            autorecovery,
        })
    }

    pub fn bookie_id(&self) -> &str {
        &self.bookie_id
    }

    /// The address the bookie's listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Where the bookie's HTTP server listens (none when `http_listen` is empty).
    pub fn http_local_addr(&self) -> Option<SocketAddr> {
        self.http_local
    }

    /// The bookie's HTTP routes: its metrics and state, for a process that serves them itself.
    pub fn http(&self) -> &BookieHttp {
        &self.http
    }

    /// The address the bookie is registered at.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn cookie(&self) -> &Cookie {
        &self.cookie
    }

    /// Resolves if the server stops without being asked to (its error, if any). Cancel-safe:
    /// dropping it leaves the server running.
    pub async fn failed(&mut self) -> Result<(), BookieError> {
        self.served().await
    }

    async fn served(&mut self) -> Result<(), BookieError> {
        let Some(server) = self.server.as_mut() else { return Ok(()) };
        let result = server.await;
        self.server = None;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(BookieError::Transport { bookie: self.bookie_id.clone(), source }),
            Err(_) => Err(BookieError::Stopped { what: "bookie server task" }),
        }
    }

    /// Stops the bookie: auto-recovery, registration, serving (drained), disk monitor. A
    /// server that does not drain within [`SHUTDOWN_GRACE`] is left behind with a warning.
    pub async fn stop(mut self) -> Result<(), BookieError> {
        if let Some((task, cancel)) = self.autorecovery.take() {
            cancel.cancel();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, task).await;
        }
        self.registration_cancel.cancel();
        let session = *self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = self.meta.close_session(session).await {
            warn!(bookie_id = %self.bookie_id, %error, "closing the bookie's metadata session (its registration expires with the session)");
        }
        self.serve_cancel.cancel();
        self.disk_cancel.cancel();
        self.http_cancel.cancel();
        let _ = (&mut self.disk_monitor).await;
        match tokio::time::timeout(SHUTDOWN_GRACE, self.served()).await {
            Ok(result) => result,
            Err(_) => {
                warn!(bookie_id = %self.bookie_id, "bookie did not drain within {SHUTDOWN_GRACE:?}");
                Ok(())
            }
        }
    }
}

/// Registers the bookie again whenever its session is lost (a pause or a partition longer
/// than [`REGISTRATION_TTL`]: the registration lapsed, and brokers could no longer find the
/// bookie, even for the ledgers it holds), until `cancel` fires.
async fn keep_registered(
    meta: Arc<dyn MetadataStore>,
    registration: BookieRegistration,
    session: Arc<std::sync::Mutex<SessionId>>,
    cancel: CancellationToken,
) {
    loop {
        let current = *session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = meta.session_lost(current) => {}
        }
        warn!(bookie_id = %registration.bookie_id, "the bookie's metadata session is lost; registering again");
        loop {
            let registered = tokio::select! {
                _ = cancel.cancelled() => return,
                registered = registration::register(meta.as_ref(), &registration, REGISTRATION_TTL) => registered,
            };
            match registered {
                Ok(new) => {
                    *session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = new;
                    tracing::info!(bookie_id = %registration.bookie_id, "bookie registered again");
                    break;
                }
                Err(error) => {
                    warn!(bookie_id = %registration.bookie_id, %error, "registering the bookie again failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}
