//! Connections to bookies, by bookie id.
//!
//! [`Bookies`] keeps one [`BookieRpc`] handle per bookie, made by its [`BookieConnector`]
//! ([`GrpcConnector`]: the bookie's registered address, over gRPC; a simulated network in
//! tests), and dials again after a failure. It also carries the [`ClientOptions`] (timeouts)
//! and the seeded random source of every ledger handled through it.
//! [`BookieConnection`] is the gRPC handle. A connection multiplexes
//! every add of every ledger over one gRPC stream: adds are queued on a bounded channel
//! ([`ADD_QUEUE`]; a full queue makes the caller wait), and a response task completes each
//! add's oneshot by (ledger, entry). When the stream breaks, every pending add fails and the
//! connection is marked broken so that the next use dials again.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use magnetar_meta::MetadataStore;
use magnetar_proto::bookie::bookie_service_client::BookieServiceClient;
use magnetar_proto::bookie::{
    AddEntryBatch, AddEntryRequest, FenceLedgerRequest, ReadEntriesRequest, ReadEntryRequest, ReadLacRequest, Status,
};
use tokio::sync::{mpsc, oneshot};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tracing::warn;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::placement::Candidate;
use super::rpc::{AddRequest, BookieConnector, BookieRpc, LedgerEnd};
use crate::error::BookieError;
use crate::ids::{EntryId, LedgerId};
use crate::registration;
use crate::security::{AddToken, ClientSecurity};
use crate::MAX_GRPC_MESSAGE;

/// Adds queued to one bookie before callers wait.
pub const ADD_QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type AddReply = oneshot::Sender<Result<(), BookieError>>;

/// Most adds, and bytes of entries, one AddEntryBatch message carries.
pub const MAX_BATCH_ADDS: usize = 256;
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Turns the queue of single adds into a stream of batches: each batch is whatever is queued
/// when the stream is polled (at least one add), within the bounds above, so batches grow
/// only when adds arrive faster than they are sent and a lone add never waits.
fn batches(queue: mpsc::Receiver<AddEntryRequest>) -> impl futures::Stream<Item = AddEntryBatch> {
    futures::stream::unfold((queue, None::<AddEntryRequest>), |(mut queue, carried)| async move {
        let first = match carried {
            Some(add) => add,
            None => queue.recv().await?,
        };
        let mut bytes = first.payload.len();
        let mut adds = vec![first];
        let mut carry = None;
        while adds.len() < MAX_BATCH_ADDS {
            let Ok(add) = queue.try_recv() else { break };
            if bytes + add.payload.len() > MAX_BATCH_BYTES {
                carry = Some(add);
                break;
            }
            bytes += add.payload.len();
            adds.push(add);
        }
        Some((AddEntryBatch { adds }, (queue, carry)))
    })
}

/// One bookie's gRPC client and its add stream.
pub struct BookieConnection {
    bookie_id: String,
    grpc: BookieServiceClient<InterceptedService<Channel, AddToken>>,
    adds: mpsc::Sender<AddEntryRequest>,
    pending: Arc<Mutex<HashMap<(u64, u64), AddReply>>>,
    broken: Arc<AtomicBool>,
}

impl BookieConnection {
    /// Dials the bookie at `address` (over TLS with `tls`) and opens its add stream; every
    /// call carries `token`.
    pub async fn connect(
        bookie_id: &str,
        address: &str,
        tls: Option<ClientTlsConfig>,
        token: AddToken,
    ) -> Result<Arc<Self>, BookieError> {
        let transport = |source| BookieError::Transport { bookie: bookie_id.to_owned(), source };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(transport)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(transport)?;
        }
        let channel = endpoint.connect().await.map_err(transport)?;
        let mut grpc = BookieServiceClient::with_interceptor(channel, token)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE);
        let (adds, queue) = mpsc::channel(ADD_QUEUE);
        let mut responses = grpc
            .add_entry_batches(batches(queue))
            .await
            .map_err(|source| BookieError::Rpc { bookie: bookie_id.to_owned(), source })?
            .into_inner();
        let pending: Arc<Mutex<HashMap<(u64, u64), AddReply>>> = Arc::default();
        let broken = Arc::new(AtomicBool::new(false));
        let (task_pending, task_broken, task_bookie) = (pending.clone(), broken.clone(), bookie_id.to_owned());
        tokio::spawn(async move {
            let (reason, abnormal) = loop {
                match responses.message().await {
                    Ok(Some(batch)) => {
                        for response in batch.responses {
                            let reply = task_pending.lock().remove(&(response.ledger_id, response.entry_id));
                            if let Some(reply) = reply {
                                let result = status_result(
                                    &task_bookie,
                                    response.status,
                                    response.ledger_id,
                                    response.entry_id,
                                    response.message,
                                );
                                let _ = reply.send(result);
                            }
                        }
                    }
                    Ok(None) => break ("stream ended".to_owned(), false),
                    Err(status) => break (status.to_string(), true),
                }
            };
            task_broken.store(true, Ordering::SeqCst);
            if abnormal {
                warn!(bookie = %task_bookie, %reason, "bookie add stream failed");
            } else {
                tracing::debug!(bookie = %task_bookie, "bookie add stream closed");
            }
            let failed: Vec<_> = task_pending.lock().drain().collect();
            for ((ledger_id, entry_id), reply) in failed {
                let _ = reply.send(Err(BookieError::Remote {
                    bookie: task_bookie.clone(),
                    status: Status::IoError,
                    message: format!("connection lost before entry {ledger_id}:{entry_id} was answered: {reason}"),
                }));
            }
        });
        Ok(Arc::new(BookieConnection { bookie_id: bookie_id.to_owned(), grpc, adds, pending, broken }))
    }

    fn rpc_error(&self, source: tonic::Status) -> BookieError {
        BookieError::Rpc { bookie: self.bookie_id.clone(), source }
    }

    /// This bookie's answer status as a result.
    fn check(&self, status: i32, ledger_id: u64, entry_id: u64, message: String) -> Result<(), BookieError> {
        status_result(&self.bookie_id, status, ledger_id, entry_id, message)
    }
}

/// A bookie's answer status as a result: OK, or the error it stands for (an unknown status
/// counts as an I/O error).
fn status_result(bookie: &str, status: i32, ledger_id: u64, entry_id: u64, message: String) -> Result<(), BookieError> {
    match Status::try_from(status).unwrap_or(Status::IoError) {
        Status::Ok => Ok(()),
        status => Err(BookieError::from_status(bookie, ledger_id, entry_id, status, message)),
    }
}

#[async_trait]
impl BookieRpc for BookieConnection {
    fn bookie_id(&self) -> &str {
        &self.bookie_id
    }

    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    async fn add(&self, add: AddRequest) -> oneshot::Receiver<Result<(), BookieError>> {
        let (reply, answer) = oneshot::channel();
        if self.is_broken() {
            let _ = reply.send(Err(BookieError::Remote {
                bookie: self.bookie_id.clone(),
                status: Status::IoError,
                message: "connection is broken".to_owned(),
            }));
            return answer;
        }
        let key = (add.ledger_id, add.entry_id);
        self.pending.lock().insert(key, reply);
        if self.adds.send(AddEntryRequest::from(add)).await.is_err() {
            self.broken.store(true, Ordering::SeqCst);
            if let Some(reply) = self.pending.lock().remove(&key) {
                let _ = reply.send(Err(BookieError::Stopped { what: "bookie add stream" }));
            }
        }
        answer
    }

    async fn read_entry(
        &self,
        ledger_id: LedgerId,
        entry_id: EntryId,
        fence_key: Option<Bytes>,
    ) -> Result<(Bytes, i64), BookieError> {
        let (ledger_id, entry_id) = (ledger_id.0, entry_id.0);
        let fence = fence_key.is_some();
        let response = self
            .grpc
            .clone()
            .read_entry(ReadEntryRequest { ledger_id, entry_id, fence, master_key: fence_key.unwrap_or_default() })
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner();
        self.check(response.status, ledger_id, entry_id, response.message)?;
        Ok((response.payload, response.last_add_confirmed))
    }

    async fn read_range(
        &self,
        ledger_id: LedgerId,
        first: EntryId,
        last: EntryId,
        max_entries: u32,
        max_bytes: u64,
    ) -> Result<Vec<(EntryId, Bytes)>, BookieError> {
        let (ledger_id, first_entry_id, last_entry_id) = (ledger_id.0, first.0, last.0);
        let response = self
            .grpc
            .clone()
            .read_entries(ReadEntriesRequest { ledger_id, first_entry_id, last_entry_id, max_entries, max_bytes })
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner();
        self.check(response.status, ledger_id, first_entry_id, response.message)?;
        Ok(response.entries.into_iter().map(|entry| (EntryId(entry.entry_id), entry.payload)).collect())
    }

    async fn fence(&self, ledger_id: LedgerId, master_key: Bytes) -> Result<LedgerEnd, BookieError> {
        let ledger_id = ledger_id.0;
        let response = self
            .grpc
            .clone()
            .fence_ledger(FenceLedgerRequest { ledger_id, master_key })
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner();
        self.check(response.status, ledger_id, 0, response.message)?;
        Ok(LedgerEnd { last_add_confirmed: response.last_add_confirmed, last_entry_id: response.last_entry_id })
    }

    async fn read_lac(
        &self,
        ledger_id: LedgerId,
        previous_lac: i64,
        long_poll: Duration,
    ) -> Result<LedgerEnd, BookieError> {
        let ledger_id = ledger_id.0;
        let response = self
            .grpc
            .clone()
            .read_last_add_confirmed(ReadLacRequest {
                ledger_id,
                previous_lac,
                long_poll_timeout_ms: long_poll.as_millis() as u64,
            })
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner();
        self.check(response.status, ledger_id, 0, response.message)?;
        Ok(LedgerEnd { last_add_confirmed: response.last_add_confirmed, last_entry_id: response.last_entry_id })
    }

    async fn delete_ledger(&self, ledger_id: LedgerId) -> Result<(), BookieError> {
        let ledger_id = ledger_id.0;
        let response = self
            .grpc
            .clone()
            .delete_ledger(magnetar_proto::bookie::DeleteLedgerRequest { ledger_id })
            .await
            .map_err(|e| self.rpc_error(e))?
            .into_inner();
        match self.check(response.status, ledger_id, 0, response.message) {
            Ok(()) | Err(BookieError::NoSuchLedger { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Dials registered bookies over gRPC: the address, and whether the bookie speaks TLS, come
/// from the bookie's registration; `security` gives the token and the CA.
pub struct GrpcConnector {
    meta: Arc<dyn MetadataStore>,
    security: ClientSecurity,
}

impl GrpcConnector {
    pub fn new(meta: Arc<dyn MetadataStore>) -> Self {
        Self::with_security(meta, ClientSecurity::default())
    }

    pub fn with_security(meta: Arc<dyn MetadataStore>, security: ClientSecurity) -> Self {
        GrpcConnector { meta, security }
    }
}

#[async_trait]
impl BookieConnector for GrpcConnector {
    async fn connect(&self, bookie_id: &str) -> Result<Arc<dyn BookieRpc>, BookieError> {
        let registration = registration::lookup(self.meta.as_ref(), bookie_id)
            .await?
            .ok_or_else(|| BookieError::UnknownBookie { bookie: bookie_id.to_owned() })?;
        let tls = match registration.tls {
            true => Some(self.security.tls_for(bookie_id, registration::host_of(&registration.address))?),
            false => None,
        };
        let token = AddToken(self.security.authorization(bookie_id)?);
        let connection: Arc<dyn BookieRpc> =
            BookieConnection::connect(bookie_id, &registration.address, tls, token).await?;
        Ok(connection)
    }
}

/// Default of [`ClientOptions::speculative_read_timeout`].
pub const DEFAULT_SPECULATIVE_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Time limits and the seed of the protocol's choices, for every ledger handled through one
/// [`Bookies`].
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// An add (or recovery write-back) unanswered this long counts as a failure of the bookie.
    pub add_timeout: Duration,
    /// Limit of one read, fence or LAC call.
    pub read_timeout: Duration,
    /// A read one bookie has not answered this long is also asked of the next copy, and the
    /// first answer wins (BookKeeper's speculative reads); zero: only after a failure.
    pub speculative_read_timeout: Duration,
    /// Seeds the choice of bookies and master keys (a simulation replays it); `None` seeds
    /// from the operating system.
    pub seed: Option<u64>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            add_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            speculative_read_timeout: DEFAULT_SPECULATIVE_READ_TIMEOUT,
            seed: None,
        }
    }
}

/// Connections to every bookie this process talks to, by bookie id, and the options and seeded
/// random source of the ledgers handled through them.
#[derive(Clone)]
pub struct Bookies {
    meta: Arc<dyn MetadataStore>,
    connector: Arc<dyn BookieConnector>,
    connections: Arc<tokio::sync::Mutex<BTreeMap<String, Arc<dyn BookieRpc>>>>,
    options: ClientOptions,
    /// Chooses ensembles, replacements and master keys; seeded so that a simulation replays.
    rng: Arc<Mutex<StdRng>>,
}

impl Bookies {
    /// Bookies reached over gRPC at their registered addresses, default options.
    pub fn new(meta: Arc<dyn MetadataStore>) -> Self {
        Self::secured(meta, ClientSecurity::default())
    }

    /// Bookies reached over gRPC with `security`'s token and CA.
    pub fn secured(meta: Arc<dyn MetadataStore>, security: ClientSecurity) -> Self {
        Self::secured_with(meta, security, ClientOptions::default())
    }

    /// As [`Bookies::secured`], with `options`' time limits.
    pub fn secured_with(meta: Arc<dyn MetadataStore>, security: ClientSecurity, options: ClientOptions) -> Self {
        let connector = Arc::new(GrpcConnector::with_security(meta.clone(), security));
        Self::with_connector(meta, connector, options)
    }

    /// Bookies reached through `connector` (a simulated network in tests).
    pub fn with_connector(
        meta: Arc<dyn MetadataStore>,
        connector: Arc<dyn BookieConnector>,
        options: ClientOptions,
    ) -> Self {
        let rng = match options.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Bookies { meta, connector, connections: Arc::default(), options, rng: Arc::new(Mutex::new(rng)) }
    }

    pub fn meta(&self) -> &Arc<dyn MetadataStore> {
        &self.meta
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// A random number from the pool's seeded source.
    pub fn random(&self) -> u64 {
        self.rng.lock().next_u64()
    }

    /// A live connection to the bookie, dialing it if needed.
    pub async fn get(&self, bookie_id: &str) -> Result<Arc<dyn BookieRpc>, BookieError> {
        let mut connections = self.connections.lock().await;
        if let Some(connection) = connections.get(bookie_id) {
            if !connection.is_broken() {
                return Ok(connection.clone());
            }
        }
        let connection = self.connector.connect(bookie_id).await?;
        connections.insert(bookie_id.to_owned(), connection.clone());
        Ok(connection)
    }

    /// Drops every connection this pool holds, ending their add streams (a bookie's graceful
    /// shutdown waits for its clients to leave).
    pub async fn close(&self) {
        self.connections.lock().await.clear();
    }

    /// The bookies registered now with their hosts, sorted by id: what placement chooses from.
    pub async fn candidates(&self) -> Result<Vec<Candidate>, BookieError> {
        let mut candidates: Vec<Candidate> =
            registration::available(self.meta.as_ref()).await?.into_iter().map(Candidate::from).collect();
        candidates.sort_by(|a, b| a.bookie_id.cmp(&b.bookie_id));
        Ok(candidates)
    }

    /// Ids of the bookies registered now, sorted.
    pub async fn available(&self) -> Result<Vec<String>, BookieError> {
        let mut ids: Vec<String> =
            registration::available(self.meta.as_ref()).await?.into_iter().map(|r| r.bookie_id).collect();
        ids.sort();
        Ok(ids)
    }
}
