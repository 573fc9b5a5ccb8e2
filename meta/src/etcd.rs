//! `EtcdStore`: the [`MetadataStore`] of a Magnetar cluster, kept in etcd (v3 API).
//!
//! **Mapping.** A key's [`Version`] is etcd's `mod_revision`. Conditional writes are one `Txn`:
//! `Expected::Absent` compares `create_revision == 0`; `Expected::Version(v)` compares
//! `create_revision > 0` and `mod_revision == v`. Sessions are leases and ephemeral keys are
//! attached to them. Only KV, Txn, Lease and Watch are used, all present in etcd 3.4.
//!
//! **Concurrency.** The `etcd_client::Client` is cheap to clone; each call clones the part it
//! needs, so calls run concurrently. Every unary call is bounded by [`OPERATION_TIMEOUT`].
//! Two kinds of background task exist, each stopped by a `CancellationToken` that is a child
//! of the store's, which is cancelled when the last clone of the store is dropped:
//!
//! - one keep-alive task per session, refreshing its lease every ttl/4 through every etcd
//!   member at once (each member's stream reopened after an error) until the session is closed or the store dropped;
//!   after that the lease expires on the server within its ttl and its keys vanish. When no
//!   refresh sent in the last ttl/2 ([`LOCAL_EXPIRY_FRACTION`]) succeeded, the session counts
//!   as lost here ([`MetadataStore::session_lost`] resolves, `put_ephemeral` fails with
//!   `SessionExpired`) and is no longer refreshed: the server cannot expire the lease before
//!   a whole ttl after the last successful refresh was sent, so the process learns of the
//!   loss at least ttl/2 before anyone else can take its keys, even when it cannot reach
//!   etcd at all (a partition) and so would never hear etcd say the lease is gone;
//! - one forwarding task per watch, moving etcd watch events into a bounded channel of
//!   [`WATCH_CAPACITY`]. It never waits for a slow reader: when the channel is full, or the
//!   etcd watch fails, it stops and the channel closes; the reader must re-read and re-watch.
//!
//! Operations are not cancel-safe: a write whose future is dropped may still be applied.
//!
//! **Security.** [`EtcdStore::connect_with`] takes [`EtcdOptions`]: an etcd user (etcd-client
//! authenticates on connect and again when etcd says its token is stale) and TLS (the
//! endpoints are dialed with `https`; a client certificate for `--client-cert-auth`).

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseClient, PutOptions, ResponseHeader, Txn,
    TxnOp, WatchOptions, WatchStream,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    key, EtcdOptions, Expected, MetaError, MetadataStore, Result, SessionId, Version, Versioned, Watch, WatchEvent,
};

/// How many events a watcher may fall behind before it is cut off.
pub const WATCH_CAPACITY: usize = 1024;
/// The longest any single etcd request may take before it fails with
/// [`MetaError::EtcdTimeout`].
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit for opening a TCP connection to an etcd endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 ping interval and timeout, so a dead connection is noticed while idle.
/// (A lost etcd member is noticed within about 6 s, and its requests go to the others.)
const HTTP2_KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(3));
/// First pause before reopening a failed lease keep-alive stream (doubling up to ttl/4).
const KEEP_ALIVE_RETRY: Duration = Duration::from_millis(200);
/// A session whose lease has not been refreshed successfully for this fraction of its ttl
/// (measured from when the last successful refresh was sent) counts as lost locally.
pub const LOCAL_EXPIRY_FRACTION: f64 = 0.5;
/// How often the lease is refreshed, as a fraction of its ttl: twice within the local expiry.
const REFRESH_FRACTION: f64 = 0.25;

/// One open session: `stop` ends its keep-alive task; `lost` fires when the session counts
/// as lost (the lease is gone, or was not refreshed in time).
struct Session {
    stop: CancellationToken,
    lost: CancellationToken,
}

/// A metadata store in an etcd cluster. Cheap to clone: clones share the connection, sessions
/// and background tasks, which stop when the last clone is dropped.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The endpoints, comma-separated, for error messages.
    endpoint: String,
    /// Each endpoint, and how to connect to one: each session's keep-alive refreshes through
    /// every member at once.
    endpoints: Vec<String>,
    connect: ConnectOptions,
    /// Open sessions by lease id.
    sessions: Mutex<HashMap<i64, Session>>,
    /// Parent of every background task's token; cancelled on drop.
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`127.0.0.1:2379` or
    /// `http://127.0.0.1:2379`) and checks that it answers a read.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        Self::connect_with(endpoints, &EtcdOptions::default()).await
    }

    /// Connects as `options`' etcd user and over its TLS (the endpoints are then dialed with
    /// `https`), and checks that it answers a read.
    ///
    /// Errors: [`MetaError::InvalidConfig`] for settings that cannot be used (a file that
    /// cannot be read names the setting and the file), [`MetaError::EtcdAuthentication`] when
    /// etcd refuses the user, [`MetaError::Etcd`] or [`MetaError::EtcdTimeout`] otherwise
    /// (TLS failures among them). None of them holds the password.
    pub async fn connect_with(endpoints: &[String], options: &EtcdOptions) -> Result<EtcdStore> {
        require_tls_settings_for_https(endpoints, options)?;
        let endpoints = options.endpoints(endpoints);
        let endpoint = endpoints.join(",");
        let connect = options.apply(
            ConnectOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_keep_alive(HTTP2_KEEP_ALIVE.0, HTTP2_KEEP_ALIVE.1)
                .with_keep_alive_while_idle(true)
                // etcd forgets a token after --auth-token-ttl (300 s) unused, and jwt tokens
                // expire outright: without this, every call after that would fail until the
                // store is reopened. (Only acts when a user is set.)
                .with_auto_token_refresh(true),
        )?;
        let client = bounded(&endpoint, "connect", Client::connect(&endpoints, Some(connect.clone()))).await?;
        let mut kv = client.kv_client();
        bounded(&endpoint, "connect (first read)", kv.get("/", Some(GetOptions::new().with_count_only()))).await?;
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                client,
                endpoint,
                endpoints,
                connect,
                sessions: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        future: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        bounded(&self.inner.endpoint, operation, future).await
    }

    /// Opens a watch on `prefix` and waits for etcd to confirm it: the stream, or the reason
    /// etcd gave for not creating it.
    async fn open_watch(&self, prefix: &str) -> Result<std::result::Result<WatchStream, String>> {
        let mut watch_client = self.inner.client.watch_client();
        let mut stream =
            self.call("watch", watch_client.watch(prefix, Some(WatchOptions::new().with_prefix()))).await?;
        Ok(match self.call("watch (confirmation)", stream.message()).await? {
            Some(response) if response.created() && !response.canceled() => Ok(stream),
            Some(response) => Err(format!("watch not created: {}", response.cancel_reason())),
            None => Err("watch stream ended before it was created".to_owned()),
        })
    }

    fn watch_not_created(&self, reason: String) -> MetaError {
        MetaError::Etcd { endpoint: self.inner.endpoint.clone(), source: etcd_client::Error::WatchError(reason) }
    }

    /// `put` and `put_ephemeral`: `lease` 0 means a persistent key.
    async fn put_with_lease(&self, key: &str, value: Vec<u8>, expected: Expected, lease: i64) -> Result<Version> {
        key::validate(key)?;
        let options = PutOptions::new().with_lease(lease);
        let result = match condition(key, expected) {
            None => {
                let mut kv = self.inner.client.kv_client();
                self.call("put", kv.put(key, value, Some(options)))
                    .await
                    .and_then(|response| revision(key, response.header()))
            }
            Some(compares) => {
                let txn = Txn::new().when(compares).and_then(vec![TxnOp::put(key, value, Some(options))]);
                self.conditional("conditional put", key, expected, txn).await
            }
        };
        result.map_err(|error| {
            if lease != 0 && is_not_found(&error) {
                MetaError::SessionExpired { session: lease }
            } else {
                error
            }
        })
    }

    /// Runs `txn` and answers the revision it wrote at, or `BadVersion` if its compares failed.
    async fn conditional(&self, operation: &'static str, key: &str, expected: Expected, txn: Txn) -> Result<Version> {
        let mut kv = self.inner.client.kv_client();
        let response = self.call(operation, kv.txn(txn)).await?;
        if !response.succeeded() {
            return Err(MetaError::bad_version(key, expected));
        }
        revision(key, response.header())
    }
}

#[async_trait]
impl MetadataStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        key::validate(key)?;
        let mut kv = self.inner.client.kv_client();
        let response = self.call("get", kv.get(key, None)).await?;
        Ok(response
            .kvs()
            .first()
            .map(|found| Versioned { value: found.value().to_vec(), version: found.mod_revision() }))
    }

    async fn put(&self, key: &str, value: Vec<u8>, expected: Expected) -> Result<Version> {
        self.put_with_lease(key, value, expected, 0).await
    }

    async fn delete(&self, key: &str, expected: Expected) -> Result<()> {
        key::validate(key)?;
        match condition(key, expected) {
            None => {
                let mut kv = self.inner.client.kv_client();
                self.call("delete", kv.delete(key, None)).await?;
            }
            Some(compares) => {
                // Deleting an absent key "expected absent" is a successful no-op.
                let operations = match expected {
                    Expected::Absent => vec![],
                    _ => vec![TxnOp::delete(key, None)],
                };
                let txn = Txn::new().when(compares).and_then(operations);
                self.conditional("conditional delete", key, expected, txn).await?;
            }
        }
        Ok(())
    }

    /// One range read of all keys under `path` (keys only); fine for metadata directories,
    /// whose listings stay far below etcd's response size limit.
    async fn list_children(&self, path: &str) -> Result<Vec<String>> {
        key::validate(path)?;
        let prefix = key::children_prefix(path);
        let mut kv = self.inner.client.kv_client();
        let options = GetOptions::new().with_prefix().with_keys_only();
        let response = self.call("list children", kv.get(prefix.as_str(), Some(options))).await?;
        let mut children = BTreeSet::new();
        for found in response.kvs() {
            match found.key_str() {
                Ok(found_key) => {
                    if let Some(child) = key::child_of(&prefix, found_key) {
                        children.insert(child.to_owned());
                    }
                }
                Err(_) => debug!(prefix = %prefix, "skipping a non-UTF-8 key written by another client"),
            }
        }
        Ok(children.into_iter().collect())
    }

    /// Returns once etcd has confirmed the watch, so every change after the call is seen.
    async fn watch(&self, prefix: &str) -> Result<Watch> {
        key::validate(prefix)?;
        let stream = match self.open_watch(prefix).await? {
            Ok(stream) => stream,
            // etcd cancels a new watch at once when the client's token went stale (unused
            // for --auth-token-ttl), as an answer rather than as an Unauthenticated status,
            // so etcd-client's automatic refresh does not see it: authenticate again and
            // retry once.
            Err(reason) if reason.contains("invalid auth token") => {
                debug!(prefix = %prefix, "etcd refused a stale token for a watch; authenticating again");
                self.call("authenticate (watch)", self.inner.client.refresh_token()).await?;
                self.open_watch(prefix).await?.map_err(|reason| self.watch_not_created(reason))?
            }
            Err(reason) => return Err(self.watch_not_created(reason)),
        };
        let (sender, receiver) = mpsc::channel(WATCH_CAPACITY);
        tokio::spawn(forward_watch(stream, sender, self.inner.shutdown.child_token(), prefix.to_owned()));
        Ok(receiver)
    }

    /// Grants a lease of `ttl` rounded up to whole seconds (at least 1; etcd may raise it to
    /// its minimum lease ttl) and keeps it alive in the background.
    async fn create_session(&self, ttl: Duration) -> Result<SessionId> {
        let ttl_seconds = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).unwrap_or(i64::MAX).max(1);
        let mut lease = self.inner.client.lease_client();
        // Taken before the grant is sent: etcd counts the ttl from when it grants, later.
        let granted_at = tokio::time::Instant::now();
        let granted = self.call("grant lease", lease.grant(ttl_seconds, None)).await?;
        let id = granted.id();
        let granted_ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(1).max(1));
        let cancel = self.inner.shutdown.child_token();
        let lost = CancellationToken::new();
        self.inner.sessions.lock().insert(id, Session { stop: cancel.clone(), lost: lost.clone() });
        let members = Member::all(&self.inner.endpoints, &self.inner.connect, lease);
        tokio::spawn(keep_alive(members, id, granted_ttl, granted_at, cancel, lost));
        Ok(SessionId(id))
    }

    async fn put_ephemeral(
        &self,
        session: SessionId,
        key: &str,
        value: Vec<u8>,
        expected: Expected,
    ) -> Result<Version> {
        if session.0 == 0 || self.lost_token(session).is_some_and(|lost| lost.is_cancelled()) {
            return Err(MetaError::SessionExpired { session: session.0 });
        }
        self.put_with_lease(key, value, expected, session.0).await
    }

    /// Stops the keep-alive and revokes the lease, which deletes its keys at once. Closing an
    /// unknown or expired session is a no-op.
    async fn close_session(&self, session: SessionId) -> Result<()> {
        let keeper = self.inner.sessions.lock().remove(&session.0);
        if let Some(keeper) = keeper {
            keeper.stop.cancel();
            keeper.lost.cancel();
        }
        let mut lease = self.inner.client.lease_client();
        match self.call("revoke lease", lease.revoke(session.0)).await {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn session_lost(&self, session: SessionId) {
        match self.lost_token(session) {
            Some(lost) => lost.cancelled().await,
            // Closed, or never opened by this store: not ours to keep, so it is lost.
            None => {}
        }
    }
}

impl EtcdStore {
    /// The token that fires when `session` counts as lost; None for a session this store does
    /// not keep (closed, or never opened here).
    fn lost_token(&self, session: SessionId) -> Option<CancellationToken> {
        self.inner.sessions.lock().get(&session.0).map(|open| open.lost.clone())
    }
}

/// Awaits an etcd call for at most [`OPERATION_TIMEOUT`], naming `endpoint` in errors.
async fn bounded<T>(
    endpoint: &str,
    operation: &'static str,
    future: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(OPERATION_TIMEOUT, future).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(source)) => Err(etcd_error(endpoint, source)),
        Err(_) => Err(MetaError::EtcdTimeout { endpoint: endpoint.to_owned(), operation, after: OPERATION_TIMEOUT }),
    }
}

/// An etcd error as a [`MetaError`]: refused credentials become
/// [`MetaError::EtcdAuthentication`], which says what to fix, the rest [`MetaError::Etcd`].
fn etcd_error(endpoint: &str, source: etcd_client::Error) -> MetaError {
    match &source {
        etcd_client::Error::GRpcStatus(status) => match authentication_failure(status) {
            Some(reason) => MetaError::EtcdAuthentication {
                endpoint: endpoint.to_owned(),
                reason,
                etcd_says: status.message().to_owned(),
            },
            None => MetaError::Etcd { endpoint: endpoint.to_owned(), source },
        },
        _ => MetaError::Etcd { endpoint: endpoint.to_owned(), source },
    }
}

/// What to fix when `status` is etcd refusing the client's credentials. etcd 3.4 answers
/// those with fixed messages (its `rpctypes`), some under the generic InvalidArgument code,
/// so the message is matched too.
fn authentication_failure(status: &tonic::Status) -> Option<&'static str> {
    let message = status.message();
    match status.code() {
        tonic::Code::InvalidArgument if message.contains("user name is empty") => {
            Some("etcd has authentication on and no etcd user was given (set user and password)")
        }
        tonic::Code::InvalidArgument if message.contains("authentication failed") => {
            Some("unknown etcd user or wrong password")
        }
        tonic::Code::FailedPrecondition if message.contains("authentication is not enabled") => {
            Some("an etcd user was given but etcd has authentication off")
        }
        // A token etcd no longer knows, and authenticating again failed or was not possible.
        tonic::Code::Unauthenticated => Some("etcd refused the client's authentication token"),
        _ => None,
    }
}

/// Refuses `https://` endpoints without `tls_trust_certs_file_path`: they would otherwise be
/// dialed without TLS (or with no CA to check etcd against), not what whoever wrote them meant.
fn require_tls_settings_for_https(endpoints: &[String], options: &EtcdOptions) -> Result<()> {
    match endpoints.iter().find(|endpoint| endpoint.starts_with("https://")) {
        Some(endpoint) if !options.tls() => Err(MetaError::InvalidConfig {
            setting: "tls_trust_certs_file_path".to_owned(),
            reason: format!("endpoint {endpoint} is https but no CA to check etcd's certificate is set"),
        }),
        _ => Ok(()),
    }
}

/// The Txn compares that make `expected` hold, or `None` for an unconditional operation.
fn condition(key: &str, expected: Expected) -> Option<Vec<Compare>> {
    match expected {
        Expected::Any => None,
        Expected::Absent => Some(vec![Compare::create_revision(key, CompareOp::Equal, 0)]),
        Expected::Version(version) => Some(vec![
            Compare::create_revision(key, CompareOp::Greater, 0),
            Compare::mod_revision(key, CompareOp::Equal, version),
        ]),
    }
}

/// The revision a write was applied at: its key's new `mod_revision`.
fn revision(key: &str, header: Option<&ResponseHeader>) -> Result<Version> {
    header.map(ResponseHeader::revision).ok_or_else(|| MetaError::Corrupt {
        key: key.to_owned(),
        reason: "etcd answered a write without a header".to_owned(),
    })
}

/// True for etcd's "requested lease not found" (gRPC NotFound): the session is gone.
fn is_not_found(error: &MetaError) -> bool {
    matches!(
        error,
        MetaError::Etcd { source: etcd_client::Error::GRpcStatus(status), .. } if status.code() == tonic::Code::NotFound
    )
}

/// Moves events from one etcd watch into `sender` until the reader falls behind or leaves,
/// the watch fails, or the store is dropped.
async fn forward_watch(
    mut stream: WatchStream,
    sender: mpsc::Sender<WatchEvent>,
    cancel: CancellationToken,
    prefix: String,
) {
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = sender.closed() => return,
            message = stream.message() => message,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                warn!(prefix = %prefix, "etcd closed the watch stream; closing the watch");
                return;
            }
            Err(error) => {
                warn!(prefix = %prefix, %error, "etcd watch failed; closing the watch");
                return;
            }
        };
        if response.canceled() {
            warn!(prefix = %prefix, reason = response.cancel_reason(), "etcd cancelled the watch; closing it");
            return;
        }
        for event in response.events() {
            let Some(changed) = event.kv() else { continue };
            let Ok(key) = changed.key_str() else {
                debug!(prefix = %prefix, "skipping a non-UTF-8 key written by another client");
                continue;
            };
            let key = key.to_owned();
            let watch_event = match event.event_type() {
                EventType::Put => {
                    WatchEvent::Put { key, value: changed.value().to_vec(), version: changed.mod_revision() }
                }
                EventType::Delete => WatchEvent::Delete { key },
            };
            match sender.try_send(watch_event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(prefix = %prefix, capacity = WATCH_CAPACITY, "watcher fell behind; closing its watch");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

/// Why one member's refresher stopped: only etcd saying the lease is gone stops it.
struct LeaseGone;

/// Refreshes lease `id` every `ttl / 4` through every etcd member at once until `cancel`
/// fires or the session is lost: etcd says the lease is gone, or no refresh sent in the last
/// `ttl / 2` succeeded (the local deadline; see the module docs). Either way `lost` fires and
/// the lease is left to expire.
///
/// Each member has its own client and keep-alive stream, so a member that stops answering
/// (isolated, paused, or a follower still forwarding to a leader it lost) costs nothing
/// while any other member answers: the session lives while a majority can refresh it,
/// whichever member that majority is reached through. (Trying members one after another
/// could spend the whole local deadline on a member that hangs and then on one that was
/// cut off; the chaos harness saw brokers stop that way when the etcd leader was isolated.)
/// With one endpoint, the store's own client is used.
async fn keep_alive(
    members: Vec<Member>,
    id: i64,
    ttl: Duration,
    granted_at: tokio::time::Instant,
    cancel: CancellationToken,
    lost: CancellationToken,
) {
    let local_expiry = ttl.mul_f64(LOCAL_EXPIRY_FRACTION);
    // When the last successful refresh was sent, through any member: the server keeps the
    // lease until at least a whole ttl after it.
    let refreshed_at = Mutex::new(granted_at);
    let deadline = || *refreshed_at.lock() + local_expiry;
    let refreshers = members.into_iter().map(|member| Box::pin(refresh_through(member, id, ttl, &refreshed_at)));
    let mut gone = futures::future::select_all(refreshers);
    // The deadline moves with every successful refresh: re-read when the timer fires.
    loop {
        let until = deadline();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = &mut gone => break,
            _ = tokio::time::sleep_until(until) => {
                if deadline() <= tokio::time::Instant::now() {
                    warn!(
                        lease = id,
                        ttl_ms = ttl.as_millis() as u64,
                        "session lease not refreshed through any etcd member for {local_expiry:?}: counting the session as lost before etcd may expire it"
                    );
                    break;
                }
            }
        }
    }
    lost.cancel();
}

/// Where one refresher sends its keep-alives.
enum Member {
    /// The store's own client (balanced over its endpoints).
    Shared(LeaseClient),
    /// One endpoint, through a client of its own, connected again after each failure (a
    /// connection to a member that stopped answering may hang rather than fail).
    Endpoint { endpoint: String, options: ConnectOptions },
}

impl Member {
    /// One member per endpoint, or the store's own client when there is one endpoint.
    fn all(endpoints: &[String], options: &ConnectOptions, shared: LeaseClient) -> Vec<Member> {
        if endpoints.len() <= 1 {
            return vec![Member::Shared(shared)];
        }
        let member = |endpoint: &String| Member::Endpoint { endpoint: endpoint.clone(), options: options.clone() };
        endpoints.iter().map(member).collect()
    }

    async fn client(&self) -> Result<LeaseClient, etcd_client::Error> {
        match self {
            Member::Shared(client) => Ok(client.clone()),
            Member::Endpoint { endpoint, options } => {
                Ok(Client::connect([endpoint], Some(options.clone())).await?.lease_client())
            }
        }
    }

    fn describe(&self) -> &str {
        match self {
            Member::Shared(_) => "any member",
            Member::Endpoint { endpoint, .. } => endpoint,
        }
    }
}

/// Keeps lease `id` alive through `member`: opens a keep-alive stream (which refreshes once)
/// and refreshes every `ttl / 4`, each attempt bounded by `ttl / 8`; after a failure, opens
/// the stream again after a pause that doubles up to `ttl / 4`. Every refresh that succeeds
/// moves `refreshed_at` to when it was sent (if later). Returns only when etcd says the lease
/// is gone. The first failure after a success is a warning, the rest are debug lines, so a
/// member that is down for long does not flood the log.
async fn refresh_through(
    member: Member,
    id: i64,
    ttl: Duration,
    refreshed_at: &Mutex<tokio::time::Instant>,
) -> LeaseGone {
    let period = ttl.mul_f64(REFRESH_FRACTION);
    let attempt = ttl.mul_f64(REFRESH_FRACTION / 2.0).max(Duration::from_millis(250));
    let refreshed = |sent: tokio::time::Instant| {
        let mut last = refreshed_at.lock();
        *last = (*last).max(sent);
    };
    let mut pause = KEEP_ALIVE_RETRY;
    let mut failing = false;
    let failed = |failing: &mut bool, reason: &str| {
        if *failing {
            debug!(lease = id, member = member.describe(), "{reason}");
        } else {
            warn!(lease = id, member = member.describe(), "{reason}; any other member keeps the session meanwhile");
            *failing = true;
        }
    };
    loop {
        let sent = tokio::time::Instant::now();
        let opened = tokio::time::timeout(attempt, async { member.client().await?.keep_alive(id).await }).await;
        let (mut keeper, mut responses) = match opened {
            // etcd-client opened the stream with a refresh and read its answer (ttl > 0).
            Ok(Ok(pair)) => {
                refreshed(sent);
                pair
            }
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(reason))) => {
                warn!(lease = id, %reason, member = member.describe(), "session lease is gone; stopping its keep-alive");
                return LeaseGone;
            }
            Ok(Err(error)) => {
                failed(&mut failing, &format!("cannot open lease keep-alive stream: {error}"));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(period);
                continue;
            }
            Err(_) => {
                failed(&mut failing, "opening lease keep-alive stream timed out");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(period);
                continue;
            }
        };
        if failing {
            debug!(lease = id, member = member.describe(), "lease keep-alive through this member works again");
        }
        failing = false;
        pause = KEEP_ALIVE_RETRY;
        loop {
            tokio::time::sleep(period).await;
            let sent = tokio::time::Instant::now();
            let answer = tokio::time::timeout(attempt, async {
                keeper.keep_alive().await?;
                responses.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(response))) if response.ttl() > 0 => refreshed(sent),
                Ok(Ok(Some(_))) => {
                    warn!(lease = id, member = member.describe(), "session lease expired; stopping its keep-alive");
                    return LeaseGone;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    failed(&mut failing, "lease keep-alive failed; opening the stream again");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconditional_writes_need_no_txn() {
        assert!(condition("/k", Expected::Any).is_none());
        assert_eq!(condition("/k", Expected::Absent).map(|compares| compares.len()), Some(1));
        assert_eq!(condition("/k", Expected::Version(3)).map(|compares| compares.len()), Some(2));
    }

    #[test]
    fn lease_not_found_means_session_gone() {
        let not_found = MetaError::Etcd {
            endpoint: "e".to_owned(),
            source: etcd_client::Error::GRpcStatus(tonic::Status::not_found("etcdserver: requested lease not found")),
        };
        assert!(is_not_found(&not_found));
        let unavailable = MetaError::Etcd {
            endpoint: "e".to_owned(),
            source: etcd_client::Error::GRpcStatus(tonic::Status::unavailable("no leader")),
        };
        assert!(!is_not_found(&unavailable));
    }
}
