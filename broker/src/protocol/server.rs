//! The accept loop on the Pulsar port (`pulsar://`, or `pulsar+ssl://` with a TLS acceptor:
//! the handshake runs in the connection's task, bounded in time, so a slow client never holds
//! up the loop).
//!
//! A semaphore bounds the connections served at once (`max_connections`); when it is
//! exhausted the loop stops accepting, and the kernel's backlog holds new clients. Each
//! connection runs in its own task with a child of the server's cancellation token; on
//! shutdown the loop stops accepting and waits for the connection tasks to end.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connection::{self, Peer};
use crate::security::TlsAcceptor;
use crate::service::BrokerService;

pub async fn run(
    service: Arc<BrokerService>,
    listener: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    cancel: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(service.config.max_connections));
    let mut connections = JoinSet::new();
    let scheme = if tls.is_some() { "pulsar+ssl" } else { "pulsar" };
    info!(address = ?listener.local_addr().ok(), scheme, "serving the Pulsar protocol");
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = cancel.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = cancel.cancelled() => break,
        };
        match accepted {
            Ok((stream, address)) => {
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let cancel = cancel.child_token();
                let tls = tls.clone();
                connections.spawn(async move {
                    match tls {
                        None => {
                            let (reader, writer) = stream.into_split();
                            let peer = Peer { address, client_common_name: None };
                            connection::serve(service, reader, writer, peer, cancel).await;
                        }
                        Some(tls) => match tls.accept(stream).await {
                            Ok(accepted) => {
                                let peer = Peer { address, client_common_name: accepted.client_common_name };
                                let (reader, writer) = tokio::io::split(accepted.stream);
                                connection::serve(service, reader, writer, peer, cancel).await;
                            }
                            Err(error) => debug!(peer = %address, %error, "TLS handshake failed"),
                        },
                    }
                    drop(permit);
                });
            }
            Err(error) => {
                // Running out of file descriptors and the like: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}
