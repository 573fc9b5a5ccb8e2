//! BookieService over gRPC: thin handlers that convert requests, run the storage call on a
//! blocking thread and map errors to a per-request [`Status`].
//!
//! Adds arrive on a bidirectional stream; each add runs as soon as it arrives (up to
//! [`MAX_ADDS_IN_FLIGHT_PER_STREAM`] per stream, after which the stream stops reading, which
//! pushes back on the writer) and its response is sent when it is durable, in completion order.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use magnetar_proto::bookie::bookie_service_server::{BookieService, BookieServiceServer};
use magnetar_proto::bookie::{
    AddEntryBatch, AddEntryRequest, AddEntryResponse, AddEntryResponseBatch, DeleteLedgerRequest, DeleteLedgerResponse,
    Entry, FenceLedgerRequest, FenceLedgerResponse, ReadEntriesRequest, ReadEntriesResponse, ReadEntryRequest,
    ReadEntryResponse, ReadLacRequest, ReadLacResponse, Status,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Streaming};
use tracing::{info, warn};

use crate::add_request::AddRequest;
use crate::bookie::Bookie;
use crate::config::BookieConfig;
use crate::error::BookieError;
use crate::metrics::millis_since;
use crate::security::ServerSecurity;

/// Adds one stream may have in flight before it stops reading more.
pub const MAX_ADDS_IN_FLIGHT_PER_STREAM: usize = 4096;
/// Longest long-poll a reader may ask for.
pub const MAX_LONG_POLL: Duration = Duration::from_secs(30);
/// Most entries and bytes one range read returns.
pub const MAX_RANGE_ENTRIES: usize = 1000;
pub const MAX_RANGE_BYTES: usize = 8 * 1024 * 1024;

/// A bookie's gRPC service; clone-cheap.
#[derive(Clone)]
pub struct BookieServer {
    bookie: Arc<Bookie>,
    /// Token checks on every call and the listener's TLS identity.
    security: ServerSecurity,
}

impl BookieServer {
    pub fn open(config: &BookieConfig) -> Result<Self, BookieError> {
        // Keys and certificates first: a bad one must stop the bookie before it opens storage.
        let security = ServerSecurity::from_config(config)?;
        Ok(BookieServer { bookie: Bookie::open(config)?, security })
    }

    pub fn bookie(&self) -> &Arc<Bookie> {
        &self.bookie
    }

    /// Serves until `cancel` fires, then drains in-flight calls and closes the bookie (final
    /// checkpoint) on a blocking thread.
    pub async fn run(self, listener: TcpListener, cancel: CancellationToken) -> Result<(), tonic::transport::Error> {
        let address = listener.local_addr().ok();
        let security = self.security.clone();
        info!(?address, tls = security.tls().is_some(), "bookie serving BookieService");
        let bookie = self.bookie.clone();
        let service = BookieServiceServer::new(self)
            .max_decoding_message_size(crate::MAX_GRPC_MESSAGE)
            .max_encoding_message_size(crate::MAX_GRPC_MESSAGE);
        let service = InterceptedService::new(service, security.gate());
        // With our own listener, tonic's tcp_nodelay setting does not apply: set it on each
        // accepted socket, or small answers wait for delayed ACKs (~40 ms each).
        let incoming = TcpListenerStream::new(listener).map(|accepted| {
            if let Ok(stream) = &accepted {
                let _ = stream.set_nodelay(true);
            }
            accepted
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = security.tls() {
            builder = builder.tls_config(tls.clone())?;
        }
        let served =
            builder.add_service(service).serve_with_incoming_shutdown(incoming, cancel.cancelled_owned()).await;
        // The last reference closes the bookie: a checkpoint and thread joins, off the runtime.
        let _ = tokio::task::spawn_blocking(move || drop(bookie)).await;
        served
    }

    fn observe_read(&self, started: Instant, ok: bool) {
        let metrics = &self.bookie.metrics().server;
        metrics.read_entry.observe(millis_since(started));
        if !ok {
            metrics.read_entry_failures.inc();
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Bookie) -> Result<T, BookieError> + Send + 'static,
    ) -> Result<T, BookieError> {
        let bookie = self.bookie.clone();
        tokio::task::spawn_blocking(move || work(&bookie))
            .await
            .map_err(|_| BookieError::Stopped { what: "storage thread" })?
    }
}

fn add_response(ledger_id: u64, entry_id: u64, result: Result<(), BookieError>) -> AddEntryResponse {
    let (status, message) = match result {
        Ok(()) => (Status::Ok, String::new()),
        Err(error) => {
            if !matches!(error, BookieError::Fenced { .. }) {
                warn!(ledger_id, entry_id, %error, "add failed");
            }
            (error.status(), error.to_string())
        }
    };
    AddEntryResponse { ledger_id, entry_id, status: status as i32, message }
}

type AddStream = Pin<Box<dyn Stream<Item = Result<AddEntryResponse, tonic::Status>> + Send>>;
type AddBatchStream = Pin<Box<dyn Stream<Item = Result<AddEntryResponseBatch, tonic::Status>> + Send>>;

/// Serves one add stream of either shape: each incoming message becomes a batch of adds
/// (`unpack`), run through `Bookie::add_batch` as soon as it arrives, and its answers go back as
/// one message (`pack`) once all are durable. At most `MAX_ADDS_IN_FLIGHT_PER_STREAM` adds run
/// at once; past that the stream stops reading, which pushes back on the writer.
fn serve_adds<In, Out>(
    server: BookieServer,
    mut incoming: Streaming<In>,
    unpack: fn(In) -> Vec<AddEntryRequest>,
    pack: fn(Vec<AddEntryResponse>) -> Option<Out>,
) -> ReceiverStream<Result<Out, tonic::Status>>
where
    In: Send + 'static,
    Out: Send + 'static,
{
    let (responses, receiver) = mpsc::channel(MAX_ADDS_IN_FLIGHT_PER_STREAM);
    tokio::spawn(async move {
        let in_flight = Arc::new(Semaphore::new(MAX_ADDS_IN_FLIGHT_PER_STREAM));
        loop {
            let adds = match incoming.message().await {
                Ok(Some(message)) => unpack(message),
                Ok(None) => break,
                Err(status) => {
                    warn!(%status, "add stream ended with an error");
                    break;
                }
            };
            let count = adds.len().clamp(1, MAX_ADDS_IN_FLIGHT_PER_STREAM) as u32;
            let Ok(permit) = in_flight.clone().acquire_many_owned(count).await else { break };
            let server = server.clone();
            let responses = responses.clone();
            tokio::spawn(async move {
                let ids: Vec<(u64, u64)> = adds.iter().map(|a| (a.ledger_id, a.entry_id)).collect();
                let started = Instant::now();
                let results = server.bookie.add_batch(adds.into_iter().map(AddRequest::from).collect()).await;
                let metrics = &server.bookie.metrics().server;
                let millis = millis_since(started);
                for result in &results {
                    metrics.add_entry.observe(millis);
                    if result.is_err() {
                        metrics.add_entry_failures.inc();
                    }
                }
                let answers = ids
                    .into_iter()
                    .zip(results)
                    .map(|((ledger_id, entry_id), result)| add_response(ledger_id, entry_id, result))
                    .collect();
                if let Some(answer) = pack(answers) {
                    // A writer that went away no longer needs the answers.
                    let _ = responses.send(Ok(answer)).await;
                }
                drop(permit);
            });
        }
    });
    ReceiverStream::new(receiver)
}

#[tonic::async_trait]
impl BookieService for BookieServer {
    type AddEntriesStream = AddStream;
    type AddEntryBatchesStream = AddBatchStream;

    async fn add_entry_batches(
        &self,
        request: Request<Streaming<AddEntryBatch>>,
    ) -> Result<Response<Self::AddEntryBatchesStream>, tonic::Status> {
        let answers = serve_adds(
            self.clone(),
            request.into_inner(),
            |batch| batch.adds,
            |responses| Some(AddEntryResponseBatch { responses }),
        );
        Ok(Response::new(Box::pin(answers)))
    }

    async fn add_entries(
        &self,
        request: Request<Streaming<AddEntryRequest>>,
    ) -> Result<Response<Self::AddEntriesStream>, tonic::Status> {
        let answers = serve_adds(self.clone(), request.into_inner(), |add| vec![add], |mut responses| responses.pop());
        Ok(Response::new(Box::pin(answers)))
    }

    async fn read_entry(
        &self,
        request: Request<ReadEntryRequest>,
    ) -> Result<Response<ReadEntryResponse>, tonic::Status> {
        let read = request.into_inner();
        let started = Instant::now();
        let (ledger_id, entry_id) = (read.ledger_id, read.entry_id);
        let fenced =
            if read.fence { self.bookie.fence(read.ledger_id, &read.master_key).await.map(|_| ()) } else { Ok(()) };
        let result = match fenced {
            Ok(()) => {
                self.blocking(move |bookie| {
                    let payload = bookie.read(read.ledger_id, read.entry_id)?;
                    let lac = bookie.last_add_confirmed(read.ledger_id)?.unwrap_or(-1);
                    Ok((payload, lac))
                })
                .await
            }
            Err(error) => Err(error),
        };
        self.observe_read(started, result.is_ok());
        Ok(Response::new(match result {
            Ok((payload, last_add_confirmed)) => ReadEntryResponse {
                status: Status::Ok as i32,
                ledger_id,
                entry_id,
                payload,
                last_add_confirmed,
                message: String::new(),
            },
            Err(error) => ReadEntryResponse {
                status: error.status() as i32,
                ledger_id,
                entry_id,
                message: error.to_string(),
                last_add_confirmed: -1,
                ..Default::default()
            },
        }))
    }

    async fn read_entries(
        &self,
        request: Request<ReadEntriesRequest>,
    ) -> Result<Response<ReadEntriesResponse>, tonic::Status> {
        let read = request.into_inner();
        if read.last_entry_id < read.first_entry_id {
            return Ok(Response::new(ReadEntriesResponse {
                status: Status::InvalidRequest as i32,
                entries: Vec::new(),
                message: format!("empty range {}..={}", read.first_entry_id, read.last_entry_id),
            }));
        }
        let max_entries = (read.max_entries as usize).clamp(1, MAX_RANGE_ENTRIES);
        let max_bytes = (read.max_bytes as usize).clamp(1, MAX_RANGE_BYTES);
        let started = Instant::now();
        let result = self
            .blocking(move |bookie| {
                bookie.read_range(read.ledger_id, read.first_entry_id, read.last_entry_id, max_entries, max_bytes)
            })
            .await;
        self.observe_read(started, result.is_ok());
        Ok(Response::new(match result {
            Ok(entries) => ReadEntriesResponse {
                status: Status::Ok as i32,
                entries: entries.into_iter().map(|(entry_id, payload)| Entry { entry_id, payload }).collect(),
                message: String::new(),
            },
            Err(error) => {
                ReadEntriesResponse { status: error.status() as i32, entries: Vec::new(), message: error.to_string() }
            }
        }))
    }

    async fn read_last_add_confirmed(
        &self,
        request: Request<ReadLacRequest>,
    ) -> Result<Response<ReadLacResponse>, tonic::Status> {
        let read = request.into_inner();
        let ledger_id = read.ledger_id;
        let wait = Duration::from_millis(read.long_poll_timeout_ms).min(MAX_LONG_POLL);
        let watcher = self.blocking(move |bookie| bookie.watch_lac(ledger_id)).await;
        let lac = match watcher {
            Ok(mut watcher) => {
                if !wait.is_zero() && *watcher.borrow() <= read.previous_lac {
                    let _ = tokio::time::timeout(wait, watcher.wait_for(|lac| *lac > read.previous_lac)).await;
                }
                let lac = *watcher.borrow();
                Ok(lac)
            }
            Err(error) => Err(error),
        };
        let last = self.blocking(move |bookie| bookie.last_entry_id(ledger_id)).await;
        Ok(Response::new(match (lac, last) {
            (Ok(last_add_confirmed), Ok(last_entry_id)) => {
                ReadLacResponse { status: Status::Ok as i32, last_add_confirmed, last_entry_id, message: String::new() }
            }
            (Err(error), _) | (_, Err(error)) => ReadLacResponse {
                status: error.status() as i32,
                last_add_confirmed: -1,
                last_entry_id: -1,
                message: error.to_string(),
            },
        }))
    }

    async fn fence_ledger(
        &self,
        request: Request<FenceLedgerRequest>,
    ) -> Result<Response<FenceLedgerResponse>, tonic::Status> {
        let fence = request.into_inner();
        let ledger_id = fence.ledger_id;
        let result = self.bookie.fence(fence.ledger_id, &fence.master_key).await;
        Ok(Response::new(match result {
            Ok(found) => {
                info!(ledger_id, last_entry_id = found.last_entry_id, "ledger fenced");
                FenceLedgerResponse {
                    status: Status::Ok as i32,
                    last_add_confirmed: found.last_add_confirmed,
                    last_entry_id: found.last_entry_id,
                    message: String::new(),
                }
            }
            Err(error) => FenceLedgerResponse {
                status: error.status() as i32,
                last_add_confirmed: -1,
                last_entry_id: -1,
                message: error.to_string(),
            },
        }))
    }

    async fn delete_ledger(
        &self,
        request: Request<DeleteLedgerRequest>,
    ) -> Result<Response<DeleteLedgerResponse>, tonic::Status> {
        let ledger_id = request.into_inner().ledger_id;
        let result = self.blocking(move |bookie| bookie.delete(ledger_id)).await;
        Ok(Response::new(match result {
            Ok(()) => DeleteLedgerResponse { status: Status::Ok as i32, message: String::new() },
            Err(error) => DeleteLedgerResponse { status: error.status() as i32, message: error.to_string() },
        }))
    }
}

/// The address a bookie listening on `local` should be reached at.
pub fn advertised(local: SocketAddr, advertised_host: &str) -> String {
    format!("{advertised_host}:{}", local.port())
}
