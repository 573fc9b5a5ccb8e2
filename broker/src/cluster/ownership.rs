//! Bundle ownership: which broker serves which namespace bundle, held through ephemeral keys
//! of the broker's metadata session (an etcd lease in a cluster).
//!
//! Keys:
//! - `/magnetar/namespace/<tenant>/<namespace>/<range>`: the owner of a bundle, Pulsar's
//!   `NamespaceEphemeralData` (`nativeUrl`, `httpUrl`, `disabled`) plus the broker's key and
//!   process instance. Created with `Expected::Absent` under the owner's session: at most one
//!   owner at a time, gone when the owner releases it or its session ends (the broker died or
//!   lost the store for longer than the session timeout).
//! - `/magnetar/loadbalance/brokers/<host:http port>`: the live brokers and their load
//!   ([`super::load_report`]), which an unowned bundle's lookup reads to choose a broker
//!   ([`super::placement`]).
//!
//! **Invariants.** A broker serves a topic only while it holds its bundle's key and the bundle
//! is not being unloaded: [`Ownership::ensure_owned`] is checked before a topic opens and
//! again after. Acquiring is followed by a check that the bundle is still in the namespace's
//! layout (a split between reading the layout and acquiring releases the stale bundle). A
//! key of ours that is deleted or overwritten by anyone else means the bundle is lost: its
//! topics are closed at once ([`Ownership::take_lost`]). An unloading bundle's key stays,
//! marked `disabled`, until its topics are closed, so lookups wait instead of sending clients
//! to a broker that is still closing.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use magnetar_meta::{Expected, MetaError, MetadataStore, SessionId, Version, WatchEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cluster::broker_info::BrokerInfo;
use crate::cluster::bundles::{self, Bundle, Layout};
use crate::cluster::{load_report, placement};
use crate::error::BrokerError;
use crate::topic_name::TopicName;

pub const OWNERSHIP_PATH: &str = "/magnetar/namespace";
/// How long a lookup waits for a bundle being unloaded (or a dead owner's key) to go away
/// before answering ServiceNotReady (clients retry).
const OWNER_WAIT: Duration = Duration::from_secs(5);
/// Attempts of one lookup (each after a lost race or a wait).
const LOOKUP_ATTEMPTS: usize = 6;

pub fn ownership_path(bundle: &Bundle) -> String {
    format!("{OWNERSHIP_PATH}/{bundle}")
}

/// The value of an ownership key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerData {
    #[serde(flatten)]
    pub info: BrokerInfo,
    /// Set while the owner unloads the bundle.
    #[serde(default)]
    pub disabled: bool,
    /// The owning process (random per start): tells a key of this broker's previous life
    /// (same address, session not yet expired) from its own.
    #[serde(default)]
    pub instance: u64,
    /// The owner's metadata session (lease), which a peer may end once the owner is
    /// certainly gone ([`Ownership::lookup`]).
    #[serde(default)]
    pub session: i64,
}

/// Where a lookup sends the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupAnswer {
    /// This broker serves the topic.
    Connect(BrokerInfo),
    /// Another broker does (or is chosen to): look up again there, authoritatively.
    Redirect(BrokerInfo),
}

impl LookupAnswer {
    pub fn broker(&self) -> &BrokerInfo {
        match self {
            LookupAnswer::Connect(info) | LookupAnswer::Redirect(info) => info,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Owned {
    version: Version,
    unloading: bool,
}

pub struct Ownership {
    meta: Arc<dyn MetadataStore>,
    session: SessionId,
    me: BrokerInfo,
    instance: u64,
    default_bundles: u32,
    owned: Mutex<HashMap<Bundle, Owned>>,
    /// Set when the broker shuts down: lookups then send every unowned bundle elsewhere.
    draining: AtomicBool,
    /// Set when the metadata session counts as lost (`MetadataStore::session_lost`): nothing
    /// is owned or acquired any more.
    session_lost: AtomicBool,
    lost: Mutex<Option<mpsc::UnboundedSender<Bundle>>>,
    /// Assignments this broker made since the last load reports were read, so that a burst
    /// of lookups does not send every bundle to the same broker.
    recent_assignments: Mutex<HashMap<String, u32>>,
    /// When each owner last answered a connection probe: one probe per owner per
    /// [`PROBE_VALIDITY`], however many lookups redirect to it.
    probed_alive: Mutex<HashMap<String, std::time::Instant>>,
}

/// How long a broker that accepted a probe connection counts as alive.
const PROBE_VALIDITY: Duration = Duration::from_secs(2);

impl Ownership {
    /// Opens a session of `session_ttl` for this broker's ownership keys and watches them.
    /// Returns the ownership and the stream of bundles it lost (taken by someone else or
    /// gone with its session), whose topics the caller must close.
    pub async fn start(
        meta: Arc<dyn MetadataStore>,
        me: BrokerInfo,
        session_ttl: Duration,
        default_bundles: u32,
    ) -> Result<(Arc<Ownership>, mpsc::UnboundedReceiver<Bundle>), BrokerError> {
        let session = meta.create_session(session_ttl).await?;
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let ownership = Arc::new(Ownership {
            meta,
            session,
            me,
            instance: rand::random::<u64>() | 1,
            default_bundles,
            owned: Mutex::default(),
            draining: AtomicBool::new(false),
            session_lost: AtomicBool::new(false),
            lost: Mutex::new(Some(lost_tx)),
            recent_assignments: Mutex::default(),
            probed_alive: Mutex::default(),
        });
        let watch = match ownership.meta.watch(&format!("{OWNERSHIP_PATH}/")).await {
            Ok(watch) => watch,
            Err(error) => {
                // Not kept alive for nothing (the caller may try again with a new session).
                if let Err(closing) = ownership.meta.close_session(session).await {
                    debug!(%closing, "closing the session of an ownership that did not start");
                }
                return Err(error.into());
            }
        };
        tokio::spawn(watch_owned(Arc::downgrade(&ownership), watch));
        tokio::spawn(watch_session(Arc::downgrade(&ownership), ownership.meta.clone(), session));
        Ok((ownership, lost_rx))
    }

    pub fn me(&self) -> &BrokerInfo {
        &self.me
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    pub fn meta(&self) -> &Arc<dyn MetadataStore> {
        &self.meta
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// From now on, bundles are handed to other brokers.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<Bundle, Owned>> {
        self.owned.lock()
    }

    pub async fn layout(&self, namespace: &str) -> Result<Layout, BrokerError> {
        bundles::layout(self.meta.as_ref(), namespace, self.default_bundles).await
    }

    pub async fn bundle_of(&self, topic: &TopicName) -> Result<Bundle, BrokerError> {
        Ok(self.layout(&topic.namespace_name()).await?.bundle_of(topic))
    }

    /// The bundles this broker owns now (unloading ones included).
    pub fn owned_bundles(&self) -> Vec<Bundle> {
        let mut bundles: Vec<Bundle> = self.lock().keys().cloned().collect();
        bundles.sort();
        bundles
    }

    /// Whether this broker owns `bundle` and is not unloading it.
    pub fn is_active(&self, bundle: &Bundle) -> bool {
        !self.is_session_lost() && self.lock().get(bundle).is_some_and(|owned| !owned.unloading)
    }

    /// Whether the metadata session counts as lost: the broker owns nothing any more.
    pub fn is_session_lost(&self) -> bool {
        self.session_lost.load(Ordering::SeqCst)
    }

    /// The session is lost (or closed): every bundle is given up at once, without touching
    /// the store, and reported lost so that its topics close. The store resolves
    /// `session_lost` at least half a session ttl before its keys may expire on the server,
    /// so the topics stop being served before another broker can take the bundles.
    fn on_session_lost(&self) {
        self.session_lost.store(true, Ordering::SeqCst);
        let bundles: Vec<Bundle> = self.lock().drain().map(|(bundle, _)| bundle).collect();
        if !self.is_draining() {
            warn!(
                bundles = bundles.len(),
                "the metadata session is lost: giving up every bundle and closing its topics"
            );
        }
        for bundle in bundles {
            self.report_lost(bundle);
        }
    }

    pub async fn read_owner(&self, bundle: &Bundle) -> Result<Option<(OwnerData, Version)>, BrokerError> {
        let path = ownership_path(bundle);
        let Some(found) = self.meta.get(&path).await? else { return Ok(None) };
        let owner = serde_json::from_slice(&found.value)
            .map_err(|error| BrokerError::Corrupt { what: path, reason: error.to_string() })?;
        Ok(Some((owner, found.version)))
    }

    fn owner_data(&self, disabled: bool) -> Vec<u8> {
        let data = OwnerData { info: self.me.clone(), disabled, instance: self.instance, session: self.session.0 };
        serde_json::to_vec(&data).unwrap_or_default()
    }

    /// Takes `bundle` if nobody owns it; true if this broker owns it afterwards.
    pub async fn try_acquire(&self, bundle: &Bundle) -> Result<bool, BrokerError> {
        if self.is_draining() {
            return Ok(false);
        }
        let path = ownership_path(bundle);
        let version = match self.meta.put_ephemeral(self.session, &path, self.owner_data(false), Expected::Absent).await
        {
            Ok(version) => version,
            Err(MetaError::BadVersion { .. }) => return Ok(false),
            Err(error) => return Err(error.into()),
        };
        self.lock().insert(bundle.clone(), Owned { version, unloading: false });
        if self.is_session_lost() {
            // Acquired just as the session was lost: on_session_lost may have run before the
            // insert, so give it up here.
            if self.lock().remove(bundle).is_some() {
                self.report_lost(bundle.clone());
            }
            return Err(MetaError::SessionExpired { session: self.session.0 }.into());
        }
        // A split may have replaced the bundle between reading the layout and acquiring it.
        let layout = self.layout(&bundle.namespace).await?;
        if !layout.contains(bundle) {
            info!(%bundle, "acquired a bundle that was split meanwhile; releasing it");
            self.release(bundle).await;
            return Ok(false);
        }
        info!(%bundle, broker = %self.me.broker, "bundle owned");
        Ok(true)
    }

    /// Gives the bundle up: its key is deleted (if it is still ours) and it is forgotten.
    pub async fn release(&self, bundle: &Bundle) {
        let owned = self.lock().get(bundle).copied();
        if let Some(owned) = owned {
            match self.meta.delete(&ownership_path(bundle), Expected::Version(owned.version)).await {
                Ok(()) | Err(MetaError::BadVersion { .. }) => {}
                Err(error) => warn!(%bundle, %error, "releasing the bundle failed; it goes when the session ends"),
            }
        }
        self.lock().remove(bundle);
    }

    /// Starts unloading `bundle`: from now on its topics do not open here, and lookups wait.
    /// False if this broker does not own it (or already unloads it).
    pub async fn begin_unload(&self, bundle: &Bundle) -> bool {
        let version = {
            let mut owned = self.lock();
            match owned.get_mut(bundle) {
                Some(state) if !state.unloading => {
                    state.unloading = true;
                    state.version
                }
                _ => return false,
            }
        };
        let path = ownership_path(bundle);
        match self.meta.put_ephemeral(self.session, &path, self.owner_data(true), Expected::Version(version)).await {
            Ok(version) => {
                if let Some(state) = self.lock().get_mut(bundle) {
                    state.version = version;
                }
            }
            Err(error) => debug!(%bundle, %error, "could not mark the bundle disabled; unloading anyway"),
        }
        true
    }

    /// The bundle of `topic` if this broker may serve it: owned and active, or unowned and
    /// acquired now (a client that skipped the lookup). Otherwise ServiceNotReady, which
    /// makes clients look the topic up again.
    pub async fn ensure_owned(&self, topic: &TopicName) -> Result<Bundle, BrokerError> {
        let bundle = self.bundle_of(topic).await?;
        if self.is_active(&bundle) {
            return Ok(bundle);
        }
        match self.read_owner(&bundle).await? {
            None if self.try_acquire(&bundle).await? => Ok(bundle),
            Some((owner, version)) if self.is_stale_self(&owner) => {
                self.remove_stale(&bundle, version).await;
                if self.try_acquire(&bundle).await? {
                    Ok(bundle)
                } else {
                    Err(not_here(&bundle, "another broker took it"))
                }
            }
            Some((owner, _)) if owner.info.broker != self.me.broker => {
                Err(not_here(&bundle, &format!("it is served by {}", owner.info.native_url)))
            }
            _ => Err(not_here(&bundle, "it is being moved")),
        }
    }

    /// A key with this broker's address left by its previous process (whose session has not
    /// expired yet): that process is gone (this one holds its ports).
    fn is_stale_self(&self, owner: &OwnerData) -> bool {
        owner.info.broker == self.me.broker && owner.instance != self.instance
    }

    async fn remove_stale(&self, bundle: &Bundle, version: Version) {
        info!(%bundle, "removing this broker's ownership key of a previous run");
        if let Err(error) = self.meta.delete(&ownership_path(bundle), Expected::Version(version)).await {
            debug!(%bundle, %error, "removing a stale ownership key");
        }
    }

    /// Waits (bounded) until the ownership key of `bundle` changes from `version`.
    pub async fn wait_for_change(&self, bundle: &Bundle, version: Version) -> Result<(), BrokerError> {
        let path = ownership_path(bundle);
        let mut watch = self.meta.watch(&path).await?;
        let changed = async {
            match self.meta.get(&path).await {
                Ok(Some(found)) if found.version == version => {}
                _ => return,
            }
            while let Some(event) = watch.recv().await {
                match event {
                    WatchEvent::Delete { key } if key == path => return,
                    WatchEvent::Put { key, .. } if key == path => return,
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(OWNER_WAIT, changed).await;
        Ok(())
    }

    /// Pulsar's LOOKUP: the broker that serves `topic`, assigning its bundle to the least
    /// loaded live broker if nobody owns it. `authoritative` lookups come from a redirect by
    /// another broker, which chose this one: an unowned bundle is then taken here.
    pub async fn lookup(&self, topic: &TopicName, authoritative: bool) -> Result<LookupAnswer, BrokerError> {
        for _ in 0..LOOKUP_ATTEMPTS {
            let bundle = self.bundle_of(topic).await?;
            match self.read_owner(&bundle).await? {
                Some(_) if self.is_active(&bundle) => return Ok(LookupAnswer::Connect(self.me.clone())),
                Some((owner, version)) if self.is_stale_self(&owner) => self.remove_stale(&bundle, version).await,
                Some((owner, version)) if owner.disabled || owner.info.broker == self.me.broker => {
                    // Being unloaded (or acquired by us a moment ago): wait for it to settle.
                    self.wait_for_change(&bundle, version).await?;
                }
                Some((owner, version)) if owner.session != 0 && self.owner_is_gone(&owner.info).await => {
                    // Its process is gone (nothing listens on its port) but its lease has not
                    // expired yet: end the lease now rather than send clients to a dead broker
                    // until it does. Safe even if we were wrong: its topics' ledgers are fenced
                    // by whoever opens them next.
                    warn!(%bundle, owner = %owner.info.broker, "the owner refuses connections: ending its session");
                    if let Err(error) = self.meta.close_session(SessionId(owner.session)).await {
                        warn!(%error, "ending a dead broker's session failed; waiting for it to expire");
                    }
                    self.wait_for_change(&bundle, version).await?;
                }
                Some((owner, _)) => return Ok(LookupAnswer::Redirect(owner.info)),
                None => {
                    let target = if authoritative && !self.is_draining() {
                        self.me.clone()
                    } else {
                        self.choose_broker().await?
                    };
                    if target.broker != self.me.broker {
                        return Ok(LookupAnswer::Redirect(target));
                    }
                    if self.try_acquire(&bundle).await? {
                        return Ok(LookupAnswer::Connect(self.me.clone()));
                    }
                }
            }
        }
        Err(BrokerError::ServiceUnitNotReady { what: format!("the owner of {topic}'s bundle is changing; try again") })
    }

    /// Whether `owner` certainly is not running (its Pulsar port refuses connections); a
    /// recent successful probe counts as alive without another.
    async fn owner_is_gone(&self, owner: &BrokerInfo) -> bool {
        let recently = self.probed_alive.lock().get(&owner.broker).copied();
        if recently.is_some_and(|at| at.elapsed() < PROBE_VALIDITY) {
            return false;
        }
        if refuses_connections(&owner.native_url).await {
            return true;
        }
        self.probed_alive.lock().insert(owner.broker.clone(), std::time::Instant::now());
        false
    }

    /// The least loaded broker by the load reports ([`placement::choose`]), counted as one
    /// more bundle for it until the next report is written.
    async fn choose_broker(&self) -> Result<BrokerInfo, BrokerError> {
        let reports = load_report::reports(self.meta.as_ref()).await?;
        let chosen = {
            let recent = self.recent_assignments.lock();
            placement::choose(&reports, &recent, &self.me, self.is_draining())?
        };
        *self.recent_assignments.lock().entry(chosen.broker.clone()).or_default() += 1;
        Ok(chosen)
    }

    /// Forgets the assignments counted by [`Ownership::choose_broker`]: the report loop calls
    /// it every report interval, by when the brokers chosen report the bundles they took.
    pub fn forget_recent_assignments(&self) {
        self.recent_assignments.lock().clear();
    }

    /// Takes the stream of lost bundles (once).
    pub fn take_lost(&self) -> Option<mpsc::UnboundedSender<Bundle>> {
        self.lost.lock().take()
    }

    fn report_lost(&self, bundle: Bundle) {
        if let Some(lost) = self.lost.lock().as_ref() {
            let _ = lost.send(bundle);
        }
    }

    /// Handles a change of an ownership key: a key of a bundle we own that we did not write
    /// means the bundle is lost.
    fn on_change(&self, event: WatchEvent) {
        let (key, version) = match event {
            WatchEvent::Put { key, version, .. } => (key, Some(version)),
            WatchEvent::Delete { key } => (key, None),
        };
        let Some(name) = key.strip_prefix(OWNERSHIP_PATH).and_then(|rest| rest.strip_prefix('/')) else { return };
        let Some(bundle) = Bundle::parse(name) else { return };
        let lost = {
            let mut owned = self.lock();
            match owned.get(&bundle) {
                // Our own write (a disable mark) or a late event of one.
                Some(state) if version.is_some_and(|v| v <= state.version) => false,
                // Deleted while we unload: our own release, or gone anyway.
                Some(state) if state.unloading => false,
                Some(_) => {
                    owned.remove(&bundle);
                    true
                }
                None => false,
            }
        };
        if lost {
            warn!(%bundle, "lost ownership of the bundle (session expired or taken over); closing its topics");
            self.report_lost(bundle);
        }
    }

    /// Checks every owned bundle's key after the watch was interrupted.
    async fn revalidate(&self) {
        for bundle in self.owned_bundles() {
            let expected = self.lock().get(&bundle).map(|s| s.version);
            let found = self.meta.get(&ownership_path(&bundle)).await;
            match (found, expected) {
                (Ok(Some(found)), Some(version)) if found.version == version => {}
                (Ok(Some(found)), _) => self.on_change(WatchEvent::Put {
                    key: ownership_path(&bundle),
                    value: found.value,
                    version: found.version,
                }),
                (Ok(None), _) => self.on_change(WatchEvent::Delete { key: ownership_path(&bundle) }),
                (Err(error), _) => warn!(%bundle, %error, "cannot check bundle ownership"),
            }
        }
    }
}

/// Whether the broker at `url` (`pulsar://host:port`) certainly is not running: two connection
/// attempts 100 ms apart are refused (a reset, not a timeout: a slow or unreachable broker
/// counts as alive).
async fn refuses_connections(url: &str) -> bool {
    let Some(address) = url.strip_prefix("pulsar://") else { return false };
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(address)).await {
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {}
            _ => return false,
        }
    }
    true
}

fn not_here(bundle: &Bundle, why: &str) -> BrokerError {
    BrokerError::ServiceUnitNotReady { what: format!("namespace bundle {bundle} is not served by this broker: {why}") }
}

/// Gives every bundle up when the metadata session counts as lost.
async fn watch_session(ownership: std::sync::Weak<Ownership>, meta: Arc<dyn MetadataStore>, session: SessionId) {
    meta.session_lost(session).await;
    if let Some(ownership) = ownership.upgrade() {
        ownership.on_session_lost();
    }
}

/// Follows ownership keys for as long as the ownership lives.
async fn watch_owned(ownership: std::sync::Weak<Ownership>, mut watch: magnetar_meta::Watch) {
    loop {
        while let Some(event) = watch.recv().await {
            let Some(ownership) = ownership.upgrade() else { return };
            ownership.on_change(event);
        }
        // The watch ended (fell behind or the store hiccuped): watch again, then re-check.
        loop {
            let Some(strong) = ownership.upgrade() else { return };
            match strong.meta.watch(&format!("{OWNERSHIP_PATH}/")).await {
                Ok(fresh) => {
                    watch = fresh;
                    strong.revalidate().await;
                    break;
                }
                Err(error) => {
                    warn!(%error, "cannot watch bundle ownership; retrying");
                    drop(strong);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
