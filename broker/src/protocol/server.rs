//! The accept loop on the Pulsar port.
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
use tracing::{info, warn};

use super::connection;
use crate::service::BrokerService;

pub async fn run(service: Arc<BrokerService>, listener: TcpListener, cancel: CancellationToken) {
    let limit = Arc::new(Semaphore::new(service.config.max_connections));
    let mut connections = JoinSet::new();
    info!(address = ?listener.local_addr().ok(), "serving the Pulsar protocol");
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
            Ok((stream, peer)) => {
                let service = service.clone();
                let cancel = cancel.child_token();
                connections.spawn(async move {
                    connection::serve(service, stream, peer, cancel).await;
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
